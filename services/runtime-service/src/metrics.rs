//! The runtime service's metrics (served when `runtime.metrics_address` is set). Labels are
//! bounded: a state, a CNI operation, a containerd API; never a pod or container id.
//!
//! - `crisp_runtime_pods{state}` (`ready`, `notready`) and `crisp_runtime_containers{state}`
//!   (`created`, `running`, `exited`, `unknown`): computed at each scrape from what the service
//!   already holds, never waiting on containerd. Containers: the index ListContainers answers
//!   from; while it is being (re)loaded the scrape shows the last counts, and a scrape that finds
//!   it unloaded starts the load in the background. Pods: each pod's state as last read from its
//!   record (every ListPodSandbox, which the kubelet makes each second, PodSandboxStatus, and
//!   the service's own run, stop and remove); a scrape finding the last full read older than
//!   [`POD_REFRESH`] starts one in the background.
//! - `crisp_runtime_cni_duration_seconds{operation}` and
//!   `crisp_runtime_cni_failures_total{operation}`: each CNI ADD and DEL of a pod's network
//!   (`add`, `del`; the loopback plugin apart), failed or not, and those that failed.
//! - `crisp_runtime_oom_kills_total`: container exits recorded as `OOMKilled`.
//! - `crisp_containerd_call_duration_seconds{grpc_service,grpc_method}`: see
//!   [`crisp_containerd::metrics`].

