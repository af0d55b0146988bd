//! The configuration model: one section per concern, each field with its built-in default.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration, as read from `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub containerd: ContainerdConfig,
    pub proxy: ProxyConfig,
    pub image: ImageConfig,
    pub runtime: RuntimeConfig,
    pub streaming: StreamingConfig,
    pub telemetry: TelemetryConfig,
}

/// How every service reaches containerd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// The containerd namespace crisp keeps its images, containers and tasks in. Distinct from
    /// `k8s.io` so that crisp never collides with containerd's own CRI plugin.
    pub namespace: String,
    /// How long a service waits for containerd to answer at start before it gives up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        Self {
            address: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "crisp".into(),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// The front proxy: the CRI socket the kubelet dials and the backends behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// The CRI socket (the kubelet's `containerRuntimeEndpoint`).
    pub socket: PathBuf,
    /// A second socket serving only the ImageService (the kubelet's `imageServiceEndpoint`).
    pub image_socket: Option<PathBuf>,
    /// Permission bits of the proxy's sockets, as an octal string.
    pub socket_mode: String,
    /// The runtime service's socket.
    pub runtime_endpoint: PathBuf,
    /// The streaming server's socket.
    pub streaming_endpoint: PathBuf,
    /// The image service replicas' sockets; calls are spread over the healthy ones.
    pub image_endpoints: Vec<PathBuf>,
    /// How often each backend's gRPC health is checked.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// How long the proxy waits to connect to a backend before answering `UNAVAILABLE`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Where the proxy serves Prometheus metrics; none serves none.
    pub metrics_address: Option<MetricsAddress>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/crisp/crisp.sock"),
            image_socket: None,
            socket_mode: "0660".into(),
            runtime_endpoint: PathBuf::from("/run/crisp/runtime.sock"),
            streaming_endpoint: PathBuf::from("/run/crisp/streaming.sock"),
            image_endpoints: vec![PathBuf::from("/run/crisp/image.sock")],
            health_check_interval: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            metrics_address: None,
        }
    }
}

/// crisp's own sandbox image: its pause binary, as one layer, made by the runtime service.
/// `localhost/` is a registry no one pulls from (as podman names local images); the tag is
/// crisp's version.
pub const CRISP_SANDBOX_IMAGE: &str = concat!("localhost/crisp/pause:", env!("CARGO_PKG_VERSION"));

/// The image service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// The socket this image service replica listens on.
    pub socket: PathBuf,
    /// The containerd snapshotter layers are unpacked into.
    pub snapshotter: String,
    /// Registry host configuration in containerd's `config_path` layout
    /// (`<dir>/<host>/hosts.toml`).
    pub registry_config_path: Option<PathBuf>,
    /// How many layers one pull downloads at once.
    pub max_concurrent_downloads: usize,
    /// How many layer downloads the node has in flight at once, across all pulls (and split
    /// evenly over the image service replicas); pulls beyond it queue in arrival order.
    /// None: three times `max_concurrent_downloads`.
    pub max_downloads_in_flight: Option<usize>,
    /// A pull that makes no progress for this long fails.
    #[serde(with = "humantime_serde")]
    pub pull_progress_timeout: Duration,
    /// The pod sandbox (pause) image; it is pinned. crisp's own ([`CRISP_SANDBOX_IMAGE`]) is
    /// written into containerd by the runtime service from `runtime.pause_binary` (no
    /// registry); any other is pulled through the image service.
    pub sandbox_image: String,
    /// Where this replica serves Prometheus metrics; none serves none.
    pub metrics_address: Option<MetricsAddress>,
}

impl ImageConfig {
    /// The node-wide bound on layer downloads in flight (`max_downloads_in_flight`, by default
    /// three times the per-pull bound).
    pub fn downloads_in_flight(&self) -> usize {
        self.max_downloads_in_flight.unwrap_or(self.max_concurrent_downloads.saturating_mul(3)).max(1)
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/crisp/image.sock"),
            snapshotter: "overlayfs".into(),
            registry_config_path: None,
            max_concurrent_downloads: 3,
            max_downloads_in_flight: None,
            pull_progress_timeout: Duration::from_secs(5 * 60),
            sandbox_image: CRISP_SANDBOX_IMAGE.into(),
            metrics_address: None,
        }
    }
}

