//! The container's cgroup and its limits: `cgroupsPath` under the pod's cgroup parent
//! (`/crisp/<id>` for a pod without one), CPU shares/quota/period/cpuset, memory (the swap
//! limit equal to the memory limit unless the request sets one, where the node accounts swap),
//! hugepages (where the node has the hugetlb controller), cgroup v2 `unified` keys, the OOM score (never below what this service may give)
//! and devices: every device denied but the OCI runtime's defaults and the request's, or, for a
//! privileged container, every device of the node.

use super::{HostFeatures, SpecError};
use crisp_proto::cri::{Device, LinuxContainerResources};
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxResources, LinuxResourcesBuilder,
};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// `<cgroup parent>/<id>`, or `/crisp/<id>` when the pod names no parent.
pub fn cgroups_path(cgroup_parent: &str, id: &str) -> String {
    let parent = cgroup_parent.trim_end_matches('/');
    if parent.is_empty() { format!("/crisp/{id}") } else { format!("{parent}/{id}") }
}

/// The OOM score adjustment the process gets: the request's, raised to what this service may set.
pub fn oom_score_adj(resources: Option<&LinuxContainerResources>, host: &HostFeatures) -> i32 {
    let requested = resources.map_or(0, |r| r.oom_score_adj).clamp(-1000, 1000) as i32;
    requested.max(host.min_oom_score_adj)
}

fn build_error(what: &str) -> impl FnOnce(oci_spec::OciSpecError) -> SpecError + '_ {
    move |e| SpecError::Build(format!("{what}: {e}"))
}

