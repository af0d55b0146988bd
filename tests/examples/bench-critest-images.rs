//! `bench-critest-images`: critest's image benchmarks (PullImage, ImageStatus, RemoveImage,
//! ListImages) through crisp's proxy and against the node's containerd CRI plugin, one after
//! the other in one run, with `../shared/conformance/run-critest-benchmark.sh`. Starts the
//! test kit's node stack (a private containerd, the crisp services, the proxy) reading
//! registries from `/etc/containerd/certs.d` (critest's images mirrored on 127.0.0.1:5000).
//! Prints each side's summary and the ratios of the medians. Not a test: run it by hand, as
//! root, with critest installed and nobody else using the node's containerd CRI.
//!
//! Then, with its own client, calls interleaved between the two sides (so both see the same
//! load): a PullImage of critest's pull image while it is stored whole (the kubelet's pull of
//! an image it has, `imagePullPolicy: Always`), ImageStatus and ListImages.
//!
//! bench-critest-images [SCRIPT (default /work/shared/conformance/run-critest-benchmark.sh)]
//! [CONTAINERD CRI SOCKET (default /run/containerd/containerd.sock)]
//!
//! `CRISP_SOCKET=<crisp CRI socket>`: measure crisp services already running there (e.g. a
//! release build on the node's containerd) instead of starting the test kit's stack.

use crisp_proto::cri::image_service_client::ImageServiceClient;
use crisp_proto::cri::{ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest};
use crisp_testkit::{Stack, StackOptions};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// critest's image pull benchmark image (its first listing image on amd64).
const PULL_IMAGE: &str = "public.ecr.aws/docker/library/busybox:1.35.0-glibc";
/// Calls per operation and side in the interleaved loop.
const SAMPLES: usize = 30;

const OPERATIONS: [&str; 4] = [
    "image_lifecycle / PullImage",
    "image_lifecycle / StatusImage",
    "image_lifecycle / RemoveImage",
    "image_listing / ListImages",
];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let script = args.next().unwrap_or_else(|| "/work/shared/conformance/run-critest-benchmark.sh".into());
    let containerd = args.next().unwrap_or_else(|| "/run/containerd/containerd.sock".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let stack = match std::env::var("CRISP_SOCKET") {
        Ok(_) => None,
        Err(_) => Some(runtime.block_on(Stack::start_with(StackOptions {
            extra_config: "[image]\nregistry_config_path = \"/etc/containerd/certs.d\"\n".into(),
            ..Default::default()
        }))?),
    };
    let proxy = match &stack {
        Some(stack) => stack.proxy_socket().display().to_string(),
        None => std::env::var("CRISP_SOCKET")?,
    };
    let crisp = medians(&script, &proxy)?;
    let theirs = medians(&script, &containerd)?;
    println!("{:<34} {:>10} {:>12} {:>7}", "operation (median ms)", "crisp", "containerd", "ratio");
    for op in OPERATIONS {
        let (a, b) = (crisp.get(op).copied(), theirs.get(op).copied());
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let show = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        println!("{op:<34} {:>10} {:>12} {ratio:>7}", show(a), show(b));
    }
    runtime.block_on(interleaved(&proxy, &containerd))?;
    drop(stack);
    Ok(())
}

/// The stored pull, ImageStatus and ListImages, one call per side in turn; medians and ratios.
async fn interleaved(crisp: &str, containerd: &str) -> anyhow::Result<()> {
    let mut clients =
        [crisp, containerd].map(|socket| ImageServiceClient::new(crisp_testkit::cri_channel(socket.as_ref())));
    let spec = || Some(ImageSpec { image: PULL_IMAGE.to_string(), ..Default::default() });
    for client in &mut clients {
        client.pull_image(PullImageRequest { image: spec(), ..Default::default() }).await?;
    }
    let mut samples: BTreeMap<&str, [Vec<Duration>; 2]> = BTreeMap::new();
    for _ in 0..SAMPLES {
        for (side, client) in clients.iter_mut().enumerate() {
            let started = Instant::now();
            client.pull_image(PullImageRequest { image: spec(), ..Default::default() }).await?;
            samples.entry("PullImage (stored)").or_default()[side].push(started.elapsed());
            let started = Instant::now();
            client.image_status(ImageStatusRequest { image: spec(), verbose: false }).await?;
            samples.entry("ImageStatus").or_default()[side].push(started.elapsed());
            let started = Instant::now();
            client.list_images(ListImagesRequest { filter: None }).await?;
            samples.entry("ListImages").or_default()[side].push(started.elapsed());
        }
    }
    println!("\ninterleaved, {SAMPLES} calls each (median ms)  crisp  containerd  ratio");
    for (op, [ours, theirs]) in &mut samples {
        let (a, b) = (median(ours), median(theirs));
        println!("{op:<34} {a:>10.2} {b:>12.2} {:>7.2}", a / b);
    }
    Ok(())
}

fn median(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples.get(samples.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Runs the image benchmarks against `endpoint`; answers the median of each operation.
fn medians(script: &str, endpoint: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let output = Command::new(script).arg(endpoint).arg("-ginkgo.focus=[Ii]mage").output()?;
    let summary = String::from_utf8_lossy(&output.stdout);
    println!("== {endpoint}\n{summary}");
    let mut medians = BTreeMap::new();
    for line in summary.lines() {
        if let Some(op) = OPERATIONS.iter().find(|op| line.starts_with(*op)) {
            // operation, n, min, median, ...
            let fields: Vec<&str> = line[op.len()..].split_whitespace().collect();
            if let Some(median) = fields.get(2).and_then(|v| v.parse().ok()) {
                medians.insert(op.to_string(), median);
            }
        }
    }
    Ok(medians)
}
