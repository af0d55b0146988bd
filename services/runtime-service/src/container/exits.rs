//! Exits and recovery. A container's exit comes from containerd's event stream (`/tasks/exit`
//! for its own process; `/tasks/oom` marks an OOM kill), never from polling: its finished
//! time, exit code and reason (`Completed`, `Error`, `OOMKilled` from the OOM event or the
//! cgroup's OOM kill count) are recorded, the state becomes `exited`, its task is deleted and
//! a STOPPED event goes to GetContainerEvents' subscribers.
//!
//! Each time the stream is (re)subscribed — at start, and after containerd went away — the
//! containers are reconciled with their tasks before the stream is read: a task that stopped
//! (or vanished) meanwhile gets its exit recorded; a running one gets its log writer back.
//! Recording an exit is idempotent, so an exit seen twice is recorded once.

use super::record::{self, State, Stored};
use super::select::Selector;
use super::{ContainerError, Containers, TaskGone, now_nanos};
use crate::logs::{Fifos, LogWriter};
use crisp_containerd::events::TaskEvent;
use crisp_containerd::tasks::{Exit, is_stopped};
use crisp_proto::cri::ContainerEventType;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long an exit waits for the log writer to drain what the container wrote.
const LOG_DRAIN: Duration = Duration::from_secs(2);
/// How long a new subscription is given to reach containerd before the tasks are asked.
const SUBSCRIBE_SETTLE: Duration = Duration::from_millis(200);
/// The exit code of a container whose exit was lost (its task vanished), as containerd's.
const UNKNOWN_EXIT_CODE: i32 = 255;

/// OOM kills the container's cgroup counted (cgroup v1 `memory.oom_control`, v2 `memory.events`).
fn cgroup_oom_kills(cgroup: &str) -> u64 {
    if cgroup.is_empty() {
        return 0;
    }
    let relative = cgroup.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let files =
        [root.join("memory").join(relative).join("memory.oom_control"), root.join(relative).join("memory.events")];
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|line| line.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()))
                .collect::<Vec<_>>()
        })
        .sum()
}

/// `stored` as exited with `exit` (None: lost), killed for memory or not.
fn exited(stored: &mut Stored, exit: Option<Exit>, oom: bool) {
    stored.state = State::Exited;
    stored.info.finished_at = exit.map(|e| e.at).filter(|at| *at > 0).unwrap_or_else(now_nanos);
    stored.info.exit_code = exit.map(|e| e.code as i32).unwrap_or(UNKNOWN_EXIT_CODE);
    stored.info.reason = match (oom, exit) {
        (true, _) => "OOMKilled",
        (false, Some(e)) if e.code == 0 => "Completed",
        (false, Some(_)) => "Error",
        (false, None) => "Unknown",
    }
    .to_string();
    if exit.is_none() {
        stored.info.message = "the container's task was gone; its exit status is lost".into();
    }
}

impl Containers {
    /// Records that container `id` exited (`exit`: how, when known). Idempotent: an exit this
    /// process recorded already (its task deleted) asks containerd nothing.
    pub async fn record_exit(&self, id: &str, exit: Option<Exit>) {
        let _lock = self.lock(id).await;
        if self.exit_recorded(id) == Some(TaskGone::Yes) {
            return;
        }
        let record = match self.containerd.container_record(id).await {
            Ok(Some(record)) if record::is_container(&record) => record,
            Ok(_) => return,
            Err(err) => {
                tracing::warn!(id, error = %crisp_errors::message_chain(&err), "reading a container to record its exit");
                return;
            }
        };
        match record::read(record) {
            Ok(stored) => self.record_exit_locked(stored, exit).await,
            Err(err) => tracing::warn!(id, error = %err, "an unreadable container record: its exit is not recorded"),
        }
    }

