//! Exec processes: a command that containerd runs in a container's running task
//! (`Tasks.Exec`), its stdio through FIFOs in a directory of its own. The one place crisp
//! creates, starts, waits for, resizes, signals and deletes exec processes: ExecSync in the
//! runtime service and exec sessions in the streaming server both run on it.
//!
//! Contract: [`ExecProcess::start`] makes `<fifo_root>/<exec id>/` (mode 0700, with its
//! parents) and in it a FIFO (mode 0600) for each stream asked for (`stdin`, `stdout`,
//! `stderr`; no `stderr` with a terminal, which merges both streams into stdout). crisp's ends
//! are open before containerd's shim opens its own, so neither open blocks: a read end needs
//! no writer, and stdin's write end is opened read-write so it needs no reader. Then
//! containerd creates and starts the process. The [`ExecProcess`] guard owns the process and
//! the directory: [`ExecProcess::cleanup`] deletes both ([`ExecProcess::finish`]: the
//! directory at once, the exited process in the background). Dropped without it (an error, a
//! caller that went away), it kills a process that may still run (SIGKILL, its exit awaited at
//! most [`KILL_WAIT`]), deletes it from containerd and removes the directory, in the
//! background. [`process_spec`] makes the process spec from the container's OCI spec.

use crisp_containerd::containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, KillRequest, ResizePtyRequest, StartRequest, WaitRequest,
};
use crisp_containerd::{Containerd, ContainerdError};
use crisp_errors::GrpcError;
use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::unix::pipe;
use tonic::Code;
use tracing::Instrument;

