//! ExecSync: runs a command in a running container and answers its stdout, stderr and exit
//! code once it exited.
//!
//! Contract: the process runs with the container's own process spec (user, env, cwd,
//! capabilities...) and the request's `cmd` as its args, without a terminal, as a containerd
//! exec of the container's task, its output through FIFOs in
//! `<state_dir>/containers/<id>/exec/<exec id>/`. A non-zero exit code is a normal answer.
//! `timeout` seconds (0: none) bound the run: then the process is killed and the answer is
//! `DEADLINE_EXCEEDED` naming the timeout (the kubelet's probe timeout). Each stream is
//! bounded to [`MAX_STREAM_BYTES`]: beyond it the process is killed and the answer is
//! `RESOURCE_EXHAUSTED`. The exec process and its FIFOs are always deleted, by an [`Exec`]
//! guard also when the caller goes away mid-way. An unknown container is `NOT_FOUND`, one not
//! running `FAILED_PRECONDITION`.

use super::ContainerError;
use super::record::{self, State};
use crate::logs::{Fifos, Stream};
use crisp_config::Config;
use crisp_containerd::containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use crisp_containerd::containerd_client::types::v1::Status as TaskStatus;
use crisp_containerd::{Containerd, ContainerdError};
use crisp_errors::GrpcError;
use crisp_proto::cri::{ExecSyncRequest, ExecSyncResponse};
use std::io::Read;
use std::path::{Path, PathBuf};
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
/// How long a killed process may take to be reported exited.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// The type containerd knows an OCI process spec by.
const PROCESS_SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

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
    #[error("container `{id}`: its OCI spec cannot be read: {reason}")]
    Spec { id: String, reason: String },
    #[error("exec in container `{id}`: {doing}: {source}")]
    Io { id: String, doing: &'static str, source: std::io::Error },
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
            ExecError::Spec { .. } | ExecError::Io { .. } => Code::Internal,
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
    ensure_running(containerd, &id).await?;
    let process = process_spec(&id, &container.spec, &request.cmd)?;

    let exec_id =
        new_exec_id().map_err(|source| ExecError::Io { id: id.clone(), doing: "making an exec id", source })?;
    let dir = config.runtime.state_dir.join("containers").join(&id).join("exec").join(&exec_id);
    let mut exec = Exec::new(containerd.clone(), id.clone(), exec_id, dir.clone());
    let mut output = Output::collect(&id, &dir)?;
    exec.create_and_start(process, &output.fifos).await?;
    match exec.wait(deadline(request.timeout), &mut output.overflow).await? {
        Ended::Exited(exit_code) => {
            let (stdout, stderr, overflowed) = output.drain(&mut exec).await;
            exec.cleanup().await;
            if let Some(stream) = overflowed {
                // Past the bound after the exit: still more than the caller may be given.
                return Err(ExecError::OutputTooLarge { id, stream: stream.as_str(), limit: MAX_STREAM_BYTES });
            }
            Ok(ExecSyncResponse { stdout, stderr, exit_code: exit_code as i32 })
        }
        Ended::TimedOut => {
            exec.kill_and_wait().await;
            Err(ExecError::Timeout(request.timeout))
        }
        Ended::Overflowed(stream) => {
            exec.kill_and_wait().await;
            Err(ExecError::OutputTooLarge { id, stream: stream.as_str(), limit: MAX_STREAM_BYTES })
        }
    }
}

/// The request's timeout as a deadline; none for 0 (or one too far away to be a deadline).
fn deadline(timeout_secs: i64) -> Option<tokio::time::Instant> {
    u64::try_from(timeout_secs)
        .ok()
        .filter(|t| *t > 0)
        .and_then(|secs| tokio::time::Instant::now().checked_add(Duration::from_secs(secs)))
}

/// How the wait for an exec ended.
enum Ended {
    Exited(u32),
    TimedOut,
    Overflowed(Stream),
}

/// An exec's FIFOs and the tasks reading them, which stop when this goes away.
struct Output {
    fifos: Fifos,
    stop: watch::Sender<bool>,
    overflow: mpsc::Receiver<Stream>,
    stdout: tokio::task::JoinHandle<Vec<u8>>,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
}

