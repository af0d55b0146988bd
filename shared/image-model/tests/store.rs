//! Reading images from a private containerd: an image stored the way the CRI stores it (one
//! record per name plus the id record) is found by each of its names, by a unique id prefix,
//! and not by a prefix two images share; its config, size, chain ids and USER are read back.

use crisp_containerd::containerd_client::types::Descriptor;
use crisp_containerd::{Containerd, Ingest, Lease, Opened};
use crisp_image_model::{ChainId, Digest, ImageStore, chain_ids};
use crisp_testkit::ContainerdProcess;
use crisp_testkit::images::{Blob, BuiltImage, Format, ImageBuilder};
use std::collections::HashMap;
use std::time::Duration;

async fn put_blob(containerd: &Containerd, lease: &Lease, blob: &Blob) {
    let size = blob.data.len() as i64;
    match Ingest::open(containerd, lease.id(), &format!("test-{}", blob.digest), size, &blob.digest).await.unwrap() {
        Opened::Ingest(mut ingest) => {
            ingest.write(blob.data.clone()).await.unwrap();
            ingest.commit(HashMap::new()).await.unwrap();
        }
        Opened::Exists => {}
        Opened::Locked => panic!("nobody else writes here"),
    }
}

/// Stores `image` under `names` and its id, as the image service does (content held by a
/// lease until the records reference it through GC labels is not needed here: the lease is
/// kept for the test's life).
async fn store(containerd: &Containerd, lease: &Lease, image: &BuiltImage, names: &[&str]) {
    for blob in image.layers.iter().chain([&image.config, &image.manifest]) {
        put_blob(containerd, lease, blob).await;
    }
    let target = Descriptor {
        media_type: image.manifest.media_type.clone(),
        digest: image.manifest.digest.clone(),
        size: image.manifest.data.len() as i64,
        annotations: Default::default(),
    };
    let id = image.id();
    for name in names.iter().copied().chain([id.as_str()]) {
        containerd.put_image_record(name, &target, HashMap::new()).await.unwrap();
    }
}

#[tokio::test]
async fn an_image_is_found_by_each_name_with_its_config_chain_and_user() {
    let dir = tempfile::tempdir().unwrap();
    let process = ContainerdProcess::start(dir.path()).await.unwrap();
    let containerd = Containerd::connect(process.address(), "crisp-test").unwrap();
    let lease = Lease::create(&containerd, "test", HashMap::new(), Duration::from_secs(3600)).await.unwrap();

    let app = ImageBuilder::new(Format::Oci)
        .file_layer("etc/a", "a\n")
        .file_layer("etc/b", "b\n")
        .user("1000:1000")
        .build()
        .unwrap();
    let tool = ImageBuilder::new(Format::Docker).file_layer("etc/t", "t\n").user("nobody").build().unwrap();
    let app_digest_name = format!("example.com/app@{}", app.manifest.digest);
    store(&containerd, &lease, &app, &["example.com/app:v1", &app_digest_name]).await;
    store(&containerd, &lease, &tool, &["docker.io/library/tool:latest"]).await;

    let images = ImageStore::new(containerd.clone());
    assert_eq!(images.list().await.unwrap().len(), 2);

    let id = app.id();
    let hex = id.strip_prefix("sha256:").unwrap();
    for name in [id.as_str(), hex, "example.com/app:v1", app_digest_name.as_str(), &hex[..12], &id[..19]] {
        let found = images.resolve(name).await.unwrap().unwrap_or_else(|| panic!("{name} finds no image"));
        assert_eq!(found.id.as_str(), id, "{name}");
        assert_eq!(found.repo_tags, vec!["example.com/app:v1".to_string()]);
        assert_eq!(found.repo_digests, vec![app_digest_name.clone()]);
        assert_eq!(found.details.size, app.size());
        let user = found.details.user();
        assert_eq!((user.uid, user.username.as_str()), (Some(1000), ""));
        let diff_ids: Vec<Digest> = app.diff_ids.iter().map(|d| Digest::parse(d).unwrap()).collect();
        let chain: Vec<ChainId> = found.details.chain_ids().unwrap();
        assert_eq!(chain, chain_ids(&diff_ids));
        assert_eq!(chain.len(), 2);
    }
    // `tool` by its short name, as the kubelet normalises it.
    let tool_image = images.resolve("tool").await.unwrap().unwrap();
    assert_eq!(tool_image.id.as_str(), tool.id());
    assert_eq!(tool_image.details.user().username, "nobody");

    // No image: an unknown name, a malformed one, an empty prefix, a prefix both ids share.
    let common = app.id().chars().zip(tool.id().chars()).take_while(|(a, b)| a == b).count();
    assert!(images.resolve("example.com/app:v2").await.unwrap().is_none());
    assert!(images.resolve("Not A Name").await.unwrap().is_none());
    assert!(images.resolve("sha256:").await.unwrap().is_none());
    // (`sha256:` at least; a shared hex prefix, if any, names both.)
    assert!(images.resolve(&id[..common]).await.unwrap().is_none());
}
