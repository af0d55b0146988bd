//! HTTP/2 on a unix socket.

use crate::Proxy;
use crisp_grpc_server::{AuthorityFix, DRAIN_TIMEOUT};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::UnixListener;

/// Serves `proxy` on `listener` until `shutdown` turns true, then lets the calls in flight
/// finish (for at most [`DRAIN_TIMEOUT`]). Every connection goes through [`AuthorityFix`]: a
/// client that names the socket path as its `:authority` is served like any other.
pub async fn serve(listener: UnixListener, proxy: Proxy, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(hyper_util::rt::TokioTimer::new());
    // What AuthorityFix re-encodes for (h2's default, pinned); and no headers of the proxy's own
    // on the backends' answers.
    http2.header_table_size(crisp_grpc_server::authority::HEADER_TABLE_SIZE);
    http2.auto_date_header(false);
    http2.max_pending_accept_reset_streams(crisp_grpc_server::MAX_PENDING_ACCEPT_RESET_STREAMS);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::warn!(error = %err, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let io = TokioIo::new(AuthorityFix::new(stream));
                let connection = http2.serve_connection(io, TowerToHyperService::new(proxy.clone()));
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(error = %err, "client connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("calls still in flight after {DRAIN_TIMEOUT:?}; closing them");
    }
}
