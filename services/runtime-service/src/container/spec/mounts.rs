//! The container's mounts: the default filesystems (`/proc`, `/dev`, `/dev/pts`, `/dev/mqueue`,
//! `/sys`, `/sys/fs/cgroup`), the pod's files (`/etc/hostname`, `/etc/hosts`,
//! `/etc/resolv.conf`, `/dev/shm`) unless the request mounts those paths itself, the request's
//! bind mounts and the image's volumes. A request mount replaces a default at the same path (a
//! request mount of `/dev` replaces everything below it too); request mounts are ordered parents
//! first. A bind source that is a symlink is resolved; one that is missing is returned to be
//! created as a directory, as the kubelet expects. A mount propagating from the host must sit on
//! a shared or slave host mount, one propagating both ways on a shared one (else the request is
//! refused, as containerd does). `rro` replaces `ro` where the request asks for it.

use super::SpecError;
use crisp_proto::cri::{Mount as CriMount, MountPropagation};
use oci_spec::runtime::{Mount, MountBuilder};
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

/// The mounts and what they ask of the rest of the spec.
#[derive(Debug, Default)]
pub struct Mounts {
    pub mounts: Vec<Mount>,
    /// Bind sources to create (missing host paths, image volume directories).
    pub create_dirs: Vec<PathBuf>,
    /// `rslave` or `rshared` when a mount propagates from or to the host.
    pub rootfs_propagation: Option<String>,
}

/// What the mounts are built from.
pub struct MountInput<'a> {
    pub requested: &'a [CriMount],
    /// The pod's directory holding `hostname`, `hosts` and `resolv.conf`.
    pub pod_dir: &'a Path,
    /// The pod's `/dev/shm` source.
    pub pod_shm: &'a Path,
    /// The image's volumes (container paths).
    pub image_volumes: &'a [String],
    /// Where the image's volumes get their directories.
    pub container_dir: &'a Path,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    /// The OCI runtime has recursive read-only mounts.
    pub rro_supported: bool,
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| SpecError::Build(format!("mount {destination}: {e}")))
}

/// The filesystems every container gets (`/dev/shm` is the pod's, added as a pod file).
fn defaults(privileged: bool) -> Result<Vec<Mount>, SpecError> {
    let sys = if privileged { "rw" } else { "ro" };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", sys])?,
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", sys])?,
    ])
}

/// `path` made lexically clean (`/a/./b/` → `/a/b`), to compare destinations.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = vec![];
    for component in Path::new(path).components() {
        match component {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

fn depth(path: &str) -> usize {
    clean(path).split('/').filter(|p| !p.is_empty()).count()
}

/// Checks that the host mount holding `source` passes mounts on: shared (`shared_only`), or
/// shared or a slave, as `/proc/self/mountinfo` says; else mounts could not propagate.
fn ensure_propagates(source: &Path, shared_only: bool) -> Result<(), String> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    // The nearest existing ancestor of a source still to be created.
    let source = source.ancestors().find_map(|p| std::fs::canonicalize(p).ok()).unwrap_or_else(|| PathBuf::from("/"));
    let (mount_point, tags) =
        mount_of(&mountinfo, &source).ok_or_else(|| format!("no mount holds {}", source.display()))?;
    let shared = tags.iter().any(|t| t.starts_with("shared:"));
    let slave = tags.iter().any(|t| t.starts_with("master:"));
    match (shared_only, shared, slave) {
        (_, true, _) | (false, _, true) => Ok(()),
        (true, ..) => Err(format!("{} is on mount {mount_point} which is not a shared mount", source.display())),
        (false, ..) => {
            Err(format!("{} is on mount {mount_point} which is neither shared nor a slave", source.display()))
        }
    }
}

/// The mount point holding `path` (the longest mount point that is its ancestor; the last one
/// mounted there) and its propagation tags, from a `mountinfo` text.
pub fn mount_of(mountinfo: &str, path: &Path) -> Option<(String, Vec<String>)> {
    let mut best: Option<(String, Vec<String>)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 7 {
            continue;
        }
        let mount_point = unescape(fields[4]);
        if !path.starts_with(&mount_point) {
            continue;
        }
        let tags: Vec<String> = fields[6..].iter().take_while(|f| **f != "-").map(|f| f.to_string()).collect();
        if best.as_ref().is_none_or(|(b, _)| mount_point.len() >= b.len()) {
            best = Some((mount_point, tags));
        }
    }
    best
}

/// A mountinfo path with its octal escapes (`\040` for a space) decoded.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(code) =
                std::str::from_utf8(&bytes[i + 1..i + 4]).ok().and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One bind mount of the request (or a pod file) as the OCI runtime must do it.