impl Output {
    /// Makes the FIFOs in `dir` and starts reading them. The read ends are open before
    /// containerd's shim opens the write ends, so its open never blocks.
    fn collect(id: &str, dir: &Path) -> Result<Output, ExecError> {
        let io_error = |doing: &'static str| {
            let id = id.to_string();
            move |source| ExecError::Io { id, doing, source }
        };
        let fifos = Fifos::create(dir, false, false).map_err(io_error("making the FIFOs"))?;
        let stderr_path = fifos.stderr.clone().unwrap_or_default();
        let stdout = open_reader(&fifos.stdout).map_err(io_error("opening stdout"))?;
        let stderr = open_reader(&stderr_path).map_err(io_error("opening stderr"))?;
        let (stop, stopped) = watch::channel(false);
        let (overflow_tx, overflow) = mpsc::channel(2);
        Ok(Output {
            fifos,
            stop,
            overflow,
            stdout: tokio::spawn(collect(stdout, Stream::Stdout, stopped.clone(), overflow_tx.clone())),
            stderr: tokio::spawn(collect(stderr, Stream::Stderr, stopped, overflow_tx)),
        })
    }

    /// Both streams once the process exited. They end when every holder of the pipe closed
    /// it; past [`DRAIN_GRACE`] the exec is deleted, which closes the shim's side, and past
    /// [`DELETE_GRACE`] the readers stop with what they have. Also a stream that overflowed.
    async fn drain(mut self, exec: &mut Exec) -> (Vec<u8>, Vec<u8>, Option<Stream>) {
        let both = async { (self.stdout.await, self.stderr.await) };
        tokio::pin!(both);
        let (stdout, stderr) = match tokio::time::timeout(DRAIN_GRACE, &mut both).await {
            Ok(both) => both,
            Err(_) => {
                tracing::debug!(exec_id = %exec.exec_id, "exec output still held open after its exit; deleting the exec");
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

/// A containerd answer that the task is gone (it exited meanwhile) is "not running".
fn not_running_or(
    id: &str,
    otherwise: impl FnOnce(tonic::Status) -> ExecError,
) -> impl FnOnce(tonic::Status) -> ExecError {
    let id = id.to_string();
    move |status| match status.code() {
        Code::NotFound => ExecError::NotRunning { id, state: "exited" },
        _ => otherwise(status),
    }
}

/// The container's process spec (JSON, every field kept) with `cmd` as args and no terminal.
fn process_spec(id: &str, spec: &[u8], cmd: &[String]) -> Result<Vec<u8>, ExecError> {
    let error = |reason: String| ExecError::Spec { id: id.to_string(), reason };
    if spec.is_empty() {
        return Err(error("the container record has no spec".into()));
    }
    let mut spec: serde_json::Value = serde_json::from_slice(spec).map_err(|e| error(e.to_string()))?;
    let process = spec
        .get_mut("process")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or_else(|| error("the spec has no process".into()))?;
    process.insert("args".into(), serde_json::json!(cmd));
    process.insert("terminal".into(), serde_json::Value::Bool(false));
    process.remove("commandLine");
    process.remove("consoleSize");
    serde_json::to_vec(process).map_err(|e| error(e.to_string()))
}

fn new_exec_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn open_reader(path: &Path) -> std::io::Result<pipe::Receiver> {
    pipe::OpenOptions::new().open_receiver(path)
}

/// Reads one stream to its end (or until told to stop), keeping at most [`MAX_STREAM_BYTES`];
/// says so on `overflow` once more came.
async fn collect(
    mut reader: pipe::Receiver,
    stream: Stream,
    mut stop: watch::Receiver<bool>,
    overflow: mpsc::Sender<Stream>,
) -> Vec<u8> {
    let mut kept = Vec::new();
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

/// An exec process and its FIFOs: deleted when this goes away, whatever happened.
struct Exec {
    containerd: Containerd,
    container_id: String,
    exec_id: String,
    dir: PathBuf,
    /// containerd has the exec process.
    created: bool,
    /// Everything is deleted already.
    cleaned: bool,
}

impl Exec {
    fn new(containerd: Containerd, container_id: String, exec_id: String, dir: PathBuf) -> Self {
        Exec { containerd, container_id, exec_id, dir, created: false, cleaned: false }
    }

    fn call(&self, operation: &'static str) -> impl FnOnce(tonic::Status) -> ExecError {
        let id = self.container_id.clone();
        move |status| ExecError::Containerd { id, source: ContainerdError::call(operation, status) }
    }

    /// Has containerd create the process (`process`: its spec as JSON) with `fifos` as its
    /// output, and start it.
    async fn create_and_start(&mut self, process: Vec<u8>, fifos: &Fifos) -> Result<(), ExecError> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let mut tasks = self.containerd.tasks();
        let request = ExecProcessRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            stdin: String::new(),
            stdout: fifos.stdout.display().to_string(),
            stderr: path(&fifos.stderr),
            terminal: false,
            spec: Some(prost_types::Any { type_url: PROCESS_SPEC_TYPE.into(), value: process }),
        };
        tasks
            .exec(request)
            .await
            .map_err(not_running_or(&self.container_id, self.call("creating the exec process")))?;
        self.created = true;
        let request = StartRequest { container_id: self.container_id.clone(), exec_id: self.exec_id.clone() };
        tasks
            .start(request)
            .await
            .map_err(not_running_or(&self.container_id, self.call("starting the exec process")))?;
        Ok(())
    }

    /// Waits until the process exits, the deadline passes or a stream overflows.
    async fn wait(
        &self,
        deadline: Option<tokio::time::Instant>,
        overflow: &mut mpsc::Receiver<Stream>,
    ) -> Result<Ended, ExecError> {
        let mut tasks = self.containerd.tasks();
        let wait = tasks.wait(WaitRequest { container_id: self.container_id.clone(), exec_id: self.exec_id.clone() });
        let timeout = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            exited = wait => {
                let exited = exited.map_err(self.call("waiting for the exec process"))?;
                Ok(Ended::Exited(exited.into_inner().exit_status))
            }
            _ = timeout => Ok(Ended::TimedOut),
            Some(stream) = overflow.recv() => Ok(Ended::Overflowed(stream)),
        }
    }

    /// SIGKILL, then waits (bounded) until containerd reports the exit.
    async fn kill_and_wait(&self) {
        kill_and_wait(&self.containerd, &self.container_id, &self.exec_id).await;
    }

    /// Deletes the exec process (which closes the shim's ends of its I/O).
    async fn delete(&mut self) {
        if self.created {
            delete(&self.containerd, &self.container_id, &self.exec_id).await;
        }
    }

    /// Deletes the exec process and the FIFOs.
    async fn cleanup(&mut self) {
        self.delete().await;
        remove_dir(&self.dir);
        self.cleaned = true;
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (containerd, container_id, exec_id, dir) =
            (self.containerd.clone(), self.container_id.clone(), self.exec_id.clone(), self.dir.clone());
        let created = self.created;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if created {
                        kill_and_wait(&containerd, &container_id, &exec_id).await;
                        delete(&containerd, &container_id, &exec_id).await;
                    }
                    remove_dir(&dir);
                });
            }
            Err(_) => remove_dir(&dir),
        }
    }
}

