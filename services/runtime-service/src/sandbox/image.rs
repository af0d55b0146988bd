//! The sandbox (pause) image a pod's infra process runs, made sure of before the first one.
//!
//! - crisp's own (`image.sandbox_image` = [`CRISP_SANDBOX_IMAGE`]): when containerd lacks it,
//!   it is written there from `runtime.pause_binary`, no registry needed: a one-layer OCI image
//!   (an uncompressed layer tar holding `/pause`, a config with `Entrypoint ["/pause"]`, a
//!   manifest) in the content store with containerd's garbage-collection references, unpacked
//!   into `image.snapshotter` under its chain id, and named by CRI image records (tag, digest
//!   and id, `io.cri-containerd.image=managed`, pinned) as the image service names a pull.
//! - any other: pulled through the image service (`proxy.image_endpoints`), which pins it as
//!   the configured sandbox image.
//!
//! [`SandboxImage`] serialises the making so that concurrent RunPodSandbox calls do it once.

use super::SandboxError;
use crisp_config::{CRISP_SANDBOX_IMAGE, Config};
use crisp_containerd::containerd_client::types::Descriptor;
use crisp_containerd::labels::{self, cri, gc};
use crisp_containerd::{Containerd, ContainerdError, Ingest, Lease, Opened};
use crisp_image_model::oci::ImageConfiguration;
use crisp_image_model::{Digest, ImageName, ImageStore};
use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, ImageConfigurationBuilder, ImageManifestBuilder, MediaType, Os,
    RootFsBuilder,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The user the pause process runs as when the image names none (as the kubelet's pause image).
pub const PAUSE_USER: &str = "65535:65535";

/// An image a pod's infra process can run: its top snapshot and its config.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The record name containers are created from.
    pub name: String,
    /// The chain id of its top layer: the parent of an infra container's rootfs.
    pub top: String,
    pub config: ImageConfiguration,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("reading the pause binary {path}: {source}")]
    Binary { path: String, source: std::io::Error },
    #[error("building crisp's sandbox image: {0}")]
    Build(String),
    #[error("sandbox image `{image}`: {source}")]
    Containerd { image: String, source: ContainerdError },
    #[error("sandbox image `{image}` is unreadable in containerd: {reason}")]
    Store { image: String, reason: String },
    #[error("pulling the sandbox image `{image}` through the image service: {reason}")]
    Pull { image: String, reason: String },
}

/// Makes sure of the configured sandbox image, once at a time.
#[derive(Clone, Default)]
pub struct SandboxImage(Arc<tokio::sync::Mutex<Option<Ready>>>);

impl SandboxImage {
    /// The sandbox image, written into containerd or pulled first when it is not there.
    pub async fn ensure(&self, containerd: &Containerd, config: &Config) -> Result<Ready, SandboxError> {
        let mut known = self.0.lock().await;
        let name = config.image.sandbox_image.clone();
        let store = ImageStore::new(containerd.clone());
        if let Some(ready) = find(&store, &name).await? {
            *known = Some(ready.clone());
            return Ok(ready);
        }
        if name == CRISP_SANDBOX_IMAGE {
            tracing::info!(image = %name, binary = %config.runtime.pause_binary.display(), "writing crisp's sandbox image into containerd");
            import(containerd, config).await.map_err(SandboxError::Image)?;
        } else {
            tracing::info!(image = %name, "pulling the sandbox image");
            pull(config).await.map_err(SandboxError::Image)?;
        }
        let ready = find(&store, &name).await?.ok_or_else(|| {
            SandboxError::Image(ImageError::Store { image: name.clone(), reason: "not found after it was made".into() })
        })?;
        *known = Some(ready.clone());
        Ok(ready)
    }
}

async fn find(store: &ImageStore, name: &str) -> Result<Option<Ready>, SandboxError> {
    let store_error = |reason: String| SandboxError::Image(ImageError::Store { image: name.to_string(), reason });
    let parsed = ImageName::parse(name).map_err(|e| store_error(e.to_string()))?;
    let Some(image) = store.find(&parsed).await.map_err(|e| store_error(e.to_string()))? else {
        return Ok(None);
    };
    let top = image
        .details
        .chain_ids()
        .map_err(|e| store_error(e.to_string()))?
        .last()
        .map(|c| c.as_str().to_string())
        .ok_or_else(|| store_error("it has no layer".into()))?;
    let record_name = match parsed {
        ImageName::Reference(reference) => reference.record_name(),
        ImageName::Id(id) => id.to_string(),
    };
    Ok(Some(Ready { name: record_name, top, config: image.details.config.clone() }))
}

