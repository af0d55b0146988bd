//! A StartContainer cut off after the container's task was made (the runtime service died
//! between the task's start and the record's update) leaves a task the record, still
//! `created`, does not know. Made here as that cut-off leaves it: the task is started behind
//! crisp's back (`ctr task start`). A later StartContainer takes the running task over as the
//! container running, RemoveContainer kills and removes it, and a restarted runtime service
//! finds it running, as containerd's CRI plugin does after a restart.

mod container_support;

use container_support::*;
use crisp_proto::cri::*;
use std::time::Duration;

/// A created container whose task was started behind crisp's back, with the guard that
/// deletes the task should the test fail.
async fn cut_off(node: &Node, pod: &Pod, name: &str) -> anyhow::Result<(String, TaskCleanup)> {
    let id = node.create(pod, node.config(name, &["sleep", "1000"])).await?;
    let cleanup = node.task_cleanup(&id);
    node.stack.ctr(&["task", "start", "--detach", "--null-io", &id])?;
    assert_eq!(node.status(&id).await?.state, ContainerState::ContainerCreated as i32);
    Ok((id, cleanup))
}

fn has_task(node: &Node, id: &str) -> anyhow::Result<bool> {
    Ok(node.stack.ctr(&["task", "ls", "--quiet"])?.lines().any(|line| line.trim() == id))
}

#[tokio::test]
async fn a_later_start_takes_the_running_task_over_and_it_stops_and_goes() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("cut-start").await?;
    let (id, _cleanup) = cut_off(&node, &pod, "app").await?;

    node.start_container(&id).await?;
    let status = node.status(&id).await?;
    assert_eq!(status.state, ContainerState::ContainerRunning as i32, "{status:?}");
    assert!(status.started_at > 0, "{status:?}");

    node.stop(&id, 0).await?;
    let status = node.status(&id).await?;
    assert_eq!((status.state, status.exit_code), (ContainerState::ContainerExited as i32, 137), "{status:?}");
    node.remove(&id).await?;
    assert!(!has_task(&node, &id)?, "the task is left behind");
    assert!(node.list(None).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn remove_kills_and_deletes_the_task_the_record_does_not_know() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("cut-remove").await?;
    let (id, _cleanup) = cut_off(&node, &pod, "app").await?;

    tokio::time::timeout(Duration::from_secs(30), node.remove(&id)).await??;
    assert!(!has_task(&node, &id)?, "the task is left behind");
    assert!(node.list(None).await?.is_empty());
    // Gone for good: a second removal is one of nothing.
    node.remove(&id).await?;
    Ok(())
}

#[tokio::test]
async fn a_restarted_runtime_service_finds_the_container_running() -> anyhow::Result<()> {
    let mut node = Node::start().await?;
    let pod = node.pod("cut-restart").await?;
    let (id, _cleanup) = cut_off(&node, &pod, "app").await?;
    let untouched = node.create(&pod, node.config("untouched", &["true"])).await?;

    node.stack.kill_service("runtime")?;
    node.stack.start_service("runtime").await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = node.status(&id).await?;
        if status.state == ContainerState::ContainerRunning as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {status:?}\nruntime log:\n{}",
            node.stack.service_log("runtime")?
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A created container without a task stays created, and starts.
    assert_eq!(node.status(&untouched).await?.state, ContainerState::ContainerCreated as i32);
    node.start_container(&untouched).await?;
    assert_eq!(node.wait_exited(&untouched).await?.exit_code, 0);

    node.stop(&id, 0).await?;
    let status = node.status(&id).await?;
    assert_eq!((status.state, status.exit_code), (ContainerState::ContainerExited as i32, 137), "{status:?}");
    node.remove(&id).await?;
    assert!(!has_task(&node, &id)?, "the task is left behind");
    Ok(())
}