async fn kill_and_wait(containerd: &Containerd, container_id: &str, exec_id: &str) {
    let kill = KillRequest {
        container_id: container_id.to_string(),
        exec_id: exec_id.to_string(),
        signal: nix::sys::signal::Signal::SIGKILL as u32,
        all: false,
    };
    // An exec that exited by itself meanwhile answers an error: nothing to do then.
    let _ = containerd.tasks().kill(kill).await;
    let wait = WaitRequest { container_id: container_id.to_string(), exec_id: exec_id.to_string() };
    let mut tasks = containerd.tasks();
    if tokio::time::timeout(KILL_WAIT, tasks.wait(wait)).await.is_err() {
        tracing::warn!(%container_id, %exec_id, "a killed exec process was not reported exited");
    }
}

async fn delete(containerd: &Containerd, container_id: &str, exec_id: &str) {
    let request = DeleteProcessRequest { container_id: container_id.to_string(), exec_id: exec_id.to_string() };
    match containerd.tasks().delete_process(request).await {
        Err(status) if status.code() != Code::NotFound => {
            tracing::warn!(%container_id, %exec_id, error = %status, "deleting an exec process failed");
        }
        _ => {}
    }
}

fn remove_dir(dir: &Path) {
    let fifos = Fifos::existing(dir, false, false);
    if let Err(e) = fifos.remove() {
        tracing::warn!(error = %e, "removing an exec's FIFOs failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_of(spec: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&spec).unwrap()
    }

    #[test]
    fn the_exec_runs_as_the_container_process_with_the_requests_command() {
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": true, "consoleSize": {"height": 1, "width": 2},
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
                "args": ["nginx"], "commandLine": "nginx -g",
                "env": ["PATH=/bin", "A=b"], "cwd": "/srv",
                "capabilities": {"bounding": ["CAP_KILL"]}, "noNewPrivileges": true,
                "apparmorProfile": "p", "oomScoreAdj": 5
            },
            "root": {"path": "rootfs"}
        });
        let process: serde_json::Value = serde_json::from_slice(
            &process_spec("c1", &spec_of(spec), &["sh".into(), "-c".into(), "id".into()]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            process,
            serde_json::json!({
                "terminal": false,
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
                "args": ["sh", "-c", "id"],
                "env": ["PATH=/bin", "A=b"], "cwd": "/srv",
                "capabilities": {"bounding": ["CAP_KILL"]}, "noNewPrivileges": true,
                "apparmorProfile": "p", "oomScoreAdj": 5
            })
        );
    }

    #[test]
    fn a_spec_without_process_is_an_internal_error_naming_the_container() {
        let err =
            process_spec("c1", &spec_of(serde_json::json!({"ociVersion": "1.0.2"})), &["true".into()]).unwrap_err();
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
