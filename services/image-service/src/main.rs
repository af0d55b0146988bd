//! `crisp-image`: the CRI ImageService on containerd.
//!
//! The image model (references, digests, OCI types, reading images) is `crisp-image-model`;
//! containerd is reached through `crisp-containerd`. What is the image service's own:
//!
//! - [`hosts`] and [`registry`]: where and how images are fetched (hosts.toml, auth).
//! - [`pull`]: PullImage; [`content`]: a pull's lease; [`unpack`]: layers into snapshots;
//!   [`apply`]: the direct apply of a layer (overlayfs).
//! - [`store`]: writing image records; [`images`]: ListImages, ImageStatus, RemoveImage;
//!   [`fsinfo`]: ImageFsInfo.

mod apply;
mod content;
mod error;
mod fsinfo;
mod hosts;
mod images;
mod metrics;
mod pull;
mod registry;
mod service;
mod store;
mod unpack;

use crisp_containerd::Containerd;
use crisp_grpc_server::MAX_MESSAGE_BYTES;
use crisp_proto::cri::image_service_server::ImageServiceServer;
use std::process::ExitCode;

fn main() -> ExitCode {
    crisp_grpc_server::run_service(
        "crisp-image",
        "crisp's CRI ImageService: pulls images from registries into containerd",
        run,
    )
}

async fn run(config: crisp_config::Config) -> Result<(), Box<dyn std::error::Error>> {
    let _metrics = crisp_metrics::start(config.image.metrics_address.map(Into::into), |registry| {
        metrics::register(registry);
        crisp_containerd::metrics::register(registry);
    })
    .await?;
    let containerd = Containerd::connect_ready(&config.containerd).await?;
    let (listener, _socket) = crisp_grpc_server::UnixSocket::bind(&config.image.socket, 0o600).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ImageServiceServer<service::Images>>().await;

    // A pull still running at shutdown is cut off after the drain time; its lease is taken
    // over by the next pull of the image (or swept) when the service is back.
    let images = ImageServiceServer::new(service::Images::new(containerd, &config))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    crisp_grpc_server::serve_until_shutdown(|shutdown| {
        crisp_grpc_server::server()
            .add_service(health_service)
            .add_service(images)
            .serve_with_incoming_shutdown(crisp_grpc_server::UnixListenerStream::new(listener), shutdown)
    })
    .await?;
    Ok(())
}
