//! ReopenContainerLog: the kubelet renamed a running container's log file and asks for a
//! fresh one at the same path. Only for a running container whose output crisp is writing
//! ([`Writers`]; else `FAILED_PRECONDITION`, as the kubelet rotates only running containers'
//! logs); on error nothing is created and the old file stays in use.

use super::LogWriter;
use crate::container::ContainerError;
use crate::container::record::{self, State};
use crisp_containerd::Containerd;
use crisp_errors::GrpcError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::Code;

/// The log writers of the containers whose output crisp copies, by container id. The
/// container lifecycle puts a writer in at start (and at recovery) and takes it out once its
/// output ended.
#[derive(Clone, Default)]
pub struct Writers(Arc<Mutex<HashMap<String, Arc<LogWriter>>>>);

impl Writers {
    pub fn insert(&self, container_id: &str, writer: Arc<LogWriter>) {
        self.lock().insert(container_id.to_string(), writer);
    }

    pub fn get(&self, container_id: &str) -> Option<Arc<LogWriter>> {
        self.lock().get(container_id).cloned()
    }

    pub fn remove(&self, container_id: &str) -> Option<Arc<LogWriter>> {
        self.lock().remove(container_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LogWriter>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReopenError {
    #[error("ReopenContainerLog: {0}")]
    Container(#[source] ContainerError),
    #[error("ReopenContainerLog: container `{0}` not found")]
    NotFound(String),
    #[error("ReopenContainerLog: container `{id}` is {state}, not running: its log cannot be reopened")]
    NotRunning { id: String, state: &'static str },
    #[error("ReopenContainerLog: container `{0}` runs without a log writer (its FIFOs could not be made)")]
    NoWriter(String),
    #[error("ReopenContainerLog: container `{id}`: {source}")]
    Io { id: String, source: std::io::Error },
}

impl GrpcError for ReopenError {
    fn code(&self) -> Code {
        match self {
            ReopenError::Container(e) => e.code(),
            ReopenError::NotFound(_) => Code::NotFound,
            ReopenError::NotRunning { .. } | ReopenError::NoWriter(_) => Code::FailedPrecondition,
            ReopenError::Io { .. } => Code::Internal,
        }
    }
}

/// Opens a fresh log file for the running container `container_id` (full id or unique prefix).
pub async fn reopen(containerd: &Containerd, writers: &Writers, container_id: &str) -> Result<(), ReopenError> {
    let stored = record::find(containerd, container_id)
        .await
        .map_err(ReopenError::Container)?
        .ok_or_else(|| ReopenError::NotFound(container_id.to_string()))?;
    let id = stored.id;
    if stored.state != State::Running {
        return Err(ReopenError::NotRunning { id, state: stored.state.label() });
    }
    let writer = writers.get(&id).ok_or_else(|| ReopenError::NoWriter(id.clone()))?;
    if writer.is_closed() {
        return Err(ReopenError::NotRunning { id, state: "exiting" });
    }
    writer.reopen().await.map_err(|source| ReopenError::Io { id, source })
}
