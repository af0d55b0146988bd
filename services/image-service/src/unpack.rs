//! Unpacking layers into containerd's snapshotter the way containerd's own unpacker does:
//! per layer, in chain order, `snapshots.Prepare(key, parent)` → `diff.Apply(layer, mounts)` →
//! check the applied digest is the config's diff id → `snapshots.Commit(chain id, key)`.
//! A layer the direct apply staged already ([`crate::apply`]) replaces the diff service's
//! apply: its tree becomes the prepared snapshot's upper directory.

use crate::content::{self, leased};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::types::Descriptor;
use crisp_containerd::{Containerd, ContainerdError};
use tonic::Code;

/// The label on a layer blob naming its uncompressed digest (its diff id).
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("layer {layer} unpacked to {applied}, but the image config says its diff id is {expected}")]
    DiffIdMismatch { layer: String, applied: String, expected: String },
    #[error("applying the layer directly")]
    Apply(#[from] crate::apply::ApplyError),
}

/// Whether the snapshot `chain_id` is committed already.
pub async fn snapshot_exists(
    containerd: &Containerd,
    snapshotter: &str,
    chain_id: &str,
) -> Result<bool, ContainerdError> {
    let request = StatSnapshotRequest { snapshotter: snapshotter.to_string(), key: chain_id.to_string() };
    match SnapshotsClient::new(containerd.channel()).stat(request).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(ContainerdError::call("snapshot stat", s)),
    }
}

/// Adds the committed snapshot `chain_id` to `lease`.
pub async fn hold_snapshot(
    containerd: &Containerd,
    snapshotter: &str,
    lease: &str,
    chain_id: &str,
) -> Result<(), ContainerdError> {
    content::hold(containerd, lease, &format!("snapshots/{snapshotter}"), chain_id).await
}

/// One layer to unpack on top of `parent`.
pub struct Layer<'a> {
    pub descriptor: Descriptor,
    pub diff_id: &'a str,
    pub chain_id: &'a str,
    pub parent: Option<&'a str>,
}

/// Unpacks `layer` (its blob is in the content store) into the snapshot named by its chain id.
/// When that snapshot exists already (another pull, here or in another replica, committed it
/// meanwhile), it is only added to `lease`.
pub async fn unpack_layer(
    containerd: &Containerd,
    snapshotter: &str,
    lease: &str,
    layer: Layer<'_>,
    staged: Option<crate::apply::Staged>,
) -> Result<(), UnpackError> {
    if snapshot_exists(containerd, snapshotter, layer.chain_id).await? {
        hold_snapshot(containerd, snapshotter, lease, layer.chain_id).await?;
        tracing::debug!("snapshot committed by another pull meanwhile");
        return Ok(());
    }
    let mut snapshots = SnapshotsClient::new(containerd.channel());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let key = format!("extract-{nanos}-{} {}", std::process::id(), layer.chain_id);
    let prepare = PrepareSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        key: key.clone(),
        parent: layer.parent.unwrap_or_default().to_string(),
        labels: Default::default(),
    };
    let started = std::time::Instant::now();
    let mounts = snapshots
        .prepare(leased(prepare, lease))
        .await
        .map_err(|s| ContainerdError::call("snapshot prepare", s))?
        .into_inner()
        .mounts;
    tracing::debug!(elapsed = ?started.elapsed(), "snapshot prepared");
    let result = apply_and_commit(containerd, snapshotter, lease, &key, mounts, &layer, staged).await;
    if result.is_err() {
        let remove = RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.clone() };
        if let Err(s) = snapshots.remove(leased(remove, lease)).await
            && s.code() != Code::NotFound
        {
            tracing::warn!(key, error = %s.message(), "removing a failed unpack snapshot");
        }
    }
    result
}

async fn apply_and_commit(
    containerd: &Containerd,
    snapshotter: &str,
    lease: &str,
    key: &str,
    mounts: Vec<containerd_client::types::Mount>,
    layer: &Layer<'_>,
    staged: Option<crate::apply::Staged>,
) -> Result<(), UnpackError> {
    let started = std::time::Instant::now();
    if let Some(staged) = staged {
        tokio::task::spawn_blocking(move || staged.install(&mounts))
            .await
            .map_err(|e| crate::apply::ApplyError::Thread(e.to_string()))??;
        tracing::debug!(elapsed = ?started.elapsed(), "staged layer moved into the snapshot");
        return commit(containerd, snapshotter, lease, key, layer).await;
    }
    let apply =
        ApplyRequest { diff: Some(layer.descriptor.clone()), mounts, payloads: Default::default(), sync_fs: false };
    let applied = DiffClient::new(containerd.channel())
        .apply(leased(apply, lease))
        .await
        .map_err(|s| ContainerdError::call("diff apply", s))?
        .into_inner()
        .applied
        .map(|d| d.digest)
        .unwrap_or_default();
    tracing::debug!(elapsed = ?started.elapsed(), "diff applied");
    if applied != layer.diff_id {
        return Err(UnpackError::DiffIdMismatch {
            layer: layer.descriptor.digest.clone(),
            applied,
            expected: layer.diff_id.to_string(),
        });
    }
    commit(containerd, snapshotter, lease, key, layer).await
}

