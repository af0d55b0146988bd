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
use crisp_containerd::Containerd;
use crisp_proto::cri::{LinuxContainerResources, UpdatePodSandboxResourcesRequest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
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

/// What the pod's cgroup is set to: `None` leaves a setting as it is, `Some(None)` is "max".
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub shares: Option<u64>,
    /// (quota or none, period), microseconds.
    pub cpu: Option<(Option<i64>, i64)>,
    pub memory: Option<Option<i64>>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub unified: BTreeMap<String, String>,
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

/// runc's conversion of cgroup v1 shares (2-262144) to a v2 weight (1-10000).
fn weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9_999 / 262_142
}

/// Whether `root` is a cgroup v2 (unified) mount.
fn is_v2(root: &Path) -> bool {
    nix::sys::statfs::statfs(root).map(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC).unwrap_or(
        // Not a mount point (a test's tree): the unified layout has cgroup.controllers at its root.
        root.join("cgroup.controllers").exists(),
    )
}

/// The files to write, in order, as (path, value).
pub fn writes(root: &Path, v2: bool, parent: &str, limits: &Limits) -> Vec<(PathBuf, String)> {
    let parent = parent.trim_start_matches('/');
    let mut out = vec![];
    if v2 {
        let dir = root.join(parent);
        if let Some(shares) = limits.shares {
            out.push((dir.join("cpu.weight"), weight(shares).to_string()));
        }
        if let Some((quota, period)) = limits.cpu {
            let quota = quota.map_or("max".to_string(), |q| q.to_string());
            out.push((dir.join("cpu.max"), format!("{quota} {period}")));
        }
        if let Some(memory) = limits.memory {
            out.push((dir.join("memory.max"), memory.map_or("max".to_string(), |m| m.to_string())));
        }
        if let Some(cpus) = &limits.cpuset_cpus {
            out.push((dir.join("cpuset.cpus"), cpus.clone()));
        }
        if let Some(mems) = &limits.cpuset_mems {
            out.push((dir.join("cpuset.mems"), mems.clone()));
        }
        for (file, value) in &limits.unified {
            out.push((dir.join(file), value.clone()));
        }
    } else {
        let cpu = root.join("cpu").join(parent);
        if let Some(shares) = limits.shares {
            out.push((cpu.join("cpu.shares"), shares.to_string()));
        }
        if let Some((quota, period)) = limits.cpu {
            // The period first: a quota is checked against the period in place.
            out.push((cpu.join("cpu.cfs_quota_us"), "-1".into()));
            out.push((cpu.join("cpu.cfs_period_us"), period.to_string()));
            out.push((cpu.join("cpu.cfs_quota_us"), quota.unwrap_or(-1).to_string()));
        }
        if let Some(memory) = limits.memory {
            out.push((
                root.join("memory").join(parent).join("memory.limit_in_bytes"),
                memory.unwrap_or(-1).to_string(),
            ));
        }
        let cpuset = root.join("cpuset").join(parent);
        if let Some(cpus) = &limits.cpuset_cpus {
            out.push((cpuset.join("cpuset.cpus"), cpus.clone()));
        }
        if let Some(mems) = &limits.cpuset_mems {
            out.push((cpuset.join("cpuset.mems"), mems.clone()));
        }
    }
    out
}

fn apply(pod: &str, root: &Path, parent: &str, limits: &Limits) -> Result<(), SandboxError> {
    let v2 = is_v2(root);
    let dir = if v2 {
        root.join(parent.trim_start_matches('/'))
    } else {
        root.join("cpu").join(parent.trim_start_matches('/'))
    };
    if !dir.is_dir() {
        return Err(SandboxError::Cgroup { pod: pod.to_string(), path: dir.display().to_string(), source: None });
    }
    for (path, value) in writes(root, v2, parent, limits) {
        std::fs::write(&path, &value).map_err(|source| SandboxError::Cgroup {
            pod: pod.to_string(),
            path: format!("{} (writing {value})", path.display()),
            source: Some(source),
        })?;
    }
    Ok(())
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
        tokio::task::spawn_blocking(move || apply(&pod, Path::new(CGROUP_ROOT), &parent, &limits))
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
    fn limits_become_v1_and_v2_cgroup_files() {
        let l = limits(None, Some(&res(100_000, 50_000, 1024, 256 << 20)));
        let v1 = writes(Path::new("/cg"), false, "/kubepods/pod1", &l);
        let v1: Vec<(String, String)> = v1.into_iter().map(|(p, v)| (p.display().to_string(), v)).collect();
        assert!(v1.contains(&("/cg/cpu/kubepods/pod1/cpu.shares".into(), "1024".into())));
        assert!(v1.contains(&("/cg/cpu/kubepods/pod1/cpu.cfs_period_us".into(), "100000".into())));
        assert_eq!(v1.iter().rfind(|(p, _)| p.ends_with("cfs_quota_us")).unwrap().1, "50000");
        assert!(v1.contains(&("/cg/memory/kubepods/pod1/memory.limit_in_bytes".into(), (256 << 20).to_string())));
        let v2 = writes(Path::new("/cg"), true, "/kubepods/pod1", &l);
        let v2: Vec<(String, String)> = v2.into_iter().map(|(p, v)| (p.display().to_string(), v)).collect();
        assert!(v2.contains(&("/cg/kubepods/pod1/cpu.max".into(), "50000 100000".into())));
        assert!(v2.contains(&("/cg/kubepods/pod1/cpu.weight".into(), "39".into())));
        assert!(v2.contains(&("/cg/kubepods/pod1/memory.max".into(), (256 << 20).to_string())));
        let none = writes(Path::new("/cg"), true, "/p", &limits(None, Some(&res(0, 0, 0, 0))));
        assert!(none.iter().any(|(p, v)| p.ends_with("cpu.max") && v == "max 100000"));
        assert!(none.iter().any(|(p, v)| p.ends_with("memory.max") && v == "max"));
    }

    #[test]
    fn shares_convert_to_weights_as_runc_does() {
        assert_eq!(weight(2), 1);
        assert_eq!(weight(1024), 39);
        assert_eq!(weight(262_144), 10_000);
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
