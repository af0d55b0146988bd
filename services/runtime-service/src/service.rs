//! The `runtime.v1.RuntimeService` server: each RPC hands off to the module of its concern.
//! Exec, Attach and PortForward are the streaming server's; the proxy never routes them here.
//! Every RPC not built here answers `UNIMPLEMENTED` through the generated default methods.

use crate::{status, version};
use crisp_config::Config;
use crisp_containerd::Containerd;
use crisp_proto::cri::runtime_service_server::RuntimeService;
use crisp_proto::cri::*;
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

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(&self, _request: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(version::version()))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let verbose = request.into_inner().verbose;
        Ok(Response::new(status::status(&self.containerd, &self.config, verbose).await))
    }
}
