//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus,
//! ListPodSandbox, PodSandboxStats, ListPodSandboxStats, UpdatePodSandboxResources.
//!
//! A pod is its namespaces (net, ipc, uts; made by a short-lived helper process and pinned
//! by bind mounts under `<runtime.state_dir>/pods/<id>/ns/`), its files (hostname, hosts,
//! resolv.conf, a `/dev/shm` tmpfs) in that same directory, its CNI attachment (state under
//! `<runtime.root_dir>/pods/<id>/`), and a containerd container record (no task) holding
//! everything else ([`record`]). No process runs per pod. Nothing is kept in memory across
//! calls except names being reserved by a RunPodSandbox in flight and each pod's last CPU sample
//! (for `usage_nano_cores`): a restarted service finds
//! every pod in containerd, and [`sweep`]s away what a RunPodSandbox it was killed in the
//! middle of left.
//!
//! One operation per file; [`SandboxError`] is this module's one error type, mapped to a
//! `tonic::Status` by `crisp_errors::to_status`.

mod files;
mod image;
mod infra;
mod list;
mod namespaces;
mod network;
mod record;
mod remove;
mod resources;
mod run;
mod stats;
mod status;
mod stop;
mod sweep;
mod validate;

pub use image::SandboxImage;
pub use list::list;
pub use namespaces::{HELPER_ARG, helper_main};
#[allow(unused_imports)]
pub use record::{Sandbox, State, Stored, find as find_record};
pub use remove::remove;
pub use resources::update as update_resources;
pub use run::{Reservations, run};
pub use stats::{CpuSamples, list_stats, list_with_link_counters, stats};
pub use status::status;
pub use stop::stop;
pub use sweep::sweep;

use crisp_containerd::ContainerdError;
use crisp_errors::GrpcError;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("pod sandbox config: `{0}` is required")]
    MissingField(&'static str),
    #[error("pod sandbox config: `{field}` {reason}")]
    Invalid { field: String, reason: String },
    #[error("runtime handler `{0}` is not known (crisp has \"\" and \"runc\")")]
    UnknownHandler(String),
    #[error("failed to reserve sandbox name `{name}`: name is reserved for `{existing}`")]
    NameReserved { name: String, existing: String },
    #[error("sysctl `{key}`: {reason}")]
    Sysctl { key: String, reason: &'static str },
    #[error("pod sandbox `{0}` not found")]
    NotFound(String),
    #[error("pod sandbox id prefix `{0}` matches more than one pod")]
    Ambiguous(String),
    #[error("pod `{pod}`: {what} {path}")]
    Io { pod: String, what: &'static str, path: String, source: std::io::Error },
    #[error("pod `{pod}`: making its namespaces: {reason}")]
    Namespaces { pod: String, reason: String },
    #[error("pod `{pod}`: network: {source}")]
    Network { pod: String, source: crisp_cni::CniError },
    #[error("pod `{pod}`: {source}")]
    Containerd { pod: String, source: ContainerdError },
    #[error("pod `{pod}`: {what}: {source}")]
    Task { pod: String, what: &'static str, source: tokio::task::JoinError },
    #[error("pod `{pod}`: its cgroup {path}{}", source.as_ref().map(|e| format!(": {e}")).unwrap_or_else(|| " is not there".into()))]
    Cgroup { pod: String, path: String, source: Option<std::io::Error> },
    #[error("pod `{pod}`: its containerd record is unreadable: {reason}")]
    Record { pod: String, reason: String },
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error("pod `{pod}`: its infra process: {what}: {source}")]
    Infra { pod: String, what: &'static str, source: ContainerdError },
}

impl GrpcError for SandboxError {
    fn code(&self) -> Code {
        match self {
            SandboxError::MissingField(_)
            | SandboxError::Invalid { .. }
            | SandboxError::UnknownHandler(_)
            | SandboxError::Sysctl { .. } => Code::InvalidArgument,
            SandboxError::NameReserved { .. } => Code::AlreadyExists,
            SandboxError::NotFound(_) => Code::NotFound,
            SandboxError::Cgroup { .. } => Code::FailedPrecondition,
            SandboxError::Ambiguous(_) => Code::InvalidArgument,
            SandboxError::Containerd { source, .. } => source.code(),
            SandboxError::Network {
                source: crisp_cni::CniError::MissingPlugin { .. } | crisp_cni::CniError::NoConfig { .. },
                ..
            } => Code::FailedPrecondition,
            SandboxError::Io { .. }
            | SandboxError::Task { .. }
            | SandboxError::Namespaces { .. }
            | SandboxError::Network { .. }
            | SandboxError::Record { .. } => Code::Internal,
            SandboxError::Image(image::ImageError::Pull { .. }) => Code::Unavailable,
            SandboxError::Image(image::ImageError::Containerd { source, .. }) => source.code(),
            SandboxError::Image(_) => Code::Internal,
            SandboxError::Infra { source, .. } => source.code(),
        }
    }
}

impl SandboxError {
    fn io(pod: &str, what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SandboxError {
        let pod = pod.to_string();
        let path = path.display().to_string();
        move |source| SandboxError::Io { pod, what, path, source }
    }
}
