//! containerd's event stream, decoded: the task events crisp acts on (a process exited, a
//! container's cgroup saw an OOM kill), from `Events.Subscribe` filtered on crisp's namespace.
//! Container and image record events name the record created, updated or deleted.
//! The stream is live only: what happened before the subscription is found by asking for the
//! tasks' state (recovery). Image events name the record created, updated or deleted (the
//! payload carries no target: read the record).

use crate::{Containerd, ContainerdError};
use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::SubscribeRequest;
use futures::{Stream, StreamExt};
use prost::Message;

/// The topic of a task's process exit.
pub const TOPIC_TASK_EXIT: &str = "/tasks/exit";
/// The topic of an OOM kill in a task's cgroup.
pub const TOPIC_TASK_OOM: &str = "/tasks/oom";

/// The topics of an image record's creation, update and deletion.
pub const TOPIC_IMAGE_CREATE: &str = "/images/create";
pub const TOPIC_IMAGE_UPDATE: &str = "/images/update";
pub const TOPIC_IMAGE_DELETE: &str = "/images/delete";

/// The topics of a container record's creation, update and deletion.
pub const TOPIC_CONTAINER_CREATE: &str = "/containers/create";
pub const TOPIC_CONTAINER_UPDATE: &str = "/containers/update";
pub const TOPIC_CONTAINER_DELETE: &str = "/containers/delete";

/// A container record changed: its id.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerEvent {
    Created(String),
    Updated(String),
    Deleted(String),
}

impl ContainerEvent {
    fn decode(topic: &str, event: &prost_types::Any) -> Result<Option<ContainerEvent>, prost::DecodeError> {
        use containerd_client::events::{ContainerCreate, ContainerDelete, ContainerUpdate};
        let bytes = event.value.as_slice();
        Ok(match topic {
            TOPIC_CONTAINER_CREATE => Some(ContainerEvent::Created(ContainerCreate::decode(bytes)?.id)),
            TOPIC_CONTAINER_UPDATE => Some(ContainerEvent::Updated(ContainerUpdate::decode(bytes)?.id)),
            TOPIC_CONTAINER_DELETE => Some(ContainerEvent::Deleted(ContainerDelete::decode(bytes)?.id)),
            _ => None,
        })
    }
}

/// An image record changed: its name.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageEvent {
    Created(String),
    Updated(String),
    Deleted(String),
}

impl ImageEvent {
    /// The record's name.
    pub fn name(&self) -> &str {
        match self {
            ImageEvent::Created(name) | ImageEvent::Updated(name) | ImageEvent::Deleted(name) => name,
        }
    }

    fn decode(topic: &str, event: &prost_types::Any) -> Result<Option<ImageEvent>, prost::DecodeError> {
        use containerd_client::services::v1::{ImageCreate, ImageDelete, ImageUpdate};
        let bytes = event.value.as_slice();
        Ok(match topic {
            TOPIC_IMAGE_CREATE => Some(ImageEvent::Created(ImageCreate::decode(bytes)?.name)),
            TOPIC_IMAGE_UPDATE => Some(ImageEvent::Updated(ImageUpdate::decode(bytes)?.name)),
            TOPIC_IMAGE_DELETE => Some(ImageEvent::Deleted(ImageDelete::decode(bytes)?.name)),
            _ => None,
        })
    }
}

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

/// How an event of one family is read from its envelope: `None` for a topic of another family.
type Decode<E> = fn(&str, &prost_types::Any) -> Result<Option<E>, prost::DecodeError>;

