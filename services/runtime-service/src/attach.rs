//! `crisp.internal.v1.ContainerIo/Attach`: the runtime side of CRI Attach. The streaming
//! server holds the client's session and calls this on the runtime service's socket.
//!
//! Contract (proto/internal/container_io.proto): the first message is `start` (else
//! INVALID_ARGUMENT); the container must exist (else NOT_FOUND), be running with its stdio held
//! here (else FAILED_PRECONDITION) and, for `stdin`, have been created with stdin (else
//! FAILED_PRECONDITION). The answer is the container's output from the moment of joining, from
//! its log writer's fan-out ([`crate::logs::LogWriter::subscribe`]), and ends when the
//! container's output ended. Each attacher has its own bounded queue: one that falls behind
//! misses chunks, counted in `lagged_bytes` of its next message, and never holds up the
//! container, its log or other attachers. (Only if this attacher's forwarding task itself
//! falls more than the fan-out's capacity behind, which it does not while the runtime keeps up,
//! are chunks missed whose size is unknown: logged, not counted.)
//!
//! Stdin: the container's stdin FIFO is opened for writing once (non-blocking; the shim holds
//! the read end) on the first attach that asks for it, and that one write end is shared by
//! every attacher and kept until the container's output ends: the shim ends the container's
//! stdin when the last writer of the FIFO closes it, so a write end per attacher would close
//! the container's stdin when the first attacher left. When an attacher's stdin ends, as
//! containerd's CRI plugin does: for a container created with `stdin_once` and no TTY, the
//! container's stdin is closed (the write end dropped and containerd's `CloseIO`), and the
//! attacher keeps the output until it ends; otherwise the container's stdin stays open for later
//! attachers and this attacher's output ends with its stdin.

use crate::container::record::{self, State};
use crate::container::{ContainerError, Containers};
use crate::logs::{Fifos, LogWriter, Output, Stream};
use crisp_containerd::containerd_client::services::v1::CloseIoRequest;
use crisp_errors::GrpcError;
use crisp_proto::internal::attach_input::Input;
use crisp_proto::internal::attach_output::Stream as OutputStream;
use crisp_proto::internal::container_io_server::{ContainerIo, ContainerIoServer};
use crisp_proto::internal::{AttachInput, AttachOutput, AttachStart};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

