//! The streaming server's side of `runtime.v1.RuntimeService`: Exec, Attach and PortForward
//! check the request (as api.proto states it) and answer the URL of a single-use session on
//! the HTTP streaming server. The proxy routes only these three RPCs here; every other one
//! answers `UNIMPLEMENTED` through the generated defaults.

use crate::error::StreamingError;
use crate::lookup;
use crate::server::Sessions;
use crate::tokens::Issued;
use crisp_errors::to_status;
use crisp_proto::cri::runtime_service_server::RuntimeService;
use crisp_proto::cri::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest, PortForwardResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct Streaming {
    sessions: Arc<Sessions>,
    /// `http://<address>:<port>`.
    base_url: String,
}

impl Streaming {
    pub fn new(sessions: Arc<Sessions>, base_url: String) -> Self {
        Self { sessions, base_url }
    }

    fn url_for(&self, issued: Issued) -> Result<String, StreamingError> {
        let kind = issued.kind();
        let token = self.sessions.tokens.issue(issued).map_err(|full| StreamingError::TooManyTokens(full.0))?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    async fn exec_url(&self, request: ExecRequest) -> Result<String, StreamingError> {
        if request.container_id.is_empty() {
            return Err(StreamingError::Invalid("container_id is required".into()));
        }
        if request.cmd.is_empty() {
            return Err(StreamingError::Invalid("cmd is required".into()));
        }
        check_streams(request.stdin, request.stdout, request.stderr, request.tty)?;
        lookup::running_container(&self.sessions.containerd, &request.container_id).await?;
        self.url_for(Issued::Exec(request))
    }

    async fn attach_url(&self, request: AttachRequest) -> Result<String, StreamingError> {
        if request.container_id.is_empty() {
            return Err(StreamingError::Invalid("container_id is required".into()));
        }
        check_streams(request.stdin, request.stdout, request.stderr, request.tty)?;
        lookup::running_container(&self.sessions.containerd, &request.container_id).await?;
        self.url_for(Issued::Attach(request))
    }

    async fn port_forward_url(&self, request: PortForwardRequest) -> Result<String, StreamingError> {
        if request.pod_sandbox_id.is_empty() {
            return Err(StreamingError::Invalid("pod_sandbox_id is required".into()));
        }
        if let Some(port) = request.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(StreamingError::Invalid(format!("port {port} is out of range")));
        }
        lookup::ready_pod(&self.sessions.containerd, &request.pod_sandbox_id).await?;
        self.url_for(Issued::PortForward(request))
    }
}

/// api.proto: one of stdin, stdout and stderr must be true; with a TTY stderr must be false.
fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), StreamingError> {
    if tty && stderr {
        return Err(StreamingError::Invalid("tty and stderr cannot both be true".into()));
    }
    if !stdin && !stdout && !stderr {
        return Err(StreamingError::Invalid("one of stdin, stdout and stderr must be true".into()));
    }
    Ok(())
}

#[tonic::async_trait]
impl RuntimeService for Streaming {
    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let url = self.exec_url(request.into_inner()).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(ExecResponse { url }))
    }

    async fn attach(&self, request: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        let url = self.attach_url(request.into_inner()).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let url = self.port_forward_url(request.into_inner()).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(PortForwardResponse { url }))
    }
}
