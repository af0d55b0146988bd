//! GetContainerEvents: a broadcast hub fed by the pod and container lifecycle (CREATED,
//! STARTED, STOPPED, DELETED), each event carrying the pod's status and its containers'
//! statuses as containerd's CRI plugin sends them. Any number of subscribers; each has its
//! own bounded queue ([`CAPACITY`] events), so a slow one never blocks the lifecycle or the
//! others: when it falls that far behind, its stream ends with `RESOURCE_EXHAUSTED` saying how
//! many events it missed (the kubelet subscribes again and relists).

use crisp_proto::cri::ContainerEventResponse;
use std::sync::Arc;
use tokio::sync::broadcast;
use tonic::Status;
use tonic::codegen::BoxStream;

/// Events a subscriber may fall behind before it is cut off.
pub const CAPACITY: usize = 1000;

#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<ContainerEventResponse>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(CAPACITY)
    }
}

impl Hub {
    pub fn new(capacity: usize) -> Self {
        Self { sender: broadcast::channel(capacity.max(1)).0 }
    }

    /// Whether anyone listens (events are not even built otherwise).
    pub fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    pub fn send(&self, event: ContainerEventResponse) {
        // No subscriber: nothing to do.
        let _ = self.sender.send(Arc::new(event));
    }

    /// The events from now on, as a GetContainerEvents stream.
    pub fn subscribe(&self) -> BoxStream<ContainerEventResponse> {
        let receiver = self.sender.subscribe();
        Box::pin(futures::stream::unfold(Some(receiver), |receiver| async move {
            let mut receiver = receiver?;
            match receiver.recv().await {
                Ok(event) => Some((Ok(ContainerEventResponse::clone(&event)), Some(receiver))),
                Err(broadcast::error::RecvError::Lagged(missed)) => Some((
                    Err(Status::resource_exhausted(format!(
                        "this GetContainerEvents subscriber fell behind and missed {missed} events; subscribe again"
                    ))),
                    None,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn event(id: &str) -> ContainerEventResponse {
        ContainerEventResponse { container_id: id.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let hub = Hub::new(8);
        assert!(!hub.has_subscribers());
        let (mut a, mut b) = (hub.subscribe(), hub.subscribe());
        assert!(hub.has_subscribers());
        hub.send(event("1"));
        hub.send(event("2"));
        for stream in [&mut a, &mut b] {
            assert_eq!(stream.next().await.unwrap().unwrap().container_id, "1");
            assert_eq!(stream.next().await.unwrap().unwrap().container_id, "2");
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged_and_the_others_go_on() {
        let hub = Hub::new(2);
        let mut slow = hub.subscribe();
        let mut fast = hub.subscribe();
        for i in 0..5 {
            hub.send(event(&i.to_string()));
            assert_eq!(fast.next().await.unwrap().unwrap().container_id, i.to_string());
        }
        let status = slow.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("missed 3 events"), "{}", status.message());
        assert!(slow.next().await.is_none());
    }
}
