//! Containers through the proxy socket, with real containerd, runc and a registry: create,
//! start, exit, stop (signal then SIGKILL after the grace period), remove, each as the CRI
//! client sees it (ContainerStatus, ListContainers and its filters), what containerd is left
//! with (no task, record or snapshot after remove), and the errors a kubelet can meet.

mod container_support;

use container_support::*;
use crisp_proto::cri::*;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test]
async fn a_container_runs_to_its_exit_and_is_removed_without_a_trace() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("life").await?;
    let config = node.config("app", &["sh", "-c", "echo hello; exit 3"]);
    let id = node.create(&pod, config.clone()).await?;
    assert_eq!(id.len(), 64);

    let created = node.status(&id).await?;
    assert_eq!(created.state, ContainerState::ContainerCreated as i32);
    assert_eq!(created.metadata.as_ref().unwrap().name, "app");
    assert!(created.created_at > 0 && created.started_at == 0);
    assert_eq!(created.image_id, node.image_id);
    assert_eq!(created.image.as_ref().unwrap().image, node.image);
    assert_eq!(created.labels["container"], "app");
    assert_eq!(created.annotations["note"], "app made by a test");
    assert_eq!(created.log_path, node.log_dir("life").join("app.log").display().to_string());
    let listed = node.list(None).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].pod_sandbox_id, pod.id);
    assert_eq!(listed[0].image_id, node.image_id);

    node.start_container(&id).await?;
    let exited = node.wait_exited(&id).await?;
    assert_eq!(exited.exit_code, 3);
    assert_eq!(exited.reason, "Error");
    // Its output is in the CRI log at the path the kubelet gave, written before the exit was.
    let log = node.log(&pod, &config);
    assert!(log.lines().any(|l| l.ends_with(" stdout F hello")), "{log}");
    assert!(exited.started_at >= exited.created_at && exited.finished_at >= exited.started_at, "{exited:?}");
    // The exit deleted the task; the record and snapshot stay until removal.
    assert!(!node.stack.ctr(&["tasks", "ls", "-q"])?.contains(&id));
    assert!(node.stack.ctr(&["snapshots", "ls"])?.contains(&id));

    let verbose = node.status_verbose(&id).await?;
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"])?;
    assert_eq!(info["sandboxID"], pod.id.as_str());
    assert!(info["runtimeSpec"]["process"]["args"].is_array(), "{info}");

    node.remove(&id).await?;
    assert_eq!(node.status(&id).await.unwrap_err().code(), Code::NotFound);
    node.remove(&id).await?;
    assert!(node.list(None).await?.is_empty());
    assert!(!node.stack.ctr(&["containers", "ls", "-q"])?.contains(&id));
    assert!(!node.stack.ctr(&["snapshots", "ls"])?.contains(&id));
    assert!(!node.stack.dir().join("lib/containers").join(&id).exists());
    Ok(())
}

#[tokio::test]
async fn a_zero_exit_is_completed() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("done").await?;
    let id = node.run(&pod, node.config("ok", &["true"])).await?;
    let exited = node.wait_exited(&id).await?;
    assert_eq!((exited.exit_code, exited.reason.as_str()), (0, "Completed"));
    Ok(())
}

#[tokio::test]
async fn stop_signals_then_kills_after_the_grace_period_and_is_idempotent() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("stop").await?;
    // Handles SIGTERM: stops at once with its own code.
    let polite = node
        .run(&pod, node.config("polite", &["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.1; done"]))
        .await?;
    // PID 1 without a handler ignores SIGTERM: only the SIGKILL after the grace period ends it.
    let stubborn = node.run(&pod, node.config("stubborn", &["sleep", "1000"])).await?;
    assert_eq!(node.status(&polite).await?.state, ContainerState::ContainerRunning as i32);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    node.stop(&polite, 10).await?;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let status = node.status(&polite).await?;
    assert_eq!((status.state, status.exit_code), (ContainerState::ContainerExited as i32, 7));

    let started = Instant::now();
    node.stop(&stubborn, 2).await?;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(10), "{waited:?}");
    let status = node.status(&stubborn).await?;
    assert_eq!((status.state, status.exit_code), (ContainerState::ContainerExited as i32, 137));

    // Again, and for an id nobody knows.
    node.stop(&stubborn, 2).await?;
    node.stop("0123456789abcdef", 0).await?;
    node.remove("0123456789abcdef").await?;
    Ok(())
}

#[tokio::test]
async fn remove_kills_a_running_container() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("rm").await?;
    let id = node.run(&pod, node.config("busy", &["sleep", "1000"])).await?;
    node.remove(&id).await?;
    assert_eq!(node.status(&id).await.unwrap_err().code(), Code::NotFound);
    assert!(!node.stack.ctr(&["tasks", "ls", "-q"])?.contains(&id));
    Ok(())
}

