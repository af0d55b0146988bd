//! Exec sessions: the command runs as a containerd exec process in the container's task
//! ([`crisp_exec`]), with the container's own process settings (user, environment, working
//! directory) and the request's argv and TTY. Its stdio goes through FIFOs in a directory of
//! its own (removed afterwards): the client's stdin into it (closed with `close_io` at the
//! client's end of file), its stdout and stderr out to the client, terminal sizes applied
//! with `resize_pty`. The exit code ends the session on the error stream. A client that goes
//! away before the process ends gets it killed; the process is deleted from containerd either
//! way.

use crate::remotecommand::{Outcome, Session, TermSize};
use crisp_containerd::Containerd;
use crisp_exec::{ConsoleSize, ExecProcess, NewExec};
use crisp_proto::cri::ExecRequest;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

/// How long a TTY exec waits for the client's first terminal size before it starts.
const FIRST_SIZE: Duration = Duration::from_millis(500);
/// How long the output may go on draining after the process exited.
const DRAIN: Duration = Duration::from_secs(5);

/// Runs `request` on `session` and ends it with the outcome.
pub async fn run(containerd: Containerd, fifo_root: PathBuf, request: ExecRequest, mut session: Session) {
    let outcome = match exec(&containerd, &fifo_root, &request, &mut session).await {
        Ok(code) => Outcome::Exited(code),
        Err(message) => {
            tracing::debug!(container = request.container_id, error = %message, "exec failed");
            Outcome::Failed(message)
        }
    };
    session.finish(&request.cmd, outcome).await;
}

/// The container's process settings with the request's argv and TTY.
async fn process_spec(
    containerd: &Containerd,
    request: &ExecRequest,
    size: Option<TermSize>,
) -> Result<Vec<u8>, String> {
    let id = &request.container_id;
    let container = containerd
        .container_record(id)
        .await
        .map_err(|e| format!("reading container {id}: {e}"))?
        .ok_or_else(|| format!("container {id} has no record"))?;
    let spec = container.spec.ok_or_else(|| format!("container {id} has no OCI spec"))?;
    let size = size.map(|TermSize { width, height }| ConsoleSize { width, height });
    crisp_exec::process_spec(&spec.value, &request.cmd, request.tty, size).map_err(|e| format!("container {id}: {e}"))
}

async fn exec(
    containerd: &Containerd,
    fifo_root: &Path,
    request: &ExecRequest,
    session: &mut Session,
) -> Result<u32, String> {
    // Clients send the terminal's size as soon as the session is up: wait a moment for it.
    let first_size = match session.resize.as_mut() {
        Some(sizes) if request.tty => tokio::time::timeout(FIRST_SIZE, sizes.recv()).await.ok().flatten(),
        _ => None,
    };
    let new = NewExec {
        container_id: request.container_id.clone(),
        process: process_spec(containerd, request, first_size).await?,
        terminal: request.tty,
        stdin: session.stdin.is_some(),
        stdout: session.stdout.is_some(),
        stderr: session.stderr.is_some(),
    };
    let (mut process, io) = ExecProcess::start(containerd, fifo_root, new).await.map_err(|e| e.to_string())?;
    let control = process.control();

    // Terminal sizes.
    let resizer = session.resize.take().map(|mut sizes| {
        let control = control.clone();
        AbortOnDrop(tokio::spawn(async move {
            while let Some(TermSize { width, height }) = sizes.recv().await {
                if let Err(e) = control.resize(ConsoleSize { width, height }).await {
                    tracing::debug!(error = %e, "resizing the exec's terminal");
                }
            }
        }))
    });
    // The client's stdin; at its end, the process's.
    let stdin_copy = match (session.stdin.take(), io.stdin) {
        (Some(mut from), Some(mut to)) => Some(AbortOnDrop(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut to).await;
            drop(to);
            let _ = control.close_stdin().await;
        }))),
        _ => None,
    };
    let stdout = session.stdout.take();
    let stderr = session.stderr.take();
    let out_copy = tokio::spawn(async move {
        let copy = |fifo: Option<pipe::Receiver>, out: Option<crate::remotecommand::Writer>| async move {
            match (fifo, out) {
                (Some(mut fifo), Some(mut out)) => {
                    let _ = tokio::io::copy(&mut fifo, &mut out).await;
                    let _ = out.flush().await;
                    Some(out)
                }
                (_, out) => out,
            }
        };
        tokio::join!(copy(io.stdout, stdout), copy(io.stderr, stderr))
    });

    let exit = tokio::select! {
        waited = process.wait() => waited.map_err(|e| e.to_string())?,
        _ = session.gone.cancelled() => return Err("the client went away".into()),
    };
    // The output after the exit: until the shim closes the FIFOs.
    match tokio::time::timeout(DRAIN, out_copy).await {
        Ok(Ok((stdout, stderr))) => {
            session.stdout = stdout;
            session.stderr = stderr;
        }
        _ => tracing::debug!("exec output still open after the exit"),
    }
    drop((stdin_copy, resizer));
    process.cleanup().await;
    Ok(exit)
}

/// A task stopped when its handle goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
