//! ListMetricDescriptors / ListPodSandboxMetrics: the cAdvisor-style metrics the kubelet can
//! take from the runtime instead of from cAdvisor (the kubelet serves them as Prometheus
//! metrics under the names and labels described here, with the values it is given).
//!
//! - The descriptors are fixed (the kubelet reads them once): the cAdvisor names for a
//!   container's CPU, memory, process count and resource spec, and the pod's network counters.
//! - Labels are cAdvisor's: `container` (the CRI name; `POD` for the pod's own network),
//!   `id` (the container or pod id), `image`, `name` (the container id, as the runtime names it),
//!   `namespace` and `pod` (the kubelet's); network metrics add `interface`.
//! - Values come from the same places as the stats RPCs: the cgroup ([`crate::cgroup`]) for usage,
//!   the OCI spec in containerd's record for the spec metrics, the pod's host-side link for the
//!   network, seen from the pod. `container_cpu_usage_seconds_total` is whole seconds (values are
//!   integers in the CRI); an unlimited memory limit is 0, as cAdvisor reports it.
//! - Metrics are gathered live (timestamp 0). A container with no cgroup (not started, exited)
//!   has its spec metrics only; every pod, ready or not, is listed.

use super::select::{Selector, select};
use super::spec::annotations::IMAGE_NAME;
use super::stats::{StatsError, cgroup_path, spec_json};
use crate::cgroup::{self, Cgroup, CpuSamples};
use crisp_containerd::Containerd;
use crisp_containerd::containerd_client::services::v1::Container;
use crisp_containerd::labels::crisp::{CONTAINER_NAME, CONTAINER_SANDBOX};
use crisp_proto::cri::{ContainerMetrics, Metric, MetricDescriptor, MetricType, PodSandboxMetrics, UInt64Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];
const NETWORK_LABELS: [&str; 7] = ["container", "id", "image", "name", "namespace", "pod", "interface"];

/// A metric crisp reports: name, help, type, whether it is a network one (labelled by interface).
struct Described {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    network: bool,
}

const fn container(name: &'static str, help: &'static str, kind: MetricType) -> Described {
    Described { name, help, kind, network: false }
}

const fn network(name: &'static str, help: &'static str) -> Described {
    Described { name, help, kind: MetricType::Counter, network: true }
}

const METRICS: &[Described] = &[
    container("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", MetricType::Counter),
    container(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        MetricType::Gauge,
    ),
    container("container_memory_working_set_bytes", "Current working set in bytes.", MetricType::Gauge),
    container("container_memory_rss", "Size of RSS in bytes.", MetricType::Gauge),
    container("container_memory_cache", "Number of bytes of page cache memory.", MetricType::Gauge),
    container("container_processes", "Number of processes running inside the container.", MetricType::Gauge),
    container("container_spec_memory_limit_bytes", "Memory limit for the container.", MetricType::Gauge),
    container("container_spec_cpu_shares", "CPU share of the container.", MetricType::Gauge),
    container("container_spec_cpu_quota", "CPU quota of the container.", MetricType::Gauge),
    container("container_spec_cpu_period", "CPU period of the container.", MetricType::Gauge),
    network("container_network_receive_bytes_total", "Cumulative count of bytes received"),
    network("container_network_receive_packets_total", "Cumulative count of packets received"),
    network("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving"),
    network("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving"),
    network("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted"),
    network("container_network_transmit_packets_total", "Cumulative count of packets transmitted"),
    network("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting"),
    network(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
    ),
];

/// The network metrics by the pod-view link counter they come from.
const NETWORK_COUNTERS: [(&str, &str); 8] = [
    ("rx_bytes", "container_network_receive_bytes_total"),
    ("rx_packets", "container_network_receive_packets_total"),
    ("rx_errors", "container_network_receive_errors_total"),
    ("rx_dropped", "container_network_receive_packets_dropped_total"),
    ("tx_bytes", "container_network_transmit_bytes_total"),
    ("tx_packets", "container_network_transmit_packets_total"),
    ("tx_errors", "container_network_transmit_errors_total"),
    ("tx_dropped", "container_network_transmit_packets_dropped_total"),
];

