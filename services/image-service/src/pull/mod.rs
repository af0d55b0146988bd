//! PullImage: resolve the reference at the registry, store index, manifest, config and layers
//! in containerd's content store under a lease (layers downloading in parallel while earlier
//! ones unpack in chain order), then create the image records, then drop the lease.
//!
//! With the direct apply, each layer is extracted into its own staging tree while it downloads
//! (teed, [`blob::ensure_layer`]), all layers in parallel; the staged trees are then committed
//! as snapshots strictly in chain order, each once its parent is committed.

mod blob;
mod coalesce;
mod present;
mod progress;
mod resolve;
mod source;

use crate::error::{ImageError, PullError};
use crate::metrics::METRICS;
use crate::registry::auth::Credentials;
use crate::registry::{Clients, Registry};
use crate::{content, hosts, store, unpack};
use blob::{Kind, Source, Wanted};
use coalesce::{Coalescer, PullResult};
use crisp_config::ImageConfig;
use crisp_containerd::labels::{self, gc};
use crisp_containerd::{Containerd, ContainerdError, Lease, LeaseId};
use crisp_errors::GrpcError;
use crisp_image_model::oci::{Descriptor, ImageConfiguration, ImageManifest};
use crisp_image_model::{ChainId, Digest, ImageId, Reference};
use crisp_proto::cri::AuthConfig;
use progress::Progress;
use resolve::Resolved;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// An image's layers: their descriptors, diff ids and chain ids, index by index.
struct Layers<'a> {
    descriptors: &'a [Descriptor],
    diff_ids: &'a [Digest],
    chain: &'a [ChainId],
}

/// The largest image config accepted (read whole into memory, like manifests).
const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Pulls images into containerd.
#[derive(Clone)]
pub struct Puller {
    inner: Arc<Inner>,
}

struct Inner {
    containerd: Containerd,
    clients: Clients,
    config: ImageConfig,
    coalescer: Coalescer,
    /// The sandbox image's record name, pinned whenever it is pulled.
    sandbox_image: Option<String>,
    /// When this run began: leases of this replica older than that are a killed run's.
    started: std::time::SystemTime,
    /// Leases of a killed run taken over by a pull now running.
    adopted: std::sync::Mutex<std::collections::HashSet<LeaseId>>,
    /// Where layers are extracted for the direct apply (overlayfs only), found at the first pull.
    staging: tokio::sync::OnceCell<Option<crate::apply::StagingArea>>,
    /// This replica's share of the node's layer downloads in flight, across all pulls. Fair:
    /// waiting downloads get a permit in the order they asked.
    in_flight: Semaphore,
}

impl Puller {
    /// Deletes, after `delay`, the leases an earlier run of this replica left mid-pull.
    pub fn clean_stale_leases_later(&self, delay: Duration) {
        let containerd = self.inner.containerd.clone();
        let owner = self.inner.config.socket.display().to_string();
        let started = self.inner.started;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            content::delete_stale_leases(&containerd, &owner, started).await;
        });
    }

    /// `replicas`: how many image service replicas share the node's bound on downloads.
    pub fn new(containerd: Containerd, config: ImageConfig, replicas: usize) -> Self {
        let sandbox_image = Reference::parse(&config.sandbox_image).ok().map(|r| r.record_name());
        let in_flight = config.downloads_in_flight().div_ceil(replicas.max(1));
        Self {
            inner: Arc::new(Inner {
                containerd,
                clients: Clients::default(),
                config,
                coalescer: Coalescer::default(),
                sandbox_image,
                started: std::time::SystemTime::now(),
                adopted: Default::default(),
                staging: Default::default(),
                in_flight: Semaphore::new(in_flight),
            }),
        }
    }

    /// Pulls `image` and answers its id (`sha256:<config digest>`). `deadline` is the caller's.
    pub async fn pull(
        &self,
        image: &str,
        auth: Option<&AuthConfig>,
        deadline: Option<Duration>,
    ) -> Result<ImageId, ImageError> {
        let reference = Reference::parse(image)?;
        let wrap = |source: Arc<PullError>| ImageError::Pull { image: reference.to_string(), source };
        let credentials = match auth.map(Credentials::from_cri).transpose() {
            Ok(creds) => creds.flatten(),
            Err(err) => return Err(wrap(Arc::new(err.into()))),
        };
        // Pulls with different credentials do not share: one caller's bad password must not
        // fail (or succeed) another's pull.
        let key = format!("{reference}#{}", credentials_key(credentials.as_ref()));
        let inner = self.inner.clone();
        let pull_reference = reference.clone();
        let joined = self
            .inner
            .coalescer
            .join(&key, move |cancel| async move { inner.run(pull_reference, credentials, cancel).await });
        let outcome: PullResult = match deadline {
            Some(deadline) => match tokio::time::timeout(deadline, joined).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Arc::new(PullError::DeadlineExceeded(deadline))),
            },
            None => joined.await,
        };
        outcome.map_err(wrap)
    }
}

