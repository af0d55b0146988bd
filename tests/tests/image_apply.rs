//! The direct apply (overlayfs): an image of tricky layers pulled through crisp unpacks to
//! exactly the snapshots containerd's own unpacker makes of it (`ctr images pull` in another
//! namespace of the same containerd): every layer's upper directory compared file by file.

mod image_support;

use crisp_testkit::images::{Entry, Format, ImageBuilder, Node, NodeKind, TarCut, sha256};
use crisp_testkit::registry::{Registry, Throttle};
use image_support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const REFERENCE_NS: &str = "crisp-ref";

fn node(path: &str, kind: NodeKind) -> Node {
    Node::new(path, kind)
}

fn file(path: &str, data: &[u8]) -> Node {
    node(path, NodeKind::File(data.to_vec()))
}

fn tricky_image() -> anyhow::Result<crisp_testkit::images::BuiltImage> {
    tricky_builder().build()
}

/// The layers of [`tricky_image`], compression still to choose.
fn tricky_builder() -> ImageBuilder {
    let mut big = Vec::with_capacity(3 << 20);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while big.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    // The first layer: containerd applies it through a bind mount (whiteouts remove).
    let first = vec![
        node("etc", NodeKind::Dir).entry(),
        file("etc/conf", b"first\n").mtime(1_600_000_000).entry(),
        file("etc/old", b"goes\n").entry(),
        Entry::Whiteout { path: "etc/old".into() },
        node("opt", NodeKind::Dir).mode(0o750).owner(1000, 1000).entry(),
        file("opt/app", b"#!/bin/sh\n").mode(0o755).owner(1000, 1001).entry(),
        node("opt/app-link", NodeKind::HardLink("opt/app".into())).mode(0o755).owner(1000, 1001).entry(),
        file("opt/data", b"data").mode(0o600).xattr("user.note", b"hello").xattr("trusted.crisp", b"t").entry(),
        file("opt/sec", b"sec").xattr("security.crisp-test", b"s").entry(),
        // Parents missing: made 0755.
        file("usr/bin/su", b"su").mode(0o4755).entry(),
        file("usr/bin/wall", b"wall").mode(0o2755).owner(0, 5).entry(),
        node("tmp", NodeKind::Dir).mode(0o1777).entry(),
        node("lib", NodeKind::Symlink("usr/lib".into())).entry(),
        // Through the symbolic link: lands in usr/lib.
        file("lib/libx.so", b"\x7fELF").mode(0o755).entry(),
        node("abs", NodeKind::Symlink("/etc/conf".into())).mtime(1_500_000_000).entry(),
        node("run", NodeKind::Dir).entry(),
        node("run/fifo", NodeKind::Fifo).mode(0o620).entry(),
        node("dev", NodeKind::Dir).entry(),
        node("dev/null", NodeKind::CharDevice(1, 3)).mode(0o666).entry(),
        node("dev/loop0", NodeKind::BlockDevice(7, 0)).mode(0o660).owner(0, 6).entry(),
        node("srv", NodeKind::Dir).mode(0o700).owner(1000, 1000).xattr("user.srv", b"1").entry(),
        file("srv/keep", b"keep").entry(),
        file("var/cache/a", b"a").entry(),
        Entry::Opaque { dir: "var/cache".into() },
        file("big", &big).entry(),
    ];
    // On a parent: the overlay upper directory (whiteouts become devices and xattrs).
    let second = vec![
        Entry::Whiteout { path: "etc/conf".into() },
        node("opt", NodeKind::Dir).mode(0o755).owner(1000, 1000).entry(),
        Entry::Opaque { dir: "opt".into() },
        file("opt/new", b"new").entry(),
        // srv is not in this layer: made like the lower one (owner, mode, xattrs).
        file("srv/added", b"added").entry(),
        node("tmp", NodeKind::Dir).mode(0o1777).mtime(1_650_000_000).entry(),
        file("usr/bin/su", b"su2").mode(0o4750).owner(0, 0).entry(),
        node("shared", NodeKind::Dir).mode(0o2775).owner(0, 100).entry(),
        file("shared/f", b"f").mode(0o664).owner(1000, 100).xattr("user.a", b"x").entry(),
        node("shared/h", NodeKind::HardLink("shared/f".into())).mode(0o664).owner(1000, 100).entry(),
        node("shared/s", NodeKind::Symlink("../etc".into())).owner(1000, 100).entry(),
    ];
    // A whiteout then a file of the same name; a whole directory deleted; a file replacing a
    // directory and a directory replacing a file.
    let third = vec![
        Entry::Whiteout { path: "run/fifo".into() },
        file("run/fifo", b"now a file").entry(),
        Entry::Whiteout { path: "var".into() },
        node("big", NodeKind::Dir).entry(),
        file("big/inside", b"in").entry(),
        file("shared", b"no longer a dir").entry(),
    ];
    ImageBuilder::new(Format::Oci).layer(first).layer(second).layer(third)
}

fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => sha256(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// The upper directories of `chain_id` and its parents (top first), through a view.
fn upper_dirs(stack: &crisp_testkit::Stack, namespace: &str, chain_id: &str) -> anyhow::Result<Vec<PathBuf>> {
    let key = format!("crisp-test-view-{}", &chain_id[7..19]);
    let out = stack.containerd().ctr_in(namespace, &["snapshots", "view", "--mounts", &key, chain_id])?;
    let _ = stack.containerd().ctr_in(namespace, &["snapshots", "rm", &key]);
    let mounts: serde_json::Value = serde_json::from_str(out.trim())?;
    // ctr prints Go's field names.
    let field = |name: &str| {
        let value = &mounts[0][name];
        if value.is_null() { mounts[0][name.to_lowercase()].clone() } else { value.clone() }
    };
    let (kind, source) = (field("Type"), field("Source"));
    let options: Vec<String> = field("Options")
        .as_array()
        .map(|o| o.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    match kind.as_str() {
        Some("bind") => Ok(vec![PathBuf::from(source.as_str().unwrap_or_default())]),
        Some("overlay") => {
            let lower = options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))
                .ok_or_else(|| anyhow::anyhow!("no lowerdir in {out}"))?;
            Ok(lower.split(':').map(PathBuf::from).collect())
        }
        other => anyhow::bail!("unexpected mount type {other:?}: {out}"),
    }
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let mut out = BTreeMap::new();
    let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) else { return out };
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let mut value = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(path, name, &mut value[..]) {
            value.truncate(len);
            out.insert(String::from_utf8_lossy(name).into_owned(), value);
        }
    }
    out
}

/// Everything about a tree that an unpack decides, by relative path; and its hard link sets.
/// By relative path, what an entry is; and the sets of paths that are one inode.
type Description = (BTreeMap<String, String>, BTreeSet<Vec<String>>);

fn describe(root: &Path) -> anyhow::Result<Description> {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let rel = path.strip_prefix(root)?.display().to_string();
        let kind = meta.file_type();
        let mut text =
            format!("mode={:o} uid={} gid={} xattrs={:?}", meta.mode(), meta.uid(), meta.gid(), xattrs(&path));
        if kind.is_file() {
            text.push_str(&format!(
                " size={} sha={} mtime={}",
                meta.len(),
                sha256(&std::fs::read(&path)?),
                meta.mtime()
            ));
            if meta.nlink() > 1 {
                inodes.entry(meta.ino()).or_default().push(rel.clone());
            }
        } else if kind.is_symlink() {
            text.push_str(&format!(" target={:?} mtime={}", std::fs::read_link(&path)?, meta.mtime()));
        } else if kind.is_char_device() || kind.is_block_device() {
            text.push_str(&format!(" rdev={}:{}", rustix::fs::major(meta.rdev()), rustix::fs::minor(meta.rdev())));
        } else if kind.is_fifo() {
            text.push_str(&format!(" mtime={}", meta.mtime()));
        } else if kind.is_dir() {
            for child in std::fs::read_dir(&path)? {
                stack.push(child?.path());
            }
        }
        entries.insert(rel, text);
    }
    let links = inodes.into_values().map(|mut v| {
        v.sort();
        v
    });
    Ok((entries, links.collect()))
}

