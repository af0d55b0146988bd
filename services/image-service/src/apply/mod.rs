//! Direct apply for the `overlayfs` snapshotter: each layer is decompressed and extracted on
//! its own blocking thread, in parallel with the others, into a staging directory on the
//! snapshotter's file system, its uncompressed digest checked against the config's diff id.
//! The bytes come from the download itself ([`Tee`]: the layer unpacks while it downloads,
//! through a bounded channel), or from the content store when the blob was there already
//! ([`StagingArea::extract`]). In chain order, each staged tree then replaces the empty upper
//! directory of the snapshot `snapshots.Prepare` made, and is committed (see
//! [`crate::unpack`]). The tree is what containerd's own applier makes of the layer
//! ([`layer`]), so the snapshots are the ones containerd would have.

mod fsops;
pub mod layer;
mod stream;

use bytes::{Buf, Bytes};
use containerd_client::services::v1::ReadContentRequest;
use crisp_containerd::{Containerd, ContainerdError, LeaseId, leased};
use futures::StreamExt;
use layer::{ImplicitDir, Whiteouts};
use rustix::fs::XattrFlags;
use rustix::io::Errno;
use std::io::{self, BufRead, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Semaphore, mpsc};
use tonic::Code;

/// Bytes read at once from a blob file in the content store.
const FILE_READ_BUFFER: usize = 256 << 10;

