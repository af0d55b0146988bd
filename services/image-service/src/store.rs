//! Writing image records, the way containerd's CRI plugin writes them: one record per name
//! plus the id record, all labelled `io.cri-containerd.image=managed`, the pinned (sandbox)
//! image also `io.cri-containerd.pinned=pinned`. Reading them is the image model's
//! ([`crisp_image_model::ImageStore`]).

use containerd_client::types::Descriptor;
use crisp_containerd::labels::cri;
use crisp_containerd::{Containerd, ContainerdError};
use crisp_image_model::{ImageId, Reference};
use std::collections::HashMap;

/// Creates or replaces the record `name` → `target`. A record that is so already is left as
/// it is (as containerd's CRI leaves it): a pull of an image it has writes nothing, and no
/// event follows.
pub async fn put(
    containerd: &Containerd,
    name: &str,
    target: &Descriptor,
    pinned: bool,
) -> Result<(), ContainerdError> {
    let mut labels = HashMap::from([(cri::IMAGE.to_string(), cri::IMAGE_MANAGED.to_string())]);
    if pinned {
        labels.insert(cri::PINNED.to_string(), cri::PINNED_VALUE.to_string());
    }
    if let Some(record) = containerd.image_record(name).await?
        && record.target.as_ref() == Some(target)
        && labels.iter().all(|(key, value)| record.labels.get(key) == Some(value))
    {
        return Ok(());
    }
    containerd.put_image_record(name, target, labels).await
}

/// The records a pull of `reference` (which resolved to `top`) leaves, as containerd's CRI
/// names them: `repo:tag`, `repo@<top>` and the id. With a digest the tag is dropped, as
/// containerd's `ParseDockerRef` does: `name:tag@digest` names the image by its digest alone
/// and does not move the tag.
pub fn pulled_names(reference: &Reference, top: &crisp_image_model::Digest, id: &ImageId) -> Vec<String> {
    let mut names = Vec::new();
    if reference.digest.is_none()
        && let Some(tagged) = reference.tagged()
    {
        names.push(tagged);
    }
    names.push(reference.with_digest(top));
    names.push(id.to_string());
    names
}

/// Writes the records `names` → `target` at once, pinned when one of them is `sandbox_image`.
pub async fn put_pulled(
    containerd: &Containerd,
    names: &[String],
    target: &Descriptor,
    sandbox_image: Option<&str>,
) -> Result<(), ContainerdError> {
    let pinned = names.iter().any(|name| Some(name.as_str()) == sandbox_image);
    futures::future::try_join_all(names.iter().map(|name| put(containerd, name, target, pinned))).await?;
    Ok(())
}