/// A pull counted in `crisp_image_pulls_in_flight` until dropped.
struct InFlight;

impl InFlight {
    fn new() -> Self {
        METRICS.pulls_in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.pulls_in_flight.dec();
    }
}

fn credentials_key(credentials: Option<&Credentials>) -> String {
    use std::hash::{Hash, Hasher};
    let Some(c) = credentials else { return "anonymous".into() };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&c.registry, &c.username, &c.password, &c.identity_token, &c.registry_token).hash(&mut hasher);
    format!("{:x}", hasher.finish())
}

impl Inner {
    /// One pull, in its own task: under a lease, stopped by `cancel` or a stall.
    async fn run(
        self: Arc<Self>,
        reference: Reference,
        credentials: Option<Credentials>,
        cancel: CancellationToken,
    ) -> PullResult {
        let span = tracing::info_span!("pull", image = %reference);
        async move {
            let started = std::time::Instant::now();
            let _in_flight = InFlight::new();
            let lease = self.lease_for(&reference.to_string()).await.map_err(|e| Arc::new(PullError::from(e)))?;
            let progress = Progress::default();
            let image = reference.to_string();
            let outcome = tokio::select! {
                outcome = self.pull(&reference, credentials, &lease, &progress) => outcome,
                stalled = progress::watchdog(&progress, self.config.pull_progress_timeout, &image) => {
                    METRICS.stalls.inc();
                    Err(stalled)
                }
                _ = cancel.cancelled() => Err(PullError::Cancelled),
            };
            let lease_id = lease.id().clone();
            if let Err(err) = lease.delete().await {
                tracing::warn!(lease = %lease_id, error = %err, "deleting the pull's lease failed; it expires by itself");
            }
            self.adopted.lock().unwrap_or_else(|p| p.into_inner()).remove(&lease_id);
            let bytes = progress.bytes.load(Ordering::Relaxed);
            let code = outcome.as_ref().err().map_or(tonic::Code::Ok, GrpcError::code);
            METRICS.pull_ended(code, started.elapsed().as_secs_f64());
            match &outcome {
                Ok(id) => tracing::info!(%id, bytes, elapsed = ?started.elapsed(), "pulled"),
                Err(err) => tracing::warn!(error = %crisp_errors::message_chain(err), bytes, elapsed = ?started.elapsed(), "pull failed"),
            }
            outcome.map_err(Arc::new)
        }
        .instrument(span)
        .await
    }

    /// The pull's lease: one a killed earlier run of this replica left for the same image
    /// (taken over, with what it protects), else a new one.
    async fn lease_for(&self, image: &str) -> Result<Lease, ContainerdError> {
        let owner = self.config.socket.display().to_string();
        match content::stale_leases_for(&self.containerd, &owner, image, self.started).await {
            Ok(candidates) => {
                let mut adopted = self.adopted.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(lease) = candidates.into_iter().find(|l| !adopted.contains(l)) {
                    adopted.insert(lease.clone());
                    tracing::info!(%lease, "taking over the lease of a pull of this image that was killed");
                    return Ok(Lease::adopt(&self.containerd, lease));
                }
            }
            Err(err) => tracing::warn!(error = %err, "looking for a killed pull's lease failed"),
        }
        content::create_pull_lease(&self.containerd, &owner, image).await
    }

