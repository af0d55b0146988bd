//! `crisp-image`: the CRI ImageService on containerd.
//!
//! - [`reference`]: parsing and normalising image names; [`oci`]: manifest formats.
//! - [`hosts`] and [`registry`]: where and how images are fetched (hosts.toml, auth).
//! - [`pull`]: PullImage; [`content`] and [`unpack`]: containerd's content store, leases,
//!   snapshots and diff service.
//! - [`store`]: image records; [`images`]: ListImages, ImageStatus, RemoveImage;
//!   [`fsinfo`]: ImageFsInfo.

mod content;
mod digest;
mod error;
mod fsinfo;
mod hosts;
mod images;
mod oci;
mod pull;
mod reference;
mod registry;
mod service;
mod store;
mod unpack;

use crisp_containerd::Containerd;
use crisp_proto::cri::image_service_server::ImageServiceServer;
use std::process::ExitCode;

/// CRI messages can be large (ListImages on a busy node).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, _telemetry) = crisp_grpc_server::start(
        "crisp-image",
        "crisp's CRI ImageService: pulls images from registries into containerd",
    );
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("crisp-image: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: crisp_config::Config) -> Result<(), Box<dyn std::error::Error>> {
    let containerd = Containerd::connect(&config.containerd.address, &config.containerd.namespace)?;
    let version = containerd.wait_ready(config.containerd.connect_timeout).await?;
    tracing::info!(containerd = %version.version, namespace = %containerd.namespace(), "connected to containerd");

    let (listener, _socket) = crisp_grpc_server::UnixSocket::bind(&config.image.socket, 0o600).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ImageServiceServer<service::Images>>().await;

    let images = service::Images::new(containerd, &config);
    crisp_grpc_server::server()
        .add_service(health_service)
        .add_service(
            ImageServiceServer::new(images)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            crisp_grpc_server::UnixListenerStream::new(listener),
            crisp_grpc_server::shutdown_signal(),
        )
        .await?;
    Ok(())
}