/// A blob and its descriptor.
struct Blob {
    media_type: MediaType,
    digest: Digest,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: MediaType, bytes: Vec<u8>) -> Blob {
        Blob { media_type, digest: Digest::sha256_of(&bytes), bytes }
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.to_string(),
            digest: self.digest.to_string(),
            size: self.bytes.len() as i64,
            annotations: Default::default(),
        }
    }

    fn oci_descriptor(&self) -> Result<oci_spec::image::Descriptor, ImageError> {
        let digest: oci_spec::image::Digest =
            self.digest.as_str().parse().map_err(|e| ImageError::Build(format!("digest: {e}")))?;
        DescriptorBuilder::default()
            .media_type(self.media_type.clone())
            .digest(digest)
            .size(self.bytes.len() as u64)
            .build()
            .map_err(|e| ImageError::Build(e.to_string()))
    }
}

/// The layer: `/pause`, root-owned, mode 0755, time 0 (the same binary gives the same digest).
fn layer(binary: &[u8]) -> Result<Blob, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(binary.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, "pause", binary).map_err(|e| ImageError::Build(format!("layer: {e}")))?;
    let bytes = builder.into_inner().map_err(|e| ImageError::Build(format!("layer: {e}")))?;
    Ok(Blob::new(MediaType::ImageLayer, bytes))
}

/// The image's three blobs: layer, config, manifest.
fn blobs(binary: &[u8]) -> Result<[Blob; 3], ImageError> {
    let build = |e: oci_spec::OciSpecError| ImageError::Build(e.to_string());
    let layer = layer(binary)?;
    let runtime = ConfigBuilder::default()
        .entrypoint(vec!["/pause".to_string()])
        .user(PAUSE_USER.to_string())
        .build()
        .map_err(build)?;
    let rootfs =
        RootFsBuilder::default().typ("layers").diff_ids(vec![layer.digest.to_string()]).build().map_err(build)?;
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(runtime)
        .rootfs(rootfs)
        .build()
        .map_err(build)?;
    let config = Blob::new(
        MediaType::ImageConfig,
        serde_json::to_vec(&config).map_err(|e| ImageError::Build(format!("config: {e}")))?,
    );
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config.oci_descriptor()?)
        .layers(vec![layer.oci_descriptor()?])
        .build()
        .map_err(build)?;
    let manifest = Blob::new(
        MediaType::ImageManifest,
        serde_json::to_vec(&manifest).map_err(|e| ImageError::Build(format!("manifest: {e}")))?,
    );
    Ok([layer, config, manifest])
}

/// Writes one blob (with its garbage-collection labels) under `lease`.
async fn write_blob(
    containerd: &Containerd,
    lease: &Lease,
    blob: &Blob,
    labels: HashMap<String, String>,
) -> Result<(), ContainerdError> {
    let reference = format!("crisp-sandbox-image-{}", blob.digest.encoded());
    match Ingest::open(containerd, lease.id(), &reference, blob.bytes.len() as i64, blob.digest.as_str()).await? {
        Opened::Ingest(mut ingest) => {
            let start = usize::try_from(ingest.offset).unwrap_or(0).min(blob.bytes.len());
            for chunk in blob.bytes[start..].chunks(1 << 20) {
                ingest.write(chunk.to_vec()).await?;
            }
            ingest.commit(labels).await
        }
        Opened::Exists => containerd.set_content_labels(Some(lease.id()), blob.digest.as_str(), labels).await,
        Opened::Locked => Err(ContainerdError::call(
            "writing crisp's sandbox image",
            tonic::Status::unavailable("another writer holds the ingest"),
        )),
    }
}

