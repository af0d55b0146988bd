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
    // The id record goes last, with containerd's garbage collection run synchronously so the
    // content and snapshots are gone when the call returns.
    let (id_records, names): (Vec<_>, Vec<_>) = image.record_names.iter().partition(|n| **n == image.id);
    for record in names {
        store.delete(record, false).await?;
    }
    for record in id_records {
        store.delete(record, true).await?;
    }
    tracing::info!(id = %image.id, tags = ?image.repo_tags, digests = ?image.repo_digests, "removed image");
    Ok(())
}

/// The image `input` names, as containerd's CRI resolves it: a full id, or a reference, or
/// else (like `crictl rmi 3f57d9401f8d`) a unique prefix of an id, with or without `sha256:`.
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
        // Not an id prefix: a malformed reference is the caller's error.
        name?;
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