/// Pulls `name` through crisp and through `ctr` (another namespace), checks both have the same
/// chain of snapshots and that every layer's upper directory is the same in both; answers
/// crisp's upper directories, top first.
async fn pull_both_and_compare(
    stack: &crisp_testkit::Stack,
    client: &mut crisp_proto::cri::image_service_client::ImageServiceClient<tonic::transport::Channel>,
    name: &str,
    image: &crisp_testkit::images::BuiltImage,
) -> anyhow::Result<Vec<PathBuf>> {
    assert_eq!(pull(client, name).await?, image.id());
    stack.containerd().ctr_in(REFERENCE_NS, &["images", "pull", "--plain-http", "--snapshotter", "overlayfs", name])?;

    // The same snapshot names (chain ids) in both namespaces.
    let chain = chain_ids(&image.diff_ids);
    for namespace in [stack.namespace(), REFERENCE_NS] {
        let listed = stack.containerd().ctr_in(namespace, &["snapshots", "--snapshotter", "overlayfs", "ls"])?;
        for id in &chain {
            assert!(listed.contains(id.as_str()), "{namespace}: snapshot {id} missing: {listed}");
        }
    }
    let ours = upper_dirs(stack, stack.namespace(), chain.last().unwrap())?;
    let theirs = upper_dirs(stack, REFERENCE_NS, chain.last().unwrap())?;
    assert_eq!(ours.len(), chain.len());
    assert_eq!(theirs.len(), chain.len());
    for (layer, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
        assert_ne!(ours, theirs, "the two namespaces share no snapshot");
        let (our_entries, our_links) = describe(ours)?;
        let (their_entries, their_links) = describe(theirs)?;
        let keys: BTreeSet<_> = our_entries.keys().chain(their_entries.keys()).collect();
        let mut differences = Vec::new();
        for key in keys {
            let (a, b) = (our_entries.get(key), their_entries.get(key));
            if a != b {
                differences.push(format!("{key:?}:\n  crisp:      {a:?}\n  containerd: {b:?}"));
            }
        }
        assert!(differences.is_empty(), "layer {layer} (top is 0) differs:\n{}", differences.join("\n"));
        assert_eq!(our_links, their_links, "layer {layer}: hard link sets");
        assert!(our_entries.len() > 3, "layer {layer} is not empty");
    }
    Ok(ours)
}

#[tokio::test]
async fn direct_apply_matches_containerds_unpack() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let image = tricky_image()?;
    let name = registry.push("test/tricky", "v1", &image).await?;

    let ours = pull_both_and_compare(&stack, &mut client, &name, &image).await?;
    // The things the image is made to test, as they should be.
    let top = &ours[0];
    let middle = &ours[1];
    let bottom = &ours[2];
    assert_eq!(xattrs(&middle.join("opt")).get("trusted.overlay.opaque").map(Vec::as_slice), Some(&b"y"[..]));
    let whiteout = std::fs::symlink_metadata(middle.join("etc/conf"))?;
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert_eq!(std::fs::symlink_metadata(middle.join("srv"))?.mode() & 0o7777, 0o700);
    assert_eq!(std::fs::symlink_metadata(bottom.join("usr/bin/su"))?.mode() & 0o7777, 0o4755);
    assert!(bottom.join("usr/lib/libx.so").is_file());
    assert!(std::fs::symlink_metadata(bottom.join("etc/old")).is_err());
    assert_eq!(std::fs::read(top.join("run/fifo"))?, b"now a file");
    assert_eq!(std::fs::metadata(bottom.join("opt/app"))?.nlink(), 2);

    let listing = stack.ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"])?;
    assert!(!listing.contains("extract-"), "an active unpack snapshot is left: {listing}");
    let staging = stack.containerd().root().join("io.containerd.snapshotter.v1.overlayfs/crisp-staging");
    assert!(staging.is_dir(), "crisp did not use the direct apply (no {})", staging.display());
    let left: Vec<_> = std::fs::read_dir(&staging).map(|d| d.filter_map(|e| e.ok()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "staging directories left: {left:?}");
    Ok(())
}

