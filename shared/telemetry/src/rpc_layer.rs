//! A span on every RPC: a tower layer for gRPC servers (and for the proxy, which also hands the
//! span's trace context on to the backend it forwards to).
//!
//! The span continues the caller's `traceparent`, names the service and method, lives until the
//! response body ends, and records the gRPC status, whether it came in the response headers
//! (an error answered at once) or in the trailers (the end of a stream).

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument;

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct RpcTraceLayer {
    forward: bool,
}

impl RpcTraceLayer {
    /// For a server that answers calls itself.
    pub fn server() -> Self {
        Self { forward: false }
    }

    /// For a proxy: the request it passes on carries this span's trace context.
    pub fn forwarding() -> Self {
        Self { forward: true }
    }
}

impl<S> Layer<S> for RpcTraceLayer {
    type Service = RpcTraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcTraceService { inner, forward: self.forward }
    }
}

#[derive(Debug, Clone)]
pub struct RpcTraceService<S> {
    inner: S,
    forward: bool,
}

/// The W3C trace context header (the only one the trace-context propagator needs to find a
/// parent; `tracestate` is read only beside it).
const TRACEPARENT: &str = "traceparent";

fn split_path(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn finish(span: &tracing::Span, started: Instant, code: Option<i32>) {
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match code {
        Some(0) => {
            span.record("rpc.grpc.status_code", 0);
            tracing::debug!(parent: span, code = 0, elapsed_ms, "rpc finished");
        }
        Some(code) => {
            span.record("rpc.grpc.status_code", code);
            span.record("otel.status_code", "ERROR");
            tracing::info!(parent: span, code, elapsed_ms, "rpc failed");
        }
        None => {
            span.record("otel.status_code", "ERROR");
            tracing::info!(parent: span, elapsed_ms, "rpc ended without a gRPC status");
        }
    }
}

impl<S, B, RB> Service<http::Request<B>> for RpcTraceService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = http::Response<TracedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The fields are recorded as `&str`, not formatted (`%`): no string is built per call
        // unless a layer that keeps them (the OpenTelemetry one, the logs) copies it.
        let path = request.uri().path();
        let (service, method) = split_path(path);
        let span = tracing::info_span!(
            "rpc",
            otel.name = path.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        // Without a `traceparent` there is no trace to continue: the span keeps the parent
        // tracing gives it (none, where a server's call starts), as an empty extracted context
        // would give it, without the propagator's work on every call.
        if request.headers().contains_key(TRACEPARENT) {
            crate::propagation::continue_trace(&span, request.headers());
        }
        if self.forward {
            crate::propagation::inject_headers(&span, request.headers_mut());
        }
        let started = Instant::now();
        let call = span.in_scope(|| self.inner.call(request));
        let span_for_body = span.clone();
        Box::pin(
            async move {
                match call.await {
                    Ok(response) => {
                        let done = match grpc_status(response.headers()) {
                            Some(code) => {
                                finish(&span_for_body, started, Some(code));
                                true
                            }
                            None => false,
                        };
                        Ok(response.map(|inner| TracedBody { inner, span: (!done).then_some(span_for_body), started }))
                    }
                    Err(err) => {
                        span_for_body.record("otel.status_code", "ERROR");
                        tracing::info!(error = %err, "rpc failed before a response");
                        Err(err)
                    }
                }
            }
            .instrument(span),
        )
    }
}

pin_project! {
    /// A response body that closes its RPC's span when it ends.
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Option<tracing::Span>,
        started: Instant,
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(span) = this.span.as_ref() {
            let ended = match &frame {
                Some(Ok(f)) => f.trailers_ref().map(grpc_status),
                Some(Err(_)) | None => Some(None),
            };
            if let Some(code) = ended {
                finish(span, *this.started, code);
                *this.span = None;
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
