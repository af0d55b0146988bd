//! RemoveImage by each kind of name, names shared by one image, and ImageFsInfo.

mod image_support;

use crisp_proto::cri::ImageFsInfoRequest;
use crisp_testkit::images::{Format, ImageBuilder, sha256};
use crisp_testkit::registry::Registry;
use image_support::*;

#[tokio::test]
async fn remove_by_tag_digest_or_id_removes_every_name() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let image = busybox(Format::Oci)?;
    let v1 = registry.push("test/app", "v1", &image).await?;
    let v2 = registry.push("test/app", "v2", &image).await?;
    let by_digest = format!("{}/test/app@{}", registry.host(), image.manifest.digest);
    let other = ImageBuilder::new(Format::Oci).busybox_layer()?.file_layer("x", "other\n").build()?;
    let other_name = registry.push("test/other", "v1", &other).await?;
    pull(&mut client, &other_name).await?;

    // The top snapshot's name (containerd's chain id); the busybox layer below is shared.
    let top_chain_id = sha256(format!("{} {}", image.diff_ids[0], image.diff_ids[1]).as_bytes());
    for name_kind in ["tag", "digest", "id", "short id"] {
        pull(&mut client, &v1).await?;
        pull(&mut client, &v2).await?;
        let s = status(&mut client, &v2).await?.expect("pulled");
        assert_eq!(s.repo_tags, vec![v1.clone(), v2.clone()], "one image with both tags");
        let short = status(&mut client, &image.id()[7..19]).await?.expect("status by a short id");
        assert_eq!(short.id, image.id());
        let target = match name_kind {
            "tag" => v1.clone(),
            "digest" => by_digest.clone(),
            "id" => image.id(),
            // What `crictl images` shows and `crictl rmi` takes: a short id.
            _ => image.id()["sha256:".len().."sha256:".len() + 12].to_string(),
        };
        remove(&mut client, &target).await?;
        for name in [&v1, &v2, &by_digest, &image.id()] {
            assert!(status(&mut client, name).await?.is_none(), "{name} still there after removing by {name_kind}");
        }
        let names = ctr_images(&stack)?;
        assert_eq!(names.iter().filter(|n| n.contains("test/app") || **n == image.id()).count(), 0, "{names:?}");
        assert!(names.contains(&other_name), "another image went too: {names:?}");
        // containerd's GC follows the removal: the layers and snapshots go.
        let collected = collected_soon(|| {
            let content = stack.ctr(&["content", "ls", "-q"])?;
            let snapshots = stack.ctr(&["snapshots", "ls"])?;
            Ok(!content.contains(&image.layers[1].digest) && !snapshots.contains(&top_chain_id))
        })
        .await?;
        assert!(collected, "layer content or snapshot left after removing by {name_kind}");
    }
    // Three garbage collections later, the other image (held only by its records and the GC
    // labels on its blobs) is whole: content, snapshots, and a container runs.
    let content = stack.ctr(&["content", "ls", "-q"])?;
    for blob in other.layers.iter().chain([&other.config, &other.manifest]) {
        assert!(content.contains(&blob.digest), "{} was collected", blob.digest);
    }
    let snapshots = stack.ctr(&["snapshots", "ls"])?;
    let other_top = sha256(format!("{} {}", other.diff_ids[0], other.diff_ids[1]).as_bytes());
    assert!(snapshots.contains(&other_top), "the other image's snapshot was collected");
    let check = stack.ctr(&["images", "check"])?;
    assert!(check.lines().any(|l| l.starts_with(&other_name) && l.contains("complete")), "{check}");

    // Removing what is absent succeeds.
    remove(&mut client, &v1).await?;
    remove(&mut client, &format!("sha256:{}", "0".repeat(64))).await?;
    // As with containerd: a name that does not parse is no image (not INVALID_ARGUMENT).
    for malformed in ["Upper/Case", "app:", "a b", "app@sha256:xyz"] {
        assert!(status(&mut client, malformed).await?.is_none(), "{malformed}");
        remove(&mut client, malformed).await?;
    }
    assert_eq!(list(&mut client).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn image_fs_info_reports_what_images_use() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let used = |r: &crisp_proto::cri::ImageFsInfoResponse| -> (u64, u64) {
        r.image_filesystems.iter().fold((0, 0), |(b, i), fs| {
            (b + fs.used_bytes.as_ref().map_or(0, |v| v.value), i + fs.inodes_used.as_ref().map_or(0, |v| v.value))
        })
    };
    let before = client.image_fs_info(ImageFsInfoRequest {}).await?.into_inner();
    let image = ImageBuilder::new(Format::Oci).busybox_layer()?.data_layer(2 << 20, 7).build()?;
    let name = registry.push("test/big", "v1", &image).await?;
    pull(&mut client, &name).await?;
    let after = client.image_fs_info(ImageFsInfoRequest {}).await?.into_inner();

    let mountpoints: Vec<_> =
        after.image_filesystems.iter().filter_map(|f| f.fs_id.as_ref()).map(|f| f.mountpoint.clone()).collect();
    assert!(mountpoints.iter().any(|m| m.ends_with("io.containerd.snapshotter.v1.overlayfs")), "{mountpoints:?}");
    assert!(mountpoints.iter().any(|m| m.ends_with("io.containerd.content.v1.content")), "{mountpoints:?}");
    let (bytes_before, inodes_before) = used(&before);
    let (bytes_after, inodes_after) = used(&after);
    // The unpacked 2 MiB data layer and busybox, plus the compressed blobs.
    assert!(bytes_after >= bytes_before + (3 << 20), "{bytes_before} -> {bytes_after}");
    assert!(inodes_after > inodes_before + 5, "{inodes_before} -> {inodes_after}");
    Ok(())
}

#[tokio::test]
async fn images_other_clients_put_in_the_namespace_count_too() -> anyhow::Result<()> {
    // Side-loading, as with containerd's CRI: `ctr images pull` (or import) into the namespace.
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let image = busybox(Format::Docker)?;
    let name = registry.push("side/loaded", "v1", &image).await?;
    stack.ctr(&["images", "pull", "--plain-http", &name])?;

    let listed = list(&mut client).await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, image.id());
    assert_eq!(listed[0].repo_tags, vec![name.clone()]);
    let s = status(&mut client, &name).await?.expect("a side-loaded image has a status");
    assert_eq!(s.size, image.size());
    // It has no id record: removing its last record lets containerd's GC collect it all the
    // same, so its content and snapshots go.
    assert!(!ctr_images(&stack)?.contains(&image.id()));
    remove(&mut client, &name).await?;
    assert!(ctr_images(&stack)?.is_empty());
    let collected = collected_soon(|| {
        let content = stack.ctr(&["content", "ls", "-q"])?;
        let snapshots = stack.ctr(&["snapshots", "ls"])?;
        let mut blobs = image.layers.iter().chain([&image.config, &image.manifest]);
        Ok(blobs.all(|blob| !content.contains(&blob.digest)) && !snapshots.contains(&image.diff_ids[0]))
    })
    .await?;
    assert!(collected, "content or snapshots left after removing the image");
    Ok(())
}

/// Polls `check` for up to 5 seconds: containerd collects garbage right after a deletion
/// (RemoveImage does not wait for it).
async fn collected_soon(check: impl Fn() -> anyhow::Result<bool>) -> anyhow::Result<bool> {
    for _ in 0..50 {
        if check()? {
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(false)
}
