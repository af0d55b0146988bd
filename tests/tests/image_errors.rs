//! Error codes for registries that misbehave in ways `docker-registry` does not (served by
//! `image_support::fake`): a token server that is down or failing is UNAVAILABLE (only its
//! 401/403 mean refused credentials), a blob body that ends early is UNAVAILABLE naming the
//! host, and another 4xx is UNKNOWN.

mod image_support;

use crisp_testkit::images::Format;
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
