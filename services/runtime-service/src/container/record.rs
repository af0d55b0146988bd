//! A container as containerd keeps it: a container record with crisp's labels
//! (`crisp.io/kind=container`, the pod, the kubelet's name and attempt, the state
//! `created|running|exited`, the container's own labels under `crisp.io/label.`), its OCI spec,
//! its snapshot, the runtime, and two extensions: the CRI `ContainerConfig` as sent (protobuf,
//! `crisp.io/container.config`) and what the CRI reports that changes over the container's
//! life (JSON, `crisp.io/container`: times, exit, image, log path, user, stop signal).
//! Everything a restarted service needs is here.

use super::ContainerError;
use super::select::{Selector, select};
use crisp_containerd::Containerd;
use crisp_containerd::containerd_client::services::v1::Container;
use crisp_containerd::labels::crisp::{
    CONTAINER_ATTEMPT, CONTAINER_NAME, CONTAINER_SANDBOX, CONTAINER_STATE, KIND, KIND_CONTAINER, POD_LABEL_PREFIX,
};
use crisp_proto::cri::ContainerConfig;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const EXTENSION: &str = "crisp.io/container";
const EXTENSION_TYPE: &str = "crisp.io/container/v1";
const CONFIG_EXTENSION: &str = "crisp.io/container.config";
const CONFIG_TYPE: &str = "runtime.v1.ContainerConfig";
/// The type containerd (and its CRI plugin) gives a record's OCI spec.
pub const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// What the CRI reports as the container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Exited,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Exited => "exited",
        }
    }

    fn parse(label: Option<&str>) -> State {
        match label {
            Some("running") => State::Running,
            Some("exited") => State::Exited,
            _ => State::Created,
        }
    }

    pub fn cri(self) -> crisp_proto::cri::ContainerState {
        use crisp_proto::cri::ContainerState;
        match self {
            State::Created => ContainerState::ContainerCreated,
            State::Running => ContainerState::ContainerRunning,
            State::Exited => ContainerState::ContainerExited,
        }
    }
}

/// What the CRI reports about a container that the config does not say.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Info {
    pub sandbox_id: String,
    /// Unix nanoseconds; 0 when not (yet).
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The image as ContainerStatus names it (its first tag, else what the request said).
    pub image: String,
    /// Its repo digest, else its id.
    pub image_ref: String,
    pub image_id: String,
    /// The CRI log file (the pod's log directory joined with the config's `log_path`), or "".
    pub log_path: String,
    /// The identity the process runs as.
    pub uid: u32,
    pub gid: u32,
    pub supplemental_groups: Vec<u32>,
    /// The signal StopContainer sends first.
    pub stop_signal: i32,
    pub snapshotter: String,
    /// The container's cgroup (cgroupfs path, from its spec).
    #[serde(default)]
    pub cgroup: String,
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub state: State,
    pub info: Info,
    pub config: ContainerConfig,
    /// The OCI spec, JSON as stored.
    pub spec: Vec<u8>,
}

/// Writes `stored`'s config (UpdateContainerResources records new resources there).
pub async fn save_config(containerd: &Containerd, stored: &Stored) -> Result<(), ContainerError> {
    let config = prost_types::Any { type_url: CONFIG_TYPE.into(), value: stored.config.encode_to_vec() };
    containerd
        .set_container_extension(&stored.id, CONFIG_EXTENSION, config, HashMap::new())
        .await
        .map_err(ContainerError::containerd(&stored.id))
}

fn record_error(id: &str, reason: impl Into<String>) -> ContainerError {
    ContainerError::Record { id: id.to_string(), reason: reason.into() }
}

fn info_extension(id: &str, info: &Info) -> Result<prost_types::Any, ContainerError> {
    let value = serde_json::to_vec(info).map_err(|e| record_error(id, e.to_string()))?;
    Ok(prost_types::Any { type_url: EXTENSION_TYPE.into(), value })
}

/// A new record: the labels, spec, snapshot, runtime and both extensions.
pub fn new_record(
    id: &str,
    state: State,
    info: &Info,
    config: &ContainerConfig,
    spec: Vec<u8>,
    image_name: &str,
    runtime_type: &str,
) -> Result<Container, ContainerError> {
    let metadata = config.metadata.clone().unwrap_or_default();
    let mut labels = HashMap::from([
        (KIND.to_string(), KIND_CONTAINER.to_string()),
        (CONTAINER_SANDBOX.to_string(), info.sandbox_id.clone()),
        (CONTAINER_NAME.to_string(), crisp_containerd::labels::value(&metadata.name)),
        (CONTAINER_ATTEMPT.to_string(), metadata.attempt.to_string()),
        (CONTAINER_STATE.to_string(), state.label().to_string()),
    ]);
    for (key, value) in &config.labels {
        labels.insert(format!("{POD_LABEL_PREFIX}{key}"), value.clone());
    }
    let extensions = HashMap::from([
        (EXTENSION.to_string(), info_extension(id, info)?),
        (
            CONFIG_EXTENSION.to_string(),
            prost_types::Any { type_url: CONFIG_TYPE.into(), value: config.encode_to_vec() },
        ),
    ]);
    Ok(Container {
        id: id.to_string(),
        labels,
        image: image_name.to_string(),
        runtime: Some(crisp_containerd::containerd_client::services::v1::container::Runtime {
            name: runtime_type.to_string(),
            options: None,
        }),
        spec: Some(prost_types::Any { type_url: SPEC_TYPE.into(), value: spec }),
        snapshotter: info.snapshotter.clone(),
        snapshot_key: id.to_string(),
        extensions,
        ..Default::default()
    })
}

