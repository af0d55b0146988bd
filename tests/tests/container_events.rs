//! GetContainerEvents through the proxy: every subscriber sees the pod's and its containers'
//! lifecycle in order (CREATED, STARTED, STOPPED, DELETED), each event carrying the pod's
//! status and its containers' statuses, as containerd's CRI plugin sends them.

mod container_support;

use container_support::*;
use crisp_proto::cri::*;
use std::time::Duration;
use tonic::Streaming;

async fn next(stream: &mut Streaming<ContainerEventResponse>) -> ContainerEventResponse {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("an event within 20 s")
        .expect("the stream answers")
        .expect("the stream is open")
}

fn kind(event: &ContainerEventResponse) -> ContainerEventType {
    ContainerEventType::try_from(event.container_event_type).unwrap()
}

#[tokio::test]
async fn subscribers_see_the_pod_and_container_lifecycle_in_order() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut first = node.runtime().get_container_events(GetEventsRequest {}).await?.into_inner();
    let mut second = node.runtime().get_container_events(GetEventsRequest {}).await?.into_inner();
    // The subscriptions are in place once the server answered with headers; give them a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let pod = node.pod("events").await?;
    let id = node.create(&pod, node.config("app", &["sh", "-c", "sleep 0.5; exit 2"])).await?;
    node.start_container(&id).await?;
    let exited = node.wait_exited(&id).await?;
    assert_eq!(exited.exit_code, 2);
    node.remove(&id).await?;
    node.runtime().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    node.runtime().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;

    for stream in [&mut first, &mut second] {
        let mut seen = vec![];
        for _ in 0..8 {
            let event = next(stream).await;
            seen.push((event.container_id.clone(), kind(&event)));
            match (event.container_id == id, kind(&event)) {
                (true, ContainerEventType::ContainerCreatedEvent) => {
                    let pod_status = event.pod_sandbox_status.as_ref().expect("the pod's status");
                    assert_eq!(pod_status.id, pod.id);
                    assert_eq!(event.containers_statuses.len(), 1);
                    assert_eq!(event.containers_statuses[0].state, ContainerState::ContainerCreated as i32);
                }
                (true, ContainerEventType::ContainerStartedEvent) => {
                    assert_eq!(event.containers_statuses[0].state, ContainerState::ContainerRunning as i32);
                }
                (true, ContainerEventType::ContainerStoppedEvent) => {
                    let status = &event.containers_statuses[0];
                    assert_eq!((status.state, status.exit_code), (ContainerState::ContainerExited as i32, 2));
                }
                (true, ContainerEventType::ContainerDeletedEvent) => assert!(event.containers_statuses.is_empty()),
                (false, ContainerEventType::ContainerStoppedEvent) => {
                    let pod_status = event.pod_sandbox_status.as_ref().expect("the pod's status");
                    assert_eq!(pod_status.state, PodSandboxState::SandboxNotready as i32);
                }
                _ => {}
            }
            assert!(event.created_at > 0);
        }
        use ContainerEventType::*;
        let expected = vec![
            (pod.id.clone(), ContainerCreatedEvent),
            (pod.id.clone(), ContainerStartedEvent),
            (id.clone(), ContainerCreatedEvent),
            (id.clone(), ContainerStartedEvent),
            (id.clone(), ContainerStoppedEvent),
            (id.clone(), ContainerDeletedEvent),
            (pod.id.clone(), ContainerStoppedEvent),
            (pod.id.clone(), ContainerDeletedEvent),
        ];
        assert_eq!(seen, expected);
    }
    Ok(())
}
