//! One shim per pod (issue 14): the containers of a pod carry the runc shim's group
//! annotation (the pod id), so containerd runs them under one `containerd-shim-runc-v2`
//! process; a restarted container reuses it, or starts a new one for the group when the old
//! one exited with the pod's last task; a restarted runtime service works through the shim it
//! finds; removing the pod leaves no shim process, shim socket or task bundle directory.

mod container_support;

use container_support::*;
use crisp_proto::cri::*;
use std::path::PathBuf;
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

/// The task bundle directories of the stack's containerd (crisp's namespace) and the shim
/// sockets their `address` files name.
fn bundles_and_sockets(node: &Node) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let state = node.stack.containerd_address().with_file_name("state");
    let tasks = state.join("io.containerd.runtime.v2.task").join(node.stack.namespace());
    let bundles: Vec<PathBuf> = std::fs::read_dir(&tasks)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    let sockets = bundles
        .iter()
        .filter_map(|bundle| std::fs::read_to_string(bundle.join("address")).ok())
        .map(|address| PathBuf::from(address.trim().trim_start_matches("unix://")))
        .collect();
    (bundles, sockets)
}

/// The `io.containerd.runc.v2.group` annotation of a container's runtime spec.
async fn group(node: &Node, id: &str) -> anyhow::Result<String> {
    let info: serde_json::Value = serde_json::from_str(&node.status_verbose(id).await?.info["info"])?;
    Ok(info["runtimeSpec"]["annotations"]["io.containerd.runc.v2.group"].as_str().unwrap_or_default().to_string())
}

async fn remove_pod(node: &Node, pod: &Pod) -> anyhow::Result<()> {
    node.runtime().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    node.runtime().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    Ok(())
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

#[tokio::test]
async fn a_container_restarted_after_the_pods_shim_exited_gets_a_new_shim_for_the_group() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("regroup").await?;
    let mut ids = vec![];
    for name in ["one", "two"] {
        ids.push(node.run(&pod, node.config(name, &["sleep", "1000"])).await?);
    }
    let first = shims(&node, 1).await;
    assert_eq!(first.len(), 1, "two containers, one shim: {first:?}");

    // Every task of the pod gone: the shim has nothing left to serve and exits.
    for id in &ids {
        node.stop(id, 0).await?;
        node.remove(id).await?;
    }
    let none = shims(&node, 0).await;
    assert!(none.is_empty(), "the shim outlived the pod's last task: {none:?}");

    let mut again = node.config("one", &["sleep", "1000"]);
    again.metadata.as_mut().unwrap().attempt = 1;
    let restarted = node.run(&pod, again).await?;
    let second = shims(&node, 1).await;
    assert_eq!(second.len(), 1, "the restarted container got a shim: {second:?}");
    assert_ne!(second, first, "a new shim, not the exited one");
    assert_eq!(group(&node, &restarted).await?, pod.id);

    // The group continues: the next container joins the new shim.
    let joined = node.run(&pod, node.config("three", &["sleep", "1000"])).await?;
    assert_eq!(group(&node, &joined).await?, pod.id);
    assert_eq!(shims(&node, 1).await, second, "the next container joined the new shim");
    assert_eq!(node.status(&joined).await?.state, ContainerState::ContainerRunning as i32);

    remove_pod(&node, &pod).await?;
    assert!(shims(&node, 0).await.is_empty(), "shims left after the pod was removed");
    Ok(())
}

#[tokio::test]
async fn removing_a_pod_leaves_no_shim_process_socket_or_bundle_dir() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("leftovers").await?;
    for name in ["one", "two", "three"] {
        node.run(&pod, node.config(name, &["sleep", "1000"])).await?;
    }
    // One that has exited too: its task is still there until the pod goes.
    let done = node.run(&pod, node.config("done", &["true"])).await?;
    node.wait_exited(&done).await?;
    assert_eq!(shims(&node, 1).await.len(), 1);
    let (bundles, sockets) = bundles_and_sockets(&node);
    assert!(!bundles.is_empty(), "no task bundle directories found under the state directory");
    assert!(!sockets.is_empty(), "no shim socket named by the bundles");
    assert!(sockets.iter().all(|s| s.exists()), "the shim's socket is not there while it runs: {sockets:?}");

    remove_pod(&node, &pod).await?;
    let left = shims(&node, 0).await;
    assert!(left.is_empty(), "shim processes left: {left:?}");
    let sockets_left: Vec<&PathBuf> = sockets.iter().filter(|s| s.exists()).collect();
    assert!(sockets_left.is_empty(), "shim sockets left: {sockets_left:?}");
    let (bundles_left, _) = bundles_and_sockets(&node);
    assert!(bundles_left.is_empty(), "task bundle directories left: {bundles_left:?}");
    Ok(())
}

