//! `bench-shims`: memory per pod at N pods with 0, 1 and 3 containers each, through crisp and
//! through containerd's own CRI plugin on this machine, side by side, as ratios (issue 14's
//! benchmark). Not a test: run it by hand (`tests/bench/shims.sh`).
//!
//! bench-shims [--pods N (50)] [--containerd-socket /run/containerd/containerd.sock]
//!
//! Each runtime in turn, each case in turn: N pods on the node's network, each with its
//! `sleep` containers started; memory is the sum of the PSS (`/proc/<pid>/smaps_rollup`) of the
//! runtime's own processes (crisp: its four services; containerd: the daemon), every
//! `containerd-shim-runc-v2` serving the runtime's namespace and the pause processes under them,
//! taken before the pods and after; the growth divided by N is the memory per pod. The
//! containers' own processes (`sleep`, alike for both) are not counted. The pods are removed
//! after each case. crisp runs as the test kit's stack on a containerd of its own; that
//! containerd's growth is printed beside, not counted (containerd's daemon is counted on its
//! side because it is the CRI runtime there).

mod bench_support;

use bench_support::*;
use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use crisp_proto::cri::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Containers per pod, per case.
const CASES: [usize; 3] = [0, 1, 3];

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(bench())
}

/// What one runtime costs, from the host.
struct Target {
    name: &'static str,
    client: RuntimeServiceClient<Channel>,
    /// The runtime's own processes.
    own: Vec<u32>,
    /// Its containerd's socket and namespace: whose shims count.
    address: PathBuf,
    namespace: &'static str,
    /// A containerd whose growth is shown, not counted (crisp's).
    beside: Option<u32>,
}

/// One measurement, KiB.
#[derive(Clone, Copy)]
struct Memory {
    own: u64,
    shims: u64,
    pause: u64,
    shim_count: usize,
    pause_count: usize,
    beside: u64,
}

impl Memory {
    fn total(&self) -> u64 {
        self.own + self.shims + self.pause
    }
}

impl Target {
    fn memory(&self) -> Memory {
        let all = processes();
        let shims = shims_of(&all, &self.address, self.namespace);
        let pause = pause_processes(&all, &shims);
        Memory {
            own: pss(&self.own),
            shims: pss(&shims),
            pause: pss(&pause),
            shim_count: shims.len(),
            pause_count: pause.len(),
            beside: self.beside.map(|pid| pss(&[pid])).unwrap_or(0),
        }
    }
}

/// One case's growth per pod, KiB, and the shims and pause processes it added.
struct Case {
    per_pod: f64,
    shims: isize,
    pause: isize,
    beside_per_pod: f64,
}

