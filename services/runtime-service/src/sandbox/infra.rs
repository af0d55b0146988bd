//! A pod's infra (pause) process, where the pod needs one: its containers share one PID
//! namespace (`namespace_options.pid == POD`), or `runtime.infra_container = "always"`. Like
//! CRI-O's `drop_infra_ctr`, no other pod gets a process or a shim.
//!
//! It is a containerd container `<pod id>-infra` (labels `crisp.io/kind=infra`,
//! `crisp.io/container.sandbox=<pod id>`) with a task, from the sandbox image ([`super::image`]):
//! in the pod's pinned network, IPC and UTS namespaces (the host's where the pod uses the
//! host's), a PID and mount namespace of its own, the cgroup `<cgroup parent>/<id>`, no stdio,
//! a read-only rootfs, no capabilities, no new privileges, the runc shim group annotation (one
//! shim per pod) and `oom_score_adj` -998 clamped to what this process may set. Its container id
//! and pid are kept in the pod's record; the pod's containers join its PID namespace.
//!
//! [`stop`] sends SIGTERM, then SIGKILL after [`STOP_GRACE`], and deletes the task; [`remove`]
//! deletes task, container and snapshot. Each is idempotent: what is gone already is fine.

use super::SandboxError;
use super::files::ns_dir;
use super::image::{PAUSE_USER, Ready};
use super::namespaces::{Kind, pin_path};
use super::record::Sandbox;
use crisp_config::{Config, InfraContainer};
use crisp_containerd::containerd_client::services::v1::container::Runtime;
use crisp_containerd::containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use crisp_containerd::containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest, KillRequest,
    StartRequest, WaitRequest,
};
use crisp_containerd::labels::{self, crisp as crisp_labels};
use crisp_containerd::{Containerd, ContainerdError};
use oci_spec::runtime::{LinuxCapabilities, LinuxNamespaceBuilder, LinuxNamespaceType, Spec, UserBuilder};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the infra process has to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// The `oom_score_adj` containerd gives a sandbox's pause process.
const OOM_SCORE_ADJ: i32 = -998;

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// What the pod's record keeps of its infra process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Infra {
    /// Its containerd container (and task) id.
    pub container_id: String,
    /// Its pid on the host.
    pub pid: u32,
    /// Its snapshotter (the rootfs snapshot's key is the container id).
    pub snapshotter: String,
}

/// Whether a pod with PID namespace mode `pid_mode` gets an infra process.
pub fn needed(config: &Config, pid_mode: i32) -> bool {
    config.runtime.infra_container == InfraContainer::Always || pid_mode == crisp_proto::cri::NamespaceMode::Pod as i32
}

/// The infra container's id for pod `pod`.
pub fn container_id(pod: &str) -> String {
    format!("{pod}-infra")
}

fn failed(pod: &str, what: &'static str) -> impl FnOnce(tonic::Status) -> SandboxError {
    let pod = pod.to_string();
    move |status| SandboxError::Infra { pod, what, source: ContainerdError::call(what, status) }
}

/// Whether `status` says the object is gone already.
fn gone(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::NotFound
}

/// The lowest `oom_score_adj` this process may give a child: anything with
/// CAP_SYS_RESOURCE, else no lower than its own (as containerd's `restrict_oom_score_adj`).
fn oom_score_adj(wanted: i32) -> i32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let has_sys_resource = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0);
    if has_sys_resource {
        return wanted;
    }
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(0);
    wanted.max(own)
}

/// The uid and gid the image's `USER` names, when numeric; the kubelet's pause user otherwise.
fn user(image: &Ready) -> (u32, u32) {
    let configured = image.config.config().as_ref().and_then(|c| c.user().clone()).unwrap_or_default();
    let numeric = |s: &str| s.parse::<u32>().ok();
    let parse = |user: &str| -> Option<(u32, u32)> {
        match user.split_once(':') {
            Some((u, g)) => Some((numeric(u)?, numeric(g)?)),
            None => numeric(user).map(|u| (u, u)),
        }
    };
    if configured.is_empty() {
        return (0, 0);
    }
    parse(&configured).or_else(|| parse(PAUSE_USER)).unwrap_or((65535, 65535))
}

