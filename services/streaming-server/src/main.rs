//! `crisp-streaming`: the CRI streaming RPCs (Exec, Attach, PortForward) and the HTTP server
//! their URLs lead to. The proxy routes only those three RPCs here.

mod service;

use crisp_containerd::Containerd;
use crisp_proto::cri::runtime_service_server::RuntimeServiceServer;
use std::process::ExitCode;

fn main() -> ExitCode {
    crisp_grpc_server::run_service("crisp-streaming", "crisp's streaming server: Exec, Attach and PortForward", run)
}

async fn run(config: crisp_config::Config) -> Result<(), Box<dyn std::error::Error>> {
    let _metrics = crisp_metrics::start(config.streaming.metrics_address.map(Into::into), |_| {}).await?;
    let _containerd = Containerd::connect_ready(&config.containerd).await?;
    let (listener, _socket) = crisp_grpc_server::UnixSocket::bind(&config.streaming.socket, 0o600).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RuntimeServiceServer<service::Streaming>>().await;

    crisp_grpc_server::serve_until_shutdown(|shutdown| {
        crisp_grpc_server::server()
            .add_service(health_service)
            .add_service(RuntimeServiceServer::new(service::Streaming))
            .serve_with_incoming_shutdown(crisp_grpc_server::UnixListenerStream::new(listener), shutdown)
    })
    .await?;
    Ok(())
}
