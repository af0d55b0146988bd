//! Containers: CreateContainer, StartContainer, StopContainer, RemoveContainer, ListContainers,
//! ContainerStatus, CheckpointContainer, their exits and recovery, and the RPCs on a
//! container's process, stats and logs.
//!
//! A container is a containerd container record (`crisp.io/kind=container`, labelled with its
//! pod, name, attempt and state; [`record`]) whose OCI spec is built by [`spec`] from the CRI
//! request and the image, a snapshot of the image's top layer, and a containerd task while it
//! runs. Exits come from containerd's event stream ([`exits`]), never from polling. Nothing is
//! kept in memory that a restart would need: [`Containers::watch_exits`] rebuilds the log writers
//! of running containers and records the exits that happened while the service was down.
//! ListContainers and ContainerStatus answer from an in-memory [`index`] of the records, kept
//! current by crisp's own writes and containerd's container events, and rebuilt from containerd
//! after a restart. Task calls into a pod's shim take turns ([`Containers::shim_turn`]).
//!
//! One operation per file; [`ContainerError`] is this module's one error type, mapped to a
//! `tonic::Status` by `crisp_errors::to_status`.

mod checkpoint;
mod create;
pub mod exec_sync;
mod exits;
mod index;
mod list;
pub mod metrics;
mod pod;
pub mod record;
mod remove;
mod rootfs;
pub mod select;
pub mod spec;
mod start;
pub mod stats;
mod status;
mod stop;
pub mod update;

pub use checkpoint::checkpoint;
pub use create::create;
pub use list::{UnfilteredList, list};
pub use pod::{remove_all as remove_pod_containers, stop_all as stop_pod_containers};
pub use remove::remove;
pub use start::start;
pub use status::status;
pub use stop::stop;

