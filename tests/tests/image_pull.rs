//! PullImage end to end: images built from busybox, pushed to a private registry, pulled
//! through the proxy; checked in the CRI answers and in containerd (`ctr`).

mod image_support;

use crisp_testkit::images::{Format, ImageBuilder, index_of};
use crisp_testkit::registry::Registry;
use image_support::*;
use tonic::Code;

#[tokio::test]
async fn pulls_oci_and_docker_images_by_tag_and_digest() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();

    // OCI, one layer, numeric USER.
    let single = ImageBuilder::new(Format::Oci).busybox_layer()?.user("1000").build()?;
    let single_name = registry.push("test/single", "v1", &single).await?;
    // Docker schema 2, three layers, named USER.
    let multi = ImageBuilder::new(Format::Docker)
        .busybox_layer()?
        .file_layer("etc/motd", "layer two\n")
        .file_layer("etc/motd", "layer three wins\n")
        .user("app")
        .build()?;
    let multi_name = registry.push("test/multi", "latest", &multi).await?;

    assert_eq!(pull(&mut client, &single_name).await?, single.id());
    assert_eq!(pull(&mut client, &multi_name).await?, multi.id());

    let s = status(&mut client, &single_name).await?.expect("the pulled image has a status");
    assert_eq!(s.id, single.id());
    assert_eq!(s.repo_tags, vec![single_name.clone()]);
    let single_digest = format!("{}/test/single@{}", registry.host(), single.manifest.digest);
    assert_eq!(s.repo_digests, vec![single_digest.clone()]);
    assert_eq!(s.uid.map(|u| u.value), Some(1000));
    assert_eq!(s.username, "");
    assert_eq!(s.size, single.size());
    assert!(!s.pinned);

    let m = status(&mut client, &multi.id()).await?.expect("status by id");
    assert_eq!(m.repo_tags, vec![multi_name.clone()]);
    assert_eq!(m.uid, None);
    assert_eq!(m.username, "app");

    // Verbose: the image config under "info".
    let verbose = client
        .image_status(crisp_proto::cri::ImageStatusRequest { image: spec(&multi_name), verbose: true })
        .await?
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(verbose.info.get("info").expect("info key"))?;
    assert_eq!(info["imageSpec"]["config"]["User"], "app");
    assert_eq!(info["imageSpec"]["rootfs"]["diff_ids"].as_array().map(|a| a.len()), Some(3));

    // containerd holds the names, the id ref, and the unpacked snapshots.
    let names = ctr_images(&stack)?;
    for name in [&single_name, &single_digest, &single.id(), &multi_name, &multi.id()] {
        assert!(names.contains(name), "ctr images ls lacks {name}: {names:?}");
    }
    let snapshots = stack.ctr(&["snapshots", "ls"])?;
    for diff_id in &single.diff_ids {
        assert!(snapshots.contains(diff_id), "snapshot {diff_id} missing: {snapshots}");
    }
    let content = stack.ctr(&["content", "ls", "-q"])?;
    for layer in multi.layers.iter().chain([&multi.config, &multi.manifest]) {
        assert!(content.contains(&layer.digest), "content {} missing", layer.digest);
    }
    // The GC labels containerd's own pull writes.
    let config_labels = stack.ctr(&["content", "ls"])?;
    assert!(config_labels.contains("containerd.io/gc.ref.snapshot.overlayfs="), "{config_labels}");
    assert!(config_labels.contains("containerd.io/gc.ref.content.l.2="), "{config_labels}");
    assert_no_leases(&stack).await?;

    // A container runs from the unpacked layers, the last layer's file winning.
    let motd = stack.ctr(&["run", "--rm", &multi_name, "crisp-image-test", "/bin/cat", "/etc/motd"])?;
    assert_eq!(motd, "layer three wins\n");

    // By digest: same image, no new tag.
    let by_digest = format!("{}/test/multi@{}", registry.host(), multi.manifest.digest);
    assert_eq!(pull(&mut client, &by_digest).await?, multi.id());
    let m = status(&mut client, &by_digest).await?.expect("status by digest");
    assert_eq!(m.repo_digests, vec![by_digest.clone()]);

    // ListImages shows both; the filter narrows to one.
    let all = list(&mut client).await?;
    assert_eq!(all.len(), 2, "{all:?}");
    let filtered = client
        .list_images(crisp_proto::cri::ListImagesRequest {
            filter: Some(crisp_proto::cri::ImageFilter { image: spec(&single_name) }),
        })
        .await?
        .into_inner()
        .images;
    assert_eq!(filtered.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), vec![single.id()]);

    // An unknown image has no status, and that is no error.
    assert!(status(&mut client, &format!("{}/test/none:v1", registry.host())).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn an_index_resolves_to_this_nodes_platform() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let arm = ImageBuilder::new(Format::Oci).file_layer("arch", "arm/v7\n").platform("arm", Some("v7")).build()?;
    let host = ImageBuilder::new(Format::Oci).busybox_layer()?.build()?;
    let other = if crisp_testkit::images::host_architecture() == "amd64" { "arm64" } else { "amd64" };
    let foreign = ImageBuilder::new(Format::Oci).file_layer("arch", other).platform(other, None).build()?;
    let index = index_of(&[&arm, &host, &foreign], Format::Oci)?;
    let name = registry.push_index("test/multiarch", "v1", &[&arm, &host, &foreign], &index).await?;

    assert_eq!(pull(&mut client, &name).await?, host.id());
    let s = status(&mut client, &name).await?.expect("status");
    assert_eq!(s.repo_digests, vec![format!("{}/test/multiarch@{}", registry.host(), index.digest)]);
    // Only this platform's layers were fetched.
    let content = stack.ctr(&["content", "ls", "-q"])?;
    assert!(content.contains(&host.layers[0].digest));
    assert!(!content.contains(&arm.layers[0].digest) && !content.contains(&foreign.layers[0].digest));

    // A Docker manifest list works the same.
    let list = index_of(&[&foreign, &host], Format::Docker)?;
    let name = registry.push_index("test/multiarch", "docker", &[&foreign, &host], &list).await?;
    assert_eq!(pull(&mut client, &name).await?, host.id());
    assert_no_leases(&stack).await?;

    // An index without this platform is NOT_FOUND.
    let only_foreign = index_of(&[&foreign], Format::Oci)?;
    let name = registry.push_index("test/multiarch", "foreign", &[&foreign], &only_foreign).await?;
    let err = pull(&mut client, &name).await.expect_err("no manifest for this platform");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&name), "{}", err.message());
    Ok(())
}