/// The infra process's cgroup: `<cgroup parent>/<id>`, or `/crisp/<id>` with none.
fn cgroup_path(sandbox: &Sandbox, id: &str) -> PathBuf {
    let parent = if sandbox.cgroup_parent.is_empty() { "/crisp" } else { sandbox.cgroup_parent.as_str() };
    Path::new(parent).join(id)
}

/// The OCI spec of `sandbox`'s infra process.
fn spec(sandbox: &Sandbox, image: &Ready, id: &str) -> Result<Spec, String> {
    let mut spec = Spec::default();
    spec.set_hostname(None);
    let mut args: Vec<String> = image.config.config().as_ref().and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    args.extend(image.config.config().as_ref().and_then(|c| c.cmd().clone()).unwrap_or_default());
    if args.is_empty() {
        args.push("/pause".into());
    }
    let (uid, gid) = user(image);
    let process = spec.process_mut().as_mut().ok_or("the default spec has no process")?;
    process.set_args(Some(args));
    process.set_terminal(Some(false));
    process.set_cwd("/".into());
    process.set_env(Some(vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]));
    process.set_user(UserBuilder::default().uid(uid).gid(gid).build().map_err(|e| e.to_string())?);
    process.set_no_new_privileges(Some(true));
    let none = Some(Default::default());
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(none.clone());
    capabilities.set_effective(none.clone());
    capabilities.set_permitted(none.clone());
    capabilities.set_inheritable(none.clone());
    capabilities.set_ambient(none);
    process.set_capabilities(Some(capabilities));
    process.set_oom_score_adj(Some(oom_score_adj(OOM_SCORE_ADJ)));

    let root = spec.root_mut().as_mut().ok_or("the default spec has no root")?;
    root.set_path("rootfs".into());
    root.set_readonly(Some(true));

    let ns = ns_dir(&sandbox.dir);
    let namespace = |typ: LinuxNamespaceType, path: Option<PathBuf>| {
        let builder = LinuxNamespaceBuilder::default().typ(typ);
        match path {
            Some(path) => builder.path(path).build(),
            None => builder.build(),
        }
        .map_err(|e| e.to_string())
    };
    let mut namespaces = vec![namespace(LinuxNamespaceType::Pid, None)?, namespace(LinuxNamespaceType::Mount, None)?];
    if !sandbox.host_network() {
        namespaces.push(namespace(LinuxNamespaceType::Network, Some(pin_path(&ns, Kind::Net)))?);
        namespaces.push(namespace(LinuxNamespaceType::Uts, Some(pin_path(&ns, Kind::Uts)))?);
    }
    if !sandbox.host_ipc() {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, Some(pin_path(&ns, Kind::Ipc)))?);
    }
    let linux = spec.linux_mut().as_mut().ok_or("the default spec has no linux section")?;
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(cgroup_path(sandbox, id)));

    // What containerd's CRI plugin puts on a sandbox's spec, and the shim group.
    spec.set_annotations(Some(HashMap::from([
        (labels::RUNC_SHIM_GROUP.to_string(), sandbox.id.clone()),
        ("io.kubernetes.cri.container-type".to_string(), "sandbox".to_string()),
        ("io.kubernetes.cri.sandbox-id".to_string(), sandbox.id.clone()),
        ("io.kubernetes.cri.sandbox-name".to_string(), sandbox.name.clone()),
        ("io.kubernetes.cri.sandbox-namespace".to_string(), sandbox.namespace.clone()),
        ("io.kubernetes.cri.sandbox-uid".to_string(), sandbox.uid.clone()),
        ("io.kubernetes.cri.sandbox-log-directory".to_string(), sandbox.log_directory.clone()),
        ("io.kubernetes.cri.image-name".to_string(), image.name.clone()),
    ])));
    Ok(spec)
}

