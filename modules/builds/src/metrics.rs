//! The builds' series of `/metrics`, read from the database at the scrape (the queue's rows are
//! the only truth: several daemons may share the file, and a restart loses no count).
//!
//! - `productbuilder_builds{status}`: builds by status, every status listed (0 included), from
//!   one `GROUP BY` over the `(status, …)` index; `status="running"` is the builds running now.
//! - `productbuilder_build_last_duration_seconds`: how long the most recently finished build
//!   took (its result's `duration_ms`); absent until a build has finished with a result.
//!
//! A database that cannot be read leaves both out of the page rather than failing the scrape.

use productbuilder_store::rusqlite::{Connection, OptionalExtension};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use strum::VariantArray;

use crate::queue::Queue;
use crate::records::parse_status;
use crate::status::Status;

/// `productbuilder_builds*`, as read at one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSeries {
    /// Every status with its count; `None` when the database could not be read.
    pub by_status: Option<Vec<(Status, u64)>>,
    /// Seconds the most recently finished build took, if one finished with a result.
    pub last_duration_seconds: Option<f64>,
}

impl BuildSeries {
    /// Reads the counts and the last duration from `queue`'s database.
    pub async fn read(queue: &Queue) -> BuildSeries {
        match queue.store.read(|c| read_rows(c)).await {
            Ok(series) => series,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: the builds could not be counted; left out of this scrape");
                BuildSeries {
                    by_status: None,
                    last_duration_seconds: None,
                }
            }
        }
    }
}

/// Builds per status (every status, in the table's order) and the last finished build's
/// duration.
fn read_rows(c: &Connection) -> productbuilder_store::rusqlite::Result<BuildSeries> {
    let mut stmt = c.prepare_cached("SELECT status, count(*) FROM builds GROUP BY status")?;
    let mut found = Vec::new();
    for row in stmt.query_map([], |r| {
        let status: String = r.get(0)?;
        Ok((parse_status(0, &status)?, r.get::<_, i64>(1)?))
    })? {
        found.push(row?);
    }
    let by_status = Status::VARIANTS
        .iter()
        .map(|s| {
            let n = found
                .iter()
                .find(|(f, _)| f == s)
                .map_or(0, |(_, n)| (*n).max(0) as u64);
            (*s, n)
        })
        .collect();
    let last_ms: Option<Option<i64>> = c
        .query_row(
            "SELECT json_extract(result, '$.duration_ms') FROM builds \
             WHERE finished_at IS NOT NULL AND result IS NOT NULL \
             ORDER BY finished_at DESC, id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(BuildSeries {
        by_status: Some(by_status),
        last_duration_seconds: last_ms.flatten().map(|ms| ms.max(0) as f64 / 1000.0),
    })
}

impl Collector for BuildSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        if let Some(by_status) = &self.by_status {
            let mut family = encoder.encode_descriptor(
                "productbuilder_builds",
                "Builds by status, as the database holds them (running: the builds running now).",
                None,
                MetricType::Gauge,
            )?;
            for (status, n) in by_status {
                ConstGauge::new(*n as i64)
                    .encode(family.encode_family(&[("status", status.as_str())])?)?;
            }
        }
        if let Some(seconds) = self.last_duration_seconds {
            ConstGauge::new(seconds).encode(encoder.encode_descriptor(
                "productbuilder_build_last_duration_seconds",
                "How long the most recently finished build took.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Finish, QueueConfig};
    use crate::spec::{BuildResult, BuildSpec};
    use chrono::{TimeZone, Utc};
    use productbuilder_store::Store;
    use prometheus_client::encoding::prometheus_text;
    use prometheus_client::registry::Registry;

    fn encode(series: BuildSeries) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(series));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    fn result(duration_ms: u64) -> BuildResult {
        BuildResult {
            duration_ms,
            ..BuildResult::default()
        }
    }

    /// The counts come from the rows as they are (every status listed, zeros too), and the last
    /// duration is the most recently finished build's, not the longest or the first.
    #[tokio::test]
    async fn counts_and_the_last_duration_come_from_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        store.migrate().unwrap();
        let queue = Queue::new(
            store,
            QueueConfig {
                max_concurrent: 4,
                ..QueueConfig::default()
            },
        );
        let empty = BuildSeries::read(&queue).await;
        assert_eq!(
            empty,
            BuildSeries {
                by_status: Some(Status::VARIANTS.iter().map(|s| (*s, 0)).collect()),
                last_duration_seconds: None,
            }
        );
        let t = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
        for n in 1..=4 {
            queue
                .enqueue("acme/shop", Some(n), BuildSpec::new("p"), t(0))
                .await
                .unwrap();
        }
        let a = queue.claim("me", t(1)).await.unwrap().unwrap().build.id;
        let b = queue.claim("me", t(1)).await.unwrap().unwrap().build.id;
        queue.claim("me", t(1)).await.unwrap().unwrap();
        queue
            .finish(a, "me", Finish::Completed(result(90_000)), t(5))
            .await
            .unwrap();
        queue
            .finish(
                b,
                "me",
                Finish::Failed {
                    result: result(1_500),
                    reason: "no".into(),
                },
                t(9),
            )
            .await
            .unwrap();
        let read = BuildSeries::read(&queue).await;
        assert_eq!(
            read.by_status,
            Some(vec![
                (Status::Pending, 1),
                (Status::Running, 1),
                (Status::Completed, 1),
                (Status::Failed, 1),
                (Status::Cancelled, 0),
            ])
        );
        assert_eq!(read.last_duration_seconds, Some(1.5));
        let text = encode(read);
        for line in [
            "# TYPE productbuilder_builds gauge",
            "productbuilder_builds{status=\"pending\"} 1",
            "productbuilder_builds{status=\"running\"} 1",
            "productbuilder_builds{status=\"cancelled\"} 0",
            "# TYPE productbuilder_build_last_duration_seconds gauge",
            "productbuilder_build_last_duration_seconds 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }

    #[test]
    fn an_unreadable_database_leaves_the_series_out() {
        let text = encode(BuildSeries {
            by_status: None,
            last_duration_seconds: None,
        });
        assert!(!text.contains("productbuilder_build"), "{text}");
    }
}
