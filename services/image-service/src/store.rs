//! Writing image records, the way containerd's CRI plugin writes them: one record per name
//! plus the id record, all labelled `io.cri-containerd.image=managed`, the pinned (sandbox)
//! image also `io.cri-containerd.pinned=pinned`. Reading them is the image model's
//! ([`crisp_image_model::ImageStore`]).

use containerd_client::types::Descriptor;
use crisp_containerd::labels::cri;
use crisp_containerd::{Containerd, ContainerdError};
use std::collections::HashMap;

/// Creates or replaces the record `name` → `target`.
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
    containerd.put_image_record(name, target, labels).await
}
