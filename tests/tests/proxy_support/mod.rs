//! What the proxy tests share: gRPC calls made with hyper alone, so that no client-side
//! deadline or message handling hides what the proxy answers, and any bytes can be sent.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::path::Path;

/// One HTTP/2 connection to a socket.
#[derive(Clone)]
pub struct RawClient {
    send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

/// What a call ended with: its gRPC status code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub code: i32,
    pub message: String,
}

/// A gRPC frame holding `message` (uncompressed).
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

impl RawClient {
    pub async fn connect(socket: &Path) -> anyhow::Result<RawClient> {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (send, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await?;
        tokio::spawn(connection);
        Ok(RawClient { send })
    }

    /// Sends `body` (gRPC frames, or any bytes) to `path`, with `grpc-timeout: timeout` if
    /// given, and reads the whole answer. `Err` is a transport failure (no gRPC status).
    pub async fn call(&self, path: &str, body: Bytes, timeout: Option<&str>) -> anyhow::Result<Ended> {
        let mut request = http::Request::post(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(timeout) = timeout {
            request = request.header("grpc-timeout", timeout);
        }
        let request = request.body(Full::new(body))?;
        let mut send = self.send.clone();
        send.ready().await?;
        let response = send.send_request(request).await?;
        let (head, body) = response.into_parts();
        if let Some(ended) = status_in(&head.headers) {
            // As grpc-go reads it: a status in the response head counts only in a trailers-only
            // answer, whose HEADERS frame ends the stream; otherwise the call "closed the stream
            // without sending trailers".
            anyhow::ensure!(
                hyper::body::Body::is_end_stream(&body),
                "a status in the headers of a stream that goes on (not trailers-only): {ended:?}"
            );
            return Ok(ended);
        }
        let collected = body.collect().await?;
        let trailers = collected.trailers().ok_or_else(|| anyhow::anyhow!("a response without trailers"))?;
        status_in(trailers).ok_or_else(|| anyhow::anyhow!("trailers without grpc-status: {trailers:?}"))
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<Ended> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).map(percent_decode).unwrap_or_default();
    Some(Ended { code, message })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a process is alive (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
