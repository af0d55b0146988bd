//! Getting one blob into containerd's content store: skipped when present, otherwise streamed
//! from the registry into an ingest (resuming what an earlier try left) and committed with its
//! expected digest and size, so containerd keeps it only if every byte matches.

use super::progress::Progress;
use crate::error::PullError;
use crate::registry::Registry;
use crisp_containerd::{Containerd, Held, Ingest, Lease, Opened};
use crisp_image_model::Digest;
use crisp_image_model::oci::Descriptor;
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

/// Bytes sent to containerd per write.
const WRITE_CHUNK: usize = 1 << 20;

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
    let span = tracing::info_span!("blob", kind = kind.name(), digest = %desc.digest, size = desc.size);
    async {
        if let Source::Bytes(bytes) = &source {
            check_in_memory(kind, desc, bytes)?;
        }
        let reference = format!("{}-{}", kind.name(), desc.digest);
        let mut waited_offset = None;
        loop {
            if containerd.content_info(desc.digest.as_str()).await?.is_some() {
                // Present: hold it in this pull's lease and label it.
                lease.hold(Held::Content(desc.digest.as_str())).await?;
                containerd.set_content_labels(Some(lease.id()), desc.digest.as_str(), labels.clone()).await?;
                progress.step();
                tracing::debug!("already in the content store");
                return Ok(());
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
                    let result = write(ingest, kind, desc, &source, labels.clone(), progress).await;
                    match result {
                        Ok(()) => {
                            progress.step();
                            tracing::debug!(elapsed = ?started.elapsed(), "stored");
                            return Ok(());
                        }
                        Err(err @ PullError::DigestMismatch { .. }) => {
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

async fn write(
    mut ingest: Box<Ingest>,
    kind: Kind,
    desc: &Wanted,
    source: &Source<'_>,
    labels: HashMap<String, String>,
    progress: &Progress,
) -> Result<(), PullError> {
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
            if ingest.offset > 0 {
                tracing::info!(offset = ingest.offset, "resuming a partial download");
            }
            if ingest.offset < desc.size {
                let (mut response, ranged) = registry.fetch_blob(desc.digest.as_str(), ingest.offset as u64).await?;
                if ingest.offset > 0 && !ranged {
                    ingest.restart().await?;
                }
                let mut buffer = Vec::with_capacity(WRITE_CHUNK);
                loop {
                    let chunk = match response.chunk().await {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => break,
                        Err(source) => {
                            if !buffer.is_empty() {
                                ingest.write(std::mem::replace(&mut buffer, Vec::with_capacity(WRITE_CHUNK))).await?;
                            }
                            return Err(PullError::Registry(crate::registry::RegistryError::Unreachable {
                                host: response.url().host_str().unwrap_or_default().to_string(),
                                source,
                            }));
                        }
                    };
                    progress.add_bytes(chunk.len() as u64);
                    if ingest.offset + (buffer.len() + chunk.len()) as i64 > desc.size {
                        return Err(PullError::DigestMismatch {
                            what: kind.name(),
                            digest: desc.digest.to_string(),
                            detail: format!("more than the {} bytes its descriptor says", desc.size),
                        });
                    }
                    buffer.extend_from_slice(&chunk);
                    if buffer.len() >= WRITE_CHUNK {
                        ingest.write(std::mem::replace(&mut buffer, Vec::with_capacity(WRITE_CHUNK))).await?;
                    }
                }
                if !buffer.is_empty() {
                    ingest.write(std::mem::replace(&mut buffer, Vec::with_capacity(WRITE_CHUNK))).await?;
                }
                if ingest.offset != desc.size {
                    // The connection closed early: worth another try (the next resumes it).
                    return Err(PullError::Registry(crate::registry::RegistryError::BodyEnded {
                        host: response.url().host_str().unwrap_or_default().to_string(),
                        what: format!("{} {}", kind.name(), desc.digest),
                        received: ingest.offset,
                        expected: desc.size,
                    }));
                }
            }
        }
    }
    match ingest.commit(labels).await {
        Ok(()) => Ok(()),
        Err(err) if err.is_digest_mismatch() => Err(PullError::DigestMismatch {
            what: kind.name(),
            digest: desc.digest.to_string(),
            detail: format!("bytes containerd rejected ({})", err.status().map(|s| s.message()).unwrap_or_default()),
        }),
        Err(err) => Err(err.into()),
    }
}
