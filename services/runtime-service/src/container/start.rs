//! StartContainer: "starts the container."
//!
//! Only a created container starts (else FAILED_PRECONDITION). Its FIFOs are made and the log
//! writer opened on them (read ends first, so the shim's opens never block), the task is
//! created on the snapshot's mounts with the FIFOs as stdio, the writer starts copying, and the
//! task starts while the record is updated to `running` with its start time (together: the
//! record's update does not wait for runc). A start that fails leaves the container exited
//! with reason `StartError` and the error as message, as containerd's CRI plugin does, and
//! kills and deletes what it made.
//!
//! A start, once begun, runs to its end even when its caller goes away (a kubelet's deadline):
//! cut off between the task's creation and the record's update, it would leave a task the
//! record does not know. A start cut off anyway (the service died there) left its task: a later
//! start, or the restarted service's reconciliation ([`recover`]), takes it over as containerd's
//! CRI plugin does after a restart: a task only created is deleted (the container stays created
//! and starts anew), a running one is the container running, one that exited is its exit.

use super::TaskGone;
use super::record::{self, State, Stored};
use super::{ContainerError, Containers, now_nanos};
use crate::logs::{Fifos, LogWriter};
use crisp_containerd::containerd_client::services::v1::snapshots::MountsRequest;
use crisp_containerd::tasks::{Exit, NewTask, TaskStatus, is_stopped, unix_nanos};
use crisp_proto::cri::ContainerEventType;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;

fn path(p: &Option<PathBuf>) -> String {
    p.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
}

/// The container's FIFOs and the writer reading them; None where they cannot be made (the
/// task then runs without stdio, and the reason is logged).
fn open_io(containers: &Containers, stored: &Stored) -> Option<(Fifos, Arc<LogWriter>)> {
    let config = &stored.config;
    let dir = containers.state_dir(&stored.id).join("io");
    let fifos = match Fifos::create(&dir, config.stdin, config.tty) {
        Ok(fifos) => fifos,
        Err(err) => {
            tracing::warn!(id = %stored.id, error = %err, "cannot make the container's FIFOs: it runs without stdio");
            return None;
        }
    };
    let log_path = (!stored.info.log_path.is_empty()).then(|| PathBuf::from(&stored.info.log_path));
    match LogWriter::open(&fifos, log_path, containers.max_log_line_bytes()) {
        Ok(writer) => Some((fifos, Arc::new(writer))),
        Err(err) => {
            tracing::warn!(id = %stored.id, error = %err, "cannot open the container's log writer: it runs without stdio");
            let _ = fifos.remove();
            None
        }
    }
}

pub async fn start(containers: &Containers, id: &str) -> Result<(), ContainerError> {
    let (owned, id) = (containers.clone(), id.to_string());
    let id_for_error = id.clone();
    tokio::spawn(async move { start_to_end(&owned, &id).await }.in_current_span()).await.map_err(|err| {
        ContainerError::Internal { id: id_for_error, reason: format!("the start did not finish: {err}") }
    })?
}

/// The container's lock and its record, read under it (once, where `id` is a whole id).
async fn locked_record(
    containers: &Containers,
    id: &str,
) -> Result<(tokio::sync::OwnedMutexGuard<()>, Stored), ContainerError> {
    if is_whole_id(id) {
        let lock = containers.lock(id).await;
        match record::find(&containers.containerd, id).await? {
            Some(stored) if stored.id == id => return Ok((lock, stored)),
            Some(_) => {}
            None => {
                // No lock is kept for a container that is not there.
                containers.forget(id);
                return Err(ContainerError::NotFound(id.to_string()));
            }
        }
    }
    let found =
        record::find(&containers.containerd, id).await?.ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
    // Read again under the lock: an exit recorded meanwhile is seen.
    let lock = containers.lock(&found.id).await;
    let stored =
        record::find(&containers.containerd, &found.id).await?.ok_or_else(|| ContainerError::NotFound(found.id))?;
    Ok((lock, stored))
}

/// Whether `id` has the form of the ids CreateContainer makes (64 hex digits), not a prefix.
fn is_whole_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn start_to_end(containers: &Containers, id: &str) -> Result<(), ContainerError> {
    let (_lock, mut stored) = locked_record(containers, id).await?;
    if stored.state != State::Created {
        return Err(ContainerError::WrongState { id: stored.id, state: stored.state.label(), wanted: "created" });
    }
    let id = stored.id.clone();
    match run_task(containers, &stored).await {
        Ok(Ran::Started(running)) => {
            containers.index_put(&running).await;
            tracing::info!(id, "container started");
            containers.publish(&id, &running.info.sandbox_id, ContainerEventType::ContainerStartedEvent).await;
            Ok(())
        }
        Ok(Ran::Exited(exit)) => {
            containers.record_exit_locked(stored, exit).await;
            Err(ContainerError::WrongState { id, state: State::Exited.label(), wanted: "created" })
        }
        Err(err) => {
            // Whatever was made goes; the container is exited with the reason.
            let _ = containers.containerd.kill_task(&id, nix::libc::SIGKILL as u32, true).await;
            let deleted = containers.containerd.delete_task(&id).await;
            if let Some(writer) = containers.take_log_writer(&id) {
                drop(writer);
            }
            let _ =
                Fifos::existing(&containers.state_dir(&id).join("io"), stored.config.stdin, stored.config.tty).remove();
            stored.state = State::Exited;
            let now = now_nanos();
            stored.info.started_at = now;
            stored.info.finished_at = now;
            stored.info.exit_code = 128;
            stored.info.reason = "StartError".into();
            stored.info.message = crisp_errors::message_chain(&err);
            match containers.save(&stored).await {
                Ok(()) => containers.set_exit_recorded(&id, if deleted.is_ok() { TaskGone::Yes } else { TaskGone::No }),
                Err(save) => tracing::warn!(id, error = %save, "recording a failed start"),
            }
            containers.publish(&id, &stored.info.sandbox_id, ContainerEventType::ContainerStoppedEvent).await;
            Err(err)
        }
    }
}

