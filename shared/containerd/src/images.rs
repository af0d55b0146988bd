//! containerd's image records: a name pointing at a target descriptor (a manifest or index),
//! with labels. What a CRI image is made of them is the image model's business
//! (`crisp-image-model`); this is the records alone.

use crate::{Containerd, ContainerdError};
use containerd_client::services::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image as Record, ListImagesRequest, UpdateImageRequest,
};
use containerd_client::types::Descriptor;
use std::collections::HashMap;

pub use containerd_client::services::v1::Image as ImageRecord;

impl Containerd {
    /// Every image record in the namespace.
    pub async fn image_records(&self) -> Result<Vec<ImageRecord>, ContainerdError> {
        Ok(self
            .images()
            .list(ListImagesRequest { filters: vec![] })
            .await
            .map_err(|s| ContainerdError::call("listing images", s))?
            .into_inner()
            .images)
    }

    /// The image record `name`, if there is one.
    pub async fn image_record(&self, name: &str) -> Result<Option<ImageRecord>, ContainerdError> {
        match self.images().get(GetImageRequest { name: name.to_string() }).await {
            Ok(response) => Ok(response.into_inner().image),
            Err(s) => match ContainerdError::call("getting an image", s) {
                err if err.is_not_found() => Ok(None),
                err => Err(err),
            },
        }
    }

    /// Creates the record `name` → `target` with `labels`, or, when it exists, points it at
    /// `target` and sets those labels (its other labels stay).
    pub async fn put_image_record(
        &self,
        name: &str,
        target: &Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let mut paths = vec!["target".to_string()];
        paths.extend(labels.keys().map(|key| format!("labels.{key}")));
        let record =
            Record { name: name.to_string(), labels, target: Some(target.clone()), created_at: None, updated_at: None };
        let mut client = self.images();
        match client.create(CreateImageRequest { image: Some(record.clone()), source_date_epoch: None }).await {
            Ok(_) => Ok(()),
            Err(s) => match ContainerdError::call("creating an image", s) {
                err if err.is_already_exists() => {
                    let update = UpdateImageRequest {
                        image: Some(record),
                        update_mask: Some(prost_types::FieldMask { paths }),
                        source_date_epoch: None,
                    };
                    client.update(update).await.map_err(|s| ContainerdError::call("updating an image", s))?;
                    Ok(())
                }
                err => Err(err),
            },
        }
    }

    /// Deletes the record `name` (an absent one is deleted already); `sync` waits for the
    /// garbage collection that follows.
    pub async fn delete_image_record(&self, name: &str, sync: bool) -> Result<(), ContainerdError> {
        let request = DeleteImageRequest { name: name.to_string(), sync, target: None };
        match self.images().delete(request).await {
            Ok(_) => Ok(()),
            Err(s) => match ContainerdError::call("deleting an image", s) {
                err if err.is_not_found() => Ok(()),
                err => Err(err),
            },
        }
    }
}
