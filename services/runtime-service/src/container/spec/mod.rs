//! A container's OCI runtime spec, built from the CRI request (the container's and the pod's
//! config), the pod's record (its pinned namespaces, files, cgroup parent), the image's config
//! and what this node can do. Pure: it reads nothing but its input and the host paths the
//! request names (to resolve symlinks), and writes nothing; what must exist on disk before the
//! container is created is returned in [`Built::create_dirs`].
//!
//! INTERFACE (fixed; the `spec` helper fills in the body, the container lifecycle calls it).

mod host;
mod mounts;
mod namespaces;
mod process;
mod resources;
mod seccomp;
mod security;
#[cfg(test)]
mod tests;
mod user;

pub use host::rro_in_features;
pub use process::parse_signal;

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
    /// The memory controller limits swap (a memory limit then also caps swap).
    pub swap_limit: bool,
    /// The hugetlb controller is there (else hugepage limits are left out, as containerd does).
    pub hugetlb: bool,
    /// This service's bounding capability set (bit n = capability n), the most a container
    /// may get ("ALL", privileged); `None`: every capability.
    pub bounding_capabilities: Option<u64>,
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

/// The annotations containerd's CRI plugin sets on a container's spec.
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

fn oci(what: &str) -> impl FnOnce(oci_spec::OciSpecError) -> SpecError + '_ {
    move |e| SpecError::Build(format!("{what}: {e}"))
}

/// Builds the OCI spec for `input`.
pub fn build(input: &SpecInput) -> Result<Built, SpecError> {
    use oci_spec::runtime::{LinuxBuilder, ProcessBuilder, RootBuilder, SpecBuilder, UserBuilder};

    let config = input.config;
    let image = input.image.config().as_ref();
    let linux = config.linux.as_ref();
    let sc = linux.and_then(|l| l.security_context.as_ref());
    let container_resources = linux.and_then(|l| l.resources.as_ref());
    let privileged = security::privileged(sc, input.pod)?;
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);

    // The process.
    let user = user::resolve(sc, image.and_then(|i| i.user().as_deref()), input.image_files)?;
    let hostname = match input.sandbox.hostname.as_str() {
        "" => nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        name => name.to_string(),
    };
    let capabilities = security::capabilities(sc, privileged, input.host.bounding_capabilities)?;
    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.supplemental_groups.clone())
                .build()
                .map_err(oci("user"))?,
        )
        .args(process::args(config, image)?)
        .env(process::env(config, image, &hostname))
        .cwd(process::cwd(config, image))
        .capabilities(capabilities.clone())
        .no_new_privileges(sc.is_some_and(|s| s.no_new_privs))
        .oom_score_adj(resources::oom_score_adj(container_resources, input.host));
    if let Some(profile) = security::apparmor_profile(sc, input.host.apparmor)? {
        process = process.apparmor_profile(profile);
    }
    let mut process = process.build().map_err(oci("process"))?;
    // No rlimits: the container inherits the shim's, as with containerd's CRI plugin.
    process.set_rlimits(None);

    // The filesystem.
    let image_volumes: Vec<String> = image.and_then(|i| i.volumes().clone()).unwrap_or_default();
    let mounts = mounts::build(&mounts::MountInput {
        requested: &config.mounts,
        pod_dir: &input.sandbox.dir,
        pod_shm: &input.sandbox.shm,
        image_volumes: &image_volumes,
        container_dir: input.container_dir,
        readonly_rootfs,
        privileged,
        rro_supported: input.host.recursive_read_only,
    })?;

    // Namespaces, cgroup, devices, confinement.
    let (mut device_nodes, allowed) = resources::requested_devices(&config.devices)?;
    if privileged {
        device_nodes = resources::host_devices()?;
    }
    let rules = resources::device_rules(privileged, allowed)?;
    let empty = Default::default();
    let bounding = capabilities.bounding().as_ref().unwrap_or(&empty);
    let (masked, readonly) = security::masked_and_readonly_paths(sc, privileged);
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces::build(input.sandbox, sc, input.pid_namespace, input.host.cgroup_v2 && !privileged)?)
        .cgroups_path(resources::cgroups_path(&input.sandbox.cgroup_parent, input.id))
        .resources(resources::build(container_resources, rules, input.host)?)
        .devices(device_nodes)
        .masked_paths(masked)
        .readonly_paths(readonly);
    if let Some(propagation) = &mounts.rootfs_propagation {
        linux = linux.rootfs_propagation(propagation.clone());
    }
    if let Some(filter) = seccomp::build(sc, privileged, bounding)? {
        linux = linux.seccomp(filter);
    }
    let linux = linux.build().map_err(oci("linux"))?;

    let mut spec = SpecBuilder::default()
        .version("1.0.2-dev")
        .root(RootBuilder::default().path("rootfs").readonly(readonly_rootfs).build().map_err(oci("root"))?)
        .process(process)
        .mounts(mounts.mounts)
        .annotations(annotations_for(input))
        .linux(linux)
        .build()
        .map_err(oci("spec"))?;
    // The pod's UTS namespace already has the pod's hostname (or is the node's): set none.
    spec.set_hostname(None);
    Ok(Built { spec, create_dirs: mounts.create_dirs, user, stop_signal: process::stop_signal(config, image)? })
}

/// The container's annotations, then the CRI ones and the shim group (which win).
fn annotations_for(input: &SpecInput) -> std::collections::HashMap<String, String> {
    use annotations::*;
    let pod = input.pod.metadata.clone().unwrap_or_default();
    let mut out = input.config.annotations.clone();
    out.extend([
        (CONTAINER_TYPE.to_string(), "container".to_string()),
        (CONTAINER_NAME.to_string(), input.config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default()),
        (SANDBOX_ID.to_string(), input.sandbox.id.clone()),
        (SANDBOX_NAME.to_string(), pod.name),
        (SANDBOX_NAMESPACE.to_string(), pod.namespace),
        (SANDBOX_UID.to_string(), pod.uid),
        (IMAGE_NAME.to_string(), input.config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default()),
        (crisp_containerd::labels::RUNC_SHIM_GROUP.to_string(), input.sandbox.id.clone()),
    ]);
    out
}
