//! Reading images from containerd, the way containerd's CRI plugin keeps them: one image
//! record per name (`repo:tag`, `repo@digest`) plus an id record `sha256:<config digest>`, all
//! with the same target. A CRI image is the group of records whose target leads to the same
//! config. Like containerd's CRI, every image in the namespace counts, also those other
//! clients put there (`ctr images import` / `pull`): side-loading works.
//!
//! [`ImageStore::resolve`] finds an image by any name a CRI caller uses: its id, a tag or
//! digest reference, or a unique id prefix. Writing records is the image service's job.
//!
//! With [`ImageStore::start_index`] the records are kept in memory, current from containerd's
//! image events (`/images/create|update|delete`, each record read anew), as containerd's CRI
//! image store keeps them: listing and finding then ask containerd nothing. The stream is
//! subscribed before the full list is read, so nothing is missed (containerd answers a
//! subscription only with its first event: the list is read, and read again then, when none
//! comes within 200 ms); when it breaks, the index is
//! not used (every read asks containerd) until it is subscribed again and rebuilt from a full
//! list. A name the index lacks is still looked up in containerd (another replica's pull may be
//! ahead of its event), and [`ImageStore::resync`] rebuilds it after this replica's own writes.

use crate::digest::{ChainId, Digest, DigestError, ImageId, chain_ids};
use crate::oci::{self, ImageConfiguration, ImageIndex, ImageManifest, ImageUser};
use crate::reference::{ImageName, Reference};
use crisp_containerd::containerd_client::types::Descriptor as Target;
use crisp_containerd::labels::cri;
use crisp_containerd::{Containerd, ContainerdError, ImageRecord};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("image {target} in containerd is unreadable: {detail}")]
    Corrupt { target: String, detail: String },
}

/// What an image's target leads to: the platform manifest's config and sizes.
#[derive(Debug)]
pub struct Details {
    pub id: ImageId,
    /// Manifest, config and layers (and the index when the target is one), compressed.
    pub size: u64,
    pub config: ImageConfiguration,
    /// The config as stored, for `ImageStatus`'s verbose `imageSpec`.
    pub config_json: serde_json::Value,
}

impl Details {
    /// The layers' diff ids, from the config.
    pub fn diff_ids(&self) -> Result<Vec<Digest>, DigestError> {
        self.config.rootfs().diff_ids().iter().map(|d| Digest::parse(d)).collect()
    }

    /// The chain ids of the image's layers: the snapshots a container's rootfs is made on,
    /// the last one its top.
    pub fn chain_ids(&self) -> Result<Vec<ChainId>, DigestError> {
        Ok(chain_ids(&self.diff_ids()?))
    }

    /// The image's `USER`, as the CRI reports it.
    pub fn user(&self) -> ImageUser {
        oci::image_user(&self.config)
    }
}

/// One CRI image: its id, names and the records that carry them.
#[derive(Debug, Clone)]
pub struct Image {
    pub id: ImageId,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub record_names: Vec<String>,
    pub pinned: bool,
    pub details: Arc<Details>,
}

/// Reads images; details are cached by target digest (content is immutable).
#[derive(Clone)]
pub struct ImageStore {
    containerd: Containerd,
    details: Arc<Mutex<HashMap<String, Arc<Details>>>>,
    index: Arc<Index>,
}

/// The records and the CRI images they make, grouped and looked up once per change rather
/// than per call.
#[derive(Default)]
struct View {
    records: BTreeMap<String, ImageRecord>,
    /// Every image, by id.
    images: Vec<Arc<Image>>,
    /// The image each record name belongs to.
    by_name: HashMap<String, Arc<Image>>,
}

