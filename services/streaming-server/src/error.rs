//! What the streaming RPCs can fail with, and the gRPC code of each (mapped to a
//! `tonic::Status` only by `crisp_errors::to_status`).

use crisp_containerd::ContainerdError;
use crisp_errors::GrpcError;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("pod sandbox {0} not found")]
    PodNotFound(String),
    #[error("pod sandbox {0} is not ready")]
    PodNotReady(String),
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("container {id} is not running (state {state})")]
    ContainerNotRunning { id: String, state: String },
    #[error("too many streaming URLs in flight ({0}); retry once some are used or expired")]
    TooManyTokens(usize),
    #[error("the record of {id} is unreadable: {reason}")]
    Record { id: String, reason: String },
    #[error("{what}")]
    Containerd {
        what: String,
        #[source]
        source: ContainerdError,
    },
}

impl GrpcError for StreamingError {
    fn code(&self) -> Code {
        match self {
            StreamingError::Invalid(_) => Code::InvalidArgument,
            StreamingError::PodNotFound(_) | StreamingError::ContainerNotFound(_) => Code::NotFound,
            StreamingError::PodNotReady(_) | StreamingError::ContainerNotRunning { .. } => Code::FailedPrecondition,
            StreamingError::TooManyTokens(_) => Code::ResourceExhausted,
            StreamingError::Record { .. } => Code::Internal,
            StreamingError::Containerd { source, .. } => {
                if source.is_transport() {
                    Code::Unavailable
                } else {
                    Code::Unknown
                }
            }
        }
    }
}

impl StreamingError {
    pub fn containerd(what: impl Into<String>) -> impl FnOnce(ContainerdError) -> Self {
        let what = what.into();
        move |source| StreamingError::Containerd { what, source }
    }
}
