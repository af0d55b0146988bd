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

/// Calls `$callback! { method(Request) -> Response }` once for every unary RPC of
/// `runtime.v1.RuntimeService` (GetContainerEvents, a stream, is left to each implementer).
/// With a local callback that matches the RPCs a service builds and hands the rest to
/// [`unimplemented_rpcs!`], an implementation lists only what it builds:
///
/// ```ignore
/// macro_rules! not_built {
///     (version $($rest:tt)*) => {};
///     ($($rpc:tt)*) => { crisp_proto::unimplemented_rpcs! { $($rpc)*; } };
/// }
/// #[tonic::async_trait]
/// impl RuntimeService for Runtime {
///     async fn version(...) { ... }
///     crisp_proto::for_each_runtime_rpc!(not_built);
/// }
/// ```
#[macro_export]
macro_rules! for_each_runtime_rpc {
    ($callback:ident) => {
        $callback! { version(VersionRequest) -> VersionResponse }
        $callback! { run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse }
        $callback! { stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse }
        $callback! { remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse }
        $callback! { pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse }
        $callback! { list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse }
        $callback! { create_container(CreateContainerRequest) -> CreateContainerResponse }
        $callback! { start_container(StartContainerRequest) -> StartContainerResponse }
        $callback! { stop_container(StopContainerRequest) -> StopContainerResponse }
        $callback! { remove_container(RemoveContainerRequest) -> RemoveContainerResponse }
        $callback! { list_containers(ListContainersRequest) -> ListContainersResponse }
        $callback! { container_status(ContainerStatusRequest) -> ContainerStatusResponse }
        $callback! { update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse }
        $callback! { reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse }
        $callback! { exec_sync(ExecSyncRequest) -> ExecSyncResponse }
        $callback! { exec(ExecRequest) -> ExecResponse }
        $callback! { attach(AttachRequest) -> AttachResponse }
        $callback! { port_forward(PortForwardRequest) -> PortForwardResponse }
        $callback! { container_stats(ContainerStatsRequest) -> ContainerStatsResponse }
        $callback! { list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse }
        $callback! { pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse }
        $callback! { list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse }
        $callback! { update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse }
        $callback! { status(StatusRequest) -> StatusResponse }
        $callback! { checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse }
        $callback! { list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse }
        $callback! { list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse }
        $callback! { runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse }
    };
}
