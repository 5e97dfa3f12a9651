//! The jobs' counters as Prometheus series, through `prometheus-client`'s text encoder.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::Outcome;

/// A snapshot of the counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub panicked: u64,
    /// Includes jobs cancelled before they started (those never count as started).
    pub cancelled: u64,
    pub timed_out: u64,
    /// Jobs running now.
    pub running: u64,
    /// Jobs submitted and waiting (for an earlier job of their key or for a slot).
    pub waiting: u64,
}

impl Metrics {
    /// The snapshot as a [`Collector`] for a `prometheus-client` registry, every series named
    /// `{prefix}_…` (e.g. `productbuilder_jobs`).
    pub fn collector(self, prefix: &str) -> MetricsCollector {
        MetricsCollector {
            prefix: prefix.to_owned(),
            metrics: self,
        }
    }

    /// Appends the Prometheus text exposition of the snapshot, every series named `{prefix}_…`.
    pub fn render_prometheus(&self, prefix: &str, text: &mut String) {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.collector(prefix)));
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(text, &registry);
    }
}

/// A [`Metrics`] snapshot under a name prefix; see [`Metrics::collector`].
#[derive(Debug, Clone)]
pub struct MetricsCollector {
    prefix: String,
    metrics: Metrics,
}

impl Collector for MetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let (prefix, m) = (&self.prefix, &self.metrics);
        // Counters are named without `_total`: the encoder adds it.
        let name = format!("{prefix}_started");
        ConstCounter::new(m.started).encode(encoder.encode_descriptor(
            &name,
            "Jobs started since start.",
            None,
            MetricType::Counter,
        )?)?;
        let name = format!("{prefix}_ended");
        let mut family = encoder.encode_descriptor(
            &name,
            "Jobs ended since start, by outcome (cancelled includes jobs cancelled before they started).",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in [
            (Outcome::Succeeded, m.succeeded),
            (Outcome::Failed, m.failed),
            (Outcome::Panicked, m.panicked),
            (Outcome::Cancelled, m.cancelled),
            (Outcome::TimedOut, m.timed_out),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome.as_str())])?)?;
        }
        let name = format!("{prefix}_running");
        ConstGauge::new(m.running).encode(encoder.encode_descriptor(
            &name,
            "Jobs running now.",
            None,
            MetricType::Gauge,
        )?)?;
        let name = format!("{prefix}_waiting");
        ConstGauge::new(m.waiting).encode(encoder.encode_descriptor(
            &name,
            "Jobs waiting for an earlier job of their key or for a slot.",
            None,
            MetricType::Gauge,
        )?)
    }
}
