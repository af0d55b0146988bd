//! `bench-sandbox`: RunPodSandbox, StopPodSandbox and RemovePodSandbox latency (p50/p99 over
//! N pods made one at a time), N pods started at once, and memory per pod at N pods, through
//! crisp and through containerd's own CRI plugin on this machine, side by side, as ratios.
//! Not a test: run it by hand (`tests/bench/sandbox.sh`).
//!
//! bench-sandbox [--pods N (50)] [--containerd-socket /run/containerd/containerd.sock]
//!               [--cni-conf /etc/cni/net.d/<first .conflist>]
//!
//! crisp runs as the test kit's stack (its own containerd, namespace `crisp`) with the node's
//! CNI conflist copied into its CNI directory; containerd's CRI plugin is spoken to on its
//! socket (it runs its pause image, a shim per pod). Memory per pod: the growth of the RSS of
//! crisp's processes (runtime service and proxy; crisp has no process per pod) over N pods,
//! against the growth of containerd's RSS plus the RSS of the shims it started for the pods.

mod bench_support;

use bench_support::{Pod, k8s_shims, ms, p, remove_pod, rss, run_pod_with, socket_pid};
use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use crisp_proto::cri::*;
use crisp_testkit::Stack;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(bench())
}

struct Report {
    run: Vec<Duration>,
    stop: Vec<Duration>,
    remove: Vec<Duration>,
    concurrent: Duration,
    memory_per_pod: f64,
}

async fn bench() -> anyhow::Result<()> {
    let mut pods = 50;
    let mut containerd_socket = PathBuf::from("/run/containerd/containerd.sock");
    let mut cni_conf = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pods" => pods = args.next().and_then(|v| v.parse().ok()).unwrap_or(pods),
            "--containerd-socket" => containerd_socket = args.next().map(PathBuf::from).unwrap_or(containerd_socket),
            "--cni-conf" => cni_conf = args.next().map(PathBuf::from),
            other => anyhow::bail!(
                "unknown argument {other}; usage: bench-sandbox [--pods N] [--containerd-socket PATH] [--cni-conf FILE]"
            ),
        }
    }
    let cni_conf = match cni_conf {
        Some(file) => file,
        None => first_conflist(Path::new("/etc/cni/net.d"))?,
    };
    eprintln!("CNI network: {}", cni_conf.display());

    let mut stack = Stack::start().await?;
    std::fs::copy(&cni_conf, stack.dir().join("cni").join(cni_conf.file_name().unwrap_or_default()))?;
    let crisp_pids = vec![stack.service_pid("runtime")?, stack.service_pid("proxy")?];
    let mut crisp = stack.runtime_client();
    let mut containerd = RuntimeServiceClient::new(crisp_testkit::cri_channel(&containerd_socket));
    let containerd_pid = socket_pid(&containerd_socket).await?;

    // One pod each first: containerd pulls its pause image, crisp warms up.
    for (client, tag) in [(&mut containerd, "warm-c"), (&mut crisp, "warm-x")] {
        let pod = run(client, tag, 0).await?;
        remove_pod(client, &pod).await?;
    }

    let shims_before = k8s_shims();
    let containerd_report = measure(&mut containerd, "ctrd", pods, || {
        let grown: HashSet<u32> = k8s_shims().difference(&shims_before).copied().collect();
        rss(&[containerd_pid]) + rss(&grown.into_iter().collect::<Vec<_>>())
    })
    .await
    .map_err(|e| anyhow::anyhow!("containerd's CRI at {} failed: {e}", containerd_socket.display()))?;
    let crisp_report = measure(&mut crisp, "crisp", pods, || rss(&crisp_pids)).await?;

    println!("{pods} pods, CNI network {}", cni_conf.display());
    println!("{:<28} {:>12} {:>12} {:>8}", "", "containerd", "crisp", "ratio");
    for (name, c, x) in [
        ("RunPodSandbox p50", p(&containerd_report.run, 50), p(&crisp_report.run, 50)),
        ("RunPodSandbox p99", p(&containerd_report.run, 99), p(&crisp_report.run, 99)),
        ("StopPodSandbox p50", p(&containerd_report.stop, 50), p(&crisp_report.stop, 50)),
        ("StopPodSandbox p99", p(&containerd_report.stop, 99), p(&crisp_report.stop, 99)),
        ("RemovePodSandbox p50", p(&containerd_report.remove, 50), p(&crisp_report.remove, 50)),
        ("RemovePodSandbox p99", p(&containerd_report.remove, 99), p(&crisp_report.remove, 99)),
        (&format!("{pods} pods at once (wall)"), containerd_report.concurrent, crisp_report.concurrent),
    ] {
        println!("{name:<28} {:>10.1}ms {:>10.1}ms {:>8.2}", ms(c), ms(x), ms(x) / ms(c));
    }
    println!(
        "{:<28} {:>10.0}KiB {:>10.0}KiB {:>8.2}",
        "memory per pod",
        containerd_report.memory_per_pod,
        crisp_report.memory_per_pod,
        crisp_report.memory_per_pod / containerd_report.memory_per_pod
    );
    println!("targets: RunPodSandbox <= 0.60, StopPodSandbox <= 0.50, memory per pod <= 0.30");
    drop(stack);
    Ok(())
}

fn first_conflist(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
        .collect();
    files.sort();
    files.into_iter().next().ok_or_else(|| anyhow::anyhow!("no .conflist in {}", dir.display()))
}

/// A pod on a CNI network of its own.
async fn run(client: &mut RuntimeServiceClient<Channel>, tag: &str, i: usize) -> anyhow::Result<Pod> {
    run_pod_with(client, bench_support::pod_config_on(tag, i, NamespaceMode::Pod)).await
}

/// Pods one at a time (run all, stop all, remove all, memory read at N pods), then N at once.
async fn measure(
    client: &mut RuntimeServiceClient<Channel>,
    tag: &str,
    pods: usize,
    memory: impl Fn() -> u64,
) -> anyhow::Result<Report> {
    let before = memory();
    let (mut run_times, mut stop_times, mut remove_times, mut pods_run) = (vec![], vec![], vec![], vec![]);
    for i in 0..pods {
        let started = Instant::now();
        pods_run.push(run(client, tag, i).await?);
        run_times.push(started.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = memory();
    eprintln!("{tag}: {pods} pods run; RSS {} -> {} KiB", before, after);
    for pod in &pods_run {
        let started = Instant::now();
        client.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
        stop_times.push(started.elapsed());
    }
    for pod in pods_run.drain(..) {
        let started = Instant::now();
        client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id }).await?;
        remove_times.push(started.elapsed());
    }

    let started = Instant::now();
    let runs: Vec<_> = (0..pods)
        .map(|i| {
            let mut client = client.clone();
            let tag = format!("{tag}-c");
            tokio::spawn(async move { run(&mut client, &tag, i).await })
        })
        .collect();
    for handle in runs {
        pods_run.push(handle.await??);
    }
    let concurrent = started.elapsed();
    eprintln!("{tag}: {pods} pods at once in {:.0} ms", ms(concurrent));
    for pod in &pods_run {
        remove_pod(client, pod).await?;
    }
    Ok(Report {
        run: run_times,
        stop: stop_times,
        remove: remove_times,
        concurrent,
        memory_per_pod: after.saturating_sub(before) as f64 / pods as f64,
    })
}
