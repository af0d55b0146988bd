//! RemoveContainer: "removes the container. If the container is running, the container must
//! be forcibly removed. This call is idempotent, and must not return an error if the container
//! has already been removed."
//!
//! A running container is killed and its exit recorded; then its task (unless this process saw
//! it deleted when it recorded the exit; one still running under a record that does not say
//! so, left by a start cut off, is killed first), its record, its snapshot, its FIFOs and
//! directories go. The record goes before the snapshot and the
//! directories: a failure after it leaves nothing the CRI can see, and containerd's GC takes
//! an unreferenced snapshot anyway.

use super::create::remove_snapshot;
use super::record::{self, State, Stored};
use super::{ContainerError, Containers, TaskGone, stop};
use crate::logs::Fifos;
use crisp_containerd::tasks::is_stopped;
use crisp_proto::cri::ContainerEventType;

pub async fn remove(containers: &Containers, id: &str) -> Result<(), ContainerError> {
    let Some(stored) = record::find(&containers.containerd, id).await? else {
        tracing::debug!(id, "RemoveContainer of an unknown container: nothing to do");
        return Ok(());
    };
    let id = stored.id.clone();
    if stored.state == State::Running {
        let exit = stop::stop_task(containers, &stored, 0).await?;
        containers.record_exit_of(stored.clone(), exit).await;
    }
    let lock = containers.lock(&id).await;
    // A task whose deletion this process saw needs no second one.
    if containers.exit_recorded(&id) != Some(TaskGone::Yes) {
        delete_task(containers, &stored).await?;
    }
    containers.containerd.delete_container_record(&id).await.map_err(ContainerError::containerd(&id))?;
    containers.index_remove(&id).await;
    remove_snapshot(containers, &stored.info.snapshotter, &id).await;
    let fifos = Fifos::existing(&containers.state_dir(&id).join("io"), stored.config.stdin, stored.config.tty);
    if let Err(err) = fifos.remove() {
        tracing::debug!(id, error = %err, "removing the container's FIFOs");
    }
    for dir in [containers.state_dir(&id), containers.root_dir(&id)] {
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(id, dir = %dir.display(), error = %err, "removing the container's directory");
        }
    }
    drop(lock);
    containers.forget(&id);
    tracing::info!(id, "container removed");
    containers.publish(&id, &stored.info.sandbox_id, ContainerEventType::ContainerDeletedEvent).await;
    Ok(())
}

/// Deletes the container's task. One still running under a record that does not say so (a
/// start cut off after the task was made) is killed first: a removal is forcible.
async fn delete_task(containers: &Containers, stored: &Stored) -> Result<(), ContainerError> {
    let (id, pod) = (stored.id.as_str(), stored.info.sandbox_id.as_str());
    let deleted = {
        let _turn = containers.shim_turn(pod).await;
        containers.containerd.delete_task(id).await
    };
    let Err(err) = deleted else { return Ok(()) };
    // The task may have gone under the call (deleted by the exit's recording, its shim gone).
    match containers.containerd.task(id).await.map_err(ContainerError::containerd(id))? {
        None => Ok(()),
        Some(process) if is_stopped(&process) => Err(ContainerError::containerd(id)(err)),
        Some(_) => {
            tracing::info!(id, "removing a container whose task still runs: killing it");
            stop::stop_task(containers, stored, 0).await?;
            let _turn = containers.shim_turn(pod).await;
            containers.containerd.delete_task(id).await.map(drop).map_err(ContainerError::containerd(id))
        }
    }
}
