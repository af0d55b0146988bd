//! The caller's deadline.
//!
//! gRPC carries it as `grpc-timeout` (up to eight digits and a unit: `H`, `M`, `S`, `m`, `u`,
//! `n`). The proxy forwards the header unchanged, so the backend knows its deadline, and also
//! keeps it itself: a backend that has not answered by then gets `DEADLINE_EXCEEDED` answered
//! for it, and a stream still running then is ended with `DEADLINE_EXCEEDED` trailers (the
//! backend's stream is reset, which cancels its work).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Parses a `grpc-timeout` value.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// When a call with these headers must be over, if it has a deadline.
pub fn deadline_of(headers: &http::HeaderMap) -> Option<Instant> {
    let timeout = parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)?;
    Some(Instant::now() + timeout)
}

/// The `DEADLINE_EXCEEDED` status, naming where the call was.
pub fn exceeded(backend: &str) -> tonic::Status {
    tonic::Status::deadline_exceeded(format!("deadline exceeded before the {backend} finished the call"))
}

pin_project! {
    /// A response body that ends with `DEADLINE_EXCEEDED` trailers at the deadline.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        backend: String,
        done: bool,
    }
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, deadline: Instant, backend: String) -> Self {
        Self { inner, sleep: tokio::time::sleep_until(deadline), backend, done: false }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes, Error = tonic::Status>,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            if frame.is_none() {
                *this.done = true;
            }
            return Poll::Ready(frame);
        }
        if this.sleep.poll(cx).is_ready() {
            *this.done = true;
            let mut trailers = http::HeaderMap::new();
            if let Err(err) = exceeded(this.backend).add_header(&mut trailers) {
                return Poll::Ready(Some(Err(err)));
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("-1S"), None);
    }
}
