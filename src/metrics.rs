//! `GET /metrics`: every module's series in one Prometheus text exposition (version 0.0.4).
//!
//! Each source is a `prometheus-client` [`Collector`] that reads its counters at the scrape
//! (the scheduler's atomics, GitHub's budgets, the preview rows and counters, the preview jobs,
//! Slack's counters, the builds by status),
//! registered in a fresh registry in the order the page has always had. The encoder writes the
//! HELP and TYPE lines, the `_total` of counters, the histogram's cumulative buckets and escapes
//! label values; nothing here formats exposition text by hand.

use productbuilder_github::BudgetSnapshot;
use productbuilder_preview::Previews;
use productbuilder_preview::state::Status;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::http::AppState;

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The whole page.
pub async fn render(state: &AppState) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BuildInfo));
    registry.register_collector(Box::new(state.board.clone()));
    registry.register_collector(Box::new(GithubBudgets(state.github.client.budgets())));
    registry.register_collector(Box::new(PreviewSeries::read(&state.previews).await));
    registry.register_collector(Box::new(
        state
            .previews
            .job_metrics()
            .collector("productbuilder_preview_jobs"),
    ));
    if let Some(slack) = &state.slack {
        registry.register_collector(Box::new(productbuilder_slack::metrics::SlackSeries(
            slack.clone(),
        )));
    }
    if let Some(queue) = &state.builds {
        registry.register_collector(Box::new(
            productbuilder_builds::metrics::BuildSeries::read(queue).await,
        ));
    }
    let mut text = String::with_capacity(4096 + state.board.units().len() * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

/// `productbuilder_build_info{version="…"} 1`.
#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "productbuilder_build_info",
            "The running version.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1u64)
            .encode(family.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)
    }
}

/// GitHub's quota and our request counters, one series per identity.
#[derive(Debug)]
struct GithubBudgets(Vec<BudgetSnapshot>);

/// How a series reads one identity's snapshot; `None` leaves that identity out (GitHub has not
/// reported the value yet).
enum Value {
    Gauge(fn(&BudgetSnapshot) -> Option<u64>),
    Seconds(fn(&BudgetSnapshot) -> f64),
    Counter(fn(&BudgetSnapshot) -> u64),
}

