//! The `runtime.v1.RuntimeService` server: each RPC hands off to the module of its concern.
//! Exec, Attach and PortForward are the streaming server's; the proxy never routes them here.

use crate::{status, version};
use crisp_config::Config;
use crisp_containerd::Containerd;
use crisp_proto::cri::runtime_service_server::RuntimeService;
use crisp_proto::cri::*;
use std::pin::Pin;
use tonic::{Request, Response, Status};

pub struct Runtime {
    containerd: Containerd,
    config: Config,
}

impl Runtime {
    pub fn new(containerd: Containerd, config: Config) -> Self {
        Self { containerd, config }
    }
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

/// The RPCs built here; every other one answers `UNIMPLEMENTED`.
macro_rules! not_built {
    (version $($rest:tt)*) => {};
    (status $($rest:tt)*) => {};
    ($($rpc:tt)*) => { crisp_proto::unimplemented_rpcs! { $($rpc)*; } };
}

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(&self, _request: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(version::version()))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let verbose = request.into_inner().verbose;
        Ok(Response::new(status::status(&self.containerd, &self.config, verbose).await))
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _request: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(crisp_errors::unimplemented("GetContainerEvents"))
    }

    crisp_proto::for_each_runtime_rpc!(not_built);
}
