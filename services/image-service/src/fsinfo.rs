//! ImageFsInfo: what images use on disk, from containerd itself — the snapshotter's usage of
//! every snapshot (`snapshots.Usage`: bytes and inodes, what containerd's own CRI reports)
//! and the content store's blobs (sizes from `content.List`, one inode per blob). The
//! mountpoints are the snapshotter's and content store's roots as containerd's
//! introspection service exports them.
//!
//! Walking every snapshot is too dear for each call (the kubelet asks every few seconds), so
//! calls are answered from [`FsInfo`]: a background task recomputes the usage every refresh
//! period (containerd's CRI: 10 s). A call before the first computation waits for it, and so
//! does the first call after this replica pulled or removed an image (one walk, shared by every
//! caller waiting), so a caller never sees usage older than its own change. A change itself
//! starts no walk: the call that wants one does, so pulls and removals in a row cost one walk,
//! made when it is asked for, not while the next RPCs run. A failed refresh
//! keeps the last good answer (its timestamp tells its age), or answers its error when there is
//! none yet.

use crate::error::ImageError;
use crisp_containerd::Containerd;
use crisp_proto::cri::{FilesystemIdentifier, FilesystemUsage, UInt64Value};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How often the usage is recomputed, as containerd's CRI plugin does.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(10);

type Usage = Result<Vec<FilesystemUsage>, tonic::Status>;

/// The latest answer and the change generation its computation started after.
type Answer = Option<(u64, Usage)>;

/// The cached ImageFsInfo answer and the task that keeps it fresh; the task stops on drop.
pub struct FsInfo {
    latest: watch::Receiver<Answer>,
    /// Bumped by every change; an answer computed from an older generation is stale.
    generation: Arc<AtomicU64>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl FsInfo {
    /// Starts the refresh task (on the current tokio runtime) computing containerd's usage.
    pub fn start(containerd: Containerd, snapshotter: String, period: Duration) -> FsInfo {
        FsInfo::start_with(period, move || {
            let (containerd, snapshotter) = (containerd.clone(), snapshotter.clone());
            async move { image_fs_info(&containerd, &snapshotter).await }
        })
    }

    fn start_with<F, Fut>(period: Duration, compute: F) -> FsInfo
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<FilesystemUsage>, ImageError>> + Send,
    {
        let (tx, latest) = watch::channel(None);
        let changed = Arc::new(Notify::new());
        let generation = Arc::new(AtomicU64::new(0));
        let (signal, current) = (changed.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let started = current.load(Ordering::SeqCst);
                match compute().await {
                    Ok(usage) => {
                        tx.send_replace(Some((started, Ok(usage))));
                    }
                    Err(err) => {
                        tracing::warn!(error = %crisp_errors::message_chain(&err), "computing image filesystem usage failed");
                        let status = tonic::Status::from(err);
                        tx.send_modify(|answer| match answer {
                            Some((generation, Ok(_))) => *generation = started,
                            _ => *answer = Some((started, Err(status))),
                        });
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = signal.notified() => {}
                }
            }
        });
        FsInfo { latest, generation, changed, task }
    }

    /// The latest usage; waits for the first computation, and for one started after the
    /// last [`changed`](FsInfo::changed).
    pub async fn get(&self) -> Usage {
        let wanted = self.generation.load(Ordering::SeqCst);
        let mut latest = self.latest.clone();
        // No answer as new as the last change: ask for a walk (one running now may have
        // started before that change; the request then starts the next one after it).
        if wanted > 0 && latest.borrow().as_ref().is_none_or(|(generation, _)| *generation < wanted) {
            self.changed.notify_one();
        }
        let answer = latest
            .wait_for(|answer| answer.as_ref().is_some_and(|(generation, _)| *generation >= wanted))
            .await
            .map_err(|_| tonic::Status::internal("the image filesystem usage task ended"))?;
        match answer.as_ref() {
            Some((_, usage)) => usage.clone(),
            None => Err(tonic::Status::internal("no image filesystem usage")),
        }
    }