/// Starts `sandbox`'s infra process from `image`; on failure removes what it made.
pub async fn start(
    containerd: &Containerd,
    config: &Config,
    image: &Ready,
    sandbox: &Sandbox,
) -> Result<Infra, SandboxError> {
    let pod = sandbox.id.as_str();
    let id = container_id(pod);
    let snapshotter = config.image.snapshotter.clone();
    let spec = spec(sandbox, image, &id).map_err(|reason| SandboxError::Record { pod: pod.to_string(), reason })?;
    let spec =
        serde_json::to_vec(&spec).map_err(|e| SandboxError::Record { pod: pod.to_string(), reason: e.to_string() })?;
    let container = Container {
        id: id.clone(),
        labels: HashMap::from([
            (crisp_labels::KIND.to_string(), "infra".to_string()),
            (crisp_labels::CONTAINER_SANDBOX.to_string(), pod.to_string()),
        ]),
        image: image.name.clone(),
        runtime: Some(Runtime { name: config.runtime.runtime_type.clone(), options: None }),
        spec: Some(prost_types::Any { type_url: SPEC_TYPE.into(), value: spec }),
        snapshotter: snapshotter.clone(),
        snapshot_key: id.clone(),
        ..Default::default()
    };
    // The record first: it holds the snapshot against containerd's garbage collector.
    containerd
        .containers()
        .create(CreateContainerRequest { container: Some(container) })
        .await
        .map_err(failed(pod, "creating its container"))?;
    let infra = Infra { container_id: id.clone(), pid: 0, snapshotter: snapshotter.clone() };
    match start_task(containerd, pod, &id, &snapshotter, &image.top).await {
        Ok(pid) => {
            tracing::info!(pod, pid, container = %id, "infra process started");
            Ok(Infra { pid, ..infra })
        }
        Err(err) => {
            if let Err(undo) = remove(containerd, pod, &infra).await {
                tracing::warn!(pod, error = %crisp_errors::message_chain(&undo), "removing a failed infra container");
            }
            Err(err)
        }
    }
}

async fn start_task(
    containerd: &Containerd,
    pod: &str,
    id: &str,
    snapshotter: &str,
    parent: &str,
) -> Result<u32, SandboxError> {
    let prepare = PrepareSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        key: id.to_string(),
        parent: parent.to_string(),
        labels: Default::default(),
    };
    let mounts = match containerd.snapshots().prepare(prepare).await {
        Ok(response) => response.into_inner().mounts,
        Err(status) => return Err(failed(pod, "preparing its rootfs")(status)),
    };
    containerd
        .tasks()
        .create(CreateTaskRequest { container_id: id.to_string(), rootfs: mounts, ..Default::default() })
        .await
        .map_err(failed(pod, "creating its task"))?;
    let started = containerd
        .tasks()
        .start(StartRequest { container_id: id.to_string(), exec_id: String::new() })
        .await
        .map_err(failed(pod, "starting its task"))?;
    Ok(started.into_inner().pid)
}

/// Sends `signal` to the task and waits up to `grace` for it to exit; whether it did.
async fn signal_and_wait(
    containerd: &Containerd,
    pod: &str,
    id: &str,
    signal: u32,
    grace: Duration,
) -> Result<bool, SandboxError> {
    // containerd answers a wait on a task that exited already at once, so the order of the
    // two does not matter.
    let (mut waiter, mut killer) = (containerd.tasks(), containerd.tasks());
    let wait = waiter.wait(WaitRequest { container_id: id.to_string(), exec_id: String::new() });
    let kill = killer.kill(KillRequest { container_id: id.to_string(), exec_id: String::new(), signal, all: false });
    let (waited, killed) = tokio::join!(tokio::time::timeout(grace, wait), kill);
    match killed {
        Ok(_) => {}
        Err(status) if gone(&status) => return Ok(true),
        // Killing a task that already exited: containerd says so with NotFound or
        // FailedPrecondition ("process already finished").
        Err(status) if status.code() == tonic::Code::FailedPrecondition => return Ok(true),
        Err(status) => return Err(failed(pod, "signalling it")(status)),
    }
    match waited {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(status)) if gone(&status) => Ok(true),
        Ok(Err(status)) => Err(failed(pod, "waiting for it")(status)),
        Err(_) => Ok(false),
    }
}