/// The snapshotter whose snapshots the direct apply fills.
pub const SNAPSHOTTER: &str = "overlayfs";
/// Under the snapshotter's root: where layers are extracted before they become snapshots.
const STAGING_DIR: &str = "crisp-staging";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the layer is not a readable tar stream")]
    Archive(#[source] io::Error),
    #[error("the layer archive is invalid: {0}")]
    Invalid(String),
    /// The stream stops where Go's tar reader (containerd's) finds it incomplete.
    #[error("the layer's tar stream ends after {at} bytes, inside {inside}")]
    Truncated { at: u64, inside: String },
    /// A failure extracting one layer, naming it.
    #[error("layer {layer}")]
    Layer {
        layer: String,
        #[source]
        source: Box<ApplyError>,
    },
    #[error("the snapshot's mounts are not the overlayfs snapshotter's: {0}")]
    Mounts(String),
    #[error("reading the layer from the content store")]
    Containerd(#[from] ContainerdError),
    #[error("the layer's extraction was cancelled")]
    Cancelled,
    #[error("the layer's extraction thread failed: {0}")]
    Thread(String),
}

impl ApplyError {
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> ApplyError {
        ApplyError::Io { op, path: path.to_path_buf(), source }
    }

    pub fn code(&self) -> Code {
        match self {
            ApplyError::Archive(_) | ApplyError::Invalid(_) | ApplyError::Truncated { .. } => Code::InvalidArgument,
            ApplyError::Layer { source, .. } => source.code(),
            ApplyError::Containerd(err) => crisp_errors::GrpcError::code(err),
            ApplyError::Cancelled => Code::Cancelled,
            ApplyError::Io { .. } | ApplyError::Mounts(_) | ApplyError::Thread(_) => Code::Internal,
        }
    }
}

/// How a layer's blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

/// How a layer's blob is compressed, when the direct apply can read it (the OCI and Docker
/// layer types: `tar`, `tar+gzip`, `tar.gzip`, `tar+zstd`).
fn compression(media_type: &str) -> Option<Compression> {
    if media_type.ends_with("gzip") {
        Some(Compression::Gzip)
    } else if media_type.ends_with("+zstd") {
        Some(Compression::Zstd)
    } else if media_type.ends_with(".tar") {
        Some(Compression::None)
    } else {
        None
    }
}

/// The staging directory and the bound on parallel extractions.
#[derive(Clone)]
pub struct StagingArea {
    dir: PathBuf,
    /// The content store's root, when its blobs can be read from here.
    content_root: Option<PathBuf>,
    /// The containerd namespace pulls write in (its ingests are found by it).
    namespace: String,
    limit: Arc<Semaphore>,
}

impl StagingArea {
    /// The staging area under the overlayfs snapshotter's root (as containerd's introspection
    /// service exports it), or `None` (with why) when it cannot be used from here.
    pub async fn discover(containerd: &Containerd) -> Result<StagingArea, String> {
        let root = containerd
            .plugin_root("io.containerd.snapshotter.v1", SNAPSHOTTER)
            .await
            .map_err(|e| crisp_errors::message_chain(&e))?;
        if root.is_empty() {
            return Err("containerd exports no root for the overlayfs snapshotter".into());
        }
        let root = PathBuf::from(root);
        if !root.join("snapshots").is_dir() {
            return Err(format!("{} is not visible from here", root.join("snapshots").display()));
        }
        let dir = root.join(STAGING_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        // Trees a killed run left behind (another replica's current ones are younger).
        let stale_dir = dir.clone();
        tokio::task::spawn_blocking(move || remove_stale(&stale_dir));
        let content_root = containerd
            .plugin_root("io.containerd.content.v1", "content")
            .await
            .ok()
            .map(PathBuf::from)
            .filter(|root| root.join("blobs").is_dir());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let namespace = containerd.namespace().to_string();
        Ok(StagingArea { dir, content_root, namespace, limit: Arc::new(Semaphore::new(cores)) })
    }

    /// The data file of this namespace's content ingest `reference` (a partial download), when
    /// the content store is visible from here. containerd's local store keeps each ingest in a
    /// directory of `ingest/` holding `ref` (the metadata store's key for it,
    /// `<namespace>/<sequence>/<reference>`) and `data`.
    pub async fn open_ingest(&self, reference: &str) -> Option<tokio::fs::File> {
        let dir = self.content_root.as_ref()?.join("ingest");
        let (prefix, suffix) = (format!("{}/", self.namespace), format!("/{reference}"));
        let data = tokio::task::spawn_blocking(move || {
            std::fs::read_dir(&dir).ok()?.flatten().find_map(|entry| {
                let key = std::fs::read_to_string(entry.path().join("ref")).ok()?;
                let sequence = key.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
                (!sequence.is_empty() && sequence.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| entry.path().join("data"))
            })
        })
        .await
        .ok()??;
        tokio::fs::File::open(data).await.ok()
    }

    /// Extracts the layer `digest` (in the content store) for the snapshot `chain_id`;
    /// `first` says it has no parent. `None` when its media type is not one the direct apply
    /// reads (the diff service applies it then).
    #[allow(clippy::too_many_arguments)]
    pub async fn extract(
        &self,
        containerd: &Containerd,
        lease: &LeaseId,
        media_type: &str,
        digest: &str,
        diff_id: &str,
        chain_id: &str,
        first: bool,
    ) -> Result<Option<Staged>, crate::unpack::UnpackError> {
        let Some(compression) = compression(media_type) else { return Ok(None) };
        let _permit = self.limit.acquire().await.map_err(|_| ApplyError::Thread("semaphore closed".into()))?;
        let started = std::time::Instant::now();

        // The blob: read straight from the content store's file when it is visible from here
        // (what containerd's own applier reads), else streamed through the content service.
        let blob_file = self.content_root.as_ref().and_then(|root| {
            let (algorithm, hex) = digest.split_once(':')?;
            std::fs::File::open(root.join("blobs").join(algorithm).join(hex)).ok()
        });
        let (source, _abort_reader): (Box<dyn BufRead + Send>, Option<AbortOnDrop>) = match blob_file {
            Some(file) => (Box::new(io::BufReader::with_capacity(FILE_READ_BUFFER, file)), None),
            None => {
                let (tx, rx) = mpsc::channel::<Result<Bytes, tonic::Status>>(8);
                let request = leased(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 }, lease);
                let mut stream = containerd
                    .content()
                    .read(request)
                    .await
                    .map_err(|s| ApplyError::Containerd(ContainerdError::call("reading content", s)))?
                    .into_inner();
                let reader_task = tokio::spawn(async move {
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk.map(|c| Bytes::from(c.data));
                        let failed = chunk.is_err();
                        if tx.send(chunk).await.is_err() || failed {
                            break;
                        }
                    }
                });
                (Box::new(ChannelReader::new(Receiver::Bounded(rx), None)), Some(AbortOnDrop(reader_task)))
            }
        };

        let (staged, applied) = self.spawn(compression, source, chain_id, first)?.finish(digest).await?;
        tracing::debug!(elapsed = ?started.elapsed(), bytes = applied.bytes, "layer decompressed and extracted");
        check_diff_id(staged, applied, digest, diff_id).map(Some)
    }

    /// Starts extracting the layer `digest` from the bytes the caller [`Tee::feed`]s while it
    /// downloads them (every byte of the blob, from its first). `None` when its media type is
    /// not one the direct apply reads. Back-pressure: `feed` waits while the extractor has
    /// [`TEE_BYTES`] not read yet. Not counted against the bound on extractions from the
    /// content store: the bound on downloads bounds these.
    pub fn tee(&self, media_type: &str, chain_id: &str, first: bool) -> Result<Option<Tee>, ApplyError> {
        let Some(compression) = compression(media_type) else { return Ok(None) };
        // Unbounded in chunks, bounded in bytes by `room`.
        let (tx, rx) = mpsc::unbounded_channel::<Result<Bytes, tonic::Status>>();
        let room = Arc::new(Semaphore::new(TEE_BYTES));
        let reader = ChannelReader::new(Receiver::Unbounded(rx), Some(room.clone()));
        let extraction = self.spawn(compression, Box::new(reader), chain_id, first)?;
        Ok(Some(Tee { tx: Some(tx), room, extraction, started: std::time::Instant::now() }))
    }

    /// Extracts `source` into a new staging directory on a blocking thread.
    fn spawn(
        &self,
        compression: Compression,
        source: Box<dyn BufRead + Send>,
        chain_id: &str,
        first: bool,
    ) -> Result<Extraction, ApplyError> {
        // A random suffix, so that two pulls of one layer never share a staging directory.
        let staging = tempfile::Builder::new()
            .prefix(&format!("{}-", chain_id.trim_start_matches("sha256:")))
            .rand_bytes(8)
            .tempdir_in(&self.dir)
            .map_err(|e| ApplyError::io("mkdir", &self.dir, e))?;
        // From here on the thread below (and then `Staged`) removes the directory.
        let root = staging.keep();
        let whiteouts = if first { Whiteouts::Remove } else { Whiteouts::Overlay };
        // Dropping the extraction stops the thread at its next entry; the thread removes what
        // it made unless it hands it over as a `Staged` (which removes it when dropped).
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = CancelOnDrop(cancel.clone());
        let thread = tokio::task::spawn_blocking(move || {
            // Inflated straight from the source's buffers (the download's chunks, or the file's).
            let result = match compression {
                Compression::Gzip => {
                    layer::apply(flate2::bufread::MultiGzDecoder::new(source), &root, whiteouts, &cancel)
                }
                // Every frame of the stream, as containerd's decompressor reads them.
                Compression::Zstd => zstd::stream::read::Decoder::with_buffer(source)
                    .map_err(|e| ApplyError::io("starting the zstd decoder for", &root, e))
                    .and_then(|decoder| layer::apply(decoder, &root, whiteouts, &cancel)),
                Compression::None => layer::apply(source, &root, whiteouts, &cancel),
            };
            match result {
                Ok(applied) => Ok((Staged { root: Some(root), whiteouts, implicit_dirs: Vec::new() }, applied)),
                Err(err) => {
                    remove_tree(&root);
                    Err(err)
                }
            }
        });
        Ok(Extraction { thread, _stop: stop })
    }
}

