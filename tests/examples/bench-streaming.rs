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

mod bench_support;
#[path = "../tests/streaming_support/mod.rs"]
mod streaming_support;

use bench_support::{Setup, container_config, ms, p, remove_pod, run_container, run_pod};
use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use crisp_proto::cri::*;
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

    let setup = Setup::start(&containerd_socket).await?;

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
    for (name, client) in [("containerd", setup.containerd.clone()), ("crisp", setup.stack.runtime_client())] {
        let report = measure(name, client, &setup.image, execs, port, total)
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
    let pod = run_pod(&mut client, &format!("streaming-{name}"), 0).await?;
    let result = async {
        let container = run_container(&mut client, &pod, container_config(image, "sleeper")).await?;

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
            let request = PortForwardRequest { pod_sandbox_id: pod.id.clone(), port: vec![i32::from(port)] };
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
    let _ = remove_pod(&mut client, &pod).await;
    result
}

async fn request_upgrade(url: &str, protocol: &str) -> streaming_support::Upgraded {
    let headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", protocol)];
    let upgraded = request(url, "POST", &headers).await;
    assert_eq!(upgraded.status, 101, "{url}: {:?}", upgraded.headers);
    upgraded
}
