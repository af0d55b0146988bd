//! `bench-critest-images`: critest's image benchmarks (PullImage, ImageStatus, RemoveImage,
//! ListImages) through crisp's proxy and against the node's containerd CRI plugin, one after
//! the other in one run, with `../shared/conformance/run-critest-benchmark.sh`. Starts the
//! test kit's node stack (a private containerd, the crisp services, the proxy) reading
//! registries from `/etc/containerd/certs.d` (critest's images mirrored on 127.0.0.1:5000).
//! Prints each side's summary and the ratios of the medians. Not a test: run it by hand, as
//! root, with critest installed and nobody else using the node's containerd CRI.
//!
//! bench-critest-images [SCRIPT (default /work/shared/conformance/run-critest-benchmark.sh)]
//! [CONTAINERD CRI SOCKET (default /run/containerd/containerd.sock)]

use crisp_testkit::{Stack, StackOptions};
use std::collections::BTreeMap;
use std::process::Command;

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
    let stack = runtime.block_on(Stack::start_with(StackOptions {
        extra_config: "[image]\nregistry_config_path = \"/etc/containerd/certs.d\"\n".into(),
        ..Default::default()
    }))?;
    let proxy = stack.proxy_socket().display().to_string();
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
    drop(stack);
    Ok(())
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
