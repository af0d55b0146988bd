//! The proxy's metrics: every CRI call passes here, so this is where an operator sees call
//! rates, latencies and errors per method, and the health of the backends behind.
//!
//! - `crisp_proxy_calls_total{grpc_service, grpc_method, grpc_code}`: calls ended, by the gRPC
//!   code the caller got (`CANCELLED` for a call the caller dropped before its end).
//! - `crisp_proxy_call_duration_seconds{grpc_service, grpc_method}`: from the request's arrival
//!   to the end of the response (its trailers).
//! - `crisp_proxy_calls_in_flight{grpc_service}`.
//! - `crisp_proxy_backend_up{backend}`: 1 while the proxy holds an open connection to the
//!   backend, 0 once it could not reach it or the connection closed (absent until first dialled).
//! - `crisp_proxy_image_replica_healthy{replica}`: 1 while the replica is in the rotation.
//! - `crisp_proxy_image_retries_total`: calls tried again on another replica because theirs
//!   could not be reached.
//!
//! Labels are bounded: the CRI methods of cri-api v0.36 by name, any other path under a CRI
//! service as `grpc_method="unknown"`, any other path as `grpc_service="unknown"`. Each
//! method's metrics are resolved once, when the proxy starts: a call costs a lookup of its path,
//! a few atomic operations and one uncontended lock (the histogram), and allocates nothing.

use crisp_metrics::GRPC_CODES as CODES;
use crisp_metrics::{Buckets, HistogramFamily};
use crisp_proto::{IMAGE_SERVICE_NAME, RUNTIME_SERVICE_NAME};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tower::{Layer, Service};

/// The RuntimeService's methods (cri-api v0.36.3's `api.proto`).
const RUNTIME_METHODS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "StreamPodSandboxes",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "StreamContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "StreamContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "StreamPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "StreamPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
];

/// The ImageService's methods.
const IMAGE_METHODS: &[&str] =
    &["ListImages", "StreamImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"];

/// The label value of a service or method the proxy does not know.
const UNKNOWN: &str = "unknown";

/// Indexes in [`CODES`] (gRPC's code numbers).
const CANCELLED: usize = 1;
const UNKNOWN_CODE: usize = 2;

/// Upper bounds of the call latency buckets, in seconds: a cached Version (well under a
/// millisecond) up to a pull of a large image (minutes).
const LATENCY_BUCKETS: Buckets = Buckets(&[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
]);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    grpc_service: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
}

/// One method's metrics, resolved when the proxy starts.
struct MethodMetrics {
    labels: MethodLabels,
    /// Made at the method's first call (so the scrape lists only methods called).
    duration: OnceLock<Histogram>,
    durations: HistogramFamily<MethodLabels>,
    in_flight: Gauge,
    /// The counter of each code, made at the first call that ends with it (so the scrape lists
    /// only codes that happened).
    codes: [OnceLock<Counter>; 17],
    calls: Family<CallLabels, Counter>,
}

impl MethodMetrics {
    fn duration(&self) -> &Histogram {
        self.duration.get_or_init(|| self.durations.get_or_create_owned(&self.labels))
    }

    fn calls_with(&self, code: usize) -> &Counter {
        self.codes[code].get_or_init(|| {
            self.calls.get_or_create_owned(&CallLabels {
                grpc_service: self.labels.grpc_service,
                grpc_method: self.labels.grpc_method,
                grpc_code: CODES[code],
            })
        })
    }
}

struct Inner {
    calls: Family<CallLabels, Counter>,
    duration: HistogramFamily<MethodLabels>,
    in_flight: Family<ServiceLabels, Gauge>,
    backend_up: Family<BackendLabels, Gauge>,
    replica_healthy: Family<ReplicaLabels, Gauge>,
    retries: Counter,
    /// By path (`/runtime.v1.ImageService/PullImage`).
    methods: HashMap<String, Arc<MethodMetrics>>,
    unknown_image: Arc<MethodMetrics>,
    unknown_runtime: Arc<MethodMetrics>,
    unknown: Arc<MethodMetrics>,
}

