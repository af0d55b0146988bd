//! CreateContainer: "creates a new container in specified PodSandbox."
//!
//! Steps, each undone by [`Undo`] when a later one fails (or the call is dropped): the pod
//! must exist and be ready; the name `name_podname_podns_poduid_attempt` is reserved (a
//! container of the pod with that name and attempt, or a create in flight, names the
//! existing one); the image is resolved (NOT_FOUND naming it when absent); a snapshot of its
//! top layer is prepared (key = the container id) under a lease until the record references
//! it; `/etc/passwd` and `/etc/group` are read from it; the OCI spec is built and the
//! directories it asks for are made; the containerd record, last, makes the container exist.

use super::record::{self, Info, State};
use super::spec::{self, SpecInput};
use super::{ContainerError, Containers, now_nanos, rootfs};
use crate::sandbox;
use crisp_containerd::Lease;
use crisp_containerd::labels::RUNC_SHIM_GROUP;
use crisp_proto::cri::{ContainerConfig, ContainerEventType, CreateContainerRequest, PodSandboxConfig};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long the lease holding a new container's snapshot lives if crisp dies before deleting it.
const LEASE_LIFETIME: Duration = Duration::from_secs(600);

fn new_id() -> Result<String, ContainerError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(ContainerError::io(
        "(new)",
        "reading",
        Path::new("/dev/urandom"),
    ))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What a failed create undoes: the record, the snapshot, the directories.
struct Undo {
    containers: Containers,
    id: String,
    snapshotter: String,
    snapshot: bool,
    dirs: Vec<PathBuf>,
    record: bool,
}

impl Undo {
    fn disarm(mut self) {
        self.snapshot = false;
        self.dirs.clear();
        self.record = false;
    }
}

async fn undo(
    containers: Containers,
    id: String,
    snapshotter: String,
    snapshot: bool,
    dirs: Vec<PathBuf>,
    record: bool,
) {
    if record && let Err(err) = containers.containerd.delete_container_record(&id).await {
        tracing::warn!(id, error = %crisp_errors::message_chain(&err), "rolling back: deleting the record");
    }
    if snapshot {
        remove_snapshot(&containers, &snapshotter, &id).await;
    }
    for dir in dirs {
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(id, dir = %dir.display(), error = %err, "rolling back: removing a directory");
        }
    }
}

/// Removes the container's snapshot now (an absent one is removed already).
pub async fn remove_snapshot(containers: &Containers, snapshotter: &str, id: &str) {
    use crisp_containerd::containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
    let request = RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: id.to_string() };
    if let Err(status) = containers.containerd.snapshots().remove(request).await
        && status.code() != tonic::Code::NotFound
    {
        tracing::warn!(id, error = %status.message(), "removing the container's snapshot; containerd's GC takes it");
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !(self.snapshot || self.record || !self.dirs.is_empty()) {
            return;
        }
        let args = (
            self.containers.clone(),
            self.id.clone(),
            self.snapshotter.clone(),
            self.snapshot,
            std::mem::take(&mut self.dirs),
            self.record,
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(undo(args.0, args.1, args.2, args.3, args.4, args.5));
        }
    }
}

fn validate(request: &CreateContainerRequest) -> Result<(&ContainerConfig, &str), ContainerError> {
    if request.pod_sandbox_id.is_empty() {
        return Err(ContainerError::MissingField("pod_sandbox_id"));
    }
    let config = request.config.as_ref().ok_or(ContainerError::MissingField("config"))?;
    let metadata = config.metadata.as_ref().ok_or(ContainerError::MissingField("config.metadata"))?;
    if metadata.name.is_empty() {
        return Err(ContainerError::MissingField("config.metadata.name"));
    }
    let image = config.image.as_ref().map(|i| i.image.as_str()).unwrap_or_default();
    if image.is_empty() {
        return Err(ContainerError::MissingField("config.image.image"));
    }
    Ok((config, image))
}

