//! `bench-proxy`: what the front proxy adds to a small unary call. Starts the node stack (the
//! test kit's: a private containerd, the crisp services, the proxy; logs at `warn`), then calls
//! each backend three ways, one call at a time, rotating call by call: straight on the
//! backend's socket, through a plain byte relay in a process of its own (this program again,
//! with `--relay`: what any separate process in the path costs on this machine, before any
//! HTTP/2 work), and through the proxy. Prints p50 and p99 of each way, what the relay and the
//! proxy add over the direct call, and the proxy's CPU time per call. Not a test: run it by
//! hand (`tests/bench/proxy.sh`, release build).
//!
//! bench-proxy [--calls N (per call and way; default 5000)] [--metrics (the proxy serves metrics)]
//!
//! At the end the proxy is stopped with SIGTERM and waited for, so that a profiler wrapped
//! around it writes its results: with `CRISP_BIN_DIR` naming a directory of the release
//! binaries whose `crisp-proxy` is a script running the real one under
//! `valgrind --tool=callgrind`, two runs with different `--calls` give the proxy's instructions
//! per call (the difference of the totals over the difference of the calls).
//!
//! The calls: `ListImages` (image service, an empty store: one containerd call) and `Version`
//! (runtime service). Each way has its own connection, opened and warmed before timing.

use crisp_proto::cri::image_service_client::ImageServiceClient;
use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use crisp_proto::cri::{ListImagesRequest, VersionRequest};
use crisp_testkit::{Stack, StackOptions, cri_channel};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--relay") {
        return runtime.block_on(relay(args[1..].to_vec()));
    }
    // One thread: the client is one caller making one call at a time, as critest's benchmark
    // does; the services each have their own process.
    runtime.block_on(bench(args))
}

/// `--relay LISTEN TARGET [LISTEN TARGET...]`: copies bytes both ways between each connection
/// to LISTEN and a connection to TARGET, on one thread, as the proxy runs.
async fn relay(args: Vec<String>) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for pair in args.chunks(2) {
        let [listen, target] = pair else { anyhow::bail!("--relay takes LISTEN TARGET pairs") };
        let listener = tokio::net::UnixListener::bind(listen)?;
        let target = PathBuf::from(target);
        tasks.push(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut backend) = tokio::net::UnixStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                    }
                });
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}

/// The relay process, killed when dropped.
struct Relay(std::process::Child);

impl Relay {
    async fn start(pairs: &[(&Path, &Path)]) -> anyhow::Result<Relay> {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command.arg("--relay");
        for (listen, target) in pairs {
            command.arg(listen).arg(target);
        }
        let relay = Relay(command.spawn()?);
        let started = Instant::now();
        while !pairs.iter().all(|(listen, _)| listen.exists()) {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "the relay did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(relay)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench(args: Vec<String>) -> anyhow::Result<()> {
    let mut calls = 5000usize;
    let mut metrics = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--calls" => calls = args.next().and_then(|v| v.parse().ok()).unwrap_or(calls),
            "--metrics" => metrics = true,
            other => anyhow::bail!("unknown argument {other}; usage: bench-proxy [--calls N] [--metrics]"),
        }
    }
    let mut env = vec![("CRISP_LOG_LEVEL".to_string(), "warn".to_string())];
    if metrics {
        // The proxy's metrics layer on (its endpoint on a free loopback port).
        env.push(("CRISP_PROXY_METRICS_ADDRESS".into(), "127.0.0.1:0".into()));
    }
    println!("proxy metrics: {}", if metrics { "on" } else { "off" });
    let options = StackOptions { env, ..StackOptions::default() };
    let mut stack = Stack::start_with(options).await?;
    let proxy_pid = stack.service_pid("proxy")?;
    let dir = stack.dir().to_path_buf();
    let (image, runtime) = (dir.join("image-0.sock"), dir.join("runtime.sock"));
    let (relay_image, relay_runtime) = (dir.join("relay-image.sock"), dir.join("relay-runtime.sock"));
    let _relay = Relay::start(&[(&relay_image, &image), (&relay_runtime, &runtime)]).await?;