/// Commits the active snapshot `key` as the layer's chain id; the layer's diff id is verified.
async fn commit(
    containerd: &Containerd,
    snapshotter: &str,
    lease: &str,
    key: &str,
    layer: &Layer<'_>,
) -> Result<(), UnpackError> {
    let started = std::time::Instant::now();
    // The blob's uncompressed digest, now that the apply showed it (as containerd's unpacker).
    let uncompressed = std::collections::HashMap::from([(UNCOMPRESSED_LABEL.to_string(), layer.diff_id.to_string())]);
    content::set_labels(containerd, Some(lease), &layer.descriptor.digest, uncompressed).await?;
    let commit = CommitSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        name: layer.chain_id.to_string(),
        key: key.to_string(),
        labels: Default::default(),
    };
    match SnapshotsClient::new(containerd.channel()).commit(leased(commit, lease)).await {
        Ok(_) => {
            tracing::debug!(elapsed = ?started.elapsed(), "snapshot committed");
            Ok(())
        }
        // Another pull committed the same chain first: theirs is identical; drop ours, and hold
        // theirs in our lease (their lease may go, and GC run, before our image record is written).
        Err(s) if s.code() == Code::AlreadyExists => {
            let remove = RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.to_string() };
            let _ = SnapshotsClient::new(containerd.channel()).remove(leased(remove, lease)).await;
            hold_snapshot(containerd, snapshotter, lease, layer.chain_id).await?;
            Ok(())
        }
        Err(s) => Err(ContainerdError::call("snapshot commit", s).into()),
    }
}

/// Against a private containerd (`crisp_testkit`): a chain snapshot another pull committed is
/// held in our lease, whether it is found before `Prepare` or by `Commit` answering
/// ALREADY_EXISTS, so it outlives the other pull's lease.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{self, Ingest, Opened};
    use containerd_client::services::v1::DeleteRequest;
    use containerd_client::services::v1::leases_client::LeasesClient;
    use crisp_testkit::ContainerdProcess;
    use crisp_testkit::images::{Blob, Format, ImageBuilder};

    const SNAPSHOTTER: &str = "overlayfs";

    struct Fixture {
        _dir: tempfile::TempDir,
        _process: ContainerdProcess,
        containerd: Containerd,
        layer: Blob,
        diff_id: String,
    }

    /// containerd with one layer committed as a snapshot by another pull, under `other`.
    async fn committed_by_another_pull() -> (Fixture, String) {
        let dir = tempfile::tempdir().unwrap();
        let process = ContainerdProcess::start(dir.path()).await.unwrap();
        let containerd = Containerd::connect(process.address(), "crisp-test").unwrap();
        let image = ImageBuilder::new(Format::Oci).file_layer("etc/motd", "held\n").build().unwrap();
        let (layer, diff_id) = (image.layers[0].clone(), image.diff_ids[0].clone());
        let other = content::create_lease(&containerd, "test", "other").await.unwrap();
        let reference = format!("layer-{}", layer.digest);
        let size = layer.data.len() as i64;
        let Ok(Opened::Ingest(mut ingest)) = Ingest::open(&containerd, &other, &reference, size, &layer.digest).await
        else {
            panic!("no ingest");
        };
        ingest.write(layer.data.clone()).await.unwrap();
        ingest.commit(Default::default()).await.unwrap();
        let fixture = Fixture { _dir: dir, _process: process, containerd, layer, diff_id };
        unpack_layer(&fixture.containerd, SNAPSHOTTER, &other, fixture.layer(), None).await.unwrap();
        (fixture, other)
    }

    impl Fixture {
        fn layer(&self) -> Layer<'_> {
            Layer {
                descriptor: Descriptor {
                    media_type: self.layer.media_type.clone(),
                    digest: self.layer.digest.clone(),
                    size: self.layer.data.len() as i64,
                    annotations: Default::default(),
                },
                diff_id: &self.diff_id,
                chain_id: &self.diff_id,
                parent: None,
            }
        }

        /// Deletes `lease` with a synchronous garbage collection.
        async fn drop_lease(&self, lease: &str) {
            let request = DeleteRequest { id: lease.to_string(), sync: true };
            LeasesClient::new(self.containerd.channel()).delete(request).await.unwrap();
        }

        async fn snapshot_exists(&self) -> bool {
            snapshot_exists(&self.containerd, SNAPSHOTTER, &self.diff_id).await.unwrap()
        }

        /// The snapshot outlives the other pull's lease, and goes with ours.
        async fn assert_held_by(&self, ours: &str, other: &str) {
            self.drop_lease(other).await;
            assert!(self.snapshot_exists().await, "the snapshot was collected with the other pull's lease");
            self.drop_lease(ours).await;
            assert!(!self.snapshot_exists().await, "the snapshot outlived every lease");
        }
    }

    #[tokio::test]
    async fn a_snapshot_found_before_prepare_is_held() {
        let (fixture, other) = committed_by_another_pull().await;
        let ours = content::create_lease(&fixture.containerd, "test", "ours").await.unwrap();
        unpack_layer(&fixture.containerd, SNAPSHOTTER, &ours, fixture.layer(), None).await.unwrap();
        fixture.assert_held_by(&ours, &other).await;
    }

    #[tokio::test]
    async fn a_snapshot_committed_first_by_another_pull_is_held() {
        let (fixture, other) = committed_by_another_pull().await;
        let ours = content::create_lease(&fixture.containerd, "test", "ours").await.unwrap();
        // Our Prepare came before their Commit: ours answers ALREADY_EXISTS.
        let key = "extract-test";
        let prepare = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: key.to_string(),
            parent: String::new(),
            labels: Default::default(),
        };
        let mounts = SnapshotsClient::new(fixture.containerd.channel())
            .prepare(leased(prepare, &ours))
            .await
            .unwrap()
            .into_inner()
            .mounts;
        apply_and_commit(&fixture.containerd, SNAPSHOTTER, &ours, key, mounts, &fixture.layer(), None).await.unwrap();
        fixture.assert_held_by(&ours, &other).await;
    }
}
