//! ContainerStats / ListContainerStats: "returns stats of the container", and the containers'
//! part of PodSandboxStats.
//!
//! - CPU, memory, swap (and on v2 the pressure) come from the container's cgroup, its OCI spec's `linux.cgroupsPath` in
//!   containerd's record, read by [`crate::cgroup`] (v1 or v2). A container with no cgroup (created
//!   but not started, or exited) reports its attributes and writable layer only, as containerd's
//!   CRI plugin does for a container without task metrics.
//! - `usage_nano_cores` is the rate since the last sample read for the same container
//!   ([`CpuSamples`], the pods' mechanism, in a map of its own: [`Samples`]).
//! - The writable layer is the container's snapshot's usage as its snapshotter reports it (bytes
//!   and inodes), on the snapshotter's root as the image service's ImageFsInfo names it, so the
//!   kubelet matches the two; a snapshot gone reports zero. A usage is reused for 10 s, as
//!   containerd's plugin refreshes its own.
//! - Attributes: id, metadata, labels and annotations from the CRI config in the record; for a
//!   record without one, from its labels and the OCI spec's annotations (without the runtime's).
//! - ListContainerStats filters by id (or unique prefix), pod sandbox id and labels, all ANDed;
//!   ContainerStats with an unknown id is NOT_FOUND.

use crate::cgroup::{self, Cgroup, CpuSamples};
use crate::container::select::{Selector, select};
use crisp_containerd::containerd_client::services::v1::Container;
use crisp_containerd::containerd_client::services::v1::snapshots::UsageRequest;
use crisp_containerd::labels::crisp::{CONTAINER_ATTEMPT, CONTAINER_NAME, CONTAINER_SANDBOX, POD_LABEL_PREFIX};
use crisp_containerd::{Containerd, ContainerdError};
use crisp_errors::GrpcError;
use crisp_proto::cri::{
    ContainerAttributes, ContainerMetadata, ContainerStats, ContainerStatsFilter, FilesystemIdentifier,
    FilesystemUsage, PodSandboxStats, UInt64Value,
};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

/// Snapshot usages asked of containerd at once (an active snapshot's usage walks its directory).
const CONCURRENT_USAGES: usize = 8;

