//! The cgroups of pods and containers, read and written as files under `/sys/fs/cgroup`
//! (cgroupfs driver: a path like `/kubepods/pod1/<container id>` is the same relative directory
//! in every hierarchy).
//!
//! - [`Cgroup::find`] tells v1 (one hierarchy per controller: `cpuacct`, `memory`, `pids`)
//!   from v2 (the unified tree, `cgroup.controllers` at its root) and answers none for an empty
//!   path or a cgroup that is not there (a container not started, or gone).
//! - Readers answer what cAdvisor and containerd compute from the files: CPU in cumulative
//!   nanoseconds; memory usage, working set (usage minus inactive file pages), RSS (v1
//!   `total_rss`, v2 `anon`), page faults, the limit (none when unlimited); process count.
//! - [`CpuSamples`] keeps the last cumulative CPU sample per id, for `usage_nano_cores`.
//! - [`Limits`] → [`writes`] → [`apply`]: the files a resource update writes, in the order the
//!   kernel accepts them (a CFS period before its quota).
//!
//! Reading never fails: a file that cannot be read is a value not known (`None`).

use crisp_proto::cri::{CpuUsage, IoUsage, MemoryUsage, ProcessUsage, PsiData, PsiStats, SwapUsage, UInt64Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where the cgroup file systems are mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// Above this a memory limit is "no limit" (the kernel's unlimited v1 value is just below
/// 2^63; cAdvisor uses the same bound).
const UNLIMITED_ABOVE: u64 = 1 << 62;

/// Nanoseconds since the Unix epoch, now.
pub fn now() -> i64 {
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

/// The last cumulative CPU sample read per id (a pod's or a container's): (timestamp ns, usage ns).
#[derive(Default, Clone)]
pub struct CpuSamples(Arc<Mutex<HashMap<String, (i64, u64)>>>);

impl CpuSamples {
    /// Records `usage` at `timestamp` for `id` and answers the rate since the last sample,
    /// in nanocores; none for the first sample, one no later, or a counter that went back.
    pub fn rate(&self, id: &str, timestamp: i64, usage: u64) -> Option<u64> {
        let mut samples = self.0.lock().ok()?;
        let last = samples.insert(id.to_string(), (timestamp, usage))?;
        let (elapsed, used) = (timestamp.checked_sub(last.0)?, usage.checked_sub(last.1)?);
        (elapsed > 0).then(|| (used as u128 * 1_000_000_000 / elapsed as u128) as u64)
    }

    /// Forgets the ids not in `live`.
    pub fn retain(&self, live: &HashSet<&str>) {
        if let Ok(mut samples) = self.0.lock() {
            samples.retain(|id, _| live.contains(id.as_str()));
        }
    }
}

/// What a cgroup's memory files say, in bytes (faults in counts).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Memory {
    pub usage: Option<u64>,
    pub working_set: Option<u64>,
    pub rss: Option<u64>,
    /// Page cache (v1 `total_cache`, v2 `file`).
    pub cache: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// The limit; `Some(None)`: none (unlimited).
    pub limit: Option<Option<u64>>,
    /// Swap in use (v2 `memory.swap.current`; v1 memory+swap usage less memory usage).
    pub swap: Option<u64>,
    /// The swap limit (v2 `memory.swap.max`); `Some(None)`: none.
    pub swap_limit: Option<Option<u64>>,
}

impl Memory {
    /// The CRI's view of it at `timestamp`; available is the limit less the working set (as
    /// the kubelet and containerd compute it), none without a limit.
    pub fn usage(&self, timestamp: i64) -> MemoryUsage {
        let available = self.limit.flatten().zip(self.working_set).map(|(limit, ws)| limit.saturating_sub(ws));
        MemoryUsage {
            timestamp,
            working_set_bytes: self.working_set.and_then(value),
            available_bytes: available.and_then(value),
            usage_bytes: self.usage.and_then(value),
            rss_bytes: self.rss.and_then(value),
            page_faults: self.page_faults.and_then(value),
            major_page_faults: self.major_page_faults.and_then(value),
            psi: None,
        }
    }

    /// The CRI's view of the swap at `timestamp`; none where the cgroup does not account it.
    pub fn swap_usage(&self, timestamp: i64) -> Option<SwapUsage> {
        let used = self.swap?;
        let available = self.swap_limit.flatten().map(|limit| limit.saturating_sub(used));
        Some(SwapUsage { timestamp, swap_usage_bytes: value(used), swap_available_bytes: available.and_then(value) })
    }
}

/// A v2 pressure file (`some avg10=0.00 avg60=0.00 avg300=0.00 total=0`, and a `full` line).
fn read_psi(path: &Path) -> Option<PsiStats> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut stats = PsiStats::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let kind = words.next()?;
        let mut data = PsiData::default();
        for word in words {
            let (key, v) = word.split_once('=')?;
            match key {
                "avg10" => data.avg10 = v.parse().ok()?,
                "avg60" => data.avg60 = v.parse().ok()?,
                "avg300" => data.avg300 = v.parse().ok()?,
                "total" => data.total = v.parse().ok()?,
                _ => {}
            }
        }
        match kind {
            "some" => stats.some = Some(data),
            "full" => stats.full = Some(data),
            _ => {}
        }
    }
    Some(stats)
}