/// Bytes of a download queued for its extractor (reqwest's chunks, a few KiB to a few hundred
/// each, as they came): enough to keep it busy, little beside several layers downloading.
pub const TEE_BYTES: usize = 1 << 20;

/// An extraction running on its blocking thread; dropped, it is stopped and its tree removed.
struct Extraction {
    thread: tokio::task::JoinHandle<Result<(Staged, layer::Applied), ApplyError>>,
    _stop: CancelOnDrop,
}

impl Extraction {
    async fn finish(self, digest: &str) -> Result<(Staged, layer::Applied), ApplyError> {
        let result = self.thread.await.map_err(|e| ApplyError::Thread(e.to_string()))?;
        result.map_err(|e| ApplyError::Layer { layer: digest.to_string(), source: Box::new(e) })
    }
}

/// The staged tree, if the applied stream's digest is the config's diff id.
fn check_diff_id(
    mut staged: Staged,
    applied: layer::Applied,
    digest: &str,
    diff_id: &str,
) -> Result<Staged, crate::unpack::UnpackError> {
    if applied.diff_id != diff_id {
        return Err(crate::unpack::UnpackError::DiffIdMismatch {
            layer: digest.to_string(),
            applied: applied.diff_id,
            expected: diff_id.to_string(),
        });
    }
    staged.implicit_dirs = applied.implicit_dirs;
    Ok(staged)
}

