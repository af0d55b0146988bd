//! containerd's event stream, decoded: the task events crisp acts on (a process exited, a
//! container's cgroup saw an OOM kill), from `Events.Subscribe` filtered on crisp's namespace.
//! The stream is live only: what happened before the subscription is found by asking for the
//! tasks' state (recovery).

use crate::{Containerd, ContainerdError};
use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::SubscribeRequest;
use futures::{Stream, StreamExt};
use prost::Message;

/// The topic of a task's process exit.
pub const TOPIC_TASK_EXIT: &str = "/tasks/exit";
/// The topic of an OOM kill in a task's cgroup.
pub const TOPIC_TASK_OOM: &str = "/tasks/oom";

/// A task event crisp acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    /// A process exited: the container's own when `exec_id` is empty or equals the container id.
    Exit { container_id: String, exec_id: String, code: u32, at: i64 },
    /// The container's cgroup OOM-killed a process.
    Oom { container_id: String },
}

impl TaskEvent {
    /// Decodes an envelope's event by its topic; None for other topics.
    fn decode(topic: &str, event: &prost_types::Any) -> Result<Option<TaskEvent>, prost::DecodeError> {
        Ok(match topic {
            TOPIC_TASK_EXIT => {
                let exit = TaskExit::decode(event.value.as_slice())?;
                Some(TaskEvent::Exit {
                    container_id: exit.container_id,
                    exec_id: exit.id,
                    code: exit.exit_status,
                    at: crate::tasks::unix_nanos(exit.exited_at.as_ref()),
                })
            }
            TOPIC_TASK_OOM => {
                Some(TaskEvent::Oom { container_id: TaskOom::decode(event.value.as_slice())?.container_id })
            }
            _ => None,
        })
    }
}

impl Containerd {
    /// Subscribes to the task exits and OOM kills in this namespace. The stream ends when the
    /// connection breaks; the caller subscribes again (and reconciles what it missed).
    pub async fn task_events(
        &self,
    ) -> Result<impl Stream<Item = Result<TaskEvent, ContainerdError>> + Send + 'static, ContainerdError> {
        let namespace = self.namespace().to_string();
        let filters = vec![
            format!("namespace==\"{namespace}\",topic==\"{TOPIC_TASK_EXIT}\""),
            format!("namespace==\"{namespace}\",topic==\"{TOPIC_TASK_OOM}\""),
        ];
        let stream = self
            .events()
            .subscribe(SubscribeRequest { filters })
            .await
            .map_err(|s| ContainerdError::call("subscribing to events", s))?
            .into_inner();
        Ok(stream.filter_map(|envelope| async move {
            let envelope = match envelope {
                Ok(envelope) => envelope,
                Err(s) => return Some(Err(ContainerdError::call("receiving events", s))),
            };
            let event = envelope.event?;
            match TaskEvent::decode(&envelope.topic, &event) {
                Ok(decoded) => decoded.map(Ok),
                Err(err) => {
                    tracing::warn!(topic = %envelope.topic, error = %err, "an undecodable containerd event");
                    None
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_and_an_oom_decode_by_topic() {
        let exit = TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 7,
            exit_status: 3,
            exited_at: Some(prost_types::Timestamp { seconds: 2, nanos: 5 }),
        };
        let any = prost_types::Any { type_url: "containerd.events.TaskExit".into(), value: exit.encode_to_vec() };
        assert_eq!(
            TaskEvent::decode(TOPIC_TASK_EXIT, &any).unwrap(),
            Some(TaskEvent::Exit { container_id: "c1".into(), exec_id: "c1".into(), code: 3, at: 2_000_000_005 })
        );
        let oom =
            prost_types::Any { type_url: String::new(), value: TaskOom { container_id: "c2".into() }.encode_to_vec() };
        assert_eq!(
            TaskEvent::decode(TOPIC_TASK_OOM, &oom).unwrap(),
            Some(TaskEvent::Oom { container_id: "c2".into() })
        );
        assert_eq!(TaskEvent::decode("/tasks/start", &oom).unwrap(), None);
    }
}
