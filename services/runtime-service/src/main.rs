//! `crisp-runtime`: the CRI RuntimeService on containerd. Started with the namespace helper's
//! argument (`sandbox::HELPER_ARG`), the same binary makes a pod's namespaces and exits.

mod attach;
mod cgroup;
// The container modules land in parts; until each is wired to its RPC, some of it is unused.
#[allow(dead_code, unused_imports)]
mod container;
mod events;
#[allow(dead_code)]
mod logs;
mod metrics;
mod pod_cidr;
mod sandbox;
mod service;
mod status;
mod version;

use crisp_containerd::Containerd;
use crisp_grpc_server::MAX_MESSAGE_BYTES;
use crisp_proto::cri::runtime_service_server::RuntimeServiceServer;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The namespace helper: this binary, run by the service to make a pod's namespaces.
    if std::env::args().nth(1).as_deref() == Some(sandbox::HELPER_ARG) {
        return sandbox::helper_main();
    }
    crisp_grpc_server::run_service(
        "crisp-runtime",
        "crisp's CRI RuntimeService: pod sandboxes and containers on containerd",
        run,
    )
}

async fn run(config: crisp_config::Config) -> Result<(), Box<dyn std::error::Error>> {
    let _metrics = crisp_metrics::start(config.runtime.metrics_address.map(Into::into), metrics::register).await?;
    let containerd = Containerd::connect_ready(&config.containerd).await?;
    // Before serving: undo what a RunPodSandbox cut short by a crash left.
    if let Err(err) = sandbox::sweep(&containerd, &config).await {
        tracing::warn!(error = %crisp_errors::message_chain(&err), "cannot look for leftover pods");
    }
    let (listener, _socket) = crisp_grpc_server::UnixSocket::bind(&config.runtime.socket, 0o600).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RuntimeServiceServer<service::Runtime>>().await;

    let service = service::Runtime::new(containerd.clone(), config);
    metrics::watch(service.containers(), &containerd);
    // Exits from containerd's events; first, the exits that happened while the service was down.
    let _exits = service.containers().watch_exits();
    let container_io = attach::server(service.containers().clone());
    let containers = service.containers().clone();
    let runtime = RuntimeServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // ListContainers with an empty filter (the kubelet's PLEG, each second) from the index's encoded answer.
    let runtime = container::UnfilteredList::new(runtime, containers);
    crisp_grpc_server::serve_until_shutdown(|shutdown| {
        crisp_grpc_server::server()
            .add_service(health_service)
            .add_service(runtime)
            .add_service(container_io)
            .serve_with_incoming_shutdown(crisp_grpc_server::UnixListenerStream::new(listener), shutdown)
    })
    .await?;
    Ok(())
}
