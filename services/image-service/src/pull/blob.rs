//! Getting one blob into containerd's content store: skipped when present, otherwise streamed
//! from the registry into an ingest (resuming what an earlier try left) and committed with its
//! expected digest and size, so containerd keeps it only if every byte matches.
//!
//! A layer can be teed ([`ensure_layer`]): each byte from the registry goes to the ingest and
//! to the layer's extractor at once (the extractor reading back first what a killed earlier try
//! left in the ingest). The blob's digest (hashed here) and its diff id (hashed by the
//! extractor) are both checked before the ingest is committed; on a mismatch the ingest is
//! aborted and the staged tree removed.

use super::progress::Progress;
use crate::apply::{Staged, StagingArea, Tee};
use crate::error::PullError;
use crate::registry::{Registry, RegistryError};
use crate::unpack::UnpackError;
use crisp_containerd::{Containerd, Held, Ingest, Lease, Opened};
use crisp_image_model::Digest;
use crisp_image_model::oci::Descriptor;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::time::Duration;
use tracing::Instrument;

/// A blob to store: its digest and size, as its descriptor gives them.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub digest: Digest,
    pub size: i64,
}

impl Wanted {
    pub fn of(descriptor: &Descriptor) -> Wanted {
        Wanted { digest: Digest::from(descriptor.digest()), size: i64::try_from(descriptor.size()).unwrap_or(i64::MAX) }
    }
}

/// How many times one try resumes a blob whose download was cut off (each time after some
/// bytes got through).
const MAX_RESUMES: u32 = 5;

/// Bytes sent to containerd per write (at most four writes of a blob are unanswered at a time,
/// and several layers download at once: what they hold is what this bounds).
const WRITE_CHUNK: usize = 512 << 10;

/// The blob's kind, as containerd names ingests (`layer-sha256:...`).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Index,
    Manifest,
    Config,
    Layer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Index => "index",
            Kind::Manifest => "manifest",
            Kind::Config => "config",
            Kind::Layer => "layer",
        }
    }
}

/// Where a blob's bytes come from.
pub enum Source<'a> {
    /// Already in memory (a manifest read to resolve the reference); checked here too.
    Bytes(&'a [u8]),
    Registry(&'a Registry),
}

/// How to extract a layer while it downloads.
pub struct Unpacking<'a> {
    pub area: &'a StagingArea,
    pub media_type: &'a str,
    pub diff_id: &'a str,
    pub chain_id: &'a str,
    /// The layer has no parent.
    pub first: bool,
}

/// Makes sure the blob `desc` is in the content store with `labels`.
pub async fn ensure(
    containerd: &Containerd,
    lease: &Lease,
    kind: Kind,
    desc: &Wanted,
    source: Source<'_>,
    labels: HashMap<String, String>,
    progress: &Progress,
) -> Result<(), PullError> {
    ensure_teed(containerd, lease, kind, desc, source, labels, progress, None).await.map(drop)
}

/// Makes sure the layer `desc` is in the content store with `labels`; when this call downloads
/// it and `unpacking` says how, extracts it on the way, and answers the staged tree (its diff
/// id checked). `None` when the layer was there already (or another pull wrote it): the caller
/// extracts it from the content store.
pub async fn ensure_layer(
    containerd: &Containerd,
    lease: &Lease,
    desc: &Wanted,
    registry: &Registry,
    labels: HashMap<String, String>,
    progress: &Progress,
    unpacking: Option<Unpacking<'_>>,
) -> Result<Option<Staged>, PullError> {
    ensure_teed(containerd, lease, Kind::Layer, desc, Source::Registry(registry), labels, progress, unpacking).await
}

