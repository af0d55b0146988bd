//! A container's OCI runtime spec, built from the CRI request (the container's and the pod's
//! config), the pod's record (its pinned namespaces, files, cgroup parent), the image's config
//! and what this node can do. Pure: it reads nothing but its input and the host paths the
//! request names (to resolve symlinks), and writes nothing; what must exist on disk before the
//! container is created is returned in [`Built::create_dirs`].
//!
//! INTERFACE (fixed; the `spec` helper fills in the body, the container lifecycle calls it).

use crate::sandbox::Sandbox;
use crisp_errors::GrpcError;
use crisp_proto::cri::{ContainerConfig, PodSandboxConfig};
use oci_spec::image::ImageConfiguration;
use std::path::{Path, PathBuf};
use tonic::Code;

/// Everything the spec is built from.
pub struct SpecInput<'a> {
    /// The container id crisp chose.
    pub id: &'a str,
    /// The container's config, as sent in CreateContainer.
    pub config: &'a ContainerConfig,
    /// The pod's config, as sent in CreateContainer.
    pub pod: &'a PodSandboxConfig,
    /// The pod's record (pinned namespaces, hostname/hosts/resolv.conf, `/dev/shm`, cgroup parent).
    pub sandbox: &'a Sandbox,
    /// The image's config (entrypoint, cmd, env, working dir, user, volumes, stop signal).
    pub image: &'a ImageConfiguration,
    /// `/etc/passwd` and `/etc/group` from the container's rootfs, to resolve users and groups.
    pub image_files: &'a ImageFiles,
    /// The container's own directory under `runtime.root_dir` (image volumes go below it).
    pub container_dir: &'a Path,
    /// The pod's shared PID namespace (its infra process's), where the pod shares one.
    pub pid_namespace: Option<&'a Path>,
    /// What this node and its OCI runtime can do.
    pub host: &'a HostFeatures,
}

/// Files read from the container's rootfs before its spec is built.
#[derive(Debug, Default, Clone)]
pub struct ImageFiles {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

/// What this node and its OCI runtime can do (detected once at start).
#[derive(Debug, Clone, Default)]
pub struct HostFeatures {
    /// runc supports recursive read-only mounts (`rro`; from `runc features`).
    pub recursive_read_only: bool,
    /// The host has AppArmor enabled.
    pub apparmor: bool,
    /// The lowest `oom_score_adj` this process may give a child (0 without CAP_SYS_RESOURCE).
    pub min_oom_score_adj: i32,
    /// The cgroup hierarchy is v2 (unified).
    pub cgroup_v2: bool,
}

/// The identity the container's process gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub supplemental_groups: Vec<u32>,
}

/// A built spec and what its caller must do before creating the container.
#[derive(Debug)]
pub struct Built {
    pub spec: oci_spec::runtime::Spec,
    /// Directories to create (missing bind-mount sources the kubelet expects made; image volumes).
    pub create_dirs: Vec<PathBuf>,
    /// The identity the process will run as (reported in ContainerStatus.user).
    pub user: ProcessUser,
    /// The signal StopContainer sends first (the image's STOPSIGNAL, else SIGTERM), as a number.
    pub stop_signal: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("container config: `{field}` {reason}")]
    Invalid { field: String, reason: String },
    #[error("building the OCI spec: {0}")]
    Build(String),
}

impl GrpcError for SpecError {
    fn code(&self) -> Code {
        match self {
            SpecError::Invalid { .. } => Code::InvalidArgument,
            SpecError::Build(_) => Code::Internal,
        }
    }
}

/// Builds the OCI spec for `input`.
pub fn build(input: &SpecInput) -> Result<Built, SpecError> {
    let _ = input;
    Err(SpecError::Build("the OCI spec builder is not written yet".into()))
}
