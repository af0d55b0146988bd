//! The runtime service killed while containers run: after its restart every container is
//! found with its state, a container that exited while the service was down is reported with
//! its exit code (containerd kept it), a running one can still be stopped and keeps logging.

mod container_support;

use container_support::*;
use crisp_proto::cri::*;
use std::time::Duration;

#[tokio::test]
async fn a_restarted_runtime_service_loses_no_exit_and_keeps_logging() -> anyhow::Result<()> {
    let mut node = Node::start().await?;
    let pod = node.pod("recover").await?;
    let long = node.run(&pod, node.config("long", &["sleep", "1000"])).await?;
    let short = node.run(&pod, node.config("short", &["sh", "-c", "sleep 2; exit 5"])).await?;
    let chatty_config =
        node.config("chatty", &["sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"]);
    let chatty = node.run(&pod, chatty_config.clone()).await?;
    let created = node.create(&pod, node.config("later", &["true"])).await?;

    node.stack.kill_service("runtime")?;
    // The short container exits while nobody listens.
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.stack.start_service("runtime").await?;

    let status = match node.wait_exited(&short).await {
        Ok(status) => status,
        Err(err) => panic!("{err}\nruntime log:\n{}", node.stack.service_log("runtime")?),
    };
    assert_eq!((status.exit_code, status.reason.as_str()), (5, "Error"));
    assert!(status.finished_at > status.started_at);
    assert_eq!(node.status(&long).await?.state, ContainerState::ContainerRunning as i32);
    assert_eq!(node.status(&created).await?.state, ContainerState::ContainerCreated as i32);
    assert_eq!(node.list(None).await?.len(), 4);

    // Logging goes on through the restart: the lines keep counting, none is missing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = node.log(&pod, &chatty_config).lines().count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = node.log(&pod, &chatty_config);
    assert!(log.lines().count() > before, "no new lines after the restart:\n{log}");
    let numbers: Vec<u64> = log.lines().filter_map(|l| l.rsplit(' ').next().and_then(|n| n.parse().ok())).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "lines lost or reordered: {numbers:?}");

    // The running ones still stop, and their exits are recorded by the new process.
    node.stop(&long, 0).await?;
    let status = node.status(&long).await?;
    assert_eq!((status.state, status.exit_code), (ContainerState::ContainerExited as i32, 137));
    node.start_container(&created).await?;
    assert_eq!(node.wait_exited(&created).await?.exit_code, 0);
    node.stop(&chatty, 1).await?;
    assert_eq!(node.status(&chatty).await?.state, ContainerState::ContainerExited as i32);
    Ok(())
}
