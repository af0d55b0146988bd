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
//! - The cgroup files are read by [`crate::cgroup`], as a container's are.

use super::record::{self, Stored};
use super::status::metadata;
use super::{SandboxError, network};
pub use crate::cgroup::CpuSamples;
use crate::cgroup::{self, Cgroup};
use crisp_containerd::Containerd;
use crisp_proto::cri::{
    LinuxPodSandboxStats, NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes, PodSandboxStats,
    PodSandboxStatsFilter, UInt64Value,
};
use std::collections::BTreeMap;
use std::path::Path;

fn value(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
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

/// The pod's `eth0` counters from the pod's view (`rx_bytes`, `rx_packets`, `rx_errors`,
/// `rx_dropped`, and the same for `tx_`), read from its host-side peer `host_link`.
fn link_counters(host_link: &str) -> BTreeMap<String, u64> {
    let stats = Path::new("/sys/class/net").join(host_link).join("statistics");
    let mut counters = BTreeMap::new();
    for (pod, host) in [("rx", "tx"), ("tx", "rx")] {
        for what in ["bytes", "packets", "errors", "dropped"] {
            if let Some(v) = read_u64(&stats.join(format!("{host}_{what}"))) {
                counters.insert(format!("{pod}_{what}"), v);
            }
        }
    }
    counters
}

fn pod_stats(stored: &Stored, samples: &CpuSamples) -> PodSandboxStats {
    let s = &stored.sandbox;
    let timestamp = cgroup::now();
    let cgroup = Cgroup::find(Path::new(cgroup::ROOT), &s.cgroup_parent);
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
            cpu: cgroup.as_ref().map(|c| c.cpu(timestamp, samples, &s.id)),
            memory: cgroup.as_ref().map(|c| c.memory_usage(timestamp).0),
            io: cgroup.as_ref().and_then(|c| c.io(timestamp)),
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

/// Every pod's stats with its `eth0` counters from the pod's view (see [`link_counters`]; empty
/// for a pod without a link), for ListPodSandboxMetrics.
pub async fn list_with_link_counters(
    containerd: &Containerd,
    samples: &CpuSamples,
) -> Result<Vec<(PodSandboxStats, BTreeMap<String, u64>)>, SandboxError> {
    let all = record::list_all(containerd).await?;
    Ok(all
        .iter()
        .map(|s| {
            let counters = network::host_link(&s.sandbox.network_dir).map(|l| link_counters(&l)).unwrap_or_default();
            (pod_stats(s, samples), counters)
        })
        .collect())
}
