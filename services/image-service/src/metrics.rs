//! The image service's metrics, kept in one process-wide set that the pull code updates at its
//! milestones and [`register`] hands to the metrics endpoint (served when
//! `image.metrics_address` is set). Labels are bounded: a gRPC code, a store; never an image.
//!
//! - `crisp_image_pulls_in_flight`: pulls running now (one per image being fetched: callers
//!   joining a running pull of the same image share it).
//! - `crisp_image_pulls_total{grpc_code}` and `crisp_image_pull_duration_seconds`: pulls ended,
//!   by the code their callers got, and how long each took.
//! - `crisp_image_pulls_coalesced_total`: PullImage calls that joined a pull already running.
//! - `crisp_image_pull_stalls_total`: pulls failed by the stall watchdog.
//! - `crisp_image_pull_bytes_total`: bytes downloaded from registries, as they arrive.
//! - `crisp_image_layers_unpacked_total`, `crisp_image_layer_unpack_duration_seconds`: layers
//!   unpacked into snapshots; `crisp_image_layer_extract_duration_seconds`: each layer's
//!   decompression and extraction of the direct apply (overlayfs), in parallel with downloads.
//! - `crisp_image_store_bytes{store}`: what the snapshots and the content store use, as last
//!   computed for ImageFsInfo.

use crisp_metrics::Buckets;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    grpc_code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    store: &'static str,
}

pub struct ImageMetrics {
    pub pulls_in_flight: Gauge,
    pulls: Family<CodeLabels, Counter>,
    pull_duration: Histogram,
    pub coalesced: Counter,
    pub stalls: Counter,
    pub bytes: Counter,
    pub layers_unpacked: Counter,
    pub unpack_duration: Histogram,
    pub extract_duration: Histogram,
    store: Family<StoreLabels, Gauge>,
}

/// A pull: 10 ms (everything present) to 30 minutes.
const PULL_BUCKETS: Buckets =
    Buckets(&[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0, 1800.0]);
/// One layer's unpack or extraction: 1 ms to 10 minutes.
const LAYER_BUCKETS: Buckets = Buckets(&[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0]);

pub static METRICS: LazyLock<ImageMetrics> = LazyLock::new(|| ImageMetrics {
    pulls_in_flight: Gauge::default(),
    pulls: Family::default(),
    pull_duration: PULL_BUCKETS.histogram(),
    coalesced: Counter::default(),
    stalls: Counter::default(),
    bytes: Counter::default(),
    layers_unpacked: Counter::default(),
    unpack_duration: LAYER_BUCKETS.histogram(),
    extract_duration: LAYER_BUCKETS.histogram(),
    store: Family::default(),
});

impl ImageMetrics {
    /// A pull ended with `code` after `seconds`.
    pub fn pull_ended(&self, code: tonic::Code, seconds: f64) {
        let grpc_code = crisp_metrics::grpc_code_name(code as i32);
        self.pulls.get_or_create(&CodeLabels { grpc_code }).inc();
        self.pull_duration.observe(seconds);
    }

    /// What the snapshots and the content store use now.
    pub fn store_sizes(&self, snapshots: u64, content: u64) {
        let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        self.store.get_or_create(&StoreLabels { store: "snapshots" }).set(bytes(snapshots));
        self.store.get_or_create(&StoreLabels { store: "content" }).set(bytes(content));
    }
}

/// Adds the image service's metrics to `registry` (under the `crisp_` prefix).
pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register("image_pulls_in_flight", "Image pulls running now", m.pulls_in_flight.clone());
    registry.register("image_pulls", "Image pulls ended, by the gRPC code their callers got", m.pulls.clone());
    registry.register("image_pull_duration_seconds", "How long each image pull took", m.pull_duration.clone());
    registry.register(
        "image_pulls_coalesced",
        "PullImage calls that joined a pull of the same image already running",
        m.coalesced.clone(),
    );
    registry.register("image_pull_stalls", "Image pulls failed for making no progress", m.stalls.clone());
    registry.register("image_pull_bytes", "Bytes downloaded from registries", m.bytes.clone());
    registry.register("image_layers_unpacked", "Image layers unpacked into snapshots", m.layers_unpacked.clone());
    registry.register(
        "image_layer_unpack_duration_seconds",
        "How long each layer's unpack into its snapshot took",
        m.unpack_duration.clone(),
    );
    registry.register(
        "image_layer_extract_duration_seconds",
        "How long each layer's decompression and extraction took (direct apply, overlayfs)",
        m.extract_duration.clone(),
    );
    registry.register(
        "image_store_bytes",
        "Bytes the image snapshots and the content store use, as last computed",
        m.store.clone(),
    );
}
