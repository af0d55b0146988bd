//! The front proxy: the CRI socket, each call routed undecoded to the crisp service that
//! answers it. Its behaviour is a short stack of tower layers, composed in one place
//! ([`stack`]) and each testable alone; the next concern (limits) is one more layer.
//!
//! Top to bottom, for every call:
//!
//! - [`serve`]: HTTP/2 on a unix socket; every connection behind
//!   [`AuthorityFix`](crisp_grpc_server::AuthorityFix), so any `:authority` a client sends is
//!   accepted.
//! - [`RpcTraceLayer`](crisp_telemetry::RpcTraceLayer) (forwarding): a span per call that
//!   continues the caller's trace and hands it on to the backend.
//! - [`MetricsLayer`]: calls, latency and calls in flight by method, for Prometheus (when
//!   `proxy.metrics_address` is set; otherwise it only passes calls on).
//! - [`Router`]: picks the target by the call's path and reads the request message whole;
//!   an unknown path answers `UNIMPLEMENTED`.
//! - then, per target, [`DeadlineLayer`]: the caller's `grpc-timeout` is forwarded and also
//!   kept, so a call never outlives its deadline even if a backend ignores it;
//! - over [`ImagePool`] (the image service replicas, health-checked, round-robin) or a
//!   [`Backend`] (one service's socket; one that is down answers `UNAVAILABLE` naming it).
//!
//! Messages are never decoded: bodies, trailers, status codes and metadata pass through.

mod backend;
pub mod deadline;
pub mod metrics;
mod pool;
mod route;
mod server;

pub use backend::{Backend, BackendError};
pub use deadline::{Deadline, DeadlineLayer};
pub use metrics::{MetricsLayer, MetricsService, ProxyMetrics};
pub use pool::ImagePool;
pub use route::{Router, Scope};
pub use server::serve;

use bytes::Bytes;
use crisp_config::ProxyConfig;
use crisp_telemetry::{RpcTraceLayer, RpcTraceService};

/// The body of every response the proxy gives: a backend's, passed through, or its own status.
pub type ResponseBody = tonic::body::Body;
/// A response the proxy gives.
pub type Response = http::Response<ResponseBody>;
/// A call as the router hands it to a target: its head and its whole request message.
pub type Call = http::Request<Bytes>;

/// A copy of a call (for trying it on another replica).
pub fn clone_call(call: &Call) -> Call {
    let mut copy = http::Request::new(call.body().clone());
    *copy.method_mut() = call.method().clone();
    *copy.uri_mut() = call.uri().clone();
    *copy.version_mut() = call.version();
    *copy.headers_mut() = call.headers().clone();
    copy
}

/// Every backend the proxy knows. Cheap to clone.
#[derive(Clone)]
pub struct Backends {
    pub images: ImagePool,
    pub runtime: Backend,
    pub streaming: Backend,
    /// The proxy's metrics, when `proxy.metrics_address` is set.
    pub metrics: Option<ProxyMetrics>,
}

impl Backends {
    pub fn from_config(config: &ProxyConfig) -> Self {
        let metrics = config.metrics_address.map(|_| ProxyMetrics::new());
        let up = |backend: &str| metrics.as_ref().map(|m| m.backend_up(backend));
        let timeout = config.connect_timeout;
        let replicas = config.image_endpoints.len();
        let images = config
            .image_endpoints
            .iter()
            .enumerate()
            .map(|(i, socket)| {
                let name =
                    if replicas == 1 { "image service".to_string() } else { format!("image service replica {i}") };
                Backend::with_up_gauge(name, socket, timeout, up(&format!("image-{i}")))
            })
            .collect();
        Self {
            images: ImagePool::with_metrics(images, metrics.as_ref()),
            runtime: Backend::with_up_gauge("runtime service", &config.runtime_endpoint, timeout, up("runtime")),
            streaming: Backend::with_up_gauge("streaming server", &config.streaming_endpoint, timeout, up("streaming")),
            metrics,
        }
    }
}

/// The proxy's service for one socket, as [`stack`] composes it.
pub type Proxy = RpcTraceService<MetricsService<Router<Deadline<ImagePool>, Deadline<Backend>, Deadline<Backend>>>>;

/// The stack, top to bottom; the one place its layers are put together.
pub fn stack(backends: &Backends, scope: Scope) -> Proxy {
    let target = tower::ServiceBuilder::new().layer(DeadlineLayer);
    let router = Router::new(
        scope,
        target.service(backends.images.clone()),
        target.service(backends.runtime.clone()),
        target.service(backends.streaming.clone()),
    );
    tower::ServiceBuilder::new()
        .layer(RpcTraceLayer::forwarding())
        .layer(MetricsLayer::new(backends.metrics.clone()))
        .service(router)
}
