//! The caller's deadline, as a layer over one target (a backend or the image pool).
//!
//! gRPC carries it as `grpc-timeout` (read by [`crisp_grpc_server::timeout`]). The header is
//! forwarded unchanged, so the backend knows its deadline, and [`Deadline`] also keeps it: a
//! target that has not answered by then gets `DEADLINE_EXCEEDED` answered for it (the call is
//! dropped, which resets the backend's stream and cancels its work), and a stream still running
//! then is ended with `DEADLINE_EXCEEDED` trailers. A deadline that passes is the caller's: the
//! target below sees only a cancelled call, never a failure of its own.
//!
//! A tonic server (every crisp backend) answers its own expiry of `grpc-timeout` with
//! `CANCELLED` ("Timeout expired"), where gRPC (and grpc-go's server, containerd's) says
//! `DEADLINE_EXCEEDED`; a backend that beats the proxy's timer by a hair would hand the caller
//! that. So a `CANCELLED` answer that arrives once the deadline has passed is answered
//! `DEADLINE_EXCEEDED`: the caller did not cancel (it is still waiting), its deadline ran out.

use crate::{Call, Response};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

/// What a target is called in messages (`runtime service at /run/crisp/runtime.sock`).
pub trait Named {
    fn name(&self) -> &str;
}

/// The `DEADLINE_EXCEEDED` status, naming where the call was.
pub fn exceeded(target: &str) -> tonic::Status {
    tonic::Status::deadline_exceeded(format!("deadline exceeded before the {target} finished the call"))
}

/// Puts a [`Deadline`] over a target.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S> tower::Service<Call> for Deadline<S>
where
    S: tower::Service<Call, Response = Response> + Named + Clone + Send + 'static,
    S::Error: Into<tonic::Status>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = tonic::Status;
    type Future = Pin<Box<dyn Future<Output = Result<Response, tonic::Status>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let Some(timeout) = crisp_grpc_server::timeout::from_headers(call.headers()) else {
            let future = self.inner.call(call);
            return Box::pin(async move { future.await.map_err(Into::into) });
        };
        let deadline = Instant::now() + timeout;
        let name = self.inner.name().to_string();
        let future = self.inner.call(call);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, future).await {
                Ok(Ok(response)) if is_cancelled(&response) && Instant::now() >= deadline => Err(exceeded(&name)),
                Ok(Ok(response)) => {
                    Ok(response.map(|body| crate::ResponseBody::new(DeadlineBody::new(body, deadline, name))))
                }
                Ok(Err(err)) => Err(err.into()),
                Err(_) => Err(exceeded(&name)),
            }
        })
    }
}

/// A trailers-only `CANCELLED` answer.
fn is_cancelled(response: &Response) -> bool {
    response.headers().get("grpc-status").is_some_and(|code| code.as_bytes() == b"1")
}

pin_project! {
    /// A response body that ends with `DEADLINE_EXCEEDED` trailers at the deadline.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        target: String,
        done: bool,
    }
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, deadline: Instant, target: String) -> Self {
        Self { inner, sleep: tokio::time::sleep_until(deadline), target, done: false }
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
            if let Err(err) = exceeded(this.target).add_header(&mut trailers) {
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A target that answers `answer` after `delay` and counts the calls that ran to the end.
    #[derive(Clone)]
    struct Slow {
        delay: Duration,
        finished: Arc<AtomicUsize>,
        answer: tonic::Code,
    }

    impl Named for Slow {
        fn name(&self) -> &str {
            "slow service"
        }
    }

    impl tower::Service<Call> for Slow {
        type Response = Response;
        type Error = tonic::Status;
        type Future = Pin<Box<dyn Future<Output = Result<Response, tonic::Status>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _call: Call) -> Self::Future {
            let (delay, finished, answer) = (self.delay, self.finished.clone(), self.answer);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                finished.fetch_add(1, Ordering::Relaxed);
                Ok(tonic::Status::new(answer, "Timeout expired").into_http())
            })
        }
    }

    fn call_with_timeout(timeout: Option<&'static str>) -> Call {
        let mut call = http::Request::new(Bytes::new());
        if let Some(timeout) = timeout {
            call.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static(timeout));
        }
        call
    }

    fn grpc_status(response: &Response) -> Option<&str> {
        response.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_past_the_deadline_is_answered_deadline_exceeded_and_cancelled() {
        use tower::ServiceExt;
        let finished = Arc::new(AtomicUsize::new(0));
        let slow = Slow { delay: Duration::from_secs(10), finished: finished.clone(), answer: tonic::Code::Ok };
        let service = tower::Layer::layer(&DeadlineLayer, slow);
        let status = service.clone().oneshot(call_with_timeout(Some("100m"))).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(status.message(), "deadline exceeded before the slow service finished the call");
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(finished.load(Ordering::Relaxed), 0, "the call was not cancelled");

        let response = service.clone().oneshot(call_with_timeout(Some("20S"))).await.unwrap();
        assert_eq!(grpc_status(&response), Some("0"));
        let response = service.oneshot(call_with_timeout(None)).await.unwrap();
        assert_eq!(grpc_status(&response), Some("0"));
        assert_eq!(finished.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_cancelling_at_the_deadline_is_deadline_exceeded() {
        use tower::ServiceExt;
        let finished = Arc::new(AtomicUsize::new(0));
        // The backend's own timer fires with the proxy's: it answers CANCELLED at the deadline.
        let service = tower::Layer::layer(
            &DeadlineLayer,
            Slow { delay: Duration::from_millis(100), finished, answer: tonic::Code::Cancelled },
        );
        let status = service.clone().oneshot(call_with_timeout(Some("100m"))).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        // Before the deadline, CANCELLED is the backend's answer and passes through.
        let response = service.oneshot(call_with_timeout(Some("5S"))).await.unwrap();
        assert_eq!(grpc_status(&response), Some("1"));
    }
}
