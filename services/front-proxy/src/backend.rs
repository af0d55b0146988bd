//! One backend: a crisp service on a unix socket.

use crate::Response;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tower::{Service, ServiceExt};

/// A backend service, reached over one HTTP/2 connection to its socket (dialled again after a
/// failure). Cheap to clone.
#[derive(Clone)]
pub struct Backend {
    name: String,
    socket: PathBuf,
    channel: tonic::transport::Channel,
}

impl Backend {
    /// `name` says what the backend is in error messages and logs (`runtime service`).
    pub fn new(name: impl Into<String>, socket: &Path, connect_timeout: Duration) -> Self {
        Self {
            name: name.into(),
            socket: socket.to_path_buf(),
            channel: crisp_grpc_server::unix_channel(socket, connect_timeout),
        }
    }

    /// `<name> at <socket>`, as error messages name it.
    pub fn describe(&self) -> String {
        format!("{} at {}", self.name, self.socket.display())
    }

    pub fn channel(&self) -> tonic::transport::Channel {
        self.channel.clone()
    }

    /// Forwards one call. An error means the backend could not be reached or the connection
    /// broke: the answer is `UNAVAILABLE` naming the backend. A gRPC error the backend gives
    /// is a normal response and passes through.
    pub async fn call(&self, request: http::Request<tonic::body::Body>) -> Result<Response, tonic::Status> {
        let mut channel = self.channel.clone();
        let result = match channel.ready().await {
            Ok(ready) => ready.call(request).await,
            Err(err) => Err(err),
        };
        result.map_err(|err| {
            if is_timeout(&err) {
                // The channel keeps the call's `grpc-timeout` too; that is the caller's deadline.
                return crate::deadline::exceeded(&self.describe());
            }
            tracing::warn!(backend = %self.describe(), error = %crisp_errors::message_chain(&err), "backend unavailable");
            tonic::Status::unavailable(format!("{} is unavailable: {}", self.describe(), crisp_errors::message_chain(&err)))
        })
    }
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cause = err.source();
    }
    false
}
