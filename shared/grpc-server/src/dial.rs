//! Dialling a gRPC service on a unix socket.

use hyper_util::rt::TokioIo;
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Endpoint, Uri};

/// A tonic channel to the unix socket at `path`. Nothing is dialled until the first call; a
/// broken connection is dialled again on the next call, and a call that cannot connect fails
/// at once (after at most `connect_timeout`).
pub fn unix_channel(path: &Path, connect_timeout: Duration) -> tonic::transport::Channel {
    let path = path.to_path_buf();
    // The URI is required by the builder but unused: the connector dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(connect_timeout)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
}