    async fn pull(
        &self,
        reference: &Reference,
        credentials: Option<Credentials>,
        lease: &Lease,
        progress: &Progress,
    ) -> Result<ImageId, PullError> {
        let registry = self.registry(reference, credentials).await?;
        let resolved = resolve::resolve(&self.containerd, &registry, reference, lease).await?;
        let source_label = labels::distribution_source(&reference.domain, &reference.path);
        let snapshotter = &self.config.snapshotter;
        if let Some(id) =
            present::everything_here(&self.containerd, snapshotter, &resolved, lease.id(), &source_label).await?
        {
            tracing::debug!("everything is here already: only the records are written");
            self.put_records(reference, &resolved, &id).await?;
            return Ok(id);
        }
        let top = &resolved.top;
        let top_blob = Wanted { digest: top.digest.clone(), size: top.bytes.len() as i64 };
        let (manifest_blob, manifest_bytes) = (resolved.manifest.clone(), resolved.manifest_bytes.clone());
        if resolved.is_index() {
            let labels = HashMap::from([(gc::ref_manifest(0), manifest_blob.digest.to_string()), source_label.clone()]);
            blob::ensure(&self.containerd, lease, Kind::Index, &top_blob, Source::Bytes(&top.bytes), labels, progress)
                .await?;
        }
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).map_err(|e| PullError::Malformed {
            what: "manifest",
            digest: manifest_blob.digest.to_string(),
            detail: e.to_string(),
        })?;
        let config_blob = Wanted::of(manifest.config());
        let mut manifest_labels =
            HashMap::from([(gc::ref_config(), config_blob.digest.to_string()), source_label.clone()]);
        for (i, layer) in manifest.layers().iter().enumerate() {
            manifest_labels.insert(gc::ref_layer(i), layer.digest().to_string());
        }
        blob::ensure(
            &self.containerd,
            lease,
            Kind::Manifest,
            &manifest_blob,
            Source::Bytes(&manifest_bytes),
            manifest_labels,
            progress,
        )
        .await?;