/// zstd layers (`tar+zstd`, several frames each) go through the direct apply too, and unpack
/// as containerd unpacks them.
#[tokio::test]
async fn zstd_layers_unpack_directly_as_containerd_unpacks_them() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    // Debug: the direct apply logs each layer it extracts.
    let mut stack = crisp_testkit::Stack::start_with(crisp_testkit::StackOptions {
        env: vec![("CRISP_LOG_LEVEL".into(), "info,crisp_image=debug".into())],
        ..Default::default()
    })
    .await?;
    let mut client = stack.image_client();
    let image = tricky_builder().zstd().build()?;
    assert!(image.layers.iter().all(|l| l.media_type == crisp_testkit::images::OCI_LAYER_ZSTD));
    let name = registry.push("test/zstd", "v1", &image).await?;

    let ours = pull_both_and_compare(&stack, &mut client, &name, &image).await?;
    assert_eq!(std::fs::read(ours[0].join("run/fifo"))?, b"now a file");
    let staging = stack.containerd().root().join("io.containerd.snapshotter.v1.overlayfs/crisp-staging");
    assert!(staging.is_dir(), "crisp did not use the direct apply (no {})", staging.display());
    let log = stack.service_log("image-0")?;
    let extracted = log.matches("layer decompressed and extracted").count()
        + log.matches("layer extracted while it downloaded").count();
    assert_eq!(extracted, 3, "the direct apply extracted {extracted} of 3 layers:\n{log}");
    Ok(())
}

/// zstd layers through containerd's diff service (any snapshotter but overlayfs).
#[tokio::test]
async fn zstd_layers_unpack_through_the_diff_service() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack_with("snapshotter = \"native\"").await?;
    let mut client = stack.image_client();
    let image = ImageBuilder::new(Format::Oci)
        .layer(vec![node("etc", NodeKind::Dir).entry(), file("etc/a", &pattern(70_000)).entry()])
        .layer(vec![file("etc/b", b"b\n").entry()])
        .zstd()
        .build()?;
    let name = registry.push("test/zstd-native", "v1", &image).await?;

    assert_eq!(pull(&mut client, &name).await?, image.id());
    let snapshots = stack.containerd().root().join("io.containerd.snapshotter.v1.native/snapshots");
    let top = std::fs::read_dir(&snapshots)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|dir| dir.join("etc/a").is_file() && dir.join("etc/b").is_file())
        .ok_or_else(|| anyhow::anyhow!("no snapshot in {} holds both layers", snapshots.display()))?;
    assert_eq!(std::fs::read(top.join("etc/a"))?, pattern(70_000));
    assert_eq!(std::fs::read(top.join("etc/b"))?, b"b\n");
    Ok(())
}

/// Real files (libraries, executables, their modes) under busybox, as real images hold them.
#[tokio::test]
async fn direct_apply_of_real_files_matches_containerds_unpack() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let image = ImageBuilder::new(Format::Docker)
        .busybox_layer()?
        .system_files_layer(0, 12 << 20)?
        .system_files_layer(12 << 20, 12 << 20)?
        .build()?;
    let name = registry.push("test/real", "v1", &image).await?;
    pull_both_and_compare(&stack, &mut client, &name, &image).await?;
    Ok(())
}

