//! Routing by path.
//!
//! `/runtime.v1.ImageService/*` goes to the image service replicas,
//! `/runtime.v1.RuntimeService/{Exec,Attach,PortForward}` to the streaming server, every other
//! `/runtime.v1.RuntimeService/*` to the runtime service. Anything else is `UNIMPLEMENTED`
//! (and, on the ImageService-only socket, any RuntimeService path).
//!
//! The router reads the request message whole before it forwards the call (at most
//! [`MAX_MESSAGE_BYTES`](crisp_grpc_server::MAX_MESSAGE_BYTES) and its frame header): CRI has
//! no client-streaming RPC, so every request is one message, and a held request can be tried on
//! another replica. The call goes on with `:scheme`/`:authority` of `http://localhost` (the
//! backends are unix sockets; what the caller named its socket means nothing to them).

use crate::{Call, Response};
use bytes::Bytes;
use crisp_proto::{IMAGE_SERVICE_PREFIX, RUNTIME_SERVICE_PREFIX};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest request read: one CRI message of the largest size and its gRPC frame header.
const MAX_REQUEST: usize = crisp_grpc_server::MAX_MESSAGE_BYTES + 5;

/// Which CRI services a socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The CRI socket: both services.
    Cri,
    /// The kubelet's `imageServiceEndpoint`: the ImageService alone.
    ImagesOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Images,
    Runtime,
    Streaming,
}

fn route(path: &str) -> Option<Route> {
    if let Some(method) = path.strip_prefix(IMAGE_SERVICE_PREFIX) {
        return (!method.is_empty()).then_some(Route::Images);
    }
    match path.strip_prefix(RUNTIME_SERVICE_PREFIX)? {
        "" => None,
        "Exec" | "Attach" | "PortForward" => Some(Route::Streaming),
        _ => Some(Route::Runtime),
    }
}

/// The routing service over its three targets. Cheap to clone if they are.
#[derive(Clone)]
pub struct Router<I, R, S> {
    scope: Scope,
    images: I,
    runtime: R,
    streaming: S,
}

impl<I, R, S> Router<I, R, S> {
    pub fn new(scope: Scope, images: I, runtime: R, streaming: S) -> Self {
        Self { scope, images, runtime, streaming }
    }
}

/// The call as forwarded: method, path and headers as the caller sent them, a fixed
/// `http://localhost` for scheme and authority, and the whole request message.
async fn read_call<B>(request: http::Request<B>) -> Result<Call, tonic::Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut head, body) = request.into_parts();
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(http::uri::Authority::from_static("localhost"));
    uri.path_and_query = head.uri.path_and_query().cloned();
    head.uri = http::Uri::from_parts(uri).map_err(|err| tonic::Status::internal(format!("bad request URI: {err}")))?;
    let body = match http_body_util::Limited::new(body, MAX_REQUEST).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            return Err(tonic::Status::resource_exhausted(format!(
                "cannot read the request to {}: {err}",
                head.uri.path()
            )));
        }
    };
    Ok(http::Request::from_parts(head, body))
}

type Target = tonic::Status;

