//! containerd's tasks: a container's running process (created from the record and a rootfs,
//! started, signalled, waited on, deleted). Answers are typed: a task that is not there is
//! `Ok(None)` where asking about it, and already done where deleting it.

use crate::{Containerd, ContainerdError};
use containerd_client::services::v1::{
    CreateTaskRequest, DeleteTaskRequest, GetRequest, KillRequest, ListPidsRequest, StartRequest, WaitRequest,
};
use containerd_client::types::Mount;
use containerd_client::types::v1::Status;

pub use containerd_client::types::v1::Process as TaskProcess;
pub use containerd_client::types::v1::Status as TaskStatus;

/// What a task is created with.
#[derive(Debug, Default, Clone)]
pub struct NewTask {
    pub container_id: String,
    pub rootfs: Vec<Mount>,
    /// FIFO paths; empty: none.
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: u32,
    /// Unix nanoseconds.
    pub at: i64,
}

/// Unix nanoseconds of a protobuf timestamp (0 for none).
pub fn unix_nanos(timestamp: Option<&prost_types::Timestamp>) -> i64 {
    timestamp.map(|t| t.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(t.nanos))).unwrap_or(0)
}

impl Containerd {
    /// Creates the task (the shim and the process, not yet started); answers its pid.
    pub async fn create_task(&self, task: NewTask) -> Result<u32, ContainerdError> {
        let request = CreateTaskRequest {
            container_id: task.container_id,
            rootfs: task.rootfs,
            stdin: task.stdin,
            stdout: task.stdout,
            stderr: task.stderr,
            terminal: task.terminal,
            ..Default::default()
        };
        Ok(self
            .tasks()
            .create(request)
            .await
            .map_err(|s| ContainerdError::call("creating a task", s))?
            .into_inner()
            .pid)
    }

    /// Starts the created task; answers its pid.
    pub async fn start_task(&self, container_id: &str) -> Result<u32, ContainerdError> {
        let request = StartRequest { container_id: container_id.to_string(), exec_id: String::new() };
        Ok(self.tasks().start(request).await.map_err(|s| ContainerdError::call("starting a task", s))?.into_inner().pid)
    }

    /// The task's process (pid, status, exit), or None when the container has no task.
    pub async fn task(&self, container_id: &str) -> Result<Option<TaskProcess>, ContainerdError> {
        let request = GetRequest { container_id: container_id.to_string(), exec_id: String::new() };
        match self.tasks().get(request).await {
            Ok(response) => Ok(response.into_inner().process),
            Err(s) => match ContainerdError::call("getting a task", s) {
                err if err.is_not_found() => Ok(None),
                err => Err(err),
            },
        }
    }

    /// Sends `signal` to the task's process (`all`: every process in the container). A task
    /// that is gone, or whose process has exited already, is signalled.
    pub async fn kill_task(&self, container_id: &str, signal: u32, all: bool) -> Result<(), ContainerdError> {
        let request = KillRequest { container_id: container_id.to_string(), exec_id: String::new(), signal, all };
        match self.tasks().kill(request).await {
            Ok(_) => Ok(()),
            Err(s) => match ContainerdError::call("signalling a task", s) {
                err if err.is_not_found() => Ok(()),
                err => Err(err),
            },
        }
    }

    /// Waits until the task's process exits (a task that is gone answers None).
    pub async fn wait_task(&self, container_id: &str) -> Result<Option<Exit>, ContainerdError> {
        let request = WaitRequest { container_id: container_id.to_string(), exec_id: String::new() };
        match self.tasks().wait(request).await {
            Ok(response) => {
                let response = response.into_inner();
                Ok(Some(Exit { code: response.exit_status, at: unix_nanos(response.exited_at.as_ref()) }))
            }
            Err(s) => match ContainerdError::call("waiting for a task", s) {
                err if err.is_not_found() => Ok(None),
                err => Err(err),
            },
        }
    }

    /// Deletes the task (its process must have exited); answers its exit. A task already gone
    /// answers None.
    pub async fn delete_task(&self, container_id: &str) -> Result<Option<Exit>, ContainerdError> {
        match self.tasks().delete(DeleteTaskRequest { container_id: container_id.to_string() }).await {
            Ok(response) => {
                let response = response.into_inner();
                Ok(Some(Exit { code: response.exit_status, at: unix_nanos(response.exited_at.as_ref()) }))
            }
            Err(s) => match ContainerdError::call("deleting a task", s) {
                err if err.is_not_found() => Ok(None),
                err => Err(err),
            },
        }
    }

    /// The pids of the processes in the task's container.
    pub async fn task_pids(&self, container_id: &str) -> Result<Vec<u32>, ContainerdError> {
        let request = ListPidsRequest { container_id: container_id.to_string() };
        Ok(self
            .tasks()
            .list_pids(request)
            .await
            .map_err(|s| ContainerdError::call("listing a task's processes", s))?
            .into_inner()
            .processes
            .into_iter()
            .map(|p| p.pid)
            .collect())
    }
}

/// Whether a task's process has exited (or never existed).
pub fn is_stopped(process: &TaskProcess) -> bool {
    process.status == Status::Stopped as i32
}
