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
pub async fn remove(store: &ImageStore, name: &str) -> Result<(), ImageError> {
    let Some(image) = store.resolve(name).await? else {
        return Ok(());
    };
    for (record, sync) in deletions(&image.record_names, image.id.as_str()) {
        store.containerd().delete_image_record(record, sync).await?;
    }
    tracing::info!(id = %image.id, tags = ?image.repo_tags, digests = ?image.repo_digests, "removed image");
    Ok(())
}

/// The order an image's records are deleted in, each with whether containerd's garbage
/// collection runs synchronously: the id record (when there is one) last, and the last record,
/// whichever it is, synchronously, so the content and snapshots are gone when RemoveImage
/// answers (an image another client stored may have no id record).
fn deletions<'a>(record_names: &'a [String], id: &str) -> Vec<(&'a str, bool)> {
    let (id_records, names): (Vec<_>, Vec<_>) = record_names.iter().partition(|n| *n == id);
    let records: Vec<&str> = names.into_iter().chain(id_records).map(String::as_str).collect();
    let last = records.len().saturating_sub(1);
    records.into_iter().enumerate().map(|(i, record)| (record, i == last)).collect()
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
    fn the_last_record_deleted_collects_garbage() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let with_id = names(&["sha256:aa", "r/app:v1", "r/app@sha256:bb"]);
        assert_eq!(
            deletions(&with_id, "sha256:aa"),
            vec![("r/app:v1", false), ("r/app@sha256:bb", false), ("sha256:aa", true)]
        );
        let without_id = names(&["r/app:v1", "r/app@sha256:bb"]);
        assert_eq!(deletions(&without_id, "sha256:aa"), vec![("r/app:v1", false), ("r/app@sha256:bb", true)]);
        assert_eq!(deletions(&names(&["r/app:v1"]), "sha256:aa"), vec![("r/app:v1", true)]);
        assert!(deletions(&[], "sha256:aa").is_empty());
    }
}
