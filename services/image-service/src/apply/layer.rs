//! Applies one uncompressed layer tar stream to a directory exactly as containerd's overlay
//! applier does (`archive.Apply` with its naive applier: `applyNaive` / `createTarFile`, and
//! `OverlayConvertWhiteout` for a layer with a parent; the default removal of whiteouts for
//! the first layer, which containerd applies through a bind mount).

use super::ApplyError;
use super::fsops::{self, clean, join, resolve};
use super::stream::{self, Padded, Position};
use rustix::fs::{FileType, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const PAX_XATTR: &str = "SCHILY.xattr.";
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// How whiteouts become files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// The first layer (containerd applies it through a bind mount): a whiteout removes what
    /// it names, an opaque marker what its directory held before.
    Remove,
    /// A layer on a parent (applied to the overlay upper directory): `.wh.<name>` becomes a
    /// 0/0 character device, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr.
    Overlay,
}

/// A directory the applier made because an entry's parent was missing: on an overlay layer
/// containerd copies its owner, mode and xattrs from the same directory in the nearest lower
/// layer that has it ([`super::Staged::install`] does, once the lower layers are known).
#[derive(Debug, Clone)]
pub struct ImplicitDir {
    pub path: Vec<OsString>,
    /// A later directory entry of the layer named it (its own owner and mode win).
    pub explicit: bool,
}

/// What applying a layer found.
#[derive(Debug)]
pub struct Applied {
    /// `sha256:<hex>` of the whole uncompressed stream.
    pub diff_id: String,
    pub implicit_dirs: Vec<ImplicitDir>,
    pub bytes: u64,
}

/// Seconds and nanoseconds since the epoch.
type Time = (i64, u32);

/// Passes bytes through, hashing them.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Entry metadata, with the PAX records folded in as Go's tar reader does.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    atime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Applies the tar stream `reader` (uncompressed) under `root`, an empty directory.
pub fn apply(reader: impl Read, root: &Path, whiteouts: Whiteouts, cancel: &AtomicBool) -> Result<Applied, ApplyError> {
    let mut hashing = Hashing { inner: reader, hasher: Sha256::new(), bytes: 0 };
    let mut applier = Applier {
        root,
        whiteouts,
        dirs: Vec::new(),
        unpacked: HashSet::new(),
        opaque_done: HashSet::new(),
        implicit: Vec::new(),
        buffer: vec![0u8; 256 << 10],
    };
    let position = Rc::new(Position::default());
    {
        let mut archive = tar::Archive::new(Padded::new(&mut hashing, position.clone()));
        let entries = archive.entries().map_err(ApplyError::Archive)?;
        // Where the last entry's data ended.
        let mut data_end = 0;
        for entry in entries {
            if cancel.load(Ordering::Relaxed) {
                return Err(ApplyError::Cancelled);
            }
            let mut entry = entry.map_err(|e| position.header_error(e))?;
            position.check_header()?;
            let read = applier.entry(&mut entry)?;
            // What the applier did not read (the tar crate would skip it).
            let rest = io::copy(&mut entry, &mut io::sink()).map_err(ApplyError::Archive)?;
            position.check_data(&entry.path_bytes(), read + rest, entry.size())?;
            data_end = position.served();
        }
        position.check_end(data_end)?;
        applier.finish()?;
    }
    stream::check_trailer(&mut hashing, position.served())?;
    // containerd digests the stream to its end, past the tar trailer.
    io::copy(&mut hashing, &mut io::sink()).map_err(ApplyError::Archive)?;
    Ok(Applied {
        diff_id: format!("sha256:{}", hex::encode(hashing.hasher.finalize())),
        implicit_dirs: applier.implicit,
        bytes: hashing.bytes,
    })
}