/// A layer extracting while it downloads: the download hands it every byte in order, then
/// [`Tee::finish`]es it. Dropped before that (a failed or cancelled download), the extraction
/// stops and its staged tree is removed.
pub struct Tee {
    tx: Option<mpsc::UnboundedSender<Result<Bytes, tonic::Status>>>,
    /// Bytes the extractor may still be handed before it reads some.
    room: Arc<Semaphore>,
    extraction: Extraction,
    started: std::time::Instant,
}

impl Tee {
    /// Hands the extractor the blob's next bytes, waiting while it is behind. `false` once it
    /// stopped reading (it failed, or the archive ended): [`Tee::finish`] tells which.
    pub async fn feed(&mut self, bytes: Bytes) -> bool {
        let Some(tx) = &self.tx else { return false };
        // A chunk larger than the whole room takes all of it.
        let want = bytes.len().min(TEE_BYTES) as u32;
        // The reader closes `room` when it stops.
        let Ok(permit) = self.room.acquire_many(want).await else {
            self.tx = None;
            return false;
        };
        permit.forget();
        if tx.send(Ok(bytes)).is_err() {
            self.tx = None;
            return false;
        }
        true
    }

    /// The blob is whole (its digest checked by the caller): waits for the extractor to read
    /// the end and answers the staged tree if its diff id is `diff_id`.
    pub async fn finish(mut self, digest: &str, diff_id: &str) -> Result<Staged, crate::unpack::UnpackError> {
        self.tx = None;
        let (staged, applied) = self.extraction.finish(digest).await?;
        tracing::debug!(elapsed = ?self.started.elapsed(), bytes = applied.bytes, "layer extracted while it downloaded");
        check_diff_id(staged, applied, digest, diff_id)
    }
}

/// Staged trees untouched for this long are a killed run's.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if old {
            tracing::info!(path = %entry.path().display(), "removing a staged layer a killed pull left");
            remove_tree(&entry.path());
        }
    }
}

/// The chunks of a blob (from the content service, or teed from its download) as a `BufRead`
/// for the extractor's blocking thread: the decompressor reads them where they are.
struct ChannelReader {
    rx: Receiver,
    chunk: Bytes,
    /// Of the room the current chunk took, what is not given back yet.
    held: usize,
    /// The tee's room: each chunk's bytes are given back once read; closed when the reader is
    /// dropped, so that a download feeding an extractor that stopped does not wait.
    room: Option<Arc<Semaphore>>,
}

enum Receiver {
    Bounded(mpsc::Receiver<Result<Bytes, tonic::Status>>),
    Unbounded(mpsc::UnboundedReceiver<Result<Bytes, tonic::Status>>),
}

impl ChannelReader {
    fn new(rx: Receiver, room: Option<Arc<Semaphore>>) -> ChannelReader {
        ChannelReader { rx, chunk: Bytes::new(), held: 0, room }
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        if let Some(room) = &self.room {
            room.close();
        }
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.chunk.is_empty() {
            let next = match &mut self.rx {
                Receiver::Bounded(rx) => rx.blocking_recv(),
                Receiver::Unbounded(rx) => rx.blocking_recv(),
            };
            match next {
                Some(Ok(chunk)) => {
                    // What `Tee::feed` took for it.
                    self.held = chunk.len().min(TEE_BYTES);
                    self.chunk = chunk;
                }
                Some(Err(status)) => return Err(io::Error::other(format!("reading content: {}", status.message()))),
                None => return Ok(&[]),
            }
        }
        Ok(&self.chunk)
    }