/// The runtime service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The socket the runtime service listens on.
    pub socket: PathBuf,
    /// Where crisp keeps files it owns that must survive a reboot.
    pub root_dir: PathBuf,
    /// Where crisp keeps files it owns that live until the next reboot.
    pub state_dir: PathBuf,
    /// Directories searched for CNI plugin binaries, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The directory holding CNI network configurations; the first in lexical order is used.
    pub cni_conf_dir: PathBuf,
    /// The OCI runtime containerd runs containers with.
    pub runtime_type: String,
    /// When a pod gets an infra (pause) process.
    pub infra_container: InfraContainer,
    /// crisp's static pause binary, the content of crisp's own sandbox image.
    pub pause_binary: PathBuf,
    /// Where the runtime service serves Prometheus metrics; none serves none.
    pub metrics_address: Option<MetricsAddress>,
    /// A container's log line longer than this many bytes is split into partial lines (`P`);
    /// -1: never split (containerd's `max_container_log_line_size`).
    pub max_container_log_line_size: i64,
}

impl RuntimeConfig {
    /// `max_container_log_line_size` as the longest line a log writer writes whole (`None`: no limit).
    pub fn max_log_line_bytes(&self) -> Option<usize> {
        usize::try_from(self.max_container_log_line_size).ok().filter(|n| *n > 0)
    }
}

/// When a pod gets an infra (pause) process: only where its containers share one PID
/// namespace (`when-needed`, as CRI-O's `drop_infra_ctr`), or for every pod (`always`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InfraContainer {
    #[default]
    WhenNeeded,
    Always,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/crisp/runtime.sock"),
            root_dir: PathBuf::from("/var/lib/crisp"),
            state_dir: PathBuf::from("/run/crisp/state"),
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            runtime_type: "io.containerd.runc.v2".into(),
            infra_container: InfraContainer::WhenNeeded,
            pause_binary: PathBuf::from("/usr/local/libexec/crisp/crisp-pause"),
            metrics_address: None,
            max_container_log_line_size: 16 * 1024,
        }
    }
}

/// The streaming server (Exec, Attach, PortForward).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// The socket the streaming server's gRPC side listens on.
    pub socket: PathBuf,
    /// The address the HTTP streaming endpoint listens on.
    pub address: String,
    /// The port of the HTTP streaming endpoint; 0 picks a free one.
    pub port: u16,
    /// How long a URL answered by Exec, Attach or PortForward stays usable (once).
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// URLs answered and not yet used at most; past this the RPCs answer RESOURCE_EXHAUSTED.
    pub max_tokens: usize,
    /// A stream session with no traffic either way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// How long the client has to open the streams of a session after the upgrade.
    #[serde(with = "humantime_serde")]
    pub stream_creation_timeout: Duration,
    /// Serve the streaming endpoint over TLS with this certificate (PEM, chain first) and key;
    /// both or neither. The URLs are then `https://`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Where the streaming server serves Prometheus metrics; none serves none.
    pub metrics_address: Option<MetricsAddress>,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/crisp/streaming.sock"),
            address: "127.0.0.1".into(),
            port: 0,
            token_ttl: Duration::from_secs(60),
            max_tokens: 1000,
            stream_idle_timeout: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
            tls_cert_file: None,
            tls_key_file: None,
            metrics_address: None,
        }
    }
}

/// Logs and traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` or `json`, written to stderr.
    pub log_format: LogFormat,
    /// A `tracing` filter: a level (`info`) or directives (`info,crisp_proxy=debug`).
    pub log_level: String,
    /// An OTLP/gRPC collector (`http://host:4317`) to export spans to; none exports nothing.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { log_format: LogFormat::Text, log_level: "info".into(), otlp_endpoint: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The TCP address a service serves its Prometheus metrics on: `host:port` (`127.0.0.1:9310`,
/// `[::1]:9310`, `0.0.0.0:9310` to be scraped from other machines), or a port alone (`9310` or
/// `:9310`), which is loopback (`127.0.0.1`): metrics leave the node only when an address says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MetricsAddress(pub SocketAddr);

impl std::str::FromStr for MetricsAddress {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(address) = text.parse::<SocketAddr>() {
            return Ok(MetricsAddress(address));
        }
        match text.strip_prefix(':').unwrap_or(text).parse::<u16>() {
            Ok(port) => Ok(MetricsAddress(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))),
            Err(_) => Err(format!("`{text}` is not an address like 127.0.0.1:9310, [::1]:9310 or a port alone")),
        }
    }
}

impl TryFrom<String> for MetricsAddress {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<MetricsAddress> for String {
    fn from(address: MetricsAddress) -> String {
        address.0.to_string()
    }
}

impl From<MetricsAddress> for SocketAddr {
    fn from(address: MetricsAddress) -> SocketAddr {
        address.0
    }
}
