//! How pulls behave under load and trouble: many concurrent pulls of one image share one
//! download; the caller's deadline stops a pull; a stalled (trickling) pull fails; a pull
//! killed half way is resumed by the next try.

mod image_support;

use crisp_proto::cri::PullImageRequest;
use crisp_testkit::StackOptions;
use crisp_testkit::images::{Format, ImageBuilder};
use crisp_testkit::registry::{Registry, Throttle};
use image_support::*;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn concurrent_pulls_of_one_image_download_it_once() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let relay = Throttle::start(registry.addr(), 4 << 20).await?;
    let image =
        ImageBuilder::new(Format::Oci).busybox_layer()?.data_layer(1 << 20, 1).data_layer(1 << 20, 2).build()?;
    registry.push("test/shared", "v1", &image).await?;
    let name = format!("{}/test/shared:v1", relay.host());
    let stack = crisp_testkit::Stack::start_with(StackOptions { image_replicas: 2, ..Default::default() }).await?;

    let mut pulls = Vec::new();
    for _ in 0..12 {
        let mut client = stack.image_client();
        let name = name.clone();
        pulls.push(tokio::spawn(async move { pull(&mut client, &name).await }));
    }
    for p in pulls {
        assert_eq!(p.await??, image.id());
    }
    // Two replicas, twelve pulls: the layers crossed the wire once (manifests are small).
    let layer_bytes: u64 = image.layers.iter().map(|l| l.data.len() as u64).sum();
    let relayed = relay.bytes_relayed();
    assert!(relayed < layer_bytes + layer_bytes / 2, "{relayed} bytes relayed for {layer_bytes} bytes of layers");
    assert_eq!(ctr_images(&stack)?.len(), 3);
    assert_no_leases(&stack).await?;

    // Pulling it again fetches no layer.
    let mut client = stack.image_client();
    let before = relay.bytes_relayed();
    pull(&mut client, &name).await?;
    assert!(relay.bytes_relayed() - before < 64 * 1024);
    Ok(())
}

#[tokio::test]
async fn the_callers_deadline_stops_the_pull() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let relay = Throttle::start(registry.addr(), 256 * 1024).await?;
    let image = ImageBuilder::new(Format::Oci).data_layer(4 << 20, 3).build()?;
    registry.push("test/slow", "v1", &image).await?;
    let name = format!("{}/test/slow:v1", relay.host());
    let stack = stack().await?;
    let mut client = stack.image_client();

    let mut request = tonic::Request::new(PullImageRequest { image: spec(&name), auth: None, sandbox_config: None });
    request.set_timeout(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let err = client.pull_image(request).await.expect_err("a 16 s download in 2 s");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "answered after {:?}", started.elapsed());
    assert!(ctr_images(&stack)?.is_empty());
    assert_no_leases(&stack).await?;
    // The download stopped with the pull.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_stop = relay.bytes_relayed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(relay.bytes_relayed() - after_stop < 64 * 1024, "still downloading after the deadline");
    Ok(())
}

#[tokio::test]
async fn a_trickling_pull_is_stalled() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let relay = Throttle::start(registry.addr(), 0).await?;
    let image = ImageBuilder::new(Format::Oci).data_layer(1 << 20, 4).build()?;
    registry.push("test/trickle", "v1", &image).await?;
    let name = format!("{}/test/trickle:v1", relay.host());
    let stack = stack_with("pull_progress_timeout = \"2s\"").await?;
    let mut client = stack.image_client();

    // A few bytes every 100 ms: never silent, never progressing.
    relay.set_rate(2000);
    let started = std::time::Instant::now();
    let err = pull(&mut client, &name).await.expect_err("stalled");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("stalled") && err.message().contains(&name), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert!(ctr_images(&stack)?.is_empty());
    assert_no_leases(&stack).await?;
    Ok(())
}

#[tokio::test]
async fn a_pull_killed_half_way_is_resumed() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let relay = Throttle::start(registry.addr(), 512 * 1024).await?;
    let image = ImageBuilder::new(Format::Docker).busybox_layer()?.data_layer(4 << 20, 5).build()?;
    registry.push("test/resume", "v1", &image).await?;
    let name = format!("{}/test/resume:v1", relay.host());
    let mut stack = stack().await?;

    let mut client = stack.image_client();
    let first = {
        let name = name.clone();
        tokio::spawn(async move { pull(&mut client, &name).await })
    };
    // Busybox and over half of the 4 MiB layer (written to containerd in 1 MiB pieces), then
    // the image service dies.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while relay.bytes_relayed() < (7 << 19) {
        assert!(std::time::Instant::now() < deadline, "the download never got going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A slow pull logs its progress every five seconds.
    while !stack.service_log("image-0")?.contains("pull progress") {
        assert!(std::time::Instant::now() < deadline, "no progress line in:\n{}", stack.service_log("image-0")?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stack.service_log("image-0")?.contains("bytes_total"));
    stack.kill_service("image-0")?;
    let err = first.await?.expect_err("its image service died");
    assert!(matches!(err.code(), Code::Unavailable | Code::Unknown | Code::Internal), "{err:?}");
    assert!(ctr_images(&stack)?.is_empty());

    stack.start_service("image-0").await?;
    relay.set_rate(0);
    let before = relay.bytes_relayed();
    let mut client = stack.image_client();
    let mut result = pull(&mut client, &name).await;
    for _ in 0..20 {
        // The proxy may need a health check to see the replica back.
        if !matches!(&result, Err(s) if s.code() == Code::Unavailable) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        result = pull(&mut client, &name).await;
    }
    assert_eq!(result?, image.id());
    // The retry fetched only what was missing.
    let layer_bytes: u64 = image.layers.iter().map(|l| l.data.len() as u64).sum();
    let refetched = relay.bytes_relayed() - before;
    assert!(refetched < layer_bytes * 3 / 4, "the retry downloaded {refetched} of {layer_bytes} bytes");
    let s = status(&mut client, &name).await?.expect("pulled");
    assert_eq!(s.repo_tags, vec![name.clone()]);
    // The retry took over the killed pull's lease (and its partial download) and deleted it.
    assert_no_leases(&stack).await?;
    assert!(stack.service_log("image-0")?.contains("taking over the lease"));
    // The layer was extracted while it downloaded, from what the killed pull had stored on.
    assert!(stack.service_log("image-0")?.contains("partial download read back for the extractor"));
    Ok(())
}