/// A pod's or container's cgroup, by hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    V1 { cpu: PathBuf, memory: PathBuf, pids: PathBuf },
    V2(PathBuf),
}

impl Cgroup {
    /// The cgroup at `path` (cgroupfs syntax) under `root`; none for an empty path or one not there.
    pub fn find(root: &Path, path: &str) -> Option<Cgroup> {
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            return None;
        }
        if root.join("cgroup.controllers").exists() {
            let dir = root.join(path);
            return dir.is_dir().then_some(Cgroup::V2(dir));
        }
        let cpu = root.join("cpuacct").join(path);
        cpu.is_dir().then(|| Cgroup::V1 {
            cpu,
            memory: root.join("memory").join(path),
            pids: root.join("pids").join(path),
        })
    }

    /// Cumulative CPU time, nanoseconds.
    pub fn cpu_nanos(&self) -> Option<u64> {
        match self {
            Cgroup::V1 { cpu, .. } => read_u64(&cpu.join("cpuacct.usage")),
            Cgroup::V2(dir) => read_keyed(&dir.join("cpu.stat")).get("usage_usec").map(|us| us * 1000),
        }
    }

    /// The CRI's CPU usage at `timestamp`, with `usage_nano_cores` from `samples` under `id`.
    pub fn cpu(&self, timestamp: i64, samples: &CpuSamples, id: &str) -> CpuUsage {
        let nanos = self.cpu_nanos();
        // The rate's clock is read right after the counter, not at the call's start.
        let sampled_at = now();
        CpuUsage {
            timestamp,
            usage_core_nano_seconds: nanos.and_then(value),
            usage_nano_cores: nanos.and_then(|n| samples.rate(id, sampled_at, n)).and_then(value),
            psi: self.psi("cpu"),
        }
    }

    pub fn memory(&self) -> Memory {
        let (usage, stat, limit, keys) = match self {
            Cgroup::V1 { memory, .. } => (
                read_u64(&memory.join("memory.usage_in_bytes")),
                read_keyed(&memory.join("memory.stat")),
                std::fs::read_to_string(memory.join("memory.limit_in_bytes")).ok(),
                ["total_inactive_file", "total_rss", "total_cache", "total_pgfault", "total_pgmajfault"],
            ),
            Cgroup::V2(dir) => (
                read_u64(&dir.join("memory.current")),
                read_keyed(&dir.join("memory.stat")),
                std::fs::read_to_string(dir.join("memory.max")).ok(),
                ["inactive_file", "anon", "file", "pgfault", "pgmajfault"],
            ),
        };
        let [inactive, rss, cache, faults, major] = keys.map(|key| stat.get(key).copied());
        let (swap, swap_limit) = match self {
            Cgroup::V1 { memory, .. } => {
                let memsw = read_u64(&memory.join("memory.memsw.usage_in_bytes"));
                (memsw.zip(usage).map(|(total, memory)| total.saturating_sub(memory)), None)
            }
            Cgroup::V2(dir) => (
                read_u64(&dir.join("memory.swap.current")),
                std::fs::read_to_string(dir.join("memory.swap.max")).ok().map(|l| l.trim().parse::<u64>().ok()),
            ),
        };
        let limit = limit.map(|l| match l.trim() {
            "max" => None,
            l => l.parse::<u64>().ok().filter(|l| *l <= UNLIMITED_ABOVE),
        });
        Memory {
            usage,
            working_set: usage.map(|u| u.saturating_sub(inactive.unwrap_or(0))),
            rss,
            cache,
            page_faults: faults,
            major_page_faults: major,
            limit,
            swap,
            swap_limit,
        }
    }

    /// The CRI's memory usage (with the memory pressure on v2) and swap usage at `timestamp`.
    pub fn memory_usage(&self, timestamp: i64) -> (MemoryUsage, Option<SwapUsage>) {
        let memory = self.memory();
        let mut usage = memory.usage(timestamp);
        usage.psi = self.psi("memory");
        (usage, memory.swap_usage(timestamp))
    }

    /// The cgroup's pressure on `resource` (`cpu`, `memory`, `io`): v2 only.
    pub fn psi(&self, resource: &str) -> Option<PsiStats> {
        match self {
            Cgroup::V1 { .. } => None,
            Cgroup::V2(dir) => read_psi(&dir.join(format!("{resource}.pressure"))),
        }
    }

    /// The CRI's I/O usage (pressure only, v2), at `timestamp`.
    pub fn io(&self, timestamp: i64) -> Option<IoUsage> {
        self.psi("io").map(|psi| IoUsage { timestamp, psi: Some(psi) })
    }

    pub fn processes(&self, timestamp: i64) -> ProcessUsage {
        let count = match self {
            Cgroup::V1 { pids, .. } => read_u64(&pids.join("pids.current")),
            Cgroup::V2(dir) => read_u64(&dir.join("pids.current")),
        };
        ProcessUsage { timestamp, process_count: count.and_then(value) }
    }
}