/// The type containerd knows an OCI process spec by.
pub const PROCESS_SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// How long a killed process may take to be reported exited.
pub const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ExecProcessError {
    /// The container's OCI spec gives no process to run the exec as.
    #[error("{0}")]
    Spec(String),
    #[error("exec I/O: {doing} {}: {source}", path.display())]
    Io { doing: &'static str, path: PathBuf, source: io::Error },
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
}

impl GrpcError for ExecProcessError {
    fn code(&self) -> Code {
        match self {
            ExecProcessError::Spec(_) | ExecProcessError::Io { .. } => Code::Internal,
            ExecProcessError::Containerd(source) => source.code(),
        }
    }
}

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSize {
    pub width: u16,
    pub height: u16,
}

/// The container's process spec (`oci_spec`: its OCI runtime spec as JSON; every field of the
/// process kept: user, environment, working directory, capabilities...) with `args` as the
/// command, `terminal` as asked and, with a terminal, `console` as its first size.
pub fn process_spec(
    oci_spec: &[u8],
    args: &[String],
    terminal: bool,
    console: Option<ConsoleSize>,
) -> Result<Vec<u8>, ExecProcessError> {
    let error = |reason: String| ExecProcessError::Spec(reason);
    if oci_spec.is_empty() {
        return Err(error("the container record has no OCI spec".into()));
    }
    let mut spec: serde_json::Value =
        serde_json::from_slice(oci_spec).map_err(|e| error(format!("the container's OCI spec: {e}")))?;
    let process = spec
        .get_mut("process")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or_else(|| error("the container's OCI spec has no process".into()))?;
    process.insert("args".into(), serde_json::json!(args));
    process.insert("terminal".into(), serde_json::Value::Bool(terminal));
    process.remove("commandLine");
    match console.filter(|_| terminal) {
        // The terminal starts at the client's size: a command that asks at once sees it.
        Some(ConsoleSize { width, height }) => {
            process.insert("consoleSize".into(), serde_json::json!({"height": height, "width": width}));
        }
        None => {
            process.remove("consoleSize");
        }
    }
    serde_json::to_vec(process).map_err(|e| error(e.to_string()))
}

/// What an exec process is started with.
#[derive(Debug, Clone, Default)]
pub struct NewExec {
    pub container_id: String,
    /// Its process spec as JSON ([`process_spec`]).
    pub process: Vec<u8>,
    pub terminal: bool,
    pub stdin: bool,
    pub stdout: bool,
    /// Ignored with a terminal.
    pub stderr: bool,
}

/// crisp's ends of an exec's FIFOs; None for a stream not asked for.
#[derive(Debug, Default)]
pub struct ExecIo {
    /// Dropping it closes crisp's end only: [`ExecControl::close_stdin`] ends the process's
    /// stdin.
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// An exec process and its FIFO directory (see the module's contract for what its drop does).
#[derive(Debug)]
pub struct ExecProcess {
    control: ExecControl,
    dir: PathBuf,
    /// containerd has the process.
    created: bool,
    /// Its start was asked for, and no exit seen since: it may run.
    may_run: bool,
    /// Deleted from containerd already.
    deleted: bool,
    /// Everything is cleaned up already.
    cleaned: bool,
    /// The wait for the process's exit, asked for before its start (as containerd's own
    /// client does): its answer is not one more round trip after the start.
    exit: Option<tokio::task::JoinHandle<Result<u32, ContainerdError>>>,
}

impl ExecProcess {
    /// Makes the FIFOs in `<fifo_root>/<a new exec id>/`, opens crisp's ends, and has
    /// containerd create and start the process. On an error everything made is undone.
    pub async fn start(
        containerd: &Containerd,
        fifo_root: &Path,
        new: NewExec,
    ) -> Result<(ExecProcess, ExecIo), ExecProcessError> {
        let exec_id = new_exec_id();
        let dir = fifo_root.join(&exec_id);
        let mut exec = ExecProcess {
            control: ExecControl { containerd: containerd.clone(), container_id: new.container_id, exec_id },
            dir,
            created: false,
            may_run: false,
            deleted: false,
            cleaned: false,
            exit: None,
        };
        let stderr = new.stderr && !new.terminal;
        let (paths, io) = exec.make_fifos(new.stdin, new.stdout, stderr)?;
        let as_string = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let control = &exec.control;
        let request = ExecProcessRequest {
            container_id: control.container_id.clone(),
            exec_id: control.exec_id.clone(),
            stdin: as_string(&paths[0]),
            stdout: as_string(&paths[1]),
            stderr: as_string(&paths[2]),
            terminal: new.terminal,
            spec: Some(prost_types::Any { type_url: PROCESS_SPEC_TYPE.into(), value: new.process }),
        };
        let mut tasks = containerd.tasks();
        tasks.exec(request).await.map_err(|s| ContainerdError::call("creating the exec process", s))?;
        exec.created = true;
        exec.exit = Some(tokio::spawn(exec.control.clone().wait().in_current_span()));
        // From here a drop kills: the start may have gone through without its answer.
        exec.may_run = true;
        let request = StartRequest { container_id: control.container_id.clone(), exec_id: control.exec_id.clone() };
        tasks.start(request).await.map_err(|s| ContainerdError::call("starting the exec process", s))?;
        Ok((exec, io))
    }

    /// Makes the directory and the FIFOs asked for, and opens crisp's ends.
    fn make_fifos(
        &self,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<([Option<PathBuf>; 3], ExecIo), ExecProcessError> {
        let io_error = |doing: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| ExecProcessError::Io { doing, path, source }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_error("creating the FIFO directory", &self.dir))?;
        let path = |name: &str, wanted: bool| wanted.then(|| self.dir.join(name));
        let paths = [path("stdin", stdin), path("stdout", stdout), path("stderr", stderr)];
        for path in paths.iter().flatten() {
            nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(io::Error::from)
                .map_err(io_error("making the FIFO", path))?;
        }
        let reader = |path: &Option<PathBuf>| {
            path.as_ref()
                .map(|p| pipe::OpenOptions::new().open_receiver(p).map_err(io_error("opening the FIFO", p)))
                .transpose()
        };
        let io = ExecIo {
            stdin: paths[0]
                .as_ref()
                .map(|p| {
                    pipe::OpenOptions::new().read_write(true).open_sender(p).map_err(io_error("opening the FIFO", p))
                })
                .transpose()?,
            stdout: reader(&paths[1])?,
            stderr: reader(&paths[2])?,
        };
        Ok((paths, io))
    }

    pub fn exec_id(&self) -> &str {
        &self.control.exec_id
    }

    /// A handle for what may go on beside the wait: terminal sizes, stdin's end.
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }

    /// Waits until the process exits; its exit status.
    pub async fn wait(&mut self) -> Result<u32, ContainerdError> {
        let exited = match self.exit.as_mut() {
            Some(asked) => asked.await.unwrap_or_else(|err| {
                Err(ContainerdError::call("waiting for the exec process", tonic::Status::internal(err.to_string())))
            }),
            None => self.control.clone().wait().await,
        };
        self.exit = None;
        let status = exited?;
        self.may_run = false;
        Ok(status)
    }

    /// SIGKILL, then waits (at most [`KILL_WAIT`]) until containerd reports the exit.
    pub async fn kill_and_wait(&mut self) {
        if self.may_run && self.control.kill_and_wait().await {
            self.may_run = false;
        }
    }

    /// Deletes the process from containerd (which closes the shim's ends of its FIFOs). The
    /// process must have exited.
    pub async fn delete(&mut self) {
        if self.created && !self.deleted {
            self.control.delete().await;
            self.deleted = true;
        }
    }

    /// For a process whose exit was seen: removes the FIFOs now and has containerd delete the
    /// process in the background (as the guard's drop does), for a caller that answers without
    /// waiting for the shim.
    pub fn finish(self) {
        remove_dir(&self.dir);
        drop(self);
    }

    /// Kills the process if it may still run, deletes it and removes the FIFOs.
    pub async fn cleanup(mut self) {
        self.kill_and_wait().await;
        self.delete().await;
        remove_dir(&self.dir);
        self.cleaned = true;
    }
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        if let Some(asked) = self.exit.take() {
            asked.abort();
        }
        if self.cleaned {
            return;
        }
        let (control, dir) = (self.control.clone(), self.dir.clone());
        let (kill, delete) = (self.may_run, self.created && !self.deleted);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if kill || delete => {
                runtime.spawn(async move {
                    if kill {
                        control.kill_and_wait().await;
                    }
                    if delete {
                        control.delete().await;
                    }
                    remove_dir(&dir);
                });
            }
            // Nothing in containerd (or no runtime to ask it with): the directory alone.
            _ => remove_dir(&dir),
        }
    }
}