    /// Records the exit of `stored`, read before the caller signalled it (StopContainer has the
    /// record in hand: it is not read again). Under the container's lock only this process
    /// records an exit, and it remembers doing so: an exit recorded between the read and the
    /// lock is seen.
    pub(super) async fn record_exit_of(&self, stored: Stored, exit: Option<Exit>) {
        let _lock = self.lock(&stored.id).await;
        match self.exit_recorded(&stored.id) {
            Some(TaskGone::Yes) => {}
            Some(TaskGone::No) => self.delete_exited_task(&stored.id, &stored.info.sandbox_id).await,
            None => self.record_exit_locked(stored, exit).await,
        }
    }

    /// Deletes the task of a container whose exit is recorded (again, where a delete failed).
    async fn delete_exited_task(&self, id: &str, pod: &str) {
        let deleted = {
            let _turn = self.shim_turn(pod).await;
            self.containerd.delete_task(id).await
        };
        match deleted {
            Ok(_) => self.set_exit_recorded(id, TaskGone::Yes),
            Err(err) => tracing::warn!(id, error = %crisp_errors::message_chain(&err), "deleting an exited task"),
        }
    }

    /// Records the exit of `stored` (read under the container's lock, or before it with no
    /// exit recorded since): finished time, code and reason in the record, the task deleted.
    /// Where the exit is known already, the record's update and the task's deletion go at once.
    pub(super) async fn record_exit_locked(&self, mut stored: Stored, exit: Option<Exit>) {
        let id = stored.id.clone();
        let pod = stored.info.sandbox_id.clone();
        if stored.state == State::Exited {
            self.set_exit_recorded(&id, TaskGone::No);
            self.delete_exited_task(&id, &pod).await;
            return;
        }
        if let Some(writer) = self.take_log_writer(&id)
            && tokio::time::timeout(LOG_DRAIN, writer.closed()).await.is_err()
        {
            tracing::warn!(id, "the container's output did not drain within {LOG_DRAIN:?}");
        }
        // The cgroup goes with the task: read its OOM count first.
        let oom = self.take_oom(&id) || cgroup_oom_kills(&stored.info.cgroup) > 0;
        let delete = async {
            let _turn = self.shim_turn(&pod).await;
            self.containerd.delete_task(&id).await
        };
        let (deleted, saved) = match exit {
            Some(exit) => {
                exited(&mut stored, Some(exit), oom);
                tokio::join!(delete, self.save_exit(&stored, oom))
            }
            None => {
                // The exit is lost unless the task still holds it: its deletion answers it.
                let deleted = delete.await;
                exited(&mut stored, deleted.as_ref().ok().copied().flatten(), oom);
                (deleted, self.save_exit(&stored, oom).await)
            }
        };
        if let Err(err) = &deleted {
            tracing::warn!(id, error = %crisp_errors::message_chain(err), "deleting an exited task");
        }
        match saved {
            Ok(()) => {}
            // Removed meanwhile (a removal that stopped it first): nothing is left to record.
            Err(ContainerError::Containerd { source, .. }) if source.is_not_found() => return,
            Err(err) => {
                tracing::warn!(id, error = %crisp_errors::message_chain(&err), "recording a container's exit");
                return;
            }
        }
        self.set_exit_recorded(&id, if deleted.is_ok() { TaskGone::Yes } else { TaskGone::No });
        tracing::info!(id, code = stored.info.exit_code, reason = %stored.info.reason, "container exited");
        self.publish(&id, &pod, ContainerEventType::ContainerStoppedEvent).await;
    }

    /// Saves the record of an exit; an OOM kill is counted as soon as it is recorded, not after
    /// the task's deletion that may run beside the save.
    async fn save_exit(&self, stored: &Stored, oom: bool) -> Result<(), ContainerError> {
        self.save(stored).await?;
        crate::metrics::METRICS.oom_kills.inc_by(u64::from(oom));
        Ok(())
    }

