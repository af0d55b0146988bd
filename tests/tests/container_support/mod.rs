//! Shared by the container tests: a node (a [`Stack`] and a private registry holding busybox
//! images, already pulled), pods on the node's network (no CNI needed) with their logs in the
//! stack's directory, container configs, and the CRI calls a test makes on containers, as
//! the kubelet makes them through the proxy.
//!
//! ```ignore
//! mod container_support;
//! let node = container_support::Node::start().await?;
//! let pod = node.pod("web").await?;
//! let id = node.run(&pod, node.config("app", &["sh", "-c", "echo hi"])).await?;
//! let status = node.wait_exited(&id).await?;
//! ```

#![allow(dead_code)]

use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use crisp_proto::cri::*;
use crisp_testkit::images::{BuiltImage, Format, ImageBuilder};
use crisp_testkit::registry::Registry;
use crisp_testkit::{Stack, StackOptions};
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;

/// A running node with the busybox image pulled.
pub struct Node {
    pub stack: Stack,
    pub registry: Registry,
    /// The busybox image's reference (`127.0.0.1:port/test/busybox:1`), pulled.
    pub image: String,
    /// Its id (`sha256:<config digest>`).
    pub image_id: String,
    pub built: BuiltImage,
}

/// A pod made by [`Node::pod`]: its id and the config it was run with (CreateContainer needs both).
#[derive(Clone)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

