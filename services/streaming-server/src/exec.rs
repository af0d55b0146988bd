//! Exec sessions: the command runs as a containerd exec process in the container's task,
//! with the container's own process settings (user, environment, working directory) and the
//! request's argv and TTY. Its stdio goes through FIFOs in a directory of its own (removed
//! afterwards): the client's stdin into it (closed with `close_io` at the client's end of
//! file), its stdout and stderr out to the client, terminal sizes applied with `resize_pty`.
//! The exit code ends the session on the error stream. A client that goes away before the
//! process ends gets it killed; the process is deleted from containerd either way.

use crate::remotecommand::{Outcome, Session, TermSize};
use crisp_containerd::Containerd;
use crisp_containerd::containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, ResizePtyRequest,
    StartRequest, WaitRequest,
};
use crisp_proto::cri::ExecRequest;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
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

/// Removes the exec's FIFO directory when dropped.
struct FifoDir(PathBuf);

impl Drop for FifoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills (if still running) and deletes the exec process when dropped while armed.
struct ProcessGuard {
    containerd: Containerd,
    container_id: String,
    exec_id: String,
    kill: bool,
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let (containerd, container_id, exec_id, kill) =
            (self.containerd.clone(), self.container_id.clone(), self.exec_id.clone(), self.kill);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let mut tasks = containerd.tasks();
            if kill {
                let _ = tasks
                    .kill(KillRequest {
                        container_id: container_id.clone(),
                        exec_id: exec_id.clone(),
                        signal: 9,
                        all: false,
                    })
                    .await;
                let wait = WaitRequest { container_id: container_id.clone(), exec_id: exec_id.clone() };
                let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait(wait)).await;
            }
            let _ = tasks.delete_process(DeleteProcessRequest { container_id, exec_id }).await;
        });
    }
}

fn exec_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mkfifo(path: &Path) -> Result<(), String> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("making FIFO {}: {e}", path.display()))
}

/// The container's process settings with the request's argv and TTY.
async fn process_spec(
    containerd: &Containerd,
    request: &ExecRequest,
    size: Option<TermSize>,
) -> Result<prost_types::Any, String> {
    let container = containerd
        .containers()
        .get(GetContainerRequest { id: request.container_id.clone() })
        .await
        .map_err(|s| format!("reading container {}: {}", request.container_id, s.message()))?
        .into_inner()
        .container
        .ok_or_else(|| format!("container {} has no record", request.container_id))?;
    let spec = container.spec.ok_or_else(|| format!("container {} has no OCI spec", request.container_id))?;
    let spec: serde_json::Value = serde_json::from_slice(&spec.value)
        .map_err(|e| format!("container {}'s OCI spec: {e}", request.container_id))?;
    let mut process = spec.get("process").cloned().unwrap_or_else(|| serde_json::json!({"cwd": "/"}));
    process["args"] = serde_json::json!(request.cmd);
    process["terminal"] = serde_json::json!(request.tty);
    match size {
        // The terminal starts at the client's size: a command that asks at once sees it.
        Some(TermSize { width, height }) => {
            process["consoleSize"] = serde_json::json!({"height": height, "width": width})
        }
        None => {
            if let Some(p) = process.as_object_mut() {
                p.remove("consoleSize");
            }
        }
    }
    Ok(prost_types::Any { type_url: PROCESS_TYPE.into(), value: process.to_string().into_bytes() })
}

