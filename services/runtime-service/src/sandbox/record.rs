//! A pod sandbox as containerd keeps it: a container record (no task) with crisp's labels
//! (`crisp.io/kind=sandbox`, the pod's state, whether its network is attached, the kubelet's
//! metadata, the pod's labels under `crisp.io/label.`) and the rest of what the CRI answers
//! about it as JSON in the extension `crisp.io/sandbox`. Everything a restarted service needs
//! is here and in the pod's directory.

use super::SandboxError;
use crisp_containerd::containerd_client::services::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, ListContainersRequest, UpdateContainerRequest,
    container::Runtime,
};
use crisp_containerd::labels::crisp::{
    KIND, KIND_SANDBOX, POD_ATTEMPT, POD_LABEL_PREFIX, POD_NAME, POD_NAMESPACE, POD_UID, SANDBOX_NETWORK as NETWORK,
    SANDBOX_STATE as STATE,
};
use crisp_containerd::{Containerd, ContainerdError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

const EXTENSION: &str = "crisp.io/sandbox";
const EXTENSION_TYPE: &str = "crisp.io/sandbox/v1";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Whether the pod is ready (`ready`) or stopped (`notready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum State {
    Ready,
    NotReady,
}

impl State {
    fn label(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::NotReady => "notready",
        }
    }
}

/// What crisp keeps about a pod (the extension's JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    /// Unix nanoseconds.
    pub created_at: i64,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub runtime_handler: String,
    pub hostname: String,
    pub log_directory: String,
    pub cgroup_parent: String,
    /// CRI `NamespaceMode`s as sent.
    pub network_mode: i32,
    pub pid_mode: i32,
    pub ipc_mode: i32,
    /// The pod's directory under `runtime.state_dir` (namespace pins, files, `/dev/shm`).
    pub dir: PathBuf,
    /// The pod's directory under `runtime.root_dir`: its CNI state, which outlives a reboot so
    /// that DEL still frees the pod's IP afterwards.
    pub network_dir: PathBuf,
    /// The pinned network namespace; none with host networking.
    pub netns: Option<PathBuf>,
    /// The pod's `/dev/shm` source.
    pub shm: PathBuf,
    /// The pod's IPs, the first one primary.
    pub ips: Vec<String>,
    /// The pod's overhead and the sum of its containers' resources, from its config or the
    /// last UpdatePodSandboxResources.
    #[serde(default)]
    pub overhead: Option<super::resources::Resources>,
    #[serde(default)]
    pub resources: Option<super::resources::Resources>,
    /// The pod's infra (pause) process, where it has one ([`super::infra`]).
    #[serde(default)]
    pub infra: Option<super::infra::Infra>,
}

/// A record read back: the pod and its mutable labels.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sandbox: Sandbox,
    /// The state the CRI sees: NOTREADY also when the pod's namespaces or files are gone.
    pub state: State,
    /// The state the record holds.
    pub recorded_state: State,
    /// CNI DEL still owed (the network was attached and not yet torn down).
    pub network_attached: bool,
}

impl Sandbox {
    /// The pod uses the node's network (and UTS) namespace: no CNI, no pin.
    pub fn host_network(&self) -> bool {
        self.network_mode == crisp_proto::cri::NamespaceMode::Node as i32
    }

    /// The pod uses the node's IPC namespace and `/dev/shm`.
    pub fn host_ipc(&self) -> bool {
        self.ipc_mode == crisp_proto::cri::NamespaceMode::Node as i32
    }

    /// The pod's shared PID namespace, which its containers join: its infra process's, where
    /// the pod shares one PID namespace among its containers (`pid == POD`) and has one.
    pub fn pid_namespace(&self) -> Option<PathBuf> {
        if self.pid_mode != crisp_proto::cri::NamespaceMode::Pod as i32 {
            return None;
        }
        self.infra.as_ref().map(|infra| PathBuf::from(format!("/proc/{}/ns/pid", infra.pid)))
    }

    /// The name containerd's CRI plugin reserves: `name_namespace_uid_attempt`.
    pub fn full_name(&self) -> String {
        format!("{}_{}_{}_{}", self.name, self.namespace, self.uid, self.attempt)
    }
}

fn containerd_error(pod: &str) -> impl FnOnce(ContainerdError) -> SandboxError {
    let pod = pod.to_string();
    move |source| SandboxError::Containerd { pod, source }
}

fn extension(sandbox: &Sandbox) -> Result<HashMap<String, prost_types::Any>, SandboxError> {
    let json = serde_json::to_vec(sandbox)
        .map_err(|e| SandboxError::Record { pod: sandbox.id.clone(), reason: e.to_string() })?;
    Ok(HashMap::from([(EXTENSION.to_string(), prost_types::Any { type_url: EXTENSION_TYPE.into(), value: json })]))
}

/// Replaces the pod's extension with `sandbox`.
pub async fn update(containerd: &Containerd, sandbox: &Sandbox) -> Result<(), SandboxError> {
    let container = Container { id: sandbox.id.clone(), extensions: extension(sandbox)?, ..Default::default() };
    containerd
        .containers()
        .update(UpdateContainerRequest {
            container: Some(container),
            update_mask: Some(prost_types::FieldMask { paths: vec![format!("extensions.{EXTENSION}")] }),
        })
        .await
        .map_err(|s| ContainerdError::call("updating the pod's record", s))
        .map_err(containerd_error(&sandbox.id))?;
    Ok(())
}

pub async fn create(
    containerd: &Containerd,
    runtime_type: &str,
    sandbox: &Sandbox,
    network_attached: bool,
) -> Result<(), SandboxError> {
    let mut labels = HashMap::from([
        (KIND.to_string(), KIND_SANDBOX.to_string()),
        (STATE.to_string(), State::Ready.label().to_string()),
        (NETWORK.to_string(), if network_attached { "attached" } else { "detached" }.to_string()),
        (POD_NAME.to_string(), crisp_containerd::labels::value(&sandbox.name)),
        (POD_NAMESPACE.to_string(), crisp_containerd::labels::value(&sandbox.namespace)),
        (POD_UID.to_string(), crisp_containerd::labels::value(&sandbox.uid)),
        (POD_ATTEMPT.to_string(), sandbox.attempt.to_string()),
    ]);
    for (key, value) in &sandbox.labels {
        labels.insert(format!("{POD_LABEL_PREFIX}{key}"), value.clone());
    }
    let container = Container {
        id: sandbox.id.clone(),
        labels,
        runtime: Some(Runtime { name: runtime_type.to_string(), options: None }),
        spec: Some(prost_types::Any { type_url: SPEC_TYPE.into(), value: br#"{"ociVersion":"1.0.2"}"#.to_vec() }),
        extensions: extension(sandbox)?,
        ..Default::default()
    };
    containerd
        .containers()
        .create(CreateContainerRequest { container: Some(container) })
        .await
        .map_err(|s| ContainerdError::call("creating the pod's record", s))
        .map_err(containerd_error(&sandbox.id))?;
    crate::metrics::pod_state(&sandbox.id, Some(State::Ready));
    Ok(())
}

fn read(container: Container) -> Result<Stored, SandboxError> {
    let bad = |reason: String| SandboxError::Record { pod: container.id.clone(), reason };
    let extension = container.extensions.get(EXTENSION).ok_or_else(|| bad(format!("no extension {EXTENSION}")))?;
    let sandbox: Sandbox = serde_json::from_slice(&extension.value).map_err(|e| bad(e.to_string()))?;
    // A pod whose namespaces or files are gone (the node rebooted: `runtime.state_dir` is
    // cleared) is no longer ready, whatever its record says.
    // So is one whose infra process died.
    let intact = sandbox.dir.join("hostname").exists()
        && sandbox.netns.as_ref().is_none_or(|ns| ns.exists())
        && sandbox.infra.as_ref().is_none_or(|infra| super::infra::alive(&sandbox, infra));
    let recorded_state = match container.labels.get(STATE).map(String::as_str) {
        Some("ready") => State::Ready,
        _ => State::NotReady,
    };
    let state = if intact { recorded_state } else { State::NotReady };
    crate::metrics::pod_state(&container.id, Some(state));
    let network_attached = container.labels.get(NETWORK).is_some_and(|v| v == "attached");
    Ok(Stored { sandbox, state, recorded_state, network_attached })
}

async fn list_records(containerd: &Containerd) -> Result<Vec<Container>, SandboxError> {
    Ok(containerd
        .containers()
        .list(ListContainersRequest { filters: vec![format!("labels.\"{KIND}\"=={KIND_SANDBOX}")] })
        .await
        .map_err(|s| ContainerdError::call("listing pod records", s))
        .map_err(containerd_error("*"))?
        .into_inner()
        .containers)
}

/// The ids of every pod record, readable or not.
pub async fn ids(containerd: &Containerd) -> Result<std::collections::HashSet<String>, SandboxError> {
    Ok(list_records(containerd).await?.into_iter().map(|c| c.id).collect())
}

/// Every pod crisp keeps in this containerd namespace. A record that cannot be read is
/// skipped with a warning (it is not crisp's, or not this version's).
pub async fn list_all(containerd: &Containerd) -> Result<Vec<Stored>, SandboxError> {
    let all: Vec<Stored> = list_records(containerd)
        .await?
        .into_iter()
        .filter_map(|c| {
            let id = c.id.clone();
            read(c).map_err(|err| tracing::warn!(id, error = %err, "skipping an unreadable pod record")).ok()
        })
        .collect();
    crate::metrics::pods_listed(&all);
    Ok(all)
}

/// The length of a pod id crisp makes (32 random bytes in hex).
const FULL_ID_CHARS: usize = 64;

/// The pod whose id is exactly `id`.
async fn get(containerd: &Containerd, id: &str) -> Result<Option<Stored>, SandboxError> {
    use crisp_containerd::containerd_client::services::v1::GetContainerRequest;
    let container = match containerd.containers().get(GetContainerRequest { id: id.to_string() }).await {
        Ok(response) => response.into_inner().container,
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => return Err(containerd_error(id)(ContainerdError::call("getting the pod's record", status))),
    };
    match container {
        Some(c) if c.labels.get(KIND).map(String::as_str) == Some(KIND_SANDBOX) => read(c).map(Some),
        _ => Ok(None),
    }
}

/// The pod whose id is `id` or starts with it (as containerd's CRI plugin resolves ids).
pub async fn find(containerd: &Containerd, id: &str) -> Result<Option<Stored>, SandboxError> {
    if id.is_empty() {
        return Err(SandboxError::MissingField("pod_sandbox_id"));
    }
    // A whole id (what the kubelet sends) is one record to get, not every pod to list.
    if id.len() == FULL_ID_CHARS {
        return get(containerd, id).await;
    }
    let all = list_all(containerd).await?;
    resolve(all, id)
}

pub fn resolve(all: Vec<Stored>, id: &str) -> Result<Option<Stored>, SandboxError> {
    if let Some(exact) = all.iter().find(|s| s.sandbox.id == id) {
        return Ok(Some(exact.clone()));
    }
    let mut matching = all.into_iter().filter(|s| s.sandbox.id.starts_with(id));
    match (matching.next(), matching.next()) {
        (Some(one), None) => Ok(Some(one)),
        (Some(_), Some(_)) => Err(SandboxError::Ambiguous(id.to_string())),
        _ => Ok(None),
    }
}

/// Sets `labels` on the pod's record in one update (one containerd metadata transaction).
async fn set_labels(containerd: &Containerd, id: &str, labels: &[(&str, &str)]) -> Result<(), SandboxError> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.iter().map(|(key, _)| format!("labels.{key}")).collect();
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let container = Container { id: id.to_string(), labels, ..Default::default() };
    containerd
        .containers()
        .update(UpdateContainerRequest {
            container: Some(container),
            update_mask: Some(prost_types::FieldMask { paths }),
        })
        .await
        .map_err(|s| ContainerdError::call("updating the pod's record", s))
        .map_err(containerd_error(id))?;
    Ok(())
}

/// Records a stop: the pod NOTREADY (`not_ready`) and its network detached (`detached`).
pub async fn set_stopped(
    containerd: &Containerd,
    id: &str,
    not_ready: bool,
    detached: bool,
) -> Result<(), SandboxError> {
    let mut labels = vec![];
    if not_ready {
        labels.push((STATE, State::NotReady.label()));
    }
    if detached {
        labels.push((NETWORK, "detached"));
    }
    set_labels(containerd, id, &labels).await?;
    if not_ready {
        crate::metrics::pod_state(id, Some(State::NotReady));
    }
    Ok(())
}

/// Deletes the record; one already gone is fine.
pub async fn delete(containerd: &Containerd, id: &str) -> Result<(), SandboxError> {
    crate::metrics::pod_state(id, None);
    match containerd.containers().delete(DeleteContainerRequest { id: id.to_string() }).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(status) => Err(containerd_error(id)(ContainerdError::call("deleting the pod's record", status))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(dir: PathBuf) -> Sandbox {
        Sandbox {
            id: "abc".into(),
            name: "web".into(),
            uid: "u1".into(),
            namespace: "default".into(),
            attempt: 2,
            created_at: 1,
            labels: HashMap::from([("app".to_string(), "web".to_string())]),
            annotations: HashMap::new(),
            runtime_handler: String::new(),
            hostname: "web".into(),
            log_directory: String::new(),
            cgroup_parent: String::new(),
            network_mode: crisp_proto::cri::NamespaceMode::Node as i32,
            pid_mode: 1,
            ipc_mode: 0,
            network_dir: dir.join("net"),
            dir,
            netns: None,
            shm: PathBuf::new(),
            ips: vec![],
            overhead: None,
            resources: None,
            infra: None,
        }
    }

    fn container(sandbox: &Sandbox, state: &str, network: &str) -> Container {
        Container {
            id: sandbox.id.clone(),
            labels: HashMap::from([(STATE.to_string(), state.to_string()), (NETWORK.to_string(), network.to_string())]),
            extensions: HashMap::from([(
                EXTENSION.to_string(),
                prost_types::Any { type_url: EXTENSION_TYPE.into(), value: serde_json::to_vec(sandbox).unwrap() },
            )]),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_reads_back_with_its_state_and_owed_teardown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hostname"), "web\n").unwrap();
        let pod = sandbox(dir.path().to_path_buf());
        assert_eq!(pod.full_name(), "web_default_u1_2");
        assert!(pod.host_network() && !pod.host_ipc());

        let stored = read(container(&pod, "ready", "attached")).unwrap();
        assert_eq!(stored.state, State::Ready);
        assert!(stored.network_attached);
        assert_eq!(stored.sandbox.labels["app"], "web");
        let stored = read(container(&pod, "notready", "detached")).unwrap();
        assert_eq!(stored.state, State::NotReady);
        assert!(!stored.network_attached);
    }

    #[test]
    fn a_pod_whose_files_are_gone_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let pod = sandbox(dir.path().join("gone"));
        let stored = read(container(&pod, "ready", "attached")).unwrap();
        assert_eq!(stored.state, State::NotReady);
        assert_eq!(stored.recorded_state, State::Ready);
    }

    #[test]
    fn a_record_without_the_extension_is_unreadable_and_ids_resolve_by_unique_prefix() {
        assert!(read(Container { id: "x".into(), ..Default::default() }).is_err());
        let dir = tempfile::tempdir().unwrap();
        let stored = |id: &str| {
            let mut pod = sandbox(dir.path().to_path_buf());
            pod.id = id.into();
            read(container(&pod, "ready", "detached")).unwrap()
        };
        let all = vec![stored("abc1"), stored("abd2")];
        assert_eq!(resolve(all.clone(), "abc").unwrap().unwrap().sandbox.id, "abc1");
        assert!(matches!(resolve(all.clone(), "ab"), Err(SandboxError::Ambiguous(_))));
        assert!(resolve(all, "zz").unwrap().is_none());
    }
}
