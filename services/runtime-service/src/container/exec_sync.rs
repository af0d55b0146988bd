//! ExecSync: runs a command in a running container and answers its stdout, stderr and exit
//! code once it exited.
//!
//! Contract: the process runs with the container's own process spec (user, env, cwd,
//! capabilities...) and the request's `cmd` as its args, without a terminal, as a containerd
//! exec of the container's task ([`crisp_exec`]), its output through FIFOs in
//! `<state_dir>/containers/<id>/exec/<exec id>/`. A non-zero exit code is a normal answer.
//! `timeout` seconds (0: none) bound the run: then the process is killed and the answer is
//! `DEADLINE_EXCEEDED` naming the timeout (the kubelet's probe timeout). Each stream is
//! bounded to [`MAX_STREAM_BYTES`]: beyond it the process is killed and the answer is
//! `RESOURCE_EXHAUSTED`. The exec process and its FIFOs are always deleted, by the
//! [`ExecProcess`] guard also when the caller goes away mid-way; after a normal exit the
//! FIFOs go before the answer and the process is deleted from containerd after it. An unknown container is `NOT_FOUND`, one not
//! running `FAILED_PRECONDITION` (its task is asked about only where the exec failed: the record
//! says running, and a task that is not is what the failure was about).

use super::ContainerError;
use super::record::{self, State};
use crate::logs::Stream;
use crisp_config::Config;
use crisp_containerd::containerd_client::services::v1::GetRequest;
use crisp_containerd::containerd_client::types::v1::Status as TaskStatus;
use crisp_containerd::{Containerd, ContainerdError};
use crisp_errors::GrpcError;
use crisp_exec::{ExecProcess, ExecProcessError, NewExec};
use crisp_proto::cri::{ExecSyncRequest, ExecSyncResponse};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tonic::Code;

