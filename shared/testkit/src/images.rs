//! Container images built from scratch for tests: root filesystems from Debian's
//! busybox-static (`/bin/busybox`), gzipped (or zstd) tar layers, OCI or Docker manifests and configs,
//! image indexes over several platforms. Push them with [`crate::registry::Registry`].

use anyhow::Context;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;

/// The static busybox (Debian package `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Content-addressed bytes with their media type.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub data: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob { media_type: media_type.to_string(), digest: sha256(&data), data }
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.data.len()})
    }
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A built image: its layers (gzipped), config and manifest.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub layers: Vec<Blob>,
    /// The uncompressed digests of the layers, in order.
    pub diff_ids: Vec<String>,
    pub config: Blob,
    pub manifest: Blob,
    pub architecture: String,
    pub variant: Option<String>,
}

impl BuiltImage {
    /// The image id a CRI runtime reports: the config digest.
    pub fn id(&self) -> String {
        self.config.digest.clone()
    }

    /// Manifest, config and layers, compressed: what a runtime reports as the image size.
    pub fn size(&self) -> u64 {
        (self.manifest.data.len() + self.config.data.len() + self.layers.iter().map(|l| l.data.len()).sum::<usize>())
            as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

/// One file in a layer.
#[derive(Debug, Clone)]
pub enum Entry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// Any kind of entry, with its mode, owner, time and xattrs.
    Node(Node),
    /// The whiteout `<dir>/.wh.<name>` deleting `path` from the layers below.
    Whiteout {
        path: String,
    },
    /// The opaque marker `<dir>/.wh..wh..opq`: `dir` hides what the layers below hold in it.
    Opaque {
        dir: String,
    },
}

/// An entry with every attribute a layer can carry.
#[derive(Debug, Clone)]
pub struct Node {
    pub path: String,
    pub kind: NodeKind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Written as PAX `SCHILY.xattr.<name>` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    /// A hard link to an earlier entry of the same layer.
    HardLink(String),
    Fifo,
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
}

impl Node {
    /// A `kind` entry at `path`, owned by root, mode 0644 (0755 for a directory).
    pub fn new(path: &str, kind: NodeKind) -> Node {
        let mode = if matches!(kind, NodeKind::Dir) { 0o755 } else { 0o644 };
        Node { path: path.to_string(), kind, mode, uid: 0, gid: 0, mtime: 1_704_067_200, xattrs: vec![] }
    }

    pub fn mode(mut self, mode: u32) -> Node {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Node {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: u64) -> Node {
        self.mtime = mtime;
        self
    }

    pub fn xattr(mut self, name: &str, value: &[u8]) -> Node {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }

    pub fn entry(self) -> Entry {
        Entry::Node(self)
    }
}

/// Where a layer's tar stream is cut short ([`ImageBuilder::cut_layer`]); the layer's diff id
/// is the digest of the bytes that are left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarCut {
    /// Right after the last entry's data: no padding to 512 bytes, no end-of-archive blocks
    /// (as `umoci insert` writes layers). containerd (Go's archive/tar) takes it as complete.
    AfterLastData,
    /// 100 bytes into the last entry's header.
    InsideLastHeader,
    /// Halfway through the last entry's data.
    InsideLastData,
}

/// Builds an image layer by layer.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    format: Format,
    layers: Vec<Vec<Entry>>,
    /// Layers (by index) whose tar stream is cut.
    cuts: Vec<(usize, TarCut)>,
    user: Option<String>,
    architecture: String,
    variant: Option<String>,
    cmd: Vec<String>,
    level: u32,
    /// Layers compressed with zstd (`tar+zstd`) instead of gzip.
    zstd: bool,
}

