//! The image service's in-memory index of the namespace's images follows containerd's image
//! events: images another client (`ctr`) adds, retags or removes show in ListImages and
//! ImageStatus within a second, on every replica.

mod image_support;

use crisp_testkit::StackOptions;
use crisp_testkit::images::{Format, ImageBuilder};
use crisp_testkit::registry::Registry;
use image_support::*;
use std::time::{Duration, Instant};

/// Waits up to a second for `check` over ListImages to hold; answers how long it took.
async fn within_a_second(
    client: &mut crisp_proto::cri::image_service_client::ImageServiceClient<tonic::transport::Channel>,
    what: &str,
    check: impl Fn(&[crisp_proto::cri::Image]) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let images = list(client).await?;
        if check(&images) {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1), "{what}: not seen after a second: {images:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn images_another_client_adds_and_removes_show_within_a_second() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let image = ImageBuilder::new(Format::Oci).data_layer(4096, 7).build()?;
    let name = registry.push("test/side", "v1", &image).await?;
    let stack = crisp_testkit::Stack::start_with(StackOptions { image_replicas: 2, ..Default::default() }).await?;
    let mut client = stack.image_client();
    // Both replicas answer (and build their index) before the image exists.
    for _ in 0..4 {
        assert!(list(&mut client).await?.iter().all(|i| i.id != image.id()));
    }

    stack.ctr(&["images", "pull", "--plain-http", &name])?;
    let took =
        within_a_second(&mut client, "ctr's image", |images| images.iter().any(|i| i.repo_tags == vec![name.clone()]))
            .await?;
    // Every replica has it now: several calls in a row, spread over both.
    for _ in 0..6 {
        let images = list(&mut client).await?;
        let listed = images.iter().find(|i| i.id == image.id()).expect("listed");
        assert_eq!(listed.repo_tags, vec![name.clone()]);
        assert_eq!(listed.size, image.size());
        assert_eq!(status(&mut client, &name).await?.map(|i| i.id), Some(image.id()));
    }

    // Another name for it (an update of the namespace's records) shows too.
    let other = format!("{}/test/side:v2", registry.host());
    stack.ctr(&["images", "tag", &name, &other])?;
    within_a_second(&mut client, "the new tag", |images| {
        images.iter().any(|i| i.id == image.id() && i.repo_tags.contains(&other))
    })
    .await?;

    stack.ctr(&["images", "rm", &name, &other])?;
    within_a_second(&mut client, "the removal", |images| images.iter().all(|i| i.id != image.id())).await?;
    for _ in 0..4 {
        assert!(status(&mut client, &name).await?.is_none());
        assert!(list(&mut client).await?.iter().all(|i| i.id != image.id()));
    }
    eprintln!("ctr's image listed after {took:?}");
    Ok(())
}

/// A pull through one replica and a removal through it are seen by the next calls at once,
/// whichever replica answers them.
#[tokio::test]
async fn a_pull_and_a_removal_show_at_once_on_every_replica() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let image = ImageBuilder::new(Format::Oci).data_layer(4096, 8).build()?;
    let name = registry.push("test/now", "v1", &image).await?;
    let stack = crisp_testkit::Stack::start_with(StackOptions { image_replicas: 2, ..Default::default() }).await?;
    let mut client = stack.image_client();
    for _ in 0..4 {
        assert!(list(&mut client).await?.is_empty());
    }
    for round in 0..3 {
        assert_eq!(pull(&mut client, &name).await?, image.id());
        assert_eq!(status(&mut client, &name).await?.map(|i| i.id), Some(image.id()), "round {round}");
        remove(&mut client, &name).await?;
        assert!(status(&mut client, &name).await?.is_none(), "round {round}");
    }
    Ok(())
}