impl<I, R, S, B> tower::Service<http::Request<B>> for Router<I, R, S>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    I: tower::Service<Call, Response = Response, Error = Target> + Clone + Send + 'static,
    I::Future: Send,
    R: tower::Service<Call, Response = Response, Error = Target> + Clone + Send + 'static,
    R::Future: Send,
    S: tower::Service<Call, Response = Response, Error = Target> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let route = match route(path) {
            Some(Route::Images) => Route::Images,
            Some(_) if self.scope == Scope::ImagesOnly => {
                let status =
                    tonic::Status::unimplemented(format!("{path}: this socket serves only runtime.v1.ImageService"));
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
            Some(route) => route,
            None => {
                let status = tonic::Status::unimplemented(format!(
                    "unknown method {path}: crisp serves runtime.v1.RuntimeService and runtime.v1.ImageService"
                ));
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        };
        let (images, runtime, streaming) = match route {
            Route::Images => (Some(self.images.clone()), None, None),
            Route::Runtime => (None, Some(self.runtime.clone()), None),
            Route::Streaming => (None, None, Some(self.streaming.clone())),
        };
        Box::pin(async move {
            let result = match read_call(request).await {
                Err(status) => Err(status),
                Ok(call) => match (images, runtime, streaming) {
                    (Some(target), _, _) => target.oneshot(call).await,
                    (_, Some(target), _) => target.oneshot(call).await,
                    (_, _, Some(target)) => target.oneshot(call).await,
                    _ => Err(tonic::Status::internal("no target")),
                },
            };
            Ok(result.unwrap_or_else(tonic::Status::into_http))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn paths_route_to_their_service() {
        assert_eq!(route("/runtime.v1.ImageService/PullImage"), Some(Route::Images));
        assert_eq!(route("/runtime.v1.RuntimeService/Version"), Some(Route::Runtime));
        assert_eq!(route("/runtime.v1.RuntimeService/GetContainerEvents"), Some(Route::Runtime));
        assert_eq!(route("/runtime.v1.RuntimeService/Exec"), Some(Route::Streaming));
        assert_eq!(route("/runtime.v1.RuntimeService/Attach"), Some(Route::Streaming));
        assert_eq!(route("/runtime.v1.RuntimeService/PortForward"), Some(Route::Streaming));
        assert_eq!(route("/runtime.v1.RuntimeService/ExecSync"), Some(Route::Runtime));
        assert_eq!(route("/runtime.v1alpha2.RuntimeService/Version"), None);
        assert_eq!(route("/grpc.health.v1.Health/Check"), None);
        assert_eq!(route("/runtime.v1.ImageService/"), None);
    }

    /// A target that records what reached it and answers OK.
    #[derive(Clone)]
    struct Record(&'static str, Arc<Mutex<Vec<(String, String, Bytes)>>>);

    impl tower::Service<Call> for Record {
        type Response = Response;
        type Error = tonic::Status;
        type Future = std::future::Ready<Result<Response, tonic::Status>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, call: Call) -> Self::Future {
            let authority = call.uri().authority().map(|a| a.to_string()).unwrap_or_default();
            self.1.lock().unwrap().push((self.0.to_string(), authority, call.body().clone()));
            std::future::ready(Ok(tonic::Status::ok("").into_http()))
        }
    }

    fn request(path: &str) -> http::Request<http_body_util::Full<Bytes>> {
        http::Request::post(path).body(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\x01x"))).unwrap()
    }

    fn grpc_status(response: &Response) -> String {
        response.headers().get("grpc-status").unwrap().to_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn calls_reach_their_target_whole_with_a_valid_authority() {
        let seen = Arc::new(Mutex::new(vec![]));
        let router = Router::new(
            Scope::Cri,
            Record("images", seen.clone()),
            Record("runtime", seen.clone()),
            Record("streaming", seen.clone()),
        );
        for path in [
            "/runtime.v1.ImageService/ListImages",
            "/runtime.v1.RuntimeService/Version",
            "/runtime.v1.RuntimeService/Exec",
        ] {
            assert_eq!(grpc_status(&router.clone().oneshot(request(path)).await.unwrap()), "0");
        }
        let unknown = router.clone().oneshot(request("/runtime.v1alpha2.RuntimeService/Version")).await.unwrap();
        assert_eq!(grpc_status(&unknown), "12");
        let seen = seen.lock().unwrap();
        let targets: Vec<_> = seen.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(targets, ["images", "runtime", "streaming"]);
        assert!(seen.iter().all(|(_, authority, body)| authority == "localhost" && &body[..] == b"\0\0\0\0\x01x"));
    }

    #[tokio::test]
    async fn the_image_socket_refuses_runtime_calls() {
        let seen = Arc::new(Mutex::new(vec![]));
        let router = Router::new(
            Scope::ImagesOnly,
            Record("images", seen.clone()),
            Record("runtime", seen.clone()),
            Record("streaming", seen.clone()),
        );
        let response = router.clone().oneshot(request("/runtime.v1.RuntimeService/Version")).await.unwrap();
        assert_eq!(grpc_status(&response), "12");
        let response = router.oneshot(request("/runtime.v1.ImageService/ListImages")).await.unwrap();
        assert_eq!(grpc_status(&response), "0");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