impl Node {
    pub async fn start() -> anyhow::Result<Node> {
        Node::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> anyhow::Result<Node> {
        let registry = Registry::start().await?;
        let stack = Stack::start_with(options).await?;
        let built = ImageBuilder::new(Format::Oci).busybox_layer()?.cmd(&["sh"]).build()?;
        let image = registry.push("test/busybox", "1", &built).await?;
        let node = Node { stack, registry, image_id: built.id(), image, built };
        node.pull(&node.image.clone()).await?;
        Ok(node)
    }

    /// Pushes `built` as `test/<repo>:1` and pulls it; answers its reference.
    pub async fn add_image(&self, repo: &str, built: &BuiltImage) -> anyhow::Result<String> {
        let image = self.registry.push(&format!("test/{repo}"), "1", built).await?;
        self.pull(&image).await?;
        Ok(image)
    }

    async fn pull(&self, image: &str) -> anyhow::Result<()> {
        let request = PullImageRequest {
            image: Some(ImageSpec { image: image.to_string(), ..Default::default() }),
            auth: None,
            sandbox_config: None,
        };
        self.stack.image_client().pull_image(request).await?;
        Ok(())
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.stack.runtime_client()
    }

    /// Where pods' logs go: `<stack dir>/logs/<pod name>`.
    pub fn log_dir(&self, pod_name: &str) -> PathBuf {
        self.stack.dir().join("logs").join(pod_name)
    }

    /// The config of a pod `name` on the node's network (no CNI), its logs under [`Node::log_dir`].
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let log_dir = self.log_dir(name);
        let _ = std::fs::create_dir_all(&log_dir);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.display().to_string(),
            labels: [("app".to_string(), name.to_string())].into(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
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

    /// Runs a pod `name` (see [`Node::pod_config`]).
    pub async fn pod(&self, name: &str) -> anyhow::Result<Pod> {
        self.pod_with(self.pod_config(name)).await
    }

    pub async fn pod_with(&self, config: PodSandboxConfig) -> anyhow::Result<Pod> {
        let id = self
            .runtime()
            .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
            .await?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod { id, config })
    }

    /// A container `name` running `command` in the busybox image, logging to `<name>.log`.
    pub fn config(&self, name: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: self.image.clone(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            labels: [("container".to_string(), name.to_string())].into(),
            annotations: [("note".to_string(), format!("{name} made by a test"))].into(),
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    pub async fn create(&self, pod: &Pod, config: ContainerConfig) -> Result<String, tonic::Status> {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        Ok(self.runtime().create_container(request).await?.into_inner().container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        self.runtime().start_container(StartContainerRequest { container_id: id.into() }).await.map(|_| ())
    }

    /// Create then start.
    pub async fn run(&self, pod: &Pod, config: ContainerConfig) -> anyhow::Result<String> {
        let id = self.create(pod, config).await?;
        self.start_container(&id).await?;
        Ok(id)
    }

    pub async fn stop(&self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        self.runtime().stop_container(StopContainerRequest { container_id: id.into(), timeout }).await.map(|_| ())
    }

    pub async fn remove(&self, id: &str) -> Result<(), tonic::Status> {
        self.runtime().remove_container(RemoveContainerRequest { container_id: id.into() }).await.map(|_| ())
    }

    pub async fn status_verbose(&self, id: &str) -> Result<ContainerStatusResponse, tonic::Status> {
        let request = ContainerStatusRequest { container_id: id.into(), verbose: true };
        Ok(self.runtime().container_status(request).await?.into_inner())
    }

    pub async fn status(&self, id: &str) -> Result<ContainerStatus, tonic::Status> {
        let request = ContainerStatusRequest { container_id: id.into(), verbose: false };
        self.runtime()
            .container_status(request)
            .await?
            .into_inner()
            .status
            .ok_or_else(|| tonic::Status::internal("no status in the answer"))
    }

    pub async fn list(&self, filter: Option<ContainerFilter>) -> Result<Vec<Container>, tonic::Status> {
        Ok(self.runtime().list_containers(ListContainersRequest { filter }).await?.into_inner().containers)
    }

    /// Polls ContainerStatus (every 50 ms, up to 20 s) until the container has exited.
    pub async fn wait_exited(&self, id: &str) -> anyhow::Result<ContainerStatus> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status(id).await?;
            if status.state == ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("container {id} did not exit within 20 s: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The container's log file (CRI format), or "" when not written yet.
    pub fn log(&self, pod: &Pod, config: &ContainerConfig) -> String {
        let dir = PathBuf::from(&pod.config.log_directory);
        std::fs::read_to_string(dir.join(&config.log_path)).unwrap_or_default()
    }
}

/// The pids of `containerd-shim-runc-v2` processes whose command line names `address`
/// (the stack's containerd), read from /proc. A shim's own child between its fork and its
/// `exec` of runc (a task being deleted as the test looks) carries the shim's command line
/// too: it is not a shim, and left out.
pub fn shim_pids(address: &std::path::Path) -> Vec<u32> {
    let address = address.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            args.first().is_some_and(|a| a.ends_with("containerd-shim-runc-v2")) && args.contains(&address)
        })
        .collect();
    let parent = |pid: &u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`: the comm may hold spaces, the fields after it do not.
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    let forked: Vec<u32> = pids.iter().filter(|pid| parent(pid).is_some_and(|p| pids.contains(&p))).copied().collect();
    pids.retain(|pid| !forked.contains(pid));
    pids.sort();
    pids
}

/// Deletes a container's task (forced) when dropped: its shim would outlive the test's
/// containerd. A test that leaves a container running holds one.
pub struct TaskCleanup {
    address: PathBuf,
    namespace: String,
    id: String,
}

impl Drop for TaskCleanup {
    fn drop(&mut self) {
        let address = self.address.display().to_string();
        let _ = std::process::Command::new("ctr")
            .args(["--address", &address, "--namespace", &self.namespace, "task", "delete", "--force", &self.id])
            .output();
    }
}

impl Node {
    /// A guard that deletes the task of container `id` when dropped.
    pub fn task_cleanup(&self, id: &str) -> TaskCleanup {
        TaskCleanup {
            address: self.stack.containerd_address().to_path_buf(),
            namespace: self.stack.namespace().to_string(),
            id: id.to_string(),
        }
    }

    /// Create then start, with the guard that deletes the container's task.
    pub async fn run_guarded(&self, pod: &Pod, config: ContainerConfig) -> anyhow::Result<(String, TaskCleanup)> {
        let id = self.run(pod, config).await?;
        let cleanup = self.task_cleanup(&id);
        Ok((id, cleanup))
    }
}
