//! `bench-proxy`: what the front proxy adds to a small unary call. Starts the node stack (the
//! test kit's: a private containerd, the crisp services, the proxy; logs at `warn`), then calls
//! each backend straight on its own socket and through the proxy's socket, one call at a time,
//! alternating, and prints p50 and p99 of both and their difference. Not a test: run it by hand
//! (`tests/bench/proxy.sh`, release build).
//!
//! bench-proxy [--calls N (per path and way; default 5000)]
//!
//! The calls: `ListImages` (image service, an empty store: one containerd call) and `Version`
//! (runtime service). Each way has its own connection, opened and warmed before timing.

use crisp_proto::cri::image_service_client::ImageServiceClient;
use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use crisp_proto::cri::{ListImagesRequest, VersionRequest};
use crisp_testkit::{Stack, StackOptions, cri_channel};
use std::future::Future;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    // The crisp binaries sit in target/<profile>/, one level above this example.
    if std::env::var_os("CRISP_BIN_DIR").is_none() {
        let exe = std::env::current_exe()?;
        if let Some(profile_dir) = exe.parent().filter(|d| d.ends_with("examples")).and_then(|d| d.parent()) {
            // SAFETY: no other thread runs yet.
            unsafe { std::env::set_var("CRISP_BIN_DIR", profile_dir) };
        }
    }
    // One worker thread: the client is one caller making one call at a time, as critest's
    // benchmark does; the services each have their own process.
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let mut calls = 5000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--calls" => calls = args.next().and_then(|v| v.parse().ok()).unwrap_or(calls),
            other => anyhow::bail!("unknown argument {other}; usage: bench-proxy [--calls N]"),
        }
    }
    let options = StackOptions { env: vec![("CRISP_LOG_LEVEL".into(), "warn".into())], ..StackOptions::default() };
    let stack = Stack::start_with(options).await?;
    let dir = stack.dir().to_path_buf();

    let direct_images = ImageServiceClient::new(cri_channel(&dir.join("image-0.sock")));
    let proxied_images = ImageServiceClient::new(cri_channel(stack.proxy_socket()));
    let direct_runtime = RuntimeServiceClient::new(cri_channel(&dir.join("runtime.sock")));
    let proxied_runtime = RuntimeServiceClient::new(cri_channel(stack.proxy_socket()));

    println!("{calls} calls each way, one at a time, alternating direct and through the proxy");
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>12} {:>11} {:>11}",
        "call", "direct p50", "proxy p50", "direct p99", "proxy p99", "added p50", "added p99"
    );
    let (direct, proxied) = compare(calls, &direct_images, &proxied_images, |mut c| async move {
        c.list_images(ListImagesRequest::default()).await.map(drop)
    })
    .await?;
    report("ListImages", direct, proxied);
    let (direct, proxied) = compare(calls, &direct_runtime, &proxied_runtime, |mut c| async move {
        c.version(VersionRequest::default()).await.map(drop)
    })
    .await?;
    report("Version", direct, proxied);
    drop(stack);
    Ok(())
}

/// Times `calls` calls each way after a warm-up, alternating ways call by call so that both
/// see the same machine.
async fn compare<C, F, Fut>(
    calls: usize,
    direct: &C,
    proxied: &C,
    call: F,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)>
where
    C: Clone,
    F: Fn(C) -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    for _ in 0..calls / 10 + 10 {
        call(direct.clone()).await?;
        call(proxied.clone()).await?;
    }
    let mut times = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for _ in 0..calls {
        let start = Instant::now();
        call(direct.clone()).await?;
        times.0.push(start.elapsed());
        let start = Instant::now();
        call(proxied.clone()).await?;
        times.1.push(start.elapsed());
    }
    Ok(times)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(name: &str, mut direct: Vec<Duration>, mut proxied: Vec<Duration>) {
    direct.sort();
    proxied.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (d50, p50) = (us(percentile(&direct, 0.5)), us(percentile(&proxied, 0.5)));
    let (d99, p99) = (us(percentile(&direct, 0.99)), us(percentile(&proxied, 0.99)));
    println!(
        "{name:<12} {d50:>10.1}µs {p50:>10.1}µs {d99:>10.1}µs {p99:>10.1}µs {:>9.1}µs {:>9.1}µs",
        p50 - d50,
        p99 - d99
    );
}
