//! The file system calls the applier makes, on paths it has already confined to its root:
//! none of them follows a symbolic link in the last component.

use super::ApplyError;
use rustix::fs::{AtFlags, CWD, Dev, FileType, Mode, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// mknod(2) of a device or FIFO `file_type` with permission bits `mode` (less the umask).
pub fn mknod(path: &Path, file_type: FileType, mode: u32, dev: Dev) -> Result<(), ApplyError> {
    rustix::fs::mknodat(CWD, path, file_type, Mode::from_raw_mode(mode & 0o7777), dev)
        .map_err(|e| ApplyError::io("mknod", path, e.into()))
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> Result<(), ApplyError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| ApplyError::io("lchown", path, e))
}

/// chmod of a path that is not a symbolic link.
pub fn chmod(path: &Path, mode: u32) -> Result<(), ApplyError> {
    rustix::fs::chmod(path, Mode::from_raw_mode(mode & 0o7777)).map_err(|e| ApplyError::io("chmod", path, e.into()))
}

/// Sets access and modification times without following a symbolic link.
pub fn lutimes(path: &Path, atime: (i64, u32), mtime: (i64, u32)) -> Result<(), ApplyError> {
    let times = Timestamps {
        last_access: Timespec { tv_sec: atime.0, tv_nsec: atime.1.into() },
        last_modification: Timespec { tv_sec: mtime.0, tv_nsec: mtime.1.into() },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| ApplyError::io("utimensat", path, e.into()))
}

/// lsetxattr(2); `flags` empty or `XattrFlags::CREATE`. The raw error is answered so the
/// caller can ignore the ones containerd ignores.
pub fn lsetxattr(path: &Path, name: &[u8], value: &[u8], flags: XattrFlags) -> Result<Result<(), Errno>, ApplyError> {
    if name.contains(&0) {
        return Err(ApplyError::Invalid("a NUL in an xattr name".into()));
    }
    Ok(rustix::fs::lsetxattr(path, name, value, flags))
}

/// The names of `path`'s extended attributes (not following a symbolic link).
pub fn llistxattr(path: &Path) -> Result<Vec<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; 4096];
    loop {
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf.split(|b| *b == 0).filter(|s| !s.is_empty()).map(<[u8]>::to_vec).collect());
            }
            Err(Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

pub fn lgetxattr(path: &Path, name: &[u8]) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; 4096];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// Removes `path` whatever it is; nothing there is fine.
pub fn remove_all(path: &Path) -> Result<(), ApplyError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
    .map_err(|e| ApplyError::io("remove", path, e))
}

/// The lexically cleaned components of a tar name: `.` dropped, `..` taking one back and
/// never above the root, absolute names taken as relative to it (Go's `filepath.Clean` of the
/// name, then joined to the root, as containerd does).
pub fn clean(name: &[u8]) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            other => out.push(OsStr::from_bytes(other).to_os_string()),
        }
    }
    out
}

pub fn join(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(parts);
    path
}

/// Resolves `parts` inside `root` the way containerd's `fs.RootPath` does: symbolic links met
/// on the way are followed, absolute targets start again at `root`, `..` never leaves it; a
/// component that does not exist is taken as it is.
pub fn resolve(root: &Path, parts: Vec<OsString>) -> Result<Vec<OsString>, ApplyError> {
    let mut todo: std::collections::VecDeque<OsString> = parts.into();
    let mut out: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        let bytes = part.as_bytes();
        if bytes.is_empty() || bytes == b"." {
            continue;
        }
        if bytes == b".." {
            out.pop();
            continue;
        }
        let real = join(root, &out).join(&part);
        match std::fs::symlink_metadata(&real) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(ApplyError::Invalid(format!("too many symbolic links resolving {real:?}")));
                }
                let target = std::fs::read_link(&real).map_err(|e| ApplyError::io("readlink", &real, e))?;
                let target = target.as_os_str().as_bytes();
                if target.starts_with(b"/") {
                    out.clear();
                }
                let mut next: std::collections::VecDeque<OsString> = target
                    .split(|b| *b == b'/')
                    .filter(|p| !p.is_empty())
                    .map(|p| OsStr::from_bytes(p).to_os_string())
                    .collect();
                next.extend(todo);
                todo = next;
            }
            Ok(_) => out.push(part),
            Err(e) if e.kind() == io::ErrorKind::NotFound => out.push(part),
            Err(e) => return Err(ApplyError::io("lstat", &real, e)),
        }
    }
    Ok(out)
}