use crate::events::Hub;
use crate::logs::LogWriter;
use crate::sandbox::SandboxError;
use crisp_config::Config;
use crisp_containerd::{Containerd, ContainerdError};
use crisp_errors::GrpcError;
use crisp_image_model::ImageStore;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container config: `{0}` is required")]
    MissingField(&'static str),
    #[error("container `{0}` not found")]
    NotFound(String),
    #[error("container id prefix `{0}` matches more than one container")]
    Ambiguous(String),
    #[error("pod sandbox `{0}` not found")]
    PodNotFound(String),
    #[error("pod sandbox `{0}` is not ready")]
    PodNotReady(String),
    #[error("image `{0}` not found")]
    ImageNotFound(String),
    #[error("failed to reserve container name `{name}`: name is reserved for `{existing}`")]
    NameReserved { name: String, existing: String },
    #[error("container `{id}` is {state}, not {wanted}")]
    WrongState { id: String, state: &'static str, wanted: &'static str },
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("container `{id}`: {source}")]
    Containerd { id: String, source: ContainerdError },
    #[error("container `{id}`: image: {source}")]
    Image { id: String, source: crisp_image_model::StoreError },
    #[error("container `{id}`: {source}")]
    Spec { id: String, source: spec::SpecError },
    #[error("container `{id}`: {what} {path}: {source}")]
    Io { id: String, what: &'static str, path: String, source: std::io::Error },
    #[error("container `{id}`: its containerd record is unreadable: {reason}")]
    Record { id: String, reason: String },
    #[error("container `{id}`: {reason}")]
    Internal { id: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unimplemented(String),
}

impl GrpcError for ContainerError {
    fn code(&self) -> Code {
        match self {
            ContainerError::MissingField(_) | ContainerError::Ambiguous(_) => Code::InvalidArgument,
            ContainerError::NotFound(_) | ContainerError::PodNotFound(_) | ContainerError::ImageNotFound(_) => {
                Code::NotFound
            }
            ContainerError::PodNotReady(_) | ContainerError::WrongState { .. } | ContainerError::Unsupported(_) => {
                Code::FailedPrecondition
            }
            ContainerError::NameReserved { .. } => Code::AlreadyExists,
            ContainerError::Unimplemented(_) => Code::Unimplemented,
            ContainerError::Sandbox(err) => err.code(),
            ContainerError::Containerd { source, .. } => source.code(),
            ContainerError::Image { source: crisp_image_model::StoreError::Containerd(source), .. } => source.code(),
            ContainerError::Spec { source, .. } => source.code(),
            ContainerError::Image { .. }
            | ContainerError::Io { .. }
            | ContainerError::Record { .. }
            | ContainerError::Internal { .. } => Code::Internal,
        }
    }
}

impl ContainerError {
    fn containerd(id: &str) -> impl FnOnce(ContainerdError) -> ContainerError {
        let id = id.to_string();
        move |source| ContainerError::Containerd { id, source }
    }

    fn io(id: &str, what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ContainerError {
        let id = id.to_string();
        let path = path.display().to_string();
        move |source| ContainerError::Io { id, what, path, source }
    }
}

/// How many images' `/etc/passwd` and `/etc/group` are kept (a node runs a few dozen images).
const IMAGE_FILES_KEPT: usize = 256;

/// The container side of the runtime service: what every container RPC shares. Cheap to clone.
#[derive(Clone)]
pub struct Containers {
    pub(crate) containerd: Containerd,
    pub(crate) config: Arc<Config>,
    pub(crate) images: ImageStore,
    pub(crate) hub: Hub,
    pub(crate) host: Arc<spec::HostFeatures>,
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Names a CreateContainer in flight is making, with their ids.
    names: Mutex<HashMap<String, String>>,
    /// The log writer of each running container.
    writers: crate::logs::Writers,
    /// One lock per container: a start, a stop and the recording of an exit never interleave.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Containers whose cgroup reported an OOM kill (`/tasks/oom`) since they started.
    oom: Mutex<HashSet<String>>,
    /// What ListContainers and ContainerStatus answer ([`index`]).
    index: index::Index,
    /// One task call at a time into each pod's shim ([`Containers::shim_turn`]).
    shims: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Containers whose exit this process recorded, with whether their task is deleted too
    /// ([`Containers::exit_recorded`]): a second report of the exit, and the removal, then
    /// ask containerd nothing.
    exits: Mutex<HashMap<String, TaskGone>>,
    /// Images' `/etc/passwd` and `/etc/group` by the chain id of their top layer (layers never
    /// change): a create from an image seen before mounts nothing.
    image_files: Mutex<HashMap<String, Arc<spec::ImageFiles>>>,
}

/// Whether the task of a container whose exit was recorded is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskGone {
    No,
    Yes,
}

impl Containers {
    pub fn new(containerd: Containerd, config: Arc<Config>, hub: Hub, host: spec::HostFeatures) -> Self {
        Self {
            images: ImageStore::new(containerd.clone()),
            containerd,
            config,
            hub,
            host: Arc::new(host),
            inner: Arc::default(),
        }
    }

    /// The ListContainers and ContainerStatus index, which the container gauges count ([`crate::metrics`]).
    pub(crate) fn index(&self) -> &index::Index {
        &self.inner.index
    }

    /// The log writers of the running containers (ReopenContainerLog reopens a file).
    pub fn log_writers(&self) -> &crate::logs::Writers {
        &self.inner.writers
    }

    /// The log writer of a running container (ReopenContainerLog reopens its file).
    pub fn log_writer(&self, id: &str) -> Option<Arc<LogWriter>> {
        self.inner.writers.get(id)
    }

    fn set_log_writer(&self, id: &str, writer: Arc<LogWriter>) {
        self.inner.writers.insert(id, writer);
    }

    fn take_log_writer(&self, id: &str) -> Option<Arc<LogWriter>> {
        self.inner.writers.remove(id)
    }

    /// Holds the container's lock (start, exit recording and removal take it).
    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock =
            self.inner.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_string()).or_default().clone();
        lock.lock_owned().await
    }

    /// Waits for the pod's shim to be free of crisp's other signals and deletes, and holds it
    /// until the turn is dropped. containerd 1.6's runc shim serves all of a pod's tasks and
    /// runs `runc` for each kill and delete; a burst of them together with the exits they cause
    /// overruns its exit queue (32 deep, shared by every `runc` it waits on), and it then
    /// stops answering and loses exits. containerd's own CRI plugin stops a pod's containers
    /// one after the other; crisp keeps concurrent Stop and Remove calls but lets one task
    /// call at a time into a shim.
    async fn shim_turn(&self, pod: &str) -> ShimTurn {
        let gate =
            self.inner.shims.lock().unwrap_or_else(|p| p.into_inner()).entry(pod.to_string()).or_default().clone();
        let guard = gate.lock_owned().await;
        ShimTurn { shims: self.inner.shims.clone(), pod: pod.to_string(), guard: Some(guard) }
    }

    fn forget(&self, id: &str) {
        self.inner.locks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.inner.exits.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.inner.oom.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.take_log_writer(id);
    }

    /// Whether this process recorded the container's exit, and if so whether its task is deleted.
    fn exit_recorded(&self, id: &str) -> Option<TaskGone> {
        self.inner.exits.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied()
    }

    fn set_exit_recorded(&self, id: &str, task: TaskGone) {
        self.inner.exits.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), task);
    }

    /// The `/etc/passwd` and `/etc/group` read before from an image whose top layer is `top`.
    fn cached_image_files(&self, top: &str) -> Option<Arc<spec::ImageFiles>> {
        self.inner.image_files.lock().unwrap_or_else(|p| p.into_inner()).get(top).cloned()
    }

    /// Keeps what was read from an image's rootfs, for [`IMAGE_FILES_KEPT`] images at most.
    fn cache_image_files(&self, top: &str, files: Arc<spec::ImageFiles>) {
        let mut cache = self.inner.image_files.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= IMAGE_FILES_KEPT {
            cache.clear();
        }
        cache.insert(top.to_string(), files);
    }

    fn mark_oom(&self, id: &str) {
        self.inner.oom.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string());
    }

    fn take_oom(&self, id: &str) -> bool {
        self.inner.oom.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
    }

    /// The longest log line written whole (`runtime.max_container_log_line_size`; 0: no limit).
    fn max_log_line_bytes(&self) -> usize {
        self.config.runtime.max_log_line_bytes().unwrap_or(0)
    }

    /// The container's directory under `runtime.root_dir` (kept across reboots).
    pub fn root_dir(&self, id: &str) -> std::path::PathBuf {
        self.config.runtime.root_dir.join("containers").join(id)
    }

    /// The container's directory under `runtime.state_dir` (its FIFOs; gone after a reboot).
    pub fn state_dir(&self, id: &str) -> std::path::PathBuf {
        self.config.runtime.state_dir.join("containers").join(id)
    }
}

/// A pod's shim held for one task call ([`Containers::shim_turn`]); the gate is forgotten with
/// its last user.
struct ShimTurn {
    shims: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    pod: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for ShimTurn {
    fn drop(&mut self) {
        self.guard.take();
        let mut shims = self.shims.lock().unwrap_or_else(|p| p.into_inner());
        if shims.get(&self.pod).is_some_and(|gate| Arc::strong_count(gate) == 1) {
            shims.remove(&self.pod);
        }
    }
}

/// A name reserved by a CreateContainer in flight; released when dropped.
struct Reserved {
    containers: Containers,
    name: String,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.containers.inner.names.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.name);
    }
}

impl Containers {
    fn reserve(&self, name: &str, id: &str) -> Result<Reserved, ContainerError> {
        let mut names = self.inner.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = names.get(name) {
            return Err(ContainerError::NameReserved { name: name.to_string(), existing: existing.clone() });
        }
        names.insert(name.to_string(), id.to_string());
        Ok(Reserved { containers: self.clone(), name: name.to_string() })
    }
}

/// Unix nanoseconds now.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or_default()
}