/// Annotation key prefixes that are the runtime's, not the kubelet's.
const RUNTIME_ANNOTATION_PREFIXES: [&str; 3] = ["io.kubernetes.cri.", "io.containerd.", "org.opencontainers."];

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("container `{0}` not found")]
    NotFound(String),
    #[error("container id prefix `{0}` matches more than one container")]
    Ambiguous(String),
    #[error("{0}")]
    Containerd(#[from] ContainerdError),
    #[error("{0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

impl GrpcError for StatsError {
    fn code(&self) -> Code {
        match self {
            StatsError::NotFound(_) => Code::NotFound,
            StatsError::Ambiguous(_) => Code::InvalidArgument,
            StatsError::Containerd(source) => source.code(),
            StatsError::Sandbox(source) => source.code(),
        }
    }
}

/// The one container `id` names: itself, or the only one it is a prefix of.
pub async fn find(containerd: &Containerd, id: &str) -> Result<Container, StatsError> {
    if id.is_empty() {
        return Err(StatsError::NotFound(id.to_string()));
    }
    let mut found = select(containerd, &Selector { id: Some(id.to_string()), ..Selector::default() }).await?;
    if let Some(exact) = found.iter().position(|c| c.id == id) {
        return Ok(found.swap_remove(exact));
    }
    match found.len() {
        0 => Err(StatsError::NotFound(id.to_string())),
        1 => Ok(found.remove(0)),
        _ => Err(StatsError::Ambiguous(id.to_string())),
    }
}

/// The container's OCI spec as JSON (`Null` when it has none or it is unreadable).
pub fn spec_json(container: &Container) -> serde_json::Value {
    container.spec.as_ref().and_then(|any| serde_json::from_slice(&any.value).ok()).unwrap_or_default()
}

/// The container's cgroup path (cgroupfs syntax) from its spec.
pub fn cgroup_path(spec: &serde_json::Value) -> Option<&str> {
    spec.pointer("/linux/cgroupsPath")?.as_str().filter(|p| !p.is_empty())
}

/// The container's CRI attributes from its record: the CRI config CreateContainer recorded
/// (metadata, labels and annotations as the kubelet sent them), else its labels and spec.
pub fn attributes(container: &Container, spec: &serde_json::Value) -> ContainerAttributes {
    if let Ok(stored) = super::record::read(container.clone()) {
        return ContainerAttributes {
            id: container.id.clone(),
            metadata: stored.config.metadata,
            labels: stored.config.labels,
            annotations: stored.config.annotations,
        };
    }
    let labels = &container.labels;
    let labels_out =
        labels.iter().filter_map(|(k, v)| Some((k.strip_prefix(POD_LABEL_PREFIX)?.to_string(), v.clone()))).collect();
    let annotations = spec
        .pointer("/annotations")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .filter(|(k, _)| !RUNTIME_ANNOTATION_PREFIXES.iter().any(|p| k.starts_with(p)))
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    ContainerAttributes {
        id: container.id.clone(),
        metadata: Some(ContainerMetadata {
            name: labels.get(CONTAINER_NAME).cloned().unwrap_or_default(),
            attempt: labels.get(CONTAINER_ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or_default(),
        }),
        labels: labels_out,
        annotations,
    }
}

/// How long a writable layer's usage is reused (containerd's CRI plugin refreshes its every 10 s).
const LAYER_USAGE_TTL: Duration = Duration::from_secs(10);

/// A writable layer's usage: when it was read, bytes, inodes.
type LayerUsage = (Instant, u64, u64);

/// What the container stats calls keep between calls: each container's last CPU sample (for
/// `usage_nano_cores`), its writable layer's last usage (walking an active snapshot is dear: it
/// is reused for [`LAYER_USAGE_TTL`]) and the snapshotters' roots.
#[derive(Default, Clone)]
pub struct Samples {
    cpu: CpuSamples,
    layers: Arc<Mutex<HashMap<String, LayerUsage>>>,
    roots: Arc<Mutex<HashMap<String, String>>>,
}

impl Samples {
    /// Forgets the containers not in `live`.
    fn retain(&self, live: &HashSet<&str>) {
        self.cpu.retain(live);
        if let Ok(mut layers) = self.layers.lock() {
            layers.retain(|id, _| live.contains(id.as_str()));
        }
    }

    /// The root of `snapshotter` as containerd's introspection names it (empty if it cannot say).
    async fn root(&self, containerd: &Containerd, snapshotter: &str) -> String {
        if let Some(root) = self.roots.lock().ok().and_then(|r| r.get(snapshotter).cloned()) {
            return root;
        }
        match containerd.plugin_root("io.containerd.snapshotter.v1", snapshotter).await {
            Ok(root) => {
                if let Ok(mut roots) = self.roots.lock() {
                    roots.insert(snapshotter.to_string(), root.clone());
                }
                root
            }
            Err(err) => {
                tracing::debug!(snapshotter, error = %err, "no root for the snapshotter");
                String::new()
            }
        }
    }

    /// The container's writable layer usage, (bytes, inodes): its snapshot's, zero if none.
    async fn layer(&self, containerd: &Containerd, container: &Container) -> (u64, u64) {
        let cached = self.layers.lock().ok().and_then(|l| l.get(&container.id).copied());
        if let Some((_, bytes, inodes)) = cached.filter(|(at, ..)| at.elapsed() < LAYER_USAGE_TTL) {
            return (bytes, inodes);
        }
        if container.snapshot_key.is_empty() {
            return (0, 0);
        }
        let request = UsageRequest { snapshotter: container.snapshotter.clone(), key: container.snapshot_key.clone() };
        let (bytes, inodes) = match containerd.snapshots().usage(request).await {
            Ok(usage) => {
                let usage = usage.into_inner();
                (usage.size.max(0) as u64, usage.inodes.max(0) as u64)
            }
            Err(status) => {
                tracing::debug!(container = %container.id, error = %status.message(), "no snapshot usage");
                return (0, 0);
            }
        };
        if let Ok(mut layers) = self.layers.lock() {
            layers.insert(container.id.clone(), (Instant::now(), bytes, inodes));
        }
        (bytes, inodes)
    }
}

/// The container's writable layer: its snapshot's usage, on its snapshotter's root.
async fn writable_layer(containerd: &Containerd, samples: &Samples, container: &Container) -> FilesystemUsage {
    let (bytes, inodes) = samples.layer(containerd, container).await;
    FilesystemUsage {
        timestamp: cgroup::now(),
        fs_id: Some(FilesystemIdentifier { mountpoint: samples.root(containerd, &container.snapshotter).await }),
        used_bytes: Some(UInt64Value { value: bytes }),
        inodes_used: Some(UInt64Value { value: inodes }),
    }
}

/// The stats of one container.
async fn container_stats(containerd: &Containerd, samples: &Samples, container: &Container) -> ContainerStats {
    let spec = spec_json(container);
    let writable_layer = writable_layer(containerd, samples, container).await;
    let timestamp = cgroup::now();
    let cgroup = cgroup_path(&spec).and_then(|path| Cgroup::find(Path::new(cgroup::ROOT), path));
    let (memory, swap) = cgroup.as_ref().map(|c| c.memory_usage(timestamp)).unzip();
    ContainerStats {
        attributes: Some(attributes(container, &spec)),
        cpu: cgroup.as_ref().map(|c| c.cpu(timestamp, &samples.cpu, &container.id)),
        memory,
        writable_layer: Some(writable_layer),
        swap: swap.flatten(),
        io: cgroup.as_ref().and_then(|c| c.io(timestamp)),
    }
}

/// The stats of `containers`, in their order.
pub async fn of(containerd: &Containerd, samples: &Samples, containers: &[Container]) -> Vec<ContainerStats> {
    // Owned futures: the stream of them is sent across the server's tasks.
    let each = containers.iter().cloned().map(|container| {
        let (containerd, samples) = (containerd.clone(), samples.clone());
        async move { container_stats(&containerd, &samples, &container).await }
    });
    futures::stream::iter(each).buffered(CONCURRENT_USAGES).collect().await
}

pub async fn stats(containerd: &Containerd, samples: &Samples, id: &str) -> Result<ContainerStats, StatsError> {
    let container = find(containerd, id).await?;
    Ok(of(containerd, samples, std::slice::from_ref(&container)).await.remove(0))
}

pub async fn list(
    containerd: &Containerd,
    samples: &Samples,
    filter: Option<ContainerStatsFilter>,
) -> Result<Vec<ContainerStats>, StatsError> {
    let filter = filter.unwrap_or_default();
    // A pod id may be a unique prefix, as in the pod RPCs; an unknown pod has no containers.
    let sandbox = match filter.pod_sandbox_id.as_str() {
        "" => None,
        prefix => match crate::sandbox::find_record(containerd, prefix).await {
            Ok(Some(pod)) => Some(pod.sandbox.id),
            Ok(None) | Err(crate::sandbox::SandboxError::Ambiguous(_)) => return Ok(vec![]),
            Err(err) => return Err(err.into()),
        },
    };
    let selector = Selector {
        id: (!filter.id.is_empty()).then_some(filter.id),
        sandbox,
        state: None,
        labels: filter.label_selector,
    };
    let everything = selector.id.is_none() && selector.sandbox.is_none() && selector.labels.is_empty();
    let containers = select(containerd, &selector).await?;
    if everything {
        // What is kept of containers gone is dropped whenever every container is listed.
        samples.retain(&containers.iter().map(|c| c.id.as_str()).collect());
    }
    Ok(of(containerd, samples, &containers).await)
}

/// Fills in each pod's `containers` with its containers' stats.
pub async fn add_to_pods(
    containerd: &Containerd,
    samples: &Samples,
    pods: &mut [PodSandboxStats],
) -> Result<(), StatsError> {
    if pods.is_empty() {
        return Ok(());
    }
    let ids: HashSet<String> = pods.iter().filter_map(|p| Some(p.attributes.as_ref()?.id.clone())).collect();
    let selector = match pods {
        [one] => Selector { sandbox: one.attributes.as_ref().map(|a| a.id.clone()), ..Selector::default() },
        _ => Selector::default(),
    };
    let mut containers = select(containerd, &selector).await?;
    containers.retain(|c| c.labels.get(CONTAINER_SANDBOX).is_some_and(|pod| ids.contains(pod)));
    let stats = of(containerd, samples, &containers).await;
    let mut by_pod: HashMap<String, Vec<ContainerStats>> = HashMap::new();
    for (container, stats) in containers.iter().zip(stats) {
        if let Some(pod) = container.labels.get(CONTAINER_SANDBOX) {
            by_pod.entry(pod.clone()).or_default().push(stats);
        }
    }
    for pod in pods {
        let id = pod.attributes.as_ref().map(|a| a.id.clone()).unwrap_or_default();
        if let Some(linux) = pod.linux.as_mut() {
            linux.containers = by_pod.remove(&id).unwrap_or_default();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_come_from_the_records_labels_and_the_specs_annotations() {
        let spec = serde_json::json!({
            "annotations": {
                "io.kubernetes.cri.container-type": "container",
                "io.containerd.runc.v2.group": "pod",
                "team": "a",
            },
            "linux": { "cgroupsPath": "/kubepods/pod1/c1" },
        });
        let container = Container {
            id: "c1".into(),
            labels: HashMap::from([
                (CONTAINER_NAME.to_string(), "web".to_string()),
                (CONTAINER_ATTEMPT.to_string(), "2".to_string()),
                (format!("{POD_LABEL_PREFIX}app"), "web".to_string()),
                (CONTAINER_SANDBOX.to_string(), "pod".to_string()),
            ]),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: serde_json::to_vec(&spec).unwrap(),
            }),
            ..Default::default()
        };
        let spec = spec_json(&container);
        assert_eq!(cgroup_path(&spec), Some("/kubepods/pod1/c1"));
        let a = attributes(&container, &spec);
        assert_eq!(a.metadata, Some(ContainerMetadata { name: "web".into(), attempt: 2 }));
        assert_eq!(a.labels, HashMap::from([("app".to_string(), "web".to_string())]));
        assert_eq!(a.annotations, HashMap::from([("team".to_string(), "a".to_string())]));
        assert_eq!(cgroup_path(&serde_json::Value::Null), None);
    }
}
