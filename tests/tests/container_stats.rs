//! ContainerStats, ListContainerStats, the pod's containers in PodSandboxStats,
//! UpdateContainerResources, ListMetricDescriptors and ListPodSandboxMetrics through the proxy,
//! on containers crisp created and started (containerd, runc) in a pod on a CNI network of the
//! test's own: one burning CPU, one created and never started.

mod container_support;
mod sandbox_support;

use container_support::{Node, Pod};
use crisp_proto::cri::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn counter(v: &Option<UInt64Value>) -> u64 {
    v.as_ref().map(|v| v.value).unwrap_or_default()
}

/// A busy loop that ends by itself after a minute, should the test leave it behind.
const BURN: &[&str] = &["busybox", "timeout", "60", "sh", "-c", "while :; do :; done"];

/// A pod `name` on the test's own CNI network (for its network counters), logs in the stack.
async fn pod_on_network(node: &Node, name: &str) -> Pod {
    let mut config = sandbox_support::pod_config(name, &format!("uid-{name}"));
    let log_dir = node.log_dir(name);
    std::fs::create_dir_all(&log_dir).unwrap();
    config.log_directory = log_dir.display().to_string();
    node.pod_with(config).await.unwrap()
}

/// The container's cgroup in `controller` (v1), from its OCI spec in containerd.
fn cgroup_dir(node: &Node, id: &str, controller: &str) -> PathBuf {
    let info: serde_json::Value = serde_json::from_str(&node.stack.ctr(&["container", "info", id]).unwrap()).unwrap();
    let path = info["Spec"]["linux"]["cgroupsPath"].as_str().unwrap().trim_start_matches('/').to_string();
    Path::new(CGROUP_ROOT).join(controller).join(path)
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
}

