//! The one place where containerd's answers become crisp's errors.
//!
//! A failed call is a [`ContainerdError::Call`] naming what crisp was doing. Its gRPC code is
//! containerd's own, except that a call that never reached containerd (the socket is gone, the
//! connection broke) is `UNAVAILABLE`: that is found by the error's type, walking
//! [`std::error::Error::source`] to a transport, hyper or I/O error, never by words in the
//! message. Two answers containerd gives no code of their own to, and that crisp must tell
//! apart, are recognised here by their message, each with a unit test: an ingest another
//! writer holds ([`ContainerdError::is_locked`]) and content that did not match its expected
//! digest on commit ([`ContainerdError::is_digest_mismatch`]).

use crisp_errors::GrpcError;
use std::path::PathBuf;
use std::time::Duration;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd at {address} did not answer within {waited:?}: {source}")]
    NotReady { address: PathBuf, waited: Duration, source: Status },
    #[error("containerd namespace `{0}` is not valid gRPC metadata")]
    Namespace(String),
    #[error("containerd {operation}: {source}")]
    Call { operation: &'static str, source: Status },
}

impl ContainerdError {
    /// A failed containerd call, named by what crisp was doing.
    pub fn call(operation: &'static str, source: Status) -> Self {
        ContainerdError::Call { operation, source }
    }

    /// containerd's answer, when the error is a failed call.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ContainerdError::Call { source, .. } | ContainerdError::NotReady { source, .. } => Some(source),
            ContainerdError::Namespace(_) => None,
        }
    }

    /// containerd has no such object (image, blob, snapshot, lease, ingest...).
    pub fn is_not_found(&self) -> bool {
        self.code() == Code::NotFound
    }

    /// The object exists already (an image record, a committed blob or snapshot).
    pub fn is_already_exists(&self) -> bool {
        self.code() == Code::AlreadyExists
    }

    /// The call never reached containerd, or the connection broke under it.
    pub fn is_transport(&self) -> bool {
        self.status().is_some_and(is_transport_failure)
    }

    /// `content.Write` refused an ingest because another writer holds its ref. containerd
    /// answers `UNAVAILABLE` "ref … locked …" (its `errdefs.ErrUnavailable`); the code alone
    /// would not tell it from an unreachable containerd, so the message decides.
    pub fn is_locked(&self) -> bool {
        match self {
            ContainerdError::Call { source, .. } => {
                source.code() == Code::Unavailable
                    && !is_transport_failure(source)
                    && source.message().contains("locked")
            }
            _ => false,
        }
    }

    /// A content commit whose bytes did not hash to the expected digest. containerd answers
    /// `FAILED_PRECONDITION` "unexpected commit digest …" (`INVALID_ARGUMENT` in some
    /// versions), the code it also gives a wrong size; the message tells the two apart.
    pub fn is_digest_mismatch(&self) -> bool {
        match self {
            ContainerdError::Call { source, .. } => {
                matches!(source.code(), Code::FailedPrecondition | Code::InvalidArgument)
                    && source.message().contains("digest")
            }
            _ => false,
        }
    }
}

impl ContainerdError {
    /// The diff service could not read a layer as a tar archive (it ends inside a header or
    /// inside an entry's data, or a header is not a tar header). containerd answers `UNKNOWN`
    /// with Go's `archive/tar` error (`unexpected EOF`, `archive/tar: invalid tar header`, ...),
    /// the code it also gives a full disk, so the message decides.
    pub fn is_unreadable_archive(&self) -> bool {
        match self {
            ContainerdError::Call { source, .. } => {
                source.code() == Code::Unknown
                    && !is_transport_failure(source)
                    && (source.message().contains("unexpected EOF") || source.message().contains("archive/tar:"))
            }
            _ => false,
        }
    }
}

/// Whether `status` comes from the client's transport (no connection, a broken one) rather
/// than from containerd: its source chain holds a tonic transport, hyper or I/O error.
pub fn is_transport_failure(status: &Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = cause {
        if err.is::<tonic::transport::Error>() || err.is::<hyper::Error>() || err.is::<std::io::Error>() {
            return true;
        }
        cause = err.source();
    }
    false
}

impl GrpcError for ContainerdError {
    fn code(&self) -> Code {
        match self {
            ContainerdError::NotReady { .. } => Code::Unavailable,
            ContainerdError::Namespace(_) => Code::InvalidArgument,
            ContainerdError::Call { source, .. } if is_transport_failure(source) => Code::Unavailable,
            ContainerdError::Call { source, .. } => source.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn call(status: Status) -> ContainerdError {
        ContainerdError::call("test", status)
    }

    #[test]
    fn containerds_own_codes_carry_over() {
        assert_eq!(call(Status::not_found("image \"x\": not found")).code(), Code::NotFound);
        assert!(call(Status::not_found("x")).is_not_found());
        assert!(call(Status::already_exists("snapshot sha256:aa: already exists")).is_already_exists());
        assert_eq!(call(Status::failed_precondition("x")).code(), Code::FailedPrecondition);
        // A message that mentions the transport is still containerd's answer.
        assert_eq!(call(Status::unknown("transport is closing")).code(), Code::Unknown);
    }

    #[test]
    fn a_transport_failure_is_unavailable_by_its_type() {
        let mut status = Status::unknown("error trying to connect");
        status.set_source(Arc::new(std::io::Error::from(std::io::ErrorKind::NotFound)));
        let err = call(status);
        assert!(err.is_transport());
        assert_eq!(err.code(), Code::Unavailable);
    }

    #[test]
    fn a_transport_failure_deep_in_the_chain_is_found() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapped(#[source] std::io::Error);
        let mut status = Status::unknown("wrapped");
        status.set_source(Arc::new(Wrapped(std::io::Error::from(std::io::ErrorKind::ConnectionReset))));
        assert_eq!(call(status).code(), Code::Unavailable);
    }

    #[test]
    fn an_unreadable_layer_is_told_from_other_diff_failures() {
        let cut = Status::unknown("failed to extract layer sha256:ab: unexpected EOF");
        assert!(call(cut).is_unreadable_archive());
        let header = Status::unknown("apply layer error: archive/tar: invalid tar header");
        assert!(call(header).is_unreadable_archive());
        assert!(!call(Status::unknown("write /var/lib/x: no space left on device")).is_unreadable_archive());
        assert!(!call(Status::not_found("content digest sha256:ab: not found")).is_unreadable_archive());
    }

    #[test]
    fn a_locked_ingest_is_told_from_an_unreachable_containerd() {
        let locked =
            Status::unavailable("ref layer-sha256:ab locked for 1.2s (since 2026-11-29 00:00:00): unavailable");
        assert!(call(locked).is_locked());
        assert!(!call(Status::unavailable("connection refused")).is_locked());
        let mut away = Status::unavailable("locked");
        away.set_source(Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert!(!call(away).is_locked());
        assert!(!call(Status::failed_precondition("ref locked")).is_locked());
    }

    #[test]
    fn a_digest_mismatch_on_commit_is_told_from_a_size_mismatch() {
        let digest =
            Status::failed_precondition("unexpected commit digest sha256:aa, expected sha256:bb: failed precondition");
        assert!(call(digest).is_digest_mismatch());
        assert!(call(Status::invalid_argument("unexpected commit digest sha256:aa")).is_digest_mismatch());
        let size = Status::failed_precondition("unexpected commit size 3, expected 4: failed precondition");
        assert!(!call(size).is_digest_mismatch());
        assert!(!call(Status::not_found("digest sha256:aa")).is_digest_mismatch());
    }
}
