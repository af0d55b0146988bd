//! `bench-containers`: container latencies and scale through crisp and through containerd's
//! own CRI plugin on this machine, side by side, as ratios (issue 9's benchmark). Not a test:
//! run it by hand (`tests/bench/containers.sh`).
//!
//! bench-containers [--containers N (50)] [--list N (500)] [--calls N (50)] [--memory N (100)]
//!                  [--containerd-socket /run/containerd/containerd.sock]
//!
//! Both runtimes pull one busybox image from a private loopback registry. Measured, each
//! runtime in turn, on pods using the node's network (no CNI in the way):
//! - CreateContainer+StartContainer and StopContainer+RemoveContainer latency, p50/p99 over N
//!   containers made one at a time in one pod;
//! - ListContainers and ContainerStatus latency (p50 of `--calls` calls) with `--list`
//!   containers created (more calls give a profiler time to sample the answer's path);
//! - ExecSync round trip (`true`), p50 over N calls (`n/a` where the runtime answers
//!   UNIMPLEMENTED);
//! - N pods each with one container, run and started all at once (wall time);
//! - memory at `--memory` running containers: the growth of crisp's services' RSS against the
//!   growth of containerd's RSS plus its new shims'.

mod bench_support;

use bench_support::*;
use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use crisp_proto::cri::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(bench())
}

#[derive(Default)]
struct Report {
    create_start: Vec<Duration>,
    stop_remove: Vec<Duration>,
    list: Vec<Duration>,
    /// ListContainers on the runtime service's own socket, past the proxy (crisp only).
    list_direct: Vec<Duration>,
    status: Vec<Duration>,
    exec: Option<Vec<Duration>>,
    concurrent: Duration,
    memory_per_container: f64,
}

struct Target {
    name: &'static str,
    client: RuntimeServiceClient<Channel>,
    /// The runtime service itself, where the client goes through a proxy.
    direct: Option<RuntimeServiceClient<Channel>>,
    image: String,
    memory: Box<dyn Fn() -> u64>,
}

async fn bench() -> anyhow::Result<()> {
    let (mut containers, mut list, mut calls, mut memory) = (50usize, 500usize, 50usize, 100usize);
    let mut containerd_socket = PathBuf::from("/run/containerd/containerd.sock");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |default: usize| args.next().and_then(|v| v.parse().ok()).unwrap_or(default);
        match arg.as_str() {
            "--containers" => containers = number(containers),
            "--list" => list = number(list),
            "--calls" => calls = number(calls).max(1),
            "--memory" => memory = number(memory),
            "--containerd-socket" => containerd_socket = args.next().map(PathBuf::from).unwrap_or(containerd_socket),
            other => anyhow::bail!(
                "unknown argument {other}; usage: bench-containers [--containers N] [--list N] [--calls N] [--memory N] [--containerd-socket PATH]"
            ),
        }
    }

    let setup = Setup::start(&containerd_socket).await?;
    let Setup { registry: _registry, mut stack, image, containerd, containerd_pid } = setup;
    let crisp_pids = vec![stack.service_pid("runtime")?, stack.service_pid("proxy")?];

    let shims_before = k8s_shims();
    let mut targets = [
        Target {
            name: "containerd",
            client: containerd,
            direct: None,
            image: image.clone(),
            memory: Box::new(move || {
                let grown: Vec<u32> = k8s_shims().difference(&shims_before).copied().collect();
                rss(&[containerd_pid]) + rss(&grown)
            }),
        },
        Target {
            name: "crisp",
            client: stack.runtime_client(),
            direct: Some(RuntimeServiceClient::new(crisp_testkit::cri_channel(&stack.dir().join("runtime.sock")))),
            image: image.clone(),
            memory: Box::new(move || rss(&crisp_pids)),
        },
    ];
    let mut reports = vec![];
    for target in &mut targets {
        let report = measure(target, containers, list, calls, memory)
            .await
            .map_err(|e| anyhow::anyhow!("{} failed: {e}", target.name))?;
        reports.push(report);
    }
    let (c, x) = (&reports[0], &reports[1]);

    println!("{containers} containers one at a time, {list} listed, {memory} for memory");
    println!("{:<34} {:>12} {:>12} {:>8}", "", "containerd", "crisp", "ratio");
    let rows = [
        ("Create+Start p50", p(&c.create_start, 50), p(&x.create_start, 50)),
        ("Create+Start p99", p(&c.create_start, 99), p(&x.create_start, 99)),
        ("Stop+Remove p50", p(&c.stop_remove, 50), p(&x.stop_remove, 50)),
        ("Stop+Remove p99", p(&c.stop_remove, 99), p(&x.stop_remove, 99)),
        (&*format!("ListContainers at {list} p50"), p(&c.list, 50), p(&x.list, 50)),
        (&*format!("ContainerStatus at {list} p50"), p(&c.status, 50), p(&x.status, 50)),
        (&*format!("{containers} pods+containers at once"), c.concurrent, x.concurrent),
    ];
    for (name, c, x) in rows {
        println!("{name:<34} {:>10.1}ms {:>10.1}ms {:>8.2}", ms(c), ms(x), ms(x) / ms(c));
    }
    if !x.list_direct.is_empty() {
        let direct = p(&x.list_direct, 50);
        println!(
            "{:<34} {:>12} {:>10.1}ms {:>8.2}",
            "  crisp past the proxy",
            "",
            ms(direct),
            ms(direct) / ms(p(&c.list, 50))
        );
    }
    match (&c.exec, &x.exec) {
        (Some(ce), Some(xe)) => {
            let (ce, xe) = (p(ce, 50), p(xe, 50));
            println!("{:<34} {:>10.1}ms {:>10.1}ms {:>8.2}", "ExecSync p50", ms(ce), ms(xe), ms(xe) / ms(ce));
        }
        _ => println!("{:<34} {:>12} {:>12}", "ExecSync p50", "", "n/a (UNIMPLEMENTED)"),
    }
    println!(
        "{:<34} {:>9.0}KiB {:>9.0}KiB {:>8.2}",
        "memory per running container",
        c.memory_per_container,
        x.memory_per_container,
        x.memory_per_container / c.memory_per_container
    );
    println!("targets: latencies <= 0.80, ListContainers at 500 <= 0.50, memory <= 1.00");
    drop(stack);
    Ok(())
}