/// The proxy's metrics (see the module documentation). Cheap to clone: clones share them.
#[derive(Clone)]
pub struct ProxyMetrics {
    inner: Arc<Inner>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let duration = crisp_metrics::histogram::family(LATENCY_BUCKETS);
        let in_flight = Family::<ServiceLabels, Gauge>::default();
        let method = |grpc_service: &'static str, grpc_method: &'static str| {
            let labels = MethodLabels { grpc_service, grpc_method };
            Arc::new(MethodMetrics {
                duration: OnceLock::new(),
                durations: duration.clone(),
                in_flight: in_flight.get_or_create_owned(&ServiceLabels { grpc_service }),
                labels,
                codes: Default::default(),
                calls: calls.clone(),
            })
        };
        let mut methods = HashMap::new();
        for (service, names) in [(RUNTIME_SERVICE_NAME, RUNTIME_METHODS), (IMAGE_SERVICE_NAME, IMAGE_METHODS)] {
            for name in names {
                methods.insert(format!("/{service}/{name}"), method(service, name));
            }
        }
        let unknown_image = method(IMAGE_SERVICE_NAME, UNKNOWN);
        let unknown_runtime = method(RUNTIME_SERVICE_NAME, UNKNOWN);
        let unknown = method(UNKNOWN, UNKNOWN);
        Self {
            inner: Arc::new(Inner {
                calls,
                duration,
                in_flight,
                backend_up: Family::default(),
                replica_healthy: Family::default(),
                retries: Counter::default(),
                methods,
                unknown_image,
                unknown_runtime,
                unknown,
            }),
        }
    }

    /// Adds the metrics to `registry` (the service's, under the `crisp_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        let m = &self.inner;
        registry.register(
            "proxy_calls",
            "CRI calls the proxy ended, by service, method and gRPC code",
            m.calls.clone(),
        );
        registry.register(
            "proxy_call_duration_seconds",
            "Time from a CRI call's arrival at the proxy to the end of its response",
            m.duration.clone(),
        );
        registry.register("proxy_calls_in_flight", "CRI calls the proxy is handling now.", m.in_flight.clone());
        registry.register(
            "proxy_backend_up",
            "1 while the proxy has an open connection to the backend, 0 once it could not reach it or the connection closed",
            m.backend_up.clone(),
        );
        registry.register(
            "proxy_image_replica_healthy",
            "1 while the image service replica is in the proxy's rotation, 0 while its health check or calls fail",
            m.replica_healthy.clone(),
        );
        registry.register(
            "proxy_image_retries",
            "Calls tried again on another image service replica because theirs could not be reached",
            m.retries.clone(),
        );
    }

    fn method(&self, path: &str) -> &Arc<MethodMetrics> {
        let m = &self.inner;
        if let Some(method) = m.methods.get(path) {
            return method;
        }
        if path.starts_with(crisp_proto::IMAGE_SERVICE_PREFIX) {
            &m.unknown_image
        } else if path.starts_with(crisp_proto::RUNTIME_SERVICE_PREFIX) {
            &m.unknown_runtime
        } else {
            &m.unknown
        }
    }

    /// The gauge of a backend's connection (`runtime`, `streaming`, `image-0`...), made at its
    /// first value.
    pub fn backend_up(&self, backend: &str) -> BackendUp {
        BackendUp {
            family: self.inner.backend_up.clone(),
            labels: BackendLabels { backend: backend.to_string() },
            gauge: OnceLock::new(),
        }
    }

    /// The gauge of an image service replica's place in the rotation.
    pub fn replica_healthy(&self, replica: usize) -> Gauge {
        self.inner.replica_healthy.get_or_create_owned(&ReplicaLabels { replica: replica.to_string() })
    }

    /// The counter of calls tried again on another replica.
    pub fn image_retries(&self) -> Counter {
        self.inner.retries.clone()
    }
}

/// `crisp_proxy_backend_up` of one backend: absent from the scrape until the proxy first
/// dials the backend (a backend never called is neither up nor down).
pub struct BackendUp {
    family: Family<BackendLabels, Gauge>,
    labels: BackendLabels,
    gauge: OnceLock<Gauge>,
}

impl BackendUp {
    pub fn set(&self, up: bool) {
        self.gauge.get_or_init(|| self.family.get_or_create_owned(&self.labels)).set(i64::from(up));
    }
}

/// A call being counted: ends (with its code) once, when its response ends or it is dropped.
struct CallGuard {
    method: Arc<MethodMetrics>,
    started: Instant,
}

impl CallGuard {
    fn start(method: &Arc<MethodMetrics>) -> Self {
        method.in_flight.inc();
        Self { method: method.clone(), started: Instant::now() }
    }

    fn finish(self, code: Option<i32>) {
        let index = match code {
            Some(code) => usize::try_from(code).ok().filter(|&c| c < CODES.len()).unwrap_or(UNKNOWN_CODE),
            None => UNKNOWN_CODE,
        };
        self.record(index);
        std::mem::forget(self);
    }

    fn record(&self, code: usize) {
        let method = &self.method;
        method.in_flight.dec();
        method.duration().observe(self.started.elapsed().as_secs_f64());
        method.calls_with(code).inc();
    }
}

impl Drop for CallGuard {
    /// A call dropped before its end: the caller cancelled it (or the connection went).
    fn drop(&mut self) {
        self.record(CANCELLED);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The tower layer that counts calls; with no metrics it only passes them on.
#[derive(Clone, Default)]
pub struct MetricsLayer {
    metrics: Option<ProxyMetrics>,
}

impl MetricsLayer {
    pub fn new(metrics: Option<ProxyMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, metrics: self.metrics.clone() }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Option<ProxyMetrics>,
}

impl<S, B, RB> Service<http::Request<B>> for MetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = self.metrics.as_ref().map(|m| CallGuard::start(m.method(request.uri().path())));
        MeteredFuture { inner: self.inner.call(request), guard }
    }
}

