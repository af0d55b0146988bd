//! The image service's errors, each with its gRPC code. A pull's error always names the image.

use crate::hosts::HostsError;
use crate::registry::RegistryError;
use crate::registry::auth::BadAuthField;
use crate::unpack::UnpackError;
use crisp_containerd::ContainerdError;
use crisp_errors::GrpcError;
use crisp_image_model::{ReferenceError, StoreError};
use std::time::Duration;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{0}")]
    MissingField(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// A failure of an RPC about one image (status, remove), naming it.
    #[error("image {image}")]
    About {
        image: String,
        #[source]
        source: Box<ImageError>,
    },
    #[error("pulling image {image}")]
    Pull {
        image: String,
        #[source]
        source: std::sync::Arc<PullError>,
    },
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Auth(#[from] BadAuthField),
    #[error("registry host configuration")]
    Hosts(#[from] HostsError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("{what} {digest} does not match its digest: the registry sent {detail}; nothing of it was kept")]
    DigestMismatch { what: &'static str, digest: String, detail: String },
    #[error("{what} {digest} is malformed: {detail}")]
    Malformed { what: &'static str, digest: String, detail: String },
    #[error("unsupported manifest media type `{0}`")]
    UnsupportedMediaType(String),
    #[error("the image index has no manifest for platform {0}")]
    NoPlatform(String),
    #[error("the caller's deadline passed after {0:?}")]
    DeadlineExceeded(Duration),
    #[error(
        "no progress for {window:?} (less than {min_bytes} bytes downloaded in that window, no blob completed): the pull is stalled"
    )]
    Stalled { window: Duration, min_bytes: u64 },
    #[error("the pull was cancelled")]
    Cancelled,
    #[error("internal: {0}")]
    Internal(String),
}

impl GrpcError for PullError {
    fn code(&self) -> Code {
        match self {
            PullError::Auth(_) => Code::InvalidArgument,
            PullError::Hosts(_) => Code::FailedPrecondition,
            PullError::Registry(err) => err.code(),
            PullError::Containerd(err) => err.code(),
            PullError::Unpack(err) => err.code(),
            PullError::DigestMismatch { .. } => Code::DataLoss,
            PullError::Malformed { .. } => Code::InvalidArgument,
            PullError::UnsupportedMediaType(_) => Code::InvalidArgument,
            PullError::NoPlatform(_) => Code::NotFound,
            PullError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            PullError::Stalled { .. } => Code::Unavailable,
            PullError::Cancelled => Code::Cancelled,
            PullError::Internal(_) => Code::Internal,
        }
    }
}

impl GrpcError for ImageError {
    fn code(&self) -> Code {
        match self {
            ImageError::Reference(_) | ImageError::MissingField(_) => Code::InvalidArgument,
            ImageError::Store(err) => store_code(err),
            ImageError::Containerd(err) => err.code(),
            ImageError::Pull { source, .. } => source.code(),
            ImageError::About { source, .. } => source.code(),
        }
    }
}

fn store_code(err: &StoreError) -> Code {
    match err {
        StoreError::Containerd(err) => err.code(),
        StoreError::Corrupt { .. } => Code::DataLoss,
    }
}

impl ImageError {
    /// This error, naming `image` unless it does already.
    pub fn about(self, image: &str) -> ImageError {
        match self {
            err @ (ImageError::Reference(_) | ImageError::Pull { .. } | ImageError::About { .. }) => err,
            err => ImageError::About { image: image.to_string(), source: Box::new(err) },
        }
    }
}

impl From<ImageError> for tonic::Status {
    fn from(err: ImageError) -> Self {
        crisp_errors::to_status(&err)
    }
}
