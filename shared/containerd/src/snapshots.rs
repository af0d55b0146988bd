//! containerd's snapshotters and diff service: the steps of unpacking a layer
//! (`Prepare` an active snapshot, apply the layer to its mounts, `Commit` it under its chain
//! id), and what the snapshots use on disk.

use crate::lease::{LeaseId, leased};
use crate::{Containerd, ContainerdError};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, ListSnapshotsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
    UsageRequest,
};
use containerd_client::types::{Descriptor, Mount};
use futures::StreamExt;

impl Containerd {
    /// Whether the snapshot `key` exists in `snapshotter`.
    pub async fn snapshot_exists(&self, snapshotter: &str, key: &str) -> Result<bool, ContainerdError> {
        let request = StatSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.to_string() };
        match self.snapshots().stat(request).await {
            Ok(_) => Ok(true),
            Err(s) => match ContainerdError::call("snapshot stat", s) {
                err if err.is_not_found() => Ok(false),
                err => Err(err),
            },
        }
    }

    /// Prepares the active snapshot `key` on `parent` (none: an empty one) under `lease`, and
    /// answers the mounts that make it.
    pub async fn prepare_snapshot(
        &self,
        snapshotter: &str,
        lease: &LeaseId,
        key: &str,
        parent: Option<&str>,
    ) -> Result<Vec<Mount>, ContainerdError> {
        let prepare = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.unwrap_or_default().to_string(),
            labels: Default::default(),
        };
        Ok(self
            .snapshots()
            .prepare(leased(prepare, lease))
            .await
            .map_err(|s| ContainerdError::call("snapshot prepare", s))?
            .into_inner()
            .mounts)
    }

    /// Commits the active snapshot `key` as `name`. A `name` committed already answers an
    /// error for which [`ContainerdError::is_already_exists`] holds.
    pub async fn commit_snapshot(
        &self,
        snapshotter: &str,
        lease: &LeaseId,
        key: &str,
        name: &str,
    ) -> Result<(), ContainerdError> {
        let commit = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            labels: Default::default(),
        };
        self.snapshots()
            .commit(leased(commit, lease))
            .await
            .map_err(|s| ContainerdError::call("snapshot commit", s))?;
        Ok(())
    }

    /// Removes the snapshot `key` (an absent one is removed already).
    pub async fn remove_snapshot(&self, snapshotter: &str, lease: &LeaseId, key: &str) -> Result<(), ContainerdError> {
        let remove = RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.to_string() };
        match self.snapshots().remove(leased(remove, lease)).await {
            Ok(_) => Ok(()),
            Err(s) => match ContainerdError::call("snapshot remove", s) {
                err if err.is_not_found() => Ok(()),
                err => Err(err),
            },
        }
    }

    /// Applies the layer blob `layer` to `mounts` with containerd's diff service, under
    /// `lease`; answers the digest of what was applied (the layer's diff id).
    pub async fn apply_diff(
        &self,
        lease: &LeaseId,
        layer: &Descriptor,
        mounts: Vec<Mount>,
    ) -> Result<String, ContainerdError> {
        let apply = ApplyRequest { diff: Some(layer.clone()), mounts, payloads: Default::default(), sync_fs: false };
        Ok(self
            .diff()
            .apply(leased(apply, lease))
            .await
            .map_err(|s| ContainerdError::call("diff apply", s))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default())
    }

    /// The bytes and inodes every snapshot of `snapshotter` uses (`snapshots.Usage`).
    pub async fn snapshot_usage(&self, snapshotter: &str) -> Result<(u64, u64), ContainerdError> {
        let client = self.snapshots();
        let mut stream = client
            .clone()
            .list(ListSnapshotsRequest { snapshotter: snapshotter.to_string(), filters: vec![] })
            .await
            .map_err(|s| ContainerdError::call("listing snapshots", s))?
            .into_inner();
        let mut keys = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|s| ContainerdError::call("listing snapshots", s))?;
            keys.extend(batch.info.into_iter().map(|i| i.name));
        }
        // A few at a time: an active snapshot's usage walks its directory.
        let usages = futures::stream::iter(keys.into_iter().map(|key| {
            let mut client = client.clone();
            let request = UsageRequest { snapshotter: snapshotter.to_string(), key };
            async move { client.usage(request).await }
        }))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
        let (mut bytes, mut inodes) = (0u64, 0u64);
        for usage in usages {
            match usage {
                Ok(usage) => {
                    let usage = usage.into_inner();
                    bytes += usage.size.max(0) as u64;
                    inodes += usage.inodes.max(0) as u64;
                }
                Err(s) => match ContainerdError::call("snapshot usage", s) {
                    // Removed between list and usage.
                    err if err.is_not_found() => {}
                    err => return Err(err),
                },
            }
        }
        Ok((bytes, inodes))
    }
}