    let images = [&image, &relay_image, stack.proxy_socket()].map(|s| ImageServiceClient::new(cri_channel(s)));
    let runtimes = [&runtime, &relay_runtime, stack.proxy_socket()].map(|s| RuntimeServiceClient::new(cri_channel(s)));

    println!("{calls} calls each way, one at a time, rotating: direct, through a byte relay, through the proxy");
    println!(
        "{:<11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>12} {:>12}",
        "call",
        "direct p50",
        "relay p50",
        "proxy p50",
        "direct p99",
        "relay p99",
        "proxy p99",
        "relay adds",
        "proxy adds"
    );
    let cpu = cpu_time(proxy_pid);
    let times =
        compare(calls, &images, |mut c| async move { c.list_images(ListImagesRequest::default()).await.map(drop) })
            .await?;
    let list_cpu = cpu_time(proxy_pid) - cpu;
    report("ListImages", times);
    let times =
        compare(calls, &runtimes, |mut c| async move { c.version(VersionRequest::default()).await.map(drop) }).await?;
    report("Version", times);
    let total = cpu_time(proxy_pid) - cpu;
    let per_call = |d: Duration| d.as_secs_f64() * 1e6 / (calls + calls / 10 + 10) as f64;
    println!(
        "(adds: p50 minus direct p50.) proxy CPU time per call, all threads, user and kernel: ListImages {:.1}µs, Version {:.1}µs",
        per_call(list_cpu),
        per_call(total - list_cpu)
    );
    drop((images, runtimes));
    stop(proxy_pid).await;
    Ok(())
}

/// Stops the proxy with SIGTERM and waits (up to a minute) until it has exited, so that a
/// profiler wrapped around it (a `crisp-proxy` script in `CRISP_BIN_DIR` running it under
/// `valgrind --tool=callgrind`, say) writes its results; the test kit's own stop is SIGKILL.
async fn stop(pid: u32) {
    let Some(process) = rustix::process::Pid::from_raw(pid as i32) else { return };
    if rustix::process::kill_process(process, rustix::process::Signal::TERM).is_err() {
        return;
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        // Gone, or a zombie waiting for the test kit to reap it.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) if stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')) => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Times `calls` calls each way after a warm-up, rotating ways call by call so that all see
/// the same machine.
async fn compare<C, F, Fut>(calls: usize, ways: &[C; 3], call: F) -> anyhow::Result<[Vec<Duration>; 3]>
where
    C: Clone,
    F: Fn(C) -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    for _ in 0..calls / 10 + 10 {
        for way in ways {
            call(way.clone()).await?;
        }
    }
    let mut times: [Vec<Duration>; 3] = Default::default();
    for _ in 0..calls {
        for (way, times) in ways.iter().zip(times.iter_mut()) {
            let start = Instant::now();
            call(way.clone()).await?;
            times.push(start.elapsed());
        }
    }
    Ok(times)
}

/// CPU time of every thread of process `pid` so far (schedstat: nanoseconds on a CPU).
fn cpu_time(pid: u32) -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

fn report(name: &str, mut times: [Vec<Duration>; 3]) {
    for way in &mut times {
        way.sort();
    }
    let p50: Vec<f64> = times.iter().map(|t| percentile(t, 0.5)).collect();
    let p99: Vec<f64> = times.iter().map(|t| percentile(t, 0.99)).collect();
    println!(
        "{name:<11} {:>9.1}µs {:>9.1}µs {:>9.1}µs {:>9.1}µs {:>9.1}µs {:>9.1}µs {:>10.1}µs {:>10.1}µs",
        p50[0],
        p50[1],
        p50[2],
        p99[0],
        p99[1],
        p99[2],
        p50[1] - p50[0],
        p50[2] - p50[0]
    );
}
