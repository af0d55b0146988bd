//! What the image service's end-to-end tests share: a stack whose image service reads a
//! given registry configuration, CRI helpers, and images built from busybox.

#![allow(dead_code)]

pub mod fake;

use crisp_proto::cri::image_service_client::ImageServiceClient;
use crisp_proto::cri::*;
use crisp_testkit::images::{BuiltImage, Format, ImageBuilder};
use crisp_testkit::{Stack, StackOptions};
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;

/// A stack with `[image]` settings appended to its config (e.g. `pull_progress_timeout`).
pub async fn stack_with(image_config: &str) -> anyhow::Result<Stack> {
    Stack::start_with(StackOptions { extra_config: format!("[image]\n{image_config}\n"), ..Default::default() }).await
}

pub async fn stack() -> anyhow::Result<Stack> {
    stack_with("").await
}

/// Writes `<dir>/<registry>/hosts.toml` sending `registry` to the plain-HTTP `mirrors` first,
/// in order, then to `server` (a URL).
pub fn write_hosts_toml(dir: &Path, registry: &str, mirrors: &[&str], server: &str) -> anyhow::Result<()> {
    let host_dir = dir.join(registry);
    std::fs::create_dir_all(&host_dir)?;
    let mut text = format!("server = \"{server}\"\n");
    for mirror in mirrors {
        text.push_str(&format!("\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"));
    }
    std::fs::write(host_dir.join("hosts.toml"), text)?;
    Ok(())
}

pub fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: image.to_string(), ..Default::default() })
}

pub async fn pull(client: &mut ImageServiceClient<Channel>, image: &str) -> Result<String, tonic::Status> {
    pull_with(client, image, None).await
}

pub async fn pull_with(
    client: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    let request = PullImageRequest { image: spec(image), auth, sandbox_config: None };
    client.pull_image(request).await.map(|r| r.into_inner().image_ref)
}

pub async fn status(client: &mut ImageServiceClient<Channel>, image: &str) -> anyhow::Result<Option<Image>> {
    Ok(client.image_status(ImageStatusRequest { image: spec(image), verbose: false }).await?.into_inner().image)
}

pub async fn remove(client: &mut ImageServiceClient<Channel>, image: &str) -> Result<(), tonic::Status> {
    client.remove_image(RemoveImageRequest { image: spec(image) }).await.map(|_| ())
}

pub async fn list(client: &mut ImageServiceClient<Channel>) -> anyhow::Result<Vec<Image>> {
    Ok(client.list_images(ListImagesRequest { filter: None }).await?.into_inner().images)
}

/// The names `ctr images ls -q` shows.
pub fn ctr_images(stack: &Stack) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = stack.ctr(&["images", "ls", "-q"])?.lines().map(str::to_string).collect();
    names.sort();
    Ok(names)
}

/// The lease ids `ctr leases ls -q` shows.
pub fn ctr_leases(stack: &Stack) -> anyhow::Result<Vec<String>> {
    Ok(stack.ctr(&["leases", "ls", "-q"])?.lines().map(str::to_string).collect())
}

/// Waits (up to 5 s) until no lease is left: a pull deletes its lease as it ends.
pub async fn assert_no_leases(stack: &Stack) -> anyhow::Result<()> {
    for _ in 0..50 {
        if ctr_leases(stack)?.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("leases left behind: {:?}", ctr_leases(stack)?)
}

/// The busybox image with one more layer, in `format`.
pub fn busybox(format: Format) -> anyhow::Result<BuiltImage> {
    ImageBuilder::new(format).busybox_layer()?.file_layer("etc/motd", "hello from crisp\n").build()
}