fn ids(stats: Vec<ContainerStats>) -> Vec<String> {
    let mut ids: Vec<String> = stats.into_iter().map(|s| s.attributes.unwrap().id).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn container_stats_move_filter_and_fill_the_pods_stats_and_metrics() {
    if !Path::new(CGROUP_ROOT).join("cpuacct").is_dir() {
        eprintln!("skipped: this test reads cgroup v1 files");
        return;
    }
    let node = Node::start().await.unwrap();
    let _network = sandbox_support::write_network(&node.stack, "cstats", 19, &[]);
    let pod = pod_on_network(&node, "web").await;
    let burner = node.run(&pod, node.config("burner", BURN)).await.unwrap();
    let idle = node.create(&pod, node.config("idle", &["sleep", "60"])).await.unwrap();
    let mut runtime = node.runtime();

    // The running container: CPU that moves, memory, its writable layer and attributes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = |id: &str| ContainerStatsRequest { container_id: id.to_string() };
    let first = runtime.container_stats(stats(&burner)).await.unwrap().into_inner().stats.unwrap();
    let attributes = first.attributes.clone().unwrap();
    assert_eq!(attributes.id, burner);
    assert_eq!(attributes.metadata.unwrap().name, "burner");
    assert_eq!(attributes.labels["container"], "burner");
    assert_eq!(attributes.annotations["note"], "burner made by a test");
    let cpu = first.cpu.unwrap();
    assert!(counter(&cpu.usage_core_nano_seconds) > 0);
    assert_eq!(cpu.usage_nano_cores, None, "a rate needs two samples");
    let memory = first.memory.unwrap();
    assert!(counter(&memory.working_set_bytes) > 0 && counter(&memory.rss_bytes) > 0);
    let layer = first.writable_layer.unwrap();
    assert!(layer.fs_id.unwrap().mountpoint.ends_with("io.containerd.snapshotter.v1.overlayfs"));
    assert!(layer.used_bytes.is_some() && layer.inodes_used.is_some());

    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = runtime.container_stats(stats(&burner[..12])).await.unwrap().into_inner().stats.unwrap();
    let cpu2 = second.cpu.unwrap();
    assert!(counter(&cpu2.usage_core_nano_seconds) > counter(&cpu.usage_core_nano_seconds));
    let nano_cores = counter(&cpu2.usage_nano_cores);
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(nano_cores > 0 && nano_cores <= cores * 1_000_000_000, "{nano_cores}");

    // A container never started has no cgroup: attributes and writable layer only.
    let idle_stats = runtime.container_stats(stats(&idle)).await.unwrap().into_inner().stats.unwrap();
    assert!(idle_stats.cpu.is_none() && idle_stats.memory.is_none());
    assert_eq!(idle_stats.attributes.unwrap().metadata.unwrap().name, "idle");
    assert!(idle_stats.writable_layer.is_some());
    assert_eq!(runtime.container_stats(stats("nope")).await.unwrap_err().code(), Code::NotFound);

    // Filters: id prefix, pod (by a prefix too), labels; none at all.
    let list = |filter: Option<ContainerStatsFilter>| ListContainerStatsRequest { filter };
    let mut both = vec![burner.clone(), idle.clone()];
    both.sort();
    let all = runtime.list_container_stats(list(None)).await.unwrap().into_inner().stats;
    assert_eq!(ids(all), both);
    let by = |filter: ContainerStatsFilter| list(Some(filter));
    let by_pod = ContainerStatsFilter { pod_sandbox_id: pod.id[..12].to_string(), ..Default::default() };
    assert_eq!(ids(runtime.list_container_stats(by(by_pod)).await.unwrap().into_inner().stats), both);
    let by_id = ContainerStatsFilter { id: burner[..8].to_string(), ..Default::default() };
    assert_eq!(ids(runtime.list_container_stats(by(by_id)).await.unwrap().into_inner().stats), vec![burner.clone()]);
    let by_label = ContainerStatsFilter {
        label_selector: [("container".to_string(), "idle".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(ids(runtime.list_container_stats(by(by_label)).await.unwrap().into_inner().stats), vec![idle.clone()]);
    let other_pod = ContainerStatsFilter { pod_sandbox_id: "nope".into(), ..Default::default() };
    assert!(runtime.list_container_stats(by(other_pod)).await.unwrap().into_inner().stats.is_empty());

    // The pod's stats carry its containers'.
    let pod_stats = runtime
        .pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: pod.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(ids(pod_stats.linux.unwrap().containers), both);

    // Metrics: described once, listed per pod with its containers and its network.
    let descriptors = runtime.list_metric_descriptors(ListMetricDescriptorsRequest {}).await.unwrap().into_inner();
    let described: std::collections::HashMap<String, usize> =
        descriptors.descriptors.iter().map(|d| (d.name.clone(), d.label_keys.len())).collect();
    let metrics = runtime.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {}).await.unwrap().into_inner();
    let pod_metrics = metrics.pod_metrics.iter().find(|p| p.pod_sandbox_id == pod.id).expect("the pod's metrics");
    let burner_metrics = pod_metrics.container_metrics.iter().find(|c| c.container_id == burner).unwrap();
    let value = |name: &str| {
        let m = burner_metrics.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(described[name], m.label_values.len(), "{name}");
        assert_eq!(m.label_values[0], "burner");
        counter(&m.value)
    };
    assert!(value("container_memory_working_set_bytes") > 0);
    assert!(value("container_memory_usage_bytes") > 0);
    assert!(value("container_memory_rss") > 0);
    value("container_cpu_usage_seconds_total");
    // No limit: 0, as cAdvisor says it.
    assert_eq!(value("container_spec_memory_limit_bytes"), 0);
    let received = pod_metrics.metrics.iter().find(|m| m.name == "container_network_receive_bytes_total");
    assert!(received.is_some(), "{:?}", pod_metrics.metrics);
    assert!(pod_metrics.container_metrics.iter().any(|c| c.container_id == idle));

    node.stop(&burner, 0).await.unwrap();
    node.remove(&burner).await.unwrap();
    node.remove(&idle).await.unwrap();
}

#[tokio::test]
async fn updated_resources_reach_the_cgroup_the_status_and_a_later_start() {
    if !Path::new(CGROUP_ROOT).join("cpuacct").is_dir() {
        eprintln!("skipped: this test reads cgroup v1 files");
        return;
    }
    let node = Node::start().await.unwrap();
    let pod = node.pod("res").await.unwrap();
    // Made with a memory limit: where swap is accounted, swap is capped at it too.
    let mut config = node.config("running", &["sleep", "60"]);
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources { memory_limit_in_bytes: 32 << 20, ..Default::default() }),
        ..Default::default()
    });
    let running = node.run(&pod, config).await.unwrap();
    let created = node.create(&pod, node.config("created", &["sleep", "60"])).await.unwrap();
    let mut runtime = node.runtime();
    let update = |id: &str, r: LinuxContainerResources| UpdateContainerResourcesRequest {
        container_id: id.to_string(),
        linux: Some(r),
        ..Default::default()
    };
    let resources = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_quota: 20_000,
        cpu_period: 100_000,
        ..Default::default()
    };
    let status_memory = |status: ContainerStatus| status.resources.unwrap().linux.unwrap().memory_limit_in_bytes;

    // A running container: its cgroup, and ContainerStatus.
    runtime.update_container_resources(update(&running, resources.clone())).await.unwrap();
    assert_eq!(read(cgroup_dir(&node, &running, "memory").join("memory.limit_in_bytes")), (64u64 << 20).to_string());
    assert_eq!(read(cgroup_dir(&node, &running, "cpu").join("cpu.cfs_quota_us")), "20000");
    let memsw = cgroup_dir(&node, &running, "memory").join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        // Raised with the memory limit, as at create (else the kernel refuses a limit above it).
        assert_eq!(read(memsw), (64u64 << 20).to_string());
    }
    assert_eq!(status_memory(node.status(&running).await.unwrap()), 64 << 20);
    let metrics = runtime.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {}).await.unwrap().into_inner();
    let limit = metrics
        .pod_metrics
        .iter()
        .flat_map(|p| &p.container_metrics)
        .filter(|c| c.container_id == running)
        .flat_map(|c| &c.metrics)
        .find(|m| m.name == "container_spec_memory_limit_bytes")
        .map(|m| counter(&m.value));
    assert_eq!(limit, Some(64 << 20));

    // A limit below what the container uses is refused by the kernel: nothing changes.
    let too_small = LinuxContainerResources { memory_limit_in_bytes: 4096, ..Default::default() };
    let err = runtime.update_container_resources(update(&running, too_small)).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert_eq!(status_memory(node.status(&running).await.unwrap()), 64 << 20, "{}", err.message());
    assert_eq!(read(cgroup_dir(&node, &running, "memory").join("memory.limit_in_bytes")), (64u64 << 20).to_string());
    // Out of the kernel's range: refused before anything, naming the field.
    let err = runtime
        .update_container_resources(update(&running, LinuxContainerResources { cpu_shares: 1, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("cpu_shares"), "{}", err.message());
    let err = runtime.update_container_resources(update("nope", resources.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A container not started: recorded, and its start takes them.
    let smaller = LinuxContainerResources { memory_limit_in_bytes: 32 << 20, ..Default::default() };
    runtime.update_container_resources(update(&created, smaller)).await.unwrap();
    assert_eq!(status_memory(node.status(&created).await.unwrap()), 32 << 20);
    node.start_container(&created).await.unwrap();
    assert_eq!(read(cgroup_dir(&node, &created, "memory").join("memory.limit_in_bytes")), (32u64 << 20).to_string());

    // An exited container has nothing to update.
    node.stop(&created, 0).await.unwrap();
    let err = runtime.update_container_resources(update(&created, resources)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    for id in [&running, &created] {
        node.stop(id, 0).await.unwrap();
        node.remove(id).await.unwrap();
    }
}
