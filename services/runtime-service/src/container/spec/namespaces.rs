//! The container's namespaces: its own mount namespace; the pod's network, IPC and UTS
//! namespaces joined through the pod's pins (`<pod dir>/ns/<kind>`), or the node's where the
//! pod uses the host's; the pod's PID namespace where the pod shares one (POD mode and the
//! pod's infra process, given or in the pod's record), the node's with NODE, else a PID namespace of its own; on cgroup
//! v2 a cgroup namespace of its own unless privileged (its `/sys/fs/cgroup` then shows only its
//! own cgroup), as containerd does. User namespaces are not supported: a request for one is
//! refused.

use super::SpecError;
use crate::sandbox::Sandbox;
use crisp_proto::cri::{LinuxContainerSecurityContext, NamespaceMode};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType};
use std::path::Path;

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, SpecError> {
    let mut builder = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(path) = path {
        builder = builder.path(path);
    }
    builder.build().map_err(|e| SpecError::Build(format!("namespace {typ}: {e}")))
}

/// Where the pod's pin of the namespace `kind` (`net`, `ipc`, `uts`) is.
pub fn pod_pin(sandbox: &Sandbox, kind: &str) -> std::path::PathBuf {
    sandbox.dir.join("ns").join(kind)
}

/// The namespaces of a container of `sandbox`.
pub fn build(
    sandbox: &Sandbox,
    sc: Option<&LinuxContainerSecurityContext>,
    pid_namespace: Option<&Path>,
    own_cgroup_namespace: bool,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)?];
    if own_cgroup_namespace {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }
    if !sandbox.host_network() {
        let netns = sandbox.netns.clone().unwrap_or_else(|| pod_pin(sandbox, "net"));
        namespaces.push(namespace(LinuxNamespaceType::Network, Some(&netns))?);
        namespaces.push(namespace(LinuxNamespaceType::Uts, Some(&pod_pin(sandbox, "uts")))?);
    }
    if !sandbox.host_ipc() {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, Some(&pod_pin(sandbox, "ipc")))?);
    }
    let userns = sc.and_then(|s| s.namespace_options.as_ref()).and_then(|o| o.userns_options.as_ref());
    if userns.is_some_and(|u| u.mode != NamespaceMode::Node as i32) {
        return Err(SpecError::Invalid {
            field: "linux.security_context.namespace_options.userns_options".into(),
            reason: "user namespaces are not supported by this runtime".into(),
        });
    }
    let pid_mode = sc
        .and_then(|s| s.namespace_options.as_ref())
        .map(|o| NamespaceMode::try_from(o.pid).unwrap_or_default())
        .unwrap_or_else(|| NamespaceMode::try_from(sandbox.pid_mode).unwrap_or_default());
    // The caller's, else the pod's infra process's.
    let pod_pid = pid_namespace.map(Path::to_path_buf).or_else(|| sandbox.pid_namespace());
    match pid_mode {
        NamespaceMode::Node => {}
        NamespaceMode::Pod if pod_pid.is_some() => {
            namespaces.push(namespace(LinuxNamespaceType::Pid, pod_pid.as_deref())?);
        }
        NamespaceMode::Pod | NamespaceMode::Container => namespaces.push(namespace(LinuxNamespaceType::Pid, None)?),
        NamespaceMode::Target => {
            return Err(SpecError::Invalid {
                field: "linux.security_context.namespace_options.pid".into(),
                reason: "TARGET (another container's PID namespace) is not supported".into(),
            });
        }
    }
    Ok(namespaces)
}
