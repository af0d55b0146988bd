//! What ListContainers and ContainerStatus answer, kept in memory so neither reads containerd
//! (a record carries the whole OCI spec): the CRI view and status of every container, loaded
//! from containerd on first use and after every (re)subscription to its container events.
//!
//! It stays current two ways:
//! - crisp's own writes (create, state changes, resources, remove) put the record in the index
//!   after containerd took it, so the caller's next List or Status sees its change;
//! - containerd's `/containers/*` events ([`Containers::watch_index`]) bring the changes others
//!   made (a record created or deleted behind crisp's back): the event's record is read again
//!   and put, or forgotten when it is gone.
//!
//! An async lock covers a load and an event's read-and-put, so a write of crisp's that races
//! them is applied after them: the index never ends older than containerd's record.

use super::record::{self, Stored};
use super::select::Selector;
use super::status::cri_status;
use super::{ContainerError, Containers};
use crisp_containerd::events::ContainerEvent;
use crisp_proto::cri::{Container, ContainerStatus, ImageSpec};
use futures::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

/// One container as the index keeps it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// What ListContainers answers.
    pub container: Container,
    /// What ContainerStatus answers (without `verbose`).
    pub status: ContainerStatus,
}

/// The metrics count the index's containers by state.
impl std::ops::Deref for Entry {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.container
    }
}

impl Entry {
    fn new(stored: &Stored) -> Self {
        Entry { container: cri_container(stored), status: cri_status(stored) }
    }
}

/// The index: None until loaded.
pub type Index = tokio::sync::Mutex<Option<HashMap<String, Entry>>>;

/// How long a new subscription is given to reach containerd before the records are read.
const SUBSCRIBE_SETTLE: Duration = Duration::from_millis(200);

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

/// The entry whose id is `id` or, failing that, the one whose id starts with it.
fn resolve<'a>(index: &'a HashMap<String, Entry>, id: &str) -> Result<Option<&'a Entry>, ContainerError> {
    if let Some(entry) = index.get(id) {
        return Ok(Some(entry));
    }
    let mut matching = index.iter().filter(|(key, _)| key.starts_with(id)).map(|(_, entry)| entry);
    match (matching.next(), matching.next()) {
        (None, _) => Ok(None),
        (Some(entry), None) => Ok(Some(entry)),
        (Some(_), Some(_)) => Err(ContainerError::Ambiguous(id.to_string())),
    }
}

impl Containers {
    /// Runs `f` on the loaded index (loading it from containerd when it is not).
    async fn with_index<T>(&self, f: impl FnOnce(&HashMap<String, Entry>) -> T) -> Result<T, ContainerError> {
        let mut index = self.inner.index.lock().await;
        let loaded = match index.take() {
            Some(loaded) => loaded,
            None => {
                let all = record::list(&self.containerd, &Selector::default()).await?;
                all.iter().map(|s| (s.id.clone(), Entry::new(s))).collect()
            }
        };
        let answer = f(&loaded);
        *index = Some(loaded);
        Ok(answer)
    }

    /// Every container, from the index (loaded from containerd when it is not).
    pub async fn indexed(&self) -> Result<Vec<Container>, ContainerError> {
        self.indexed_where(|_| true).await
    }

    /// Every container that passes `keep`, from the index.
    pub async fn indexed_where(&self, keep: impl Fn(&Container) -> bool) -> Result<Vec<Container>, ContainerError> {
        self.with_index(|index| index.values().filter(|e| keep(&e.container)).map(|e| e.container.clone()).collect())
            .await
    }

    /// The status of the container whose id is `id` or starts with it, from the index.
    pub async fn indexed_status(&self, id: &str) -> Result<Option<ContainerStatus>, ContainerError> {
        if id.is_empty() {
            return Err(ContainerError::MissingField("container_id"));
        }
        self.with_index(|index| resolve(index, id).map(|found| found.map(|e| e.status.clone()))).await?
    }

