//! UpdatePodSandboxResources: "updates the resources of a PodSandbox (overhead plus the sum of
//! its containers' resources)". crisp applies them to the pod's cgroup, `linux.cgroup_parent`
//! from its config (cgroupfs driver), and records them in the pod's record, where
//! PodSandboxStatus's verbose info (and a restarted service) reads them.
//!
//! - The pod's limits are overhead + resources: CPU shares, quota (at the resources' period,
//!   the overhead's quota scaled to it) and memory add up; a zero or unset amount in the
//!   resources means none (no limit), whatever the overhead. Cpusets are the resources'.
//! - cgroup v1 (`cpu`, `memory`, `cpuset` hierarchies) and v2 (the unified tree: `cpu.max`,
//!   `cpu.weight` converted from shares as runc does, `memory.max`, `cpuset.*`, and the
//!   `unified` map's files) are told apart by the file system mounted at `/sys/fs/cgroup`.
//! - A pod with no cgroup parent has its resources recorded only. A parent that is not there
//!   is FAILED_PRECONDITION; a write the kernel refuses (a memory limit below what the pod uses)
//!   is FAILED_PRECONDITION naming the file, and the record keeps the old resources.
//! - An unknown pod is NOT_FOUND.

use super::SandboxError;
use super::record;
use crate::cgroup::{self, Limits};
use crisp_containerd::Containerd;
use crisp_proto::cri::{LinuxContainerResources, UpdatePodSandboxResourcesRequest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
/// The kernel's default CFS period, microseconds.
const DEFAULT_PERIOD: i64 = 100_000;

/// `LinuxContainerResources` as crisp records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub memory_swap_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub unified: BTreeMap<String, String>,
}

impl From<&LinuxContainerResources> for Resources {
    fn from(r: &LinuxContainerResources) -> Self {
        Resources {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit_in_bytes,
            memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
            oom_score_adj: r.oom_score_adj,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
            unified: r.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

/// The pod's limits: overhead + resources.
pub fn limits(overhead: Option<&Resources>, resources: Option<&Resources>) -> Limits {
    let zero = Resources::default();
    let o = overhead.unwrap_or(&zero);
    let r = match (resources, overhead) {
        (Some(r), _) => r,
        // Overhead alone: the pod is limited to it.
        (None, Some(_)) => return limits(None, overhead),
        (None, None) => return Limits::default(),
    };
    let period = if r.cpu_period > 0 { r.cpu_period } else { DEFAULT_PERIOD };
    let shares = r.cpu_shares + o.cpu_shares;
    let quota = (r.cpu_quota > 0).then(|| {
        let overhead_quota = if o.cpu_quota > 0 {
            let o_period = if o.cpu_period > 0 { o.cpu_period } else { DEFAULT_PERIOD };
            o.cpu_quota * period / o_period
        } else {
            0
        };
        r.cpu_quota + overhead_quota
    });
    let memory = (r.memory_limit_in_bytes > 0).then(|| r.memory_limit_in_bytes + o.memory_limit_in_bytes.max(0));
    Limits {
        shares: (shares > 0).then_some(shares as u64),
        cpu: Some((quota, period)),
        memory: Some(memory),
        cpuset_cpus: (!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()),
        cpuset_mems: (!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()),
        unified: r.unified.clone(),
    }
}

/// Writes `limits` to the pod's cgroup `parent` under `root`.
fn apply(pod: &str, root: &Path, parent: &str, limits: &Limits) -> Result<(), SandboxError> {
    cgroup::apply(root, parent, limits).map_err(|e| SandboxError::Cgroup {
        pod: pod.to_string(),
        path: e.path,
        source: e.source,
    })
}

pub async fn update(containerd: &Containerd, request: UpdatePodSandboxResourcesRequest) -> Result<(), SandboxError> {
    let id = request.pod_sandbox_id;
    let overhead = request.overhead.as_ref();
    let resources = request.resources.as_ref();
    if let Some(o) = overhead {
        super::validate::resources("overhead", o)?;
    }
    if let Some(r) = resources {
        super::validate::resources("resources", r)?;
    }
    let stored = record::find(containerd, &id).await?.ok_or_else(|| SandboxError::NotFound(id.clone()))?;
    let mut sandbox = stored.sandbox;
    sandbox.overhead = overhead.map(Resources::from);
    sandbox.resources = resources.map(Resources::from);
    if !sandbox.cgroup_parent.is_empty() {
        let limits = limits(sandbox.overhead.as_ref(), sandbox.resources.as_ref());
        let (pod, parent) = (sandbox.id.clone(), sandbox.cgroup_parent.clone());
        tokio::task::spawn_blocking(move || apply(&pod, Path::new(cgroup::ROOT), &parent, &limits))
            .await
            .map_err(|e| SandboxError::Task { pod: id.clone(), what: "writing its cgroup", source: e })??;
    }
    record::update(containerd, &sandbox).await?;
    tracing::info!(pod = %sandbox.id, overhead = ?sandbox.overhead, resources = ?sandbox.resources, "pod resources updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(period: i64, quota: i64, shares: i64, memory: i64) -> Resources {
        Resources {
            cpu_period: period,
            cpu_quota: quota,
            cpu_shares: shares,
            memory_limit_in_bytes: memory,
            ..Default::default()
        }
    }

    #[test]
    fn the_pods_limits_are_its_overhead_plus_its_resources() {
        let l = limits(Some(&res(100_000, 10_000, 10, 1 << 20)), Some(&res(100_000, 50_000, 512, 1 << 30)));
        assert_eq!(l.shares, Some(522));
        assert_eq!(l.cpu, Some((Some(60_000), 100_000)));
        assert_eq!(l.memory, Some(Some((1 << 30) + (1 << 20))));
        // The overhead's quota is scaled to the resources' period.
        let l = limits(Some(&res(50_000, 10_000, 0, 0)), Some(&res(100_000, 50_000, 0, 0)));
        assert_eq!(l.cpu, Some((Some(70_000), 100_000)));
        // No limit in the resources is no limit for the pod.
        let l = limits(Some(&res(0, 10_000, 2, 1 << 20)), Some(&res(0, 0, 2, 0)));
        assert_eq!((l.cpu, l.memory, l.shares), (Some((None, 100_000)), Some(None), Some(4)));
        assert_eq!(limits(None, None), Limits::default());
    }

    #[test]
    fn a_cgroup_parent_that_is_not_there_is_a_failed_precondition() {
        use crisp_errors::GrpcError;
        let root = tempfile::tempdir().unwrap();
        let err = apply("p", root.path(), "/absent", &Limits::default()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
