//! Reading files from a container's rootfs before it runs: its snapshot's mounts are mounted
//! read-only on a temporary directory (a [`Mounted`] guard unmounts and removes it), and
//! `/etc/passwd` and `/etc/group` are read, for the spec builder to resolve users and groups.
//! Blocking: call from `spawn_blocking`.

use super::spec::ImageFiles;
use crisp_containerd::containerd_client::types::Mount;
use nix::mount::{MntFlags, MsFlags};
use std::path::{Path, PathBuf};

/// A mounted rootfs; unmounted (lazily, whatever still holds it) and its directory removed when dropped.
struct Mounted {
    target: PathBuf,
    mounted: bool,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted
            && let Err(err) = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH)
        {
            tracing::warn!(target = %self.target.display(), error = %err, "unmounting a container's rootfs");
        }
        let _ = std::fs::remove_dir(&self.target);
    }
}

/// The flags and data of a mount's options (`ro`, `bind`, `rbind` are flags; the rest data).
fn options(mount: &Mount) -> (MsFlags, String) {
    let mut flags = MsFlags::MS_RDONLY;
    let mut data = Vec::new();
    for option in &mount.options {
        match option.as_str() {
            "ro" | "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

fn mount_at(mounts: &[Mount], target: &Path) -> std::io::Result<Mounted> {
    std::fs::create_dir_all(target)?;
    let mut guard = Mounted { target: target.to_path_buf(), mounted: false };
    // The snapshotter gives one mount (an overlay, or a bind of a single layer).
    let Some(mount) = mounts.first() else { return Ok(guard) };
    let (flags, data) = options(mount);
    let fstype = if flags.contains(MsFlags::MS_BIND) { None } else { Some(mount.r#type.as_str()) };
    nix::mount::mount(Some(mount.source.as_str()), target, fstype, flags, (!data.is_empty()).then_some(data.as_str()))
        .map_err(std::io::Error::from)?;
    guard.mounted = true;
    if flags.contains(MsFlags::MS_BIND) {
        // A bind mount ignores MS_RDONLY until remounted.
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(guard)
}

/// A file of the rootfs at `root`, not following a symlink out of it (a missing file is None).
fn read(root: &Path, path: &str) -> Option<String> {
    let file = root.join(path);
    let resolved = std::fs::canonicalize(&file).ok()?;
    if !resolved.starts_with(root) {
        return None;
    }
    std::fs::read_to_string(resolved).ok()
}

/// `/etc/passwd` and `/etc/group` of the rootfs `mounts` make, mounted at `scratch`.
pub fn image_files(mounts: &[Mount], scratch: &Path) -> std::io::Result<ImageFiles> {
    let mounted = mount_at(mounts, scratch)?;
    let root = std::fs::canonicalize(&mounted.target)?;
    Ok(ImageFiles { passwd: read(&root, "etc/passwd"), group: read(&root, "etc/group") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let overlay = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options: vec!["index=off".into(), "lowerdir=/a:/b".into(), "ro".into()],
            ..Default::default()
        };
        assert_eq!(options(&overlay), (MsFlags::MS_RDONLY, "index=off,lowerdir=/a:/b".to_string()));
        let bind = Mount { r#type: "bind".into(), options: vec!["rbind".into(), "rw".into()], ..Default::default() };
        assert_eq!(options(&bind), (MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC, String::new()));
    }
}