    /// The statuses of the pod's containers, from the index.
    pub async fn indexed_pod_statuses(&self, pod: &str) -> Result<Vec<ContainerStatus>, ContainerError> {
        self.with_index(|index| {
            index.values().filter(|e| e.container.pod_sandbox_id == pod).map(|e| e.status.clone()).collect()
        })
        .await
    }

    /// Puts `stored` in the index (if it is loaded).
    pub(super) async fn index_put(&self, stored: &Stored) {
        if let Some(index) = self.inner.index.lock().await.as_mut() {
            index.insert(stored.id.clone(), Entry::new(stored));
        }
    }

    pub(super) async fn index_remove(&self, id: &str) {
        if let Some(index) = self.inner.index.lock().await.as_mut() {
            index.remove(id);
        }
    }

    /// Forgets the index: the next use reads containerd again.
    pub(super) async fn index_reload(&self) {
        *self.inner.index.lock().await = None;
    }

    /// Writes `stored`'s state and info to its record, and the index.
    pub(super) async fn save(&self, stored: &Stored) -> Result<(), ContainerError> {
        record::save(&self.containerd, stored).await?;
        self.index_put(stored).await;
        Ok(())
    }

    /// Brings the index entry of container `id` in line with its record in containerd.
    pub(super) async fn index_refresh(&self, id: &str) {
        let mut index = self.inner.index.lock().await;
        let Some(loaded) = index.as_mut() else { return };
        match self.containerd.container_record(id).await {
            Ok(Some(found)) if record::is_container(&found) => match record::read(found) {
                Ok(stored) => {
                    loaded.insert(stored.id.clone(), Entry::new(&stored));
                }
                Err(err) => tracing::warn!(id, error = %err, "an unreadable container record is not listed"),
            },
            Ok(_) => {
                loaded.remove(id);
            }
            Err(err) => {
                // The index may now be behind: read it all again at the next use.
                tracing::warn!(id, error = %crisp_errors::message_chain(&err), "reading a changed container record");
                *index = None;
            }
        }
    }

    /// Follows containerd's container record events for as long as the service runs, keeping
    /// the index current with changes made by others; after the stream breaks, subscribes
    /// again and forgets the index (the next use reads every record).
    pub fn watch_index(&self) -> tokio::task::JoinHandle<()> {
        let containers = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                match containers.containerd.container_events().await {
                    Ok(stream) => {
                        // Events from here on are seen: what came before, the reload reads.
                        tokio::time::sleep(SUBSCRIBE_SETTLE).await;
                        containers.index_reload().await;
                        let mut stream = std::pin::pin!(stream);
                        while let Some(event) = stream.next().await {
                            match event {
                                Ok(event) => {
                                    delay = Duration::from_millis(100);
                                    containers.index_event(event).await;
                                }
                                Err(err) => {
                                    tracing::warn!(error = %crisp_errors::message_chain(&err), "containerd's container event stream broke");
                                    break;
                                }
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %crisp_errors::message_chain(&err), "subscribing to container events")
                    }
                }
                containers.index_reload().await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        })
    }

    async fn index_event(&self, event: ContainerEvent) {
        match event {
            ContainerEvent::Deleted(id) => self.index_remove(&id).await,
            ContainerEvent::Created(id) | ContainerEvent::Updated(id) => self.index_refresh(&id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            container: Container { id: id.into(), ..Default::default() },
            status: ContainerStatus { id: id.into(), ..Default::default() },
        }
    }

    #[test]
    fn an_id_resolves_exactly_then_by_unique_prefix() {
        let index: HashMap<String, Entry> =
            ["abc1", "abc2", "abd", "abc"].iter().map(|id| (id.to_string(), entry(id))).collect();
        assert_eq!(resolve(&index, "abc").unwrap().unwrap().status.id, "abc");
        assert_eq!(resolve(&index, "abd").unwrap().unwrap().status.id, "abd");
        assert_eq!(resolve(&index, "abc2").unwrap().unwrap().status.id, "abc2");
        assert!(resolve(&index, "x").unwrap().is_none());
        assert!(matches!(resolve(&index, "ab"), Err(ContainerError::Ambiguous(_))));
    }
}
