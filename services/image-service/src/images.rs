//! ListImages, ImageStatus and RemoveImage: reading and deleting the image records, and the
//! garbage collection that follows a removal (a second later; only ImageFsInfo waits for it).

use crate::error::ImageError;
use crisp_containerd::{Containerd, ContainerdError, Lease};
use crisp_image_model::ImageStore;
use crisp_proto::cri::{Image, ImageFilter};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

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
/// Its records are deleted without waiting for containerd's garbage collection, which frees the
/// content and snapshots nothing else references: the caller starts one in the background
/// ([`Collection`]). containerd's CRI plugin waits for it (a synchronous delete of the last
/// record); the CRI asks only that the image be gone, and the kubelet's image GC counts what it
/// freed from the images' sizes.
/// Answers whether there was one.
pub async fn remove(store: &ImageStore, name: &str) -> Result<bool, ImageError> {
    let Some(image) = store.resolve(name).await? else {
        return Ok(false);
    };
    let (names, ids) = deletions(&image.record_names, image.id.as_str());
    let containerd = store.containerd();
    let all: Vec<&str> = names.iter().chain(&ids).copied().collect();
    store.expect_deletions(&all);
    futures::future::try_join_all(names.iter().map(|record| containerd.delete_image_record(record, false))).await?;
    for record in &ids {
        containerd.delete_image_record(record, false).await?;
    }
    // Answered once the deletions came back through containerd's events, which every replica
    // hears at about the same time: the next call is not answered with the image by another.
    if !store.deletions_seen(&all, DELETIONS_SEEN_WITHIN).await {
        tracing::debug!("the image's deletion events did not come back in time");
    }
    tracing::info!(id = %image.id, tags = ?image.repo_tags, digests = ?image.repo_digests, "removed image");
    Ok(true)
}

/// An image's records in the two steps they are deleted in: its names, then its id record
/// (when it has one: an image another client stored may not), so that an image whose removal
/// was cut short is still found by its id.
fn deletions<'a>(record_names: &'a [String], id: &str) -> (Vec<&'a str>, Vec<&'a str>) {
    let (ids, names): (Vec<_>, Vec<_>) = record_names.iter().map(String::as_str).partition(|n| *n == id);
    (names, ids)
}

/// containerd's garbage collection after this replica's removals, run in the background
/// [`COLLECTION_DELAY`] after a removal: the removals in a row meanwhile (the kubelet's image GC
/// removes several) share it, and a pull of the image right after its removal (critest's loop,
/// a pod scheduled back) still finds what the records held, which it keeps in its lease and
/// reuses instead of fetching and unpacking it again. containerd's own GC scheduler may collect
/// earlier (it runs soon after any deletion): the delay only bounds how late the space comes
/// back. An ImageFsInfo call runs a pending collection at once and waits for it, so the usage it
/// reports is after every removal before it. One collection runs at a time.
///
/// A PullImage does not wait: it runs beside a collection as it must beside those containerd's
/// own scheduler starts, whoever deleted. A collection marks and sweeps containerd's metadata
/// in one step under its write lock; the pull adds the object its reference names to its lease
/// before it looks for it, and that object's labels lead to the config, the layers and the top
/// snapshot: what the pull finds there was kept by every collection since, or was swept with it
/// and is fetched again. What the pull writes is in its lease. containerd removes the swept
/// files afterwards, under the content store's and the snapshotter's locks, which the pull's
/// writes wait for.
#[derive(Clone)]
pub struct Collection {
    requested: Arc<AtomicU64>,
    done: watch::Receiver<u64>,
    wake: Arc<Notify>,
    /// Cuts the delay short (a caller waits).
    hurry: Arc<Notify>,
}

/// How long a removal waits for its deletion events at most.
const DELETIONS_SEEN_WITHIN: Duration = Duration::from_secs(1);

/// How long after a removal its collection runs (unless a caller waits for it).
pub const COLLECTION_DELAY: Duration = Duration::from_secs(1);

/// How long a caller waits for a collection at most; a slower one is left to finish alone.
const COLLECTION_WAIT: Duration = Duration::from_secs(10);

impl Collection {
    /// Starts the task that runs the collections (until the process ends).
    pub fn start(containerd: Containerd) -> Collection {
        let (tx, done) = watch::channel(0);
        let (requested, wake, hurry) = (Arc::new(AtomicU64::new(0)), Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (wanted, woken, hurried) = (requested.clone(), wake.clone(), hurry.clone());
        tokio::spawn(async move {
            loop {
                woken.notified().await;
                tokio::select! {
                    _ = tokio::time::sleep(COLLECTION_DELAY) => {}
                    _ = hurried.notified() => {}
                }
                let target = wanted.load(Ordering::SeqCst);
                if let Err(err) = collect(&containerd).await {
                    tracing::warn!(error = %err, "running containerd's garbage collection after a removal failed");
                }
                tx.send_replace(target);
            }
        });
        Collection { requested, done, wake, hurry }
    }

    /// Asks for a collection, after a removal.
    pub fn request(&self) {
        self.requested.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Runs the collections requested so far now, if they have not run, and waits for them.
    pub async fn settled(&self) {
        let wanted = self.requested.load(Ordering::SeqCst);
        let mut done = self.done.clone();
        if *done.borrow() >= wanted {
            return;
        }
        self.hurry.notify_one();
        if tokio::time::timeout(COLLECTION_WAIT, done.wait_for(|done| *done >= wanted)).await.is_err() {
            tracing::warn!("containerd's garbage collection after a removal takes long; not waiting for it");
        }
    }
}

/// One synchronous collection: containerd runs one when a lease is deleted with `sync`.
async fn collect(containerd: &Containerd) -> Result<(), ContainerdError> {
    let lease = Lease::create(containerd, "crisp-collect", HashMap::new(), Duration::from_secs(60)).await?;
    containerd.delete_lease(&lease.into_id(), true).await
}

/// The CRI view of an image, with the fields containerd's CRI plugin fills: no `spec` (optional;
/// the kubelet reads the image's id when there is none). An answer that stays small counts:
/// h2 writes a DATA payload over 256 bytes apart from the trailers that follow it, so every hop
/// of a larger answer costs one more write and one more wake-up of its reader (ImageStatus of
/// critest's image: 248 bytes on the wire without `spec`, 323 with it).
fn to_cri(image: &crisp_image_model::Image) -> Image {
    let user = image.details.user();
    Image {
        id: image.id.to_string(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.details.size,
        uid: user.uid.map(|value| crisp_proto::cri::Int64Value { value }),
        username: user.username,
        spec: None,
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
