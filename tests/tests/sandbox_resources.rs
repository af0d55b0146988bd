//! UpdatePodSandboxResources through the proxy: the pod's overhead plus its resources land in
//! its cgroup (a cgroup v1 parent the test makes, as the kubelet would), PodSandboxStatus's
//! verbose info reports them, an unknown pod is NOT_FOUND, bad amounts INVALID_ARGUMENT.

mod sandbox_support;

use crisp_proto::cri::*;
use crisp_testkit::Stack;
use sandbox_support::*;
use std::path::PathBuf;
use tonic::Code;

/// A pod cgroup in the cpu and memory hierarchies, removed when dropped.
struct PodCgroup {
    parent: String,
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    fn new() -> PodCgroup {
        let parent = format!("/crisp-resize-test-{}", std::process::id());
        let dirs: Vec<PathBuf> = ["cpu", "memory"]
            .iter()
            .map(|c| PathBuf::from("/sys/fs/cgroup").join(c).join(parent.trim_start_matches('/')))
            .collect();
        for dir in &dirs {
            std::fs::create_dir_all(dir).unwrap();
        }
        PodCgroup { parent, dirs }
    }

    fn read(&self, controller: usize, file: &str) -> String {
        std::fs::read_to_string(self.dirs[controller].join(file)).unwrap().trim().to_string()
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

async fn update(
    stack: &Stack,
    id: &str,
    overhead: Option<LinuxContainerResources>,
    resources: Option<LinuxContainerResources>,
) -> Result<(), tonic::Status> {
    stack
        .runtime_client()
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: id.into(),
            overhead,
            resources,
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn updated_resources_land_in_the_pods_cgroup_and_its_status() {
    if !std::path::Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
        eprintln!("skipped: this test makes cgroup v1 pod cgroups");
        return;
    }
    let stack = Stack::start().await.unwrap();
    let _network = write_network(&stack, "resize", 23, &[]);
    let cgroup = PodCgroup::new();
    let mut config = pod_config("web", "uid-resize");
    config.linux = Some(LinuxPodSandboxConfig { cgroup_parent: cgroup.parent.clone(), ..Default::default() });
    let id = run(&stack, config).await.unwrap();

    let overhead = LinuxContainerResources { cpu_shares: 24, memory_limit_in_bytes: 16 << 20, ..Default::default() };
    let resources = LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 256 << 20,
        ..Default::default()
    };
    update(&stack, &id, Some(overhead.clone()), Some(resources.clone())).await.unwrap();
    assert_eq!(cgroup.read(0, "cpu.shares"), "536");
    assert_eq!(cgroup.read(0, "cpu.cfs_period_us"), "100000");
    assert_eq!(cgroup.read(0, "cpu.cfs_quota_us"), "50000");
    assert_eq!(cgroup.read(1, "memory.limit_in_bytes"), ((256 + 16) << 20).to_string());

    let info = status(&stack, &id).await.unwrap().info["info"].clone();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["sandbox"]["resources"]["cpu_quota"], 50_000);
    assert_eq!(info["sandbox"]["overhead"]["memory_limit_in_bytes"], 16 << 20);

    // A resize up, then the limits taken off.
    update(&stack, &id, Some(overhead.clone()), Some(LinuxContainerResources { cpu_quota: 200_000, ..resources }))
        .await
        .unwrap();
    assert_eq!(cgroup.read(0, "cpu.cfs_quota_us"), "200000");
    update(&stack, &id, None, Some(LinuxContainerResources { cpu_shares: 2, ..Default::default() })).await.unwrap();
    assert_eq!(cgroup.read(0, "cpu.cfs_quota_us"), "-1");
    assert_eq!(cgroup.read(0, "cpu.shares"), "2");
    assert!(cgroup.read(1, "memory.limit_in_bytes").parse::<u64>().unwrap() > 1 << 40);

    let err = update(&stack, "no-such-pod", None, Some(LinuxContainerResources::default())).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err =
        update(&stack, &id, None, Some(LinuxContainerResources { memory_limit_in_bytes: -1, ..Default::default() }))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("resources.memory_limit_in_bytes"), "{}", err.message());

    // A pod without a cgroup parent records them only.
    let plain = run(&stack, pod_config("db", "uid-resize-db")).await.unwrap();
    update(&stack, &plain, None, Some(LinuxContainerResources { cpu_shares: 100, ..Default::default() }))
        .await
        .unwrap();
    let info = status(&stack, &plain).await.unwrap().info["info"].clone();
    assert!(info.contains("\"cpu_shares\":100"), "{info}");

    for pod in [&id, &plain] {
        stop(&stack, pod).await.unwrap();
        remove(&stack, pod).await.unwrap();
    }
}
