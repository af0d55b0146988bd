//! Unpacking layers into containerd's snapshotter the way containerd's own unpacker does:
//! per layer, in chain order, `snapshots.Prepare(key, parent)` → `diff.Apply(layer, mounts)` →
//! check the applied digest is the config's diff id → `snapshots.Commit(chain id, key)`.

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
    let result = apply_and_commit(containerd, snapshotter, lease, &key, mounts, &layer).await;
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
) -> Result<(), UnpackError> {
    let started = std::time::Instant::now();
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
    // The blob's uncompressed digest, now that the apply showed it (as containerd's unpacker).
    let uncompressed = std::collections::HashMap::from([(UNCOMPRESSED_LABEL.to_string(), applied)]);
    content::set_labels(containerd, Some(lease), &layer.descriptor.digest, uncompressed).await?;
    let commit = CommitSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        name: layer.chain_id.to_string(),
        key: key.to_string(),
        labels: Default::default(),
    };
    match SnapshotsClient::new(containerd.channel()).commit(leased(commit, lease)).await {
        Ok(_) => Ok(()),
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
