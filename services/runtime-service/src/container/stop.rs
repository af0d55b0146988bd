//! StopContainer: "stops a running container with a grace period (i.e., timeout). This call
//! is idempotent, and must not return an error if the container has already been stopped."
//!
//! The stop signal is the one the CreateContainer request named (`stop_signal`), else the
//! image's `STOPSIGNAL`, else SIGTERM (what the spec builder recorded). After `timeout`
//! seconds (0: at once) every process of the container gets SIGKILL. The call returns once
//! the exit is recorded. An unknown id, or a container not running, is stopped already.

use super::record::{self, State, Stored};
use super::{ContainerError, Containers};
use crisp_containerd::tasks::{Exit, is_stopped};
use crisp_proto::cri::Signal;
use nix::libc;
use std::time::Duration;

/// How long a SIGKILLed container may take to be reaped before the stop gives up.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// The number of a CRI `Signal` (None for `RUNTIME_DEFAULT` or one this system lacks).
pub fn signal_number(signal: i32) -> Option<i32> {
    let signal = Signal::try_from(signal).ok()?;
    let name = signal.as_str_name();
    if let Some(offset) = name.strip_prefix("SIGRTMINPLUS") {
        return Some(libc::SIGRTMIN() + offset.parse::<i32>().ok()?);
    }
    if let Some(offset) = name.strip_prefix("SIGRTMAXMINUS") {
        return Some(libc::SIGRTMAX() - offset.parse::<i32>().ok()?);
    }
    Some(match name {
        "SIGRTMIN" => libc::SIGRTMIN(),
        "SIGRTMAX" => libc::SIGRTMAX(),
        "SIGCLD" => libc::SIGCHLD,
        "SIGPOLL" => libc::SIGIO,
        "SIGIOT" => libc::SIGABRT,
        other => other.parse::<nix::sys::signal::Signal>().ok()? as i32,
    })
}

pub async fn stop(containers: &Containers, id: &str, timeout: i64) -> Result<(), ContainerError> {
    let Some(stored) = record::find(&containers.containerd, id).await? else {
        tracing::debug!(id, "StopContainer of an unknown container: nothing to do");
        return Ok(());
    };
    if stored.state != State::Running {
        return Ok(());
    }
    let exit = stop_task(containers, &stored, timeout).await?;
    // The record read above is recorded: an exit recorded meanwhile by the event stream is
    // seen under the lock.
    containers.record_exit_of(stored, exit).await;
    Ok(())
}

/// Signals the running container's task, then kills it after `timeout` seconds; answers its
/// exit (None: the task was gone).
pub(super) async fn stop_task(
    containers: &Containers,
    stored: &Stored,
    timeout: i64,
) -> Result<Option<Exit>, ContainerError> {
    let id = stored.id.as_str();
    let pod = stored.info.sandbox_id.as_str();
    let signal = signal_number(stored.config.stop_signal)
        .or((stored.info.stop_signal > 0).then_some(stored.info.stop_signal))
        .unwrap_or(libc::SIGTERM);
    if timeout > 0 {
        if let Some(exit) = kill(containers, pod, id, signal, false).await? {
            return Ok(exit);
        }
        let grace = Duration::from_secs(timeout as u64);
        if let Ok(waited) = tokio::time::timeout(grace, wait_exit(containers, id)).await {
            return waited;
        }
        tracing::info!(id, ?grace, "the container outlived its grace period: killing it");
    }
    // SIGKILL to the first process of a PID namespace of its own takes every process in it along
    // (the kernel does it); only a container sharing a namespace needs `runc kill --all`, which
    // on cgroup v1 freezes the cgroup around the signals and costs several times a plain kill.
    let all = !owns_pid_namespace(&stored.spec);
    if let Some(exit) = kill(containers, pod, id, libc::SIGKILL, all).await? {
        return Ok(exit);
    }
    tokio::time::timeout(KILL_WAIT, wait_exit(containers, id)).await.map_err(|_| ContainerError::Internal {
        id: id.to_string(),
        reason: format!("still running {KILL_WAIT:?} after SIGKILL"),
    })?
}

/// Whether the OCI spec (JSON) gives the container a PID namespace of its own (one without a
/// path to join). An unreadable spec answers false: kill everything.
fn owns_pid_namespace(spec: &[u8]) -> bool {
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(spec) else { return false };
    spec["linux"]["namespaces"]
        .as_array()
        .is_some_and(|all| all.iter().any(|ns| ns["type"] == "pid" && ns["path"].as_str().is_none_or(str::is_empty)))
}

/// Signals the task. `Some(exit)` where the task ended before the signal reached it: the
/// exit's recording deleted it and the pod's shim, with nothing left to serve, exited (the call
/// then fails with `ttrpc: closed`): stopped, not an error. The call takes its turn at the
/// pod's shim ([`Containers::shim_turn`]).
async fn kill(
    containers: &Containers,
    pod: &str,
    id: &str,
    signal: i32,
    all: bool,
) -> Result<Option<Option<Exit>>, ContainerError> {
    let killed = {
        let _turn = containers.shim_turn(pod).await;
        containers.containerd.kill_task(id, signal as u32, all).await
    };
    match killed {
        Ok(()) => Ok(None),
        Err(err) => ended(containers, id, err).await.map(Some),
    }
}

/// After a call on the task failed with `err`: the task's exit where it is gone or stopped
/// (the call failed because the task ended under it), else `err`.
async fn ended(
    containers: &Containers,
    id: &str,
    err: crisp_containerd::ContainerdError,
) -> Result<Option<Exit>, ContainerError> {
    match containers.containerd.task(id).await {
        Ok(None) => Ok(None),
        Ok(Some(process)) if is_stopped(&process) => Ok(Some(Exit {
            code: process.exit_status,
            at: crisp_containerd::tasks::unix_nanos(process.exited_at.as_ref()),
        })),
        _ => Err(ContainerError::containerd(id)(err)),
    }
}

/// Waits for the task's exit. A wait cut off because the task went away under it (the exit
/// was recorded and the task deleted meanwhile: the pod's shim may then exit, closing the
/// wait's connection) is an exit, not an error, when the task is indeed gone or stopped.
async fn wait_exit(containers: &Containers, id: &str) -> Result<Option<Exit>, ContainerError> {
    match containers.containerd.wait_task(id).await {
        Ok(exit) => Ok(exit),
        Err(err) => ended(containers, id, err).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pid_namespace_of_its_own_is_owned() {
        let own = br#"{"linux":{"namespaces":[{"type":"mount"},{"type":"pid"}]}}"#;
        let joined = br#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/7/ns/pid"}]}}"#;
        let host = br#"{"linux":{"namespaces":[{"type":"mount"}]}}"#;
        assert!(owns_pid_namespace(own));
        assert!(!owns_pid_namespace(joined));
        assert!(!owns_pid_namespace(host));
        assert!(!owns_pid_namespace(b"not json"));
    }

    #[test]
    fn cri_signals_become_numbers() {
        assert_eq!(signal_number(Signal::RuntimeDefault as i32), None);
        assert_eq!(signal_number(Signal::Sigterm as i32), Some(libc::SIGTERM));
        assert_eq!(signal_number(Signal::Sigusr1 as i32), Some(libc::SIGUSR1));
        assert_eq!(signal_number(Signal::Sigrtminplus3 as i32), Some(libc::SIGRTMIN() + 3));
        assert_eq!(signal_number(Signal::Sigcld as i32), Some(libc::SIGCHLD));
    }
}
