//! Shared by the pod sandbox tests: a CNI network of the test's own (bridge, subnet and
//! host-local store apart from the node's 10.88.0.0/16 and from other tests), pod configs,
//! and what the host sees of a pod (its mounts, its namespaces, its IP allocations).

#![allow(dead_code)]

use crisp_proto::cri::*;
use crisp_testkit::Stack;
use std::path::{Path, PathBuf};

/// A test's network: its host-local store; the bridge is deleted from the host when dropped
/// (the bridge plugin leaves it, as on a node).
pub struct TestNetwork {
    pub store: PathBuf,
    bridge: String,
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

/// A bridge network `crisp-<tag>` on `10.201.<octet>.0/24` in the stack's CNI directory,
/// followed by `extra` plugins (JSON objects). The host-local store is in the stack's dir.
pub fn write_network(stack: &Stack, tag: &str, octet: u8, extra: &[&str]) -> TestNetwork {
    let store = stack.dir().join("ipam");
    let mut plugins = vec![format!(
        r#"{{"type":"bridge","bridge":"crisp-{tag}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.201.{octet}.0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#,
        store.display()
    )];
    plugins.extend(extra.iter().map(|p| p.to_string()));
    std::fs::write(
        stack.dir().join("cni").join("10-test.conflist"),
        format!(r#"{{"cniVersion":"1.0.0","name":"test-{tag}","plugins":[{}]}}"#, plugins.join(",")),
    )
    .unwrap();
    TestNetwork { store: store.join(format!("test-{tag}")), bridge: format!("crisp-{tag}") }
}

/// A pod as the kubelet sends one without `shareProcessNamespace`: the pod's network and IPC,
/// a PID namespace per container (so no infra process).
pub fn pod_config(name: &str, uid: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: [("app".to_string(), name.to_string())].into(),
        annotations: [("note".to_string(), "made by a test".to_string())].into(),
        ..Default::default()
    }
}

pub async fn run(stack: &Stack, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    stack
        .runtime_client()
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

pub async fn status(stack: &Stack, id: &str) -> Result<PodSandboxStatusResponse, tonic::Status> {
    stack
        .runtime_client()
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true })
        .await
        .map(|r| r.into_inner())
}

pub async fn list(stack: &Stack, filter: Option<PodSandboxFilter>) -> Vec<PodSandbox> {
    stack.runtime_client().list_pod_sandbox(ListPodSandboxRequest { filter }).await.unwrap().into_inner().items
}

pub async fn stop(stack: &Stack, id: &str) -> Result<(), tonic::Status> {
    stack.runtime_client().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.into() }).await.map(|_| ())
}

pub async fn remove(stack: &Stack, id: &str) -> Result<(), tonic::Status> {
    stack.runtime_client().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await.map(|_| ())
}

/// The pod's directory, where its namespaces are pinned.
pub fn pod_dir(stack: &Stack, id: &str) -> PathBuf {
    stack.dir().join("run").join("pods").join(id)
}

/// The mount points in this (the host's) mount namespace under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .filter(|mount_point| mount_point.starts_with(&prefix))
        .collect()
}

/// IPs host-local holds in `store` (its files named by address).
pub fn allocated_ips(store: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(store) else { return vec![] };
    let mut ips: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
        .collect();
    ips.sort();
    ips
}

/// `cmd` run in the namespace pinned at `pin` (`--net=`, `--uts=`...), its stdout.
pub fn in_namespace(flag: &str, pin: &Path, cmd: &[&str]) -> String {
    let output =
        std::process::Command::new("nsenter").arg(format!("--{flag}={}", pin.display())).args(cmd).output().unwrap();
    assert!(output.status.success(), "nsenter {flag} {cmd:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}
