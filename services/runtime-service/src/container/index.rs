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
//! Readers never wait on containerd: the index is a map behind a short (never held across an
//! `.await`) mutex (entries behind `Arc`, so a Status clones one outside it), and
//! ListContainers reads a snapshot ([`View`]: the containers side by side, newest first) built at
//! most once per change, so a List only filters and clones what it answers; the unfiltered
//! answer (the kubelet's PLEG asks for it every second) is encoded at most once per change too.
//!
//! An async turn is taken by every writer — a load, an event's read-and-put, crisp's own
//! puts — so a write of crisp's that races a load or an event's read is applied after it: the
//! index never ends older than containerd's record. A reader waits on the turn only while the
//! index is unloaded.

use super::record::{self, Stored};
use super::select::Selector;
use super::status::cri_status;
use super::{ContainerError, Containers};
use bytes::Bytes;
use crisp_containerd::events::ContainerEvent;
use crisp_proto::cri::{Container, ContainerStatus, ImageSpec};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError};
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

/// A snapshot of the loaded index: every container's List answer, newest first (the order
/// ListContainers answers in), side by side in one vector for a fast walk and clone; and the
/// unfiltered answer encoded, once, by the first List that asks for it.
#[derive(Debug, Default)]
pub struct View {
    newest_first: Vec<Container>,
    unfiltered: OnceLock<Bytes>,
}

impl View {
    fn new(entries: &HashMap<String, Arc<Entry>>) -> Self {
        let mut newest_first: Vec<_> = entries.values().map(|e| e.container.clone()).collect();
        newest_first.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        View { newest_first, unfiltered: OnceLock::new() }
    }

    /// Every container, newest first.
    pub fn values(&self) -> impl Iterator<Item = &Container> {
        self.newest_first.iter()
    }

    /// ListContainers' answer to an empty filter, as one gRPC message frame
    /// ([`super::list::encode_frame`]), encoded at the first call on this snapshot. Two first
    /// calls at once may both encode it; neither waits for the other.
    pub fn unfiltered_frame(&self) -> Bytes {
        if let Some(frame) = self.unfiltered.get() {
            return frame.clone();
        }
        let frame = super::list::encode_frame(&self.newest_first);
        self.unfiltered.get_or_init(|| frame).clone()
    }
}

/// The loaded index and its snapshot (None after a change, until the next reader builds it).
#[derive(Debug, Default)]
struct Loaded {
    entries: HashMap<String, Arc<Entry>>,
    view: Option<Arc<View>>,
}

impl Loaded {
    /// The snapshot, built here if a change outdated it.
    fn view(&mut self) -> Arc<View> {
        self.view.get_or_insert_with(|| Arc::new(View::new(&self.entries))).clone()
    }
}

/// The index: unloaded until first used, and after a reload.
#[derive(Debug, Default)]
pub struct Index {
    /// Taken by every writer, and by a reader that finds the index unloaded.
    turn: tokio::sync::Mutex<()>,
    /// None while unloaded. Held only for map operations, never across an `.await`.
    loaded: std::sync::Mutex<Option<Loaded>>,
}

/// [`Index::try_lock`] found the index being written.
#[derive(Debug)]
pub struct Busy;

impl Index {
    fn loaded(&self) -> std::sync::MutexGuard<'_, Option<Loaded>> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current snapshot (None while unloaded), built here if a change outdated it.
    fn view(&self) -> Option<Arc<View>> {
        let mut loaded = self.loaded();
        let loaded = loaded.as_mut()?;
        Some(loaded.view())
    }

    /// The current snapshot without waiting (for the metrics' scrape): Ok(None) while unloaded,
    /// Err while a writer holds the map this instant.
    pub fn try_lock(&self) -> Result<Option<Arc<View>>, Busy> {
        match self.loaded.try_lock() {
            Ok(guard) => drop(guard),
            Err(std::sync::TryLockError::Poisoned(_)) => {}
            Err(std::sync::TryLockError::WouldBlock) => return Err(Busy),
        }
        Ok(self.view())
    }

