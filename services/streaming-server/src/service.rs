//! The streaming server's side of `runtime.v1.RuntimeService`. It owns Exec, Attach and
//! PortForward, which a later piece of work builds; every other RPC belongs to the runtime
//! service and is never routed here.

use crisp_proto::cri::runtime_service_server::RuntimeService;
use crisp_proto::cri::*;
use std::pin::Pin;
use tonic::{Request, Response, Status};

pub struct Streaming;

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

/// The RPCs built here (none yet); every other one answers `UNIMPLEMENTED`.
macro_rules! not_built {
    ($($rpc:tt)*) => { crisp_proto::unimplemented_rpcs! { $($rpc)*; } };
}

#[tonic::async_trait]
impl RuntimeService for Streaming {
    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _request: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(Status::unimplemented("GetContainerEvents is served by the runtime service"))
    }

    crisp_proto::for_each_runtime_rpc!(not_built);
}