fn bind(index: usize, m: &CriMount, rro_supported: bool, out: &mut Mounts) -> Result<Mount, SpecError> {
    let field = |name: &str| format!("mounts[{index}].{name}");
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        return Err(SpecError::Invalid {
            field: field("image"),
            reason: "image volumes are not supported by this runtime".into(),
        });
    }
    if !m.container_path.starts_with('/') {
        return Err(SpecError::Invalid { field: field("container_path"), reason: "must be an absolute path".into() });
    }
    if m.host_path.is_empty() {
        return Err(SpecError::Invalid { field: field("host_path"), reason: "is empty".into() });
    }
    // A symlinked source is mounted as its target; a missing one is made a directory.
    let host = Path::new(&m.host_path);
    let source = match std::fs::canonicalize(host) {
        Ok(resolved) => resolved,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.create_dirs.push(host.to_path_buf());
            host.to_path_buf()
        }
        Err(e) => {
            return Err(SpecError::Invalid { field: field("host_path"), reason: format!("{}: {e}", m.host_path) });
        }
    };
    let propagation = MountPropagation::try_from(m.propagation).unwrap_or_default();
    let mut options = vec!["rbind".to_string()];
    match propagation {
        MountPropagation::PropagationPrivate => options.push("rprivate".into()),
        MountPropagation::PropagationHostToContainer => {
            ensure_propagates(&source, false)
                .map_err(|reason| SpecError::Invalid { field: field("propagation"), reason })?;
            options.push("rslave".into());
            if out.rootfs_propagation.as_deref() != Some("rshared") {
                out.rootfs_propagation = Some("rslave".into());
            }
        }
        MountPropagation::PropagationBidirectional => {
            ensure_propagates(&source, true)
                .map_err(|reason| SpecError::Invalid { field: field("propagation"), reason })?;
            options.push("rshared".into());
            out.rootfs_propagation = Some("rshared".into());
        }
    }
    if m.recursive_read_only {
        let invalid = |reason: &str| SpecError::Invalid { field: field("recursive_read_only"), reason: reason.into() };
        if !m.readonly {
            return Err(invalid("needs readonly"));
        }
        if propagation != MountPropagation::PropagationPrivate {
            return Err(invalid("needs private propagation"));
        }
        if !rro_supported {
            return Err(invalid("is not supported by this node's OCI runtime"));
        }
        options.push("rro".into());
    } else {
        options.push(if m.readonly { "ro" } else { "rw" }.into());
    }
    MountBuilder::default()
        .destination(clean(&m.container_path))
        .typ("bind")
        .source(source)
        .options(options)
        .build()
        .map_err(|e| SpecError::Build(format!("mount {}: {e}", m.container_path)))
}

/// The container's mounts for `input`.
pub fn build(input: &MountInput) -> Result<Mounts, SpecError> {
    let mut out = Mounts::default();
    let mut requested: Vec<(usize, CriMount)> = input.requested.iter().cloned().enumerate().collect();
    let mut seen = HashSet::new();
    for (index, m) in &requested {
        if !seen.insert(clean(&m.container_path)) {
            return Err(SpecError::Invalid {
                field: format!("mounts[{index}].container_path"),
                reason: format!("{} is mounted twice", m.container_path),
            });
        }
    }

    // The pod's files, unless the request mounts those paths.
    let pod_file = |path: &str, host: PathBuf, readonly: bool| CriMount {
        container_path: path.into(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        ..Default::default()
    };
    let files = [
        pod_file("/etc/hostname", input.pod_dir.join("hostname"), input.readonly_rootfs),
        pod_file("/etc/hosts", input.pod_dir.join("hosts"), input.readonly_rootfs),
        pod_file("/etc/resolv.conf", input.pod_dir.join("resolv.conf"), input.readonly_rootfs),
        pod_file("/dev/shm", input.pod_shm.to_path_buf(), false),
    ];
    for file in files {
        if seen.insert(clean(&file.container_path)) {
            requested.push((usize::MAX, file));
        }
    }

    // The image's volumes, each on a directory of the container's own.
    let mut volumes: Vec<&String> = input.image_volumes.iter().collect();
    volumes.sort();
    for (n, volume) in volumes.into_iter().enumerate() {
        if seen.insert(clean(volume)) {
            let dir = input.container_dir.join("volumes").join(n.to_string());
            requested.push((usize::MAX, pod_file(volume, dir, false)));
        }
    }

    for m in defaults(input.privileged)? {
        let destination = m.destination().to_string_lossy().into_owned();
        let under_dev = destination.starts_with("/dev/") && seen.contains("/dev");
        if !seen.contains(&destination) && !under_dev {
            out.mounts.push(m);
        }
    }
    // Parents before children; otherwise in the order given.
    requested.sort_by_key(|(_, m)| depth(&m.container_path));
    for (index, m) in &requested {
        let built = bind(*index, m, input.rro_supported, &mut out)?;
        out.mounts.push(built);
    }
    Ok(out)
}