async fn import(containerd: &Containerd, config: &Config) -> Result<(), ImageError> {
    let image = CRISP_SANDBOX_IMAGE.to_string();
    let path = config.runtime.pause_binary.clone();
    let binary = tokio::fs::read(&path)
        .await
        .map_err(|source| ImageError::Binary { path: path.display().to_string(), source })?;
    let [layer, image_config, manifest] = blobs(&binary)?;
    let snapshotter = config.image.snapshotter.as_str();
    // For a single layer the chain id is the diff id: the layer's own digest (uncompressed).
    let chain_id = layer.digest.to_string();
    let failed = |source: ContainerdError| ImageError::Containerd { image: image.clone(), source };

    let lease = Lease::create(
        containerd,
        "crisp-sandbox-image",
        HashMap::from([(labels::crisp::PURPOSE.to_string(), image.clone())]),
        Duration::from_secs(600),
    )
    .await
    .map_err(failed)?;
    write_blob(
        containerd,
        &lease,
        &layer,
        HashMap::from([(labels::UNCOMPRESSED.to_string(), layer.digest.to_string())]),
    )
    .await
    .map_err(failed)?;
    write_blob(containerd, &lease, &image_config, HashMap::from([(gc::ref_snapshot(snapshotter), chain_id.clone())]))
        .await
        .map_err(failed)?;
    write_blob(
        containerd,
        &lease,
        &manifest,
        HashMap::from([
            (gc::ref_config(), image_config.digest.to_string()),
            (gc::ref_layer(0), layer.digest.to_string()),
        ]),
    )
    .await
    .map_err(failed)?;

    if !containerd.snapshot_exists(snapshotter, &chain_id).await.map_err(failed)? {
        let key = format!("crisp-extract-{} {chain_id}", lease.id());
        let mounts = containerd.prepare_snapshot(snapshotter, lease.id(), &key, None).await.map_err(failed)?;
        let applied = containerd.apply_diff(lease.id(), &layer.descriptor(), mounts).await.map_err(failed)?;
        if applied != chain_id {
            let _ = containerd.remove_snapshot(snapshotter, lease.id(), &key).await;
            return Err(ImageError::Build(format!("the layer unpacked as {applied}, not {chain_id}")));
        }
        match containerd.commit_snapshot(snapshotter, lease.id(), &key, &chain_id).await {
            Ok(()) => {}
            Err(err) if err.is_already_exists() => {
                let _ = containerd.remove_snapshot(snapshotter, lease.id(), &key).await;
            }
            Err(err) => return Err(failed(err)),
        }
    }

    // The names, as a pull names an image: tag, digest, id; pinned (never garbage collected by
    // the kubelet). Then the lease goes: the records hold everything.
    let target = manifest.descriptor();
    let pinned = HashMap::from([
        (cri::IMAGE.to_string(), cri::IMAGE_MANAGED.to_string()),
        (cri::PINNED.to_string(), cri::PINNED_VALUE.to_string()),
    ]);
    let repository = image.rsplit_once(':').map(|(repo, _)| repo).unwrap_or(&image);
    for name in [image.clone(), format!("{repository}@{}", manifest.digest), image_config.digest.to_string()] {
        containerd.put_image_record(&name, &target, pinned.clone()).await.map_err(failed)?;
    }
    lease.delete().await.map_err(failed)?;
    tracing::info!(image, id = %image_config.digest, "crisp's sandbox image is in containerd");
    Ok(())
}

/// Pulls the configured sandbox image through the first image service replica that answers.
async fn pull(config: &Config) -> Result<(), ImageError> {
    use crisp_proto::cri::image_service_client::ImageServiceClient;
    use crisp_proto::cri::{ImageSpec, PullImageRequest};
    let image = config.image.sandbox_image.clone();
    let mut last = String::from("no image service endpoint is configured");
    for endpoint in &config.proxy.image_endpoints {
        let channel = crisp_grpc_dial::unix_channel(endpoint, Duration::from_secs(5));
        let request = PullImageRequest {
            image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
            auth: None,
            sandbox_config: None,
        };
        match ImageServiceClient::new(channel).pull_image(request).await {
            Ok(_) => return Ok(()),
            Err(status) => {
                last = format!("{}: {}", endpoint.display(), status.message());
                // Only an unreachable replica is worth trying the next one.
                if status.code() != tonic::Code::Unavailable {
                    break;
                }
            }
        }
    }
    Err(ImageError::Pull { image, reason: last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crisps_sandbox_image_is_one_layer_running_pause_and_the_same_for_the_same_binary() {
        let [layer, config, manifest] = blobs(b"\x7fELF not really").unwrap();
        let mut archive = tar::Archive::new(layer.bytes.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().mode().unwrap())
            })
            .collect();
        assert_eq!(entries, vec![("pause".to_string(), 0o755)]);

        let parsed: ImageConfiguration = serde_json::from_slice(&config.bytes).unwrap();
        let runtime = parsed.config().as_ref().unwrap();
        assert_eq!(runtime.entrypoint().as_deref(), Some(&["/pause".to_string()][..]));
        assert_eq!(parsed.rootfs().diff_ids(), &vec![layer.digest.to_string()]);

        let parsed: oci_spec::image::ImageManifest = serde_json::from_slice(&manifest.bytes).unwrap();
        assert_eq!(parsed.config().digest().to_string(), config.digest.to_string());
        assert_eq!(parsed.layers()[0].digest().to_string(), layer.digest.to_string());

        let [_, _, again] = blobs(b"\x7fELF not really").unwrap();
        assert_eq!(again.digest, manifest.digest);
    }
}
