//! StartContainer: "starts the container."
//!
//! Only a created container starts (else FAILED_PRECONDITION). Its FIFOs are made and the log
//! writer opened on them (read ends first, so the shim's opens never block), the task is
//! created on the snapshot's mounts with the FIFOs as stdio, the writer starts copying, and the
//! task starts; the record then says `running` with its start time. A start that fails
//! leaves the container exited with reason `StartError` and the error as message, as
//! containerd's CRI plugin does, and kills and deletes what it made.

use super::record::{self, State, Stored};
use super::{ContainerError, Containers, now_nanos};
use crate::logs::{Fifos, LogWriter};
use crisp_containerd::containerd_client::services::v1::snapshots::MountsRequest;
use crisp_containerd::tasks::NewTask;
use crisp_proto::cri::ContainerEventType;
use std::path::PathBuf;
use std::sync::Arc;

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
    let found =
        record::find(&containers.containerd, id).await?.ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
    // Read again under the lock: an exit recorded meanwhile is seen.
    let _lock = containers.lock(&found.id).await;
    let mut stored =
        record::find(&containers.containerd, &found.id).await?.ok_or_else(|| ContainerError::NotFound(found.id))?;
    if stored.state != State::Created {
        return Err(ContainerError::WrongState { id: stored.id, state: stored.state.label(), wanted: "created" });
    }
    let id = stored.id.clone();
    match run_task(containers, &stored).await {
        Ok(started_at) => {
            stored.state = State::Running;
            stored.info.started_at = started_at;
            containers.save(&stored).await?;
            tracing::info!(id, "container started");
            containers.publish(&id, &stored.info.sandbox_id, ContainerEventType::ContainerStartedEvent).await;
            Ok(())
        }
        Err(err) => {
            // Whatever was made goes; the container is exited with the reason.
            let _ = containers.containerd.kill_task(&id, nix::libc::SIGKILL as u32, true).await;
            let _ = containers.containerd.delete_task(&id).await;
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
            if let Err(save) = containers.save(&stored).await {
                tracing::warn!(id, error = %save, "recording a failed start");
            }
            containers.publish(&id, &stored.info.sandbox_id, ContainerEventType::ContainerStoppedEvent).await;
            Err(err)
        }
    }
}

/// Creates and starts the task; answers when it was started (taken just before the start, so
/// a process that exits at once never has finished before it started).
async fn run_task(containers: &Containers, stored: &Stored) -> Result<i64, ContainerError> {
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
    if let Some((_, writer)) = &io {
        containers.set_log_writer(id, writer.clone());
    }
    containers.containerd.create_task(task).await.map_err(ContainerError::containerd(id))?;
    if let Some((_, writer)) = &io {
        writer.start();
    }
    let started_at = now_nanos();
    containers.containerd.start_task(id).await.map_err(ContainerError::containerd(id))?;
    Ok(started_at)
}
