//! The Slack series of `/metrics`, read from the client's counters at the scrape.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

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
        ] {
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}