#[tokio::test]
async fn a_layer_whose_diff_id_lies_is_refused_and_leaves_nothing() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let mut image = ImageBuilder::new(Format::Oci).file_layer("etc/a", "a\n").file_layer("etc/b", "b\n").build()?;
    // The config claims another diff id for the second layer.
    let mut config: serde_json::Value = serde_json::from_slice(&image.config.data)?;
    config["rootfs"]["diff_ids"][1] = serde_json::json!(sha256(b"something else"));
    image.config = crisp_testkit::images::Blob::new(&image.config.media_type, serde_json::to_vec(&config)?);
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest.data)?;
    manifest["config"]["digest"] = serde_json::json!(image.config.digest);
    manifest["config"]["size"] = serde_json::json!(image.config.data.len());
    image.manifest = crisp_testkit::images::Blob::new(&image.manifest.media_type, serde_json::to_vec(&manifest)?);
    let name = registry.push("test/liar", "v1", &image).await?;

    let err = pull(&mut client, &name).await.expect_err("the pull fails");
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    let listing = stack.ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"])?;
    assert!(!listing.contains("extract-"), "an active unpack snapshot is left: {listing}");
    let staging = stack.containerd().root().join("io.containerd.snapshotter.v1.overlayfs/crisp-staging");
    // Removal of a dropped staging tree runs in the background.
    for _ in 0..50 {
        let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("staging directories left in {}", staging.display())
}

/// Bytes of `len` that are not all one value.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Two layers whose tar streams end right after their last file's data (sizes not multiples
/// of 512: no padding, no end-of-archive blocks), as `umoci insert` writes them.
fn unpadded_image() -> anyhow::Result<crisp_testkit::images::BuiltImage> {
    ImageBuilder::new(Format::Oci)
        .layer(vec![
            node("etc", NodeKind::Dir).entry(),
            file("etc/a", &pattern(700)).entry(),
            node("usr", NodeKind::Dir).entry(),
            file("usr/last", &pattern(1000)).mode(0o755).entry(),
        ])
        .cut_layer(TarCut::AfterLastData)
        .layer(vec![
            file("etc/b", b"b\n").entry(),
            node("opt", NodeKind::Dir).entry(),
            file("opt/last", &pattern(1333)).entry(),
        ])
        .cut_layer(TarCut::AfterLastData)
        .build()
}

#[tokio::test]
async fn layers_ending_right_after_their_last_file_unpack_as_containerd_unpacks_them() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let image = unpadded_image()?;
    let name = registry.push("test/unpadded", "v1", &image).await?;

    let ours = pull_both_and_compare(&stack, &mut client, &name, &image).await?;
    assert_eq!(std::fs::read(ours[1].join("usr/last"))?, pattern(1000));
    assert_eq!(std::fs::read(ours[0].join("opt/last"))?, pattern(1333));
    let staging = stack.containerd().root().join("io.containerd.snapshotter.v1.overlayfs/crisp-staging");
    assert!(staging.is_dir(), "crisp did not use the direct apply (no {})", staging.display());
    Ok(())
}

