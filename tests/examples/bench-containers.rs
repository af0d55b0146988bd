//! `bench-containers`: container latencies and scale through crisp and through containerd's
//! own CRI plugin on this machine, side by side, as ratios (issue 9's benchmark). Not a test:
//! run it by hand (`tests/bench/containers.sh`).
//!
//! bench-containers [--containers N (50)] [--list N (500, at least 1)] [--calls N (50)] [--memory N (100)]
//!                  [--containerd-socket /run/containerd/containerd.sock] [--crisp-only]
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
//!
//! `--containers 0 --memory 0` measures ListContainers and ContainerStatus alone; `--crisp-only`
//! skips containerd (to profile crisp's services, whose pids it prints).

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
    /// The servers' CPU time per ListContainers and per ContainerStatus (loops of their own),
    /// by process.
    list_cpu: Vec<(&'static str, Duration)>,
    status_cpu: Vec<(&'static str, Duration)>,
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
    /// The processes that serve the calls, for their CPU time.
    servers: Vec<(&'static str, u32)>,
}

async fn bench() -> anyhow::Result<()> {
    let (mut containers, mut list, mut calls, mut memory) = (50usize, 500usize, 50usize, 100usize);
    let mut containerd_socket = PathBuf::from("/run/containerd/containerd.sock");
    let mut crisp_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |default: usize| args.next().and_then(|v| v.parse().ok()).unwrap_or(default);
        match arg.as_str() {
            "--containers" => containers = number(containers),
            "--list" => list = number(list).max(1),
            "--calls" => calls = number(calls).max(1),
            "--memory" => memory = number(memory),
            "--crisp-only" => crisp_only = true,
            "--containerd-socket" => containerd_socket = args.next().map(PathBuf::from).unwrap_or(containerd_socket),
            other => anyhow::bail!(
                "unknown argument {other}; usage: bench-containers [--containers N] [--list N] [--calls N] [--memory N] [--containerd-socket PATH] [--crisp-only]"
            ),
        }
    }

    let setup = Setup::start(&containerd_socket).await?;
    let Setup { registry: _registry, mut stack, image, containerd, containerd_pid } = setup;
    let crisp_pids = vec![stack.service_pid("runtime")?, stack.service_pid("proxy")?];
    eprintln!("crisp: runtime service pid {}, proxy pid {}", crisp_pids[0], crisp_pids[1]);

    let shims_before = k8s_shims();
    let mut targets = [
        Target {
            name: "containerd",
            client: containerd,
            direct: None,
            image: image.clone(),
            servers: vec![("containerd", containerd_pid)],
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
            servers: vec![("runtime", crisp_pids[0]), ("proxy", crisp_pids[1])],
            memory: Box::new(move || rss(&crisp_pids)),
        },
    ];
    let mut reports = vec![];
    for target in &mut targets {
        if crisp_only && target.name == "containerd" {
            reports.push(Report::default());
            continue;
        }
        let report = measure(target, containers, list, calls, memory)
            .await
            .map_err(|e| anyhow::anyhow!("{} failed: {e}", target.name))?;
        reports.push(report);
    }
    let (c, x) = (&reports[0], &reports[1]);

    println!("{containers} containers one at a time, {list} listed, {memory} for memory");
    println!("{:<34} {:>12} {:>12} {:>8}", "", "containerd", "crisp", "ratio");
    // A part run with 0 containers (`--containers 0`, to measure the lists alone) has no row.
    let latencies = containers > 0;
    let rows = [
        (latencies, "Create+Start p50", p(&c.create_start, 50), p(&x.create_start, 50)),
        (latencies, "Create+Start p99", p(&c.create_start, 99), p(&x.create_start, 99)),
        (latencies, "Stop+Remove p50", p(&c.stop_remove, 50), p(&x.stop_remove, 50)),
        (latencies, "Stop+Remove p99", p(&c.stop_remove, 99), p(&x.stop_remove, 99)),
        (true, &*format!("ListContainers at {list} p50"), p(&c.list, 50), p(&x.list, 50)),
        (true, &*format!("ContainerStatus at {list} p50"), p(&c.status, 50), p(&x.status, 50)),
        (latencies, &*format!("{containers} pods+containers at once"), c.concurrent, x.concurrent),
    ];
    for (_, name, c, x) in rows.into_iter().filter(|row| row.0) {
        println!("{name:<34} {:>10.2}ms {:>10.2}ms {:>8.2}", ms(c), ms(x), ms(x) / ms(c));
    }
    if !x.list_direct.is_empty() {
        let direct = p(&x.list_direct, 50);
        println!(
            "{:<34} {:>12} {:>10.2}ms {:>8.2}",
            "  crisp past the proxy",
            "",
            ms(direct),
            ms(direct) / ms(p(&c.list, 50))
        );
    }
    for (what, c, x) in [("List", &c.list_cpu, &x.list_cpu), ("Status", &c.status_cpu, &x.status_cpu)] {
        let sum = |cpu: &[(&str, Duration)]| cpu.iter().map(|(_, d)| *d).sum::<Duration>();
        let parts: Vec<String> = x.iter().map(|(name, d)| format!("{name} {:.0}", d.as_secs_f64() * 1e6)).collect();
        println!(
            "{:<34} {:>10.0}µs {:>10.0}µs {:>8.2}  ({})",
            format!("server CPU per {what}"),
            sum(c).as_secs_f64() * 1e6,
            sum(x).as_secs_f64() * 1e6,
            sum(x).as_secs_f64() / sum(c).as_secs_f64(),
            parts.join(", ")
        );
    }
    match (&c.exec, &x.exec) {
        (Some(ce), Some(xe)) => {
            let (ce, xe) = (p(ce, 50), p(xe, 50));
            println!("{:<34} {:>10.2}ms {:>10.2}ms {:>8.2}", "ExecSync p50", ms(ce), ms(xe), ms(xe) / ms(ce));
        }
        _ if containers == 0 => {}
        _ => println!("{:<34} {:>12} {:>12}", "ExecSync p50", "", "n/a (UNIMPLEMENTED)"),
    }
    if memory > 0 {
        println!(
            "{:<34} {:>9.0}KiB {:>9.0}KiB {:>8.2}",
            "memory per running container",
            c.memory_per_container,
            x.memory_per_container,
            x.memory_per_container / c.memory_per_container
        );
    }
    println!("targets: latencies <= 0.80, ListContainers at 500 <= 0.50, memory <= 1.00");
    drop(stack);
    Ok(())
}

/// The CPU time each of `servers` has run so far (all its threads, from `/proc`).
fn cpu(servers: &[(&'static str, u32)]) -> Vec<(&'static str, Duration)> {
    let threads = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    let ran = |task: std::fs::DirEntry| {
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        Some(Duration::from_nanos(schedstat.split_whitespace().next()?.parse().ok()?))
    };
    servers.iter().map(|&(name, pid)| (name, threads(pid).filter_map(ran).sum())).collect()
}

fn per_call(
    before: Vec<(&'static str, Duration)>,
    after: Vec<(&'static str, Duration)>,
    calls: usize,
) -> Vec<(&'static str, Duration)> {
    let calls = u32::try_from(calls).unwrap_or(u32::MAX);
    before.into_iter().zip(after).map(|((name, b), (_, a))| (name, a.saturating_sub(b) / calls)).collect()
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
    eprintln!("{tag}: {list} containers made; listing");
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
    // CPU: each kind of call in a loop of its own, as many calls again.
    let before = cpu(&target.servers);
    for _ in 0..calls {
        client.list_containers(ListContainersRequest { filter: None }).await?;
    }
    report.list_cpu = per_call(before, cpu(&target.servers), calls);
    let before = cpu(&target.servers);
    for i in 0..calls {
        let request = ContainerStatusRequest { container_id: ids[i * list / calls].clone(), verbose: false };
        client.container_status(request).await?;
    }
    report.status_cpu = per_call(before, cpu(&target.servers), calls);
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
