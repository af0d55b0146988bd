//! The `runtime.v1.ImageService` server: each RPC hands off to the module of its concern.

use crate::error::ImageError;
use crate::fsinfo::{self, FsInfo};
use crate::images;
use crate::pull::Puller;
use crisp_config::Config;
use crisp_containerd::Containerd;
use crisp_image_model::ImageStore;
use crisp_proto::cri::image_service_server::ImageService;
use crisp_proto::cri::*;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct Images {
    store: ImageStore,
    puller: Puller,
    fs_info: FsInfo,
    collection: images::Collection,
}

impl Images {
    pub fn new(containerd: Containerd, config: &Config) -> Self {
        let store = ImageStore::new(containerd.clone());
        store.start_index();
        let puller = Puller::new(containerd.clone(), config.image.clone(), config.proxy.image_endpoints.len());
        // A pull this replica's previous run left (it was killed) is likely retried by the
        // kubelet within minutes; its lease keeps what it fetched for that retry until then.
        let delay = config.image.pull_progress_timeout.saturating_mul(2);
        puller.clean_stale_leases_later(delay.clamp(Duration::from_secs(60), Duration::from_secs(600)));
        let collection = images::Collection::start(containerd.clone());
        let fs_info = FsInfo::start(containerd, config.image.snapshotter.clone(), fsinfo::REFRESH_PERIOD);
        Self { store, puller, fs_info, collection }
    }

    /// This replica's writes are in its image index before it answers (their events follow).
    async fn resync(&self) {
        if let Err(err) = self.store.resync().await {
            tracing::warn!(error = %err, "rebuilding the image index failed; its events will bring it up to date");
        }
    }
}

fn image_name(spec: Option<&ImageSpec>) -> Result<&str, ImageError> {
    spec.map(|s| s.image.as_str())
        .filter(|s| !s.is_empty())
        .ok_or(ImageError::MissingField("the request names no image (image.image is empty)"))
}

/// The caller's deadline from `grpc-timeout`, a little shortened so that our
/// DEADLINE_EXCEEDED reaches the caller before its own timer fires.
fn deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get(crisp_grpc_server::timeout::GRPC_TIMEOUT)?;
    let timeout = crisp_grpc_server::timeout::parse_grpc_timeout(value.as_bytes())?;
    let margin = (timeout / 20).min(Duration::from_millis(200));
    Some(timeout - margin)
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(&self, request: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        let request = request.into_inner();
        let images = images::list(&self.store, request.filter.as_ref()).await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref())?;
        let (image, info) = images::status(&self.store, name, request.verbose).await.map_err(|e| e.about(name))?;
        Ok(Response::new(ImageStatusResponse { image, info }))
    }

    async fn pull_image(&self, request: Request<PullImageRequest>) -> Result<Response<PullImageResponse>, Status> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        let name = image_name(request.image.as_ref())?;
        // Not after a removal's collection: the pull runs beside it (see images::Collection).
        let id = self.puller.pull(name, request.auth.as_ref(), deadline).await?;
        self.fs_info.changed();
        self.resync().await;
        Ok(Response::new(PullImageResponse { image_ref: id.to_string() }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref())?;
        let removed = images::remove(&self.store, name).await.map_err(|e| e.about(name));
        self.resync().await;
        if removed? {
            self.collection.request();
            self.fs_info.changed();
        }
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        self.collection.settled().await;
        let image_filesystems = self.fs_info.get().await?;
        Ok(Response::new(ImageFsInfoResponse { image_filesystems, container_filesystems: vec![] }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_the_callers_timeout_less_a_margin() {
        let mut request = Request::new(());
        assert_eq!(deadline(&request), None);
        request.metadata_mut().insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(deadline(&request), Some(Duration::from_millis(1900)));
        request.metadata_mut().insert("grpc-timeout", "1M".parse().unwrap());
        assert_eq!(deadline(&request), Some(Duration::from_millis(59_800)));
        request.metadata_mut().insert("grpc-timeout", "10q".parse().unwrap());
        assert_eq!(deadline(&request), None);
    }
}
