//! containerd, the crisp services and the proxy, started as a node runs them.

use crate::{ContainerdProcess, ServiceProcess, bin_dir, cri_channel};
use anyhow::{Context, bail};
use crisp_proto::cri::image_service_client::ImageServiceClient;
use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a service may take to serve its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// How many image service replicas the proxy spreads image calls over.
    pub image_replicas: usize,
    /// Serve the ImageService alone on a second proxy socket too.
    pub proxy_image_socket: bool,
    /// Environment given to every crisp service (each config field has a `CRISP_*` variable).
    pub env: Vec<(String, String)>,
    /// Lines appended to the generated config file.
    pub extra_config: String,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self { image_replicas: 1, proxy_image_socket: false, env: vec![], extra_config: String::new() }
    }
}

/// A running node stack. Dropping it stops everything and removes its directory.
pub struct Stack {
    // Field order is drop order: the services go before containerd, the directory last.
    services: Services,
    containerd: ContainerdProcess,
    config: PathBuf,
    proxy_socket: PathBuf,
    proxy_image_socket: Option<PathBuf>,
    /// After the services stop, before the directory goes: mounts the runtime service made in
    /// it (pod namespace pins, `/dev/shm`) and a failed test left.
    _mounts: UnmountUnder,
    dir: tempfile::TempDir,
}

/// Unmounts (lazily) every mount point under its directory when dropped.
struct UnmountUnder(PathBuf);

impl Drop for UnmountUnder {
    fn drop(&mut self) {
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
        let mut points: Vec<&str> = mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| Path::new(point).starts_with(&self.0))
            .collect();
        // Deepest first.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Stack {
    /// The default stack: one image service replica.
    pub async fn start() -> anyhow::Result<Stack> {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> anyhow::Result<Stack> {
        // Short paths: unix socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new().prefix("crisp-").tempdir_in("/tmp")?;
        let path = dir.path();
        let containerd = ContainerdProcess::start(&path.join("containerd")).await?;
        std::fs::create_dir_all(path.join("cni"))?;

        let proxy_socket = path.join("crisp.sock");
        let proxy_image_socket = options.proxy_image_socket.then(|| path.join("crisp-image.sock"));
        let image_sockets: Vec<PathBuf> =
            (0..options.image_replicas.max(1)).map(|i| path.join(format!("image-{i}.sock"))).collect();
        let config = path.join("config.toml");
        let mut settings = crisp_config::Config::default();
        settings.containerd.address = containerd.address().to_path_buf();
        settings.containerd.namespace = "crisp".into();
        settings.containerd.connect_timeout = Duration::from_secs(20);
        settings.proxy.socket = proxy_socket.clone();
        settings.proxy.image_socket = proxy_image_socket.clone();
        settings.proxy.runtime_endpoint = path.join("runtime.sock");
        settings.proxy.streaming_endpoint = path.join("streaming.sock");
        settings.proxy.image_endpoints = image_sockets.clone();
        settings.proxy.health_check_interval = Duration::from_millis(200);
        settings.runtime.socket = path.join("runtime.sock");
        settings.runtime.root_dir = path.join("lib");
        settings.runtime.state_dir = path.join("run");
        settings.runtime.cni_conf_dir = path.join("cni");
        settings.runtime.pause_binary = crate::pause_binary()?;
        settings.streaming.socket = path.join("streaming.sock");
        settings.telemetry.log_level =
            "info,crisp_proxy=debug,crisp_runtime=debug,crisp_image=debug,crisp_streaming=debug".into();
        std::fs::write(&config, config_file(&settings, &options.extra_config)?).context("writing crisp's config")?;

        let bins = bin_dir()?;
        let mut plan: Vec<(String, String, Vec<String>, PathBuf)> = vec![
            ("runtime".into(), "crisp-runtime".into(), vec![], path.join("runtime.sock")),
            ("streaming".into(), "crisp-streaming".into(), vec![], path.join("streaming.sock")),
        ];
        for (i, socket) in image_sockets.iter().enumerate() {
            plan.push((
                format!("image-{i}"),
                "crisp-image".into(),
                vec!["--image-socket".into(), socket.display().to_string()],
                socket.clone(),
            ));
        }
        plan.push(("proxy".into(), "crisp-proxy".into(), vec![], proxy_socket.clone()));

        // The backends first, each serving before the proxy starts: the proxy's first health
        // check then finds every image replica up, as on a node where they started first.
        let mut services: Vec<(ServiceProcess, PathBuf)> = Vec::new();
        for (name, binary, args, socket) in plan {
            if name == "proxy" {
                for (process, socket) in &mut services {
                    process.wait_for_socket(socket, START_TIMEOUT).await?;
                }
            }
            let program = bins.join(&binary);
            if !program.is_file() {
                bail!("{} is not built (cargo build --workspace --bins)", program.display());
            }
            let mut command = vec![program.display().to_string(), "--config".into(), config.display().to_string()];
            command.extend(args);
            let process =
                ServiceProcess::spawn(&name, command, options.env.clone(), &path.join(format!("{name}.log")))?;
            services.push((process, socket));
        }
        for (process, socket) in &mut services {
            process.wait_for_socket(socket, START_TIMEOUT).await?;
        }
        Ok(Stack {
            services: Services(services),
            containerd,
            config,
            proxy_socket,
            proxy_image_socket,
            _mounts: UnmountUnder(path.to_path_buf()),
            dir,
        })
    }

    /// The CRI socket, as the kubelet dials it.
    pub fn proxy_socket(&self) -> &Path {
        &self.proxy_socket
    }

    /// The proxy's ImageService-only socket, when started with one.
    pub fn proxy_image_socket(&self) -> Option<&Path> {
        self.proxy_image_socket.as_deref()
    }

    /// The generated config file every service was started with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn containerd(&self) -> &ContainerdProcess {
        &self.containerd
    }