    fn consume(&mut self, amount: usize) {
        let amount = amount.min(self.chunk.len());
        self.chunk.advance(amount);
        // Room given back as the bytes are read (the chunk's buffer goes once all of it is).
        let freed = if self.chunk.is_empty() { self.held } else { amount.min(self.held) };
        self.held -= freed;
        if let Some(room) = &self.room
            && freed > 0
        {
            room.add_permits(freed);
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// A layer extracted into the staging area, its diff id checked. Dropped without being
/// installed, it is removed.
pub struct Staged {
    root: Option<PathBuf>,
    whiteouts: Whiteouts,
    implicit_dirs: Vec<ImplicitDir>,
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn remove_tree(root: &Path) {
    if let Err(e) = std::fs::remove_dir_all(root)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %root.display(), error = %e, "removing a staged layer");
    }
}

impl Staged {
    /// Moves the tree into the active snapshot whose `mounts` `snapshots.Prepare` answered:
    /// it replaces the snapshot's empty upper directory (rename(2), same file system).
    pub fn install(mut self, mounts: &[containerd_client::types::Mount]) -> Result<(), ApplyError> {
        let Some(root) = self.root.clone() else { return Err(ApplyError::Thread("already installed".into())) };
        let (upper, lowers, whiteouts) = match mounts {
            [m] if m.r#type == "bind" => (PathBuf::from(&m.source), Vec::new(), Whiteouts::Remove),
            [m] if m.r#type == "overlay" => {
                let option = |key: &str| m.options.iter().find_map(|o| o.strip_prefix(key).map(str::to_string));
                let upper = option("upperdir=").ok_or_else(|| ApplyError::Mounts("no upperdir".into()))?;
                let lowers = option("lowerdir=").map(|l| l.split(':').map(PathBuf::from).collect()).unwrap_or_default();
                (PathBuf::from(upper), lowers, Whiteouts::Overlay)
            }
            other => {
                let kinds: Vec<_> = other.iter().map(|m| m.r#type.as_str()).collect();
                return Err(ApplyError::Mounts(format!("{kinds:?}")));
            }
        };
        if whiteouts != self.whiteouts {
            return Err(ApplyError::Mounts(format!("a {:?} layer got mounts for {whiteouts:?}", self.whiteouts)));
        }
        let upper_meta = std::fs::symlink_metadata(&upper).map_err(|e| ApplyError::io("lstat", &upper, e))?;
        if !upper_meta.is_dir() {
            return Err(ApplyError::Mounts(format!("{} is not a directory", upper.display())));
        }
        // Directories the layer did not name but needed: as containerd's applier makes them,
        // from the nearest lower layer that has them.
        for dir in &self.implicit_dirs {
            let staged = fsops::join(&root, &dir.path);
            for lower in &lowers {
                let Ok(lower_path) = fsops::resolve(lower, dir.path.clone()).map(|p| fsops::join(lower, &p)) else {
                    break;
                };
                match std::fs::symlink_metadata(&lower_path) {
                    Ok(meta) if meta.is_dir() => {
                        if !dir.explicit {
                            fsops::lchown(&staged, meta.uid(), meta.gid())?;
                            fsops::chmod(&staged, meta.mode())?;
                        }
                        copy_up_xattrs(&lower_path, &staged)?;
                        break;
                    }
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ApplyError::io("lstat", &lower_path, e)),
                }
            }
        }
        // The root is the snapshot's own directory: its owner and mode stay the snapshotter's.
        fsops::lchown(&root, upper_meta.uid(), upper_meta.gid())?;
        fsops::chmod(&root, upper_meta.mode())?;
        std::fs::rename(&root, &upper).map_err(|e| ApplyError::io("renaming the staged layer onto", &upper, e))?;
        self.root = None;
        Ok(())
    }
}

/// containerd's `copyUpXAttrs`: every xattr but `trusted.*`, not replacing one already set.
fn copy_up_xattrs(src: &Path, dst: &Path) -> Result<(), ApplyError> {
    let names = match fsops::llistxattr(src) {
        Ok(names) => names,
        Err(Errno::NOTSUP | Errno::NODATA) => return Ok(()),
        Err(e) => return Err(ApplyError::io("listing xattrs of", src, e.into())),
    };
    for name in names {
        if name.starts_with(b"trusted.") {
            continue;
        }
        let value = match fsops::lgetxattr(src, &name) {
            Ok(value) => value,
            Err(Errno::NOTSUP | Errno::NODATA) => continue,
            Err(e) => return Err(ApplyError::io("reading an xattr of", src, e.into())),
        };
        if let Err(e) = fsops::lsetxattr(dst, &name, &value, XattrFlags::CREATE)?
            && !matches!(e, Errno::NOTSUP | Errno::EXIST)
        {
            return Err(ApplyError::io("setting an xattr on", dst, e.into()));
        }
    }
    Ok(())
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(root) = self.root.take() {
            // Off the async threads: a layer's tree can be large.
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || remove_tree(&root));
                }
                Err(_) => remove_tree(&root),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::types::Mount;
    use std::sync::atomic::AtomicBool;

