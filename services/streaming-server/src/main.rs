//! `crisp-streaming`: the CRI streaming RPCs (Exec, Attach, PortForward) on a unix socket the
//! proxy routes them to, and the HTTP server their URLs lead to (`streaming.address`:`port`).

use crisp_containerd::Containerd;
use crisp_proto::cri::runtime_service_server::RuntimeServiceServer;
use crisp_streaming::server::{self, Sessions};
use crisp_streaming::service::Streaming;
use crisp_streaming::tokens::Tokens;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    crisp_grpc_server::run_service("crisp-streaming", "crisp's streaming server: Exec, Attach and PortForward", run)
}

async fn run(config: crisp_config::Config) -> Result<(), Box<dyn std::error::Error>> {
    let _metrics = crisp_metrics::start(config.streaming.metrics_address.map(Into::into), |registry| {
        crisp_streaming::metrics::register(registry);
        crisp_containerd::metrics::register(registry);
    })
    .await?;
    let containerd = Containerd::connect_ready(&config.containerd).await?;
    let streaming = config.streaming.clone();
    let ip: IpAddr = streaming.address.parse()?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, streaming.port)).await?;
    let bound = listener.local_addr()?;
    let tls = match (&streaming.tls_cert_file, &streaming.tls_key_file) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let base_url = format!("{}://{bound}", if tls.is_some() { "https" } else { "http" });
    tracing::info!(url = %base_url, "streaming HTTP server listening");

    let tokens = Arc::new(Tokens::new(streaming.token_ttl, streaming.max_tokens));
    let fifo_root = config.runtime.state_dir.join("streaming").join("exec");
    let runtime_socket = config.runtime.socket.clone();
    let sessions = Arc::new(Sessions { containerd, tokens, config: streaming, fifo_root, runtime_socket });
    let stop_http = CancellationToken::new();
    let http = tokio::spawn(server::serve(listener, sessions.clone(), tls, stop_http.clone()));

    let (listener, _socket) = crisp_grpc_server::UnixSocket::bind(&config.streaming.socket, 0o600).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RuntimeServiceServer<Streaming>>().await;
    let result = crisp_grpc_server::serve_until_shutdown(|shutdown| {
        crisp_grpc_server::server()
            .add_service(health_service)
            .add_service(RuntimeServiceServer::new(Streaming::new(sessions, base_url)))
            .serve_with_incoming_shutdown(crisp_grpc_server::UnixListenerStream::new(listener), shutdown)
    })
    .await;
    stop_http.cancel();
    let _ = http.await;
    result?;
    Ok(())
}