pub fn descriptors() -> Vec<MetricDescriptor> {
    METRICS
        .iter()
        .map(|m| MetricDescriptor {
            name: m.name.into(),
            help: m.help.into(),
            label_keys: if m.network { &NETWORK_LABELS[..] } else { &LABELS[..] }
                .iter()
                .map(|k| k.to_string())
                .collect(),
        })
        .collect()
}

fn kind(name: &str) -> MetricType {
    METRICS.iter().find(|m| m.name == name).map_or(MetricType::Gauge, |m| m.kind)
}

fn metric(name: &str, label_values: &[String], value: u64) -> Metric {
    Metric {
        name: name.into(),
        timestamp: 0,
        metric_type: kind(name) as i32,
        label_values: label_values.to_vec(),
        value: Some(UInt64Value { value }),
    }
}

/// A container's metrics, labelled `labels` (in [`LABELS`] order).
fn container_metrics(container: &Container, labels: &[String]) -> Vec<Metric> {
    let spec = spec_json(container);
    let mut out = vec![];
    let mut push = |name: &str, value: Option<u64>| {
        if let Some(value) = value {
            out.push(metric(name, labels, value));
        }
    };
    let found = cgroup_path(&spec).and_then(|path| Cgroup::find(Path::new(cgroup::ROOT), path));
    if let Some(cgroup) = &found {
        push("container_cpu_usage_seconds_total", cgroup.cpu_nanos().map(|n| n / 1_000_000_000));
        let memory = cgroup.memory();
        push("container_memory_usage_bytes", memory.usage);
        push("container_memory_working_set_bytes", memory.working_set);
        push("container_memory_rss", memory.rss);
        push("container_memory_cache", memory.cache);
        push("container_processes", cgroup.processes(0).process_count.map(|c| c.value));
        push("container_spec_memory_limit_bytes", memory.limit.map(|l| l.unwrap_or(0)));
    } else {
        let limit = spec.pointer("/linux/resources/memory/limit").and_then(|l| l.as_i64());
        push("container_spec_memory_limit_bytes", Some(limit.filter(|l| *l > 0).unwrap_or(0) as u64));
    }
    let cpu = |key: &str| spec.pointer(&format!("/linux/resources/cpu/{key}")).and_then(|v| v.as_i64());
    push("container_spec_cpu_shares", cpu("shares").map(|s| s.max(0) as u64));
    push("container_spec_cpu_quota", cpu("quota").filter(|q| *q > 0).map(|q| q as u64));
    push("container_spec_cpu_period", cpu("period").filter(|p| *p > 0).map(|p| p as u64));
    out
}

pub async fn list(containerd: &Containerd, pod_samples: &CpuSamples) -> Result<Vec<PodSandboxMetrics>, StatsError> {
    let pods = crate::sandbox::list_with_link_counters(containerd, pod_samples).await?;
    let mut by_pod: HashMap<String, Vec<Container>> = HashMap::new();
    for container in select(containerd, &Selector::default()).await? {
        if let Some(pod) = container.labels.get(CONTAINER_SANDBOX) {
            by_pod.entry(pod.clone()).or_default().push(container);
        }
    }
    Ok(pods
        .into_iter()
        .filter_map(|(stats, counters)| {
            let attributes = stats.attributes?;
            let metadata = attributes.metadata.unwrap_or_default();
            let containers = by_pod.remove(&attributes.id).unwrap_or_default();
            Some(PodSandboxMetrics {
                metrics: pod_network_metrics(&attributes.id, &metadata.name, &metadata.namespace, &counters),
                container_metrics: containers
                    .iter()
                    .map(|c| {
                        let labels = [
                            c.labels.get(CONTAINER_NAME).cloned().unwrap_or_default(),
                            c.id.clone(),
                            image(c),
                            c.id.clone(),
                            metadata.namespace.clone(),
                            metadata.name.clone(),
                        ];
                        ContainerMetrics { container_id: c.id.clone(), metrics: container_metrics(c, &labels) }
                    })
                    .collect(),
                pod_sandbox_id: attributes.id,
            })
        })
        .collect())
}

