//! ContainerStats, ListContainerStats, the pod's containers in PodSandboxStats,
//! UpdateContainerResources, ListMetricDescriptors and ListPodSandboxMetrics through the proxy,
//! on real containers run by containerd and runc in a pod crisp made.
//!
//! The containers are made as crisp records them (its labels, a cgroup under the pod's) with
//! `ctr`, from an image pulled through crisp's image service: one burning CPU, one created and
//! never started.

mod image_support;
mod sandbox_support;

use crisp_proto::cri::*;
use crisp_testkit::Stack;
use crisp_testkit::images::Format;
use crisp_testkit::registry::Registry;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn counter(v: &Option<UInt64Value>) -> u64 {
    v.as_ref().map(|v| v.value).unwrap_or_default()
}

/// Containers made with `ctr` in the stack's namespace, and the cgroup parent they run under;
/// killed, deleted and the cgroups removed on drop.
struct Containers<'a> {
    stack: &'a Stack,
    parent: String,
    ids: Vec<String>,
}

impl<'a> Containers<'a> {
    fn new(stack: &'a Stack) -> Containers<'a> {
        Containers { stack, parent: format!("/crisp-e2e-stats-{}", std::process::id()), ids: vec![] }
    }

    fn cgroup_path(&self, id: &str) -> String {
        format!("{}/{id}", self.parent)
    }

    fn labels(pod: &str, name: &str, state: &str) -> Vec<String> {
        [
            "crisp.io/kind=container".to_string(),
            format!("crisp.io/container.sandbox={pod}"),
            format!("crisp.io/container.name={name}"),
            "crisp.io/container.attempt=0".to_string(),
            format!("crisp.io/container.state={state}"),
            format!("crisp.io/label.app={name}"),
        ]
        .into_iter()
        .flat_map(|l| ["--label".to_string(), l])
        .collect()
    }

    /// `ctr run -d` (started) or `ctr container create` (not started) of `image` running `cmd`.
    fn make(&mut self, image: &str, pod: &str, name: &str, start: bool, cmd: &[&str]) -> String {
        let id = format!("{name}{}", std::process::id());
        let cgroup = self.cgroup_path(&id);
        let mut args: Vec<String> =
            if start { vec!["run".into(), "-d".into()] } else { vec!["container".into(), "create".into()] };
        args.extend(["--snapshotter".into(), "overlayfs".into()]);
        if start {
            // (`ctr container create` has no such flag; a container never started has no cgroup.)
            args.extend(["--cgroup".into(), cgroup]);
        }
        args.extend(Self::labels(pod, name, if start { "running" } else { "created" }));
        args.extend([image.to_string(), id.clone()]);
        args.extend(cmd.iter().map(|c| c.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.stack.ctr(&args).unwrap();
        self.ids.push(id.clone());
        id
    }
}

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.stack.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            for _ in 0..50 {
                if self.stack.ctr(&["task", "rm", "-f", id]).is_ok()
                    || self.stack.ctr(&["task", "ls"]).is_ok_and(|l| !l.contains(id.as_str()))
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.stack.ctr(&["container", "rm", id]);
        }
        // runc made the cgroup in every hierarchy mounted.
        let hierarchies = std::fs::read_dir(CGROUP_ROOT).into_iter().flatten().flatten();
        for hierarchy in hierarchies {
            let dir = hierarchy.path().join(self.parent.trim_start_matches('/'));
            for id in &self.ids {
                let _ = std::fs::remove_dir(dir.join(id));
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn memory_dir(path: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join("memory").join(path.trim_start_matches('/'))
}

#[tokio::test]
async fn container_stats_move_resources_update_and_metrics_are_listed() {
    if !Path::new(CGROUP_ROOT).join("cpuacct").is_dir() {
        eprintln!("skipped: this test reads cgroup v1 files");
        return;
    }
    let registry = Registry::start().await.unwrap();
    let stack = image_support::stack().await.unwrap();
    let _network = sandbox_support::write_network(&stack, "cstats", 19, &[]);
    let image = registry.push("test/busybox", "v1", &image_support::busybox(Format::Oci).unwrap()).await.unwrap();
    image_support::pull(&mut stack.image_client(), &image).await.unwrap();
    let pod = sandbox_support::run(&stack, sandbox_support::pod_config("web", "uid-cstats")).await.unwrap();

    let mut containers = Containers::new(&stack);
    let burner = containers.make(&image, &pod, "burner", true, &["sh", "-c", "while :; do :; done"]);
    let idle = containers.make(&image, &pod, "idle", false, &["sleep", "1000"]);
    let mut runtime = stack.runtime_client();

    // The running container: CPU that moves, memory, its writable layer and attributes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = |id: &str| ContainerStatsRequest { container_id: id.to_string() };
    let first = runtime.container_stats(stats(&burner)).await.unwrap().into_inner().stats.unwrap();
    let attributes = first.attributes.clone().unwrap();
    assert_eq!(attributes.id, burner);
    assert_eq!(attributes.metadata.unwrap().name, "burner");
    assert_eq!(attributes.labels["app"], "burner");
    let cpu = first.cpu.unwrap();
    assert!(counter(&cpu.usage_core_nano_seconds) > 0);
    assert_eq!(cpu.usage_nano_cores, None, "a rate needs two samples");
    assert!(counter(&first.memory.unwrap().working_set_bytes) > 0);
    let layer = first.writable_layer.unwrap();
    assert!(layer.fs_id.unwrap().mountpoint.ends_with("io.containerd.snapshotter.v1.overlayfs"));
    assert!(layer.used_bytes.is_some() && layer.inodes_used.is_some());

    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = runtime.container_stats(stats(&burner)).await.unwrap().into_inner().stats.unwrap();
    let cpu2 = second.cpu.unwrap();
    assert!(counter(&cpu2.usage_core_nano_seconds) > counter(&cpu.usage_core_nano_seconds));
    let nano_cores = counter(&cpu2.usage_nano_cores);
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(nano_cores > 0 && nano_cores <= cores * 1_000_000_000, "{nano_cores}");

    // A container never started has no cgroup: attributes and writable layer only.
    let idle_stats = runtime.container_stats(stats(&idle)).await.unwrap().into_inner().stats.unwrap();
    assert!(idle_stats.cpu.is_none() && idle_stats.memory.is_none());
    assert!(idle_stats.writable_layer.is_some());
    assert_eq!(runtime.container_stats(stats("nope")).await.unwrap_err().code(), Code::NotFound);

    // Filters: id prefix, pod, labels.
    let list = |filter: ContainerStatsFilter| ListContainerStatsRequest { filter: Some(filter) };
    let ids = |stats: Vec<ContainerStats>| {
        let mut ids: Vec<String> = stats.into_iter().map(|s| s.attributes.unwrap().id).collect();
        ids.sort();
        ids
    };
    let mut both = vec![burner.clone(), idle.clone()];
    both.sort();
    let all = runtime.list_container_stats(ListContainerStatsRequest { filter: None }).await.unwrap().into_inner();
    assert_eq!(ids(all.stats), both);
    let by_pod = runtime
        .list_container_stats(list(ContainerStatsFilter {
            pod_sandbox_id: pod[..12].to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(by_pod.stats), both);
    let by_id = runtime
        .list_container_stats(list(ContainerStatsFilter { id: burner[..8].to_string(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(by_id.stats), vec![burner.clone()]);
    let by_label = runtime
        .list_container_stats(list(ContainerStatsFilter {
            label_selector: [("app".to_string(), "idle".to_string())].into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(by_label.stats), vec![idle.clone()]);
    let other_pod = runtime
        .list_container_stats(list(ContainerStatsFilter { pod_sandbox_id: "nope".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert!(other_pod.stats.is_empty());

    // The pod's stats carry its containers'.
    let pod_stats = runtime
        .pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: pod.clone() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(ids(pod_stats.linux.unwrap().containers), both);

    // A memory limit and CPU quota reach the running container's cgroup and its record.
    let resources = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_quota: 20_000,
        cpu_period: 100_000,
        ..Default::default()
    };
    let update = |id: &str, r: LinuxContainerResources| UpdateContainerResourcesRequest {
        container_id: id.to_string(),
        linux: Some(r),
        ..Default::default()
    };
    runtime.update_container_resources(update(&burner, resources.clone())).await.unwrap();
    let limit =
        std::fs::read_to_string(memory_dir(&containers.cgroup_path(&burner)).join("memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let quota = std::fs::read_to_string(
        Path::new(CGROUP_ROOT)
            .join("cpu")
            .join(containers.cgroup_path(&burner).trim_start_matches('/'))
            .join("cpu.cfs_quota_us"),
    )
    .unwrap();
    assert_eq!(quota.trim(), "20000");
    let info: serde_json::Value = serde_json::from_str(&stack.ctr(&["container", "info", &burner]).unwrap()).unwrap();
    assert_eq!(info["Spec"]["linux"]["resources"]["memory"]["limit"], 64 << 20);
    // A container not started: recorded only.
    runtime.update_container_resources(update(&idle, resources.clone())).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&stack.ctr(&["container", "info", &idle]).unwrap()).unwrap();
    assert_eq!(info["Spec"]["linux"]["resources"]["cpu"]["quota"], 20_000);
    // A limit below what the container uses is refused by the kernel: the record stays as it was.
    let err = runtime
        .update_container_resources(update(
            &burner,
            LinuxContainerResources { memory_limit_in_bytes: 4096, ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let info: serde_json::Value = serde_json::from_str(&stack.ctr(&["container", "info", &burner]).unwrap()).unwrap();
    assert_eq!(info["Spec"]["linux"]["resources"]["memory"]["limit"], 64 << 20, "{}", err.message());
    // Out of the kernel's range: refused before anything, naming the field.
    let err = runtime
        .update_container_resources(update(&burner, LinuxContainerResources { cpu_shares: 1, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("cpu_shares"), "{}", err.message());
    let err = runtime.update_container_resources(update("nope", resources.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Metrics: described once, listed per pod with its containers.
    let descriptors = runtime.list_metric_descriptors(ListMetricDescriptorsRequest {}).await.unwrap().into_inner();
    let described: std::collections::HashMap<String, usize> =
        descriptors.descriptors.iter().map(|d| (d.name.clone(), d.label_keys.len())).collect();
    let metrics = runtime.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {}).await.unwrap().into_inner();
    let pod_metrics = metrics.pod_metrics.iter().find(|p| p.pod_sandbox_id == pod).expect("the pod's metrics");
    let burner_metrics = pod_metrics.container_metrics.iter().find(|c| c.container_id == burner).unwrap();
    let value = |name: &str| {
        let m = burner_metrics.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(described[name], m.label_values.len(), "{name}");
        counter(&m.value)
    };
    assert_eq!(value("container_spec_memory_limit_bytes"), 64 << 20);
    assert!(value("container_memory_working_set_bytes") > 0);
    assert!(value("container_memory_usage_bytes") > 0);
    value("container_cpu_usage_seconds_total");
    value("container_memory_rss");
    let received = pod_metrics.metrics.iter().find(|m| m.name == "container_network_receive_bytes_total");
    assert!(received.is_some(), "{:?}", pod_metrics.metrics);
    assert!(pod_metrics.container_metrics.iter().any(|c| c.container_id == idle));

    drop(containers);
    sandbox_support::remove(&stack, &pod).await.unwrap();
}
