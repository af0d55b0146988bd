//! ListImages, ImageStatus and RemoveImage: reading and deleting the image records.

use crate::error::ImageError;
use crisp_image_model::ImageStore;
use crisp_proto::cri::{Image, ImageFilter};
use std::collections::HashMap;

/// Every image, or those the filter's image names.
pub async fn list(store: &ImageStore, filter: Option<&ImageFilter>) -> Result<Vec<Image>, ImageError> {
    let wanted = filter.and_then(|f| f.image.as_ref()).map(|spec| spec.image.as_str()).filter(|s| !s.is_empty());
    match wanted {
        None => Ok(store.list().await?.iter().map(to_cri).collect()),
        Some(name) => Ok(store.resolve(name).await?.iter().map(to_cri).collect()),
    }
}

/// The image named `name`, and with `verbose` containerd's `info` entry: the image config as
/// `{"chainID": .., "imageSpec": <config>}` JSON. An unknown image is `None`, not an error.
pub async fn status(
    store: &ImageStore,
    name: &str,
    verbose: bool,
) -> Result<(Option<Image>, HashMap<String, String>), ImageError> {
    let Some(image) = store.resolve(name).await? else {
        return Ok((None, HashMap::new()));
    };
    let mut info = HashMap::new();
    if verbose {
        // A config whose diff ids do not parse has no chain id to show (containerd shows none).
        let chain = image.details.chain_ids().unwrap_or_default();
        let value = serde_json::json!({
            "chainID": chain.last().map(ToString::to_string).unwrap_or_default(),
            "imageSpec": image.details.config_json,
        });
        info.insert("info".to_string(), value.to_string());
    }
    Ok((Some(to_cri(&image)), info))
}

/// Removes the image `name` names with every name it has; an absent image is removed already.
///
/// Its records are deleted without waiting for containerd's garbage collection, which
/// containerd schedules at once after a deletion (its default `deletion_threshold` of 0) and
/// which frees the content and snapshots nothing else references. containerd's CRI plugin
/// waits for that collection (a synchronous delete of the last record); the CRI asks only that
/// the image be gone, and the kubelet's image GC counts what it freed from the images' sizes.
/// A pull racing the collection holds what it finds in its lease first ([`crate::pull`]).
pub async fn remove(store: &ImageStore, name: &str) -> Result<(), ImageError> {
    let Some(image) = store.resolve(name).await? else {
        return Ok(());
    };
    let (names, ids) = deletions(&image.record_names, image.id.as_str());
    let containerd = store.containerd();
    futures::future::try_join_all(names.iter().map(|record| containerd.delete_image_record(record, false))).await?;
    for record in ids {
        containerd.delete_image_record(record, false).await?;
    }
    tracing::info!(id = %image.id, tags = ?image.repo_tags, digests = ?image.repo_digests, "removed image");
    Ok(())
}

/// An image's records in the two steps they are deleted in: its names, then its id record
/// (when it has one: an image another client stored may not), so that an image whose removal
/// was cut short is still found by its id.
fn deletions<'a>(record_names: &'a [String], id: &str) -> (Vec<&'a str>, Vec<&'a str>) {
    let (ids, names): (Vec<_>, Vec<_>) = record_names.iter().map(String::as_str).partition(|n| *n == id);
    (names, ids)
}

/// The CRI view of an image.
fn to_cri(image: &crisp_image_model::Image) -> Image {
    let user = image.details.user();
    Image {
        id: image.id.to_string(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.details.size,
        uid: user.uid.map(|value| crisp_proto::cri::Int64Value { value }),
        username: user.username,
        spec: Some(crisp_proto::cri::ImageSpec { image: image.id.to_string(), ..Default::default() }),
        pinned: image.pinned,
    }
}

#[cfg(test)]
mod tests {
    use super::deletions;

    #[test]
    fn the_id_record_is_deleted_after_the_names() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let with_id = names(&["sha256:aa", "r/app:v1", "r/app@sha256:bb"]);
        assert_eq!(deletions(&with_id, "sha256:aa"), (vec!["r/app:v1", "r/app@sha256:bb"], vec!["sha256:aa"]));
        let without_id = names(&["r/app:v1", "r/app@sha256:bb"]);
        assert_eq!(deletions(&without_id, "sha256:aa"), (vec!["r/app:v1", "r/app@sha256:bb"], vec![]));
        assert_eq!(deletions(&[], "sha256:aa"), (vec![], vec![]));
    }
}
