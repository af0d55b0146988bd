//! The metadata paths kept cheap: a pull of an image whose content is all stored asks the
//! registry one `HEAD` and fetches nothing; a RemoveImage answers once the records are gone
//! (containerd's garbage collection frees the content right after), and the image pulls again.

mod image_support;

use crisp_testkit::images::{BuiltImage, Format, sha256};
use crisp_testkit::registry::Registry;
use image_support::fake::{FakeServer, Recorded, Reply};
use image_support::*;
use std::time::Duration;

/// A registry serving `image` as `test/app:v1` (manifest by tag and digest, config and layers
/// by digest), recording every request.
async fn serving(image: &BuiltImage) -> anyhow::Result<FakeServer> {
    let manifest = image.manifest.clone();
    let blobs: Vec<_> = image.layers.iter().chain([&image.config]).cloned().collect();
    FakeServer::start_on("127.0.0.1", move |request: &Recorded| {
        let path = request.path.as_str();
        if path == "/v2/" {
            return Reply::new(200, "{}");
        }
        let manifest_paths =
            ["/v2/test/app/manifests/v1".to_string(), format!("/v2/test/app/manifests/{}", manifest.digest)];
        if manifest_paths.iter().any(|p| p == path) {
            return Reply::new(200, manifest.data.clone())
                .header("Content-Type", &manifest.media_type)
                .header("Docker-Content-Digest", &manifest.digest);
        }
        match blobs.iter().find(|b| path == format!("/v2/test/app/blobs/{}", b.digest)) {
            Some(blob) => Reply::new(200, blob.data.clone()).header("Docker-Content-Digest", &blob.digest),
            None => Reply::new(404, r#"{"errors":[{"code":"NOT_FOUND"}]}"#),
        }
    })
    .await
}

/// The requests' `METHOD path` lines, the `/v2/` pings left out.
fn calls(requests: &[Recorded]) -> Vec<String> {
    requests.iter().filter(|r| r.path != "/v2/").map(|r| format!("{} {}", r.method, r.path)).collect()
}

#[tokio::test]
async fn a_pull_of_a_stored_image_asks_the_registry_one_head() -> anyhow::Result<()> {
    let image = busybox(Format::Oci)?;
    let registry = serving(&image).await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let name = format!("{}/test/app:v1", registry.host());

    assert_eq!(pull(&mut client, &name).await?, image.id());
    let first = calls(&registry.requests());
    for blob in image.layers.iter().chain([&image.config]) {
        assert!(first.contains(&format!("GET /v2/test/app/blobs/{}", blob.digest)), "{first:?}");
    }

    // Stored whole: one HEAD for the tag, no GET at all; the image is as before.
    for _ in 0..2 {
        assert_eq!(pull(&mut client, &name).await?, image.id());
    }
    let again = calls(&registry.requests()[first.len()..]);
    assert_eq!(again, vec!["HEAD /v2/test/app/manifests/v1"; 2], "an already stored pull");
    let s = status(&mut client, &name).await?.expect("pulled");
    assert_eq!((s.id, s.size), (image.id(), image.size()));
    assert_eq!(s.repo_digests, vec![format!("{}/test/app@{}", registry.host(), image.manifest.digest)]);
    assert_no_leases(&stack).await?;

    // By digest too: the HEAD names the digest.
    let by_digest = format!("{}/test/app@{}", registry.host(), image.manifest.digest);
    let before = registry.requests().len();
    assert_eq!(pull(&mut client, &by_digest).await?, image.id());
    let by_digest_calls = calls(&registry.requests()[before..]);
    assert_eq!(by_digest_calls, vec![format!("HEAD /v2/test/app/manifests/{}", image.manifest.digest)]);
    Ok(())
}

#[tokio::test]
async fn a_stored_image_whose_snapshot_is_gone_is_unpacked_again() -> anyhow::Result<()> {
    let image = busybox(Format::Docker)?;
    let registry = serving(&image).await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let name = format!("{}/test/app:v1", registry.host());
    assert_eq!(pull(&mut client, &name).await?, image.id());
    // The top snapshot goes behind the image service's back; the blobs stay.
    let top = sha256(format!("{} {}", image.diff_ids[0], image.diff_ids[1]).as_bytes());
    stack.ctr(&["snapshots", "rm", &top])?;
    assert!(!stack.ctr(&["snapshots", "ls"])?.contains(&top));
    let before = registry.requests().len();
    assert_eq!(pull(&mut client, &name).await?, image.id());
    assert!(stack.ctr(&["snapshots", "ls"])?.contains(&top), "unpacked again");
    // The blobs were there: no layer fetched.
    let again = calls(&registry.requests()[before..]);
    assert!(again.iter().all(|c| !c.contains("/blobs/")), "{again:?}");
    Ok(())
}

#[tokio::test]
async fn a_removed_image_is_gone_at_once_and_collected_soon() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let image = busybox(Format::Oci)?;
    let name = registry.push("test/app", "v1", &image).await?;
    let top = sha256(format!("{} {}", image.diff_ids[0], image.diff_ids[1]).as_bytes());
    for round in 0..3 {
        assert_eq!(pull(&mut client, &name).await?, image.id(), "pull {round}");
        assert!(list(&mut client).await?.iter().any(|i| i.id == image.id()));
        remove(&mut client, &name).await?;
        // Gone from every CRI answer and from containerd's records when RemoveImage answers.
        assert!(status(&mut client, &name).await?.is_none(), "round {round}");
        assert!(status(&mut client, &image.id()).await?.is_none(), "round {round}");
        assert!(list(&mut client).await?.iter().all(|i| i.id != image.id()), "round {round}");
        assert!(ctr_images(&stack)?.is_empty(), "round {round}");
    }
    // containerd's collection follows: content and snapshots go within seconds.
    let collected = eventually(|| {
        let content = stack.ctr(&["content", "ls", "-q"])?;
        let snapshots = stack.ctr(&["snapshots", "ls"])?;
        let blobs = image.layers.iter().chain([&image.config, &image.manifest]);
        Ok(blobs.clone().all(|b| !content.contains(&b.digest)) && !snapshots.contains(&top))
    })
    .await?;
    assert!(collected, "content or snapshots left after the removal");
    // And it pulls again, whole.
    assert_eq!(pull(&mut client, &name).await?, image.id());
    assert!(stack.ctr(&["snapshots", "ls"])?.contains(&top));
    Ok(())
}

/// Polls `check` for up to 5 seconds; answers whether it held.
async fn eventually(check: impl Fn() -> anyhow::Result<bool>) -> anyhow::Result<bool> {
    for _ in 0..50 {
        if check()? {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}
