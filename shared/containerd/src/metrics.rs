//! How long containerd takes to answer crisp, by API: `crisp_containerd_call_duration_seconds`
//! `{grpc_service, grpc_method}` (e.g. `containerd.services.tasks.v1.Tasks`, `Create`), a
//! histogram kept by [`Timed`], a layer on the one channel every containerd client uses, so no
//! call escapes it. A call is timed from the moment it is handed to the channel until
//! containerd's response headers arrive, or the call fails to reach containerd: the whole call
//! for a unary RPC (containerd sends its headers with the answer); for a streaming one, until
//! its first message (`Content/Read`: the first chunk; `Events/Subscribe`: the first event,
//! so its latency says how long the service waited for one, not containerd's speed).
//!
//! Labels are bounded by the containerd APIs crisp calls. Each API's histogram is resolved on
//! its first call and kept by its gRPC path; later calls look it up by the request's path
//! (`&str`) under a read lock and allocate nothing. [`register`] adds the family to a service's
//! registry (the runtime and image services both do).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

/// containerd's gRPC service and method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    grpc_service: String,
    grpc_method: String,
}

/// 100 µs (a cached lookup) to 5 minutes (a task start or a large snapshot commit).
const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

struct CallMetrics {
    family: Family<ApiLabels, Histogram, fn() -> Histogram>,
    /// Each path's histogram (shared with `family`), so a call finds it without allocating.
    by_path: RwLock<HashMap<Box<str>, Histogram>>,
}

static METRICS: LazyLock<CallMetrics> = LazyLock::new(|| CallMetrics {
    family: Family::new_with_constructor(histogram as fn() -> Histogram),
    by_path: RwLock::default(),
});

impl CallMetrics {
    /// The histogram of the API at `path` (`/containerd.services.tasks.v1.Tasks/Create`).
    fn for_path(&self, path: &str) -> Histogram {
        if let Some(found) = self.by_path.read().unwrap_or_else(|e| e.into_inner()).get(path) {
            return found.clone();
        }
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("unknown", "unknown"));
        let labels = ApiLabels { grpc_service: service.to_string(), grpc_method: method.to_string() };
        let found = self.family.get_or_create(&labels).clone();
        self.by_path.write().unwrap_or_else(|e| e.into_inner()).insert(path.into(), found.clone());
        found
    }
}

/// Adds `crisp_containerd_call_duration_seconds` to `registry` (under the `crisp_` prefix).
pub fn register(registry: &mut Registry) {
    registry.register(
        "containerd_call_duration_seconds",
        "How long containerd took to answer each call, by its gRPC service and method (to the response headers)",
        METRICS.family.clone(),
    );
}

/// The layer: times every call made through the service it wraps (see the module docs).
#[derive(Debug, Clone)]
pub struct Timed<S> {
    inner: S,
}

impl<S> Timed<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TimedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let histogram = METRICS.for_path(request.uri().path());
        TimedCall { call: self.inner.call(request), histogram, started: Instant::now() }
    }
}

pin_project_lite::pin_project! {
    /// A call in progress; observed when containerd's answer (or the failure) arrives.
    pub struct TimedCall<F> {
        #[pin]
        call: F,
        histogram: Histogram,
        started: Instant,
    }
}

impl<F: Future> Future for TimedCall<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.call.poll(cx));
        this.histogram.observe(this.started.elapsed().as_secs_f64());
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_resolves_to_its_service_and_method_once() {
        let a = METRICS.for_path("/crisp.test.v1.Test/Call");
        a.observe(0.001);
        let b = METRICS.for_path("/crisp.test.v1.Test/Call");
        b.observe(0.002);
        let labels = ApiLabels { grpc_service: "crisp.test.v1.Test".into(), grpc_method: "Call".into() };
        let mut registry = Registry::default();
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(METRICS.family.get(&labels).is_some());
        assert!(
            text.contains(
                "containerd_call_duration_seconds_count{grpc_service=\"crisp.test.v1.Test\",grpc_method=\"Call\"} 2"
            ),
            "{text}"
        );
    }
}
