//! `crisp-proxy`: owns the CRI socket the kubelet dials and routes each gRPC call by its path,
//! undecoded, to the crisp service that answers it.

use crisp_proxy::{Backends, Scope, serve, stack};
use std::process::ExitCode;

fn main() -> ExitCode {
    crisp_grpc_server::run_service_single_threaded(
        "crisp-proxy",
        "crisp's front proxy: the CRI socket, routed to the image, runtime and streaming services",
        run,
    )
}

async fn run(config: crisp_config::Config) -> Result<(), Box<dyn std::error::Error>> {
    let mode = config.proxy_socket_mode()?;
    let backends = Backends::from_config(&config.proxy);
    let _metrics = crisp_metrics::start(config.proxy.metrics_address.map(Into::into), |r| {
        backends.metrics.iter().for_each(|m| m.register(r))
    })
    .await?;
    backends.images.spawn_health_checks(config.proxy.health_check_interval, config.proxy.connect_timeout);

    let (listener, _socket) = crisp_grpc_server::UnixSocket::bind(&config.proxy.socket, mode).await?;
    let image_listener = match &config.proxy.image_socket {
        Some(path) => Some(crisp_grpc_server::UnixSocket::bind(path, mode).await?),
        None => None,
    };

    let shutdown = tokio::sync::watch::channel(false);
    let cri = tokio::spawn(serve(listener, stack(&backends, Scope::Cri), shutdown.1.clone()));
    let images = image_listener.map(|(listener, socket)| {
        let task = tokio::spawn(serve(listener, stack(&backends, Scope::ImagesOnly), shutdown.1.clone()));
        (task, socket)
    });

    crisp_grpc_server::shutdown_signal().await;
    let _ = shutdown.0.send(true);
    let _ = cri.await;
    if let Some((task, _socket)) = images {
        let _ = task.await;
    }
    Ok(())
}
