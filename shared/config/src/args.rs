//! Command-line flags and environment variables: one for every field of the file.

use crate::{Config, InfraContainer, LogFormat, MetricsAddress};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 500ms, 5s or 5m: {e}"))
}

/// Flags every crisp binary accepts. Each overrides the config file field named in its help.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// The config file (default /etc/crisp/config.toml, used only when it exists).
    #[arg(long, env = "CRISP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// containerd.address
    #[arg(long, env = "CRISP_CONTAINERD_ADDRESS", value_name = "SOCKET")]
    pub containerd_address: Option<PathBuf>,
    /// containerd.namespace
    #[arg(long, env = "CRISP_CONTAINERD_NAMESPACE", value_name = "NAME")]
    pub containerd_namespace: Option<String>,
    /// containerd.connect_timeout
    #[arg(long, env = "CRISP_CONTAINERD_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub containerd_connect_timeout: Option<Duration>,

    /// proxy.socket
    #[arg(long, env = "CRISP_PROXY_SOCKET", value_name = "SOCKET")]
    pub proxy_socket: Option<PathBuf>,
    /// proxy.image_socket
    #[arg(long, env = "CRISP_PROXY_IMAGE_SOCKET", value_name = "SOCKET")]
    pub proxy_image_socket: Option<PathBuf>,
    /// proxy.socket_mode
    #[arg(long, env = "CRISP_PROXY_SOCKET_MODE", value_name = "OCTAL")]
    pub proxy_socket_mode: Option<String>,
    /// proxy.runtime_endpoint
    #[arg(long, env = "CRISP_PROXY_RUNTIME_ENDPOINT", value_name = "SOCKET")]
    pub proxy_runtime_endpoint: Option<PathBuf>,
    /// proxy.streaming_endpoint
    #[arg(long, env = "CRISP_PROXY_STREAMING_ENDPOINT", value_name = "SOCKET")]
    pub proxy_streaming_endpoint: Option<PathBuf>,
    /// proxy.image_endpoints (comma-separated)
    #[arg(long, env = "CRISP_PROXY_IMAGE_ENDPOINTS", value_name = "SOCKET,...", value_delimiter = ',')]
    pub proxy_image_endpoints: Option<Vec<PathBuf>>,
    /// proxy.health_check_interval
    #[arg(long, env = "CRISP_PROXY_HEALTH_CHECK_INTERVAL", value_name = "DURATION", value_parser = duration)]
    pub proxy_health_check_interval: Option<Duration>,
    /// proxy.connect_timeout
    #[arg(long, env = "CRISP_PROXY_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub proxy_connect_timeout: Option<Duration>,
    /// proxy.metrics_address
    #[arg(long, env = "CRISP_PROXY_METRICS_ADDRESS", value_name = "ADDR")]
    pub proxy_metrics_address: Option<MetricsAddress>,

    /// image.socket
    #[arg(long, env = "CRISP_IMAGE_SOCKET", value_name = "SOCKET")]
    pub image_socket: Option<PathBuf>,
    /// image.snapshotter
    #[arg(long, env = "CRISP_IMAGE_SNAPSHOTTER", value_name = "NAME")]
    pub image_snapshotter: Option<String>,
    /// image.registry_config_path
    #[arg(long, env = "CRISP_IMAGE_REGISTRY_CONFIG_PATH", value_name = "DIR")]
    pub image_registry_config_path: Option<PathBuf>,
    /// image.max_concurrent_downloads
    #[arg(long, env = "CRISP_IMAGE_MAX_CONCURRENT_DOWNLOADS", value_name = "N")]
    pub image_max_concurrent_downloads: Option<usize>,
    /// image.max_downloads_in_flight
    #[arg(long, env = "CRISP_IMAGE_MAX_DOWNLOADS_IN_FLIGHT", value_name = "N")]
    pub image_max_downloads_in_flight: Option<usize>,
    /// image.pull_progress_timeout
    #[arg(long, env = "CRISP_IMAGE_PULL_PROGRESS_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub image_pull_progress_timeout: Option<Duration>,
    /// image.sandbox_image
    #[arg(long, env = "CRISP_IMAGE_SANDBOX_IMAGE", value_name = "REF")]
    pub image_sandbox_image: Option<String>,
    /// image.metrics_address
    #[arg(long, env = "CRISP_IMAGE_METRICS_ADDRESS", value_name = "ADDR")]
    pub image_metrics_address: Option<MetricsAddress>,

    /// runtime.socket
    #[arg(long, env = "CRISP_RUNTIME_SOCKET", value_name = "SOCKET")]
    pub runtime_socket: Option<PathBuf>,
    /// runtime.root_dir
    #[arg(long, env = "CRISP_RUNTIME_ROOT_DIR", value_name = "DIR")]
    pub runtime_root_dir: Option<PathBuf>,
    /// runtime.state_dir
    #[arg(long, env = "CRISP_RUNTIME_STATE_DIR", value_name = "DIR")]
    pub runtime_state_dir: Option<PathBuf>,
    /// runtime.cni_bin_dirs (comma-separated)
    #[arg(long, env = "CRISP_RUNTIME_CNI_BIN_DIRS", value_name = "DIR,...", value_delimiter = ',')]
    pub runtime_cni_bin_dirs: Option<Vec<PathBuf>>,
    /// runtime.cni_conf_dir
    #[arg(long, env = "CRISP_RUNTIME_CNI_CONF_DIR", value_name = "DIR")]
    pub runtime_cni_conf_dir: Option<PathBuf>,
    /// runtime.runtime_type
    #[arg(long, env = "CRISP_RUNTIME_RUNTIME_TYPE", value_name = "NAME")]
    pub runtime_runtime_type: Option<String>,
    /// runtime.infra_container
    #[arg(long, env = "CRISP_RUNTIME_INFRA_CONTAINER", value_name = "WHEN")]
    pub runtime_infra_container: Option<InfraContainer>,
    /// runtime.pause_binary
    #[arg(long, env = "CRISP_RUNTIME_PAUSE_BINARY", value_name = "FILE")]
    pub runtime_pause_binary: Option<PathBuf>,
    /// runtime.max_container_log_line_size (-1: no limit)
    #[arg(
        long,
        env = "CRISP_RUNTIME_MAX_CONTAINER_LOG_LINE_SIZE",
        value_name = "BYTES",
        allow_negative_numbers = true
    )]
    pub runtime_max_container_log_line_size: Option<i64>,
    /// runtime.metrics_address
    #[arg(long, env = "CRISP_RUNTIME_METRICS_ADDRESS", value_name = "ADDR")]
    pub runtime_metrics_address: Option<MetricsAddress>,

    /// streaming.socket
    #[arg(long, env = "CRISP_STREAMING_SOCKET", value_name = "SOCKET")]
    pub streaming_socket: Option<PathBuf>,
    /// streaming.address
    #[arg(long, env = "CRISP_STREAMING_ADDRESS", value_name = "ADDR")]
    pub streaming_address: Option<String>,
    /// streaming.port
    #[arg(long, env = "CRISP_STREAMING_PORT", value_name = "PORT")]
    pub streaming_port: Option<u16>,
    /// streaming.token_ttl
    #[arg(long, env = "CRISP_STREAMING_TOKEN_TTL", value_name = "DURATION", value_parser = duration)]
    pub streaming_token_ttl: Option<Duration>,
    /// streaming.stream_idle_timeout
    #[arg(long, env = "CRISP_STREAMING_IDLE_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub streaming_idle_timeout: Option<Duration>,
    /// streaming.metrics_address
    #[arg(long, env = "CRISP_STREAMING_METRICS_ADDRESS", value_name = "ADDR")]
    pub streaming_metrics_address: Option<MetricsAddress>,

    /// telemetry.log_format
    #[arg(long, env = "CRISP_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// telemetry.log_level
    #[arg(long, env = "CRISP_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// telemetry.otlp_endpoint
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