/// The most output kept of each stream (containerd's CRI plugin's bound too).
pub const MAX_STREAM_BYTES: usize = 16 * 1024 * 1024;
/// How long after the process exited its output may still arrive (a child it left in the
/// background may hold the pipe open for ever): then the exec is deleted, and after
/// [`DELETE_GRACE`] the answer carries what arrived.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
const DELETE_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("ExecSync: `cmd` is empty")]
    EmptyCommand,
    #[error("ExecSync: {0}")]
    Container(#[source] ContainerError),
    #[error("container `{0}` not found")]
    NotFound(String),
    #[error("container `{id}` is not running ({state})")]
    NotRunning { id: String, state: &'static str },
    #[error("exec in container `{id}`: {source}")]
    Process { id: String, source: ExecProcessError },
    #[error("exec in container `{id}`: {source}")]
    Containerd { id: String, source: ContainerdError },
    #[error("timeout {0}s exceeded: the exec process was killed")]
    Timeout(i64),
    #[error("exec in container `{id}`: its {stream} exceeded {limit} bytes: the exec process was killed")]
    OutputTooLarge { id: String, stream: &'static str, limit: usize },
}

impl GrpcError for ExecError {
    fn code(&self) -> Code {
        match self {
            ExecError::EmptyCommand => Code::InvalidArgument,
            ExecError::Container(e) => e.code(),
            ExecError::NotFound(_) => Code::NotFound,
            ExecError::NotRunning { .. } => Code::FailedPrecondition,
            ExecError::Process { source, .. } => source.code(),
            ExecError::Containerd { source, .. } => source.code(),
            ExecError::Timeout(_) => Code::DeadlineExceeded,
            ExecError::OutputTooLarge { .. } => Code::ResourceExhausted,
        }
    }
}

/// Runs `request.cmd` in the container and waits for its exit.
pub async fn exec_sync(
    containerd: &Containerd,
    config: &Config,
    request: ExecSyncRequest,
) -> Result<ExecSyncResponse, ExecError> {
    if request.cmd.is_empty() {
        return Err(ExecError::EmptyCommand);
    }
    let container = record::find(containerd, &request.container_id)
        .await
        .map_err(ExecError::Container)?
        .ok_or_else(|| ExecError::NotFound(request.container_id.clone()))?;
    let id = container.id.clone();
    if container.state != State::Running {
        return Err(ExecError::NotRunning { id, state: container.state.label() });
    }
    let process = crisp_exec::process_spec(&container.spec, &request.cmd, false, None)
        .map_err(|source| ExecError::Process { id: id.clone(), source })?;

    let fifo_root = config.runtime.state_dir.join("containers").join(&id).join("exec");
    let new = NewExec { container_id: id.clone(), process, stdout: true, stderr: true, ..Default::default() };
    let (mut exec, io) = match ExecProcess::start(containerd, &fifo_root, new).await {
        Ok(started) => started,
        // The task is gone: it exited meanwhile.
        Err(ExecProcessError::Containerd(e)) if e.is_not_found() => {
            return Err(ExecError::NotRunning { id, state: "exited" });
        }
        // The record said running; the task may not be (any more): say so where it is not.
        Err(source) => {
            ensure_running(containerd, &id).await?;
            return Err(ExecError::Process { id, source });
        }
    };
    let mut output = Output::collect(io.stdout, io.stderr);
    let ended = tokio::select! {
        exited = exec.wait() => {
            Ended::Exited(exited.map_err(|source| ExecError::Containerd { id: id.clone(), source })?)
        }
        _ = timeout(request.timeout) => Ended::TimedOut,
        Some(stream) = output.overflow.recv() => Ended::Overflowed(stream),
    };
    match ended {
        Ended::Exited(exit_code) => {
            let (stdout, stderr, overflowed) = output.drain(&mut exec).await;
            // The answer does not wait for the shim to forget the exited process.
            exec.finish();
            if let Some(stream) = overflowed {
                // Past the bound after the exit: still more than the caller may be given.
                return Err(ExecError::OutputTooLarge { id, stream: stream.as_str(), limit: MAX_STREAM_BYTES });
            }
            Ok(ExecSyncResponse { stdout, stderr, exit_code: exit_code as i32 })
        }
        Ended::TimedOut => {
            exec.cleanup().await;
            Err(ExecError::Timeout(request.timeout))
        }
        Ended::Overflowed(stream) => {
            exec.cleanup().await;
            Err(ExecError::OutputTooLarge { id, stream: stream.as_str(), limit: MAX_STREAM_BYTES })
        }
    }
}

/// Resolves once the request's timeout passed; never for 0 (or one too far away to be a
/// deadline).
async fn timeout(timeout_secs: i64) {
    let deadline = u64::try_from(timeout_secs)
        .ok()
        .filter(|t| *t > 0)
        .and_then(|secs| tokio::time::Instant::now().checked_add(Duration::from_secs(secs)));
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// How the wait for an exec ended.
enum Ended {
    Exited(u32),
    TimedOut,
    Overflowed(Stream),
}

/// The tasks reading an exec's output, which stop when this goes away.
struct Output {
    stop: watch::Sender<bool>,
    overflow: mpsc::Receiver<Stream>,
    stdout: tokio::task::JoinHandle<Vec<u8>>,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
}

impl Output {
    /// Starts reading the FIFOs' read ends (a stream not there reads as empty).
    fn collect(stdout: Option<pipe::Receiver>, stderr: Option<pipe::Receiver>) -> Output {
        let (stop, stopped) = watch::channel(false);
        let (overflow_tx, overflow) = mpsc::channel(2);
        Output {
            stop,
            overflow,
            stdout: tokio::spawn(collect(stdout, Stream::Stdout, stopped.clone(), overflow_tx.clone())),
            stderr: tokio::spawn(collect(stderr, Stream::Stderr, stopped, overflow_tx)),
        }
    }

    /// Both streams once the process exited. They end when every holder of the pipe closed
    /// it; past [`DRAIN_GRACE`] the exec is deleted, which closes the shim's side, and past
    /// [`DELETE_GRACE`] the readers stop with what they have. Also a stream that overflowed.
    async fn drain(mut self, exec: &mut ExecProcess) -> (Vec<u8>, Vec<u8>, Option<Stream>) {
        let both = async { (self.stdout.await, self.stderr.await) };
        tokio::pin!(both);
        let (stdout, stderr) = match tokio::time::timeout(DRAIN_GRACE, &mut both).await {
            Ok(both) => both,
            Err(_) => {
                tracing::debug!(exec_id = %exec.exec_id(), "exec output still held open after its exit; deleting the exec");
                exec.delete().await;
                match tokio::time::timeout(DELETE_GRACE, &mut both).await {
                    Ok(both) => both,
                    Err(_) => {
                        let _ = self.stop.send(true);
                        both.await
                    }
                }
            }
        };
        (stdout.unwrap_or_default(), stderr.unwrap_or_default(), self.overflow.try_recv().ok())
    }
}

/// The container's task exists and runs.
async fn ensure_running(containerd: &Containerd, id: &str) -> Result<(), ExecError> {
    let task = containerd.tasks().get(GetRequest { container_id: id.to_string(), exec_id: String::new() }).await;
    let status = match task {
        Ok(response) => response.into_inner().process.map(|p| p.status).unwrap_or_default(),
        Err(status) if status.code() == Code::NotFound => {
            return Err(ExecError::NotRunning { id: id.to_string(), state: "no task" });
        }
        Err(status) => {
            let source = ContainerdError::call("reading the container's task", status);
            return Err(ExecError::Containerd { id: id.to_string(), source });
        }
    };
    match TaskStatus::try_from(status).unwrap_or(TaskStatus::Unknown) {
        TaskStatus::Running => Ok(()),
        TaskStatus::Created => Err(ExecError::NotRunning { id: id.to_string(), state: "created" }),
        TaskStatus::Stopped => Err(ExecError::NotRunning { id: id.to_string(), state: "exited" }),
        TaskStatus::Paused | TaskStatus::Pausing => Err(ExecError::NotRunning { id: id.to_string(), state: "paused" }),
        TaskStatus::Unknown => Err(ExecError::NotRunning { id: id.to_string(), state: "unknown" }),
    }
}

/// Reads one stream to its end (or until told to stop), keeping at most [`MAX_STREAM_BYTES`];
/// says so on `overflow` once more came.
async fn collect(
    reader: Option<pipe::Receiver>,
    stream: Stream,
    mut stop: watch::Receiver<bool>,
    overflow: mpsc::Sender<Stream>,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut reader) = reader else { return kept };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = reader.read(&mut buf) => read,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match read {
            Ok(0) => break,
            Ok(n) if kept.len() + n > MAX_STREAM_BYTES => {
                kept.extend_from_slice(&buf[..MAX_STREAM_BYTES - kept.len()]);
                let _ = overflow.try_send(stream);
                break;
            }
            Ok(n) => kept.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(stream = stream.as_str(), error = %e, "reading an exec's output failed");
                break;
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_without_process_is_an_internal_error_naming_the_container() {
        let spec = serde_json::to_vec(&serde_json::json!({"ociVersion": "1.0.2"})).unwrap();
        let source = crisp_exec::process_spec(&spec, &["true".into()], false, None).unwrap_err();
        let err = ExecError::Process { id: "c1".into(), source };
        assert_eq!(err.code(), Code::Internal);
        assert!(err.to_string().contains("`c1`"), "{err}");
    }

    #[test]
    fn a_timeout_is_deadline_exceeded_naming_it() {
        let err = ExecError::Timeout(1);
        assert_eq!(err.code(), Code::DeadlineExceeded);
        assert!(err.to_string().contains("timeout 1s exceeded"), "{err}");
    }
}