/// This machine's architecture in OCI terms.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl ImageBuilder {
    pub fn new(format: Format) -> ImageBuilder {
        ImageBuilder {
            format,
            layers: vec![],
            cuts: vec![],
            user: None,
            architecture: host_architecture().to_string(),
            variant: None,
            cmd: vec!["/bin/sh".into()],
            level: 6,
            zstd: false,
        }
    }

    /// A layer with busybox as `/bin/busybox`, `/bin/sh` and a few applets linked to it, and
    /// `/etc/passwd` and `/etc/group` naming root, nobody and `app` (1000).
    pub fn busybox_layer(self) -> anyhow::Result<ImageBuilder> {
        let busybox =
            std::fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX} (apt-get install busybox-static)"))?;
        let mut entries = vec![
            Entry::Dir { path: "bin".into() },
            Entry::Dir { path: "etc".into() },
            Entry::Dir { path: "tmp".into() },
            Entry::File { path: "bin/busybox".into(), data: busybox, mode: 0o755 },
        ];
        for applet in ["sh", "ls", "cat", "echo", "sleep", "id", "true"] {
            entries.push(Entry::Symlink { path: format!("bin/{applet}"), target: "busybox".into() });
        }
        entries.push(Entry::File {
            path: "etc/passwd".into(),
            data: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\napp:x:1000:1000:app:/tmp:/bin/sh\n".to_vec(),
            mode: 0o644,
        });
        entries.push(Entry::File {
            path: "etc/group".into(),
            data: b"root:x:0:\nnogroup:x:65534:\napp:x:1000:\n".to_vec(),
            mode: 0o644,
        });
        Ok(self.layer(entries))
    }

    /// A layer with these entries.
    pub fn layer(mut self, entries: Vec<Entry>) -> ImageBuilder {
        self.layers.push(entries);
        self
    }

    /// Cuts the tar stream of the layer added last as `cut` says.
    pub fn cut_layer(mut self, cut: TarCut) -> ImageBuilder {
        self.cuts.push((self.layers.len().saturating_sub(1), cut));
        self
    }

    /// A layer with one file `path` holding `text`.
    pub fn file_layer(self, path: &str, text: &str) -> ImageBuilder {
        self.layer(vec![Entry::File { path: path.into(), data: text.as_bytes().to_vec(), mode: 0o644 }])
    }

    /// A layer of `size` bytes of data, half random (incompressible), half repetitive text,
    /// in files of at most 4 MiB; `seed` makes it differ from other layers.
    pub fn data_layer(self, size: usize, seed: u64) -> ImageBuilder {
        let mut entries = vec![Entry::Dir { path: format!("data{seed}") }];
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut left = size;
        let mut n = 0;
        while left > 0 {
            let len = left.min(4 << 20);
            let mut data = Vec::with_capacity(len);
            if n % 2 == 0 {
                while data.len() < len {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    data.extend_from_slice(&rng.to_le_bytes());
                }
            } else {
                let mut line = 0u64;
                while data.len() < len {
                    data.extend_from_slice(
                        format!("line {line} of layer {seed}: the quick brown fox jumps over the lazy dog\n")
                            .as_bytes(),
                    );
                    line += 1;
                }
            }
            data.truncate(len);
            entries.push(Entry::File { path: format!("data{seed}/file{n}"), data, mode: 0o644 });
            left -= len;
            n += 1;
        }
        self.layer(entries)
    }

    /// A layer of real files, as image layers hold: the regular files under `/usr/lib`,
    /// `/usr/share` and `/usr/bin` in path order, from the first `skip` bytes' worth on, up to
    /// `size` bytes, kept under `sys/` with their directories. They compress like real layers
    /// do (shared libraries, executables, text), so inflating them costs what it costs in a
    /// real pull.
    pub fn system_files_layer(self, skip: usize, size: usize) -> anyhow::Result<ImageBuilder> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths {
                match std::fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => walk(&path, out),
                    Ok(meta) if meta.is_file() => out.push(path),
                    _ => {}
                }
            }
        }
        let mut files = Vec::new();
        for root in ["/usr/lib", "/usr/share", "/usr/bin"] {
            walk(std::path::Path::new(root), &mut files);
        }
        let mut entries = Vec::new();
        let mut dirs = std::collections::BTreeSet::new();
        let (mut seen, mut taken) = (0usize, 0usize);
        for file in files {
            if taken >= size {
                break;
            }
            let Ok(meta) = std::fs::metadata(&file) else { continue };
            let len = meta.len() as usize;
            seen += len;
            if seen <= skip || len == 0 || len > size - taken {
                continue;
            }
            let Ok(data) = std::fs::read(&file) else { continue };
            let path = format!("sys{}", file.display());
            let mut parent = std::path::Path::new(&path).parent();
            let mut missing = Vec::new();
            while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
                if dirs.insert(dir.display().to_string()) {
                    missing.push(dir.display().to_string());
                }
                parent = dir.parent();
            }
            entries.extend(missing.into_iter().rev().map(|path| Entry::Dir { path }));
            use std::os::unix::fs::PermissionsExt;
            entries.push(Entry::File { path, data, mode: meta.permissions().mode() & 0o7777 });
            taken += len;
        }
        if taken < size / 2 {
            anyhow::bail!("only {taken} bytes of system files found past {skip}; wanted {size}");
        }
        Ok(self.layer(entries))
    }

    /// The image's `User` (`1000`, `app`, `1000:1000`).
    pub fn user(mut self, user: &str) -> ImageBuilder {
        self.user = Some(user.to_string());
        self
    }

    pub fn platform(mut self, architecture: &str, variant: Option<&str>) -> ImageBuilder {
        self.architecture = architecture.to_string();
        self.variant = variant.map(str::to_string);
        self
    }

    pub fn cmd(mut self, cmd: &[&str]) -> ImageBuilder {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    /// gzip level of the layers (default 6).
    pub fn gzip_level(mut self, level: u32) -> ImageBuilder {
        self.level = level;
        self
    }

    /// Layers compressed with zstd (`application/vnd.oci.image.layer.v1.tar+zstd`, whatever
    /// the format), each as two frames (as a stream written in parts is): readers must read
    /// every frame.
    pub fn zstd(mut self) -> ImageBuilder {
        self.zstd = true;
        self
    }

    pub fn build(&self) -> anyhow::Result<BuiltImage> {
        let (layer_type, config_type, manifest_type) = match self.format {
            Format::Oci => (OCI_LAYER_GZIP, OCI_CONFIG, OCI_MANIFEST),
            Format::Docker => (DOCKER_LAYER_GZIP, DOCKER_CONFIG, DOCKER_MANIFEST),
        };
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, entries) in self.layers.iter().enumerate() {
            let mut tar = tar_of(entries)?;
            if let Some((_, cut)) = self.cuts.iter().find(|(layer, _)| *layer == i) {
                let at = cut_point(&tar, *cut)?;
                tar.truncate(at);
            }
            diff_ids.push(sha256(&tar));
            if self.zstd {
                let (first, second) = tar.split_at(tar.len() / 2);
                let mut data = zstd::encode_all(first, 3)?;
                data.extend(zstd::encode_all(second, 3)?);
                layers.push(Blob::new(OCI_LAYER_ZSTD, data));
                continue;
            }
            let mut gz = GzEncoder::new(Vec::new(), Compression::new(self.level));
            gz.write_all(&tar)?;
            layers.push(Blob::new(layer_type, gz.finish()?));
        }
        let mut config_section = json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": self.cmd,
            "WorkingDir": "/",
        });
        if let Some(user) = &self.user {
            config_section["User"] = json!(user);
        }
        let mut config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": self.architecture,
            "os": "linux",
            "config": config_section,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": self.layers.iter().map(|_| json!({"created_by": "crisp testkit"})).collect::<Vec<_>>(),
        });
        if let Some(variant) = &self.variant {
            config["variant"] = json!(variant);
        }
        let config = Blob::new(config_type, serde_json::to_vec(&config)?);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(manifest_type, serde_json::to_vec(&manifest)?);
        Ok(BuiltImage {
            layers,
            diff_ids,
            config,
            manifest,
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        })
    }
}