/// The same layers through containerd's diff service (any snapshotter but overlayfs).
#[tokio::test]
async fn layers_ending_right_after_their_last_file_unpack_through_the_diff_service() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack_with("snapshotter = \"native\"").await?;
    let mut client = stack.image_client();
    let image = unpadded_image()?;
    let name = registry.push("test/unpadded", "v1", &image).await?;

    assert_eq!(pull(&mut client, &name).await?, image.id());
    // The native snapshotter keeps each committed snapshot whole in a directory of its own; the
    // top one holds both layers' files. (Read in place: an active view made with `ctr` has no
    // lease, and the GC that follows the pull may remove it under the test.)
    let snapshots = stack.containerd().root().join("io.containerd.snapshotter.v1.native/snapshots");
    let top = std::fs::read_dir(&snapshots)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|dir| dir.join("usr/last").is_file() && dir.join("opt/last").is_file())
        .ok_or_else(|| anyhow::anyhow!("no snapshot in {} holds both layers", snapshots.display()))?;
    assert_eq!(std::fs::read(top.join("usr/last"))?, pattern(1000), "in {}", top.display());
    assert_eq!(std::fs::read(top.join("opt/last"))?, pattern(1333));
    let staging = stack.containerd().root().join("io.containerd.snapshotter.v1.overlayfs/crisp-staging");
    assert!(!staging.exists(), "the direct apply was used");

    // A layer cut inside its last file's data is refused there too, as by the direct apply:
    // INVALID_ARGUMENT naming the image and the layer; and no image is recorded.
    let broken = ImageBuilder::new(Format::Oci)
        .layer(vec![file("etc/b", b"b\n").entry(), file("etc/last", &pattern(1000)).entry()])
        .cut_layer(TarCut::InsideLastData)
        .build()?;
    let name = registry.push("test/cut-data", "v1", &broken).await?;
    let err = pull(&mut client, &name).await.expect_err("the pull fails");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    for part in [name.as_str(), broken.layers[0].digest.as_str()] {
        assert!(err.message().contains(part), "no {part:?} in {:?}", err.message());
    }
    assert!(status(&mut client, &name).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_layer_cut_inside_a_header_or_inside_file_data_is_refused_and_leaves_nothing() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    for (cut, repository) in [(TarCut::InsideLastHeader, "test/cut-header"), (TarCut::InsideLastData, "test/cut-data")]
    {
        let image = ImageBuilder::new(Format::Oci)
            .file_layer("etc/a", "a\n")
            .layer(vec![file("etc/b", b"b\n").entry(), file("etc/last", &pattern(1000)).entry()])
            .cut_layer(cut)
            .build()?;
        let name = registry.push(repository, "v1", &image).await?;
        let broken = &image.layers[1].digest;

        let err = pull(&mut client, &name).await.expect_err("the pull fails");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{cut:?}: {err:?}");
        for part in [name.as_str(), broken.as_str(), "tar stream ends after"] {
            assert!(err.message().contains(part), "{cut:?}: no {part:?} in {:?}", err.message());
        }
        // containerd refuses it too.
        let theirs = stack.containerd().ctr_in(REFERENCE_NS, &["images", "pull", "--plain-http", &name]);
        assert!(theirs.is_err(), "{cut:?}: containerd unpacked it");

        // Nothing kept: no image record, no snapshot of the broken layer, no staged tree.
        assert!(status(&mut client, &name).await?.is_none());
        assert!(!ctr_images(&stack)?.contains(&name), "{cut:?}: an image record was written");
        let chain = chain_ids(&image.diff_ids);
        let listing = stack.ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"])?;
        assert!(!listing.contains("extract-"), "{cut:?}: an active unpack snapshot is left: {listing}");
        assert!(!listing.contains(chain[1].as_str()), "{cut:?}: the broken layer was committed: {listing}");
        let staging = stack.containerd().root().join("io.containerd.snapshotter.v1.overlayfs/crisp-staging");
        let mut left = usize::MAX;
        // Removal of a dropped staging tree runs in the background.
        for _ in 0..50 {
            left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(left, 0, "{cut:?}: staging directories left in {}", staging.display());
    }
    Ok(())
}

fn debug_stack_options() -> crisp_testkit::StackOptions {
    crisp_testkit::StackOptions {
        env: vec![("CRISP_LOG_LEVEL".into(), "info,crisp_image=debug".into())],
        ..Default::default()
    }
}

/// Waits (up to 5 s) until the staging area is empty (a dropped tree is removed in the
/// background).
async fn assert_staging_empty(stack: &crisp_testkit::Stack, what: &str) -> anyhow::Result<()> {
    let staging = stack.containerd().root().join("io.containerd.snapshotter.v1.overlayfs/crisp-staging");
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("{what}: {left} staging directories left in {}", staging.display())
}

/// A layer is extracted while it downloads (teed): each of the three layers, gzip and zstd,
/// and the snapshots are containerd's.
#[tokio::test]
async fn layers_extract_while_they_download_as_containerd_unpacks_them() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    for (builder, repository) in [(tricky_builder(), "test/tee-gzip"), (tricky_builder().zstd(), "test/tee-zstd")] {
        // A stack each: the two images unpack to the same snapshots.
        let mut stack = crisp_testkit::Stack::start_with(debug_stack_options()).await?;
        let mut client = stack.image_client();
        let image = builder.build()?;
        let name = registry.push(repository, "v1", &image).await?;
        pull_both_and_compare(&stack, &mut client, &name, &image).await?;
        assert_staging_empty(&stack, repository).await?;
        let log = stack.service_log("image-0")?;
        let teed = log.matches("layer extracted while it downloaded").count();
        assert_eq!(teed, 3, "{repository}: {teed} of 3 layers were extracted while they downloaded:\n{log}");
    }
    Ok(())
}

