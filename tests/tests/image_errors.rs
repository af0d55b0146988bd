//! Error codes for registries that misbehave in ways `docker-registry` does not (served by
//! `image_support::fake`): a token server that is down or failing is UNAVAILABLE (only its
//! 401/403 mean refused credentials), a blob body that ends early is UNAVAILABLE naming the
//! host, another 4xx is UNKNOWN, and a layer that does not unpack to its diff id is DATA_LOSS
//! (and gets no `containerd.io/uncompressed` label).

mod image_support;

use crisp_testkit::images::{Blob, Format, sha256};
use image_support::fake::{FakeServer, Reply};
use image_support::*;
use tonic::Code;

/// A registry answering every request with a Bearer challenge pointing at `realm`.
async fn challenging(realm: String) -> anyhow::Result<FakeServer> {
    FakeServer::start(move |_, _| {
        Reply::new(401, "").header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="fake",scope="repository:test/app:pull""#),
        )
    })
    .await
}

#[tokio::test]
async fn token_server_failures_are_unavailable_and_its_refusal_unauthenticated() -> anyhow::Result<()> {
    let stack = stack().await?;
    let mut client = stack.image_client();

    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let registry = challenging(format!("http://{closed}/token")).await?;
    let name = format!("{}/test/app:v1", registry.host());
    let err = pull(&mut client, &name).await.expect_err("token server down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&name), "{}", err.message());

    for (status, code) in [(503, Code::Unavailable), (500, Code::Unavailable), (401, Code::Unauthenticated)] {
        let token = FakeServer::start(move |_, _| Reply::new(status, "")).await?;
        let registry = challenging(format!("http://{}/token", token.host())).await?;
        let name = format!("{}/test/app:v1", registry.host());
        let err = pull(&mut client, &name).await.expect_err("token refused");
        assert_eq!(err.code(), code, "token server answering {status}: {err:?}");
        assert!(err.message().contains(&name), "{}", err.message());
    }
    assert_no_leases(&stack).await?;
    Ok(())
}

#[tokio::test]
async fn a_blob_body_ending_early_is_unavailable_and_other_4xx_unknown() -> anyhow::Result<()> {
    let image = busybox(Format::Oci)?;
    let (manifest, config, layers) = (image.manifest.clone(), image.config.clone(), image.layers.clone());
    let registry = FakeServer::start(move |_, path| {
        if path.ends_with("/manifests/v1") {
            return Reply::new(200, manifest.data.clone()).header("Content-Type", &manifest.media_type);
        }
        if path.ends_with(&format!("/blobs/{}", config.digest)) {
            return Reply::new(200, config.data.clone());
        }
        if let Some(layer) = layers.iter().find(|l| path.ends_with(&format!("/blobs/{}", l.digest))) {
            // A complete HTTP answer, but shorter than the layer.
            return Reply::new(200, layer.data[..layer.data.len() / 2].to_vec());
        }
        if path.ends_with("/manifests/bad") {
            return Reply::new(400, r#"{"errors":[{"code":"BAD","message":"no"}]}"#);
        }
        Reply::new(404, "")
    })
    .await?;
    let stack = stack().await?;
    let mut client = stack.image_client();

    let name = format!("{}/test/app:v1", registry.host());
    let err = pull(&mut client, &name).await.expect_err("short layer");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("127.0.0.1"), "names the host: {}", err.message());
    assert!(image.layers.iter().any(|l| err.message().contains(&l.digest)), "names the blob: {}", err.message());
    assert!(ctr_images(&stack)?.is_empty());

    let bad = format!("{}/test/app:bad", registry.host());
    let err = pull(&mut client, &bad).await.expect_err("400");
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    assert!(err.message().contains("400"), "{}", err.message());
    assert_no_leases(&stack).await?;
    Ok(())
}

#[tokio::test]
async fn a_diff_id_mismatch_is_data_loss_and_labels_nothing() -> anyhow::Result<()> {
    let good = busybox(Format::Oci)?;
    // The same layers under a config whose last diff id is wrong.
    let mut config: serde_json::Value = serde_json::from_slice(&good.config.data)?;
    let wrong = sha256(b"not what the layer unpacks to");
    let last = good.diff_ids.len() - 1;
    config["rootfs"]["diff_ids"][last] = serde_json::Value::String(wrong.clone());
    let bad_config = Blob::new(&good.config.media_type, serde_json::to_vec(&config)?);
    let mut manifest: serde_json::Value = serde_json::from_slice(&good.manifest.data)?;
    manifest["config"]["digest"] = bad_config.digest.clone().into();
    manifest["config"]["size"] = bad_config.data.len().into();
    let bad_manifest = Blob::new(&good.manifest.media_type, serde_json::to_vec(&manifest)?);
    let mut blobs = good.layers.clone();
    blobs.push(good.config.clone());
    blobs.push(bad_config);
    let manifests = [("good", good.manifest.clone()), ("bad", bad_manifest)];
    let registry = FakeServer::start(move |_, path| {
        if let Some((_, m)) = manifests.iter().find(|(tag, _)| path.ends_with(&format!("/manifests/{tag}"))) {
            return Reply::new(200, m.data.clone()).header("Content-Type", &m.media_type);
        }
        match blobs.iter().find(|b| path.ends_with(&format!("/blobs/{}", b.digest))) {
            Some(blob) => Reply::new(200, blob.data.clone()),
            None => Reply::new(404, ""),
        }
    })
    .await?;
    let stack = stack().await?;
    let mut client = stack.image_client();

    // The good image keeps the layers in the store, labelled with their real diff ids.
    assert_eq!(pull(&mut client, &format!("{}/test/app:good", registry.host())).await?, good.id());
    let err = pull(&mut client, &format!("{}/test/app:bad", registry.host())).await.expect_err("diff id");
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains(&good.layers[last].digest), "names the layer: {}", err.message());
    let content = stack.ctr(&["content", "ls"])?;
    let line = content.lines().find(|l| l.starts_with(&good.layers[last].digest)).expect("the layer is kept");
    assert!(!line.contains(&wrong), "the layer was labelled with the unverified diff id: {line}");
    assert!(line.contains(&format!("containerd.io/uncompressed={}", good.diff_ids[last])), "{line}");
    assert_no_leases(&stack).await?;
    Ok(())
}