async fn exec(
    containerd: &Containerd,
    fifo_root: &Path,
    request: &ExecRequest,
    session: &mut Session,
) -> Result<u32, String> {
    let container_id = request.container_id.clone();
    // Clients send the terminal's size as soon as the session is up: wait a moment for it.
    let first_size = match session.resize.as_mut() {
        Some(sizes) if request.tty => tokio::time::timeout(FIRST_SIZE, sizes.recv()).await.ok().flatten(),
        _ => None,
    };
    let spec = process_spec(containerd, request, first_size).await?;
    let exec_id = exec_id();
    let dir = fifo_root.join(&exec_id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
    let _dir = FifoDir(dir.clone());
    let path = |name: &str, wanted: bool| wanted.then(|| dir.join(name));
    let stdin_path = path("stdin", session.stdin.is_some());
    let stdout_path = path("stdout", session.stdout.is_some());
    let stderr_path = path("stderr", session.stderr.is_some() && !request.tty);
    for p in [&stdin_path, &stdout_path, &stderr_path].into_iter().flatten() {
        mkfifo(p)?;
    }
    // Our ends first: a reader needs no writer to open; the writer is opened read-write so it
    // needs no reader yet either.
    let open_reader = |p: &Option<PathBuf>| -> Result<Option<pipe::Receiver>, String> {
        p.as_ref()
            .map(|p| pipe::OpenOptions::new().open_receiver(p).map_err(|e| format!("opening FIFO: {e}")))
            .transpose()
    };
    let stdout_fifo = open_reader(&stdout_path)?;
    let stderr_fifo = open_reader(&stderr_path)?;
    let stdin_fifo = stdin_path
        .as_ref()
        .map(|p| pipe::OpenOptions::new().read_write(true).open_sender(p).map_err(|e| format!("opening FIFO: {e}")))
        .transpose()?;
    let as_string = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();

    let mut tasks = containerd.tasks();
    tasks
        .exec(ExecProcessRequest {
            container_id: container_id.clone(),
            stdin: as_string(&stdin_path),
            stdout: as_string(&stdout_path),
            stderr: as_string(&stderr_path),
            terminal: request.tty,
            spec: Some(spec),
            exec_id: exec_id.clone(),
        })
        .await
        .map_err(|s| format!("creating the exec process: {}", s.message()))?;
    let mut guard = ProcessGuard {
        containerd: containerd.clone(),
        container_id: container_id.clone(),
        exec_id: exec_id.clone(),
        kill: false,
    };
    tasks
        .start(StartRequest { container_id: container_id.clone(), exec_id: exec_id.clone() })
        .await
        .map_err(|s| format!("starting the exec process: {}", s.message()))?;
    guard.kill = true;

    // Terminal sizes.
    let resizer = session.resize.take().map(|mut sizes| {
        let (mut tasks, container_id, exec_id) = (containerd.tasks(), container_id.clone(), exec_id.clone());
        tokio::spawn(async move {
            while let Some(TermSize { width, height }) = sizes.recv().await {
                let request = ResizePtyRequest {
                    container_id: container_id.clone(),
                    exec_id: exec_id.clone(),
                    width: u32::from(width),
                    height: u32::from(height),
                };
                if let Err(status) = tasks.resize_pty(request).await {
                    tracing::debug!(error = status.message(), "resizing the exec's terminal");
                }
            }
        })
    });
    // The client's stdin; at its end, the process's.
    let stdin_copy = match (session.stdin.take(), stdin_fifo) {
        (Some(mut from), Some(mut to)) => {
            let (mut tasks, container_id, exec_id) = (containerd.tasks(), container_id.clone(), exec_id.clone());
            Some(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                drop(to);
                let _ = tasks.close_io(CloseIoRequest { container_id, exec_id, stdin: true }).await;
            }))
        }
        _ => None,
    };
    let stdout = session.stdout.take();
    let stderr = session.stderr.take();
    let out_copy = tokio::spawn(async move {
        let copy = |fifo: Option<pipe::Receiver>, out: Option<crate::remotecommand::Writer>| async move {
            if let (Some(mut fifo), Some(mut out)) = (fifo, out) {
                let _ = tokio::io::copy(&mut fifo, &mut out).await;
                let _ = out.flush().await;
                Some(out)
            } else {
                None
            }
        };
        tokio::join!(copy(stdout_fifo, stdout), copy(stderr_fifo, stderr))
    });

    let wait = tasks.wait(WaitRequest { container_id: container_id.clone(), exec_id: exec_id.clone() });
    let exit = tokio::select! {
        waited = wait => waited.map_err(|s| format!("waiting for the exec process: {}", s.message()))?.into_inner().exit_status,
        _ = session.gone.cancelled() => return Err("the client went away".into()),
    };
    guard.kill = false;
    // The output after the exit: until the shim closes the FIFOs.
    match tokio::time::timeout(DRAIN, out_copy).await {
        Ok(Ok((stdout, stderr))) => {
            session.stdout = stdout;
            session.stderr = stderr;
        }
        _ => tracing::debug!("exec output still open after the exit"),
    }
    if let Some(copy) = stdin_copy {
        copy.abort();
    }
    if let Some(resizer) = resizer {
        resizer.abort();
    }
    Ok(exit)
}
