//! What this node and its OCI runtime can do, detected once when the service starts: `rro`
//! mounts from `runc features`, AppArmor from the kernel module's parameter, the lowest OOM score
//! this process may give (its own unless it holds CAP_SYS_RESOURCE), the cgroup version,
//! whether the memory controller accounts swap, whether the hugetlb controller is there, and the
//! capabilities this service holds (a container cannot get more).

use super::HostFeatures;
use std::path::Path;

/// CAP_SYS_RESOURCE's bit in `/proc/self/status` `CapEff`.
const CAP_SYS_RESOURCE: u32 = 24;

/// The OCI runtime the runc shim runs (it looks it up on `PATH`, as crisp does here).
const RUNC: &str = "runc";

static NODE: std::sync::OnceLock<HostFeatures> = std::sync::OnceLock::new();

impl HostFeatures {
    /// This node's features, detected on first use and kept. Blocking on first use.
    pub fn node() -> &'static HostFeatures {
        NODE.get_or_init(HostFeatures::detect)
    }

    /// Detects the features of this node and its `runc`. Blocking (it runs `runc features`):
    /// call it once at start, or use [`HostFeatures::node`].
    pub fn detect() -> HostFeatures {
        HostFeatures::detect_with(RUNC)
    }

    /// Detects the features of this node, with `runc` the OCI runtime binary (a name on `PATH`
    /// or a path).
    pub fn detect_with(runc: &str) -> HostFeatures {
        let cgroup_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        HostFeatures {
            recursive_read_only: runc_has_rro(runc),
            apparmor: std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
                .is_ok_and(|v| v.trim_start().starts_with('Y')),
            min_oom_score_adj: min_oom_score_adj(),
            cgroup_v2,
            swap_limit: swap_accounted(cgroup_v2),
            hugetlb: hugetlb_present(cgroup_v2),
            bounding_capabilities: capability_set(
                &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
                "CapBnd",
            ),
        }
    }
}

/// Whether `runc features` lists the `rro` mount option.
fn runc_has_rro(runc: &str) -> bool {
    let Ok(output) = std::process::Command::new(runc).arg("features").output() else {
        return false;
    };
    if !output.status.success() {
        return false;
    }
    rro_in_features(&output.stdout)
}

/// Whether a `runc features` JSON document lists `rro` among its mount options.
pub fn rro_in_features(json: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("mountOptions").and_then(|o| o.as_array()).cloned())
        .is_some_and(|options| options.iter().any(|o| o == "rro"))
}

/// The lowest OOM score adjustment this process may set for a child: -1000 with
/// CAP_SYS_RESOURCE, else its own (the kernel refuses to lower it).
fn min_oom_score_adj() -> i32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if has_capability(&status, CAP_SYS_RESOURCE) {
        return -1000;
    }
    std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Whether `CapEff` in a `/proc/<pid>/status` text holds capability `bit`.
pub fn has_capability(status: &str, bit: u32) -> bool {
    capability_set(status, "CapEff").is_some_and(|mask| mask & (1 << bit) != 0)
}

/// The capability set `key` (`CapEff`, `CapBnd`) of a `/proc/<pid>/status` text.
pub fn capability_set(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Whether the hugetlb controller is mounted (v1) or offered (v2).
fn hugetlb_present(cgroup_v2: bool) -> bool {
    if !cgroup_v2 {
        return Path::new("/sys/fs/cgroup/hugetlb").exists();
    }
    std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "hugetlb"))
}

/// Whether the memory controller limits swap (v1: `memory.memsw.*`; v2: `memory.swap.max` in
/// this process's cgroup).
fn swap_accounted(cgroup_v2: bool) -> bool {
    if !cgroup_v2 {
        return Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists();
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    own.lines().find_map(|l| l.strip_prefix("0::")).is_some_and(|path| {
        Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')).join("memory.swap.max").exists()
    })
}