fn set<T: Clone>(field: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *field = v.clone();
    }
}

impl ConfigArgs {
    /// Writes every given override into `config`.
    pub fn apply(&self, c: &mut Config) {
        set(&mut c.containerd.address, &self.containerd_address);
        set(&mut c.containerd.namespace, &self.containerd_namespace);
        set(&mut c.containerd.connect_timeout, &self.containerd_connect_timeout);

        set(&mut c.proxy.socket, &self.proxy_socket);
        if self.proxy_image_socket.is_some() {
            c.proxy.image_socket = self.proxy_image_socket.clone();
        }
        set(&mut c.proxy.socket_mode, &self.proxy_socket_mode);
        set(&mut c.proxy.runtime_endpoint, &self.proxy_runtime_endpoint);
        set(&mut c.proxy.streaming_endpoint, &self.proxy_streaming_endpoint);
        set(&mut c.proxy.image_endpoints, &self.proxy_image_endpoints);
        set(&mut c.proxy.health_check_interval, &self.proxy_health_check_interval);
        set(&mut c.proxy.connect_timeout, &self.proxy_connect_timeout);
        if self.proxy_metrics_address.is_some() {
            c.proxy.metrics_address = self.proxy_metrics_address;
        }

        set(&mut c.image.socket, &self.image_socket);
        set(&mut c.image.snapshotter, &self.image_snapshotter);
        if self.image_registry_config_path.is_some() {
            c.image.registry_config_path = self.image_registry_config_path.clone();
        }
        set(&mut c.image.max_concurrent_downloads, &self.image_max_concurrent_downloads);
        if self.image_max_downloads_in_flight.is_some() {
            c.image.max_downloads_in_flight = self.image_max_downloads_in_flight;
        }
        set(&mut c.image.pull_progress_timeout, &self.image_pull_progress_timeout);
        set(&mut c.image.sandbox_image, &self.image_sandbox_image);
        if self.image_metrics_address.is_some() {
            c.image.metrics_address = self.image_metrics_address;
        }

        set(&mut c.runtime.socket, &self.runtime_socket);
        set(&mut c.runtime.root_dir, &self.runtime_root_dir);
        set(&mut c.runtime.state_dir, &self.runtime_state_dir);
        set(&mut c.runtime.cni_bin_dirs, &self.runtime_cni_bin_dirs);
        set(&mut c.runtime.cni_conf_dir, &self.runtime_cni_conf_dir);
        set(&mut c.runtime.runtime_type, &self.runtime_runtime_type);
        set(&mut c.runtime.infra_container, &self.runtime_infra_container);
        set(&mut c.runtime.pause_binary, &self.runtime_pause_binary);
        set(&mut c.runtime.max_container_log_line_size, &self.runtime_max_container_log_line_size);
        if self.runtime_metrics_address.is_some() {
            c.runtime.metrics_address = self.runtime_metrics_address;
        }

        set(&mut c.streaming.socket, &self.streaming_socket);
        set(&mut c.streaming.address, &self.streaming_address);
        set(&mut c.streaming.port, &self.streaming_port);
        set(&mut c.streaming.token_ttl, &self.streaming_token_ttl);
        set(&mut c.streaming.stream_idle_timeout, &self.streaming_idle_timeout);
        if self.streaming_metrics_address.is_some() {
            c.streaming.metrics_address = self.streaming_metrics_address;
        }

        set(&mut c.telemetry.log_format, &self.log_format);
        set(&mut c.telemetry.log_level, &self.log_level);
        if self.otlp_endpoint.as_deref().is_some_and(|e| !e.is_empty()) {
            c.telemetry.otlp_endpoint = self.otlp_endpoint.clone();
        }
    }
}