/// The container's image: its record's, else the one the kubelet named (the CRI annotation).
fn image(container: &Container) -> String {
    if !container.image.is_empty() {
        return container.image.clone();
    }
    let spec = spec_json(container);
    spec.pointer(&format!("/annotations/{}", IMAGE_NAME.replace('/', "~1")))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

/// The pod's network metrics (its `eth0`, from the pod's view), labelled as cAdvisor labels the
/// pod's own (`POD`) cgroup.
fn pod_network_metrics(id: &str, pod: &str, namespace: &str, counters: &BTreeMap<String, u64>) -> Vec<Metric> {
    let labels = ["POD", id, "", id, namespace, pod, "eth0"].map(String::from);
    NETWORK_COUNTERS
        .iter()
        .filter_map(|(counter, name)| Some(metric(name, &labels, *counters.get(*counter)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_descriptor_is_named_once_with_the_labels_its_metrics_carry() {
        let descriptors = descriptors();
        let names: std::collections::HashSet<_> = descriptors.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names.len(), descriptors.len());
        for required in [
            "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes",
            "container_memory_usage_bytes",
            "container_memory_rss",
            "container_spec_memory_limit_bytes",
            "container_network_receive_bytes_total",
            "container_network_transmit_bytes_total",
        ] {
            assert!(names.contains(required), "{required}");
        }
        let counters = BTreeMap::from([("rx_bytes".to_string(), 10), ("tx_packets".to_string(), 3)]);
        let metrics = pod_network_metrics("p1", "web", "default", &counters);
        assert_eq!(metrics.len(), 2);
        for m in &metrics {
            let d = descriptors.iter().find(|d| d.name == m.name).unwrap();
            assert_eq!(d.label_keys.len(), m.label_values.len());
            assert_eq!(m.metric_type, MetricType::Counter as i32);
        }
        assert_eq!(metrics[0].label_values, ["POD", "p1", "", "p1", "default", "web", "eth0"]);
        assert_eq!(metrics[0].value, Some(UInt64Value { value: 10 }));
    }

    #[test]
    fn a_container_without_a_cgroup_has_its_spec_metrics_only() {
        let spec = serde_json::json!({"linux": {"cgroupsPath": "/crisp-absent/c", "resources": {
            "cpu": {"shares": 256, "quota": 20000, "period": 100000},
            "memory": {"limit": 1048576},
        }}});
        let container = Container {
            id: "c".into(),
            spec: Some(prost_types::Any { type_url: String::new(), value: serde_json::to_vec(&spec).unwrap() }),
            ..Default::default()
        };
        let labels = LABELS.map(String::from);
        let metrics = container_metrics(&container, &labels);
        assert_eq!(image(&container), "");
        let spec = serde_json::json!({"annotations": {IMAGE_NAME: "busybox:1"}});
        let named = Container {
            spec: Some(prost_types::Any { type_url: String::new(), value: serde_json::to_vec(&spec).unwrap() }),
            ..Default::default()
        };
        assert_eq!(image(&named), "busybox:1");
        let got: BTreeMap<&str, u64> = metrics.iter().map(|m| (m.name.as_str(), m.value.unwrap().value)).collect();
        assert_eq!(
            got,
            BTreeMap::from([
                ("container_spec_memory_limit_bytes", 1048576),
                ("container_spec_cpu_shares", 256),
                ("container_spec_cpu_quota", 20000),
                ("container_spec_cpu_period", 100000),
            ])
        );
        assert_eq!(metrics[0].metric_type, MetricType::Gauge as i32);
    }
}
