//! The Slack series of `/metrics`, read from the client's counters at the scrape.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::api::SlackApi;

/// `productbuilder_slack_*`.
#[derive(Debug)]
pub struct SlackSeries(pub SlackApi);

impl Collector for SlackSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let c = &self.0.counters;
        for (name, help, value) in [
            (
                "productbuilder_slack_messages_posted",
                "Messages posted with chat.postMessage.",
                &c.posted,
            ),
            (
                "productbuilder_slack_messages_updated",
                "Messages edited with chat.update.",
                &c.updated,
            ),
            (
                "productbuilder_slack_rate_limited",
                "Slack answers 429; each held the workspace for its Retry-After.",
                &c.rate_limited,
            ),
            (
                "productbuilder_slack_events_received",
                "Socket Mode envelopes received.",
                &c.events_received,
            ),
            (
                "productbuilder_slack_events_acked",
                "Socket Mode envelopes acknowledged.",
                &c.events_acked,
            ),
            (
                "productbuilder_slack_events_deduplicated",
                "Socket Mode events delivered again and handled once.",
                &c.events_deduplicated,
            ),
        ] {
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        ConstGauge::new(c.socket_connected.load(Ordering::Relaxed) as i64).encode(
            encoder.encode_descriptor(
                "productbuilder_slack_socket_connected",
                "1 while a Socket Mode connection is open.",
                None,
                MetricType::Gauge,
            )?,
        )
    }
}
