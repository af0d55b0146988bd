//! containerd's container records (metadata only: id, labels, image, runtime, OCI spec,
//! snapshot, extensions). Pod sandboxes and CRI containers are both kept as records; what they
//! mean is the runtime service's business, this is the records alone.

use crate::{Containerd, ContainerdError};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, GetContainerRequest, UpdateContainerRequest,
};
use std::collections::HashMap;

pub use containerd_client::services::v1::Container as ContainerRecord;

impl Containerd {
    /// Creates the record `container` (an id in use answers [`ContainerdError::is_already_exists`]).
    pub async fn create_container_record(&self, container: Container) -> Result<(), ContainerdError> {
        self.containers()
            .create(CreateContainerRequest { container: Some(container) })
            .await
            .map_err(|s| ContainerdError::call("creating a container record", s))?;
        Ok(())
    }

    /// The record `id`, if there is one.
    pub async fn container_record(&self, id: &str) -> Result<Option<Container>, ContainerdError> {
        match self.containers().get(GetContainerRequest { id: id.to_string() }).await {
            Ok(response) => Ok(response.into_inner().container),
            Err(s) => match ContainerdError::call("getting a container record", s) {
                err if err.is_not_found() => Ok(None),
                err => Err(err),
            },
        }
    }

    /// Sets `labels` on the record `id` (its other labels stay; an empty value removes one).
    pub async fn set_container_labels(&self, id: &str, labels: HashMap<String, String>) -> Result<(), ContainerdError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let container = Container { id: id.to_string(), labels, ..Default::default() };
        self.containers()
            .update(UpdateContainerRequest {
                container: Some(container),
                update_mask: Some(prost_types::FieldMask { paths }),
            })
            .await
            .map_err(|s| ContainerdError::call("updating a container record", s))?;
        Ok(())
    }

    /// Replaces the extension `name` of the record `id`, and sets `labels` in the same update.
    pub async fn set_container_extension(
        &self,
        id: &str,
        name: &str,
        extension: prost_types::Any,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let mut paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        paths.push(format!("extensions.{name}"));
        let container = Container {
            id: id.to_string(),
            labels,
            extensions: HashMap::from([(name.to_string(), extension)]),
            ..Default::default()
        };
        self.containers()
            .update(UpdateContainerRequest {
                container: Some(container),
                update_mask: Some(prost_types::FieldMask { paths }),
            })
            .await
            .map_err(|s| ContainerdError::call("updating a container record", s))?;
        Ok(())
    }

    /// Deletes the record `id`; one already gone is deleted.
    pub async fn delete_container_record(&self, id: &str) -> Result<(), ContainerdError> {
        match self.containers().delete(DeleteContainerRequest { id: id.to_string() }).await {
            Ok(_) => Ok(()),
            Err(s) => match ContainerdError::call("deleting a container record", s) {
                err if err.is_not_found() => Ok(()),
                err => Err(err),
            },
        }
    }
}