/// An exec process by name, for what goes on beside its wait. Cheap to clone.
#[derive(Clone)]
pub struct ExecControl {
    containerd: Containerd,
    container_id: String,
    exec_id: String,
}

impl std::fmt::Debug for ExecControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecControl")
            .field("container_id", &self.container_id)
            .field("exec_id", &self.exec_id)
            .finish_non_exhaustive()
    }
}

impl ExecControl {
    /// Sets the size of the process's terminal.
    pub async fn resize(&self, size: ConsoleSize) -> Result<(), ContainerdError> {
        let request = ResizePtyRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            width: u32::from(size.width),
            height: u32::from(size.height),
        };
        self.containerd
            .tasks()
            .resize_pty(request)
            .await
            .map_err(|s| ContainerdError::call("resizing a terminal", s))?;
        Ok(())
    }

    /// Closes the process's stdin (the shim's end of its FIFO): the process reads its end.
    pub async fn close_stdin(&self) -> Result<(), ContainerdError> {
        let request =
            CloseIoRequest { container_id: self.container_id.clone(), exec_id: self.exec_id.clone(), stdin: true };
        self.containerd.tasks().close_io(request).await.map_err(|s| ContainerdError::call("closing stdin", s))?;
        Ok(())
    }

    /// Waits until the process exits; its exit status.
    async fn wait(self) -> Result<u32, ContainerdError> {
        let request = WaitRequest { container_id: self.container_id, exec_id: self.exec_id };
        let exited = self
            .containerd
            .tasks()
            .wait(request)
            .await
            .map_err(|s| ContainerdError::call("waiting for the exec process", s))?;
        Ok(exited.into_inner().exit_status)
    }

    /// SIGKILL, then waits at most [`KILL_WAIT`]; whether the exit was seen.
    async fn kill_and_wait(&self) -> bool {
        let (container_id, exec_id) = (&self.container_id, &self.exec_id);
        let kill = KillRequest {
            container_id: container_id.clone(),
            exec_id: exec_id.clone(),
            signal: nix::sys::signal::Signal::SIGKILL as u32,
            all: false,
        };
        // A process that exited by itself meanwhile answers an error: the wait tells.
        let _ = self.containerd.tasks().kill(kill).await;
        let wait = WaitRequest { container_id: container_id.clone(), exec_id: exec_id.clone() };
        let mut tasks = self.containerd.tasks();
        match tokio::time::timeout(KILL_WAIT, tasks.wait(wait)).await {
            Ok(Ok(_)) => true,
            Ok(Err(status)) if status.code() == Code::NotFound => true,
            Ok(Err(status)) => {
                tracing::warn!(%container_id, %exec_id, error = %status, "waiting for a killed exec process failed");
                false
            }
            Err(_) => {
                tracing::warn!(%container_id, %exec_id, "a killed exec process was not reported exited");
                false
            }
        }
    }

    async fn delete(&self) {
        let (container_id, exec_id) = (&self.container_id, &self.exec_id);
        let request = DeleteProcessRequest { container_id: container_id.clone(), exec_id: exec_id.clone() };
        match self.containerd.tasks().delete_process(request).await {
            Err(status) if status.code() != Code::NotFound => {
                tracing::warn!(%container_id, %exec_id, error = %status, "deleting an exec process failed");
            }
            _ => {}
        }
    }
}