/// Whether `container` is a CRI container crisp keeps (not a pod, not another client's).
pub fn is_container(container: &Container) -> bool {
    container.labels.get(KIND).is_some_and(|k| k == KIND_CONTAINER)
}

pub fn read(container: Container) -> Result<Stored, ContainerError> {
    let id = container.id.clone();
    let info = container.extensions.get(EXTENSION).ok_or_else(|| record_error(&id, format!("no {EXTENSION}")))?;
    let info: Info = serde_json::from_slice(&info.value).map_err(|e| record_error(&id, e.to_string()))?;
    let config = container
        .extensions
        .get(CONFIG_EXTENSION)
        .ok_or_else(|| record_error(&id, format!("no {CONFIG_EXTENSION}")))?;
    let config = ContainerConfig::decode(config.value.as_slice()).map_err(|e| record_error(&id, e.to_string()))?;
    let state = State::parse(container.labels.get(CONTAINER_STATE).map(String::as_str));
    let spec = container.spec.map(|s| s.value).unwrap_or_default();
    Ok(Stored { id, state, info, config, spec })
}

/// Every container `selector` matches; unreadable records are skipped with a warning.
pub async fn list(containerd: &Containerd, selector: &Selector) -> Result<Vec<Stored>, ContainerError> {
    let records = select(containerd, selector).await.map_err(ContainerError::containerd("*"))?;
    Ok(records
        .into_iter()
        .filter_map(|c| {
            let id = c.id.clone();
            read(c).map_err(|err| tracing::warn!(id, error = %err, "skipping an unreadable container record")).ok()
        })
        .collect())
}

/// The container whose id is `id` or starts with it (as containerd's CRI plugin resolves ids).
pub async fn find(containerd: &Containerd, id: &str) -> Result<Option<Stored>, ContainerError> {
    if id.is_empty() {
        return Err(ContainerError::MissingField("container_id"));
    }
    if let Some(record) = containerd.container_record(id).await.map_err(ContainerError::containerd(id))? {
        return if is_container(&record) { read(record).map(Some) } else { Ok(None) };
    }
    let mut matching = list(containerd, &Selector { id: Some(id.to_string()), ..Selector::default() }).await?;
    match matching.len() {
        0 => Ok(None),
        1 => Ok(matching.pop()),
        _ => Err(ContainerError::Ambiguous(id.to_string())),
    }
}

/// Writes `stored`'s state label and info.
pub async fn save(containerd: &Containerd, stored: &Stored) -> Result<(), ContainerError> {
    let labels = HashMap::from([(CONTAINER_STATE.to_string(), stored.state.label().to_string())]);
    containerd
        .set_container_extension(&stored.id, EXTENSION, info_extension(&stored.id, &stored.info)?, labels)
        .await
        .map_err(ContainerError::containerd(&stored.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crisp_proto::cri::ContainerMetadata;

    #[test]
    fn a_record_reads_back_with_its_state_config_and_info() {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: "app".into(), attempt: 2 }),
            labels: HashMap::from([("tier".to_string(), "web".to_string())]),
            ..Default::default()
        };
        let info = Info { sandbox_id: "pod1".into(), created_at: 5, exit_code: 3, ..Default::default() };
        let record =
            new_record("c1", State::Running, &info, &config, b"{}".to_vec(), "busybox", "io.containerd.runc.v2")
                .unwrap();
        assert!(is_container(&record));
        assert_eq!(record.labels[CONTAINER_SANDBOX], "pod1");
        assert_eq!(record.labels[CONTAINER_ATTEMPT], "2");
        assert_eq!(record.labels["crisp.io/label.tier"], "web");
        assert_eq!(record.snapshot_key, "c1");
        let stored = read(record).unwrap();
        assert_eq!(stored.state, State::Running);
        assert_eq!(stored.config, config);
        assert_eq!(stored.info.exit_code, 3);
        assert_eq!(stored.spec, b"{}");
        assert!(read(Container { id: "x".into(), ..Default::default() }).is_err());
    }
}
