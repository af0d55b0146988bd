//! The gRPC APIs every crisp service shares.
//!
//! [`cri`] is the Kubernetes CRI `runtime.v1` API, generated at build time from
//! `vendor/cri-api/api.proto`: kubernetes/cri-api v0.36.3 (Kubernetes 1.36), vendored unchanged
//! (see `vendor/cri-api/README.md`). Its messages, clients and servers come from
//! tonic-prost-build; every server trait method has a default answering `UNIMPLEMENTED`
//! (`"<Rpc> is not implemented by crisp yet"`, the wording of `crisp_errors::unimplemented`), so
//! a service implements only the RPCs it builds. Fields api.proto marks `debug_redact`
//! (`AuthConfig`'s secrets) never appear in `Debug` output. crisp's own internal APIs, when
//! services need to meet over gRPC, live beside it in this crate.

mod redact;

/// The CRI `runtime.v1` messages, `RuntimeService` and `ImageService`.
// Generated code; its doc comments are api.proto's, as upstream wrote them.
#[allow(clippy::all, rustdoc::bare_urls, rustdoc::invalid_html_tags)]
pub mod cri {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
}

/// crisp's internal API between the runtime service and the streaming server
/// (`internal/container_io.proto`): a running container's stdio for Attach.
#[allow(clippy::all)]
pub mod internal {
    include!(concat!(env!("OUT_DIR"), "/crisp.internal.v1.rs"));
}

/// The gRPC path prefix of the CRI runtime service.
pub const RUNTIME_SERVICE_PREFIX: &str = "/runtime.v1.RuntimeService/";
/// The gRPC path prefix of the CRI image service.
pub const IMAGE_SERVICE_PREFIX: &str = "/runtime.v1.ImageService/";
/// The fully qualified gRPC service names, as the health service knows them.
pub const RUNTIME_SERVICE_NAME: &str = "runtime.v1.RuntimeService";
pub const IMAGE_SERVICE_NAME: &str = "runtime.v1.ImageService";
