//! Unpacking layers into containerd's snapshotter the way containerd's own unpacker does:
//! per layer, in chain order, `snapshots.Prepare(key, parent)` → `diff.Apply(layer, mounts)` →
//! check the applied digest is the config's diff id → `snapshots.Commit(chain id, key)`.
//! A layer the direct apply staged already ([`crate::apply`]) replaces the diff service's
//! apply: its tree becomes the prepared snapshot's upper directory.

use containerd_client::types::{Descriptor, Mount};
use crisp_containerd::labels;
use crisp_containerd::{Containerd, ContainerdError, Held, Lease};
use crisp_image_model::{ChainId, Digest};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("layer {layer} unpacked to {applied}, but the image config says its diff id is {expected}")]
    DiffIdMismatch { layer: String, applied: String, expected: String },
    #[error("applying the layer directly")]
    Apply(#[from] crate::apply::ApplyError),
    #[error("the diff service could not apply layer {layer}")]
    DiffApply { layer: String, source: ContainerdError },
}

impl UnpackError {
    /// The gRPC code: containerd's, except that a layer the diff service cannot read as a tar
    /// archive is `INVALID_ARGUMENT`, as the direct apply answers it.
    pub fn code(&self) -> tonic::Code {
        use crisp_errors::GrpcError;
        match self {
            UnpackError::Containerd(err) => err.code(),
            UnpackError::DiffIdMismatch { .. } => tonic::Code::DataLoss,
            UnpackError::Apply(err) => err.code(),
            UnpackError::DiffApply { source, .. } if source.is_unreadable_archive() => tonic::Code::InvalidArgument,
            UnpackError::DiffApply { source, .. } => source.code(),
        }
    }
}

/// Adds the committed snapshot `chain_id` to `lease`.
pub async fn hold_snapshot(lease: &Lease, snapshotter: &str, chain_id: &ChainId) -> Result<(), ContainerdError> {
    lease.hold(Held::Snapshot { snapshotter, key: chain_id.as_str() }).await
}

/// Whether the snapshot `chain_id` is committed, held in `lease` when it is. Held, then looked
/// for again: a garbage collection started in between either took it (false: it is made again)
/// or, once it is held, keeps it and its parents. One not there costs no lease write.
pub async fn hold_if_committed(
    containerd: &Containerd,
    lease: &Lease,
    snapshotter: &str,
    chain_id: &ChainId,
) -> Result<bool, ContainerdError> {
    if !containerd.snapshot_exists(snapshotter, chain_id.as_str()).await? {
        return Ok(false);
    }
    hold_snapshot(lease, snapshotter, chain_id).await?;
    containerd.snapshot_exists(snapshotter, chain_id.as_str()).await
}

/// One layer to unpack on top of `parent`.
pub struct Layer<'a> {
    pub descriptor: Descriptor,
    pub diff_id: &'a Digest,
    pub chain_id: &'a ChainId,
    pub parent: Option<&'a ChainId>,
}

