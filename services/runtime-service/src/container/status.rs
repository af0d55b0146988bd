//! ContainerStatus: "returns status of the container. If the container is not present,
//! returns an error." Unknown ids are NOT_FOUND; ids resolve by unique prefix. Answered from
//! the in-memory index ([`super::index`]), as containerd's CRI plugin answers from its store;
//! `verbose` reads the record and the task for `info["info"]`: the OCI spec, the pid of a
//! running container, the sandbox id and the record as crisp keeps it, as JSON (as
//! containerd's CRI plugin answers).
//!
//! Also the CRI view of a container that ListContainers and GetContainerEvents share, and the
//! building of lifecycle events.

use super::record::{self, State, Stored};
use super::{ContainerError, Containers, now_nanos};
use crate::sandbox;
use crisp_proto::cri::{
    ContainerEventResponse, ContainerEventType, ContainerResources, ContainerStatus, ContainerStatusResponse,
    ContainerUser, ImageSpec, LinuxContainerUser, Signal,
};
use std::collections::HashMap;

/// The CRI `Signal` of a signal number (RUNTIME_DEFAULT when it has no name there).
fn cri_signal(number: i32) -> i32 {
    nix::sys::signal::Signal::try_from(number)
        .ok()
        .and_then(|s| Signal::from_str_name(s.as_str()))
        .map(|s| s as i32)
        .unwrap_or_default()
}

/// The CRI status of a stored container.
pub fn cri_status(stored: &Stored) -> ContainerStatus {
    let (config, info) = (&stored.config, &stored.info);
    ContainerStatus {
        id: stored.id.clone(),
        metadata: config.metadata.clone(),
        state: stored.state.cri() as i32,
        created_at: info.created_at,
        started_at: info.started_at,
        finished_at: info.finished_at,
        exit_code: info.exit_code,
        image: Some(ImageSpec {
            image: info.image.clone(),
            annotations: config.image.as_ref().map(|i| i.annotations.clone()).unwrap_or_default(),
            ..Default::default()
        }),
        image_ref: info.image_ref.clone(),
        reason: info.reason.clone(),
        message: info.message.clone(),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        mounts: config.mounts.clone(),
        log_path: info.log_path.clone(),
        resources: config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|linux| ContainerResources { linux: Some(linux), windows: None }),
        image_id: info.image_id.clone(),
        user: Some(ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: i64::from(info.uid),
                gid: i64::from(info.gid),
                supplemental_groups: info.supplemental_groups.iter().map(|g| i64::from(*g)).collect(),
            }),
        }),
        stop_signal: if config.stop_signal != 0 { config.stop_signal } else { cri_signal(info.stop_signal) },
    }
}

pub async fn status(
    containers: &Containers,
    id: &str,
    verbose: bool,
) -> Result<ContainerStatusResponse, ContainerError> {
    if !verbose {
        let status = containers.indexed_status(id).await?.ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        return Ok(ContainerStatusResponse { status: Some(status), info: HashMap::new() });
    }
    // Verbose: the spec and the pid are not in the index; the record is read.
    let stored =
        record::find(&containers.containerd, id).await?.ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
    let pid = match stored.state {
        State::Running => containers
            .containerd
            .task(&stored.id)
            .await
            .map_err(ContainerError::containerd(&stored.id))?
            .map(|p| p.pid)
            .unwrap_or_default(),
        _ => 0,
    };
    let spec: serde_json::Value = serde_json::from_slice(&stored.spec).unwrap_or_default();
    let json = serde_json::json!({
        "sandboxID": stored.info.sandbox_id,
        "pid": pid,
        "runtimeSpec": spec,
        "snapshotKey": stored.id,
        "snapshotter": stored.info.snapshotter,
        "runtimeType": containers.config.runtime.runtime_type,
        "record": stored.info,
    });
    let info = HashMap::from([("info".to_string(), json.to_string())]);
    Ok(ContainerStatusResponse { status: Some(cri_status(&stored)), info })
}

impl Containers {
    /// Sends a container lifecycle event (with the pod's status and its containers') to
    /// GetContainerEvents' subscribers; nothing is built when there are none.
    pub async fn publish(&self, container_id: &str, pod_id: &str, kind: ContainerEventType) {
        if !self.hub.has_subscribers() {
            return;
        }
        let pod_sandbox_status =
            sandbox::status(&self.containerd, pod_id, false).await.ok().and_then(|response| response.status);
        let containers_statuses = match self.indexed_pod_statuses(pod_id).await {
            Ok(statuses) => statuses,
            Err(err) => {
                tracing::warn!(pod_id, error = %err, "listing the pod's containers for an event");
                vec![]
            }
        };
        self.hub.send(ContainerEventResponse {
            container_id: container_id.to_string(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status,
            containers_statuses,
        });
    }

    /// A pod's lifecycle event (`container_id` is the pod's id, as containerd sends it).
    pub async fn publish_pod(&self, pod_id: &str, kind: ContainerEventType) {
        self.publish(pod_id, pod_id, kind).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_numbers_map_back_to_cri_signals() {
        assert_eq!(cri_signal(nix::libc::SIGTERM), Signal::Sigterm as i32);
        assert_eq!(cri_signal(nix::libc::SIGQUIT), Signal::Sigquit as i32);
        assert_eq!(cri_signal(0), Signal::RuntimeDefault as i32);
    }
}
