//! Image records in containerd, kept the way containerd's CRI plugin keeps them: one record
//! per name (`repo:tag`, `repo@digest`) plus an id record `sha256:<config digest>`, all with
//! the same target and the label `io.cri-containerd.image=managed`; the pinned (sandbox) image
//! also carries `io.cri-containerd.pinned=pinned`. A CRI image is the group of records whose
//! target leads to the same config. Like containerd's CRI, every image in the namespace counts,
//! also those put there by other clients (`ctr images import` / `pull`): side-loading works.

use crate::content;
use crate::oci;
use crate::reference::{ImageName, Reference};
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image as Record, ListImagesRequest, UpdateImageRequest,
};
use containerd_client::types::Descriptor;
use crisp_containerd::{Containerd, ContainerdError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tonic::Code;

pub const MANAGED_LABEL: &str = "io.cri-containerd.image";
pub const MANAGED_VALUE: &str = "managed";
pub const PINNED_LABEL: &str = "io.cri-containerd.pinned";
pub const PINNED_VALUE: &str = "pinned";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("image {target} in containerd is unreadable: {detail}")]
    Corrupt { target: String, detail: String },
}

impl StoreError {
    pub fn code(&self) -> Code {
        match self {
            StoreError::Containerd(err) => crisp_errors::GrpcError::code(err),
            StoreError::Corrupt { .. } => Code::DataLoss,
        }
    }
}

/// What an image's target leads to: the platform manifest's config and sizes.
#[derive(Debug)]
pub struct Details {
    pub config_digest: String,
    /// Manifest, config and layers (and the index when the target is one), compressed.
    pub size: u64,
    pub config: oci::ImageConfig,
    pub config_json: serde_json::Value,
}

/// Reads images; details are cached by target digest (content is immutable).
#[derive(Clone)]
pub struct ImageStore {
    containerd: Containerd,
    details: Arc<Mutex<HashMap<String, Arc<Details>>>>,
}

/// One CRI image: its id, names and the records that carry them.
#[derive(Debug)]
pub struct Image {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub record_names: Vec<String>,
    pub pinned: bool,
    pub details: Arc<Details>,
}

impl ImageStore {
    pub fn new(containerd: Containerd) -> Self {
        Self { containerd, details: Default::default() }
    }

    /// Every CRI image, from the namespace's image records.
    pub async fn list(&self) -> Result<Vec<Image>, StoreError> {
        let records = self.records().await?;
        let mut groups: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        let mut details_by_id: HashMap<String, Arc<Details>> = HashMap::new();
        for record in records {
            let Some(target) = record.target.clone() else { continue };
            let details = match self.details(&target).await {
                Ok(details) => details,
                Err(err) => {
                    // A record whose content is gone (e.g. removed behind our back) is no image.
                    tracing::warn!(name = %record.name, error = %err, "skipping an unreadable image record");
                    continue;
                }
            };
            let id = details.config_digest.clone();
            details_by_id.entry(id.clone()).or_insert(details);
            groups.entry(id).or_default().push(record);
        }
        Ok(groups
            .into_iter()
            .filter_map(|(id, records)| {
                let details = details_by_id.remove(&id)?;
                Some(image_of(id, records, details))
            })
            .collect())
    }

    /// The image `name` names (an id, a tag or a digest reference), if there is one.
    pub async fn find(&self, name: &ImageName) -> Result<Option<Image>, StoreError> {
        let record_name = match name {
            ImageName::Id(id) => id.clone(),
            ImageName::Reference(reference) => record_name(reference),
        };
        let Some(record) = self.record(&record_name).await? else {
            return Ok(None);
        };
        let Some(target) = record.target else { return Ok(None) };
        let id = self.details(&target).await?.config_digest.clone();
        Ok(self.list().await?.into_iter().find(|image| image.id == id))
    }

    async fn records(&self) -> Result<Vec<Record>, StoreError> {
        Ok(ImagesClient::new(self.containerd.channel())
            .list(ListImagesRequest { filters: vec![] })
            .await
            .map_err(|s| ContainerdError::call("listing images", s))?
            .into_inner()
            .images)
    }