    /// Applies `change` to the loaded entries (nothing while unloaded). The caller holds the turn.
    fn change(&self, change: impl FnOnce(&mut HashMap<String, Arc<Entry>>)) {
        if let Some(loaded) = self.loaded().as_mut() {
            change(&mut loaded.entries);
            loaded.view = None;
        }
    }
}

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
fn resolve(index: &HashMap<String, Arc<Entry>>, id: &str) -> Result<Option<Arc<Entry>>, ContainerError> {
    if let Some(entry) = index.get(id) {
        return Ok(Some(entry.clone()));
    }
    let mut matching = index.iter().filter(|(key, _)| key.starts_with(id)).map(|(_, entry)| entry);
    match (matching.next(), matching.next()) {
        (None, _) => Ok(None),
        (Some(entry), None) => Ok(Some(entry.clone())),
        (Some(_), Some(_)) => Err(ContainerError::Ambiguous(id.to_string())),
    }
}

impl Containers {
    /// Runs `read` on the loaded index, loading it from containerd first when it is not (and
    /// again if a reload unloaded it in between).
    async fn with_loaded<T>(&self, mut read: impl FnMut(&mut Loaded) -> T) -> Result<T, ContainerError> {
        let index = &self.inner.index;
        loop {
            if let Some(loaded) = index.loaded().as_mut() {
                return Ok(read(loaded));
            }
            let _turn = index.turn.lock().await;
            if index.loaded().is_some() {
                continue;
            }
            let all = record::list(&self.containerd, &Selector::default()).await?;
            let entries = all.iter().map(|s| (s.id.clone(), Arc::new(Entry::new(s)))).collect();
            *index.loaded() = Some(Loaded { entries, view: None });
        }
    }

    /// The index's snapshot, loading the index from containerd when it is not loaded.
    async fn view(&self) -> Result<Arc<View>, ContainerError> {
        self.with_loaded(Loaded::view).await
    }

    /// ListContainers' answer to an empty filter, encoded ([`View::unfiltered_frame`]): the
    /// same bytes for every call until the index changes.
    pub async fn unfiltered_frame(&self) -> Result<Bytes, ContainerError> {
        Ok(self.view().await?.unfiltered_frame())
    }

    /// Every container, newest first, from the index (loaded from containerd when it is not).
    pub async fn indexed(&self) -> Result<Vec<Container>, ContainerError> {
        self.indexed_where(|_| true).await
    }

    /// Every container that passes `keep`, newest first, from the index.
    pub async fn indexed_where(&self, keep: impl Fn(&Container) -> bool) -> Result<Vec<Container>, ContainerError> {
        let view = self.view().await?;
        let mut kept = Vec::with_capacity(view.newest_first.len());
        kept.extend(view.values().filter(|c| keep(c)).cloned());
        Ok(kept)
    }

    /// The status of the container whose id is `id` or starts with it, from the index.
    pub async fn indexed_status(&self, id: &str) -> Result<Option<ContainerStatus>, ContainerError> {
        if id.is_empty() {
            return Err(ContainerError::MissingField("container_id"));
        }
        let found = self.with_loaded(|loaded| resolve(&loaded.entries, id)).await??;
        Ok(found.map(|e| e.status.clone()))
    }

    /// The statuses of the pod's containers, from the index.
    pub async fn indexed_pod_statuses(&self, pod: &str) -> Result<Vec<ContainerStatus>, ContainerError> {
        self.with_loaded(|loaded| {
            loaded.entries.values().filter(|e| e.container.pod_sandbox_id == pod).map(|e| e.status.clone()).collect()
        })
        .await
    }

    /// Puts `stored` in the index (if it is loaded).
    pub(super) async fn index_put(&self, stored: &Stored) {
        let entry = Arc::new(Entry::new(stored));
        let _turn = self.inner.index.turn.lock().await;
        self.inner.index.change(|entries| {
            entries.insert(stored.id.clone(), entry);
        });
    }