/// An index (OCI) or manifest list (Docker) over `images`, each under its platform.
pub fn index_of(images: &[&BuiltImage], format: Format) -> anyhow::Result<Blob> {
    let media_type = match format {
        Format::Oci => OCI_INDEX,
        Format::Docker => DOCKER_LIST,
    };
    let manifests: Vec<_> = images
        .iter()
        .map(|image| {
            let mut platform = json!({"architecture": image.architecture, "os": "linux"});
            if let Some(variant) = &image.variant {
                platform["variant"] = json!(variant);
            }
            let mut descriptor = image.manifest.descriptor();
            descriptor["platform"] = platform;
            descriptor
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
    Ok(Blob::new(media_type, serde_json::to_vec(&index)?))
}

/// Where `cut` cuts the tar stream `tar`.
fn cut_point(tar: &[u8], cut: TarCut) -> anyhow::Result<usize> {
    let mut archive = tar::Archive::new(tar);
    let last = archive.entries()?.last().context("cutting a layer with no entry")??;
    let (header, data, size) = (last.raw_header_position(), last.raw_file_position(), last.size());
    let at = match cut {
        TarCut::AfterLastData => data + size,
        TarCut::InsideLastHeader => header + 100,
        TarCut::InsideLastData => {
            anyhow::ensure!(size >= 2, "cutting inside the data of an entry of {size} bytes");
            data + size / 2
        }
    };
    Ok(at as usize)
}

fn tar_of(entries: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_704_067_200);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::File { path, data, mode } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Entry::Dir { path } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Entry::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
            Entry::Whiteout { path } => {
                let (dir, name) =
                    path.rsplit_once('/').map(|(d, n)| (format!("{d}/"), n)).unwrap_or((String::new(), path));
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(0);
                builder.append_data(&mut header, format!("{dir}.wh.{name}"), std::io::empty())?;
            }
            Entry::Opaque { dir } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(0);
                builder.append_data(&mut header, format!("{dir}/.wh..wh..opq"), std::io::empty())?;
            }
            Entry::Node(node) => append_node(&mut builder, node)?,
        }
    }
    Ok(builder.into_inner()?)
}

