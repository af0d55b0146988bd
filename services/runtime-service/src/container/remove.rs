//! RemoveContainer: "removes the container. If the container is running, the container must
//! be forcibly removed. This call is idempotent, and must not return an error if the container
//! has already been removed."
//!
//! A running container is killed and its exit recorded; then its task, its record, its
//! snapshot, its FIFOs and directories go. The record goes before the snapshot and the
//! directories: a failure after it leaves nothing the CRI can see, and containerd's GC takes
//! an unreferenced snapshot anyway.

use super::create::remove_snapshot;
use super::record::{self, State};
use super::{ContainerError, Containers, stop};
use crate::logs::Fifos;
use crisp_proto::cri::ContainerEventType;

pub async fn remove(containers: &Containers, id: &str) -> Result<(), ContainerError> {
    let Some(stored) = record::find(&containers.containerd, id).await? else {
        tracing::debug!(id, "RemoveContainer of an unknown container: nothing to do");
        return Ok(());
    };
    let id = stored.id.clone();
    if stored.state == State::Running {
        stop::stop(containers, &id, 0).await?;
    }
    let lock = containers.lock(&id).await;
    let deleted = {
        let _turn = containers.shim_turn(&stored.info.sandbox_id).await;
        containers.containerd.delete_task(&id).await
    };
    if let Err(err) = deleted {
        // The task may have gone under the call (deleted by the exit's recording, its shim gone).
        if containers.containerd.task(&id).await.map_err(ContainerError::containerd(&id))?.is_some() {
            return Err(ContainerError::containerd(&id)(err));
        }
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