/// What a cgroup is set to: `None` leaves a setting as it is, `Some(None)` is "max".
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

/// runc's conversion of cgroup v1 shares (2-262144) to a v2 weight (1-10000).
pub fn weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9_999 / 262_142
}

/// Whether `root` is a cgroup v2 (unified) mount.
pub fn is_v2(root: &Path) -> bool {
    nix::sys::statfs::statfs(root).map(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC).unwrap_or(
        // Not a mount point (a test's tree): the unified layout has cgroup.controllers at its root.
        root.join("cgroup.controllers").exists(),
    )
}

/// The files to write for `limits` on the cgroup at `path`, in order, as (file, value).
pub fn writes(root: &Path, v2: bool, path: &str, limits: &Limits) -> Vec<(PathBuf, String)> {
    let path = path.trim_start_matches('/');
    let mut out = vec![];
    if v2 {
        let dir = root.join(path);
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
        let cpu = root.join("cpu").join(path);
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
            out.push((root.join("memory").join(path).join("memory.limit_in_bytes"), memory.unwrap_or(-1).to_string()));
        }
        let cpuset = root.join("cpuset").join(path);
        if let Some(cpus) = &limits.cpuset_cpus {
            out.push((cpuset.join("cpuset.cpus"), cpus.clone()));
        }
        if let Some(mems) = &limits.cpuset_mems {
            out.push((cpuset.join("cpuset.mems"), mems.clone()));
        }
    }
    out
}

/// A cgroup write that failed: the cgroup is not there (`source` none), or the kernel refused
/// a value.
#[derive(Debug, thiserror::Error)]
#[error("{path}{}", source.as_ref().map(|e| format!(": {e}")).unwrap_or_else(|| " is not there".into()))]
pub struct WriteError {
    pub path: String,
    pub source: Option<std::io::Error>,
}

