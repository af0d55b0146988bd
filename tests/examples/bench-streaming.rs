//! `bench-streaming`: exec round trips and port-forward throughput through crisp and through
//! containerd's own CRI plugin on this machine, side by side, as ratios (issue 10's benchmark).
//! Not a test: run it by hand (`tests/bench/streaming.sh`).
//!
//! bench-streaming [--execs N (50)] [--megabytes N (256)] [--containerd-socket /run/containerd/containerd.sock]
//!
//! Both runtimes pull one busybox image from a private loopback registry and run it (`sleep`)
//! in a pod on the node's network. Measured, each runtime in turn, with the same SPDY client
//! (written in the tests, `v4.channel.k8s.io` / `portforward.k8s.io`):
//! - exec round trip: Exec RPC, upgrade, streams, `true` run, its status read; p50 and p99;
//! - port-forward throughput: one forwarded connection reading N MiB a server on the host's
//!   loopback writes (best of 3).

#[path = "../tests/streaming_support/mod.rs"]
mod streaming_support;

use crisp_proto::cri::image_service_client::ImageServiceClient;
use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use crisp_proto::cri::*;
use crisp_testkit::Stack;
use crisp_testkit::images::{Format, ImageBuilder};
use crisp_testkit::registry::Registry;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use streaming_support::{SpdyClient, request};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(bench())
}

struct Report {
    exec: Vec<Duration>,
    mib_per_s: f64,
}

async fn bench() -> anyhow::Result<()> {
    let (mut execs, mut megabytes) = (50usize, 256usize);
    let mut containerd_socket = PathBuf::from("/run/containerd/containerd.sock");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |default: usize| args.next().and_then(|v| v.parse().ok()).unwrap_or(default);
        match arg.as_str() {
            "--execs" => execs = number(execs),
            "--megabytes" => megabytes = number(megabytes),
            "--containerd-socket" => containerd_socket = args.next().map(PathBuf::from).unwrap_or(containerd_socket),
            other => anyhow::bail!(
                "unknown argument {other}; usage: bench-streaming [--execs N] [--megabytes N] [--containerd-socket PATH]"
            ),
        }
    }

    let registry = Registry::start().await?;
    let built = ImageBuilder::new(Format::Oci).busybox_layer()?.cmd(&["sh"]).build()?;
    let image = registry.push("bench/busybox", "1", &built).await?;
    let stack = Stack::start().await?;
    let containerd_channel = crisp_testkit::cri_channel(&containerd_socket);
    for mut images in [stack.image_client(), ImageServiceClient::new(containerd_channel.clone())] {
        let request = PullImageRequest {
            image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
            auth: None,
            sandbox_config: None,
        };
        images.pull_image(request).await?;
    }

    // A server on the host's loopback that writes `megabytes` MiB to each connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let total = megabytes * 1024 * 1024;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![7u8; 256 * 1024];
                let mut left = total;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if socket.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                let _ = socket.shutdown().await;
            });
        }
    });

    let mut reports = vec![];
    for (name, client) in
        [("containerd", RuntimeServiceClient::new(containerd_channel)), ("crisp", stack.runtime_client())]
    {
        let report = measure(name, client, &image, execs, port, total)
            .await
            .map_err(|e| anyhow::anyhow!("{name} failed: {e}"))?;
        reports.push(report);
    }
    let (c, x) = (&reports[0], &reports[1]);
    println!("{execs} exec round trips (open, run `true`, close), port-forward of {megabytes} MiB");
    println!("{:<34} {:>12} {:>12} {:>8}", "", "containerd", "crisp", "ratio");
    for (name, percentile) in [("exec round trip p50", 50), ("exec round trip p99", 99)] {
        let (cd, xd) = (p(&c.exec, percentile), p(&x.exec, percentile));
        println!("{name:<34} {:>10.1}ms {:>10.1}ms {:>8.2}", ms(cd), ms(xd), ms(xd) / ms(cd));
    }
    println!(
        "{:<34} {:>8.0}MiB/s {:>8.0}MiB/s {:>8.2}",
        "port-forward throughput",
        c.mib_per_s,
        x.mib_per_s,
        x.mib_per_s / c.mib_per_s
    );
    println!("targets: exec latency <= 0.80, throughput >= 1.20");
    Ok(())
}