    /// This replica changed what images use (a pull or removal): the next call waits for a
    /// refresh, which it starts.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for FsInfo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn image_fs_info(containerd: &Containerd, snapshotter: &str) -> Result<Vec<FilesystemUsage>, ImageError> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default();
    let (snap_bytes, snap_inodes) = containerd.snapshot_usage(snapshotter).await?;
    let (content_bytes, content_inodes) = containerd.content_usage().await?;
    crate::metrics::METRICS.store_sizes(snap_bytes, content_bytes);
    let snap_root = containerd.plugin_root("io.containerd.snapshotter.v1", snapshotter).await?;
    let content_root = containerd.plugin_root("io.containerd.content.v1", "content").await?;
    let usage = |mountpoint: String, bytes: u64, inodes: u64| FilesystemUsage {
        timestamp,
        fs_id: Some(FilesystemIdentifier { mountpoint }),
        used_bytes: Some(UInt64Value { value: bytes }),
        inodes_used: Some(UInt64Value { value: inodes }),
    };
    Ok(vec![usage(snap_root, snap_bytes, snap_inodes), usage(content_root, content_bytes, content_inodes)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(bytes: u64) -> Vec<FilesystemUsage> {
        vec![FilesystemUsage { used_bytes: Some(UInt64Value { value: bytes }), ..Default::default() }]
    }

    #[tokio::test]
    async fn calls_are_answered_from_the_cache_until_a_change() {
        let walks = Arc::new(AtomicU64::new(0));
        let counter = walks.clone();
        let info = FsInfo::start_with(Duration::from_secs(3600), move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(usage(n * 100)) }
        });
        // The first call waits for the first walk; the next ones reuse it.
        for _ in 0..5 {
            assert_eq!(info.get().await.unwrap(), usage(100));
        }
        assert_eq!(walks.load(Ordering::SeqCst), 1);
        // After a change, the next call sees a walk started after it.
        info.changed();
        assert_eq!(info.get().await.unwrap(), usage(200));
        assert_eq!(info.get().await.unwrap(), usage(200));
        assert_eq!(walks.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn changes_start_no_walk_until_a_call_wants_one() {
        let walks = Arc::new(AtomicU64::new(0));
        let counter = walks.clone();
        let info = FsInfo::start_with(Duration::from_secs(3600), move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(usage(n * 100)) }
        });
        assert_eq!(info.get().await.unwrap(), usage(100));
        for _ in 0..5 {
            info.changed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(walks.load(Ordering::SeqCst), 1, "a change walked");
        // One walk for the five changes, made for the call that wants it.
        assert_eq!(info.get().await.unwrap(), usage(200));
        assert_eq!(walks.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_period_refreshes_in_the_background() {
        let walks = Arc::new(AtomicU64::new(0));
        let counter = walks.clone();
        let info = FsInfo::start_with(Duration::from_millis(50), move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(usage(n)) }
        });
        let first = info.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let later = info.get().await.unwrap();
        assert!(later[0].used_bytes.as_ref().unwrap().value > first[0].used_bytes.as_ref().unwrap().value);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_good_answer() {
        let walks = Arc::new(AtomicU64::new(0));
        let counter = walks.clone();
        let info = FsInfo::start_with(Duration::from_secs(3600), move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Err(ImageError::MissingField("first walk fails")),
                    1 => Ok(usage(7)),
                    _ => Err(ImageError::MissingField("later walk fails")),
                }
            }
        });
        assert!(info.get().await.is_err(), "no good answer yet");
        info.changed();
        assert_eq!(info.get().await.unwrap(), usage(7));
        info.changed();
        assert_eq!(info.get().await.unwrap(), usage(7));
        assert_eq!(walks.load(Ordering::SeqCst), 3);
    }
}