impl Containerd {
    /// Subscribes to the image record changes in this namespace. The stream ends when the
    /// connection breaks; the caller subscribes again and reads the records anew.
    pub async fn image_events(
        &self,
    ) -> Result<impl Stream<Item = Result<ImageEvent, ContainerdError>> + Send + 'static, ContainerdError> {
        self.subscribe(&[TOPIC_IMAGE_CREATE, TOPIC_IMAGE_UPDATE, TOPIC_IMAGE_DELETE], ImageEvent::decode).await
    }

    /// Subscribes to the container record changes in this namespace. The stream ends when the
    /// connection breaks; the caller subscribes again and reads the records anew.
    pub async fn container_events(
        &self,
    ) -> Result<impl Stream<Item = Result<ContainerEvent, ContainerdError>> + Send + 'static, ContainerdError> {
        self.subscribe(
            &[TOPIC_CONTAINER_CREATE, TOPIC_CONTAINER_UPDATE, TOPIC_CONTAINER_DELETE],
            ContainerEvent::decode,
        )
        .await
    }

    /// Subscribes to the task exits and OOM kills in this namespace. The stream ends when the
    /// connection breaks; the caller subscribes again (and reconciles what it missed).
    pub async fn task_events(
        &self,
    ) -> Result<impl Stream<Item = Result<TaskEvent, ContainerdError>> + Send + 'static, ContainerdError> {
        self.subscribe(&[TOPIC_TASK_EXIT, TOPIC_TASK_OOM], TaskEvent::decode).await
    }

    /// Subscribes to `topics` in this namespace, each event read with `decode`; an event that
    /// cannot be read is logged and skipped.
    async fn subscribe<E: Send + 'static>(
        &self,
        topics: &[&str],
        decode: Decode<E>,
    ) -> Result<impl Stream<Item = Result<E, ContainerdError>> + Send + 'static, ContainerdError> {
        let namespace = self.namespace().to_string();
        let filters = topics.iter().map(|topic| format!("namespace==\"{namespace}\",topic==\"{topic}\"")).collect();
        let stream = self
            .events()
            .subscribe(SubscribeRequest { filters })
            .await
            .map_err(|s| ContainerdError::call("subscribing to events", s))?
            .into_inner();
        Ok(stream.filter_map(move |envelope| async move {
            let envelope = match envelope {
                Ok(envelope) => envelope,
                Err(s) => return Some(Err(ContainerdError::call("receiving events", s))),
            };
            let event = envelope.event?;
            match decode(&envelope.topic, &event) {
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

    #[test]
    fn container_events_decode_by_topic() {
        use containerd_client::events::{ContainerCreate, ContainerDelete};
        let any = |value: Vec<u8>| prost_types::Any { type_url: String::new(), value };
        let created = any(ContainerCreate { id: "c1".into(), ..Default::default() }.encode_to_vec());
        assert_eq!(
            ContainerEvent::decode(TOPIC_CONTAINER_CREATE, &created).unwrap(),
            Some(ContainerEvent::Created("c1".into()))
        );
        let deleted = any(ContainerDelete { id: "c1".into() }.encode_to_vec());
        assert_eq!(
            ContainerEvent::decode(TOPIC_CONTAINER_DELETE, &deleted).unwrap(),
            Some(ContainerEvent::Deleted("c1".into()))
        );
        assert_eq!(ContainerEvent::decode("/tasks/exit", &deleted).unwrap(), None);
    }

    #[test]
    fn image_events_decode_by_topic() {
        use containerd_client::services::v1::{ImageCreate, ImageDelete};
        let any = |value: Vec<u8>| prost_types::Any { type_url: String::new(), value };
        let created = any(ImageCreate { name: "r/a:1".into(), labels: Default::default() }.encode_to_vec());
        assert_eq!(
            ImageEvent::decode(TOPIC_IMAGE_CREATE, &created).unwrap(),
            Some(ImageEvent::Created("r/a:1".into()))
        );
        let deleted = any(ImageDelete { name: "r/a:1".into() }.encode_to_vec());
        assert_eq!(
            ImageEvent::decode(TOPIC_IMAGE_DELETE, &deleted).unwrap(),
            Some(ImageEvent::Deleted("r/a:1".into()))
        );
        assert_eq!(ImageEvent::decode("/tasks/exit", &deleted).unwrap(), None);
    }
}