fn p(times: &[Duration], percentile: usize) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[((sorted.len() * percentile).div_ceil(100)).saturating_sub(1).min(sorted.len() - 1)]
}

async fn measure(
    target: &mut Target,
    containers: usize,
    list: usize,
    calls: usize,
    memory: usize,
) -> anyhow::Result<Report> {
    let tag = target.name;
    let client = &mut target.client;
    let mut report = Report::default();

    // Latencies, one container at a time in one pod.
    let pod = run_pod(client, tag, 0).await?;
    let mut ids = vec![];
    for i in 0..containers {
        let started = Instant::now();
        let id = create(client, &pod, container_config(&target.image, &format!("c{i}"))).await?;
        client.start_container(StartContainerRequest { container_id: id.clone() }).await?;
        report.create_start.push(started.elapsed());
        ids.push(id);
    }
    let mut exec = vec![];
    for id in ids.iter().cycle().take(containers) {
        let request = ExecSyncRequest { container_id: id.clone(), cmd: vec!["true".into()], timeout: 10 };
        let started = Instant::now();
        match client.exec_sync(request).await {
            Ok(_) => exec.push(started.elapsed()),
            Err(status) if status.code() == tonic::Code::Unimplemented => break,
            Err(status) => return Err(status.into()),
        }
    }
    report.exec = (!exec.is_empty()).then_some(exec);
    for id in ids.drain(..) {
        let started = Instant::now();
        client.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 0 }).await?;
        client.remove_container(RemoveContainerRequest { container_id: id }).await?;
        report.stop_remove.push(started.elapsed());
    }
    eprintln!("{tag}: latencies measured");

    // Scale: `list` created containers.
    for i in 0..list {
        ids.push(create(client, &pod, container_config(&target.image, &format!("l{i}"))).await?);
    }
    for i in 0..calls {
        let started = Instant::now();
        let listed = client.list_containers(ListContainersRequest { filter: None }).await?.into_inner().containers;
        report.list.push(started.elapsed());
        anyhow::ensure!(listed.len() >= list, "{tag} listed {} of {list}", listed.len());
        if let Some(direct) = target.direct.as_mut() {
            let started = Instant::now();
            direct.list_containers(ListContainersRequest { filter: None }).await?;
            report.list_direct.push(started.elapsed());
        }
        let started = Instant::now();
        let request = ContainerStatusRequest { container_id: ids[i * list / calls].clone(), verbose: false };
        client.container_status(request).await?;
        report.status.push(started.elapsed());
    }
    remove_pod(client, &pod).await?;
    eprintln!("{tag}: {list} containers listed");

    // N pods, each with one container, at once.
    let started = Instant::now();
    let runs: Vec<_> = (0..containers)
        .map(|i| {
            let mut client = client.clone();
            let image = target.image.clone();
            tokio::spawn(async move {
                let pod = run_pod(&mut client, &format!("{tag}-c"), i).await?;
                let id = create(&mut client, &pod, container_config(&image, "app")).await?;
                client.start_container(StartContainerRequest { container_id: id }).await?;
                anyhow::Ok(pod)
            })
        })
        .collect();
    let mut pods = vec![];
    for handle in runs {
        pods.push(handle.await??);
    }
    report.concurrent = started.elapsed();
    for pod in &pods {
        remove_pod(client, pod).await?;
    }
    eprintln!("{tag}: {containers} pods at once in {:.0} ms", ms(report.concurrent));

    // Memory at `memory` running containers.
    let pod = run_pod(client, &format!("{tag}-m"), 0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (target.memory)();
    for i in 0..memory {
        let id = create(client, &pod, container_config(&target.image, &format!("m{i}"))).await?;
        client.start_container(StartContainerRequest { container_id: id }).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = (target.memory)();
    eprintln!("{tag}: {memory} running containers; RSS {before} -> {after} KiB");
    report.memory_per_container = after.saturating_sub(before) as f64 / memory.max(1) as f64;
    remove_pod(client, &pod).await?;
    Ok(report)
}