/// A registry serving a layer whose bytes are not its digest's: the pull fails naming the
/// layer, and nothing of the layer is kept (no content, no ingest, no snapshot, no staged
/// tree, no image record), for gzip and zstd layers.
#[tokio::test]
async fn a_corrupt_layer_fails_the_pull_and_leaves_nothing() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    for (builder, repository) in [
        (ImageBuilder::new(Format::Oci), "test/corrupt-gzip"),
        (ImageBuilder::new(Format::Oci).zstd(), "test/corrupt-zstd"),
    ] {
        let image = builder.file_layer("etc/a", "a\n").data_layer(3 << 20, 7).build()?;
        let name = registry.push(repository, "v1", &image).await?;
        let bad = &image.layers[1];
        let path = registry.blob_path(&bad.digest);
        let mut bytes = std::fs::read(&path)?;
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        std::fs::write(&path, &bytes)?;

        let err = pull(&mut client, &name).await.expect_err("the pull fails");
        assert_eq!(err.code(), tonic::Code::DataLoss, "{repository}: {err:?}");
        for part in [name.as_str(), bad.digest.as_str(), "does not match its digest"] {
            assert!(err.message().contains(part), "{repository}: no {part:?} in {:?}", err.message());
        }
        assert!(status(&mut client, &name).await?.is_none());
        assert!(!stack.ctr(&["content", "ls", "-q"])?.contains(&bad.digest), "{repository}: the layer was kept");
        let active = stack.ctr(&["content", "active"])?;
        assert!(!active.contains(&bad.digest), "{repository}: an ingest of the layer is left: {active}");
        let chain = chain_ids(&image.diff_ids);
        let listing = stack.ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"])?;
        assert!(!listing.contains("extract-"), "{repository}: an active unpack snapshot is left: {listing}");
        assert!(!listing.contains(chain[1].as_str()), "{repository}: the corrupt layer was committed: {listing}");
        assert_staging_empty(&stack, repository).await?;
        assert_no_leases(&stack).await?;
    }
    Ok(())
}

/// A connection cut in the middle of a layer: the download resumes with a range request into
/// the same ingest and extractor, and the layer unpacks as containerd unpacks it. (A resume
/// across tries, where the extractor first reads back what the content store holds, is
/// `image_pull_control`'s `a_pull_killed_half_way_is_resumed`.)
// Several threads: `ctr` (a blocking call) pulls through the proxy, which runs on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_off_mid_layer_resumes_and_unpacks_as_containerd_does() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let mut stack = crisp_testkit::Stack::start_with(debug_stack_options()).await?;
    let mut client = stack.image_client();
    for (builder, repository) in
        [(ImageBuilder::new(Format::Oci), "test/cut-gzip"), (ImageBuilder::new(Format::Oci).zstd(), "test/cut-zstd")]
    {
        // One layer, so the one cut lands inside it (past the manifest and config).
        let image = builder.data_layer(6 << 20, 11).build()?;
        registry.push(repository, "v1", &image).await?;
        let proxy = Throttle::start(registry.addr(), 0).await?;
        proxy.cut_once_after(2 << 20);
        let name = format!("{}/{repository}:v1", proxy.host());
        let pulled = tokio::time::timeout(std::time::Duration::from_secs(60), pull(&mut client, &name)).await;
        let Ok(pulled) = pulled else {
            anyhow::bail!("{repository}: the pull hangs:\n{}", stack.service_log("image-0")?);
        };
        assert_eq!(pulled?, image.id(), "{repository}");
        assert_eq!(proxy.cuts(), 1, "{repository}: no cut happened");
        proxy.cut_once_after(u64::MAX);
        pull_both_and_compare(&stack, &mut client, &name, &image).await?;
        assert_staging_empty(&stack, repository).await?;
    }
    let log = stack.service_log("image-0")?;
    let resumed = log.matches("the download was cut off: resuming it").count();
    assert_eq!(resumed, 2, "{resumed} of 2 downloads resumed:\n{log}");
    Ok(())
}
