//! PodSandboxStats and ListPodSandboxStats through the proxy: CPU, memory and process count
//! from the pod's cgroup (a cgroup v1 parent the test makes, as the kubelet would, with a
//! process in it), network counters that move when the host sends the pod traffic.

mod sandbox_support;

use crisp_proto::cri::*;
use crisp_testkit::Stack;
use sandbox_support::*;
use std::path::PathBuf;
use std::time::Duration;
use tonic::Code;

/// A cgroup v1 pod cgroup in the cpuacct, memory and pids hierarchies, with a busy process in it.
struct PodCgroup {
    parent: String,
    dirs: Vec<PathBuf>,
    process: std::process::Child,
}

impl PodCgroup {
    fn new(name: &str) -> PodCgroup {
        let parent = format!("/{name}-{}", std::process::id());
        let dirs: Vec<PathBuf> = ["cpuacct", "memory", "pids"]
            .iter()
            .map(|controller| PathBuf::from("/sys/fs/cgroup").join(controller).join(parent.trim_start_matches('/')))
            .collect();
        let mut join = String::new();
        for dir in &dirs {
            std::fs::create_dir_all(dir).unwrap();
            join.push_str(&format!("echo $$ > {}/cgroup.procs; ", dir.display()));
        }
        // The process joins the cgroups first, then execs: its memory is charged to them.
        let process = std::process::Command::new("busybox")
            .args([
                "sh",
                "-c",
                &format!("{join}exec busybox sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exec sleep 60'"),
            ])
            .spawn()
            .unwrap();
        PodCgroup { parent, dirs, process }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        for dir in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn counter(v: &Option<UInt64Value>) -> u64 {
    v.as_ref().map(|v| v.value).unwrap_or_default()
}

#[tokio::test]
async fn pod_stats_come_from_its_cgroup_and_its_link_and_move() {
    if !std::path::Path::new("/sys/fs/cgroup/cpuacct").is_dir() {
        eprintln!("skipped: this test makes cgroup v1 pod cgroups");
        return;
    }
    let stack = Stack::start().await.unwrap();
    let _network = write_network(&stack, "stats", 18, &[]);
    let cgroup = PodCgroup::new("crisp-stats-test");
    let mut config = pod_config("web", "uid-web");
    config.linux.get_or_insert_default().cgroup_parent = cgroup.parent.clone();
    let id = run(&stack, config).await.unwrap();
    let other = run(&stack, pod_config("db", "uid-db")).await.unwrap();
    let ip = status(&stack, &id).await.unwrap().status.unwrap().network.unwrap().ip;

    let mut runtime = stack.runtime_client();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = runtime
        .pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(stats.attributes.as_ref().unwrap().id, id);
    assert_eq!(stats.attributes.as_ref().unwrap().labels["app"], "web");
    let linux = stats.linux.unwrap();
    let cpu = linux.cpu.unwrap();
    let cpu_before = counter(&cpu.usage_core_nano_seconds);
    assert!(cpu_before > 0);
    // A rate needs two samples: the pod's first call has none.
    assert_eq!(cpu.usage_nano_cores, None);
    assert!(counter(&linux.memory.unwrap().working_set_bytes) > 0);
    assert_eq!(counter(&linux.process.unwrap().process_count), 1);
    let eth0 = linux.network.unwrap().default_interface.unwrap();
    assert_eq!(eth0.name, "eth0");
    let rx_before = counter(&eth0.rx_bytes);

    // Traffic from the host to the pod (connections refused by the pod still reach it).
    for _ in 0..5 {
        let _ = std::net::TcpStream::connect_timeout(&format!("{ip}:9").parse().unwrap(), Duration::from_millis(300));
    }
    let listed = runtime
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter { id: id[..10].to_string(), ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let linux = listed[0].linux.clone().unwrap();
    assert!(counter(&linux.network.unwrap().default_interface.unwrap().rx_bytes) > rx_before);
    let cpu = linux.cpu.unwrap();
    assert!(counter(&cpu.usage_core_nano_seconds) >= cpu_before);
    // The second one has the rate since the first, at most the machine's cores.
    let nano_cores = cpu.usage_nano_cores.expect("a rate from the second sample").value;
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(nano_cores <= cores * 1_000_000_000, "{nano_cores}");

    // A pod without a cgroup parent has network stats only; labels filter.
    let all = runtime.list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None }).await.unwrap().into_inner();
    assert_eq!(all.stats.len(), 2);
    let db = runtime
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                label_selector: [("app".to_string(), "db".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(db.len(), 1);
    let linux = db[0].linux.clone().unwrap();
    assert!(linux.cpu.is_none() && linux.network.is_some());

    let err = runtime.pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    remove(&stack, &id).await.unwrap();
    remove(&stack, &other).await.unwrap();
}