#[tokio::test]
async fn list_filters_by_id_prefix_state_pod_and_labels() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let (a, b) = (node.pod("pod-a").await?, node.pod("pod-b").await?);
    let created = node.create(&a, node.config("created", &["true"])).await?;
    let running = node.run(&a, node.config("running", &["sleep", "1000"])).await?;
    let other = node.create(&b, node.config("other", &["true"])).await?;

    let ids = |list: Vec<Container>| {
        let mut ids: Vec<String> = list.into_iter().map(|c| c.id).collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(ids(node.list(None).await?), sorted(vec![created.clone(), running.clone(), other.clone()]));
    let by_pod = ContainerFilter { pod_sandbox_id: a.id.clone(), ..Default::default() };
    assert_eq!(ids(node.list(Some(by_pod)).await?), sorted(vec![created.clone(), running.clone()]));
    let by_short_pod = ContainerFilter { pod_sandbox_id: b.id[..12].to_string(), ..Default::default() };
    assert_eq!(ids(node.list(Some(by_short_pod)).await?), vec![other.clone()]);
    let by_state = ContainerFilter {
        state: Some(ContainerStateValue { state: ContainerState::ContainerRunning as i32 }),
        ..Default::default()
    };
    assert_eq!(ids(node.list(Some(by_state)).await?), vec![running.clone()]);
    let by_label = ContainerFilter {
        label_selector: [("container".to_string(), "other".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(ids(node.list(Some(by_label)).await?), vec![other.clone()]);
    let by_prefix = ContainerFilter { id: created[..10].to_string(), ..Default::default() };
    assert_eq!(ids(node.list(Some(by_prefix)).await?), vec![created.clone()]);
    // Status by a unique prefix, as crictl does.
    assert_eq!(node.status(&running[..12]).await?.id, running);
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_refused_naming_what_is_wrong() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("bad").await?;

    let mut missing = node.config("nothere", &["true"]);
    missing.image = Some(ImageSpec { image: "127.0.0.1:1/no/such:image".into(), ..Default::default() });
    let err = node.create(&pod, missing).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("127.0.0.1:1/no/such:image"), "{}", err.message());

    let unknown_pod = Pod { id: "f".repeat(64), config: pod.config.clone() };
    assert_eq!(node.create(&unknown_pod, node.config("x", &["true"])).await.unwrap_err().code(), Code::NotFound);

    let mut nameless = node.config("x", &["true"]);
    nameless.metadata = None;
    assert_eq!(node.create(&pod, nameless).await.unwrap_err().code(), Code::InvalidArgument);

    let id = node.create(&pod, node.config("twice", &["sleep", "1000"])).await?;
    let err = node.create(&pod, node.config("twice", &["true"])).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&id), "{}", err.message());

    node.start_container(&id).await?;
    assert_eq!(node.start_container(&id).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(node.status(&"e".repeat(64)).await.unwrap_err().code(), Code::NotFound);

    let checkpoint =
        CheckpointContainerRequest { container_id: id.clone(), location: "/tmp/x.tar".into(), timeout: 10 };
    let err = node.runtime().checkpoint_container(checkpoint).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("criu"), "{}", err.message());

    // A stopped pod takes no new container.
    node.runtime().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    assert_eq!(node.status(&id).await?.state, ContainerState::ContainerExited as i32, "stopping the pod stops it");
    let err = node.create(&pod, node.config("late", &["true"])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    Ok(())
}

#[tokio::test]
async fn removing_a_pod_removes_its_containers() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("gone").await?;
    let keep = node.pod("kept").await?;
    let running = node.run(&pod, node.config("running", &["sleep", "1000"])).await?;
    let created = node.create(&pod, node.config("created", &["true"])).await?;
    let other = node.run(&keep, node.config("other", &["sleep", "1000"])).await?;
    node.runtime().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    for id in [&running, &created] {
        assert_eq!(node.status(id).await.unwrap_err().code(), Code::NotFound);
    }
    assert_eq!(node.status(&other).await?.state, ContainerState::ContainerRunning as i32);
    let tasks = node.stack.ctr(&["tasks", "ls", "-q"])?;
    assert!(!tasks.contains(&running) && tasks.contains(&other), "{tasks}");
    Ok(())
}

#[tokio::test]
async fn a_container_killed_for_memory_is_oomkilled_with_137() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("oom").await?;
    let mut config = node.config("hog", &["sh", "-c", "a=0123456789abcdef; while true; do a=\"$a$a\"; done"]);
    let limit = 32 * 1024 * 1024;
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: limit,
            memory_swap_limit_in_bytes: limit,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = node.run(&pod, config).await?;
    let exited = node.wait_exited(&id).await?;
    assert_eq!((exited.exit_code, exited.reason.as_str()), (137, "OOMKilled"), "{exited:?}");
    assert_eq!(exited.resources.unwrap().linux.unwrap().memory_limit_in_bytes, limit);
    Ok(())
}

/// ListContainers and ContainerStatus answer from memory, yet see a container whose record
/// was deleted behind crisp's back (here with `ctr`), from containerd's container events.
#[tokio::test]
async fn a_container_deleted_behind_crisps_back_leaves_the_list() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let pod = node.pod("behind").await?;
    let kept = node.create(&pod, node.config("kept", &["true"])).await?;
    let gone = node.create(&pod, node.config("gone", &["true"])).await?;
    assert_eq!(node.list(None).await?.len(), 2);
    assert_eq!(node.status(&gone).await?.state, ContainerState::ContainerCreated as i32);

    node.stack.ctr(&["containers", "rm", &gone])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut listed = node.list(None).await?;
    while listed.len() != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        listed = node.list(None).await?;
    }
    let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec![kept.as_str()], "the list still names the deleted container");
    assert_eq!(node.status(&gone).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(node.status(&kept).await?.state, ContainerState::ContainerCreated as i32);
    Ok(())
}