/// Stops the infra process: SIGTERM, SIGKILL after [`STOP_GRACE`], then its task is deleted.
pub async fn stop(containerd: &Containerd, pod: &str, infra: &Infra) -> Result<(), SandboxError> {
    let id = infra.container_id.as_str();
    if !signal_and_wait(containerd, pod, id, nix::sys::signal::Signal::SIGTERM as u32, STOP_GRACE).await? {
        tracing::info!(pod, "infra process still running after SIGTERM: SIGKILL");
        signal_and_wait(containerd, pod, id, nix::sys::signal::Signal::SIGKILL as u32, Duration::from_secs(10)).await?;
    }
    match containerd.tasks().delete(DeleteTaskRequest { container_id: id.to_string() }).await {
        Ok(_) => Ok(()),
        Err(status) if gone(&status) => Ok(()),
        Err(status) => Err(failed(pod, "deleting its task")(status)),
    }
}

/// Stops the infra process if it runs and deletes its container and snapshot.
pub async fn remove(containerd: &Containerd, pod: &str, infra: &Infra) -> Result<(), SandboxError> {
    stop(containerd, pod, infra).await?;
    let id = infra.container_id.clone();
    match containerd.containers().delete(DeleteContainerRequest { id: id.clone() }).await {
        Ok(_) => {}
        Err(status) if gone(&status) => {}
        Err(status) => return Err(failed(pod, "deleting its container")(status)),
    }
    let request = RemoveSnapshotRequest { snapshotter: infra.snapshotter.clone(), key: id };
    match containerd.snapshots().remove(request).await {
        Ok(_) => Ok(()),
        Err(status) if gone(&status) => Ok(()),
        Err(status) => Err(failed(pod, "removing its rootfs snapshot")(status)),
    }
}

/// Infra containers whose pod (by `crisp.io/container.sandbox`) is not among `pods`: what a
/// RunPodSandbox killed between starting the infra process and recording the pod left.
pub async fn leftovers(
    containerd: &Containerd,
    pods: &std::collections::HashSet<String>,
) -> Result<Vec<(String, Infra)>, SandboxError> {
    use crisp_containerd::containerd_client::services::v1::ListContainersRequest;
    let filter = format!("labels.\"{}\"==infra", crisp_labels::KIND);
    let containers = containerd
        .containers()
        .list(ListContainersRequest { filters: vec![filter] })
        .await
        .map_err(failed("*", "listing infra containers"))?
        .into_inner()
        .containers;
    Ok(containers
        .into_iter()
        .filter_map(|c| {
            let pod = c.labels.get(crisp_labels::CONTAINER_SANDBOX)?.clone();
            (!pods.contains(&pod)).then_some((pod, Infra { container_id: c.id, pid: 0, snapshotter: c.snapshotter }))
        })
        .collect())
}

/// Whether the recorded infra process still runs: its pid is alive in a PID namespace of its
/// own and, where the pod has its own network namespace, in that one (a reused pid is not).
pub fn alive(sandbox: &Sandbox, infra: &Infra) -> bool {
    use std::os::unix::fs::MetadataExt;
    let proc = PathBuf::from(format!("/proc/{}", infra.pid));
    let Ok(pid_ns) = std::fs::metadata(proc.join("ns/pid")) else { return false };
    let Ok(own_pid_ns) = std::fs::metadata("/proc/self/ns/pid") else { return false };
    if infra.pid == 0 || pid_ns.ino() == own_pid_ns.ino() {
        return false;
    }
    match &sandbox.netns {
        Some(pin) => match (std::fs::metadata(proc.join("ns/net")), std::fs::metadata(pin)) {
            (Ok(process), Ok(pin)) => process.ino() == pin.ino() && process.dev() == pin.dev(),
            _ => false,
        },
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_score_adj_is_clamped_to_what_this_process_may_set() {
        let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap();
        let adj = oom_score_adj(-998);
        assert!(adj >= -998 && adj <= own.max(-998), "{adj}");
        assert_eq!(oom_score_adj(900), 900.max(own));
    }
}