fn append_node(builder: &mut tar::Builder<Vec<u8>>, node: &Node) -> anyhow::Result<()> {
    if !node.xattrs.is_empty() {
        // A PAX extended header for the entry after it.
        let mut records = Vec::new();
        for (name, value) in &node.xattrs {
            let body_len = format!(" SCHILY.xattr.{name}=").len() + value.len() + 1;
            let mut len = body_len + 1;
            while format!("{len}").len() + body_len != len {
                len += 1;
            }
            records.extend_from_slice(format!("{len} SCHILY.xattr.{name}=").as_bytes());
            records.extend_from_slice(value);
            records.push(b'\n');
        }
        let mut pax = tar::Header::new_ustar();
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_path(format!("PaxHeaders/{}", node.path.trim_end_matches('/').rsplit('/').next().unwrap_or("x")))?;
        pax.set_mode(0o644);
        pax.set_size(records.len() as u64);
        pax.set_mtime(node.mtime);
        pax.set_cksum();
        builder.append(&pax, records.as_slice())?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_mtime(node.mtime);
    header.set_uid(node.uid);
    header.set_gid(node.gid);
    header.set_mode(node.mode);
    header.set_size(0);
    match &node.kind {
        NodeKind::File(data) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, &node.path, data.as_slice())?;
        }
        NodeKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            builder.append_data(&mut header, format!("{}/", node.path.trim_end_matches('/')), std::io::empty())?;
        }
        NodeKind::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            builder.append_link(&mut header, &node.path, target)?;
        }
        NodeKind::HardLink(target) => {
            header.set_entry_type(tar::EntryType::Link);
            builder.append_link(&mut header, &node.path, target)?;
        }
        NodeKind::Fifo | NodeKind::CharDevice(..) | NodeKind::BlockDevice(..) => {
            let (kind, major, minor) = match node.kind {
                NodeKind::CharDevice(major, minor) => (tar::EntryType::Char, major, minor),
                NodeKind::BlockDevice(major, minor) => (tar::EntryType::Block, major, minor),
                _ => (tar::EntryType::Fifo, 0, 0),
            };
            header.set_entry_type(kind);
            header.set_device_major(major)?;
            header.set_device_minor(minor)?;
            builder.append_data(&mut header, &node.path, std::io::empty())?;
        }
    }
    Ok(())
}
