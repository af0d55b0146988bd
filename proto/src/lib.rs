//! The gRPC APIs every crisp service shares.
//!
//! [`cri`] is the Kubernetes CRI `runtime.v1` API (cri-api v0.32), taken from the `k8s-cri`
//! crate with its tonic clients and servers. crisp's own internal APIs, when services need to
//! meet over gRPC, live beside it in this crate.

/// The CRI `runtime.v1` messages, `RuntimeService` and `ImageService`.
pub use k8s_cri::v1 as cri;

/// The gRPC path prefix of the CRI runtime service.
pub const RUNTIME_SERVICE_PREFIX: &str = "/runtime.v1.RuntimeService/";
/// The gRPC path prefix of the CRI image service.
pub const IMAGE_SERVICE_PREFIX: &str = "/runtime.v1.ImageService/";
/// The fully qualified gRPC service names, as the health service knows them.
pub const RUNTIME_SERVICE_NAME: &str = "runtime.v1.RuntimeService";
pub const IMAGE_SERVICE_NAME: &str = "runtime.v1.ImageService";

/// Writes trait methods, inside a `#[tonic::async_trait] impl` of a CRI service trait, that
/// answer `UNIMPLEMENTED` for RPCs crisp does not build yet. Each entry is
/// `method(RequestType) -> ResponseType;` with types from [`cri`]. The methods are written in
/// the shape `async_trait` gives trait methods, since it does not expand macros.
#[macro_export]
macro_rules! unimplemented_rpcs {
    ($($method:ident($request:ident) -> $response:ident;)*) => {
        $(
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _request: ::tonic::Request<$crate::cri::$request>,
            ) -> ::core::pin::Pin<Box<dyn ::core::future::Future<
                Output = ::core::result::Result<::tonic::Response<$crate::cri::$response>, ::tonic::Status>,
            > + ::core::marker::Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async {
                    Err(::tonic::Status::unimplemented(concat!(
                        "crisp does not implement ", stringify!($method), " yet"
                    )))
                })
            }
        )*
    };
}
