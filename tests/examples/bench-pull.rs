//! `bench-pull`: pulls one cold image (a busybox layer and five layers of 40 MiB of real
//! files from this machine's /usr, gzipped: they inflate like real layers do; with
//! `--synthetic`, five 24 MiB layers of half random, half repetitive data; with `--one-layer`,
//! one layer of 200 MiB instead, the case where unpacking while downloading matters most)
//! from a local registry through crisp's image service and through containerd's own CRI
//! plugin on this machine, and prints both times, their ratio and the image service's peak
//! RSS. Not a test: run it by hand (`tests/bench/pull.sh`).
//!
//! bench-pull [--runs N] [--max-concurrent-downloads N (crisp's; default 3 like containerd)]
//!            [--synthetic] [--one-layer] [--containerd-socket /run/containerd/containerd.sock]
//!
//! crisp runs on a private containerd (the test kit's stack, namespace `crisp`); containerd's
//! CRI pulls into the node's containerd (namespace `k8s.io`). Before every timed pull the image
//! is removed from both (CRI RemoveImage, which runs containerd's garbage collection), so each
//! pull fetches and unpacks everything.

use crisp_proto::cri::image_service_client::ImageServiceClient;
use crisp_proto::cri::{ImageSpec, PullImageRequest, RemoveImageRequest};
use crisp_testkit::images::{Format, ImageBuilder};
use crisp_testkit::registry::Registry;
use crisp_testkit::{Stack, StackOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const LAYERS: u64 = 5;
const LAYER_BYTES: usize = 24 << 20;
const SYSTEM_LAYER_BYTES: usize = 40 << 20;
const ONE_LAYER_BYTES: usize = 200 << 20;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let mut runs = 3;
    let mut downloads = 3;
    let mut containerd_socket = PathBuf::from("/run/containerd/containerd.sock");
    let mut synthetic = false;
    let mut one_layer = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "--max-concurrent-downloads" => downloads = args.next().and_then(|v| v.parse().ok()).unwrap_or(downloads),
            "--synthetic" => synthetic = true,
            "--one-layer" => one_layer = true,
            "--containerd-socket" => containerd_socket = args.next().map(PathBuf::from).unwrap_or(containerd_socket),
            other => anyhow::bail!(
                "unknown argument {other}; usage: bench-pull [--runs N] [--max-concurrent-downloads N] [--synthetic] [--one-layer] [--containerd-socket PATH]"
            ),
        }
    }

    let mut builder = ImageBuilder::new(Format::Oci);
    let uncompressed;
    if one_layer && synthetic {
        eprintln!("building the image (one {} MiB synthetic layer)...", ONE_LAYER_BYTES >> 20);
        builder = builder.data_layer(ONE_LAYER_BYTES, 100);
        uncompressed = ONE_LAYER_BYTES;
    } else if one_layer {
        eprintln!("building the image (one layer of {} MiB of /usr files)...", ONE_LAYER_BYTES >> 20);
        builder = builder.system_files_layer(0, ONE_LAYER_BYTES)?;
        uncompressed = ONE_LAYER_BYTES;
    } else if synthetic {
        builder = builder.busybox_layer()?;
        eprintln!("building the image ({LAYERS} x {} MiB synthetic layers + busybox)...", LAYER_BYTES >> 20);
        for seed in 0..LAYERS {
            builder = builder.data_layer(LAYER_BYTES, 100 + seed);
        }
        uncompressed = LAYERS as usize * LAYER_BYTES;
    } else {
        builder = builder.busybox_layer()?;
        eprintln!("building the image ({LAYERS} x {} MiB of /usr files + busybox)...", SYSTEM_LAYER_BYTES >> 20);
        for i in 0..LAYERS as usize {
            builder = builder.system_files_layer(i * SYSTEM_LAYER_BYTES, SYSTEM_LAYER_BYTES)?;
        }
        uncompressed = LAYERS as usize * SYSTEM_LAYER_BYTES;
    }
    let image = builder.build()?;
    let compressed: usize = image.layers.iter().map(|l| l.data.len()).sum();
    let registry = Registry::start().await?;
    let repository = if one_layer { "bench/pull-one" } else { "bench/pull" };
    let name = registry.push(repository, "v1", &image).await?;
    eprintln!(
        "image {name}: {} layers, {:.1} MiB compressed, {:.1} MiB uncompressed",
        image.layers.len(),
        compressed as f64 / 1048576.0,
        uncompressed as f64 / 1048576.0
    );

    let mut stack = Stack::start_with(StackOptions {
        extra_config: format!("[image]\nmax_concurrent_downloads = {downloads}\n"),
        ..Default::default()
    })
    .await?;
    let mut crisp = stack.image_client();
    let mut containerd = ImageServiceClient::new(crisp_testkit::cri_channel(&containerd_socket));

    let mut crisp_times = Vec::new();
    let mut containerd_times = Vec::new();
    for run in 1..=runs {
        let t = timed_cold_pull(&mut containerd, &name)
            .await
            .map_err(|e| anyhow::anyhow!("containerd's CRI at {} failed: {e}", containerd_socket.display()))?;
        eprintln!("run {run}: containerd CRI {:.2} s", t.as_secs_f64());
        containerd_times.push(t);
        let t = timed_cold_pull(&mut crisp, &name).await?;
        eprintln!("run {run}: crisp         {:.2} s", t.as_secs_f64());
        crisp_times.push(t);
    }
    let pid = stack.service_pid("image-0")?;
    let cpu = cpu_seconds(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: ?").to_string();

    if std::env::var_os("BENCH_SHOW_LOG").is_some() {
        eprintln!("{}", stack.service_log("image-0")?);
    }
    let crisp_median = median(&mut crisp_times);
    let containerd_median = median(&mut containerd_times);
    println!("image: {:.1} MiB compressed in {} layers", compressed as f64 / 1048576.0, image.layers.len());
    println!("containerd CRI pull (median of {runs}): {:.2} s", containerd_median.as_secs_f64());
    println!("crisp pull          (median of {runs}): {:.2} s", crisp_median.as_secs_f64());
    let target = if one_layer { 0.5 } else { 0.35 };
    println!(
        "ratio crisp/containerd: {:.2} (target <= {target:.2})",
        crisp_median.as_secs_f64() / containerd_median.as_secs_f64()
    );
    println!("crisp-image peak RSS: {} (target <= 64 MiB)", peak.trim_start_matches("VmHWM:").trim());
    println!("crisp-image CPU time over all runs: {cpu:.2} s");
    Ok(())
}

async fn timed_cold_pull(client: &mut ImageServiceClient<Channel>, name: &str) -> anyhow::Result<Duration> {
    let spec = Some(ImageSpec { image: name.to_string(), ..Default::default() });
    client.remove_image(RemoveImageRequest { image: spec.clone() }).await?;
    let started = Instant::now();
    client.pull_image(PullImageRequest { image: spec.clone(), auth: None, sandbox_config: None }).await?;
    let elapsed = started.elapsed();
    client.remove_image(RemoveImageRequest { image: spec }).await?;
    Ok(elapsed)
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is 0, utime 11, stime 12; 100 ticks a second.
    (ticks(11) + ticks(12)) / 100.0
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}