/// The namespace's images, when kept current (`live`).
#[derive(Default)]
struct Index {
    view: std::sync::RwLock<Option<Arc<View>>>,
    /// Serialises the writers (events, resyncs): each reads containerd's state then writes it,
    /// so the last one written is the newest read.
    writer: tokio::sync::Mutex<()>,
    /// Record names whose deletion the event stream brought, for [`ImageStore::deletions_seen`];
    /// bumped at each.
    gone: Mutex<std::collections::HashSet<String>>,
    gone_changed: tokio::sync::watch::Sender<u64>,
}

impl Index {
    /// The current view, when the index is kept current.
    fn get(&self) -> Option<Arc<View>> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, view: Option<View>) {
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view.map(Arc::new);
    }
}

/// How long a subscription to containerd's events has to answer before the index is built
/// without waiting for the answer (see [`ImageStore::follow_events`]).
const SUBSCRIBED_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// How long to wait before subscribing again after the event stream broke.
const RESUBSCRIBE_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

impl ImageStore {
    pub fn new(containerd: Containerd) -> Self {
        Self { containerd, details: Default::default(), index: Default::default() }
    }

    /// Keeps the records in memory from now on, current from containerd's events (see the
    /// module's header). Runs until the process ends.
    pub fn start_index(&self) {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                match store.follow_events().await {
                    Ok(()) => tracing::warn!("containerd's event stream ended; the image index resubscribes"),
                    Err(err) => {
                        tracing::warn!(error = %err, "the image index lost containerd's events; it resubscribes")
                    }
                }
                store.index.set(None);
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
            }
        });
    }

    /// Subscribes, rebuilds the index from a full list, then applies events until the stream
    /// ends.
    async fn follow_events(&self) -> Result<(), ContainerdError> {
        use futures::StreamExt;
        let subscribing = self.containerd.image_events();
        futures::pin_mut!(subscribing);
        let events = match tokio::time::timeout(SUBSCRIBED_AFTER, subscribing.as_mut()).await {
            Ok(events) => {
                let events = events?;
                self.rebuild(true).await?;
                events
            }
            // containerd answers a subscription (its headers) only with its first event, which
            // may be long in coming: the request is registered by now, so the index is built and
            // used meanwhile, and built again when the answer comes, for an event in between.
            Err(_) => {
                self.rebuild(true).await?;
                tracing::debug!("the image index is current; its subscription answers with the first event");
                let events = subscribing.await?;
                self.rebuild(true).await?;
                events
            }
        };
        futures::pin_mut!(events);
        tracing::debug!("the image index is current");
        while let Some(event) = events.next().await {
            let name = event?.name().to_string();
            let _writer = self.index.writer.lock().await;
            let record = self.containerd.image_record(&name).await?;
            if record.is_none() {
                self.index.gone.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone());
                self.index.gone_changed.send_modify(|n| *n += 1);
            }
            let Some(view) = self.index.get() else { continue };
            // This replica's own writes are in already (resync): nothing changed.
            if view.records.get(&name) == record.as_ref() {
                continue;
            }
            let mut records = view.records.clone();
            match record {
                Some(record) => records.insert(name, record),
                None => records.remove(&name),
            };
            self.index.set(Some(self.view_of(records).await));
        }
        Ok(())
    }

    /// Before deleting the records `names`: forgets earlier deletions of them, so that
    /// [`ImageStore::deletions_seen`] waits for these.
    pub fn expect_deletions(&self, names: &[&str]) {
        let mut gone = self.index.gone.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            gone.remove(*name);
        }
    }

    /// Waits, at most `within`, until containerd's events brought the deletion of every record
    /// in `names` (when the index is kept): every replica's index hears of them at about the
    /// same time, so a call answered by another replica right after no longer finds them.
    /// Answers whether they all came.
    pub async fn deletions_seen(&self, names: &[&str], within: std::time::Duration) -> bool {
        if self.index.get().is_none() {
            return false;
        }
        let mut changed = self.index.gone_changed.subscribe();
        let all_seen = || {
            let gone = self.index.gone.lock().unwrap_or_else(|p| p.into_inner());
            names.iter().all(|name| gone.contains(*name))
        };
        let wait = async {
            while !all_seen() {
                if changed.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(within, wait).await.unwrap_or(false)
    }

    /// Rebuilds the index from a full list (when it is kept): after this replica's own writes,
    /// so that its next read sees them without waiting for their events.
    pub async fn resync(&self) -> Result<(), ContainerdError> {
        self.rebuild(false).await
    }

    /// A full list into the index; unless `start`, only when the index is kept current now
    /// (with the events broken it stays unused).
    async fn rebuild(&self, start: bool) -> Result<(), ContainerdError> {
        let _writer = self.index.writer.lock().await;
        if !start && self.index.get().is_none() {
            return Ok(());
        }
        let records = self.containerd.image_records().await?;
        let view = self.view_of(records.into_iter().map(|r| (r.name.clone(), r)).collect()).await;
        self.index.set(Some(view));
        Ok(())
    }

    /// The images: from the index when it is current, else from containerd's records.
    async fn view(&self) -> Result<Arc<View>, ContainerdError> {
        if let Some(view) = self.index.get() {
            return Ok(view);
        }
        let records = self.containerd.image_records().await?;
        Ok(Arc::new(self.view_of(records.into_iter().map(|r| (r.name.clone(), r)).collect()).await))
    }

    /// Groups `records` into CRI images by the config their target leads to.
    async fn view_of(&self, records: BTreeMap<String, ImageRecord>) -> View {
        let mut groups: BTreeMap<ImageId, (Arc<Details>, Vec<&ImageRecord>)> = BTreeMap::new();
        for record in records.values() {
            let Some(target) = &record.target else { continue };
            let details = match self.details(target).await {
                Ok(details) => details,
                Err(err) => {
                    // A record whose content is gone (e.g. removed behind our back) is no image.
                    tracing::warn!(name = %record.name, error = %err, "skipping an unreadable image record");
                    continue;
                }
            };
            groups.entry(details.id.clone()).or_insert_with(|| (details, Vec::new())).1.push(record);
        }
        let images: Vec<Arc<Image>> =
            groups.into_iter().map(|(id, (details, records))| Arc::new(image_of(id, &records, details))).collect();
        let by_name = images
            .iter()
            .flat_map(|image| image.record_names.iter().map(move |name| (name.clone(), image.clone())))
            .collect();
        View { records, images, by_name }
    }

    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// Every CRI image, from the namespace's image records.
    pub async fn list(&self) -> Result<Vec<Image>, StoreError> {
        Ok(self.view().await?.images.iter().map(|image| Image::clone(image)).collect())
    }

    /// The image `name` names (an id, a tag or a digest reference), if there is one.
    pub async fn find(&self, name: &ImageName) -> Result<Option<Image>, StoreError> {
        let record_name = match name {
            ImageName::Id(id) => id.to_string(),
            ImageName::Reference(reference) => reference.record_name(),
        };
        if let Some(image) = self.index.get().and_then(|view| view.by_name.get(&record_name).cloned()) {
            return Ok(Some(Image::clone(&image)));
        }
        // Not in the index (or none is kept): another replica's pull may be ahead of its event.
        let Some(record) = self.containerd.image_record(&record_name).await? else {
            return Ok(None);
        };
        let Some(target) = record.target else { return Ok(None) };
        self.details(&target).await?;
        let records = self.containerd.image_records().await?;
        let view = self.view_of(records.into_iter().map(|r| (r.name.clone(), r)).collect()).await;
        Ok(view.by_name.get(&record_name).map(|image| Image::clone(image)))
    }

    /// The image `input` names, as containerd's CRI resolves it: a full id, or a reference, or
    /// else (like `crictl rmi 3f57d9401f8d`) a unique prefix of an id, with or without
    /// `sha256:`. A name that is none of these (malformed) names no image.
    pub async fn resolve(&self, input: &str) -> Result<Option<Image>, StoreError> {
        let name = ImageName::parse(input);
        if let Ok(name) = &name
            && let Some(image) = self.find(name).await?
        {
            return Ok(Some(image));
        }
        let hex = input.strip_prefix("sha256:").unwrap_or(input);
        let is_prefix =
            !hex.is_empty() && hex.len() < 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_prefix {
            // As containerd's CRI: a name that does not parse names no image (ImageStatus
            // answers none, RemoveImage succeeds); only PullImage rejects it.
            if let Err(err) = name {
                tracing::debug!(error = %err, "the image name does not parse: no such image");
            }
            return Ok(None);
        }
        let view = self.view().await?;
        let mut matches =
            view.images.iter().filter(|image| image.id.digest().is_sha256() && image.id.hex().starts_with(hex));
        Ok(match (matches.next(), matches.next()) {
            (Some(image), None) => Some(Image::clone(image)),
            _ => None,
        })
    }

    /// The details of the image `target` leads to, read from the content store.
    pub async fn details(&self, target: &Target) -> Result<Arc<Details>, StoreError> {
        if let Some(details) = self.details.lock().unwrap_or_else(|p| p.into_inner()).get(&target.digest) {
            return Ok(details.clone());
        }
        let corrupt = |detail: String| StoreError::Corrupt { target: target.digest.clone(), detail };
        let mut size = 0u64;
        let mut manifest_digest = target.digest.clone();
        let mut media_type = target.media_type.clone();
        if oci::is_index(&media_type) {
            let bytes = self.containerd.read_content(&target.digest).await?;
            size += bytes.len() as u64;
            let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("index: {e}")))?;
            let chosen = oci::pick_platform(&index, &oci::host_platform())
                .ok_or_else(|| corrupt("the index has no manifest for this platform".into()))?;
            manifest_digest = chosen.digest().to_string();
            media_type = chosen.media_type().to_string();
        }
        if !oci::is_manifest(&media_type) && !media_type.is_empty() {
            return Err(corrupt(format!("unsupported media type {media_type}")));
        }
        let bytes = self.containerd.read_content(&manifest_digest).await?;
        size += bytes.len() as u64;
        let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("manifest: {e}")))?;
        let config_digest = Digest::from(manifest.config().digest());
        let config_bytes = self.containerd.read_content(config_digest.as_str()).await?;
        size = size.saturating_add(config_bytes.len() as u64);
        size = manifest.layers().iter().fold(size, |sum, l| sum.saturating_add(l.size()));
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| corrupt(format!("config: {e}")))?;
        let config_json: serde_json::Value =
            serde_json::from_slice(&config_bytes).map_err(|e| corrupt(format!("config: {e}")))?;
        let details = Arc::new(Details { id: ImageId::of_config(config_digest), size, config, config_json });
        self.details.lock().unwrap_or_else(|p| p.into_inner()).insert(target.digest.clone(), details.clone());
        Ok(details)
    }
}

fn image_of(id: ImageId, records: &[&ImageRecord], details: Arc<Details>) -> Image {
    let mut repo_tags = Vec::new();
    let mut repo_digests = Vec::new();
    let mut pinned = false;
    let mut record_names = Vec::new();
    for record in records {
        pinned |= record.labels.get(cri::PINNED).map(String::as_str) == Some(cri::PINNED_VALUE);
        record_names.push(record.name.clone());
        if record.name == id.as_str() {
            continue;
        }
        match Reference::parse(&record.name) {
            Ok(reference) if reference.digest.is_some() => repo_digests.push(record.name.clone()),
            Ok(_) => repo_tags.push(record.name.clone()),
            Err(_) => {}
        }
    }
    repo_tags.sort();
    repo_tags.dedup();
    repo_digests.sort();
    repo_digests.dedup();
    Image { id, repo_tags, repo_digests, record_names, pinned, details }
}
