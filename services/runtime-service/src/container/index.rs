//! What ListContainers answers, kept in memory so a list of hundreds of containers does not
//! read every record (each carries its whole OCI spec) from containerd: the CRI view of every
//! container, loaded from containerd on first use and after every (re)subscription to its
//! events, then kept by the lifecycle's own writes (create, state changes, remove), which are
//! the only writes of what it holds (metadata, image, labels, annotations, state, created
//! time). Containers made or removed behind crisp's back show after the next reload.
//! An async lock covers the load, so a write that races a load is applied after it.

use super::record::{self, Stored};
use super::select::Selector;
use super::{ContainerError, Containers};
use crisp_proto::cri::{Container, ImageSpec};
use std::collections::HashMap;

/// The index: None until loaded.
pub type Index = tokio::sync::Mutex<Option<HashMap<String, Container>>>;

/// The CRI view of a stored container.
pub fn cri_container(s: &Stored) -> Container {
    Container {
        id: s.id.clone(),
        pod_sandbox_id: s.info.sandbox_id.clone(),
        metadata: s.config.metadata.clone(),
        image: Some(ImageSpec { image: s.info.image.clone(), ..Default::default() }),
        image_ref: s.info.image_ref.clone(),
        state: s.state.cri() as i32,
        created_at: s.info.created_at,
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
        image_id: s.info.image_id.clone(),
    }
}

impl Containers {
    /// Every container, from the index (loaded from containerd when it is not).
    pub async fn indexed(&self) -> Result<Vec<Container>, ContainerError> {
        let mut index = self.inner.index.lock().await;
        if index.is_none() {
            let all = record::list(&self.containerd, &Selector::default()).await?;
            *index = Some(all.iter().map(|s| (s.id.clone(), cri_container(s))).collect());
        }
        Ok(index.as_ref().map(|i| i.values().cloned().collect()).unwrap_or_default())
    }

    /// Puts `stored` in the index (if it is loaded).
    pub(super) async fn index_put(&self, stored: &Stored) {
        if let Some(index) = self.inner.index.lock().await.as_mut() {
            index.insert(stored.id.clone(), cri_container(stored));
        }
    }

    pub(super) async fn index_remove(&self, id: &str) {
        if let Some(index) = self.inner.index.lock().await.as_mut() {
            index.remove(id);
        }
    }

    /// Forgets the index: the next list reads containerd again.
    pub(super) async fn index_reload(&self) {
        *self.inner.index.lock().await = None;
    }

    /// Writes `stored`'s state and info to its record, and the index.
    pub(super) async fn save(&self, stored: &Stored) -> Result<(), ContainerError> {
        record::save(&self.containerd, stored).await?;
        self.index_put(stored).await;
        Ok(())
    }
}