    fn tar_of(entries: &[(&str, tar::EntryType, u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_000_000);
            h.set_size(0);
            builder.append_data(&mut h, path, std::io::empty()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn staged(dir: &Path, tar: &[u8], whiteouts: Whiteouts) -> Staged {
        let root = dir.join("staged");
        std::fs::create_dir(&root).unwrap();
        let applied = layer::apply(tar, &root, whiteouts, &AtomicBool::new(false)).unwrap();
        Staged { root: Some(root), whiteouts, implicit_dirs: applied.implicit_dirs }
    }

    #[test]
    fn installs_over_the_upper_dir_with_parents_like_the_lower_layer() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        std::fs::create_dir_all(lower.join("srv")).unwrap();
        std::fs::set_permissions(lower.join("srv"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(lower.join("srv"), Some(1000), Some(1000)).unwrap();
        let user_xattrs = fsops::lsetxattr(&lower.join("srv"), b"user.srv", b"1", XattrFlags::empty()).unwrap().is_ok();
        let upper = dir.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755)).unwrap();

        let tar = tar_of(&[("srv/added", tar::EntryType::Regular, 0o644)]);
        let staged = staged(dir.path(), &tar, Whiteouts::Overlay);
        let mount = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                format!("workdir={}", dir.path().join("work").display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}", lower.display()),
            ],
        };
        staged.install(&[mount]).unwrap();
        assert!(!dir.path().join("staged").exists());
        assert!(upper.join("srv/added").is_file());
        let srv = std::fs::symlink_metadata(upper.join("srv")).unwrap();
        assert_eq!(srv.mode() & 0o7777, 0o700);
        assert_eq!((srv.uid(), srv.gid()), (1000, 1000));
        assert_eq!(std::fs::symlink_metadata(&upper).unwrap().mode() & 0o7777, 0o755);
        if user_xattrs {
            assert_eq!(fsops::lgetxattr(&upper.join("srv"), b"user.srv").unwrap(), b"1");
        }
    }

    #[test]
    fn refuses_mounts_of_the_wrong_kind_and_removes_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&[("a", tar::EntryType::Regular, 0o644)]);
        let staged = staged(dir.path(), &tar, Whiteouts::Overlay);
        let bind = Mount {
            r#type: "bind".into(),
            source: dir.path().join("fs").display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), "rw".into()],
        };
        assert!(matches!(staged.install(&[bind]), Err(ApplyError::Mounts(_))));
        // Dropped: removed (no runtime here, so at once).
        assert!(!dir.path().join("staged").exists());
    }

    #[test]
    fn the_tees_room_comes_back_as_the_extractor_reads_and_closes_when_it_stops() {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(TEE_BYTES));
        let mut reader = ChannelReader::new(Receiver::Unbounded(rx), Some(room.clone()));
        // As `Tee::feed` hands over a chunk of 3 bytes, then one larger than the whole room.
        room.try_acquire_many(3).unwrap().forget();
        tx.send(Ok(Bytes::from_static(b"abc"))).unwrap();
        let mut two = [0u8; 2];
        reader.read_exact(&mut two).unwrap();
        assert_eq!(room.available_permits(), TEE_BYTES - 1);
        reader.read_exact(&mut two[..1]).unwrap();
        assert_eq!(room.available_permits(), TEE_BYTES);
        room.try_acquire_many(TEE_BYTES as u32).unwrap().forget();
        tx.send(Ok(Bytes::from(vec![7u8; 2 * TEE_BYTES]))).unwrap();
        let mut half = vec![0u8; TEE_BYTES];
        reader.read_exact(&mut half).unwrap();
        assert_eq!(room.available_permits(), TEE_BYTES);
        reader.read_exact(&mut half).unwrap();
        assert_eq!(room.available_permits(), TEE_BYTES);
        drop(tx);
        assert_eq!(reader.read(&mut half).unwrap(), 0);
        // An extractor that stopped lets a download waiting for room go on.
        drop(reader);
        assert!(matches!(room.try_acquire(), Err(tokio::sync::TryAcquireError::Closed)));
    }

    #[test]
    fn the_channel_reader_reads_every_chunk() {
        let (tx, rx) = mpsc::channel(4);
        std::thread::spawn(move || {
            for chunk in [Bytes::from_static(b"ab"), Bytes::new(), Bytes::from_static(b"cde")] {
                tx.blocking_send(Ok(chunk)).unwrap();
            }
        });
        let mut out = Vec::new();
        ChannelReader::new(Receiver::Bounded(rx), None).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcde");
    }
}
