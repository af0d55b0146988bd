//! The start of a pull: the object a reference names (an index or a manifest) and the
//! platform's manifest, read from containerd's content store when they are there and fetched
//! otherwise. The registry is asked once, with a `HEAD` for the reference (its digest from
//! `Docker-Content-Digest`), as containerd's resolver does; a registry that answers no digest
//! is asked with a `GET`. Each object is added to the pull's lease before it is looked for: a
//! garbage collection running meanwhile (after a RemoveImage) has either removed it already (it
//! is fetched) or keeps it, and what its labels reference, for the pull.

use super::blob::Wanted;
use crate::error::PullError;
use crate::registry::{Fetched, Head, Registry, RegistryError, media_type_of};
use containerd_client::types::Descriptor;
use crisp_containerd::{Containerd, Held, Lease};
use crisp_image_model::oci::{self, ImageIndex};
use crisp_image_model::{Digest, Reference};

/// What a reference names, and the manifest to pull from it.
pub struct Resolved {
    /// The object the reference names: an index or a manifest.
    pub top: Fetched,
    /// The platform's manifest: `top` itself, or the one picked from the index.
    pub manifest: Wanted,
    pub manifest_bytes: bytes::Bytes,
    /// Both were read from the content store (nothing but the `HEAD` asked of the registry).
    pub local: bool,
}

impl Resolved {
    pub fn is_index(&self) -> bool {
        oci::is_index(&self.top.media_type)
    }

    /// The image records' target: the object the reference names.
    pub fn target(&self) -> Descriptor {
        Descriptor {
            media_type: self.top.media_type.clone(),
            digest: self.top.digest.to_string(),
            size: self.top.bytes.len() as i64,
            annotations: Default::default(),
        }
    }
}

/// Resolves `reference` at the registry and reads (or fetches) its index and manifest.
pub async fn resolve(
    containerd: &Containerd,
    registry: &Registry,
    reference: &Reference,
    lease: &Lease,
) -> Result<Resolved, PullError> {
    let (top, top_local) = top(containerd, registry, reference, lease).await?;
    if let Some(digest) = &reference.digest
        && &top.digest != digest
    {
        return Err(PullError::DigestMismatch {
            what: "manifest",
            digest: digest.to_string(),
            detail: format!("content with digest {}", top.digest),
        });
    }
    if oci::is_index(&top.media_type) {
        let index: ImageIndex = serde_json::from_slice(&top.bytes).map_err(|e| PullError::Malformed {
            what: "index",
            digest: top.digest.to_string(),
            detail: e.to_string(),
        })?;
        let platform = oci::host_platform();
        let chosen = oci::pick_platform(&index, &platform)
            .ok_or_else(|| PullError::NoPlatform(format!("{}/{}", platform.os, platform.architecture)))?;
        let manifest = Wanted::of(chosen);
        let (fetched, local) = by_digest(containerd, registry, lease, &manifest.digest, None).await?;
        Ok(Resolved { top, manifest, manifest_bytes: fetched.bytes, local: top_local && local })
    } else if oci::is_manifest(&top.media_type) {
        let manifest = Wanted { digest: top.digest.clone(), size: top.bytes.len() as i64 };
        Ok(Resolved { manifest, manifest_bytes: top.bytes.clone(), top, local: top_local })
    } else {
        Err(PullError::UnsupportedMediaType(top.media_type.clone()))
    }
}

/// The object the reference names: its digest from a `HEAD`, its bytes from the content
/// store or the registry; and whether they came from the content store.
async fn top(
    containerd: &Containerd,
    registry: &Registry,
    reference: &Reference,
    lease: &Lease,
) -> Result<(Fetched, bool), PullError> {
    let head = match registry.head_manifest(reference.object()).await {
        Ok(head) => head,
        // A registry that does not answer a HEAD (405, ...) may answer a GET.
        Err(err @ RegistryError::Status { .. }) => {
            tracing::debug!(error = %err, "the registry refused a HEAD; asking with a GET");
            Head::default()
        }
        Err(err) => return Err(err.into()),
    };
    let Some(digest) = head.digest.or_else(|| reference.digest.clone()) else {
        tracing::debug!("the registry answered no digest for the reference: fetching it");
        return Ok((registry.resolve().await?, false));
    };
    by_digest(containerd, registry, lease, &digest, head.media_type).await
}

/// The manifest or index `digest`: held in the pull's lease, then read from the content store,
/// or fetched (and checked against its digest) when it is not there. `media_type` is what the
/// registry said it is, for an object that does not say it itself.
async fn by_digest(
    containerd: &Containerd,
    registry: &Registry,
    lease: &Lease,
    digest: &Digest,
    media_type: Option<String>,
) -> Result<(Fetched, bool), PullError> {
    lease.hold(Held::Content(digest.as_str())).await?;
    match containerd.read_content(digest.as_str()).await {
        Ok(bytes) if Digest::sha256_of(&bytes) == *digest => {
            let media_type = media_type_of(&bytes).or(media_type).unwrap_or_default();
            tracing::debug!(%digest, "read from the content store");
            return Ok((Fetched { media_type, digest: digest.clone(), bytes: bytes.into() }, true));
        }
        Ok(_) => tracing::warn!(%digest, "the content store's copy does not match its digest; fetching it"),
        Err(err) if err.is_not_found() => {}
        Err(err) => return Err(err.into()),
    }
    let fetched = registry.fetch_manifest(digest.as_str(), false).await?;
    if fetched.digest != *digest {
        return Err(PullError::DigestMismatch {
            what: "manifest",
            digest: digest.to_string(),
            detail: format!("content with digest {}", fetched.digest),
        });
    }
    Ok((fetched, false))
}
