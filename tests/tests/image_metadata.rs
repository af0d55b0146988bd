//! The metadata paths kept cheap: a pull of an image whose content is all stored asks the
//! registry one `HEAD` and fetches nothing; a RemoveImage answers once the records are gone,
//! the next ImageFsInfo answers after containerd's garbage collection of what they held, and
//! the image pulls again.

mod image_support;

use crisp_proto::cri::{ImageFsInfoRequest, ImageFsInfoResponse};
use crisp_testkit::images::{Format, sha256};
use crisp_testkit::registry::Registry;
use image_support::fake::{Recorded, serve_image};
use image_support::*;

/// The requests' `METHOD path` lines, the `/v2/` pings left out.
fn calls(requests: &[Recorded]) -> Vec<String> {
    requests.iter().filter(|r| r.path != "/v2/").map(|r| format!("{} {}", r.method, r.path)).collect()
}

#[tokio::test]
async fn a_pull_of_a_stored_image_asks_the_registry_one_head() -> anyhow::Result<()> {
    let image = busybox(Format::Oci)?;
    let registry = serve_image(&image).await?;
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
    let registry = serve_image(&image).await?;
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
async fn a_removed_image_is_gone_at_once_and_collected_before_the_next_usage() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let image = busybox(Format::Oci)?;
    let name = registry.push("test/app", "v1", &image).await?;
    let top = sha256(format!("{} {}", image.diff_ids[0], image.diff_ids[1]).as_bytes());
    let blobs_left = || -> anyhow::Result<Vec<String>> {
        let content = stack.ctr(&["content", "ls", "-q"])?;
        let blobs = image.layers.iter().chain([&image.config, &image.manifest]);
        Ok(blobs.filter(|b| content.contains(&b.digest)).map(|b| b.digest.clone()).collect())
    };
    let used = |r: &ImageFsInfoResponse| -> u64 {
        r.image_filesystems.iter().map(|fs| fs.used_bytes.as_ref().map_or(0, |v| v.value)).sum()
    };
    for round in 0..3 {
        assert_eq!(pull(&mut client, &name).await?, image.id(), "pull {round}");
        assert!(list(&mut client).await?.iter().any(|i| i.id == image.id()));
        let pulled = client.image_fs_info(ImageFsInfoRequest {}).await?.into_inner();
        remove(&mut client, &name).await?;
        // Gone from every CRI answer and from containerd's records when RemoveImage answers.
        assert!(status(&mut client, &name).await?.is_none(), "round {round}");
        assert!(status(&mut client, &image.id()).await?.is_none(), "round {round}");
        assert!(list(&mut client).await?.iter().all(|i| i.id != image.id()), "round {round}");
        assert!(ctr_images(&stack)?.is_empty(), "round {round}");
        // The next ImageFsInfo answers after containerd's collection: the space is freed.
        let removed = client.image_fs_info(ImageFsInfoRequest {}).await?.into_inner();
        assert!(used(&removed) < used(&pulled), "round {round}: {} -> {}", used(&pulled), used(&removed));
        assert_eq!(blobs_left()?, Vec::<String>::new(), "round {round}");
        assert!(!stack.ctr(&["snapshots", "ls"])?.contains(&top), "round {round}");
    }
    // Pulled again after its removal was collected, it is whole.
    assert_eq!(pull(&mut client, &name).await?, image.id());
    assert!(stack.ctr(&["snapshots", "ls"])?.contains(&top));
    assert_eq!(blobs_left()?.len(), 4);
    Ok(())
}

#[tokio::test]
async fn the_index_answers_even_before_containerd_sends_an_event() -> anyhow::Result<()> {
    // containerd answers an event subscription only with its first event; a node where no
    // image changes still has its ListImages answered from memory, not from containerd.
    let address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let stack = stack_with(&format!("metrics_address = \"{address}\"")).await?;
    let mut client = stack.image_client();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    list(&mut client).await?;
    let before = image_lists(address).await?;
    for _ in 0..10 {
        assert!(list(&mut client).await?.is_empty());
    }
    assert_eq!(image_lists(address).await?, before, "ListImages asked containerd");
    Ok(())
}

/// How many image lists the image service asked containerd for (its metrics).
async fn image_lists(address: std::net::SocketAddr) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let series = r#"crisp_containerd_call_duration_seconds_count{grpc_service="containerd.services.images.v1.Images",grpc_method="List""#;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