/// 128 random bits in hex (containerd takes up to 76 characters).
fn new_exec_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: unique in this process is enough, containerd refuses a duplicate.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        bytes = (nanos ^ (u128::from(std::process::id()) << 64) ^ u128::from(next)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), error = %e, "removing an exec's FIFOs failed");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
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
        }))
        .unwrap()
    }

    fn args(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_exec_runs_as_the_container_process_with_its_own_command() {
        let process = process_spec(&spec(), &args(&["sh", "-c", "id"]), false, None).unwrap();
        let process: serde_json::Value = serde_json::from_slice(&process).unwrap();
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
    fn a_terminal_starts_at_the_size_given_and_only_a_terminal_has_one() {
        let size = Some(ConsoleSize { width: 80, height: 24 });
        let process: serde_json::Value =
            serde_json::from_slice(&process_spec(&spec(), &args(&["sh"]), true, size).unwrap()).unwrap();
        assert_eq!(process["terminal"], true);
        assert_eq!(process["consoleSize"], serde_json::json!({"height": 24, "width": 80}));

        let process: serde_json::Value =
            serde_json::from_slice(&process_spec(&spec(), &args(&["sh"]), true, None).unwrap()).unwrap();
        assert_eq!(process.get("consoleSize"), None);
        let process: serde_json::Value =
            serde_json::from_slice(&process_spec(&spec(), &args(&["sh"]), false, size).unwrap()).unwrap();
        assert_eq!(process.get("consoleSize"), None);
    }

    #[test]
    fn a_spec_without_a_process_is_an_internal_error() {
        let spec = serde_json::to_vec(&serde_json::json!({"ociVersion": "1.0.2"})).unwrap();
        let err = process_spec(&spec, &args(&["true"]), false, None).unwrap_err();
        assert_eq!(err.code(), Code::Internal);
        assert!(err.to_string().contains("no process"), "{err}");
        let err = process_spec(b"", &args(&["true"]), false, None).unwrap_err();
        assert_eq!(err.code(), Code::Internal);
    }

    #[test]
    fn exec_ids_are_new_each_time_and_fit_containerd() {
        let (a, b) = (new_exec_id(), new_exec_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[tokio::test]
    async fn a_start_that_fails_leaves_no_fifos_behind() {
        let dir = tempfile::tempdir().unwrap();
        let containerd = Containerd::connect(&dir.path().join("absent.sock"), "crisp-test").unwrap();
        let fifo_root = dir.path().join("exec");
        let new = NewExec {
            container_id: "c1".into(),
            process: process_spec(&spec(), &args(&["true"]), false, None).unwrap(),
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let err = ExecProcess::start(&containerd, &fifo_root, new).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.to_string().contains("creating the exec process"), "{err}");
        assert_eq!(std::fs::read_dir(&fifo_root).unwrap().count(), 0, "the exec's directory is removed");
    }

    #[tokio::test]
    async fn the_fifos_asked_for_are_made_open_and_removed_with_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let containerd = Containerd::connect(&dir.path().join("absent.sock"), "crisp-test").unwrap();
        let exec_dir = dir.path().join("exec").join("e1");
        let exec = ExecProcess {
            control: ExecControl { containerd, container_id: "c1".into(), exec_id: "e1".into() },
            dir: exec_dir.clone(),
            created: false,
            may_run: false,
            deleted: false,
            cleaned: false,
            exit: None,
        };
        let (paths, io) = exec.make_fifos(true, true, false).unwrap();
        assert!(paths[0].is_some() && paths[1].is_some() && paths[2].is_none());
        assert!(io.stdin.is_some() && io.stdout.is_some() && io.stderr.is_none());
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let meta = std::fs::metadata(paths[1].as_ref().unwrap()).unwrap();
        assert!(meta.file_type().is_fifo());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&exec_dir).unwrap().permissions().mode() & 0o777, 0o700);

        drop(io);
        drop(exec);
        assert!(!exec_dir.exists(), "the exec's directory is removed with its guard");
    }
}
