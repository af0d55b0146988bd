//! One backend: a crisp service on a unix socket, reached over one HTTP/2 connection.
//!
//! Calls go straight from the caller's task onto the shared connection (h2's `SendRequest`),
//! with no queue or worker task in between. The connection is dialled on the first call and
//! again on the first call after it broke; a call that cannot connect, or whose connection
//! breaks under it, fails with [`BackendError::Unreachable`] (`UNAVAILABLE` naming the backend).
//! A gRPC error the backend answers is a normal response and passes through, as does a stream
//! the backend resets ([`BackendError::Reset`]): neither is the backend's failure.

use crate::metrics::BackendUp;
use crate::{Call, Response, ResponseBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// The flow-control windows the proxy offers a backend: a CRI response (up to 16 MiB) flows
/// without waiting for window updates on each 64 KiB.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Streams the proxy has reset (calls the kubelet cancelled) that it remembers, so that the
/// frames a backend still sends on them are dropped quietly. h2 remembers 50 by default; past
/// that, each late frame is a stream error that h2 answers with a reset of its own and counts,
/// and after 1024 of those it closes the connection ("too_many_internal_resets") under every
/// other call to that backend. A burst of cancelled calls did that (proxy_fuzz, 2 cores).
const REMEMBERED_RESETS: usize = crisp_grpc_server::MAX_PENDING_ACCEPT_RESET_STREAMS;

/// Why a call to a backend got no response from it.
#[derive(Debug)]
pub enum BackendError {
    /// The backend cannot be reached or its connection broke: the backend's own failure.
    Unreachable(tonic::Status),
    /// The backend reset the call's stream (it refused or cancelled that one call).
    Reset(tonic::Status),
}

impl BackendError {
    pub fn into_status(self) -> tonic::Status {
        match self {
            BackendError::Unreachable(status) | BackendError::Reset(status) => status,
        }
    }
}

/// A backend service. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Backend {
    inner: Arc<Inner>,
}

struct Inner {
    /// `<name> at <socket>`, as error messages name it.
    describe: String,
    socket: PathBuf,
    connect_timeout: Duration,
    /// The open connection, if any, and its number (so that a broken one is cleared only if it
    /// is still the current one).
    connection: Mutex<Option<(u64, h2::client::SendRequest<Bytes>)>>,
    /// Held while dialling: calls that find no connection wait for one dial.
    dialling: tokio::sync::Mutex<u64>,
    /// `crisp_proxy_backend_up` of this backend, when the proxy serves metrics.
    up: Option<BackendUp>,
}

impl Backend {
    /// `name` says what the backend is in error messages and logs (`runtime service`).
    pub fn new(name: impl Into<String>, socket: &Path, connect_timeout: Duration) -> Self {
        Self::with_up_gauge(name, socket, connect_timeout, None)
    }

    /// [`Backend::new`], keeping `up` at 1 while a connection is open and 0 once one could not
    /// be made or closed.
    pub fn with_up_gauge(
        name: impl Into<String>,
        socket: &Path,
        connect_timeout: Duration,
        up: Option<BackendUp>,
    ) -> Self {
        let describe = format!("{} at {}", name.into(), socket.display());
        Self {
            inner: Arc::new(Inner {
                describe,
                socket: socket.to_path_buf(),
                connect_timeout,
                connection: Mutex::new(None),
                dialling: tokio::sync::Mutex::new(0),
                up,
            }),
        }
    }

    /// `<name> at <socket>`, as error messages name it.
    pub fn describe(&self) -> &str {
        &self.inner.describe
    }

    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> BackendError {
        set_up(&self.inner, false);
        tracing::warn!(backend = %self.describe(), error = %why, "backend unavailable");
        BackendError::Unreachable(tonic::Status::unavailable(format!("{} is unavailable: {why}", self.describe())))
    }

    fn cached(&self) -> Option<(u64, h2::client::SendRequest<Bytes>)> {
        self.inner.connection.lock().ok()?.clone()
    }

    fn forget(&self, number: u64) {
        forget(&self.inner, number);
    }