async fn bench() -> anyhow::Result<()> {
    let mut pods = 50usize;
    let mut containerd_socket = PathBuf::from("/run/containerd/containerd.sock");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pods" => pods = args.next().and_then(|v| v.parse().ok()).unwrap_or(pods),
            "--containerd-socket" => containerd_socket = args.next().map(PathBuf::from).unwrap_or(containerd_socket),
            other => {
                anyhow::bail!("unknown argument {other}; usage: bench-shims [--pods N] [--containerd-socket PATH]")
            }
        }
    }

    let Setup { registry: _registry, mut stack, image, containerd, containerd_pid } =
        Setup::start(&containerd_socket).await?;
    let mut own = vec![];
    for service in ["runtime", "streaming", "image-0", "proxy"] {
        own.push(stack.service_pid(service)?);
    }
    let crisp_containerd = Some(socket_pid(stack.containerd_address()).await?);
    let mut targets = [
        Target {
            name: "containerd",
            client: containerd,
            own: vec![containerd_pid],
            address: containerd_socket.clone(),
            namespace: "k8s.io",
            beside: None,
        },
        Target {
            name: "crisp",
            client: stack.runtime_client(),
            own,
            address: stack.containerd_address().to_path_buf(),
            namespace: "crisp",
            beside: crisp_containerd,
        },
    ];

    let mut results: Vec<Vec<Case>> = vec![];
    for target in &mut targets {
        // One pod with a container first: containerd has its pause image, both are warm.
        let pod = run_pod(&mut target.client, &format!("{}-warm", target.name), 0).await?;
        let id = create(&mut target.client, &pod, container_config(&image, "warm")).await?;
        target.client.start_container(StartContainerRequest { container_id: id }).await?;
        remove_pod(&mut target.client, &pod).await?;

        let mut cases = vec![];
        for containers in CASES {
            let case = measure(target, &image, pods, containers)
                .await
                .map_err(|e| anyhow::anyhow!("{} with {containers} containers per pod failed: {e}", target.name))?;
            cases.push(case);
        }
        results.push(cases);
    }

    println!("memory per pod at {pods} pods: PSS of the runtime, its shims and pause processes");
    println!("{:<26} {:>16} {:>16} {:>8}", "", "containerd", "crisp", "ratio");
    for (i, containers) in CASES.iter().enumerate() {
        let (c, x) = (&results[0][i], &results[1][i]);
        println!(
            "{:<26} {:>13.0}KiB {:>13.0}KiB {:>8.2}",
            format!("{containers} containers per pod"),
            c.per_pod,
            x.per_pod,
            x.per_pod / c.per_pod
        );
        println!(
            "{:<26} {:>16} {:>16}",
            "  shims / pause added",
            format!("{} / {}", c.shims, c.pause),
            format!("{} / {}", x.shims, x.pause)
        );
        println!("{:<26} {:>16} {:>13.0}KiB", "  crisp's containerd beside", "", x.beside_per_pod);
    }
    println!("targets: 1 container per pod <= 0.80, pods without containers <= 0.50");
    drop(stack);
    Ok(())
}

/// Runs `pods` pods of `containers` containers, measures, removes them and waits for their
/// shims to go.
async fn measure(target: &mut Target, image: &str, pods: usize, containers: usize) -> anyhow::Result<Case> {
    let tag = format!("{}-{containers}", target.name);
    settle(target, None).await;
    let before = target.memory();
    let started = Instant::now();
    let mut made = vec![];
    for i in 0..pods {
        let pod = run_pod(&mut target.client, &tag, i).await?;
        for c in 0..containers {
            let id = create(&mut target.client, &pod, container_config(image, &format!("c{c}"))).await?;
            target.client.start_container(StartContainerRequest { container_id: id }).await?;
        }
        made.push(pod);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = target.memory();
    eprintln!(
        "{tag}: {pods} pods in {:.0} ms; PSS {} -> {} KiB (own {} -> {}, {} shims {} -> {}, {} pause {} -> {})",
        ms(started.elapsed()),
        before.total(),
        after.total(),
        before.own,
        after.own,
        after.shim_count,
        before.shims,
        after.shims,
        after.pause_count,
        before.pause,
        after.pause
    );
    for pod in &made {
        remove_pod(&mut target.client, pod).await?;
    }
    settle(target, Some(before.shim_count)).await;
    let left = target.memory();
    if left.shim_count > before.shim_count {
        eprintln!("{tag}: {} shims left after the pods were removed", left.shim_count - before.shim_count);
    }
    let grown = |a: u64, b: u64| (a as f64 - b as f64) / pods.max(1) as f64;
    Ok(Case {
        per_pod: grown(after.total(), before.total()),
        shims: after.shim_count as isize - before.shim_count as isize,
        pause: after.pause_count as isize - before.pause_count as isize,
        beside_per_pod: grown(after.beside, before.beside),
    })
}

/// Waits (up to 30 s) until no more than `shims` shims serve the target (with `None`: a
/// second), so that exiting shims of a previous case are not counted.
async fn settle(target: &Target, shims: Option<usize>) {
    let Some(want) = shims else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    };
    for _ in 0..300 {
        if shims_of(&processes(), Path::new(&target.address), target.namespace).len() <= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