#[allow(clippy::too_many_arguments)]
async fn ensure_teed(
    containerd: &Containerd,
    lease: &Lease,
    kind: Kind,
    desc: &Wanted,
    source: Source<'_>,
    labels: HashMap<String, String>,
    progress: &Progress,
    unpacking: Option<Unpacking<'_>>,
) -> Result<Option<Staged>, PullError> {
    let span = tracing::info_span!("blob", kind = kind.name(), digest = %desc.digest, size = desc.size);
    async {
        if let Source::Bytes(bytes) = &source {
            check_in_memory(kind, desc, bytes)?;
        }
        let reference = format!("{}-{}", kind.name(), desc.digest);
        let mut waited_offset = None;
        loop {
            // Present: held in the pull's lease, then looked for again. A garbage collection
            // started by another client in between either removed it (it is fetched) or, once
            // the lease holds it, keeps it. (A blob that is not there costs no lease write.)
            if containerd.content_info(desc.digest.as_str()).await?.is_some() {
                lease.hold(Held::Content(desc.digest.as_str())).await?;
                let Some(info) = containerd.content_info(desc.digest.as_str()).await? else {
                    tracing::debug!("collected before the pull held it: fetching it");
                    continue;
                };
                // Its source repositories kept, this one added.
                let update = super::source::missing(&info.labels, &labels);
                containerd.set_content_labels(Some(lease.id()), desc.digest.as_str(), update).await?;
                progress.step();
                tracing::debug!("already in the content store");
                return Ok(None);
            }
            match Ingest::open(containerd, lease.id(), &reference, desc.size, desc.digest.as_str()).await? {
                Opened::Exists => continue,
                Opened::Locked => {
                    // Another pull writes it: wait, counting its progress as ours.
                    let offset = containerd.ingest_offset(&reference).await;
                    if let (Some(now), Some(before)) = (offset, waited_offset)
                        && now > before
                    {
                        progress.add_bytes((now - before) as u64);
                    }
                    waited_offset = offset.or(waited_offset);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Opened::Ingest(ingest) => {
                    let started = std::time::Instant::now();
                    let result =
                        write(ingest, &reference, kind, desc, &source, labels.clone(), progress, unpacking.as_ref())
                            .await;
                    match result {
                        Ok(staged) => {
                            progress.step();
                            tracing::debug!(elapsed = ?started.elapsed(), "stored");
                            return Ok(staged);
                        }
                        // Bytes that are not the blob, or not the layer the config describes:
                        // nothing of them is kept.
                        Err(err @ (PullError::DigestMismatch { .. } | PullError::Unpack(_))) => {
                            containerd.abort_ingest(&reference).await;
                            return Err(err);
                        }
                        Err(err) => return Err(err),
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

fn check_in_memory(kind: Kind, desc: &Wanted, bytes: &[u8]) -> Result<(), PullError> {
    let digest = Digest::sha256_of(bytes);
    if digest != desc.digest || bytes.len() as i64 != desc.size {
        return Err(PullError::DigestMismatch {
            what: kind.name(),
            digest: desc.digest.to_string(),
            detail: format!("{} bytes with digest {digest}", bytes.len()),
        });
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn write(
    mut ingest: Box<Ingest>,
    reference: &str,
    kind: Kind,
    desc: &Wanted,
    source: &Source<'_>,
    labels: HashMap<String, String>,
    progress: &Progress,
    unpacking: Option<&Unpacking<'_>>,
) -> Result<Option<Staged>, PullError> {
    let mut teed = None;
    match source {
        Source::Bytes(bytes) => {
            if ingest.offset != 0 {
                ingest.restart().await?;
            }
            ingest.write(bytes.to_vec()).await?;
            progress.add_bytes(bytes.len() as u64);
        }
        Source::Registry(registry) => {
            if ingest.offset > desc.size {
                ingest.restart().await?;
            }
            let mut tee = match unpacking {
                Some(u) => u.area.tee(u.media_type, u.chain_id, u.first).map_err(UnpackError::from)?.map(|tee| {
                    let hasher = Sha256::new();
                    Teed { tee, hasher, unpacking: u }
                }),
                None => None,
            };
            // What an earlier try left: read back for the extractor when the ingest's file is
            // visible from here, else downloaded again.
            let mut partial = None;
            if ingest.offset > 0
                && let Some(tee) = &tee
            {
                match tee.unpacking.area.open_ingest(reference).await {
                    Some(file) => partial = Some(file),
                    None => {
                        tracing::info!(
                            offset = ingest.offset,
                            "a partial download the extractor cannot read: restarting it"
                        );
                        ingest.restart().await?;
                    }
                }
            }
            if ingest.offset > 0 {
                tracing::info!(offset = ingest.offset, "resuming a partial download");
            }
            let mut response = None;
            if ingest.offset < desc.size {
                let (fetched, ranged) = registry.fetch_blob(desc.digest.as_str(), ingest.offset as u64).await?;
                if ingest.offset > 0 && !ranged {
                    ingest.restart().await?;
                    partial = None;
                }
                response = Some(fetched);
            }
            if let (Some(file), Some(tee)) = (partial, &mut tee) {
                tee.read_back(file, ingest.offset).await?;
            }
            if let Some(mut response) = response {
                let mut buffer = Vec::with_capacity(WRITE_CHUNK);
                let mut resumes = 0;
                // Bytes received on the current connection.
                let mut received = 0u64;
                loop {
                    let cut = match response.chunk().await {
                        Ok(Some(chunk)) => {
                            progress.add_bytes(chunk.len() as u64);
                            received += chunk.len() as u64;
                            if ingest.offset + (buffer.len() + chunk.len()) as i64 > desc.size {
                                return Err(PullError::DigestMismatch {
                                    what: kind.name(),
                                    digest: desc.digest.to_string(),
                                    detail: format!("more than the {} bytes its descriptor says", desc.size),
                                });
                            }
                            buffer.extend_from_slice(&chunk);
                            if let Some(tee) = &mut tee {
                                tee.feed(chunk).await;
                            }
                            if buffer.len() >= WRITE_CHUNK {
                                ingest.write(std::mem::replace(&mut buffer, Vec::with_capacity(WRITE_CHUNK))).await?;
                            }
                            continue;
                        }
                        Ok(None) if ingest.offset + buffer.len() as i64 == desc.size => break,
                        // The connection closed early.
                        Ok(None) => RegistryError::BodyEnded {
                            host: response.url().host_str().unwrap_or_default().to_string(),
                            what: format!("{} {}", kind.name(), desc.digest),
                            received: ingest.offset + buffer.len() as i64,
                            expected: desc.size,
                        },
                        Err(source) => RegistryError::Unreachable {
                            host: response.url().host_str().unwrap_or_default().to_string(),
                            source,
                        },
                    };
                    if !buffer.is_empty() {
                        ingest.write(std::mem::replace(&mut buffer, Vec::with_capacity(WRITE_CHUNK))).await?;
                    }
                    // Cut off after some bytes got through: the rest asked for with a range
                    // request, a few times, into the same ingest (and extractor). Otherwise the
                    // next try resumes from what the ingest holds.
                    if received == 0 || resumes == MAX_RESUMES {
                        return Err(cut.into());
                    }
                    resumes += 1;
                    tracing::info!(error = %crisp_errors::message_chain(&cut), offset = ingest.offset, resumes, "the download was cut off: resuming it");
                    let (next, ranged) = registry.fetch_blob(desc.digest.as_str(), ingest.offset as u64).await?;
                    if !ranged {
                        return Err(cut.into());
                    }
                    response = next;
                    received = 0;
                }
                if !buffer.is_empty() {
                    ingest.write(std::mem::replace(&mut buffer, Vec::with_capacity(WRITE_CHUNK))).await?;
                }
            }
            if let Some(tee) = tee {
                teed = Some(tee.finish(kind, desc).await?);
            }
        }
    }
    match ingest.commit(labels).await {
        Ok(()) => Ok(teed),
        Err(err) if err.is_digest_mismatch() => Err(PullError::DigestMismatch {
            what: kind.name(),
            digest: desc.digest.to_string(),
            detail: format!("bytes containerd rejected ({})", err.status().map(|s| s.message()).unwrap_or_default()),
        }),
        Err(err) => Err(err.into()),
    }
}

/// A layer's download teed into its extractor, hashed on the way.
struct Teed<'a> {
    tee: Tee,
    hasher: Sha256,
    unpacking: &'a Unpacking<'a>,
}

/// Bytes per read of a partial ingest handed to the extractor.
const READ_BACK_CHUNK: usize = 64 << 10;

impl Teed<'_> {
    async fn feed(&mut self, bytes: bytes::Bytes) {
        self.hasher.update(&bytes);
        // An extractor that stopped reading tells why at `finish`; the download goes on.
        self.tee.feed(bytes).await;
    }

    /// Hands the extractor the first `len` bytes of the blob, from the ingest's file.
    async fn read_back(&mut self, file: tokio::fs::File, len: i64) -> Result<(), PullError> {
        use tokio::io::AsyncReadExt;
        let mut file = file.take(len.max(0) as u64);
        let mut read = 0u64;
        loop {
            let mut chunk = vec![0u8; READ_BACK_CHUNK];
            let n = file
                .read(&mut chunk)
                .await
                .map_err(|e| PullError::Internal(format!("reading back a partial download: {e}")))?;
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            read += n as u64;
            self.hasher.update(&chunk);
            self.tee.feed(chunk.into()).await;
        }
        if read != len as u64 {
            return Err(PullError::Internal(format!(
                "a partial download holds {read} bytes, not the {len} containerd said"
            )));
        }
        tracing::info!(bytes = read, "partial download read back for the extractor");
        Ok(())
    }

    /// The whole blob went through: its digest, then its diff id, checked.
    async fn finish(self, kind: Kind, desc: &Wanted) -> Result<Staged, PullError> {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if digest != desc.digest.as_str() {
            return Err(PullError::DigestMismatch {
                what: kind.name(),
                digest: desc.digest.to_string(),
                detail: format!("{} bytes with digest {digest}", desc.size),
            });
        }
        Ok(self.tee.finish(desc.digest.as_str(), self.unpacking.diff_id).await?)
    }
}
