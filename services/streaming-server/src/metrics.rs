//! The streaming server's metrics, handed to the metrics endpoint (served when
//! `streaming.metrics_address` is set). Labels are bounded: a session's kind and a direction.
//!
//! - `crisp_streaming_sessions_total{kind}`: sessions upgraded (`exec`, `attach`, `portforward`).
//! - `crisp_streaming_sessions_active{kind}`: sessions open now.
//! - `crisp_streaming_bytes_total{kind,direction}`: bytes on the upgraded connections, as the
//!   client sent them (`received`) and as the server wrote them (`sent`), framing included.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    kind: &'static str,
    direction: &'static str,
}

struct StreamingMetrics {
    sessions: Family<KindLabels, Counter>,
    active: Family<KindLabels, Gauge>,
    bytes: Family<BytesLabels, Counter>,
}

static METRICS: LazyLock<StreamingMetrics> = LazyLock::new(|| StreamingMetrics {
    sessions: Family::default(),
    active: Family::default(),
    bytes: Family::default(),
});

/// Registers the streaming server's metrics with the endpoint's registry.
pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register("streaming_sessions", "Streaming sessions upgraded, by kind", m.sessions.clone());
    registry.register("streaming_sessions_active", "Streaming sessions open now, by kind", m.active.clone());
    registry.register_with_unit(
        "streaming",
        "Bytes on upgraded streaming connections, by kind and direction",
        prometheus_client::registry::Unit::Bytes,
        m.bytes.clone(),
    );
}

/// A session of `kind` open until the guard is dropped.
pub struct Session {
    active: Gauge,
}

/// Counts a session of `kind` and holds it open.
pub fn session(kind: &'static str) -> Session {
    METRICS.sessions.get_or_create(&KindLabels { kind }).inc();
    let active = METRICS.active.get_or_create(&KindLabels { kind }).clone();
    active.inc();
    Session { active }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// An upgraded connection whose bytes each way are counted for its session's kind.
pub struct Counted<T> {
    inner: T,
    received: Counter,
    sent: Counter,
}

impl<T> Counted<T> {
    pub fn new(inner: T, kind: &'static str) -> Self {
        let counter = |direction| METRICS.bytes.get_or_create(&BytesLabels { kind, direction }).clone();
        Self { inner, received: counter("received"), sent: counter("sent") }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.received.inc_by((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent.inc_by(n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