pin_project! {
    /// The future of a counted call: its response carries the count on to the body's end.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        guard: Option<CallGuard>,
    }
}

impl<F, RB, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<MeteredBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut guard = this.guard.take();
        Poll::Ready(result.map(|response| {
            // A status in the headers (trailers-only: an error answered at once) ends the call.
            if let Some(code) = grpc_status(response.headers())
                && let Some(guard) = guard.take()
            {
                guard.finish(Some(code));
            }
            response.map(|inner| MeteredBody { inner, guard })
        }))
    }
}

pin_project! {
    /// A response body that ends its call's count with the trailers' gRPC status.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        guard: Option<CallGuard>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if this.guard.is_some() {
            let ended = match &frame {
                Some(Ok(f)) => f.trailers_ref().map(grpc_status),
                Some(Err(_)) | None => Some(None),
            };
            if let Some(code) = ended
                && let Some(guard) = this.guard.take()
            {
                guard.finish(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn scrape(metrics: &ProxyMetrics) -> String {
        let mut registry = Registry::with_prefix("crisp");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// A backend answering `code` in the trailers (or in the headers when `trailers_only`).
    type TestBody = http_body_util::StreamBody<
        futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
    >;

    fn backend(
        code: i32,
        trailers_only: bool,
    ) -> impl Service<http::Request<()>, Response = http::Response<TestBody>, Error = std::convert::Infallible> + Clone
    {
        tower::service_fn(move |_request: http::Request<()>| async move {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", code.to_string().parse().unwrap());
            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = if trailers_only {
                vec![]
            } else {
                vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))), Ok(Frame::trailers(trailers.clone()))]
            };
            let mut response = http::Response::new(http_body_util::StreamBody::new(futures::stream::iter(frames)));
            if trailers_only {
                *response.headers_mut() = trailers;
            }
            Ok(response)
        })
    }

    fn call(path: &str) -> http::Request<()> {
        http::Request::post(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn calls_are_counted_by_method_and_code_when_their_response_ends() {
        let metrics = ProxyMetrics::new();
        let layer = MetricsLayer::new(Some(metrics.clone()));
        let pull = "/runtime.v1.ImageService/PullImage";

        let response = layer.layer(backend(0, false)).oneshot(call(pull)).await.unwrap();
        let text = scrape(&metrics);
        let in_flight = r#"crisp_proxy_calls_in_flight{grpc_service="runtime.v1.ImageService"}"#;
        assert_eq!(value(&text, in_flight), Some(1.0), "{text}");
        response.into_body().collect().await.unwrap();
        let text = scrape(&metrics);
        assert_eq!(value(&text, in_flight), Some(0.0), "{text}");
        let ok =
            r#"crisp_proxy_calls_total{grpc_service="runtime.v1.ImageService",grpc_method="PullImage",grpc_code="OK"}"#;
        assert_eq!(value(&text, ok), Some(1.0), "{text}");
        let count = r#"crisp_proxy_call_duration_seconds_count{grpc_service="runtime.v1.ImageService",grpc_method="PullImage"}"#;
        assert_eq!(value(&text, count), Some(1.0), "{text}");

        // Trailers-only (an error answered at once), an unknown path, a call dropped half way.
        let response = layer.layer(backend(5, true)).oneshot(call(pull)).await.unwrap();
        drop(response);
        layer.layer(backend(12, true)).oneshot(call("/foo.Bar/Baz")).await.unwrap();
        layer.layer(backend(12, true)).oneshot(call("/runtime.v1.RuntimeService/Nope")).await.unwrap();
        drop(layer.layer(backend(0, false)).oneshot(call(pull)).await.unwrap());
        let text = scrape(&metrics);
        let series = |method: &str, code: &str| {
            format!(
                r#"crisp_proxy_calls_total{{grpc_service="runtime.v1.ImageService",grpc_method="{method}",grpc_code="{code}"}}"#
            )
        };
        assert_eq!(value(&text, &series("PullImage", "NOT_FOUND")), Some(1.0), "{text}");
        assert_eq!(value(&text, &series("PullImage", "CANCELLED")), Some(1.0), "{text}");
        let unknown =
            r#"crisp_proxy_calls_total{grpc_service="unknown",grpc_method="unknown",grpc_code="UNIMPLEMENTED"}"#;
        assert_eq!(value(&text, unknown), Some(1.0), "{text}");
        let unknown_method = r#"crisp_proxy_calls_total{grpc_service="runtime.v1.RuntimeService",grpc_method="unknown",grpc_code="UNIMPLEMENTED"}"#;
        assert_eq!(value(&text, unknown_method), Some(1.0), "{text}");
        assert_eq!(value(&text, in_flight), Some(0.0), "{text}");
        assert!(!text.contains("Baz") && !text.contains("Nope"), "{text}");
    }

    #[tokio::test]
    async fn without_metrics_calls_pass_through() {
        let response = MetricsLayer::new(None).layer(backend(0, false)).oneshot(call("/x/y")).await.unwrap();
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    }
}