/// The cgroup limits for `resources` with `devices` (the cgroup's device rules).
pub fn build(
    resources: Option<&LinuxContainerResources>,
    devices: Vec<LinuxDeviceCgroup>,
    host: &HostFeatures,
) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResourcesBuilder::default().devices(devices);
    let Some(r) = resources else {
        return out.build().map_err(build_error("resources"));
    };
    let mut cpu = LinuxCpuBuilder::default();
    if r.cpu_period > 0 {
        cpu = cpu.period(r.cpu_period as u64);
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
    }
    if r.cpu_shares > 0 {
        cpu = cpu.shares(r.cpu_shares as u64);
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
    }
    out = out.cpu(cpu.build().map_err(build_error("cpu"))?);

    let mut memory = LinuxMemoryBuilder::default();
    if r.memory_limit_in_bytes != 0 {
        memory = memory.limit(r.memory_limit_in_bytes);
        // Without a swap limit of its own the container does not swap.
        if r.memory_swap_limit_in_bytes == 0 && host.swap_limit {
            memory = memory.swap(r.memory_limit_in_bytes);
        }
    }
    if r.memory_swap_limit_in_bytes != 0 && host.swap_limit {
        memory = memory.swap(r.memory_swap_limit_in_bytes);
    }
    out = out.memory(memory.build().map_err(build_error("memory"))?);

    // The kubelet sends a limit for every page size; a node without the controller ignores them.
    if !r.hugepage_limits.is_empty() && host.hugetlb {
        let limits = r
            .hugepage_limits
            .iter()
            .map(|h| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(h.page_size.clone())
                    .limit(i64::try_from(h.limit).unwrap_or(i64::MAX))
                    .build()
                    .map_err(build_error("hugepage limit"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out = out.hugepage_limits(limits);
    }
    if !r.unified.is_empty() {
        if !host.cgroup_v2 {
            return Err(SpecError::Invalid {
                field: "linux.resources.unified".into(),
                reason: "needs cgroup v2; this node runs cgroup v1".into(),
            });
        }
        out = out.unified(r.unified.clone());
    }
    out.build().map_err(build_error("resources"))
}

fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Result<LinuxDeviceCgroup, SpecError> {
    let mut builder = LinuxDeviceCgroupBuilder::default().allow(allow).access(access);
    if let Some(typ) = typ {
        builder = builder.typ(typ);
    }
    if let Some(major) = major {
        builder = builder.major(major);
    }
    if let Some(minor) = minor {
        builder = builder.minor(minor);
    }
    builder.build().map_err(build_error("device rule"))
}

/// The device node at `host`, as `container_path` in the container, if it is one.
fn device_node(host: &Path, container_path: &Path) -> std::io::Result<Option<LinuxDevice>> {
    let meta = std::fs::metadata(host)?;
    let typ = if meta.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if meta.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    LinuxDeviceBuilder::default()
        .path(container_path)
        .typ(typ)
        .major(nix::sys::stat::major(rdev) as i64)
        .minor(nix::sys::stat::minor(rdev) as i64)
        .file_mode(meta.mode() & 0o777)
        .uid(meta.uid())
        .gid(meta.gid())
        .build()
        .map(Some)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Every device node under `dir` (recursively), at `container_dir` + its path below `dir`.
fn nodes_under(dir: &Path, container_dir: &Path, skip: &[&str], out: &mut Vec<LinuxDevice>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            if !skip.iter().any(|s| name == *s) {
                nodes_under(&entry.path(), &container_dir.join(&name), &[], out)?;
            }
        } else if !file_type.is_symlink()
            && let Some(node) = device_node(&entry.path(), &container_dir.join(&name))?
        {
            out.push(node);
        }
    }
    Ok(())
}

/// The request's devices as nodes and cgroup rules (a directory stands for every device below it).
pub fn requested_devices(devices: &[Device]) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut nodes = vec![];
    let mut rules = vec![];
    for (index, device) in devices.iter().enumerate() {
        let invalid =
            |field: &str, reason: String| SpecError::Invalid { field: format!("devices[{index}].{field}"), reason };
        let permissions = if device.permissions.is_empty() { "rwm" } else { device.permissions.as_str() };
        if !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid("permissions", format!("{permissions:?} is not made of r, w and m")));
        }
        if !device.container_path.starts_with('/') {
            return Err(invalid("container_path", "must be an absolute path".into()));
        }
        let host = Path::new(&device.host_path);
        let container = Path::new(&device.container_path);
        let meta = std::fs::metadata(host).map_err(|e| invalid("host_path", format!("{}: {e}", device.host_path)))?;
        let mut found = vec![];
        if meta.is_dir() {
            nodes_under(host, container, &[], &mut found)
                .map_err(|e| invalid("host_path", format!("{}: {e}", device.host_path)))?;
        } else {
            match device_node(host, container)
                .map_err(|e| invalid("host_path", format!("{}: {e}", device.host_path)))?
            {
                Some(node) => found.push(node),
                None => return Err(invalid("host_path", format!("{} is not a device", device.host_path))),
            }
        }
        for node in found {
            rules.push(rule(true, Some(node.typ()), Some(node.major()), Some(node.minor()), permissions)?);
            nodes.push(node);
        }
    }
    Ok((nodes, rules))
}

/// Every device of the node under `/dev` for a privileged container (not the pty, shm, mqueue
/// and fd directories, which the container has of its own, nor the console).
pub fn host_devices() -> Result<Vec<LinuxDevice>, SpecError> {
    let mut nodes = vec![];
    nodes_under(
        Path::new("/dev"),
        Path::new("/dev"),
        &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"],
        &mut nodes,
    )
    .map_err(|e| SpecError::Build(format!("listing the node's devices: {e}")))?;
    nodes.retain(|n| n.path() != Path::new("/dev/console"));
    Ok(nodes)
}

/// The cgroup's device rules: deny all, then `allowed` (the OCI runtime adds its defaults).
pub fn device_rules(privileged: bool, allowed: Vec<LinuxDeviceCgroup>) -> Result<Vec<LinuxDeviceCgroup>, SpecError> {
    if privileged {
        return Ok(vec![rule(true, None, None, None, "rwm")?]);
    }
    let mut rules = vec![rule(false, None, None, None, "rwm")?];
    rules.extend(allowed);
    Ok(rules)
}