#[tokio::test]
async fn a_restarted_runtime_service_finds_the_pods_shim_again() -> anyhow::Result<()> {
    let mut node = Node::start().await?;
    let pod = node.pod("found").await?;
    let mut ids = vec![];
    for name in ["one", "two"] {
        ids.push(node.run(&pod, node.config(name, &["sleep", "1000"])).await?);
    }
    let shim = shims(&node, 1).await;
    assert_eq!(shim.len(), 1);

    node.stack.kill_service("runtime")?;
    node.stack.start_service("runtime").await?;

    // A new container joins the shim that is running; the old ones stop through it.
    let joined = node.run(&pod, node.config("three", &["sleep", "1000"])).await?;
    assert_eq!(shims(&node, 1).await, shim, "the container started after the restart joined the pod's shim");
    node.stop(&ids[0], 0).await?;
    assert_eq!(node.status(&ids[0]).await?.state, ContainerState::ContainerExited as i32);
    node.remove(&ids[0]).await?;
    assert_eq!(node.status(&joined).await?.state, ContainerState::ContainerRunning as i32);
    assert_eq!(shims(&node, 1).await, shim, "the shim still serves the pod's other containers");

    remove_pod(&node, &pod).await?;
    assert!(shims(&node, 0).await.is_empty(), "shims left after the pod was removed");
    let (bundles, _) = bundles_and_sockets(&node);
    assert!(bundles.is_empty(), "task bundle directories left: {bundles:?}");
    Ok(())
}

/// Many containers of one pod (one shim) stopped at once: every StopContainer answers (within
/// its grace period and a bound generous enough for a loaded 2-core machine: the calls take turns
/// at the shim), and each container is EXITED with the code its signal
/// gave (143 for SIGTERM, 137 for SIGKILL). containerd 1.6's shim, sent that many kills at
/// once, stopped answering and lost exits ("still running 30s after SIGKILL").
#[tokio::test]
async fn many_containers_of_one_pod_stopped_at_once_all_exit_in_time() -> anyhow::Result<()> {
    const COUNT: usize = 60;
    let node = Node::start().await?;
    let pod = node.pod("crowd").await?;
    let mut ids = vec![];
    for i in 0..COUNT {
        // A shell that exits on SIGTERM for half; `sleep` as pid 1 ignores it, for the others.
        let command: &[&str] = if i % 2 == 0 {
            &["sh", "-c", "trap 'exit 143' TERM; while true; do sleep 1; done"]
        } else {
            &["sleep", "1000"]
        };
        ids.push(node.run(&pod, node.config(&format!("c{i}"), command)).await?);
    }
    assert_eq!(shims(&node, 1).await.len(), 1, "one shim serves the pod");
    let started = std::time::Instant::now();
    let stops = ids.iter().enumerate().map(|(i, id)| {
        let node = &node;
        async move {
            let timeout = if i % 4 < 2 { 0 } else { 2 };
            let begun = std::time::Instant::now();
            node.stop(id, timeout).await.map_err(|s| anyhow::anyhow!("stopping {id}: {s}"))?;
            anyhow::Ok((i, timeout, begun.elapsed()))
        }
    });
    let answered = futures::future::try_join_all(stops).await?;
    for (i, timeout, took) in &answered {
        assert!(
            *took < Duration::from_secs(*timeout as u64 + 25),
            "StopContainer {i} (timeout {timeout}) took {took:?}"
        );
    }
    eprintln!("{COUNT} stops answered in {:?}", started.elapsed());
    for (i, id) in ids.iter().enumerate() {
        let status = node.status(id).await?;
        assert_eq!(status.state, ContainerState::ContainerExited as i32, "container {i}");
        let want = if i % 4 < 2 {
            137
        } else if i % 2 == 0 {
            143
        } else {
            137
        };
        assert_eq!(status.exit_code, want, "container {i}: {status:?}");
    }
    remove_pod(&node, &pod).await?;
    Ok(())
}

/// StopPodSandbox on a pod of 100 running containers (one shim) kills them all: it answers
/// (within a minute: a bound against a hang, not a speed check) and every container is EXITED
/// with 137.
#[tokio::test]
async fn stopping_a_pod_of_a_hundred_running_containers_stops_every_one() -> anyhow::Result<()> {
    const COUNT: usize = 100;
    let node = Node::start().await?;
    let pod = node.pod("hundred").await?;
    let mut ids = vec![];
    for i in 0..COUNT {
        ids.push(node.run(&pod, node.config(&format!("c{i}"), &["sleep", "1000"])).await?);
    }
    let started = std::time::Instant::now();
    node.runtime().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    let took = started.elapsed();
    eprintln!("StopPodSandbox of {COUNT} running containers answered in {took:?}");
    assert!(took < Duration::from_secs(60), "StopPodSandbox took {took:?}");
    for (i, id) in ids.iter().enumerate() {
        let status = node.status(id).await?;
        assert_eq!(status.state, ContainerState::ContainerExited as i32, "container {i}");
        assert_eq!(status.exit_code, 137, "container {i}: {status:?}");
    }
    node.runtime().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    assert!(shims(&node, 0).await.is_empty(), "shims left after the pod was removed");
    Ok(())
}
