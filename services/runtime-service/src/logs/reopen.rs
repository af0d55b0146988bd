//! ReopenContainerLog: the kubelet renamed a running container's log file and asks for a
//! fresh one at the same path. Only for a running container whose output crisp is writing
//! ([`Writers`]); on error nothing is created and the old file stays in use.

use super::LogWriter;
use crate::container::exec_sync::{self, ExecError};
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
    Container(#[source] ExecError),
    #[error("ReopenContainerLog: container `{0}` is not running: its log cannot be reopened")]
    NotRunning(String),
    #[error("ReopenContainerLog: container `{id}`: {source}")]
    Io { id: String, source: std::io::Error },
}

impl GrpcError for ReopenError {
    fn code(&self) -> Code {
        match self {
            ReopenError::Container(e) => e.code(),
            ReopenError::NotRunning(_) => Code::FailedPrecondition,
            ReopenError::Io { .. } => Code::Internal,
        }
    }
}

/// Opens a fresh log file for the running container `container_id` (full id or unique prefix).
pub async fn reopen(containerd: &Containerd, writers: &Writers, container_id: &str) -> Result<(), ReopenError> {
    let id = exec_sync::find(containerd, container_id).await.map_err(ReopenError::Container)?.id;
    match exec_sync::ensure_running(containerd, &id).await {
        Ok(()) => {}
        Err(ExecError::NotRunning { id, .. }) => return Err(ReopenError::NotRunning(id)),
        Err(e) => return Err(ReopenError::Container(e)),
    }
    let writer = writers.get(&id).filter(|w| !w.is_closed()).ok_or_else(|| ReopenError::NotRunning(id.clone()))?;
    writer.reopen().await.map_err(|source| ReopenError::Io { id, source })
}