struct Applier<'a> {
    root: &'a Path,
    whiteouts: Whiteouts,
    /// Directories created or merged, with their times (set again at the end, after their
    /// children changed them).
    dirs: Vec<(PathBuf, Time, Time)>,
    unpacked: HashSet<PathBuf>,
    opaque_done: HashSet<PathBuf>,
    implicit: Vec<ImplicitDir>,
    buffer: Vec<u8>,
}

fn parse_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = match text.split_once('.') {
        Some((s, f)) => (s, f),
        None => (text, ""),
    };
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    let mut digits = 0;
    for c in frac.chars().take(9) {
        nanos = nanos * 10 + c.to_digit(10)?;
        digits += 1;
    }
    for _ in digits..9 {
        nanos *= 10;
    }
    if secs < 0 && nanos > 0 {
        // "-1.5" is 1.5 s before the epoch.
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    Some((secs, nanos))
}

/// containerd's `boundTime`: times outside what it can represent become the epoch.
fn bound(t: (i64, u32)) -> (i64, u32) {
    if t.0 < 0 || t.0 > i64::MAX / 1_000_000_000 - 1 { (0, 0) } else { t }
}

impl Applier<'_> {
    fn meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, ApplyError> {
        let header = entry.header();
        // An empty numeric field is 0 (as Go's tar reader reads it).
        let mode = header.mode().unwrap_or(0);
        let mut uid = header.uid().unwrap_or(0);
        let mut gid = header.gid().unwrap_or(0);
        let mut mtime = (header.mtime().unwrap_or(0) as i64, 0u32);
        let mut atime = header.as_gnu().filter(|g| g.atime[0] != 0).and_then(|g| g.atime().ok()).map(|t| (t as i64, 0));
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(ApplyError::Archive)? {
            for record in pax {
                let record = record.map_err(ApplyError::Archive)?;
                let key = record.key_bytes();
                let value = record.value_bytes();
                match key {
                    b"uid" => uid = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(uid),
                    b"gid" => gid = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(gid),
                    b"mtime" => mtime = parse_time(value).unwrap_or(mtime),
                    b"atime" => atime = parse_time(value).or(atime),
                    _ => {
                        if let Some(name) = key.strip_prefix(PAX_XATTR.as_bytes()) {
                            xattrs.push((name.to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let id =
            |v: u64, what: &str| u32::try_from(v).map_err(|_| ApplyError::Invalid(format!("{what} {v} out of range")));
        Ok(Meta { mode, uid: id(uid, "uid")?, gid: id(gid, "gid")?, mtime, atime, xattrs })
    }

    /// Applies one entry; answers how many bytes of its data it read.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<u64, ApplyError> {
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            return Ok(0);
        }
        let name = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
        if name.contains(&0) || link.contains(&0) {
            return Err(ApplyError::Invalid(format!("a NUL in the name {:?}", String::from_utf8_lossy(&name))));
        }
        let mut parts = clean(&name);
        let Some(base) = parts.pop() else {
            // Resolves to the root: containerd ignores it.
            return Ok(0);
        };
        let parent = resolve(self.root, parts)?;
        let parent_path = join(self.root, &parent);
        let path = parent_path.join(&base);
        if !parent.is_empty() {
            self.mkparent(&parent)?;
        }
        let meta = Self::meta(entry)?;

        // Whiteouts.
        let base_bytes = base.as_bytes();
        if base_bytes == WHITEOUT_OPAQUE {
            match self.whiteouts {
                Whiteouts::Overlay => {
                    fsops::lsetxattr(&parent_path, OPAQUE_XATTR, b"y", XattrFlags::empty())?
                        .map_err(|e| ApplyError::io("setting the opaque xattr on", &parent_path, e.into()))?;
                }
                Whiteouts::Remove => self.opaque_remove(&parent_path)?,
            }
            return Ok(0);
        }
        if let Some(original) = base_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if original.is_empty() || original == b"." || original == b".." {
                return Err(ApplyError::Invalid(format!("invalid whiteout name {:?}", String::from_utf8_lossy(&name))));
            }
            let target = parent_path.join(std::ffi::OsStr::from_bytes(original));
            match self.whiteouts {
                Whiteouts::Overlay => {
                    fsops::mknod(&target, FileType::CharacterDevice, 0, 0)?;
                    fsops::lchown(&target, meta.uid, meta.gid)?;
                }
                Whiteouts::Remove => fsops::remove_all(&target)?,
            }
            return Ok(0);
        }

        // Replace what is there, unless a directory meets a directory (then they merge).
        if let Ok(existing) = std::fs::symlink_metadata(&path)
            && !(existing.is_dir() && kind == tar::EntryType::Directory)
        {
            fsops::remove_all(&path)?;
        }

        let mode = meta.mode & 0o7777;
        let mut read = 0;
        match kind {
            tar::EntryType::Directory => {
                let is_dir = std::fs::symlink_metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
                if !is_dir {
                    std::fs::create_dir(&path).map_err(|e| ApplyError::io("mkdir", &path, e))?;
                    fsops::chmod(&path, mode)?;
                }
                let rel = path.strip_prefix(self.root).map(|p| p.to_path_buf()).unwrap_or_default();
                for dir in self.implicit.iter_mut() {
                    if join(Path::new(""), &dir.path) == rel {
                        dir.explicit = true;
                    }
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(|e| ApplyError::io("creating", &path, e))?;
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(|e| ApplyError::io("chmod", &path, e))?;
                let mut written = 0u64;
                loop {
                    let n = entry.read(&mut self.buffer).map_err(ApplyError::Archive)?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&self.buffer[..n]).map_err(|e| ApplyError::io("writing", &path, e))?;
                    written += n as u64;
                }
                read = written;
            }
            tar::EntryType::Block | tar::EntryType::Char | tar::EntryType::Fifo => {
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let file_type = match kind {
                    tar::EntryType::Block => FileType::BlockDevice,
                    tar::EntryType::Char => FileType::CharacterDevice,
                    _ => FileType::Fifo,
                };
                fsops::mknod(&path, file_type, mode, rustix::fs::makedev(major, minor))?;
            }
            tar::EntryType::Link => {
                let target = join(self.root, &resolve(self.root, clean(&link))?);
                std::fs::hard_link(&target, &path).map_err(|e| ApplyError::io("hard link to", &target, e))?;
            }
            tar::EntryType::Symlink => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&link), &path)
                    .map_err(|e| ApplyError::io("symlink", &path, e))?;
            }
            other => {
                return Err(ApplyError::Invalid(format!(
                    "unhandled tar entry type {:?} for {:?}",
                    other.as_byte() as char,
                    String::from_utf8_lossy(&name)
                )));
            }
        }

        fsops::lchown(&path, meta.uid, meta.gid)?;
        for (key, value) in &meta.xattrs {
            // containerd does not set admin (`trusted.*`) attributes from an archive.
            if key.starts_with(b"trusted.") {
                tracing::warn!(xattr = %String::from_utf8_lossy(key), path = %path.display(), "ignored xattr in archive");
                continue;
            }
            if let Err(err) = fsops::lsetxattr(&path, key, value, XattrFlags::empty())? {
                let regular_or_dir =
                    std::fs::symlink_metadata(&path).map(|m| m.is_file() || m.is_dir()).unwrap_or(true);
                let ignored =
                    err == Errno::NOTSUP || (err == Errno::PERM && key.starts_with(b"user.") && !regular_or_dir);
                if ignored {
                    tracing::warn!(xattr = %String::from_utf8_lossy(key), path = %path.display(), error = %err, "ignored xattr in archive");
                    continue;
                }
                return Err(ApplyError::io("setting an xattr on", &path, err.into()));
            }
        }
        // After lchown, which clears set-id bits. Not through a symbolic link; a hard link's
        // mode is its target's unless that is a symbolic link.
        match kind {
            tar::EntryType::Symlink => {}
            tar::EntryType::Link => {
                if !std::fs::symlink_metadata(&path).map(|m| m.file_type().is_symlink()).unwrap_or(true) {
                    fsops::chmod(&path, mode)?;
                }
            }
            _ => fsops::chmod(&path, mode)?,
        }
        let mtime = meta.mtime;
        let atime = match meta.atime {
            Some(a) if a > mtime => a,
            _ => mtime,
        };
        let (atime, mtime) = (bound(atime), bound(mtime));
        fsops::lutimes(&path, atime, mtime)?;
        if kind == tar::EntryType::Directory {
            self.dirs.push((path.clone(), atime, mtime));
        }
        self.unpacked.insert(path);
        Ok(read)
    }

    /// Creates the missing directories of `parent` (already resolved), 0755.
    fn mkparent(&mut self, parent: &[OsString]) -> Result<(), ApplyError> {
        let full = join(self.root, parent);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(_) => return Err(ApplyError::io("mkparent", &full, Errno::NOTDIR.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ApplyError::io("lstat", &full, e)),
        }
        if parent.len() > 1 {
            self.mkparent(&parent[..parent.len() - 1])?;
        }
        std::fs::create_dir(&full).map_err(|e| ApplyError::io("mkdir", &full, e))?;
        fsops::chmod(&full, 0o755)?;
        self.implicit.push(ImplicitDir { path: parent.to_vec(), explicit: false });
        Ok(())
    }

    /// An opaque marker on the first layer: everything in `dir` not unpacked by this layer
    /// goes (once per directory).
    fn opaque_remove(&mut self, dir: &Path) -> Result<(), ApplyError> {
        if !self.opaque_done.insert(dir.to_path_buf()) {
            return Ok(());
        }
        std::fs::symlink_metadata(dir).map_err(|e| ApplyError::io("lstat", dir, e))?;
        self.remove_not_unpacked(dir)
    }

    fn remove_not_unpacked(&self, dir: &Path) -> Result<(), ApplyError> {
        let mut children: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ApplyError::io("reading directory", dir, e)),
        };
        children.sort();
        for child in children {
            if self.unpacked.contains(&child) {
                if std::fs::symlink_metadata(&child).map(|m| m.is_dir()).unwrap_or(false) {
                    self.remove_not_unpacked(&child)?;
                }
            } else {
                fsops::remove_all(&child)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ApplyError> {
        for (path, atime, mtime) in &self.dirs {
            if std::fs::symlink_metadata(path).map(|m| m.is_dir()).unwrap_or(false) {
                fsops::lutimes(path, *atime, *mtime)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_time(b"1704067200"), Some((1704067200, 0)));
        assert_eq!(parse_time(b"1704067200.5"), Some((1704067200, 500_000_000)));
        assert_eq!(parse_time(b"1.000000001"), Some((1, 1)));
    }

    #[test]
    fn names_stay_in_the_root() {
        assert_eq!(clean(b"../../etc/passwd"), vec![OsString::from("etc"), OsString::from("passwd")]);
        assert_eq!(clean(b"/a/./b/../c/"), vec![OsString::from("a"), OsString::from("c")]);
        assert!(clean(b"./").is_empty());
    }

    /// Kind, path, mode, data, link target.
    type Spec<'a> = (tar::EntryType, &'a str, u32, &'a [u8], Option<&'a str>);

    fn tar_of(entries: &[Spec<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (kind, path, mode, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_mtime(1_000_000);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            match link {
                Some(l) => builder.append_link(&mut h, path, l).unwrap(),
                None => builder.append_data(&mut h, path, *data).unwrap(),
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn applies_whiteouts_links_and_modes() {
        use std::os::unix::fs::MetadataExt;
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let dir = tempfile::tempdir().unwrap();
        let common: Vec<Spec<'_>> = vec![
            (Directory, "d/", 0o750, b"", None),
            (Regular, "d/f", 0o4755, b"hello", None),
            (Link, "d/hl", 0o4755, b"", Some("d/f")),
            (Symlink, "s", 0o777, b"", Some("d")),
            (Regular, "s/via-link", 0o600, b"x", None),
            (Regular, ".wh.gone", 0o644, b"", None),
            (Regular, "x/.wh.y", 0o644, b"", None),
            (Regular, "x/.wh..wh..opq", 0o644, b"", None),
        ];
        let tar = tar_of(&common);
        let cancel = AtomicBool::new(false);
        let root = dir.path().join("overlay");
        std::fs::create_dir(&root).unwrap();
        let applied = apply(tar.as_slice(), &root, Whiteouts::Overlay, &cancel).unwrap();
        assert_eq!(applied.diff_id, crisp_image_model::Digest::sha256_of(&tar).as_str());
        let f = std::fs::metadata(root.join("d/f")).unwrap();
        assert_eq!(f.permissions().mode() & 0o7777, 0o4755);
        assert_eq!(f.nlink(), 2);
        assert_eq!(f.mtime(), 1_000_000);
        assert!(root.join("d/via-link").exists());
        let wh = std::fs::symlink_metadata(root.join("gone")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&wh.file_type()));
        assert_eq!(wh.rdev(), 0);
        assert!(std::fs::symlink_metadata(root.join("x/y")).is_ok());
        assert_eq!(applied.implicit_dirs.len(), 1);
        if let Ok(value) = fsops::lgetxattr(&root.join("x"), OPAQUE_XATTR) {
            assert_eq!(value, b"y");
        }

        // The first layer: whiteouts remove, also what this layer made before them.
        let mut first = vec![(Regular, "gone", 0o644, &b"x"[..], None)];
        first.extend(common);
        let tar = tar_of(&first);
        let root = dir.path().join("first");
        std::fs::create_dir(&root).unwrap();
        apply(tar.as_slice(), &root, Whiteouts::Remove, &cancel).unwrap();
        assert!(std::fs::symlink_metadata(root.join("gone")).is_err());
        assert!(std::fs::symlink_metadata(root.join("x")).unwrap().is_dir());
        assert_eq!(std::fs::read_dir(root.join("x")).unwrap().count(), 0);
    }

    /// A PAX record `key=value`.
    fn pax_record(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}").len() + body.len() != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    /// A layer of a directory, a file, a file with a PAX header, a symbolic link and last a
    /// file of 1000 bytes (not a multiple of 512), with its two end-of-archive blocks.
    fn layer_with_trailer() -> Vec<u8> {
        use tar::EntryType::{Directory, Regular, Symlink, XHeader};
        let mut builder = tar::Builder::new(Vec::new());
        let mut append = |kind: tar::EntryType, path: &str, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o644);
            h.set_mtime(1_000_000);
            h.set_size(data.len() as u64);
            match link {
                Some(l) => builder.append_link(&mut h, path, l).unwrap(),
                None => builder.append_data(&mut h, path, data).unwrap(),
            }
        };
        append(Directory, "d/", b"", None);
        append(Regular, "d/a", &[b'a'; 700], None);
        append(XHeader, "PaxHeaders/p", &pax_record("mtime", "1000000.5"), None);
        append(Regular, "d/p", b"pax", None);
        append(Symlink, "d/s", b"", Some("a"));
        let last: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        append(Regular, "d/last", &last, None);
        builder.into_inner().unwrap()
    }

    fn apply_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Applied, ApplyError>) {
        let dir = tempfile::tempdir().unwrap();
        let result = apply(bytes, dir.path(), Whiteouts::Remove, &AtomicBool::new(false));
        (dir, result)
    }

    /// Every cut of the stream, against the rule Go's archive/tar (containerd) applies:
    /// complete when it stops at 0, anywhere from the end of an entry's data to the next
    /// header, after the first zero block or after both; refused inside a header, inside
    /// data, inside a zero block. (Past an extended header's data, Go also ends cleanly and
    /// drops it; the `tar` crate, and so crisp, refuses that.)
    #[test]
    fn a_stream_may_end_where_go_ends_it_and_nowhere_else() {
        let full = layer_with_trailer();
        let trailer = full.len() - 1024;
        // Each header's position, its data's end, the next header's, and whether it is a PAX header.
        let mut layout = Vec::new();
        let mut archive = tar::Archive::new(full.as_slice());
        for entry in archive.entries().unwrap().raw(true) {
            let entry = entry.unwrap();
            let data_end = entry.raw_file_position() + entry.size();
            let pax = entry.header().entry_type() == tar::EntryType::XHeader;
            layout.push((
                entry.raw_header_position() as usize,
                data_end as usize,
                data_end.next_multiple_of(512) as usize,
                pax,
            ));
        }
        assert_eq!(layout.len(), 6);
        assert_eq!(layout.last().unwrap().2, trailer);
        // Around every block boundary and every data end, and some more.
        let cuts = (0..=full.len()).filter(|&cut| {
            matches!(cut % 512, 0..=2 | 100 | 510 | 511)
                || layout.iter().any(|&(_, data_end, _, _)| cut.abs_diff(data_end) <= 2)
                || cut % 97 == 0
        });
        for cut in cuts {
            let complete = cut == 0
                || layout.iter().any(|&(_, data_end, next, pax)| !pax && (data_end..=next).contains(&cut))
                || cut == trailer + 512
                || cut == full.len();
            let (dir, result) = apply_bytes(&full[..cut]);
            match result {
                Ok(applied) => {
                    assert!(complete, "a cut at {cut} was accepted");
                    assert_eq!(
                        applied.diff_id,
                        crisp_image_model::Digest::sha256_of(&full[..cut]).as_str(),
                        "cut at {cut}"
                    );
                    assert_eq!(applied.bytes, cut as u64);
                    if cut >= layout[5].1 {
                        let data = std::fs::read(dir.path().join("d/last")).unwrap();
                        assert_eq!(data, (0..1000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(), "cut at {cut}");
                    }
                }
                Err(err) => {
                    assert!(!complete, "a cut at {cut} was refused: {err}");
                    assert!(
                        matches!(err, ApplyError::Truncated { at, .. } if at == cut as u64),
                        "cut at {cut}: {err:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn names_where_the_stream_was_cut() {
        let full = layer_with_trailer();
        let (last_header, data_end) = (full.len() - 1024 - 1024 - 512, full.len() - 1024 - 24);
        let message = |cut: usize| apply_bytes(&full[..cut]).1.unwrap_err().to_string();
        assert_eq!(
            message(last_header + 100),
            format!("the layer's tar stream ends after {} bytes, inside an entry's header", last_header + 100)
        );
        assert_eq!(
            message(data_end - 1),
            format!(
                "the layer's tar stream ends after {} bytes, inside the data of \"d/last\" (1000 bytes)",
                data_end - 1
            )
        );
        assert!(message(full.len() - 700).contains("inside the end-of-archive blocks"));
        // The layer: the last file's data, then nothing.
        let (_, applied) = apply_bytes(&full[..data_end]);
        assert_eq!(applied.unwrap().diff_id, crisp_image_model::Digest::sha256_of(&full[..data_end]).as_str());
    }

    #[test]
    fn a_block_after_the_first_zero_block_must_be_zeros() {
        let mut bytes = layer_with_trailer();
        let second = bytes.len() - 512;
        bytes[second + 10] = 1;
        let (_, result) = apply_bytes(&bytes);
        assert!(matches!(result, Err(ApplyError::Invalid(_))), "{result:?}");
        // After both zero blocks, anything (read for the digest).
        let mut bytes = layer_with_trailer();
        bytes.extend_from_slice(b"trailing bytes");
        let (_, result) = apply_bytes(&bytes);
        assert_eq!(result.unwrap().diff_id, crisp_image_model::Digest::sha256_of(&bytes).as_str());
    }
}
