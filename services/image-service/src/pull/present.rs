//! "Everything is already here": a pull whose index and manifest were read from the content
//! store ([`super::resolve`]) and whose config and layers are there too, linked by the labels a
//! pull sets (index → manifest → config and layers, config → the top of its unpacked chain),
//! with that top snapshot committed. Such a pull only writes the image's records: it asked the
//! registry once (the `HEAD`), as containerd's pull does, and reads or writes no blob; it adds
//! the repository it pulled from to the blobs' `containerd.io/distribution.source.<host>`
//! label where they lack it, as a full pull does.
//!
//! The object the reference names is in the pull's lease before it was read: from then on,
//! containerd's garbage collection keeps it and everything its labels lead to, so what is
//! found here stays until the records reference it. Anything missing or unlabelled: the
//! pull goes the whole way.

use super::resolve::Resolved;
use crate::error::PullError;
use containerd_client::services::v1::Info;
use crisp_containerd::labels::gc;
use crisp_containerd::{Containerd, LeaseId};
use crisp_image_model::oci::{ImageConfiguration, ImageManifest};
use crisp_image_model::{Digest, ImageId, chain_ids};
use std::collections::HashMap;

/// The image's id when everything it is made of is here, unpacked in `snapshotter`; its blobs
/// then get the distribution source label `source_label` (their other sources kept).
pub async fn everything_here(
    containerd: &Containerd,
    snapshotter: &str,
    resolved: &Resolved,
    lease: &LeaseId,
    source_label: &(String, String),
) -> Result<Option<ImageId>, PullError> {
    if !resolved.local {
        return Ok(None);
    }
    let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&resolved.manifest_bytes) else {
        return Ok(None);
    };
    let config_digest = Digest::from(manifest.config().digest());
    let config = config_digest.to_string();
    let layers: Vec<String> = manifest.layers().iter().map(|layer| layer.digest().to_string()).collect();
    let info = |digest: String| async move { containerd.content_info(&digest).await };
    let top_info = async {
        match resolved.is_index() {
            true => info(resolved.top.digest.to_string()).await,
            false => Ok(None),
        }
    };
    let config_bytes = async {
        match containerd.read_content(&config).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err),
        }
    };
    let (top_info, manifest_info, config_info, config_bytes, layer_infos) = tokio::try_join!(
        top_info,
        info(resolved.manifest.digest.to_string()),
        info(config.clone()),
        config_bytes,
        futures::future::try_join_all(layers.iter().cloned().map(info)),
    )?;
    if resolved.is_index() && !references(top_info.as_ref(), resolved.manifest.digest.as_str()) {
        return Ok(None);
    }
    let manifest_links = std::iter::once(&config).chain(&layers).all(|d| references(manifest_info.as_ref(), d));
    if !manifest_links || layer_infos.iter().any(Option::is_none) {
        return Ok(None);
    }
    let (Some(config_info), Some(config_bytes)) = (config_info, config_bytes) else {
        return Ok(None);
    };
    let Ok(parsed) = serde_json::from_slice::<ImageConfiguration>(&config_bytes) else {
        return Ok(None);
    };
    let Ok(diff_ids) = parsed.rootfs().diff_ids().iter().map(|d| Digest::parse(d)).collect::<Result<Vec<_>, _>>()
    else {
        return Ok(None);
    };
    if diff_ids.len() != layers.len() {
        return Ok(None);
    }
    let Some(top_chain) = chain_ids(&diff_ids).pop() else { return Ok(None) };
    if config_info.labels.get(&gc::ref_snapshot(snapshotter)).map(String::as_str) != Some(top_chain.as_str()) {
        return Ok(None);
    }
    if !containerd.snapshot_exists(snapshotter, top_chain.as_str()).await? {
        return Ok(None);
    }
    // The repository pulled from, on every blob as a full pull sets it.
    let wanted = HashMap::from([source_label.clone()]);
    let blobs = top_info
        .iter()
        .chain(manifest_info.iter())
        .chain(std::iter::once(&config_info))
        .chain(layer_infos.iter().flatten());
    let updates = blobs.filter_map(|info| {
        let update = super::source::missing(&info.labels, &wanted);
        (!update.is_empty()).then(|| containerd.set_content_labels(Some(lease), &info.digest, update))
    });
    futures::future::try_join_all(updates).await?;
    Ok(Some(ImageId::of_config(config_digest)))
}

/// Whether the blob `info` describes references `digest` by a garbage collection label.
fn references(info: Option<&Info>, digest: &str) -> bool {
    info.is_some_and(|info| {
        info.labels.iter().any(|(key, value)| key.starts_with(gc::REF_CONTENT_PREFIX) && value == digest)
    })
}
