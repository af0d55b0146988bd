//! ImageFsInfo: what images use on disk, from containerd itself — the snapshotter's usage of
//! every snapshot (`snapshots.Usage`: bytes and inodes, what containerd's own CRI reports)
//! and the content store's blobs (sizes from `content.List`, one inode per blob). The
//! mountpoints are the snapshotter's and content store's roots as containerd's
//! introspection service exports them.

use crate::error::ImageError;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{ListSnapshotsRequest, UsageRequest};
use containerd_client::services::v1::{ListContentRequest, PluginsRequest};
use crisp_containerd::{Containerd, ContainerdError};
use crisp_proto::cri::{FilesystemIdentifier, FilesystemUsage, UInt64Value};
use futures::StreamExt;

pub async fn image_fs_info(containerd: &Containerd, snapshotter: &str) -> Result<Vec<FilesystemUsage>, ImageError> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default();
    let (snap_bytes, snap_inodes) = snapshot_usage(containerd, snapshotter).await?;
    let (content_bytes, content_inodes) = content_usage(containerd).await?;
    let snap_root = plugin_root(containerd, "io.containerd.snapshotter.v1", snapshotter).await?;
    let content_root = plugin_root(containerd, "io.containerd.content.v1", "content").await?;
    let usage = |mountpoint: String, bytes: u64, inodes: u64| FilesystemUsage {
        timestamp,
        fs_id: Some(FilesystemIdentifier { mountpoint }),
        used_bytes: Some(UInt64Value { value: bytes }),
        inodes_used: Some(UInt64Value { value: inodes }),
    };
    Ok(vec![usage(snap_root, snap_bytes, snap_inodes), usage(content_root, content_bytes, content_inodes)])
}

async fn snapshot_usage(containerd: &Containerd, snapshotter: &str) -> Result<(u64, u64), ContainerdError> {
    let mut client = SnapshotsClient::new(containerd.channel());
    let mut stream = client
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
            // Removed between list and usage.
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(ContainerdError::call("snapshot usage", s)),
        }
    }
    Ok((bytes, inodes))
}

async fn content_usage(containerd: &Containerd) -> Result<(u64, u64), ContainerdError> {
    let mut stream = ContentClient::new(containerd.channel())
        .list(ListContentRequest { filters: vec![] })
        .await
        .map_err(|s| ContainerdError::call("listing content", s))?
        .into_inner();
    let (mut bytes, mut blobs) = (0u64, 0u64);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|s| ContainerdError::call("listing content", s))?;
        for info in batch.info {
            bytes += info.size.max(0) as u64;
            blobs += 1;
        }
    }
    Ok((bytes, blobs))
}

pub(crate) async fn plugin_root(containerd: &Containerd, kind: &str, id: &str) -> Result<String, ContainerdError> {
    let filter = format!("type=={kind},id=={id}");
    let plugins = IntrospectionClient::new(containerd.channel())
        .plugins(PluginsRequest { filters: vec![filter] })
        .await
        .map_err(|s| ContainerdError::call("introspecting plugins", s))?
        .into_inner()
        .plugins;
    Ok(plugins.into_iter().find_map(|p| p.exports.get("root").cloned()).unwrap_or_default())
}
