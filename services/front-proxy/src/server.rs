//! HTTP/2 on a unix socket.

use crate::Router;
use crisp_grpc_server::DRAIN_TIMEOUT;
use crisp_telemetry::RpcTraceLayer;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::UnixListener;
use tower::Layer;

/// Serves `router` on `listener` until `shutdown` turns true, then lets the calls in flight
/// finish (for at most [`DRAIN_TIMEOUT`]).
pub async fn serve(listener: UnixListener, router: Router, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let service = RpcTraceLayer::forwarding().layer(router);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(hyper_util::rt::TokioTimer::new());
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
                let connection = http2.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()));
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
