//! Every crisp error type says which gRPC code it is ([`GrpcError`]); [`to_status`] is the one
//! place where an error becomes the `tonic::Status` a CRI client sees. The message carries the
//! whole chain of causes, so the client learns what was wrong without reading crisp's logs.

use std::error::Error;
use tonic::{Code, Status};

/// An error that knows the gRPC status code it answers with.
pub trait GrpcError: Error {
    fn code(&self) -> Code;
}

/// The message of an error and of every cause under it, joined by `: `. A cause whose text
/// the error's own message already carries is not repeated.
pub fn message_chain(err: &dyn Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The longest status message crisp sends, in bytes. A message names what the request got
/// wrong and may echo it (an id, a reference); a request of megabytes must not become a
/// `grpc-message` trailer of megabytes, which HTTP/2 clients refuse as a flood of
/// CONTINUATION frames and the call then ends with no status at all.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// The status a client sees for `err`.
pub fn to_status<E: GrpcError>(err: &E) -> Status {
    Status::new(err.code(), bounded(message_chain(err)))
}

/// `message` cut to [`MAX_MESSAGE_BYTES`] (at a character boundary), saying how much was cut.
fn bounded(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let total = message.len();
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&format!("… ({} more bytes)", total - end));
    message
}

/// The `UNIMPLEMENTED` answer for an RPC (or a part of one) a later piece of work builds. The
/// generated CRI servers' default methods (crisp-proto's build.rs) answer with this same wording,
/// which crisp-proto's `default_stubs` test checks.
pub fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by crisp yet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Inner;
    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection refused")
        }
    }
    impl Error for Inner {}

    #[derive(Debug)]
    struct Outer(Inner);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cannot reach containerd")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }
    impl GrpcError for Outer {
        fn code(&self) -> Code {
            Code::Unavailable
        }
    }

    #[test]
    fn a_long_message_is_cut_at_a_character_boundary_saying_so() {
        let long = format!("container `{}` not found", "é".repeat(5000));
        let cut = bounded(long.clone());
        assert!(cut.len() < MAX_MESSAGE_BYTES + 32, "{}", cut.len());
        assert!(cut.starts_with("container `éé"));
        // 11 ASCII bytes then 2-byte characters: the cut falls at 4095, one byte short of the bound.
        assert!(cut.ends_with(&format!("… ({} more bytes)", long.len() - (MAX_MESSAGE_BYTES - 1))), "{cut}");
        assert_eq!(bounded("short".into()), "short");
    }

    #[test]
    fn status_carries_code_and_causes() {
        let status = to_status(&Outer(Inner));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "cannot reach containerd: connection refused");
    }
}
