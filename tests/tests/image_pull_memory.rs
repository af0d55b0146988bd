//! A pull's memory does not grow with its layers: crisp-image's peak resident set (VmHWM)
//! while it pulls an image of one layer of 208 MiB (uncompressed; about 116 MiB gzipped:
//! downloaded, teed into the extractor and committed), or of five layers of real files
//! downloading and extracting three at a time, stays within 64 MiB.

mod image_support;

use crisp_testkit::images::{Format, ImageBuilder};
use crisp_testkit::registry::Registry;
use image_support::*;

/// `VmHWM` of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

#[tokio::test]
async fn pulling_a_200_mib_layer_keeps_the_image_service_under_64_mib() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let image = ImageBuilder::new(Format::Oci).gzip_level(1).data_layer(208 << 20, 3).build()?;
    let name = registry.push("test/large", "v1", &image).await?;
    let layer_bytes = image.layers[0].data.len();
    drop(image.layers);
    let mut stack = stack().await?;
    let mut client = stack.image_client();
    let before = peak_rss_kib(stack.service_pid("image-0")?)?;

    assert!(pull(&mut client, &name).await?.starts_with("sha256:"));
    let peak = peak_rss_kib(stack.service_pid("image-0")?)?;
    println!("crisp-image peak RSS: {before} KiB before the pull, {peak} KiB after ({layer_bytes} bytes of layer)");
    assert!(peak <= 64 << 10, "crisp-image's peak RSS was {peak} KiB pulling a {layer_bytes}-byte layer");
    Ok(())
}

#[tokio::test]
async fn pulling_five_layers_at_once_keeps_the_image_service_under_64_mib() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let mut builder = ImageBuilder::new(Format::Oci).gzip_level(1).busybox_layer()?;
    for i in 0..5 {
        builder = builder.system_files_layer(i * (24 << 20), 24 << 20)?;
    }
    let image = builder.build()?;
    let name = registry.push("test/five", "v1", &image).await?;
    let compressed: usize = image.layers.iter().map(|l| l.data.len()).sum();
    drop(image.layers);
    // Three layers download (and extract) at once, as containerd's default allows.
    let mut stack = stack_with("max_concurrent_downloads = 3\n").await?;
    let mut client = stack.image_client();
    let before = peak_rss_kib(stack.service_pid("image-0")?)?;

    assert!(pull(&mut client, &name).await?.starts_with("sha256:"));
    let peak = peak_rss_kib(stack.service_pid("image-0")?)?;
    println!("crisp-image peak RSS: {before} KiB before the pull, {peak} KiB after ({compressed} bytes in 6 layers)");
    assert!(peak <= 64 << 10, "crisp-image's peak RSS was {peak} KiB pulling six layers");
    Ok(())
}