    pub fn containerd_mut(&mut self) -> &mut ContainerdProcess {
        &mut self.containerd
    }

    pub fn containerd_address(&self) -> &Path {
        self.containerd.address()
    }

    /// The containerd namespace crisp uses here.
    pub fn namespace(&self) -> &str {
        "crisp"
    }

    /// `ctr` against this stack's containerd in crisp's namespace.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        self.containerd.ctr_in(self.namespace(), args)
    }

    pub fn runtime_client(&self) -> RuntimeServiceClient<tonic::transport::Channel> {
        RuntimeServiceClient::new(cri_channel(&self.proxy_socket))
    }

    pub fn image_client(&self) -> ImageServiceClient<tonic::transport::Channel> {
        ImageServiceClient::new(cri_channel(&self.proxy_socket))
    }

    fn service(&mut self, name: &str) -> anyhow::Result<&mut (ServiceProcess, PathBuf)> {
        self.services
            .0
            .iter_mut()
            .find(|(p, _)| p.name() == name)
            .ok_or_else(|| anyhow::anyhow!("no service {name} (proxy, runtime, streaming, image-N)"))
    }

    /// Kills a service at once (`proxy`, `runtime`, `streaming`, `image-0`, ...), as a crash would.
    pub fn kill_service(&mut self, name: &str) -> anyhow::Result<()> {
        self.service(name)?.0.kill();
        Ok(())
    }

    /// Starts a killed service again and waits until it serves.
    pub async fn start_service(&mut self, name: &str) -> anyhow::Result<()> {
        let (process, socket) = self.service(name)?;
        process.start()?;
        let socket = socket.clone();
        process.wait_for_socket(&socket, START_TIMEOUT).await
    }

    /// The log a service wrote so far.
    pub fn service_log(&mut self, name: &str) -> anyhow::Result<String> {
        let path = self.service(name)?.0.log_path().to_path_buf();
        Ok(std::fs::read_to_string(path)?)
    }

    /// The pid of a running service.
    pub fn service_pid(&mut self, name: &str) -> anyhow::Result<u32> {
        self.service(name)?.0.pid().ok_or_else(|| anyhow::anyhow!("{name} is not running"))
    }
}

/// `config` as a TOML file, with the tables and fields of `extra` (TOML, e.g. a test's
/// `[image]` section) laid over it.
fn config_file(config: &crisp_config::Config, extra: &str) -> anyhow::Result<String> {
    let mut file = toml::Table::try_from(config).context("serialising crisp's config")?;
    let extra: toml::Table = extra.parse().context("the extra config is not TOML")?;
    merge(&mut file, extra);
    Ok(toml::to_string(&file)?)
}

/// Lays `over` onto `base`: tables merge field by field, anything else is replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The services, stopped in the reverse of their start order: the proxy first, so that no
/// backend waits on the proxy's connection to it.
struct Services(Vec<(ServiceProcess, PathBuf)>);

impl Drop for Services {
    fn drop(&mut self) {
        while let Some((mut process, _)) = self.0.pop() {
            // The proxy keeps nothing, and its graceful HTTP/2 shutdown waits for the test's
            // clients to acknowledge it, which they cannot while the test is blocked here.
            let grace = if process.name() == "proxy" { Duration::from_millis(300) } else { Duration::from_secs(5) };
            process.stop(grace);
        }
    }
}
