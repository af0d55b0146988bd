//! Shared by the benchmarks (`bench-containers`, `bench-shims`, `bench-sandbox`,
//! `bench-streaming`): both runtimes set up side by side (crisp as the test kit's stack on its own containerd, containerd's CRI plugin
//! on its socket, one busybox image pulled by both from a private loopback registry), pods on
//! the node's network, `sleep` containers, and the host's view of a runtime's processes
//! (shims, pause processes, RSS and PSS).

#![allow(dead_code)]

use crisp_proto::cri::image_service_client::ImageServiceClient;
use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use crisp_proto::cri::*;
use crisp_testkit::Stack;
use crisp_testkit::images::{Format, ImageBuilder};
use crisp_testkit::registry::Registry;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;

/// Both runtimes, ready: the busybox image pulled by each.
pub struct Setup {
    pub registry: Registry,
    pub stack: Stack,
    /// The busybox image's reference, pulled by both runtimes.
    pub image: String,
    /// containerd's CRI plugin.
    pub containerd: RuntimeServiceClient<Channel>,
    /// The pid serving containerd's socket.
    pub containerd_pid: u32,
}

impl Setup {
    pub async fn start(containerd_socket: &Path) -> anyhow::Result<Setup> {
        let registry = Registry::start().await?;
        let built = ImageBuilder::new(Format::Oci).busybox_layer()?.cmd(&["sh"]).build()?;
        let image = registry.push("bench/busybox", "1", &built).await?;
        let stack = Stack::start().await?;
        let containerd_pid = socket_pid(containerd_socket).await?;
        let containerd_channel = crisp_testkit::cri_channel(containerd_socket);
        for mut images in [stack.image_client(), ImageServiceClient::new(containerd_channel.clone())] {
            let request = PullImageRequest {
                image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
                auth: None,
                sandbox_config: None,
            };
            images.pull_image(request).await?;
        }
        let containerd = RuntimeServiceClient::new(containerd_channel);
        Ok(Setup { registry, stack, image, containerd, containerd_pid })
    }
}

/// The pid of the process serving the unix socket at `socket`.
pub async fn socket_pid(socket: &Path) -> anyhow::Result<u32> {
    let peer = tokio::net::UnixStream::connect(socket).await?.peer_cred()?;
    Ok(peer.pid().ok_or_else(|| anyhow::anyhow!("no pid for {}", socket.display()))? as u32)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `percentile`th of `times` (nearest rank).
pub fn p(times: &[Duration], percentile: usize) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[((sorted.len() * percentile).div_ceil(100)).saturating_sub(1).min(sorted.len() - 1)]
}

/// A pod `bench-<tag>-<i>` on the node's network and UTS namespace (no CNI, no hostname of
/// its own), each container in its own PID namespace (crisp starts no pause process for it).
pub fn pod_config(tag: &str, i: usize) -> PodSandboxConfig {
    pod_config_on(tag, i, NamespaceMode::Node)
}

/// A pod `bench-<tag>-<i>` on the node's network ([`NamespaceMode::Node`]) or a network of its
/// own through CNI, with its name as hostname ([`NamespaceMode::Pod`]); each container in its own
/// PID namespace, as the kubelet asks for a pod without `shareProcessNamespace` (crisp starts no
/// pause process for it, containerd starts one regardless).
pub fn pod_config_on(tag: &str, i: usize, network: NamespaceMode) -> PodSandboxConfig {
    let name = format!("bench-{tag}-{i}");
    let log_directory = format!("/tmp/crisp-bench-logs/{name}");
    let _ = std::fs::create_dir_all(&log_directory);
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.clone(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: if network == NamespaceMode::Node { String::new() } else { name },
        log_directory,
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: network as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container `name` running `sleep 3600`.
pub fn container_config(image: &str, name: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), ..Default::default() }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

pub async fn run_pod(client: &mut RuntimeServiceClient<Channel>, tag: &str, i: usize) -> anyhow::Result<Pod> {
    run_pod_with(client, pod_config(tag, i)).await
}

pub async fn run_pod_with(client: &mut RuntimeServiceClient<Channel>, config: PodSandboxConfig) -> anyhow::Result<Pod> {
    let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
    Ok(Pod { id: client.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id, config })
}

pub async fn create(
    client: &mut RuntimeServiceClient<Channel>,
    pod: &Pod,
    config: ContainerConfig,
) -> anyhow::Result<String> {
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.id.clone(),
        config: Some(config),
        sandbox_config: Some(pod.config.clone()),
    };
    Ok(client.create_container(request).await?.into_inner().container_id)
}

/// Create then start.
pub async fn run_container(
    client: &mut RuntimeServiceClient<Channel>,
    pod: &Pod,
    config: ContainerConfig,
) -> anyhow::Result<String> {
    let id = create(client, pod, config).await?;
    client.start_container(StartContainerRequest { container_id: id.clone() }).await?;
    Ok(id)
}

/// Stop then remove.
pub async fn remove_pod(client: &mut RuntimeServiceClient<Channel>, pod: &Pod) -> anyhow::Result<()> {
    client.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    Ok(())
}

/// One process as /proc shows it.
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// `comm`: the executable's name, at most 15 bytes.
    pub comm: String,
    pub args: Vec<String>,
}

/// Every process on the host.
pub fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces and parentheses.
            let (head, tail) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let ppid = tail.split_whitespace().nth(1)?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some(Process { pid, ppid, comm, args })
        })
        .collect()
}

/// The `containerd-shim-runc-v2` processes serving `namespace` of the containerd at `address`.
pub fn shims_of(processes: &[Process], address: &Path, namespace: &str) -> Vec<u32> {
    let address = address.display().to_string();
    let flag = |args: &[String], name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
    processes
        .iter()
        .filter(|p| p.args.first().is_some_and(|a| a.ends_with("containerd-shim-runc-v2")))
        .filter(|p| flag(&p.args, "-address").as_deref() == Some(&*address))
        .filter(|p| flag(&p.args, "-namespace").as_deref() == Some(namespace))
        .map(|p| p.pid)
        .collect()
}

/// The pause processes (`pause`, crisp's `crisp-pause`) among the children of `shims`.
pub fn pause_processes(processes: &[Process], shims: &[u32]) -> Vec<u32> {
    let shims: HashSet<u32> = shims.iter().copied().collect();
    processes
        .iter()
        .filter(|p| shims.contains(&p.ppid) && (p.comm == "pause" || p.comm == "crisp-pause"))
        .map(|p| p.pid)
        .collect()
}

/// The pids of containerd's runc shims (`containerd-shim-runc-v2`) in namespace k8s.io.
pub fn k8s_shims() -> HashSet<u32> {
    processes()
        .into_iter()
        .filter(|p| {
            let cmd = p.args.join(" ");
            cmd.contains("containerd-shim") && cmd.contains("k8s.io")
        })
        .map(|p| p.pid)
        .collect()
}

/// A field (`VmRSS:` of `status`, `Pss:` of `smaps_rollup`) summed over `pids`, KiB.
fn sum_field(pids: &[u32], file: &str, field: &str) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok())
        .filter_map(|text| text.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// The summed RSS of `pids`, KiB.
pub fn rss(pids: &[u32]) -> u64 {
    sum_field(pids, "status", "VmRSS:")
}

/// The summed PSS of `pids` (pages shared by n processes count 1/n to each), KiB.
pub fn pss(pids: &[u32]) -> u64 {
    sum_field(pids, "smaps_rollup", "Pss:")
}