/// Unpacks `layer` (its blob is in the content store) into the snapshot named by its chain id.
/// When that snapshot exists already (another pull, here or in another replica, committed it
/// meanwhile), it is only added to `lease`.
pub async fn unpack_layer(
    containerd: &Containerd,
    snapshotter: &str,
    lease: &Lease,
    layer: Layer<'_>,
    staged: Option<crate::apply::Staged>,
) -> Result<(), UnpackError> {
    if hold_if_committed(containerd, lease, snapshotter, layer.chain_id).await? {
        tracing::debug!("snapshot committed by another pull meanwhile");
        return Ok(());
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let key = format!("extract-{nanos}-{} {}", std::process::id(), layer.chain_id);
    let started = std::time::Instant::now();
    let parent = layer.parent.map(ChainId::as_str);
    let mounts = containerd.prepare_snapshot(snapshotter, lease.id(), &key, parent).await?;
    tracing::debug!(elapsed = ?started.elapsed(), "snapshot prepared");
    let result = apply_and_commit(containerd, snapshotter, lease, &key, mounts, &layer, staged).await;
    if result.is_err()
        && let Err(err) = containerd.remove_snapshot(snapshotter, lease.id(), &key).await
    {
        tracing::warn!(key, error = %err, "removing a failed unpack snapshot");
    }
    result
}

async fn apply_and_commit(
    containerd: &Containerd,
    snapshotter: &str,
    lease: &Lease,
    key: &str,
    mounts: Vec<Mount>,
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
    let applied = containerd
        .apply_diff(lease.id(), &layer.descriptor, mounts)
        .await
        .map_err(|source| UnpackError::DiffApply { layer: layer.descriptor.digest.clone(), source })?;
    tracing::debug!(elapsed = ?started.elapsed(), "diff applied");
    if layer.diff_id != applied.as_str() {
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
    lease: &Lease,
    key: &str,
    layer: &Layer<'_>,
) -> Result<(), UnpackError> {
    let started = std::time::Instant::now();
    // The blob's uncompressed digest, now that the apply showed it (as containerd's unpacker).
    let uncompressed = std::collections::HashMap::from([(labels::UNCOMPRESSED.to_string(), layer.diff_id.to_string())]);
    containerd.set_content_labels(Some(lease.id()), &layer.descriptor.digest, uncompressed).await?;
    match containerd.commit_snapshot(snapshotter, lease.id(), key, layer.chain_id.as_str()).await {
        Ok(()) => {
            tracing::debug!(elapsed = ?started.elapsed(), "snapshot committed");
            Ok(())
        }
        // Another pull committed the same chain first: theirs is identical; drop ours, and hold
        // theirs in our lease (their lease may go, and GC run, before our image record is written).
        Err(err) if err.is_already_exists() => {
            let _ = containerd.remove_snapshot(snapshotter, lease.id(), key).await;
            hold_snapshot(lease, snapshotter, layer.chain_id).await?;
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

/// Against a private containerd (`crisp_testkit`): a chain snapshot another pull committed is
/// held in our lease, whether it is found before `Prepare` or by `Commit` answering
/// ALREADY_EXISTS, so it outlives the other pull's lease.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::create_pull_lease;
    use crisp_containerd::{Ingest, Opened};
    use crisp_testkit::ContainerdProcess;
    use crisp_testkit::images::{Blob, Format, ImageBuilder};

    const SNAPSHOTTER: &str = "overlayfs";

    struct Fixture {
        _dir: tempfile::TempDir,
        _process: ContainerdProcess,
        containerd: Containerd,
        layer: Blob,
        diff_id: Digest,
        chain_id: ChainId,
    }

    /// containerd with one layer committed as a snapshot by another pull, under `other`.
    async fn committed_by_another_pull() -> (Fixture, Lease) {
        let dir = tempfile::tempdir().unwrap();
        let process = ContainerdProcess::start(dir.path()).await.unwrap();
        let containerd = Containerd::connect(process.address(), "crisp-test").unwrap();
        let image = ImageBuilder::new(Format::Oci).file_layer("etc/motd", "held\n").build().unwrap();
        let layer = image.layers[0].clone();
        let diff_id = Digest::parse(&image.diff_ids[0]).unwrap();
        let chain_id = crisp_image_model::chain_ids(std::slice::from_ref(&diff_id)).remove(0);
        let other = create_pull_lease(&containerd, "test", "other").await.unwrap();
        let reference = format!("layer-{}", layer.digest);
        let size = layer.data.len() as i64;
        let Ok(Opened::Ingest(mut ingest)) =
            Ingest::open(&containerd, other.id(), &reference, size, &layer.digest).await
        else {
            panic!("no ingest");
        };
        ingest.write(layer.data.clone()).await.unwrap();
        ingest.commit(Default::default()).await.unwrap();
        let fixture = Fixture { _dir: dir, _process: process, containerd, layer, diff_id, chain_id };
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
                chain_id: &self.chain_id,
                parent: None,
            }
        }

        /// Deletes `lease` with a synchronous garbage collection.
        async fn drop_lease(&self, lease: Lease) {
            self.containerd.delete_lease(&lease.into_id(), true).await.unwrap();
        }

        async fn snapshot_exists(&self) -> bool {
            self.containerd.snapshot_exists(SNAPSHOTTER, self.chain_id.as_str()).await.unwrap()
        }

        /// The snapshot outlives the other pull's lease, and goes with ours.
        async fn assert_held_by(&self, ours: Lease, other: Lease) {
            self.drop_lease(other).await;
            assert!(self.snapshot_exists().await, "the snapshot was collected with the other pull's lease");
            self.drop_lease(ours).await;
            assert!(!self.snapshot_exists().await, "the snapshot outlived every lease");
        }
    }

    #[tokio::test]
    async fn a_snapshot_found_before_prepare_is_held() {
        let (fixture, other) = committed_by_another_pull().await;
        let ours = create_pull_lease(&fixture.containerd, "test", "ours").await.unwrap();
        unpack_layer(&fixture.containerd, SNAPSHOTTER, &ours, fixture.layer(), None).await.unwrap();
        fixture.assert_held_by(ours, other).await;
    }

    #[tokio::test]
    async fn a_snapshot_committed_first_by_another_pull_is_held() {
        let (fixture, other) = committed_by_another_pull().await;
        let ours = create_pull_lease(&fixture.containerd, "test", "ours").await.unwrap();
        // Our Prepare came before their Commit: ours answers ALREADY_EXISTS.
        let key = "extract-test";
        let mounts = fixture.containerd.prepare_snapshot(SNAPSHOTTER, ours.id(), key, None).await.unwrap();
        apply_and_commit(&fixture.containerd, SNAPSHOTTER, &ours, key, mounts, &fixture.layer(), None).await.unwrap();
        fixture.assert_held_by(ours, other).await;
    }
}
