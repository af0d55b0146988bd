//! ListImages, ImageStatus and RemoveImage: reading and deleting the image records.

use crate::error::ImageError;
use crate::reference::ImageName;
use crate::store::{self, ImageStore};
use crisp_proto::cri::{Image, ImageFilter};
use std::collections::HashMap;

/// Every image, or those the filter's image names.
pub async fn list(store: &ImageStore, filter: Option<&ImageFilter>) -> Result<Vec<Image>, ImageError> {
    let wanted = filter.and_then(|f| f.image.as_ref()).map(|spec| spec.image.as_str()).filter(|s| !s.is_empty());
    match wanted {
        None => Ok(store.list().await?.iter().map(|image| image.to_cri()).collect()),
        Some(name) => Ok(resolve(store, name).await?.iter().map(|image| image.to_cri()).collect()),
    }
}

/// The image named `name`, and with `verbose` containerd's `info` entry: the image config as
/// `{"chainID": .., "imageSpec": <config>}` JSON. An unknown image is `None`, not an error.
pub async fn status(
    store: &ImageStore,
    name: &str,
    verbose: bool,
) -> Result<(Option<Image>, HashMap<String, String>), ImageError> {
    let Some(image) = resolve(store, name).await? else {
        return Ok((None, HashMap::new()));
    };
    let mut info = HashMap::new();
    if verbose {
        let chain = crate::oci::chain_ids(&image.details.config.rootfs.diff_ids);
        let value = serde_json::json!({
            "chainID": chain.last().cloned().unwrap_or_default(),
            "imageSpec": image.details.config_json,
        });
        info.insert("info".to_string(), value.to_string());
    }
    Ok((Some(image.to_cri()), info))
}

/// Removes the image `name` names with every name it has; an absent image is removed already.
pub async fn remove(store: &ImageStore, name: &str) -> Result<(), ImageError> {
    let Some(image) = resolve(store, name).await? else {
        return Ok(());
    };
    for (record, sync) in deletions(&image.record_names, &image.id) {
        store.delete(record, sync).await?;
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

/// The image `input` names, as containerd's CRI resolves it: a full id, or a reference, or
/// else (like `crictl rmi 3f57d9401f8d`) a unique prefix of an id, with or without `sha256:`.
/// A name that is none of these (malformed) names no image.
async fn resolve(store: &ImageStore, input: &str) -> Result<Option<store::Image>, ImageError> {
    let name = ImageName::parse(input);
    if let Ok(name) = &name
        && let Some(image) = store.find(name).await?
    {
        return Ok(Some(image));
    }
    let hex = input.strip_prefix("sha256:").unwrap_or(input);
    let is_prefix =
        !hex.is_empty() && hex.len() < 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_prefix {
        // As containerd's CRI: a name that does not parse names no image (ImageStatus answers
        // none, RemoveImage succeeds); only PullImage rejects it.
        if let Err(err) = name {
            tracing::debug!(error = %err, "the image name does not parse: no such image");
        }
        return Ok(None);
    }
    let mut matches: Vec<_> = store
        .list()
        .await?
        .into_iter()
        .filter(|image| image.id.strip_prefix("sha256:").is_some_and(|id| id.starts_with(hex)))
        .collect();
    Ok(if matches.len() == 1 { matches.pop() } else { None })
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
