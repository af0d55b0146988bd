//! The runtime service's errors, each with its gRPC code.

use crisp_errors::GrpcError;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Containerd(#[from] crisp_containerd::ContainerdError),
}

impl GrpcError for RuntimeError {
    fn code(&self) -> Code {
        match self {
            RuntimeError::Containerd(err) => err.code(),
        }
    }
}

impl From<RuntimeError> for tonic::Status {
    fn from(err: RuntimeError) -> Self {
        crisp_errors::to_status(&err)
    }
}
