//! Pods and containers as the runtime service records them in containerd, read only for what
//! streaming needs: a pod's network namespace (or the host's), a container's task state.
//! The records are the runtime service's (`crisp.io/kind` labels, the pod's JSON extension
//! `crisp.io/sandbox`); this module reads, never writes.

use crate::error::StreamingError;
use crisp_containerd::containerd_client::services::v1::{Container, GetContainerRequest, GetRequest};
use crisp_containerd::containerd_client::types::v1::Status as TaskStatus;
use crisp_containerd::labels::crisp::{KIND, KIND_CONTAINER, KIND_SANDBOX, SANDBOX_STATE};
use crisp_containerd::{Containerd, ContainerdError};
use serde::Deserialize;
use std::path::PathBuf;

const SANDBOX_EXTENSION: &str = "crisp.io/sandbox";

/// Where a pod's ports are.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    /// The pinned network namespace; `None` for a pod on the host's network.
    pub netns: Option<PathBuf>,
}

#[derive(Deserialize)]
struct SandboxRecord {
    netns: Option<PathBuf>,
}

async fn record(containerd: &Containerd, id: &str) -> Result<Option<Container>, ContainerdError> {
    match containerd.containers().get(GetContainerRequest { id: id.to_string() }).await {
        Ok(response) => Ok(response.into_inner().container),
        Err(status) => {
            let err = ContainerdError::call("reading a container record", status);
            if err.is_not_found() { Ok(None) } else { Err(err) }
        }
    }
}

/// The ready pod `id`.
pub async fn ready_pod(containerd: &Containerd, id: &str) -> Result<Pod, StreamingError> {
    let not_found = || StreamingError::PodNotFound(id.to_string());
    let container = record(containerd, id)
        .await
        .map_err(StreamingError::containerd(format!("looking up pod {id}")))?
        .filter(|c| c.labels.get(KIND).is_some_and(|k| k == KIND_SANDBOX))
        .ok_or_else(not_found)?;
    if container.labels.get(SANDBOX_STATE).is_none_or(|s| s != "ready") {
        return Err(StreamingError::PodNotReady(id.to_string()));
    }
    let extension = container
        .extensions
        .get(SANDBOX_EXTENSION)
        .ok_or_else(|| StreamingError::Record { id: id.to_string(), reason: format!("no {SANDBOX_EXTENSION}") })?;
    let sandbox: SandboxRecord = serde_json::from_slice(&extension.value)
        .map_err(|e| StreamingError::Record { id: id.to_string(), reason: e.to_string() })?;
    if let Some(netns) = &sandbox.netns
        && !netns.exists()
    {
        return Err(StreamingError::PodNotReady(id.to_string()));
    }
    Ok(Pod { id: id.to_string(), netns: sandbox.netns })
}

/// The running container `id`.
pub async fn running_container(containerd: &Containerd, id: &str) -> Result<(), StreamingError> {
    let container = record(containerd, id)
        .await
        .map_err(StreamingError::containerd(format!("looking up container {id}")))?
        .filter(|c| c.labels.get(KIND).is_some_and(|k| k == KIND_CONTAINER))
        .ok_or_else(|| StreamingError::ContainerNotFound(id.to_string()))?;
    let not_running =
        |state: &str| StreamingError::ContainerNotRunning { id: id.to_string(), state: state.to_string() };
    let task =
        match containerd.tasks().get(GetRequest { container_id: container.id.clone(), exec_id: String::new() }).await {
            Ok(response) => response.into_inner().process,
            Err(status) => {
                let err = ContainerdError::call("reading a container's task", status);
                if err.is_not_found() {
                    return Err(not_running("created or exited"));
                }
                return Err(StreamingError::containerd(format!("looking up container {id}'s task"))(err));
            }
        };
    match task.map(|p| p.status) {
        Some(s) if s == TaskStatus::Running as i32 => Ok(()),
        Some(_) | None => Err(not_running("not running")),
    }
}
