//! Dialling a gRPC service on a unix socket: [`unix_channel`] for a crisp service's socket,
//! [`unix_channel_with_backoff`] for a peer that may be away a while (containerd). Serving is
//! `crisp-grpc-server`'s job; this crate is what a client (the containerd layer, the proxy, the
//! test kit) needs and nothing more.

use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Endpoint, Uri};

/// The first wait after a failed dial; it doubles with each further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two dials.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A tonic channel to the unix socket at `path`. Nothing is dialled until the first call; a
/// broken connection is dialled again on the next call, and a call that cannot connect fails
/// at once (after at most `connect_timeout`).
pub fn unix_channel(path: &Path, connect_timeout: Duration) -> tonic::transport::Channel {
    channel(path, connect_timeout, None)
}

/// Like [`unix_channel`], for a peer that may be away for a while (containerd restarting):
/// after a failed dial, calls fail at once without dialling until a backoff has passed (100 ms,
/// doubling to 2 s, reset by a successful dial). Losing and regaining the peer is logged once
/// each, naming it as `peer`.
pub fn unix_channel_with_backoff(
    path: &Path,
    connect_timeout: Duration,
    peer: &'static str,
) -> tonic::transport::Channel {
    channel(path, connect_timeout, Some(peer))
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    next_dial: Option<Instant>,
}

fn channel(path: &Path, connect_timeout: Duration, backoff_for: Option<&'static str>) -> tonic::transport::Channel {
    let path: PathBuf = path.to_path_buf();
    let backoff = Arc::new(Mutex::new(Backoff::default()));
    // The URI is required by the builder but unused: the connector dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(connect_timeout)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            let backoff = backoff.clone();
            async move {
                let Some(peer) = backoff_for else {
                    return tokio::net::UnixStream::connect(&path).await.map(TokioIo::new);
                };
                let next_dial = backoff.lock().map(|b| b.next_dial).unwrap_or(None);
                if let Some(at) = next_dial {
                    let now = Instant::now();
                    if now < at {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            format!("{peer} at {} is unreachable; next attempt in {:?}", path.display(), at - now),
                        ));
                    }
                }
                let result = tokio::net::UnixStream::connect(&path).await;
                if let Ok(mut b) = backoff.lock() {
                    match &result {
                        Ok(_) => {
                            if b.failures > 0 {
                                tracing::info!(peer, path = %path.display(), "reconnected");
                            }
                            *b = Backoff::default();
                        }
                        Err(err) => {
                            if b.failures == 0 {
                                tracing::warn!(peer, path = %path.display(), error = %err, "cannot connect; retrying with backoff");
                            }
                            let delay = FIRST_BACKOFF.saturating_mul(1 << b.failures.min(5)).min(MAX_BACKOFF);
                            b.failures = b.failures.saturating_add(1);
                            b.next_dial = Some(Instant::now() + delay);
                        }
                    }
                }
                result.map(TokioIo::new)
            }
        }))
}
