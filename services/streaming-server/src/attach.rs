//! Attach sessions: the client joins a running container's stdio, which the runtime service
//! holds (its FIFOs and log writer), through crisp's internal `ContainerIo.Attach` API on the
//! runtime service's socket: the client's stdin goes there, the container's output comes back
//! from the moment of joining. Terminal sizes go straight to containerd (`resize_pty` of the
//! container's task). The session ends with success when the container's output ends; a
//! client that goes away only leaves (the container runs on).

use crate::remotecommand::{Outcome, Session, TermSize};
use crisp_containerd::Containerd;
use crisp_containerd::containerd_client::services::v1::ResizePtyRequest;
use crisp_proto::cri::AttachRequest;
use crisp_proto::internal::attach_input::Input;
use crisp_proto::internal::attach_output::Stream as OutputStream;
use crisp_proto::internal::container_io_client::ContainerIoClient;
use crisp_proto::internal::{AttachInput, AttachStart};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `request` on `session` and ends it with the outcome.
pub async fn run(containerd: Containerd, runtime_socket: PathBuf, request: AttachRequest, mut session: Session) {
    let outcome = match attach(&containerd, &runtime_socket, &request, &mut session).await {
        Ok(()) => Outcome::Exited(0),
        Err(message) => {
            tracing::debug!(container = request.container_id, error = %message, "attach ended");
            Outcome::Failed(message)
        }
    };
    session.finish(&[], outcome).await;
}

async fn attach(
    containerd: &Containerd,
    runtime_socket: &std::path::Path,
    request: &AttachRequest,
    session: &mut Session,
) -> Result<(), String> {
    let channel = crisp_grpc_dial::unix_channel(runtime_socket, Duration::from_secs(5));
    let mut client = ContainerIoClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let start = AttachStart {
        container_id: request.container_id.clone(),
        stdin: session.stdin.is_some(),
        stdout: session.stdout.is_some(),
        stderr: session.stderr.is_some(),
    };
    let _ = tx.send(AttachInput { input: Some(Input::Start(start)) }).await;

    // The client's stdin, then its end.
    let stdin = session.stdin.take().map(|mut stdin| {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let input = AttachInput { input: Some(Input::Stdin(buf[..n].to_vec())) };
                        if tx.send(input).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(AttachInput { input: Some(Input::StdinEnd(true)) }).await;
        })
    });
    // Terminal sizes, to the container's own process.
    let resizer = session.resize.take().map(|mut sizes| {
        let (mut tasks, container_id) = (containerd.tasks(), request.container_id.clone());
        tokio::spawn(async move {
            while let Some(TermSize { width, height }) = sizes.recv().await {
                let request = ResizePtyRequest {
                    container_id: container_id.clone(),
                    exec_id: String::new(),
                    width: u32::from(width),
                    height: u32::from(height),
                };
                if let Err(status) = tasks.resize_pty(request).await {
                    tracing::debug!(error = status.message(), "resizing the container's terminal");
                }
            }
        })
    });
    let _stop = AbortOnDrop(stdin.into_iter().chain(resizer).collect());
    // The request stream stays open while `tx` lives (stdin may never come).
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut output = client
        .attach(requests)
        .await
        .map_err(|s| {
            let why = if s.code() == tonic::Code::Unimplemented {
                "the runtime service does not serve crisp.internal.v1.ContainerIo".to_string()
            } else {
                format!("{:?}: {}", s.code(), s.message())
            };
            format!("attaching to container {}: {why}", request.container_id)
        })?
        .into_inner();
    loop {
        let next = tokio::select! {
            next = output.message() => next,
            _ = session.gone.cancelled() => return Err("the client went away".into()),
        };
        let Some(piece) = next.map_err(|s| format!("the container's output: {}", s.message()))? else { break };
        let out = match OutputStream::try_from(piece.stream) {
            Ok(OutputStream::Stderr) => session.stderr.as_mut().or(session.stdout.as_mut()),
            _ => session.stdout.as_mut(),
        };
        if let Some(out) = out
            && out.write_all(&piece.data).await.is_err()
        {
            return Err("the client stopped reading".into());
        }
    }
    drop(tx);
    Ok(())
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
