//! PodSandboxStats / ListPodSandboxStats: "returns stats of the pod sandbox".
//!
//! - CPU, memory and process count come from the pod's cgroup, `cgroup_parent` as the kubelet
//!   sent it (cgroupfs syntax): cgroup v1 (`cpuacct`, `memory`, `pids` hierarchies) or v2 (the
//!   unified tree). A pod without a cgroup parent, or whose cgroup is not there, has none.
//! - Network comes from the host side of the pod's link (the interface of ADD's result that is
//!   not in the pod and not a bridge: the veth peer), its counters swapped to the pod's view,
//!   reported as the pod's `eth0`. Read from `/sys/class/net`, with no process entering the pod.
//! - `usage_nano_cores` is the CPU rate between this call's cumulative usage and the last one
//!   read for the same pod (as containerd and cAdvisor compute it): the last sample per pod is
//!   kept in memory ([`CpuSamples`]), so a pod's first call after a start reports none.

use super::record::{self, Stored};
use super::status::metadata;
use super::{SandboxError, network};
use crisp_containerd::Containerd;
use crisp_proto::cri::{
    CpuUsage, LinuxPodSandboxStats, MemoryUsage, NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes,
    PodSandboxStats, PodSandboxStatsFilter, ProcessUsage, UInt64Value,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The last cumulative CPU sample read per pod: (timestamp ns, usage ns).
#[derive(Default, Clone)]
pub struct CpuSamples(Arc<Mutex<HashMap<String, (i64, u64)>>>);

impl CpuSamples {
    /// Records `usage` at `timestamp` for `pod` and answers the rate since the last sample,
    /// in nanocores; none for the first sample, one no later, or a counter that went back.
    fn rate(&self, pod: &str, timestamp: i64, usage: u64) -> Option<u64> {
        let mut samples = self.0.lock().ok()?;
        let last = samples.insert(pod.to_string(), (timestamp, usage))?;
        let (elapsed, used) = (timestamp.checked_sub(last.0)?, usage.checked_sub(last.1)?);
        (elapsed > 0).then(|| (used as u128 * 1_000_000_000 / elapsed as u128) as u64)
    }

    /// Forgets the pods not in `live`.
    fn retain(&self, live: &std::collections::HashSet<&str>) {
        if let Ok(mut samples) = self.0.lock() {
            samples.retain(|pod, _| live.contains(pod.as_str()));
        }
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or_default()
}

fn value(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat).
fn read_keyed(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The pod's cgroup, by hierarchy.
enum Cgroup {
    V1 { cpu: PathBuf, memory: PathBuf, pids: PathBuf },
    V2(PathBuf),
}

impl Cgroup {
    fn find(root: &Path, parent: &str) -> Option<Cgroup> {
        let parent = parent.trim_start_matches('/');
        if parent.is_empty() {
            return None;
        }
        if root.join("cgroup.controllers").exists() {
            let dir = root.join(parent);
            return dir.is_dir().then_some(Cgroup::V2(dir));
        }
        let cpu = root.join("cpuacct").join(parent);
        cpu.is_dir().then(|| Cgroup::V1 {
            cpu,
            memory: root.join("memory").join(parent),
            pids: root.join("pids").join(parent),
        })
    }

    fn cpu(&self, timestamp: i64) -> CpuUsage {
        let nanos = match self {
            Cgroup::V1 { cpu, .. } => read_u64(&cpu.join("cpuacct.usage")),
            Cgroup::V2(dir) => read_keyed(&dir.join("cpu.stat")).get("usage_usec").map(|us| us * 1000),
        };
        CpuUsage { timestamp, usage_core_nano_seconds: nanos.and_then(value), ..Default::default() }
    }

    fn memory(&self, timestamp: i64) -> MemoryUsage {
        let (usage, stat, inactive, rss, faults, major) = match self {
            Cgroup::V1 { memory, .. } => (
                read_u64(&memory.join("memory.usage_in_bytes")),
                read_keyed(&memory.join("memory.stat")),
                "total_inactive_file",
                "total_rss",
                "total_pgfault",
                "total_pgmajfault",
            ),
            Cgroup::V2(dir) => (
                read_u64(&dir.join("memory.current")),
                read_keyed(&dir.join("memory.stat")),
                "inactive_file",
                "anon",
                "pgfault",
                "pgmajfault",
            ),
        };
        let working_set = usage.map(|u| u.saturating_sub(stat.get(inactive).copied().unwrap_or(0)));
        MemoryUsage {
            timestamp,
            working_set_bytes: working_set.and_then(value),
            usage_bytes: usage.and_then(value),
            rss_bytes: stat.get(rss).copied().and_then(value),
            page_faults: stat.get(faults).copied().and_then(value),
            major_page_faults: stat.get(major).copied().and_then(value),
            ..Default::default()
        }
    }

    fn processes(&self, timestamp: i64) -> ProcessUsage {
        let count = match self {
            Cgroup::V1 { pids, .. } => read_u64(&pids.join("pids.current")),
            Cgroup::V2(dir) => read_u64(&dir.join("pids.current")),
        };
        ProcessUsage { timestamp, process_count: count.and_then(value) }
    }
}

/// The pod's `eth0` as seen from its host-side peer `host_link`.
fn interface_usage(host_link: &str) -> Option<NetworkInterfaceUsage> {
    let stats = Path::new("/sys/class/net").join(host_link).join("statistics");
    let read = |name: &str| read_u64(&stats.join(name));
    Some(NetworkInterfaceUsage {
        name: "eth0".into(),
        // What the host side sent, the pod received.
        rx_bytes: value(read("tx_bytes")?),
        rx_errors: read("tx_errors").and_then(value),
        tx_bytes: read("rx_bytes").and_then(value),
        tx_errors: read("rx_errors").and_then(value),
    })
}

fn pod_stats(stored: &Stored, samples: &CpuSamples) -> PodSandboxStats {
    let s = &stored.sandbox;
    let timestamp = now();
    let cgroup = Cgroup::find(Path::new(CGROUP_ROOT), &s.cgroup_parent);
    let network = network::host_link(&s.network_dir).and_then(|link| interface_usage(&link)).map(|eth0| NetworkUsage {
        timestamp,
        default_interface: Some(eth0.clone()),
        interfaces: vec![eth0],
    });
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: s.id.clone(),
            metadata: Some(metadata(stored)),
            labels: s.labels.clone(),
            annotations: s.annotations.clone(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: cgroup.as_ref().map(|c| {
                let mut cpu = c.cpu(timestamp);
                // The rate's clock is read right after the counter, not at the call's start.
                let sampled_at = now();
                cpu.usage_nano_cores = cpu
                    .usage_core_nano_seconds
                    .as_ref()
                    .and_then(|usage| samples.rate(&s.id, sampled_at, usage.value))
                    .and_then(value);
                cpu
            }),
            memory: cgroup.as_ref().map(|c| c.memory(timestamp)),
            process: cgroup.as_ref().map(|c| c.processes(timestamp)),
            network,
            ..Default::default()
        }),
        windows: None,
    }
}

pub async fn stats(containerd: &Containerd, samples: &CpuSamples, id: &str) -> Result<PodSandboxStats, SandboxError> {
    let stored = record::find(containerd, id).await?.ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
    Ok(pod_stats(&stored, samples))
}

pub async fn list_stats(
    containerd: &Containerd,
    samples: &CpuSamples,
    filter: Option<PodSandboxStatsFilter>,
) -> Result<Vec<PodSandboxStats>, SandboxError> {
    let all = record::list_all(containerd).await?;
    samples.retain(&all.iter().map(|s| s.sandbox.id.as_str()).collect());
    let filter =
        filter.map(|f| crisp_proto::cri::PodSandboxFilter { id: f.id, state: None, label_selector: f.label_selector });
    Ok(super::list::filtered(all, filter.as_ref()).iter().map(|s| pod_stats(s, samples)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_cgroup_files_become_cpu_memory_and_process_usage() {
        let root = tempfile::tempdir().unwrap();
        for controller in ["cpuacct", "memory", "pids"] {
            std::fs::create_dir_all(root.path().join(controller).join("kubepods/pod1")).unwrap();
        }
        let dir = |c: &str| root.path().join(c).join("kubepods/pod1");
        std::fs::write(dir("cpuacct").join("cpuacct.usage"), "123456\n").unwrap();
        std::fs::write(dir("memory").join("memory.usage_in_bytes"), "1000\n").unwrap();
        std::fs::write(
            dir("memory").join("memory.stat"),
            "cache 5\ntotal_inactive_file 300\ntotal_rss 600\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
        )
        .unwrap();
        std::fs::write(dir("pids").join("pids.current"), "3\n").unwrap();

        assert!(Cgroup::find(root.path(), "").is_none());
        assert!(Cgroup::find(root.path(), "/kubepods/absent").is_none());
        let cgroup = Cgroup::find(root.path(), "/kubepods/pod1").unwrap();
        assert_eq!(cgroup.cpu(1).usage_core_nano_seconds, value(123456));
        let memory = cgroup.memory(1);
        assert_eq!(memory.working_set_bytes, value(700));
        assert_eq!(memory.rss_bytes, value(600));
        assert_eq!(memory.page_faults, value(7));
        assert_eq!(memory.major_page_faults, value(1));
        assert_eq!(cgroup.processes(1).process_count, value(3));
    }

    #[test]
    fn usage_nano_cores_is_the_rate_between_two_samples_of_the_same_pod() {
        let samples = CpuSamples::default();
        assert_eq!(samples.rate("a", 1_000_000_000, 500), None);
        // Half a core: 0.5s of CPU over one second.
        assert_eq!(samples.rate("a", 2_000_000_000, 500_000_500), Some(500_000_000));
        assert_eq!(samples.rate("b", 2_000_000_000, 7), None);
        // No time passed, or a counter that went back (the cgroup was made anew): none.
        assert_eq!(samples.rate("a", 2_000_000_000, 600_000_000), None);
        assert_eq!(samples.rate("a", 3_000_000_000, 10), None);
        samples.retain(&["b"].into());
        assert_eq!(samples.rate("a", 4_000_000_000, 20), None);
        assert_eq!(samples.rate("b", 3_000_000_000, 250_000_007), Some(250_000_000));
    }

    #[test]
    fn v2_cgroup_files_become_cpu_and_memory_usage() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let dir = root.path().join("kubepods/pod1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 5\nuser_usec 3\n").unwrap();
        std::fs::write(dir.join("memory.current"), "1000\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 400\ninactive_file 100\npgfault 9\npgmajfault 2\n").unwrap();
        let cgroup = Cgroup::find(root.path(), "kubepods/pod1").unwrap();
        assert_eq!(cgroup.cpu(1).usage_core_nano_seconds, value(5000));
        assert_eq!(cgroup.memory(1).working_set_bytes, value(900));
        assert_eq!(cgroup.memory(1).rss_bytes, value(400));
        assert_eq!(cgroup.processes(1).process_count, None);
    }
}