    /// The open connection, or a new one.
    async fn connection(&self) -> Result<(u64, h2::client::SendRequest<Bytes>), BackendError> {
        if let Some(connection) = self.cached() {
            return Ok(connection);
        }
        let mut dialled = self.inner.dialling.lock().await;
        if let Some(connection) = self.cached() {
            return Ok(connection);
        }
        let stream = match tokio::time::timeout(
            self.inner.connect_timeout,
            tokio::net::UnixStream::connect(self.socket()),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Err(self.unreachable(err)),
            Err(_) => return Err(self.unreachable(format!("no connection within {:?}", self.inner.connect_timeout))),
        };
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(1 << 20)
            .enable_push(false)
            .max_concurrent_reset_streams(REMEMBERED_RESETS)
            // The backend is one of crisp's own services on a root-only socket, not a peer to
            // guard against: a late frame on a cancelled call never closes the connection.
            .max_local_error_reset_streams(None)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|err| self.unreachable(err))?;
        *dialled += 1;
        let number = *dialled;
        let inner = Arc::downgrade(&self.inner);
        let describe = self.inner.describe.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(backend = %describe, error = %err, "backend connection ended");
            }
            if let Some(inner) = inner.upgrade() {
                forget(&inner, number);
            }
        });
        if let Ok(mut slot) = self.inner.connection.lock() {
            *slot = Some((number, send.clone()));
        }
        set_up(&self.inner, true);
        Ok((number, send))
    }

    /// Forwards one call; the response's body streams from the backend as it answers.
    pub async fn call(&self, call: Call) -> Result<Response, BackendError> {
        let (head, body) = call.into_parts();
        let request = http::Request::from_parts(head, ());
        // A connection found broken before the request goes out is dialled again, once.
        let mut retried = false;
        let (number, mut send) = loop {
            let (number, send) = self.connection().await?;
            match send.ready().await {
                Ok(send) => break (number, send),
                Err(err) if !retried => {
                    tracing::debug!(backend = %self.describe(), error = %err, "backend connection gone; dialling again");
                    self.forget(number);
                    retried = true;
                }
                Err(err) => return Err(self.h2_error(number, err)),
            }
        };
        let (response, mut stream) =
            send.send_request(request, body.is_empty()).map_err(|err| self.h2_error(number, err))?;
        if !body.is_empty() {
            // h2 holds what the stream's window does not take yet and sends it as it opens.
            stream.send_data(body, true).map_err(|err| self.h2_error(number, err))?;
        }
        let response = response.await.map_err(|err| self.h2_error(number, err))?;
        Ok(response.map(|stream| ResponseBody::new(BackendBody { stream, done: false })))
    }

    fn h2_error(&self, number: u64, err: h2::Error) -> BackendError {
        if err.is_reset() && !err.is_go_away() {
            // The backend refused or cancelled this call: answered as gRPC maps the reason.
            return BackendError::Reset(tonic::Status::from_error(Box::new(err)));
        }
        self.forget(number);
        self.unreachable(err)
    }
}

fn forget(inner: &Inner, number: u64) {
    if let Ok(mut slot) = inner.connection.lock()
        && slot.as_ref().is_some_and(|(n, _)| *n == number)
    {
        *slot = None;
        set_up(inner, false);
    }
}

fn set_up(inner: &Inner, up: bool) {
    if let Some(gauge) = &inner.up {
        gauge.set(up);
    }
}

impl From<BackendError> for tonic::Status {
    fn from(err: BackendError) -> Self {
        err.into_status()
    }
}

impl crate::deadline::Named for Backend {
    fn name(&self) -> &str {
        self.describe()
    }
}

impl tower::Service<Call> for Backend {
    type Response = Response;
    type Error = BackendError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BackendError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let backend = self.clone();
        Box::pin(async move { backend.call(call).await })
    }
}

/// A backend's response body. A stream that breaks mid-way ends with a gRPC status in
/// trailers (`UNAVAILABLE`, or what the reset's reason maps to), so the caller reads a status
/// rather than a reset stream.
struct BackendBody {
    stream: h2::RecvStream,
    done: bool,
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.stream.is_end_stream() {
            match std::task::ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(Some(Ok(self.end_with(err)))),
                None => {}
            }
        }
        self.done = true;
        match std::task::ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Ok(self.end_with(err)))),
        }
    }

    /// True already for a trailers-only answer (the backend ended the stream with its headers):
    /// the proxy must then answer trailers-only too, as gRPC clients other than C-core read a
    /// status in headers only from a HEADERS frame that ends the stream.
    fn is_end_stream(&self) -> bool {
        self.done || self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl BackendBody {
    fn end_with(&mut self, err: h2::Error) -> Frame<Bytes> {
        self.done = true;
        let status = if err.is_reset() && !err.is_go_away() {
            tonic::Status::from_error(Box::new(err))
        } else {
            tonic::Status::unavailable(format!("the backend's connection broke during the call: {err}"))
        };
        let mut trailers = http::HeaderMap::new();
        let _ = status.add_header(&mut trailers);
        Frame::trailers(trailers)
    }
}