impl Collector for GithubBudgets {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        // Counters are named without `_total`: the encoder adds it.
        let series: [(&str, &str, Value); 7] = [
            (
                "productbuilder_github_rate_limit",
                "Primary quota of the identity per hour, as GitHub last reported it.",
                Value::Gauge(|b| b.limit),
            ),
            (
                "productbuilder_github_rate_remaining",
                "Primary quota left, as GitHub last reported it.",
                Value::Gauge(|b| b.remaining),
            ),
            (
                "productbuilder_github_rate_reset_timestamp_seconds",
                "When the primary quota resets (unix seconds).",
                Value::Gauge(|b| b.reset_at),
            ),
            (
                "productbuilder_github_requests",
                "Requests sent to GitHub.",
                Value::Counter(|b| b.requests),
            ),
            (
                "productbuilder_github_not_modified",
                "Requests answered 304 Not Modified (no primary quota spent).",
                Value::Counter(|b| b.not_modified),
            ),
            (
                "productbuilder_github_in_flight",
                "Requests in flight now.",
                Value::Gauge(|b| Some(b.in_flight as u64)),
            ),
            (
                "productbuilder_github_paused_seconds",
                "Seconds until the identity may send again after GitHub asked for a pause.",
                Value::Seconds(|b| b.paused_for.map_or(0.0, |d| d.as_secs_f64())),
            ),
        ];
        for (name, help, value) in series {
            let kind = match value {
                Value::Counter(_) => MetricType::Counter,
                Value::Gauge(_) | Value::Seconds(_) => MetricType::Gauge,
            };
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for b in &self.0 {
                let labels = [("identity", b.identity.as_str())];
                match &value {
                    Value::Gauge(read) => {
                        if let Some(v) = read(b) {
                            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
                        }
                    }
                    Value::Seconds(read) => {
                        ConstGauge::new(read(b)).encode(family.encode_family(&labels)?)?
                    }
                    Value::Counter(read) => {
                        ConstCounter::new(read(b)).encode(family.encode_family(&labels)?)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// The preview rows by status (left out when the database could not be read), the deploys'
/// outcomes and the builds running.
#[derive(Debug)]
struct PreviewSeries {
    by_status: Option<Vec<(Status, u64)>>,
    /// Ready, failed, cancelled.
    outcomes: (u64, u64, u64),
    builds_running: u64,
}

impl PreviewSeries {
    async fn read(previews: &Previews) -> PreviewSeries {
        let by_status = previews.list().await.ok().map(|rows| {
            [
                Status::Pending,
                Status::Building,
                Status::Deploying,
                Status::Ready,
                Status::Failed,
                Status::Deleted,
            ]
            .into_iter()
            .map(|status| {
                let n = rows.iter().filter(|r| r.status == status).count();
                (status, n as u64)
            })
            .collect()
        });
        PreviewSeries {
            by_status,
            outcomes: previews.outcomes(),
            builds_running: previews.builds_running() as u64,
        }
    }
}

impl Collector for PreviewSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        if let Some(by_status) = &self.by_status {
            let mut family = encoder.encode_descriptor(
                "productbuilder_previews",
                "Previews by status (deleted ones are kept as history).",
                None,
                MetricType::Gauge,
            )?;
            for (status, n) in by_status {
                ConstGauge::new(*n)
                    .encode(family.encode_family(&[("status", status.to_string())])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "productbuilder_preview_deploys",
            "Deploys ended since start, by outcome.",
            None,
            MetricType::Counter,
        )?;
        let (ready, failed, cancelled) = self.outcomes;
        for (outcome, n) in [
            ("ready", ready),
            ("failed", failed),
            ("cancelled", cancelled),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        ConstGauge::new(self.builds_running).encode(encoder.encode_descriptor(
            "productbuilder_preview_builds_running",
            "Image builds running now.",
            None,
            MetricType::Gauge,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(collector: impl Collector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    /// The GitHub series as they were written by hand: a value GitHub has not reported is left
    /// out, counters end in `_total`, the identity label is escaped.
    #[test]
    fn github_budgets_keep_their_names_types_and_labels() {
        let text = encode(GithubBudgets(vec![BudgetSnapshot {
            identity: "token:a\"b".into(),
            limit: None,
            remaining: Some(4999),
            reset_at: Some(1_700_000_000),
            in_flight: 2,
            peak_in_flight: 3,
            paused_for: Some(std::time::Duration::from_millis(1500)),
            requests: 10,
            not_modified: 7,
            writes: 1,
        }]));
        for line in [
            "# HELP productbuilder_github_rate_limit Primary quota of the identity per hour, as GitHub last reported it.",
            "# TYPE productbuilder_github_rate_limit gauge",
            "productbuilder_github_rate_remaining{identity=\"token:a\\\"b\"} 4999",
            "productbuilder_github_rate_reset_timestamp_seconds{identity=\"token:a\\\"b\"} 1700000000",
            "# TYPE productbuilder_github_requests_total counter",
            "productbuilder_github_requests_total{identity=\"token:a\\\"b\"} 10",
            "# TYPE productbuilder_github_not_modified_total counter",
            "productbuilder_github_not_modified_total{identity=\"token:a\\\"b\"} 7",
            "productbuilder_github_in_flight{identity=\"token:a\\\"b\"} 2",
            "productbuilder_github_paused_seconds{identity=\"token:a\\\"b\"} 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        assert!(
            !text.contains("productbuilder_github_rate_limit{"),
            "an unreported limit is left out:\n{text}"
        );
    }

    #[test]
    fn preview_series_without_rows_keep_the_counters() {
        let text = encode(PreviewSeries {
            by_status: None,
            outcomes: (3, 1, 0),
            builds_running: 1,
        });
        assert!(!text.contains("productbuilder_previews{"), "{text}");
        for line in [
            "# TYPE productbuilder_preview_deploys_total counter",
            "productbuilder_preview_deploys_total{outcome=\"ready\"} 3",
            "productbuilder_preview_deploys_total{outcome=\"failed\"} 1",
            "productbuilder_preview_builds_running 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