        // The config: fetched (small) to learn the diff ids; the snapshot label names the top
        // of the chain so containerd's GC keeps the unpacked layers with the image.
        let config_bytes = self.config_bytes(&registry, &config_blob).await?;
        let malformed_config =
            |detail: String| PullError::Malformed { what: "config", digest: config_blob.digest.to_string(), detail };
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| malformed_config(e.to_string()))?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| malformed_config(e.to_string()))?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(malformed_config(format!(
                "it lists {} diff ids for {} layers",
                diff_ids.len(),
                manifest.layers().len()
            )));
        }
        let chain = crisp_image_model::chain_ids(&diff_ids);
        let mut config_labels = HashMap::from([source_label.clone()]);
        if let Some(top_chain) = chain.last() {
            config_labels.insert(gc::ref_snapshot(snapshotter), top_chain.to_string());
        }
        blob::ensure(
            &self.containerd,
            lease,
            Kind::Config,
            &config_blob,
            Source::Bytes(&config_bytes),
            config_labels,
            progress,
        )
        .await?;

        let total = manifest.layers().iter().fold(0u64, |sum, l| sum.saturating_add(l.size()));
        progress.total.store(total, Ordering::Relaxed);
        let layers = Layers { descriptors: manifest.layers(), diff_ids: &diff_ids, chain: &chain };
        self.layers(&registry, lease, layers, &source_label, progress).await?;

        // Everything is in place: the records, then (by the caller) the lease goes.
        let id = ImageId::of_config(config_blob.digest.clone());
        self.put_records(reference, &resolved, &id).await?;
        Ok(id)
    }

    /// The image's records (see [`store::pulled_names`]), all → the object the reference names.
    async fn put_records(&self, reference: &Reference, resolved: &Resolved, id: &ImageId) -> Result<(), PullError> {
        let names = store::pulled_names(reference, &resolved.top.digest, id);
        store::put_pulled(&self.containerd, &names, &resolved.target(), self.sandbox_image.as_deref()).await?;
        Ok(())
    }

    /// The registry session: reading `hosts.toml` and CA files blocks, so off the async threads.
    async fn registry(&self, reference: &Reference, credentials: Option<Credentials>) -> Result<Registry, PullError> {
        let config_path = self.config.registry_config_path.clone();
        let clients = self.clients.clone();
        let reference = reference.clone();
        tokio::task::spawn_blocking(move || {
            let hosts = hosts::hosts_for(config_path.as_deref(), &reference.domain)?;
            Ok::<_, PullError>(Registry::new(&clients, reference, hosts, credentials)?)
        })
        .await
        .map_err(|e| PullError::Internal(format!("reading the registry configuration: {e}")))?
    }

    async fn config_bytes(&self, registry: &Registry, blob: &Wanted) -> Result<Vec<u8>, PullError> {
        if blob.size < 0 || blob.size as usize > MAX_CONFIG_BYTES {
            return Err(PullError::Malformed {
                what: "config",
                digest: blob.digest.to_string(),
                detail: format!("its descriptor says {} bytes; at most 4 MiB are accepted", blob.size),
            });
        }
        if self.containerd.content_info(blob.digest.as_str()).await?.is_some() {
            return Ok(self.containerd.read_content(blob.digest.as_str()).await?);
        }
        // A download like a layer's: within the node's bound.
        let _permit = self.in_flight.acquire().await.map_err(|_| PullError::Internal("semaphore closed".into()))?;
        let (mut response, _) = registry.fetch_blob(blob.digest.as_str(), 0).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|source| {
            PullError::Registry(crate::registry::RegistryError::Unreachable {
                host: response.url().host_str().unwrap_or_default().to_string(),
                source,
            })
        })? {
            if bytes.len() + chunk.len() > blob.size.max(0) as usize {
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        // Checked against its digest when stored (Source::Bytes).
        Ok(bytes)
    }

    /// Downloads every layer (at most `max_concurrent_downloads` at once, and within the
    /// node-wide `in_flight` bound) and unpacks the
    /// missing part of the chain in order, each layer as soon as it and its parent are there.
    async fn layers(
        &self,
        registry: &Registry,
        lease: &Lease,
        layers: Layers<'_>,
        source_label: &(String, String),
        progress: &Progress,
    ) -> Result<(), PullError> {
        let Layers { descriptors, diff_ids, chain } = layers;
        let snapshotter = &self.config.snapshotter;
        // The longest prefix of the chain already unpacked (a committed snapshot implies its
        // parents).
        let mut unpacked = 0;
        for i in (0..chain.len()).rev() {
            // One a collection took meanwhile: the chain below is looked at.
            if unpack::hold_if_committed(&self.containerd, lease, snapshotter, &chain[i]).await? {
                unpacked = i + 1;
                break;
            }
        }
        let staging = self.staging().await;
        let limit = Semaphore::new(self.config.max_concurrent_downloads.max(1));
        let mut done = Vec::new();
        let mut downloads = Vec::new();
        for (i, layer) in descriptors.iter().enumerate() {
            let (tx, rx) = oneshot::channel::<Option<crate::apply::Staged>>();
            done.push(rx);
            // `containerd.io/uncompressed` is set once the unpack verified the diff id.
            let labels = HashMap::from([source_label.clone()]);
            let limit = &limit;
            let staging = staging.as_ref().filter(|_| i >= unpacked);
            let blob = Wanted::of(layer);
            downloads.push(async move {
                let closed = |_| PullError::Internal("semaphore closed".into());
                let permit = limit.acquire().await.map_err(closed)?;
                progress.queued.fetch_add(1, Ordering::Relaxed);
                let node_permit = self.in_flight.acquire().await;
                progress.queued.fetch_sub(1, Ordering::Relaxed);
                let node_permit = node_permit.map_err(closed)?;
                // The direct apply: the layer is extracted while it downloads (teed), or, when
                // it was stored already, read back from the content store; in parallel with
                // the others either way.
                let unpacking = staging.map(|area| blob::Unpacking {
                    area,
                    media_type: layer.media_type().as_ref(),
                    diff_id: diff_ids[i].as_str(),
                    chain_id: chain[i].as_str(),
                    first: i == 0,
                });
                // The stall watchdog sees a teed layer's progress in its bytes: its extraction
                // only goes as fast as they come.
                let extract_started = std::time::Instant::now();
                let span = tracing::debug_span!("extract", layer = %blob.digest, chain_id = %chain[i]);
                let teed = blob::ensure_layer(&self.containerd, lease, &blob, registry, labels, progress, unpacking)
                    .instrument(span.clone())
                    .await?;
                drop((node_permit, permit));
                let staged = match (teed, staging) {
                    (Some(staged), _) => {
                        METRICS.extract_duration.observe(extract_started.elapsed().as_secs_f64());
                        Some(staged)
                    }
                    (None, Some(area)) => {
                        progress.unpacking.fetch_add(1, Ordering::Relaxed);
                        let extract_started = std::time::Instant::now();
                        let staged = area
                            .extract(
                                &self.containerd,
                                lease.id(),
                                layer.media_type().as_ref(),
                                blob.digest.as_str(),
                                diff_ids[i].as_str(),
                                chain[i].as_str(),
                                i == 0,
                            )
                            .instrument(span)
                            .await;
                        progress.unpacking.fetch_sub(1, Ordering::Relaxed);
                        METRICS.extract_duration.observe(extract_started.elapsed().as_secs_f64());
                        staged?
                    }
                    (None, None) => None,
                };
                let _ = tx.send(staged);
                Ok::<(), PullError>(())
            });
        }
        let download_all = async {
            futures::future::try_join_all(downloads).await?;
            Ok::<(), PullError>(())
        };
        let unpack_all = async {
            for (i, ready) in done.into_iter().enumerate() {
                if i < unpacked {
                    continue;
                }
                // A dropped sender means that download failed (download_all reports it): stop
                // here, between two layers, with nothing half-made.
                let Ok(staged) = ready.await else {
                    return Ok(());
                };
                let layer = &descriptors[i];
                let span = tracing::info_span!("unpack", layer = %layer.digest(), chain_id = %chain[i]);
                progress.unpacking.fetch_add(1, Ordering::Relaxed);
                let unpack_started = std::time::Instant::now();
                let result = unpack::unpack_layer(
                    &self.containerd,
                    snapshotter,
                    lease,
                    unpack::Layer {
                        descriptor: containerd_client::types::Descriptor {
                            media_type: layer.media_type().to_string(),
                            digest: layer.digest().to_string(),
                            size: i64::try_from(layer.size()).unwrap_or(i64::MAX),
                            annotations: Default::default(),
                        },
                        diff_id: &diff_ids[i],
                        chain_id: &chain[i],
                        parent: i.checked_sub(1).map(|p| &chain[p]),
                    },
                    staged,
                )
                .instrument(span)
                .await;
                progress.unpacking.fetch_sub(1, Ordering::Relaxed);
                result?;
                METRICS.layers_unpacked.inc();
                METRICS.unpack_duration.observe(unpack_started.elapsed().as_secs_f64());
                tracing::debug!(layer = %layer.digest(), elapsed = ?unpack_started.elapsed(), "layer unpacked");
                progress.step();
            }
            Ok::<(), PullError>(())
        };
        // A failed unpack stops the downloads at once (a partial ingest is resumed by the next
        // try). A failed download lets the unpack in progress finish (or undo itself) first, so
        // that no half-made snapshot is left behind when the call answers.
        tokio::pin!(download_all, unpack_all);
        tokio::select! {
            downloaded = &mut download_all => {
                let unpacked = unpack_all.await;
                downloaded?;
                unpacked
            }
            unpacked = &mut unpack_all => {
                unpacked?;
                download_all.await
            }
        }
    }

    /// The direct apply's staging area when the snapshotter is overlayfs and its directory
    /// is reachable from here; otherwise every layer goes through containerd's diff service.
    async fn staging(&self) -> Option<crate::apply::StagingArea> {
        if self.config.snapshotter != crate::apply::SNAPSHOTTER {
            return None;
        }
        self.staging
            .get_or_init(|| async {
                match crate::apply::StagingArea::discover(&self.containerd).await {
                    Ok(area) => Some(area),
                    Err(why) => {
                        tracing::warn!(why, "layers are applied by containerd's diff service, not directly");
                        None
                    }
                }
            })
            .await
            .clone()
    }
}