    /// Follows containerd's task events for as long as the service runs: subscribe, reconcile,
    /// read; again after the stream breaks. containerd answers a subscription only with its
    /// first event, so the stream is read in a task of its own while the reconciliation runs.
    /// The index's watch on containerd's container events ([`Containers::watch_index`]) starts
    /// with it.
    pub fn watch_exits(&self) -> tokio::task::JoinHandle<()> {
        let _index = self.watch_index();
        let containers = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
                let containerd = containers.containerd.clone();
                let reader = tokio::spawn(async move {
                    match containerd.task_events().await {
                        Ok(stream) => {
                            let mut stream = std::pin::pin!(stream);
                            while let Some(event) = stream.next().await {
                                if sender.send(event).is_err() {
                                    break;
                                }
                            }
                        }
                        Err(err) => {
                            let _ = sender.send(Err(err));
                        }
                    }
                });
                // The subscription reaches containerd before the reconciliation asks for tasks.
                tokio::time::sleep(SUBSCRIBE_SETTLE).await;
                containers.reconcile().await;
                while let Some(event) = events.recv().await {
                    match event {
                        Ok(event) => {
                            delay = Duration::from_millis(100);
                            containers.handle(event)
                        }
                        Err(err) => {
                            tracing::warn!(error = %crisp_errors::message_chain(&err), "containerd's event stream broke");
                            break;
                        }
                    }
                }
                reader.abort();
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        })
    }

    fn handle(&self, event: TaskEvent) {
        match event {
            TaskEvent::Oom { container_id } => self.mark_oom(&container_id),
            TaskEvent::Exit { container_id, exec_id, code, at } => {
                // An exec's process exits too; only the container's own is its exit.
                if !exec_id.is_empty() && exec_id != container_id {
                    return;
                }
                let containers = self.clone();
                tokio::spawn(async move { containers.record_exit(&container_id, Some(Exit { code, at })).await });
            }
        }
    }

    /// Brings every running container's record in line with its task: exits that happened
    /// unseen are recorded; a running task without a log writer gets one. A created
    /// container's task left by a start cut off is taken over ([`super::start::recover`]).
    pub async fn reconcile(&self) {
        let created = Selector { state: Some(State::Created.label().into()), ..Default::default() };
        match record::list(&self.containerd, &created).await {
            Ok(created) => {
                for container in created {
                    super::start::recover(self, &container.id).await;
                }
            }
            Err(err) => {
                tracing::warn!(error = %crisp_errors::message_chain(&err), "listing created containers to reconcile")
            }
        }
        let running = Selector { state: Some(State::Running.label().into()), ..Default::default() };
        let stored = match record::list(&self.containerd, &running).await {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(error = %crisp_errors::message_chain(&err), "listing running containers to reconcile");
                return;
            }
        };
        for container in stored {
            let id = container.id.clone();
            match self.containerd.task(&id).await {
                Ok(None) => self.record_exit(&id, None).await,
                Ok(Some(process)) if is_stopped(&process) => {
                    let at = crisp_containerd::tasks::unix_nanos(process.exited_at.as_ref());
                    self.record_exit(&id, Some(Exit { code: process.exit_status, at })).await
                }
                Ok(Some(_)) if self.log_writer(&id).is_none() => self.reattach(&container),
                Ok(Some(_)) => {}
                Err(err) => {
                    tracing::warn!(id, error = %crisp_errors::message_chain(&err), "asking containerd for a task")
                }
            }
        }
    }

    /// A new log writer on a running container's FIFOs (after a restart of the service).
    pub(super) fn reattach(&self, container: &record::Stored) {
        let dir = self.state_dir(&container.id).join("io");
        if !dir.exists() {
            return;
        }
        let fifos = Fifos::existing(&dir, container.config.stdin, container.config.tty);
        let log_path = (!container.info.log_path.is_empty()).then(|| PathBuf::from(&container.info.log_path));
        match LogWriter::open(&fifos, log_path, self.max_log_line_bytes()) {
            Ok(writer) => {
                writer.start();
                self.set_log_writer(&container.id, Arc::new(writer));
                tracing::info!(id = %container.id, "log writer reattached");
            }
            Err(err) => tracing::warn!(id = %container.id, error = %err, "cannot reattach the container's log writer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_that_is_not_there_counted_no_oom_kill() {
        assert_eq!(cgroup_oom_kills(""), 0);
        assert_eq!(cgroup_oom_kills("/crisp/not-there-at-all"), 0);
    }
}
