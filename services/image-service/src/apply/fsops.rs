//! The file system calls the applier makes, on paths it has already confined to its root:
//! none of them follows a symbolic link in the last component.

use super::ApplyError;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn cpath(path: &Path) -> Result<CString, ApplyError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| ApplyError::Invalid(format!("a NUL in path {path:?}")))
}

fn check(op: &'static str, path: &Path, rc: libc::c_int) -> Result<(), ApplyError> {
    if rc == 0 { Ok(()) } else { Err(ApplyError::io(op, path, io::Error::last_os_error())) }
}

pub fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> Result<(), ApplyError> {
    let c = cpath(path)?;
    check("mknod", path, unsafe { libc::mknod(c.as_ptr(), mode, dev) })
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> Result<(), ApplyError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| ApplyError::io("lchown", path, e))
}

/// chmod of a path that is not a symbolic link.
pub fn chmod(path: &Path, mode: u32) -> Result<(), ApplyError> {
    let c = cpath(path)?;
    check("chmod", path, unsafe { libc::chmod(c.as_ptr(), (mode & 0o7777) as libc::mode_t) })
}

/// Sets access and modification times without following a symbolic link.
pub fn lutimes(path: &Path, atime: (i64, u32), mtime: (i64, u32)) -> Result<(), ApplyError> {
    let c = cpath(path)?;
    let times = [
        libc::timespec { tv_sec: atime.0 as libc::time_t, tv_nsec: atime.1 as _ },
        libc::timespec { tv_sec: mtime.0 as libc::time_t, tv_nsec: mtime.1 as _ },
    ];
    check("utimensat", path, unsafe {
        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    })
}

/// lsetxattr(2); `flags` 0 or `libc::XATTR_CREATE`. The raw error is answered so the caller
/// can ignore the ones containerd ignores.
pub fn lsetxattr(
    path: &Path,
    name: &[u8],
    value: &[u8],
    flags: libc::c_int,
) -> Result<Result<(), io::Error>, ApplyError> {
    let c = cpath(path)?;
    let n = CString::new(name).map_err(|_| ApplyError::Invalid("a NUL in an xattr name".into()))?;
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    Ok(if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) })
}

/// The names of `path`'s extended attributes (not following a symbolic link).
pub fn llistxattr(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf.split(|b| *b == 0).filter(|s| !s.is_empty()).map(<[u8]>::to_vec).collect());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return Err(err);
    }
}

pub fn lgetxattr(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 4096];
    loop {
        let len = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if len >= 0 {
            buf.truncate(len as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return Err(err);
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