    async fn record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        match ImagesClient::new(self.containerd.channel()).get(GetImageRequest { name: name.to_string() }).await {
            Ok(response) => Ok(response.into_inner().image),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ContainerdError::call("getting an image", s).into()),
        }
    }

    /// Creates or replaces the record `name` → `target`.
    pub async fn put(&self, name: &str, target: &Descriptor, pinned: bool) -> Result<(), StoreError> {
        let mut labels = HashMap::from([(MANAGED_LABEL.to_string(), MANAGED_VALUE.to_string())]);
        if pinned {
            labels.insert(PINNED_LABEL.to_string(), PINNED_VALUE.to_string());
        }
        let record =
            Record { name: name.to_string(), labels, target: Some(target.clone()), created_at: None, updated_at: None };
        let mut client = ImagesClient::new(self.containerd.channel());
        match client.create(CreateImageRequest { image: Some(record.clone()), source_date_epoch: None }).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let mut paths = vec!["target".to_string(), format!("labels.{MANAGED_LABEL}")];
                if pinned {
                    paths.push(format!("labels.{PINNED_LABEL}"));
                }
                let update = UpdateImageRequest {
                    image: Some(record),
                    update_mask: Some(prost_types::FieldMask { paths }),
                    source_date_epoch: None,
                };
                client.update(update).await.map_err(|s| ContainerdError::call("updating an image", s))?;
                Ok(())
            }
            Err(s) => Err(ContainerdError::call("creating an image", s).into()),
        }
    }

    /// Deletes the record `name`; `sync` waits for containerd's garbage collection.
    pub async fn delete(&self, name: &str, sync: bool) -> Result<(), StoreError> {
        let request = DeleteImageRequest { name: name.to_string(), sync, target: None };
        match ImagesClient::new(self.containerd.channel()).delete(request).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::call("deleting an image", s).into()),
        }
    }

    /// The details of the image `target` leads to, read from the content store.
    pub async fn details(&self, target: &Descriptor) -> Result<Arc<Details>, StoreError> {
        if let Some(details) = self.details.lock().unwrap_or_else(|p| p.into_inner()).get(&target.digest) {
            return Ok(details.clone());
        }
        let corrupt = |detail: String| StoreError::Corrupt { target: target.digest.clone(), detail };
        let mut size = 0u64;
        let mut manifest_digest = target.digest.clone();
        let mut media_type = target.media_type.clone();
        if oci::is_index(&media_type) {
            let bytes = content::read_blob(&self.containerd, &target.digest).await?;
            size += bytes.len() as u64;
            let index: oci::Index = serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("index: {e}")))?;
            let chosen = oci::pick_platform(&index, &oci::host_platform())
                .ok_or_else(|| corrupt("the index has no manifest for this platform".into()))?;
            manifest_digest = chosen.digest.clone();
            media_type = chosen.media_type.clone();
        }
        if !oci::is_manifest(&media_type) && !media_type.is_empty() {
            return Err(corrupt(format!("unsupported media type {media_type}")));
        }
        let bytes = content::read_blob(&self.containerd, &manifest_digest).await?;
        size += bytes.len() as u64;
        let manifest: oci::Manifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("manifest: {e}")))?;
        let config_bytes = content::read_blob(&self.containerd, &manifest.config.digest).await?;
        size = size.saturating_add(config_bytes.len() as u64);
        size = manifest.layers.iter().fold(size, |sum, l| sum.saturating_add(l.size.max(0) as u64));
        let config: oci::ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| corrupt(format!("config: {e}")))?;
        let config_json: serde_json::Value =
            serde_json::from_slice(&config_bytes).map_err(|e| corrupt(format!("config: {e}")))?;
        let details = Arc::new(Details { config_digest: manifest.config.digest, size, config, config_json });
        self.details.lock().unwrap_or_else(|p| p.into_inner()).insert(target.digest.clone(), details.clone());
        Ok(details)
    }
}

/// The record name a reference is stored under: `repo@digest` when it has a digest, else
/// `repo:tag`.
pub fn record_name(reference: &Reference) -> String {
    match &reference.digest {
        Some(digest) => reference.with_digest(digest),
        None => reference.to_string(),
    }
}

fn image_of(id: String, records: Vec<Record>, details: Arc<Details>) -> Image {
    let mut repo_tags = Vec::new();
    let mut repo_digests = Vec::new();
    let mut pinned = false;
    let mut record_names = Vec::new();
    for record in &records {
        pinned |= record.labels.get(PINNED_LABEL).map(String::as_str) == Some(PINNED_VALUE);
        record_names.push(record.name.clone());
        if record.name == id {
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

impl Image {
    /// The CRI view of the image.
    pub fn to_cri(&self) -> crisp_proto::cri::Image {
        let (uid, username) = oci::image_user(&self.details.config);
        crisp_proto::cri::Image {
            id: self.id.clone(),
            repo_tags: self.repo_tags.clone(),
            repo_digests: self.repo_digests.clone(),
            size: self.details.size,
            uid: uid.map(|value| crisp_proto::cri::Int64Value { value }),
            username,
            spec: Some(crisp_proto::cri::ImageSpec { image: self.id.clone(), ..Default::default() }),
            pinned: self.pinned,
        }
    }
}