use crate::container::Containers;
use crate::sandbox::{State, Stored};
use crisp_containerd::Containerd;
use crisp_metrics::{Buckets, HistogramFamily};
use crisp_proto::cri::ContainerState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A scrape finding the pods last read longer ago than this reads them again (in the
/// background).
pub const POD_REFRESH: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

pub struct RuntimeMetrics {
    cni_duration: HistogramFamily<OperationLabels>,
    cni_failures: Family<OperationLabels, Counter>,
    pub oom_kills: Counter,
}

/// A CNI operation: 5 ms to 2 minutes.
const CNI_BUCKETS: Buckets = Buckets(&[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0]);

pub static METRICS: LazyLock<RuntimeMetrics> = LazyLock::new(|| RuntimeMetrics {
    cni_duration: crisp_metrics::histogram::family(CNI_BUCKETS),
    cni_failures: Family::default(),
    oom_kills: Counter::default(),
});

/// Runs the CNI `operation` (`"add"`, `"del"`) and records how long it took and whether it
/// failed.
pub async fn cni<T, E>(operation: &'static str, call: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let started = Instant::now();
    let result = call.await;
    let labels = OperationLabels { operation };
    METRICS.cni_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    if result.is_err() {
        METRICS.cni_failures.get_or_create(&labels).inc();
    }
    result
}

/// Each pod's readiness as last read or written, and when every pod was last read.
#[derive(Default)]
struct Pods {
    ready: HashMap<String, bool>,
    listed: Option<Instant>,
}

static PODS: LazyLock<Mutex<Pods>> = LazyLock::new(Mutex::default);

fn pods() -> std::sync::MutexGuard<'static, Pods> {
    PODS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pod `id` is now `state`; `None`: it is gone.
pub fn pod_state(id: &str, state: Option<State>) {
    let mut pods = pods();
    match state {
        Some(state) => {
            pods.ready.insert(id.to_string(), state == State::Ready);
        }
        None => {
            pods.ready.remove(id);
        }
    }
}

/// Every pod, as just read from their records.
pub fn pods_listed(all: &[Stored]) {
    let mut pods = pods();
    pods.ready = all.iter().map(|s| (s.sandbox.id.clone(), s.state == State::Ready)).collect();
    pods.listed = Some(Instant::now());
}

/// What the scrape-time gauges read from: set once the service is built.
struct Sources {
    containers: Containers,
    containerd: Containerd,
}

static SOURCES: OnceLock<Sources> = OnceLock::new();

/// Gives the gauges the service's containers and containerd connection.
pub fn watch(containers: &Containers, containerd: &Containerd) {
    let _ = SOURCES.set(Sources { containers: containers.clone(), containerd: containerd.clone() });
}

const CONTAINER_STATES: [(ContainerState, &str); 4] = [
    (ContainerState::ContainerCreated, "created"),
    (ContainerState::ContainerRunning, "running"),
    (ContainerState::ContainerExited, "exited"),
    (ContainerState::ContainerUnknown, "unknown"),
];

/// The pod and container gauges (see the module docs).
#[derive(Debug)]
struct StateCollector;

/// The last container counts, for scrapes while the index is busy or unloaded.
static LAST_CONTAINERS: Mutex<Option<[i64; 4]>> = Mutex::new(None);
static LOADING_CONTAINERS: AtomicBool = AtomicBool::new(false);
static LISTING_PODS: AtomicBool = AtomicBool::new(false);

fn container_counts(sources: &Sources) -> Option<[i64; 4]> {
    let mut last = LAST_CONTAINERS.lock().unwrap_or_else(|e| e.into_inner());
    // Err: being loaded or written; the last counts.
    if let Ok(index) = sources.containers.index().try_lock() {
        match index.as_ref() {
            Some(index) => {
                let mut counts = [0i64; 4];
                for container in index.values() {
                    let at = CONTAINER_STATES.iter().position(|(s, _)| *s as i32 == container.state).unwrap_or(3);
                    counts[at] += 1;
                }
                *last = Some(counts);
            }
            None => {
                let containers = sources.containers.clone();
                in_background(&LOADING_CONTAINERS, async move {
                    let _ = containers.indexed().await;
                });
            }
        }
    }
    *last
}

/// None until the pods were read once.
fn pod_counts(sources: &Sources) -> Option<[i64; 2]> {
    let (counts, listed) = {
        let pods = pods();
        let ready = pods.ready.values().filter(|r| **r).count();
        let counts = [ready, pods.ready.len() - ready].map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        (counts, pods.listed)
    };
    if listed.is_none_or(|at| at.elapsed() > POD_REFRESH) {
        let containerd = sources.containerd.clone();
        in_background(&LISTING_PODS, async move {
            if let Err(err) = crate::sandbox::list(&containerd, None).await {
                tracing::debug!(error = %crisp_errors::message_chain(&err), "cannot read the pods for metrics");
            }
        });
    }
    listed.map(|_| counts)
}

/// Runs `work` on the runtime unless the last one started under `flag` is still running.
fn in_background(flag: &'static AtomicBool, work: impl Future<Output = ()> + Send + 'static) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    if flag.swap(true, Ordering::AcqRel) {
        return;
    }
    handle.spawn(async move {
        work.await;
        flag.store(false, Ordering::Release);
    });
}

fn encode_states<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    states: [&'static str; N],
    counts: [i64; N],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (state, count) in states.into_iter().zip(counts) {
        let labels = StateLabels { state };
        ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sources) = SOURCES.get() else { return Ok(()) };
        if let Some(pods) = pod_counts(sources) {
            let help = "Pod sandboxes on the node, by state.";
            encode_states(&mut encoder, "runtime_pods", help, ["ready", "notready"], pods)?;
        }
        if let Some(containers) = container_counts(sources) {
            encode_states(
                &mut encoder,
                "runtime_containers",
                "Containers on the node, by state.",
                CONTAINER_STATES.map(|(_, name)| name),
                containers,
            )?;
        }
        Ok(())
    }
}

/// Adds the runtime service's metrics, and containerd's call latencies, to `registry` (under
/// the `crisp_` prefix).
pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register(
        "runtime_cni_duration_seconds",
        "How long each CNI operation on a pod's network took, failed or not",
        m.cni_duration.clone(),
    );
    registry.register("runtime_cni_failures", "CNI operations on a pod's network that failed", m.cni_failures.clone());
    registry.register("runtime_oom_kills", "Container exits recorded as OOMKilled", m.oom_kills.clone());
    registry.register_collector(Box::new(StateCollector));
    crisp_containerd::metrics::register(registry);
}
