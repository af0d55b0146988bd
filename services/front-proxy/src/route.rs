//! Routing by path.
//!
//! `/runtime.v1.ImageService/*` goes to the image service replicas,
//! `/runtime.v1.RuntimeService/{Exec,Attach,PortForward}` to the streaming server, every other
//! `/runtime.v1.RuntimeService/*` to the runtime service. Anything else is `UNIMPLEMENTED`.

use crate::deadline::{self, DeadlineBody};
use crate::{Backend, ImagePool, Response};
use bytes::Bytes;
use crisp_config::ProxyConfig;
use crisp_proto::{IMAGE_SERVICE_PREFIX, RUNTIME_SERVICE_PREFIX};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// CRI requests to the image service are small; a larger one is refused rather than held.
const MAX_IMAGE_REQUEST: usize = 16 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every backend the proxy knows. Cheap to clone.
#[derive(Clone)]
pub struct Backends {
    pub images: ImagePool,
    pub runtime: Backend,
    pub streaming: Backend,
}

impl Backends {
    pub fn from_config(config: &ProxyConfig) -> Self {
        let timeout = config.connect_timeout;
        let replicas = config.image_endpoints.len();
        let images = config
            .image_endpoints
            .iter()
            .enumerate()
            .map(|(i, socket)| {
                let name =
                    if replicas == 1 { "image service".to_string() } else { format!("image service replica {i}") };
                Backend::new(name, socket, timeout)
            })
            .collect();
        Self {
            images: ImagePool::new(images),
            runtime: Backend::new("runtime service", &config.runtime_endpoint, timeout),
            streaming: Backend::new("streaming server", &config.streaming_endpoint, timeout),
        }
    }
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

/// The routing service. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    backends: Backends,
    images_only: bool,
}

impl Router {
    /// For the CRI socket: both CRI services.
    pub fn cri(backends: Backends) -> Self {
        Self { backends, images_only: false }
    }

    /// For the kubelet's `imageServiceEndpoint`: the ImageService alone.
    pub fn images_only(backends: Backends) -> Self {
        Self { backends, images_only: true }
    }

    async fn handle<B>(self, request: http::Request<B>) -> Response
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let path = request.uri().path().to_string();
        let route = match route(&path) {
            Some(Route::Images) => Route::Images,
            Some(_) if self.images_only => {
                return tonic::Status::unimplemented(format!(
                    "{path}: this socket serves only runtime.v1.ImageService"
                ))
                .into_http();
            }
            Some(route) => route,
            None => {
                return tonic::Status::unimplemented(format!(
                    "unknown method {path}: crisp serves runtime.v1.RuntimeService and runtime.v1.ImageService"
                ))
                .into_http();
            }
        };
        let backend_name = match route {
            Route::Images => "image service".to_string(),
            Route::Runtime => self.backends.runtime.describe(),
            Route::Streaming => self.backends.streaming.describe(),
        };
        let deadline = deadline::deadline_of(request.headers());

        let backends = self.backends;
        let forward = async move {
            match route {
                Route::Images => {
                    let (head, body) = request.into_parts();
                    let body = match http_body_util::Limited::new(body, MAX_IMAGE_REQUEST).collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(err) => {
                            return Err(tonic::Status::invalid_argument(format!(
                                "cannot read the request to {path}: {err}"
                            )));
                        }
                    };
                    backends.images.call(&head, body).await
                }
                Route::Runtime => backends.runtime.call(request.map(tonic::body::Body::new)).await,
                Route::Streaming => backends.streaming.call(request.map(tonic::body::Body::new)).await,
            }
        };
        let result = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, forward)
                .await
                .unwrap_or_else(|_| Err(deadline::exceeded(&backend_name))),
            None => forward.await,
        };
        match (result, deadline) {
            (Ok(response), Some(deadline)) => {
                response.map(|body| tonic::body::Body::new(DeadlineBody::new(body, deadline, backend_name)))
            }
            (Ok(response), None) => response,
            (Err(status), _) => status.into_http(),
        }
    }
}

impl<B> tower::Service<http::Request<B>> for Router
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let router = self.clone();
        Box::pin(async move { Ok(router.handle(request).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
