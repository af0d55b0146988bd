//! The front proxy, as a short stack of named pieces:
//!
//! - [`serve`]: HTTP/2 on a unix socket, each connection served by the stack below.
//! - [`RpcTraceLayer`](crisp_telemetry::RpcTraceLayer) (forwarding): a span per call that
//!   continues the caller's trace and hands it on to the backend.
//! - [`Router`]: picks the backend by the call's path (`/runtime.v1.ImageService/...` and so
//!   on); an unknown path answers `UNIMPLEMENTED`.
//! - [`deadline`]: the caller's `grpc-timeout` is forwarded unchanged and also enforced here,
//!   so a call never outlives its deadline even if a backend ignores it.
//! - [`ImagePool`]: the image service replicas, health-checked, calls spread over the healthy.
//! - [`Backend`]: one backend's socket; a backend that is down answers `UNAVAILABLE` naming it.
//!
//! Messages are never decoded: bodies, trailers, status codes and metadata pass through.

mod backend;
pub mod deadline;
mod pool;
mod route;
mod server;

pub use backend::Backend;
pub use pool::ImagePool;
pub use route::{Backends, Router};
pub use server::serve;

/// The body of every response the proxy gives: a backend's, passed through, or its own status.
pub type ResponseBody = tonic::body::Body;
/// A response the proxy gives.
pub type Response = http::Response<ResponseBody>;