/// `name:tag@digest` names the image by its digest only, as in containerd (the tag is
/// dropped): no `name:tag` record is written, and one pointing at another image stays.
#[tokio::test]
async fn a_tag_with_a_digest_names_the_image_by_digest_only() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let old = ImageBuilder::new(Format::Oci).busybox_layer()?.file_layer("etc/motd", "old\n").build()?;
    let new = ImageBuilder::new(Format::Oci).busybox_layer()?.file_layer("etc/motd", "new\n").build()?;
    let tagged = registry.push("test/app", "v1", &old).await?;
    registry.push("test/app", "v2", &new).await?;
    assert_eq!(pull(&mut client, &tagged).await?, old.id());

    let both = format!("{tagged}@{}", new.manifest.digest);
    assert_eq!(pull(&mut client, &both).await?, new.id());
    let by_digest = format!("{}/test/app@{}", registry.host(), new.manifest.digest);
    let names = ctr_images(&stack)?;
    assert!(names.contains(&by_digest), "{names:?}");
    assert!(!names.contains(&both), "a record named with tag and digest: {names:?}");
    let s = status(&mut client, &both).await?.expect("status by tag and digest");
    assert_eq!(s.id, new.id());
    assert!(s.repo_tags.is_empty(), "{:?}", s.repo_tags);
    assert_eq!(s.repo_digests, vec![by_digest]);
    // The tag still names the image it named.
    assert_eq!(status(&mut client, &tagged).await?.expect("the tag").id, old.id());
    assert_no_leases(&stack).await?;
    Ok(())
}

/// The `containerd.io/distribution.source.<host>` label of the blob `digest`, as `ctr content
/// ls` prints it (`key=value`, the value listing repositories with commas).
fn source_label(stack: &crisp_testkit::Stack, registry: &Registry, digest: &str) -> anyhow::Result<String> {
    let listing = stack.ctr(&["content", "ls"])?;
    let line = listing.lines().find(|l| l.starts_with(digest)).ok_or_else(|| anyhow::anyhow!("no {digest}"))?;
    let key = format!("containerd.io/distribution.source.{}=", registry.host());
    let value = line.split_once(&key).map(|(_, rest)| rest).unwrap_or_default();
    // Labels are comma-separated too: the value ends where the next `key=` starts.
    let repositories: Vec<&str> = value.split(',').take_while(|part| !part.contains('=')).collect();
    Ok(repositories.join(","))
}

#[tokio::test]
async fn every_blob_lists_each_repository_it_was_pulled_from() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let image = ImageBuilder::new(Format::Oci).busybox_layer()?.file_layer("etc/motd", "one\n").build()?;
    let app = registry.push("team/app", "v1", &image).await?;
    let base = registry.push("team/base", "v1", &image).await?;
    let blobs: Vec<&str> =
        image.layers.iter().chain([&image.config, &image.manifest]).map(|b| b.digest.as_str()).collect();

    pull(&mut client, &app).await?;
    for digest in &blobs {
        assert_eq!(source_label(&stack, &registry, digest)?, "team/app", "{digest}");
    }
    // Everything stored already: only the records and the labels are written.
    pull(&mut client, &base).await?;
    for digest in &blobs {
        assert_eq!(source_label(&stack, &registry, digest)?, "team/app,team/base", "{digest}");
    }
    // A full pull of another image keeps the sources of the layer it shares.
    let other = ImageBuilder::new(Format::Oci).busybox_layer()?.file_layer("etc/motd", "other\n").build()?;
    let other_name = registry.push("team/other", "v1", &other).await?;
    pull(&mut client, &other_name).await?;
    assert_eq!(other.layers[0].digest, image.layers[0].digest);
    assert_eq!(source_label(&stack, &registry, &other.layers[0].digest)?, "team/app,team/base,team/other");
    assert_eq!(source_label(&stack, &registry, &other.layers[1].digest)?, "team/other");
    Ok(())
}
