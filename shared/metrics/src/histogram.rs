//! Histograms with fixed buckets, alone or as a labelled family: how every crisp service makes
//! its latency histograms. A service names its buckets once, as a [`Buckets`] constant (upper
//! bounds in seconds, ascending), and makes each histogram from it: [`Buckets::histogram`] for
//! one, [`family`] for one per label set (each histogram made at its labels' first use).

use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;

/// A histogram's bucket upper bounds, in ascending order (the `+Inf` bucket is implied).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Buckets(pub &'static [f64]);

impl Buckets {
    /// A new histogram with these buckets.
    pub fn histogram(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        self.histogram()
    }
}

/// Histograms by label set `L`, all with the same buckets.
pub type HistogramFamily<L> = Family<L, Histogram, Buckets>;

/// An empty family whose histograms have `buckets`.
pub fn family<L: Clone + std::hash::Hash + Eq>(buckets: Buckets) -> HistogramFamily<L> {
    Family::new_with_constructor(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::registry::Registry;

    const BUCKETS: Buckets = Buckets(&[0.1, 1.0]);

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        operation: &'static str,
    }

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn each_label_set_gets_a_histogram_with_the_buckets_named_once() {
        let durations: HistogramFamily<Labels> = family(BUCKETS);
        let mut registry = Registry::default();
        registry.register("op_duration_seconds", "How long each operation took", durations.clone());
        durations.get_or_create(&Labels { operation: "add" }).observe(0.05);
        durations.get_or_create(&Labels { operation: "add" }).observe(5.0);
        durations.get_or_create(&Labels { operation: "del" }).observe(0.5);

        let text = scrape(&registry);
        assert!(text.contains(r#"op_duration_seconds_bucket{le="0.1",operation="add"} 1"#), "{text}");
        assert!(text.contains(r#"op_duration_seconds_bucket{le="+Inf",operation="add"} 2"#), "{text}");
        assert!(text.contains(r#"op_duration_seconds_bucket{le="1.0",operation="del"} 1"#), "{text}");
        assert!(text.contains(r#"op_duration_seconds_count{operation="del"} 1"#), "{text}");
    }

    #[test]
    fn a_single_histogram_has_the_buckets_too() {
        let histogram = BUCKETS.histogram();
        let mut registry = Registry::default();
        registry.register("pull_duration_seconds", "How long each pull took", histogram.clone());
        histogram.observe(0.5);
        let text = scrape(&registry);
        assert!(text.contains(r#"pull_duration_seconds_bucket{le="0.1"} 0"#), "{text}");
        assert!(text.contains(r#"pull_duration_seconds_bucket{le="1.0"} 1"#), "{text}");
    }
}