/// Writes `limits` to the cgroup at `path` under `root`, which must exist.
pub fn apply(root: &Path, path: &str, limits: &Limits) -> Result<(), WriteError> {
    let v2 = is_v2(root);
    let relative = path.trim_start_matches('/');
    let dir = if v2 { root.join(relative) } else { root.join("cpu").join(relative) };
    if !dir.is_dir() {
        return Err(WriteError { path: dir.display().to_string(), source: None });
    }
    for (file, value) in writes(root, v2, path, limits) {
        std::fs::write(&file, &value).map_err(|source| WriteError {
            path: format!("{} (writing {value})", file.display()),
            source: Some(source),
        })?;
    }
    Ok(())
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
        std::fs::write(dir("memory").join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(
            dir("memory").join("memory.stat"),
            "cache 5\ntotal_inactive_file 300\ntotal_rss 600\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
        )
        .unwrap();
        std::fs::write(dir("pids").join("pids.current"), "3\n").unwrap();

        assert!(Cgroup::find(root.path(), "").is_none());
        assert!(Cgroup::find(root.path(), "/kubepods/absent").is_none());
        let cgroup = Cgroup::find(root.path(), "/kubepods/pod1").unwrap();
        assert_eq!(cgroup.cpu(1, &CpuSamples::default(), "pod1").usage_core_nano_seconds, value(123456));
        let memory = cgroup.memory().usage(1);
        assert_eq!(memory.working_set_bytes, value(700));
        assert_eq!(memory.rss_bytes, value(600));
        assert_eq!(memory.page_faults, value(7));
        assert_eq!(memory.major_page_faults, value(1));
        assert_eq!(cgroup.memory().limit, Some(None));
        assert_eq!(cgroup.processes(1).process_count, value(3));
    }

    #[test]
    fn usage_nano_cores_is_the_rate_between_two_samples_of_the_same_id() {
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
        std::fs::write(dir.join("memory.max"), "4096\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 400\nfile 50\ninactive_file 100\npgfault 9\npgmajfault 2\n")
            .unwrap();
        let cgroup = Cgroup::find(root.path(), "kubepods/pod1").unwrap();
        assert_eq!(cgroup.cpu_nanos(), Some(5000));
        let memory = cgroup.memory();
        assert_eq!((memory.working_set, memory.rss, memory.cache), (Some(900), Some(400), Some(50)));
        assert_eq!(memory.limit, Some(Some(4096)));
        assert_eq!(memory.usage(1).available_bytes, value(4096 - 900));
        assert_eq!(cgroup.processes(1).process_count, None);
        std::fs::write(dir.join("memory.swap.current"), "100\n").unwrap();
        std::fs::write(dir.join("memory.swap.max"), "max\n").unwrap();
        let swap = cgroup.memory().swap_usage(1).unwrap();
        assert_eq!((swap.swap_usage_bytes, swap.swap_available_bytes), (value(100), None));
        std::fs::write(
            dir.join("cpu.pressure"),
            "some avg10=1.50 avg60=0.00 avg300=0.00 total=42\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        )
        .unwrap();
        let psi = cgroup.cpu(1, &CpuSamples::default(), "p").psi.unwrap();
        assert_eq!((psi.some.unwrap().total, psi.some.unwrap().avg10, psi.full.unwrap().total), (42, 1.5, 7));
        assert!(cgroup.io(1).is_none());
    }

    #[test]
    fn limits_become_v1_and_v2_cgroup_files() {
        let l = Limits {
            shares: Some(1024),
            cpu: Some((Some(50_000), 100_000)),
            memory: Some(Some(256 << 20)),
            ..Default::default()
        };
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
        let none = Limits { cpu: Some((None, 100_000)), memory: Some(None), ..Default::default() };
        let none = writes(Path::new("/cg"), true, "/p", &none);
        assert!(none.iter().any(|(p, v)| p.ends_with("cpu.max") && v == "max 100000"));
        assert!(none.iter().any(|(p, v)| p.ends_with("memory.max") && v == "max"));
    }

    #[test]
    fn shares_convert_to_weights_as_runc_does() {
        assert_eq!(weight(2), 1);
        assert_eq!(weight(1024), 39);
        assert_eq!(weight(262_144), 10_000);
    }

    /// A real cgroup v1 test cgroup in the cpu, cpuacct and memory hierarchies (and pids), with a
    /// busy child process in it; the process is killed and the cgroups removed on drop.
    struct TestCgroup {
        path: String,
        dirs: Vec<PathBuf>,
        child: std::process::Child,
    }

    impl TestCgroup {
        fn new() -> Option<TestCgroup> {
            if !Path::new(ROOT).join("cpuacct").is_dir() || is_v2(Path::new(ROOT)) {
                return None;
            }
            let path = format!("/crisp-test-{}-{}", std::process::id(), now() % 1_000_000);
            let dirs: Vec<PathBuf> = ["cpu", "cpuacct", "memory", "pids"]
                .iter()
                .map(|c| Path::new(ROOT).join(c).join(path.trim_start_matches('/')))
                .collect();
            let mut join = String::new();
            for dir in &dirs {
                std::fs::create_dir_all(dir).unwrap();
                join.push_str(&format!("echo $$ > {}/cgroup.procs; ", dir.display()));
            }
            // The shell joins the cgroups, then burns CPU and touches memory for good.
            let child = std::process::Command::new("sh")
                .args(["-c", &format!("{join}x=$(head -c 4000000 /dev/zero | tr '\\0' a); while :; do :; done")])
                .spawn()
                .unwrap();
            Some(TestCgroup { path, dirs, child })
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            for dir in &self.dirs {
                for _ in 0..50 {
                    if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }

    #[test]
    fn a_real_v1_cgroup_with_a_busy_process_reads_moving_cpu_and_memory_and_takes_limits() {
        let Some(cgroup) = TestCgroup::new() else {
            eprintln!("skipped: needs cgroup v1 (cpu, cpuacct, memory) and root");
            return;
        };
        let found = Cgroup::find(Path::new(ROOT), &cgroup.path).unwrap();
        // On a loaded machine the child may take a while to join and run.
        for _ in 0..100 {
            if found.cpu_nanos().unwrap() > 0 && found.processes(0).process_count.is_some_and(|c| c.value == 1) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let samples = CpuSamples::default();
        let first = found.cpu(now(), &samples, "c");
        assert!(first.usage_core_nano_seconds.as_ref().unwrap().value > 0);
        assert_eq!(first.usage_nano_cores, None);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let second = found.cpu(now(), &samples, "c");
        assert!(second.usage_core_nano_seconds.unwrap().value > first.usage_core_nano_seconds.unwrap().value);
        // A shell looping flat out (on a loaded machine: some share of a core).
        assert!(second.usage_nano_cores.unwrap().value > 0, "{:?}", second.usage_nano_cores);
        let memory = found.memory();
        assert!(memory.usage.unwrap() > 0 && memory.working_set.unwrap() <= memory.usage.unwrap());
        assert!(memory.rss.unwrap() > 0);
        assert_eq!(memory.limit, Some(None));
        assert_eq!(found.processes(1).process_count, value(1));

        let limits = Limits {
            shares: Some(512),
            cpu: Some((Some(20_000), 100_000)),
            memory: Some(Some(64 << 20)),
            ..Default::default()
        };
        apply(Path::new(ROOT), &cgroup.path, &limits).unwrap();
        assert_eq!(found.memory().limit, Some(Some(64 << 20)));
        let cpu = Path::new(ROOT).join("cpu").join(cgroup.path.trim_start_matches('/'));
        assert_eq!(read_u64(&cpu.join("cpu.cfs_quota_us")), Some(20_000));
        assert_eq!(read_u64(&cpu.join("cpu.shares")), Some(512));
        // A limit below what the process uses is refused by the kernel, naming the file.
        let err = apply(Path::new(ROOT), &cgroup.path, &Limits { memory: Some(Some(4096)), ..Default::default() })
            .unwrap_err();
        assert!(err.to_string().contains("memory.limit_in_bytes"), "{err}");
        assert!(apply(Path::new(ROOT), "/crisp-test-absent", &limits).unwrap_err().source.is_none());
    }
}