/// The annotations containerd's CRI plugin puts on a container's spec, and the shim group.
fn cri_annotations(pod: &sandbox::Sandbox, name: &str, image: &str) -> [(&'static str, String); 8] {
    [
        (RUNC_SHIM_GROUP, pod.id.clone()),
        ("io.kubernetes.cri.container-type", "container".into()),
        ("io.kubernetes.cri.container-name", name.to_string()),
        ("io.kubernetes.cri.sandbox-id", pod.id.clone()),
        ("io.kubernetes.cri.sandbox-name", pod.name.clone()),
        ("io.kubernetes.cri.sandbox-namespace", pod.namespace.clone()),
        ("io.kubernetes.cri.sandbox-uid", pod.uid.clone()),
        ("io.kubernetes.cri.image-name", image.to_string()),
    ]
}

pub async fn create(containers: &Containers, request: CreateContainerRequest) -> Result<String, ContainerError> {
    let (config, image_name) = validate(&request)?;
    let metadata = config.metadata.clone().unwrap_or_default();
    let pod = sandbox::find_record(&containers.containerd, &request.pod_sandbox_id)
        .await?
        .ok_or_else(|| ContainerError::PodNotFound(request.pod_sandbox_id.clone()))?;
    if pod.state != sandbox::State::Ready {
        return Err(ContainerError::PodNotReady(pod.sandbox.id.clone()));
    }
    let pod = pod.sandbox;
    let id = new_id()?;
    let name = format!("{}_{}_{}_{}_{}", metadata.name, pod.name, pod.namespace, pod.uid, metadata.attempt);
    let _reserved = containers.reserve(&name, &id)?;
    let same_name = |c: &crisp_proto::cri::Container| {
        c.pod_sandbox_id == pod.id
            && c.metadata.as_ref().is_some_and(|m| m.name == metadata.name && m.attempt == metadata.attempt)
    };
    if let Some(existing) = containers.indexed_where(same_name).await?.into_iter().next() {
        return Err(ContainerError::NameReserved { name, existing: existing.id });
    }

    let image = containers
        .images
        .resolve(image_name)
        .await
        .map_err(|source| ContainerError::Image { id: id.clone(), source })?
        .ok_or_else(|| ContainerError::ImageNotFound(image_name.to_string()))?;
    let chain_ids = image.details.chain_ids().map_err(|e| ContainerError::Internal {
        id: id.clone(),
        reason: format!("image {}: {e}", image.id.as_str()),
    })?;
    let top = chain_ids.last().map(|c| c.as_str().to_string());

    let snapshotter = containers.config.image.snapshotter.clone();
    let mut undo = Undo {
        containers: containers.clone(),
        id: id.clone(),
        snapshotter: snapshotter.clone(),
        snapshot: false,
        dirs: vec![],
        record: false,
    };
    let lease = Lease::create(
        &containers.containerd,
        "crisp-container",
        HashMap::from([(crisp_containerd::labels::crisp::PURPOSE.to_string(), format!("container {id}"))]),
        LEASE_LIFETIME,
    )
    .await
    .map_err(ContainerError::containerd(&id))?;
    let mounts = containers
        .containerd
        .prepare_snapshot(&snapshotter, lease.id(), &id, top.as_deref())
        .await
        .map_err(ContainerError::containerd(&id))?;
    undo.snapshot = true;

    let (root_dir, state_dir) = (containers.root_dir(&id), containers.state_dir(&id));
    undo.dirs = vec![root_dir.clone(), state_dir.clone()];
    for dir in [&root_dir, &state_dir] {
        std::fs::create_dir_all(dir).map_err(ContainerError::io(&id, "creating", dir))?;
    }
    let image_files = match top.as_deref().and_then(|top| containers.cached_image_files(top)) {
        Some(files) => files,
        None => {
            let scratch = state_dir.join("rootfs-read");
            let files = tokio::task::spawn_blocking(move || rootfs::image_files(&mounts, &scratch))
                .await
                .map_err(|e| ContainerError::Internal { id: id.clone(), reason: format!("reading the rootfs: {e}") })?
                .map_err(ContainerError::io(&id, "reading /etc/passwd and /etc/group of", &state_dir))?;
            let files = Arc::new(files);
            if let Some(top) = &top {
                containers.cache_image_files(top, files.clone());
            }
            files
        }
    };

    let default_pod = PodSandboxConfig::default();
    let pid_namespace = pod.pid_namespace();
    let input = SpecInput {
        id: &id,
        config,
        pod: request.sandbox_config.as_ref().unwrap_or(&default_pod),
        sandbox: &pod,
        image: &image.details.config,
        image_files: &image_files,
        container_dir: &root_dir,
        pid_namespace: pid_namespace.as_deref(),
        host: &containers.host,
    };
    let mut built = spec::build(&input).map_err(|source| ContainerError::Spec { id: id.clone(), source })?;
    let annotations = built.spec.annotations_mut().get_or_insert_with(HashMap::new);
    for (key, value) in cri_annotations(&pod, &metadata.name, image_name) {
        annotations.entry(key.to_string()).or_insert(value);
    }
    for dir in &built.create_dirs {
        std::fs::create_dir_all(dir).map_err(ContainerError::io(&id, "creating", dir))?;
    }
    let cgroup = built
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let spec_json = serde_json::to_vec(&built.spec)
        .map_err(|e| ContainerError::Internal { id: id.clone(), reason: format!("the OCI spec: {e}") })?;

    let log_path = if pod.log_directory.is_empty() || config.log_path.is_empty() {
        String::new()
    } else {
        Path::new(&pod.log_directory).join(&config.log_path).display().to_string()
    };
    let info = Info {
        sandbox_id: pod.id.clone(),
        created_at: now_nanos(),
        image: image.repo_tags.first().cloned().unwrap_or_else(|| image_name.to_string()),
        image_ref: image.repo_digests.first().cloned().unwrap_or_else(|| image.id.as_str().to_string()),
        image_id: image.id.as_str().to_string(),
        log_path,
        uid: built.user.uid,
        gid: built.user.gid,
        supplemental_groups: built.user.supplemental_groups.clone(),
        stop_signal: built.stop_signal,
        snapshotter,
        cgroup,
        ..Default::default()
    };
    let container = record::new_record(
        &id,
        State::Created,
        &info,
        config,
        spec_json,
        image.id.as_str(),
        &containers.config.runtime.runtime_type,
    )?;
    let indexed = record::read(container.clone())?;
    containers.containerd.create_container_record(container).await.map_err(ContainerError::containerd(&id))?;
    undo.record = true;
    // The record references the snapshot now: the lease is no longer needed. Its deletion is
    // no part of the answer.
    let lease_id = id.clone();
    tokio::spawn(
        async move {
            if let Err(err) = lease.delete().await {
                tracing::debug!(id = lease_id, error = %err, "deleting the create's lease; it expires by itself");
            }
        }
        .in_current_span(),
    );
    undo.disarm();
    containers.index_put(&indexed).await;
    tracing::info!(id, name, pod = %pod.id, "container created");
    containers.publish(&id, &pod.id, ContainerEventType::ContainerCreatedEvent).await;
    Ok(id)
}