/// Output chunks (each at most one FIFO read) an attacher may have queued before it misses some.
const QUEUE_CHUNKS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("the first attach message must be `start`")]
    NoStart,
    #[error("container `{0}` not found")]
    NotFound(String),
    #[error("container `{id}` is {state}, not running")]
    NotRunning { id: String, state: &'static str },
    #[error("container `{0}` is running without stdio that can be attached to")]
    NoStdio(String),
    #[error("container `{0}` was created without stdin")]
    NoStdin(String),
    #[error("{0}")]
    Container(#[from] ContainerError),
    #[error("container `{id}`: opening its stdin {path}: {source}")]
    OpenStdin { id: String, path: String, source: std::io::Error },
}

impl GrpcError for AttachError {
    fn code(&self) -> Code {
        match self {
            AttachError::NoStart => Code::InvalidArgument,
            AttachError::NotFound(_) => Code::NotFound,
            AttachError::NotRunning { .. } | AttachError::NoStdio(_) | AttachError::NoStdin(_) => {
                Code::FailedPrecondition
            }
            AttachError::Container(err) => err.code(),
            // No reader: the shim has let go of the container's stdin (it was closed).
            AttachError::OpenStdin { source, .. } if source.raw_os_error() == Some(nix::libc::ENXIO) => {
                Code::FailedPrecondition
            }
            AttachError::OpenStdin { .. } => Code::Internal,
        }
    }
}

/// The service on the runtime's tonic server.
pub fn server(containers: Containers) -> ContainerIoServer<Attach> {
    ContainerIoServer::new(Attach { containers, stdins: Arc::default() })
}

/// A container's one stdin write end; `None` once closed (`stdin_once`) or when it could not be
/// opened.
type Stdin = Arc<tokio::sync::Mutex<Option<pipe::Sender>>>;

pub struct Attach {
    containers: Containers,
    /// The stdin write end of each running container someone attached to with stdin.
    stdins: Arc<Mutex<HashMap<String, Stdin>>>,
}

type OutputStreamBox = Pin<Box<dyn futures::Stream<Item = Result<AttachOutput, Status>> + Send>>;

#[tonic::async_trait]
impl ContainerIo for Attach {
    type AttachStream = OutputStreamBox;

    async fn attach(&self, request: Request<Streaming<AttachInput>>) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let start = match inbound.message().await? {
            Some(AttachInput { input: Some(Input::Start(start)) }) => start,
            _ => return Err(crisp_errors::to_status(&AttachError::NoStart)),
        };
        let span = tracing::info_span!("attach", container = %start.container_id);
        let joined = self.join(&start).await.map_err(|e| crisp_errors::to_status(&e))?;
        tracing::debug!(parent: &span, stdin = start.stdin, stdout = start.stdout, stderr = start.stderr, "attached");
        let (out_tx, out_rx) = mpsc::channel(QUEUE_CHUNKS);
        let (ended_tx, ended_rx) = oneshot::channel::<()>();
        let (stdin_done_tx, stdin_done_rx) = oneshot::channel::<()>();
        let detach_on_stdin_end = !joined.stdin_once || joined.tty;
        let output = joined.writer.subscribe();
        tokio::spawn(
            forward_output(
                output,
                joined.writer.clone(),
                Wanted { stdout: start.stdout, stderr: start.stderr },
                out_tx,
                detach_on_stdin_end.then_some(stdin_done_rx),
                ended_tx,
            )
            .instrument(span.clone()),
        );
        let stdin = Feeder {
            containers: self.containers.clone(),
            id: joined.id,
            stdin: joined.stdin,
            close_on_end: !detach_on_stdin_end,
        };
        tokio::spawn(stdin.run(inbound, ended_rx, stdin_done_tx).instrument(span));
        let stream = futures::stream::unfold(out_rx, |mut rx| async move { rx.recv().await.map(|m| (Ok(m), rx)) });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What an attach joined.
struct Joined {
    id: String,
    tty: bool,
    stdin_once: bool,
    writer: Arc<LogWriter>,
    /// The container's stdin when the attacher asked for it.
    stdin: Option<Stdin>,
}

impl Attach {
    async fn join(&self, start: &AttachStart) -> Result<Joined, AttachError> {
        let stored = record::find(&self.containers.containerd, &start.container_id)
            .await?
            .ok_or_else(|| AttachError::NotFound(start.container_id.clone()))?;
        let id = stored.id.clone();
        if stored.state != State::Running {
            return Err(AttachError::NotRunning { id, state: stored.state.label() });
        }
        let writer = self.containers.log_writer(&id).ok_or_else(|| AttachError::NoStdio(id.clone()))?;
        if writer.is_closed() {
            return Err(AttachError::NotRunning { id, state: "exiting" });
        }
        let config = &stored.config;
        if start.stdin && !config.stdin {
            return Err(AttachError::NoStdin(id));
        }
        let stdin = match start.stdin {
            true => Some(self.stdin_of(&id, config.tty, &writer)?),
            false => None,
        };
        Ok(Joined { id, tty: config.tty, stdin_once: config.stdin_once, writer, stdin })
    }

    /// The container's shared stdin write end, opened on first use and dropped when the
    /// container's output ends.
    fn stdin_of(&self, id: &str, tty: bool, writer: &Arc<LogWriter>) -> Result<Stdin, AttachError> {
        let mut stdins = self.stdins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stdin) = stdins.get(id) {
            return Ok(stdin.clone());
        }
        let fifos = Fifos::existing(&self.containers.state_dir(id).join("io"), true, tty);
        let path = fifos.stdin.unwrap_or_default();
        let sender = pipe::OpenOptions::new().open_sender(&path).map_err(|source| AttachError::OpenStdin {
            id: id.to_string(),
            path: path.display().to_string(),
            source,
        })?;
        let stdin: Stdin = Arc::new(tokio::sync::Mutex::new(Some(sender)));
        stdins.insert(id.to_string(), stdin.clone());
        let (stdins, writer, id, ours) = (self.stdins.clone(), writer.clone(), id.to_string(), stdin.clone());
        tokio::spawn(async move {
            writer.closed().await;
            let mut stdins = stdins.lock().unwrap_or_else(|p| p.into_inner());
            if stdins.get(&id).is_some_and(|s| Arc::ptr_eq(s, &ours)) {
                stdins.remove(&id);
            }
        });
        Ok(stdin)
    }
}

/// The streams an attacher wants.
struct Wanted {
    stdout: bool,
    stderr: bool,
}

/// Copies the container's output to one attacher until the output ends, the attacher leaves,
/// or (`stdin_done`) the attacher's stdin ended. Never waits on the attacher: a full queue
/// drops the chunk and counts its bytes.
async fn forward_output(
    mut output: broadcast::Receiver<Output>,
    writer: Arc<LogWriter>,
    wanted: Wanted,
    out: mpsc::Sender<AttachOutput>,
    stdin_done: Option<oneshot::Receiver<()>>,
    _ended: oneshot::Sender<()>,
) {
    let mut lagged: u64 = 0;
    let mut lagged_chunks: u64 = 0;
    let stdin_done = async move {
        match stdin_done {
            Some(done) => done.await.is_ok(),
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stdin_done);
    let mut stdin_open = true;
    loop {
        let piece = tokio::select! {
            biased;
            piece = output.recv() => piece,
            _ = writer.closed() => {
                // Everything was broadcast before the writer closed: take what is left.
                while let Ok(piece) = output.try_recv() {
                    if !forward(&piece, &wanted, &out, &mut lagged) {
                        return;
                    }
                }
                return;
            }
            _ = out.closed() => return,
            ended = &mut stdin_done, if stdin_open => {
                if ended {
                    return;
                }
                // The stdin side stopped without an end (the attacher left): keep on.
                stdin_open = false;
                continue;
            }
        };
        match piece {
            Ok(piece) => {
                if !forward(&piece, &wanted, &out, &mut lagged) {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(chunks)) => {
                // The fan-out itself ran ahead of this forwarder: how many bytes is not known.
                lagged_chunks += chunks;
                tracing::debug!(chunks, total = lagged_chunks, "an attacher missed output chunks");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Queues `piece` for the attacher if it wants that stream; false once the attacher left.
fn forward(piece: &Output, wanted: &Wanted, out: &mpsc::Sender<AttachOutput>, lagged: &mut u64) -> bool {
    if piece.data.is_empty() {
        return true;
    }
    let stream = match piece.stream {
        Stream::Stdout if wanted.stdout => OutputStream::Stdout,
        Stream::Stderr if wanted.stderr => OutputStream::Stderr,
        _ => return true,
    };
    let message = AttachOutput { stream: stream as i32, data: piece.data.to_vec(), lagged_bytes: *lagged };
    match out.try_send(message) {
        Ok(()) => {
            *lagged = 0;
            true
        }
        Err(mpsc::error::TrySendError::Full(message)) => {
            *lagged += message.data.len() as u64;
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// One attacher's stdin into the container's.
struct Feeder {
    containers: Containers,
    id: String,
    stdin: Option<Stdin>,
    /// `stdin_once` without a TTY: the attacher's stdin end closes the container's.
    close_on_end: bool,
}

impl Feeder {
    /// Until the attacher's stdin ends, it leaves, or its output ended. `done` fires (is sent)
    /// when the attacher's stdin ended, and is dropped unsent otherwise.
    async fn run(self, mut inbound: Streaming<AttachInput>, ended: oneshot::Receiver<()>, done: oneshot::Sender<()>) {
        tokio::pin!(ended);
        loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                _ = &mut ended => return,
            };
            let input = match message {
                Ok(Some(AttachInput { input: Some(input) })) => input,
                Ok(Some(AttachInput { input: None })) => continue,
                Ok(None) | Err(_) => return,
            };
            match input {
                Input::Start(_) => tracing::debug!("a second `start` is ignored"),
                Input::Stdin(bytes) => {
                    let Some(stdin) = &self.stdin else { continue };
                    tokio::select! {
                        written = write(stdin, &bytes) => if let Err(err) = written {
                            tracing::debug!(error = %err, "writing to the container's stdin");
                        },
                        _ = &mut ended => return,
                    }
                }
                Input::StdinEnd(_) => {
                    if self.stdin.is_none() {
                        continue;
                    }
                    if self.close_on_end {
                        self.close_stdin().await;
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// Closes the container's stdin for good: our write end, then the shim's copy.
    async fn close_stdin(&self) {
        if let Some(stdin) = &self.stdin {
            stdin.lock().await.take();
        }
        let request = CloseIoRequest { container_id: self.id.clone(), exec_id: String::new(), stdin: true };
        if let Err(status) = self.containers.containerd.tasks().close_io(request).await {
            tracing::debug!(error = status.message(), "closing the container's stdin");
        }
    }
}

async fn write(stdin: &Stdin, bytes: &[u8]) -> std::io::Result<()> {
    let mut stdin = stdin.lock().await;
    match stdin.as_mut() {
        Some(sender) => sender.write_all(bytes).await,
        None => Ok(()),
    }
}
