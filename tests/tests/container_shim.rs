//! One shim per pod (issue 14): the containers of a pod carry the runc shim's group
//! annotation (the pod id), so containerd runs them under one `containerd-shim-runc-v2`
//! process; a restarted container reuses it; removing the pod leaves none.

mod container_support;

use container_support::*;
use crisp_proto::cri::*;
use std::time::Duration;

/// Waits (up to 10 s) until `want` shims serve the stack's containerd.
async fn shims(node: &Node, want: usize) -> Vec<u32> {
    let mut pids = shim_pids(node.stack.containerd_address());
    for _ in 0..100 {
        if pids.len() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        pids = shim_pids(node.stack.containerd_address());
    }
    pids
}

#[tokio::test]
async fn a_pods_containers_share_one_shim_until_the_pod_is_removed() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("shim").await?;
    let mut ids = vec![];
    for name in ["one", "two", "three"] {
        ids.push(node.run(&pod, node.config(name, &["sleep", "1000"])).await?);
    }
    let spec: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&node.status_verbose(&ids[0]).await?.info["info"])?["runtimeSpec"]
            .clone();
    assert_eq!(spec["annotations"]["io.containerd.runc.v2.group"], pod.id.as_str());
    let first = shims(&node, 1).await;
    assert_eq!(first.len(), 1, "three containers, one shim: {first:?}");

    // The kubelet restarts a container: stop, remove, create attempt 1, start.
    node.stop(&ids[1], 0).await?;
    node.remove(&ids[1]).await?;
    let mut again = node.config("two", &["sleep", "1000"]);
    again.metadata.as_mut().unwrap().attempt = 1;
    node.run(&pod, again).await?;
    assert_eq!(shims(&node, 1).await, first, "the restarted container joined the same shim");

    node.runtime().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    node.runtime().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    let left = shims(&node, 0).await;
    assert!(left.is_empty(), "shims left after the pod was removed: {left:?}");
    Ok(())
}