    pub(super) async fn index_remove(&self, id: &str) {
        let _turn = self.inner.index.turn.lock().await;
        self.inner.index.change(|entries| {
            entries.remove(id);
        });
    }

    /// Forgets the index: the next use reads containerd again.
    pub(super) async fn index_reload(&self) {
        let _turn = self.inner.index.turn.lock().await;
        *self.inner.index.loaded() = None;
    }

    /// Writes `stored`'s state and info to its record, and the index.
    pub(super) async fn save(&self, stored: &Stored) -> Result<(), ContainerError> {
        record::save(&self.containerd, stored).await?;
        self.index_put(stored).await;
        Ok(())
    }

    /// Brings the index entry of container `id` in line with its record in containerd.
    pub(super) async fn index_refresh(&self, id: &str) {
        let index = &self.inner.index;
        let _turn = index.turn.lock().await;
        if index.loaded().is_none() {
            return;
        }
        match self.containerd.container_record(id).await {
            Ok(Some(found)) if record::is_container(&found) => match record::read(found) {
                Ok(stored) => {
                    let entry = Arc::new(Entry::new(&stored));
                    index.change(|entries| {
                        entries.insert(stored.id.clone(), entry);
                    });
                }
                Err(err) => tracing::warn!(id, error = %err, "an unreadable container record is not listed"),
            },
            Ok(_) => index.change(|entries| {
                entries.remove(id);
            }),
            Err(err) => {
                // The index may now be behind: read it all again at the next use.
                tracing::warn!(id, error = %crisp_errors::message_chain(&err), "reading a changed container record");
                *index.loaded() = None;
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

    fn entry(id: &str) -> Arc<Entry> {
        Arc::new(Entry {
            container: Container { id: id.into(), ..Default::default() },
            status: ContainerStatus { id: id.into(), ..Default::default() },
        })
    }

    #[test]
    fn the_encoded_list_is_the_snapshot_newest_first_and_follows_changes() {
        use crisp_proto::cri::ListContainersResponse;
        use prost::Message;
        let dated = |id: &str, created_at: i64| {
            let mut e = (*entry(id)).clone();
            e.container.created_at = created_at;
            Arc::new(e)
        };
        let index = Index::default();
        let entries = [dated("old", 1), dated("new", 3), dated("mid", 2)];
        let entries = entries.into_iter().map(|e| (e.container.id.clone(), e)).collect();
        *index.loaded() = Some(Loaded { entries, view: None });
        let listed = |index: &Index| {
            let frame = index.view().unwrap().unfiltered_frame();
            let ids = ListContainersResponse::decode(&frame[5..]).unwrap().containers.into_iter().map(|c| c.id);
            ids.collect::<Vec<_>>()
        };
        assert_eq!(listed(&index), ["new", "mid", "old"]);
        // The same snapshot answers the same bytes; a change makes a new one.
        let view = index.view().unwrap();
        assert_eq!(view.unfiltered_frame().as_ptr(), index.view().unwrap().unfiltered_frame().as_ptr());
        index.change(|entries| {
            entries.remove("mid");
            entries.insert("newest".into(), dated("newest", 4));
        });
        assert_eq!(listed(&index), ["newest", "new", "old"]);
    }

    #[test]
    fn an_id_resolves_exactly_then_by_unique_prefix() {
        let index: HashMap<String, Arc<Entry>> =
            ["abc1", "abc2", "abd", "abc"].iter().map(|id| (id.to_string(), entry(id))).collect();
        assert_eq!(resolve(&index, "abc").unwrap().unwrap().status.id, "abc");
        assert_eq!(resolve(&index, "abd").unwrap().unwrap().status.id, "abd");
        assert_eq!(resolve(&index, "abc2").unwrap().unwrap().status.id, "abc2");
        assert!(resolve(&index, "x").unwrap().is_none());
        assert!(matches!(resolve(&index, "ab"), Err(ContainerError::Ambiguous(_))));
    }
}