/// How the task went.
enum Ran {
    /// Started (or found running): the record, saved, as it is now.
    Started(Box<Stored>),
    /// Found exited, left by a start cut off: its exit (None: unknown), not yet recorded.
    Exited(Option<Exit>),
}

/// Creates and starts the task, and records the container running (its start time taken just
/// before the start, so a process that exits at once never has finished before it started).
async fn run_task(containers: &Containers, stored: &Stored) -> Result<Ran, ContainerError> {
    let id = &stored.id;
    let rootfs = containers
        .containerd
        .snapshots()
        .mounts(MountsRequest { snapshotter: stored.info.snapshotter.clone(), key: id.clone() })
        .await
        .map_err(|s| ContainerError::containerd(id)(crisp_containerd::ContainerdError::call("snapshot mounts", s)))?
        .into_inner()
        .mounts;
    let io = open_io(containers, stored);
    let task = NewTask {
        container_id: id.clone(),
        rootfs,
        stdin: io.as_ref().map(|(f, _)| path(&f.stdin)).unwrap_or_default(),
        stdout: io.as_ref().map(|(f, _)| f.stdout.display().to_string()).unwrap_or_default(),
        stderr: io.as_ref().map(|(f, _)| path(&f.stderr)).unwrap_or_default(),
        terminal: stored.config.tty,
    };
    let writer = io.map(|(_, writer)| writer);
    if let Some(writer) = &writer {
        containers.set_log_writer(id, writer.clone());
    }
    let mut running = stored.clone();
    running.state = State::Running;
    match containers.containerd.create_task(task.clone()).await {
        Ok(_) => {}
        Err(err) if err.is_already_exists() => {
            let left = leftover(containers, stored).await?;
            if !matches!(left, Leftover::Cleared) {
                // The task holds the same FIFOs: this writer reads what it writes.
                if let Some(writer) = &writer {
                    writer.start();
                }
            }
            match left {
                Leftover::Cleared => {
                    containers.containerd.create_task(task).await.map_err(ContainerError::containerd(id))?;
                }
                Leftover::Running => {
                    running.info.started_at = now_nanos();
                    record::save(&containers.containerd, &running).await?;
                    return Ok(Ran::Started(Box::new(running)));
                }
                Leftover::Exited(exit) => return Ok(Ran::Exited(exit)),
            }
        }
        Err(err) => return Err(ContainerError::containerd(id)(err)),
    }
    if let Some(writer) = &writer {
        writer.start();
    }
    running.info.started_at = now_nanos();
    let (started, saved) =
        tokio::join!(containers.containerd.start_task(id), record::save(&containers.containerd, &running));
    started.map_err(ContainerError::containerd(id))?;
    saved?;
    Ok(Ran::Started(Box::new(running)))
}

/// What a task left by a start cut off was found to be.
enum Leftover {
    /// None (any more): a task can be created.
    Cleared,
    /// Running: the container runs.
    Running,
    /// Exited: the container ran.
    Exited(Option<Exit>),
}

/// Finds the task a start cut off left (see the module's contract); one only created is deleted.
async fn leftover(containers: &Containers, stored: &Stored) -> Result<Leftover, ContainerError> {
    let id = &stored.id;
    let Some(process) = containers.containerd.task(id).await.map_err(ContainerError::containerd(id))? else {
        return Ok(Leftover::Cleared);
    };
    if process.status == TaskStatus::Created as i32 {
        tracing::info!(id, "deleting the created task a cut-off start left");
        let _turn = containers.shim_turn(&stored.info.sandbox_id).await;
        containers.containerd.delete_task(id).await.map_err(ContainerError::containerd(id))?;
        return Ok(Leftover::Cleared);
    }
    if is_stopped(&process) {
        tracing::info!(id, "the task a cut-off start left has exited: recording its exit");
        return Ok(Leftover::Exited(Some(Exit {
            code: process.exit_status,
            at: unix_nanos(process.exited_at.as_ref()),
        })));
    }
    tracing::info!(id, "the task a cut-off start left runs: the container is running");
    Ok(Leftover::Running)
}

/// Brings a created container whose record a cut-off start left behind its task in line with
/// it (the restarted service's reconciliation calls it for every created container).
pub(super) async fn recover(containers: &Containers, id: &str) {
    let _lock = containers.lock(id).await;
    // Read under the lock: a start of this process may have come first.
    let stored = match record::find(&containers.containerd, id).await {
        Ok(Some(stored)) if stored.state == State::Created => stored,
        Ok(_) => return,
        Err(err) => {
            tracing::warn!(id, error = %err, "reading a created container to recover it");
            return;
        }
    };
    let id = stored.id.clone();
    match leftover(containers, &stored).await {
        Ok(Leftover::Cleared) => {}
        Ok(Leftover::Running) => {
            containers.reattach(&stored);
            let mut running = stored;
            running.state = State::Running;
            running.info.started_at = now_nanos();
            match containers.save(&running).await {
                Ok(()) => {
                    containers.publish(&id, &running.info.sandbox_id, ContainerEventType::ContainerStartedEvent).await
                }
                Err(err) => tracing::warn!(id, error = %err, "recording a container found running"),
            }
        }
        Ok(Leftover::Exited(exit)) => containers.record_exit_locked(stored, exit).await,
        Err(err) => tracing::warn!(id, error = %err, "looking for a task a cut-off start left"),
    }
}
