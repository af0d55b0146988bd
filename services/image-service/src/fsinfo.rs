//! ImageFsInfo: what images use on disk, from containerd itself — the snapshotter's usage of
//! every snapshot (`snapshots.Usage`: bytes and inodes, what containerd's own CRI reports)
//! and the content store's blobs (sizes from `content.List`, one inode per blob). The
//! mountpoints are the snapshotter's and content store's roots as containerd's
//! introspection service exports them.

use crate::error::ImageError;
use crisp_containerd::Containerd;
use crisp_proto::cri::{FilesystemIdentifier, FilesystemUsage, UInt64Value};

pub async fn image_fs_info(containerd: &Containerd, snapshotter: &str) -> Result<Vec<FilesystemUsage>, ImageError> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default();
    let (snap_bytes, snap_inodes) = containerd.snapshot_usage(snapshotter).await?;
    let (content_bytes, content_inodes) = containerd.content_usage().await?;
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
