//! Prometheus metrics for a crisp service: one registry per process, the standard process
//! metrics, and an HTTP endpoint serving them in the Prometheus text format.
//!
//! - [`start`]: what a service's `main` calls once, with its `<service>.metrics_address`: `None`
//!   serves nothing; an address is bound at once (a bad or busy one is an error naming it) and
//!   served until the returned [`Endpoint`] is dropped. `register` adds the service's own metrics,
//!   under the `crisp_` prefix.
//! - [`process`]: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_open_fds`, `process_start_time_seconds`... read from `/proc/self` at each scrape,
//!   under the names every Prometheus client library gives them (no prefix).
//! - [`http`]: `GET /metrics` over HTTP/1.1 with hyper.
//! - [`histogram`]: histograms with buckets named once ([`Buckets`]), alone or by label set.
//!
//! Metric names follow Prometheus conventions: base units (`_seconds`, `_bytes`), counters end
//! in `_total` (added by the encoder: register `pulls`, not `pulls_total`), and every label set
//! is bounded (a method, a gRPC code, a replica number; never an image name or a pod id).

pub mod histogram;
pub mod http;
pub mod process;

pub use histogram::{Buckets, HistogramFamily};

pub use prometheus_client;
pub use prometheus_client::registry::Registry;

use std::net::SocketAddr;

/// The prefix of every crisp metric.
pub const PREFIX: &str = "crisp";

/// gRPC's status codes by number, as a `grpc_code` label names them (`OK`, `NOT_FOUND`...).
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The `grpc_code` label of a status code (`UNKNOWN` for a number gRPC does not define).
pub fn grpc_code_name(code: i32) -> &'static str {
    usize::try_from(code).ok().and_then(|c| GRPC_CODES.get(c)).copied().unwrap_or("UNKNOWN")
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
}

/// The metrics endpoint of a running service; serving stops when it is dropped.
#[derive(Debug)]
pub struct Endpoint {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// The address bound (with the port picked when the configured one was 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Builds the process's registry: the process metrics, then what `register` adds under the
/// `crisp_` prefix.
pub fn registry(register: impl FnOnce(&mut Registry)) -> Registry {
    let mut root = Registry::default();
    process::register(&mut root);
    register(root.sub_registry_with_prefix(PREFIX));
    root
}

/// Serves the service's metrics on `address` (see the module documentation). Must be called
/// inside a Tokio runtime.
pub async fn start(
    address: Option<SocketAddr>,
    register: impl FnOnce(&mut Registry),
) -> Result<Option<Endpoint>, MetricsError> {
    let Some(address) = address else {
        return Ok(None);
    };
    let registry = registry(register);
    let listener =
        tokio::net::TcpListener::bind(address).await.map_err(|source| MetricsError::Bind { address, source })?;
    let bound = listener.local_addr().map_err(|source| MetricsError::Bind { address, source })?;
    tracing::info!(address = %bound, "serving metrics on http://{bound}/metrics");
    let task = tokio::spawn(http::serve(listener, std::sync::Arc::new(registry)));
    Ok(Some(Endpoint { address: bound, task }))
}