async fn measure(
    name: &str,
    mut client: RuntimeServiceClient<Channel>,
    image: &str,
    execs: usize,
    port: u16,
    total: usize,
) -> anyhow::Result<Report> {
    let pod_name = format!("bench-streaming-{name}-{}", std::process::id());
    let log_directory = format!("/tmp/bench-streaming-logs/{pod_name}");
    std::fs::create_dir_all(&log_directory)?;
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: pod_name.clone(),
            uid: format!("uid-{pod_name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        log_directory,
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption { network: NamespaceMode::Node as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let request = RunPodSandboxRequest { config: Some(pod_config.clone()), runtime_handler: String::new() };
    let pod = client.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id;
    let result = async {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: "sleeper".into(), attempt: 0 }),
            image: Some(ImageSpec { image: image.into(), ..Default::default() }),
            command: vec!["sleep".into(), "3600".into()],
            log_path: "sleeper.log".into(),
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(pod_config),
        };
        let container = client.create_container(request).await?.into_inner().container_id;
        client.start_container(StartContainerRequest { container_id: container.clone() }).await?;

        let mut exec = Vec::with_capacity(execs);
        for _ in 0..execs {
            let started = Instant::now();
            let request = ExecRequest {
                container_id: container.clone(),
                cmd: vec!["true".into()],
                tty: false,
                stdin: false,
                stdout: true,
                stderr: true,
            };
            let url = client.exec(request).await?.into_inner().url;
            let upgraded = request_upgrade(&url, "v4.channel.k8s.io").await;
            let mut spdy = SpdyClient::new(upgraded.socket);
            let error = spdy.open(&[("streamType", "error")]).await;
            spdy.open(&[("streamType", "stdout")]).await;
            spdy.open(&[("streamType", "stderr")]).await;
            let status = String::from_utf8(spdy.read_to_end(error).await)?;
            anyhow::ensure!(status.contains("Success"), "exec status: {status}");
            exec.push(started.elapsed());
        }

        let mut best = 0f64;
        for round in 0..3 {
            let request = PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![i32::from(port)] };
            let url = client.port_forward(request).await?.into_inner().url;
            let upgraded = request_upgrade(&url, "portforward.k8s.io").await;
            let mut spdy = SpdyClient::new(upgraded.socket);
            let port = port.to_string();
            let id = round.to_string();
            let headers = |kind| [("streamType", kind), ("port", port.as_str()), ("requestID", id.as_str())];
            let error = spdy.open(&headers("error")).await;
            spdy.send(error, b"", true).await;
            let data = spdy.open(&headers("data")).await;
            let started = Instant::now();
            let received = spdy.read_to_end(data).await.len();
            let elapsed = started.elapsed();
            anyhow::ensure!(received == total, "port-forward carried {received} of {total} bytes");
            best = best.max(total as f64 / 1024.0 / 1024.0 / elapsed.as_secs_f64());
        }
        let _ = client.stop_container(StopContainerRequest { container_id: container.clone(), timeout: 0 }).await;
        let _ = client.remove_container(RemoveContainerRequest { container_id: container }).await;
        anyhow::Ok(Report { exec, mib_per_s: best })
    }
    .await;
    let _ = client.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await;
    let _ = client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await;
    result
}

async fn request_upgrade(url: &str, protocol: &str) -> streaming_support::Upgraded {
    let headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", protocol)];
    let upgraded = request(url, "POST", &headers).await;
    assert_eq!(upgraded.status, 101, "{url}: {:?}", upgraded.headers);
    upgraded
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p(times: &[Duration], percentile: usize) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[((sorted.len() * percentile).div_ceil(100)).saturating_sub(1).min(sorted.len() - 1)]
}
