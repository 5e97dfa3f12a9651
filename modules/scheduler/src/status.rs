//! Per-unit counters and flags, written by the scheduler alone and read by anyone (HTTP, tests).
//!
//! Everything here is atomics so that a run pays a handful of relaxed increments, never a lock:
//! the scheduler must stay cheap with ten thousand units.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

use crate::unit::{Phase, Schedule};

/// Upper bounds (seconds) of the run-duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 10] =
    [0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 60.0, 300.0];

/// The live status of one unit.
#[derive(Debug)]
pub struct UnitStatus {
    pub(crate) name: Arc<str>,
    pub(crate) group: Option<String>,
    pub(crate) schedule: Schedule,
    runs: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    panics: AtomicU64,
    degraded: AtomicBool,
    /// Unix milliseconds of the last successful run; 0 for never.
    last_success_ms: AtomicU64,
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len()],
    duration_sum_us: AtomicU64,
    last_error: Mutex<Option<String>>,
    pub(crate) nudge: Notify,
}

impl UnitStatus {
    pub(crate) fn new(name: Arc<str>, group: Option<String>, schedule: Schedule) -> Self {
        UnitStatus {
            name,
            group,
            schedule,
            runs: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            last_success_ms: AtomicU64::new(0),
            duration_buckets: Default::default(),
            duration_sum_us: AtomicU64::new(0),
            last_error: Mutex::new(None),
            nudge: Notify::new(),
        }
    }

    pub(crate) fn record_run(&self, took: Duration) {
        self.runs.fetch_add(1, Relaxed);
        self.duration_sum_us
            .fetch_add(took.as_micros() as u64, Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| secs <= *b) {
            self.duration_buckets[i].fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn record_success(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_success_ms.store(now, Relaxed);
    }

    pub(crate) fn record_failure(&self, message: &str, panicked: bool) {
        self.failures.fetch_add(1, Relaxed);
        if panicked {
            self.panics.fetch_add(1, Relaxed);
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.to_owned());
    }

    pub(crate) fn record_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// Returns the previous value, so the caller logs transitions once.
    pub(crate) fn set_degraded(&self, degraded: bool) -> bool {
        self.degraded.swap(degraded, Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    pub fn phase(&self) -> Phase {
        self.schedule.phase()
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    pub fn runs(&self) -> u64 {
        self.runs.load(Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }

    pub fn panics(&self) -> u64 {
        self.panics.load(Relaxed)
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Relaxed)
    }

    pub fn last_success(&self) -> Option<SystemTime> {
        match self.last_success_ms.load(Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The status of every unit, plus the readiness flag. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    inner: Arc<BoardInner>,
}

#[derive(Debug)]
struct BoardInner {
    units: Vec<Arc<UnitStatus>>,
    by_name: HashMap<Arc<str>, usize>,
    by_group: HashMap<String, Vec<usize>>,
    preflights_passed: AtomicBool,
}

impl StatusBoard {
    pub(crate) fn new(units: Vec<Arc<UnitStatus>>) -> Self {
        let mut by_name = HashMap::with_capacity(units.len());
        let mut by_group: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, unit) in units.iter().enumerate() {
            by_name.insert(unit.name.clone(), i);
            if let Some(group) = &unit.group {
                by_group.entry(group.clone()).or_default().push(i);
            }
        }
        StatusBoard {
            inner: Arc::new(BoardInner {
                units,
                by_name,
                by_group,
                preflights_passed: AtomicBool::new(false),
            }),
        }
    }

    pub fn units(&self) -> &[Arc<UnitStatus>] {
        &self.inner.units
    }

    pub fn unit(&self, name: &str) -> Option<&Arc<UnitStatus>> {
        self.inner.by_name.get(name).map(|&i| &self.inner.units[i])
    }

    /// The units of one group (tenant), in plan order.
    pub fn group(&self, group: &str) -> impl Iterator<Item = &Arc<UnitStatus>> {
        self.inner
            .by_group
            .get(group)
            .into_iter()
            .flatten()
            .map(|&i| &self.inner.units[i])
    }

    pub fn degraded(&self) -> impl Iterator<Item = &Arc<UnitStatus>> {
        self.inner.units.iter().filter(|u| u.is_degraded())
    }

    pub fn preflights_passed(&self) -> bool {
        self.inner.preflights_passed.load(Relaxed)
    }

    pub(crate) fn set_preflights_passed(&self) {
        self.inner.preflights_passed.store(true, Relaxed);
    }

    /// Wakes one unit early. Returns false when no unit has that name.
    ///
    /// Nudges coalesce: however many arrive while the unit runs, it runs once more afterwards.
    pub fn nudge_unit(&self, name: &str) -> bool {
        match self.unit(name) {
            Some(unit) => {
                unit.nudge.notify_one();
                true
            }
            None => false,
        }
    }

    /// Wakes every unit of a group early; returns how many were nudged.
    pub fn nudge_group(&self, group: &str) -> usize {
        let mut n = 0;
        for unit in self.group(group) {
            unit.nudge.notify_one();
            n += 1;
        }
        n
    }

    /// Appends the scheduler's series in the Prometheus text exposition format (version 0.0.4).
    /// `/metrics` registers the board as a [`Collector`] beside the other modules' instead.
    pub fn render_prometheus(&self, out: &mut String) {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(out, &registry);
    }
}

/// A counter series: metric name (without `_total`, which the encoder adds), help text, and how
/// to read it from a unit.
type Counter = (&'static str, &'static str, fn(&UnitStatus) -> u64);

/// The scheduler's series, read from the atomics at each scrape: no lock on the run path, and
/// names, types, HELP lines and label escaping by construction.
impl Collector for StatusBoard {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let units = &self.inner.units;
        let counters: [Counter; 4] = [
            (
                "productbuilder_unit_runs",
                "Unit runs (attempts) finished, by unit.",
                UnitStatus::runs,
            ),
            (
                "productbuilder_unit_failures",
                "Unit runs that returned an error, timed out or panicked.",
                UnitStatus::failures,
            ),
            (
                "productbuilder_unit_retries",
                "Retries scheduled after a transient failure.",
                UnitStatus::retries,
            ),
            (
                "productbuilder_unit_panics",
                "Unit runs that panicked.",
                UnitStatus::panics,
            ),
        ];
        for (metric, help, value) in counters {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for u in units {
                ConstCounter::new(value(u)).encode(family.encode_family(&[("unit", u.name())])?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "productbuilder_unit_run_duration_seconds",
            "Duration of unit runs.",
            None,
            MetricType::Histogram,
        )?;
        for u in units {
            // Per-bucket counts; the encoder makes them cumulative and adds `+Inf` = count.
            let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                .iter()
                .zip(&u.duration_buckets)
                .map(|(bound, n)| (*bound, n.load(Relaxed)))
                .collect();
            let sum = u.duration_sum_us.load(Relaxed) as f64 / 1e6;
            family
                .encode_family(&[("unit", u.name())])?
                .encode_histogram::<NoLabelSet>(sum, u.runs(), &buckets, None)?;
        }

        let mut family = encoder.encode_descriptor(
            "productbuilder_unit_degraded",
            "1 while the unit's last cycle ended in failure.",
            None,
            MetricType::Gauge,
        )?;
        for u in units {
            ConstGauge::new(u64::from(u.is_degraded()))
                .encode(family.encode_family(&[("unit", u.name())])?)?;
        }
        ConstGauge::new(self.degraded().count() as u64).encode(encoder.encode_descriptor(
            "productbuilder_units_degraded",
            "Units currently degraded.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(u64::from(self.preflights_passed())).encode(encoder.encode_descriptor(
            "productbuilder_preflights_passed",
            "1 once every preflight passed.",
            None,
            MetricType::Gauge,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let unit = Arc::new(UnitStatus::new(
            "worker:x:a\"b\\c\nd".into(),
            None,
            Schedule::Worker {
                interval: Duration::from_secs(1),
            },
        ));
        let board = StatusBoard::new(vec![unit]);
        let mut text = String::new();
        board.render_prometheus(&mut text);
        assert!(
            text.contains("productbuilder_unit_runs_total{unit=\"worker:x:a\\\"b\\\\c\\nd\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn histogram_is_cumulative_and_counts_every_run() {
        let unit = Arc::new(UnitStatus::new(
            "worker:x:global".into(),
            None,
            Schedule::Worker {
                interval: Duration::from_secs(1),
            },
        ));
        unit.record_run(Duration::from_millis(1));
        unit.record_run(Duration::from_millis(50));
        unit.record_run(Duration::from_secs(1000));
        let board = StatusBoard::new(vec![unit]);
        let mut text = String::new();
        board.render_prometheus(&mut text);
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no line {needle} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        let bucket = "productbuilder_unit_run_duration_seconds_bucket{unit=\"worker:x:global\"";
        assert_eq!(line(&format!("{bucket},le=\"0.005\"}}")), "1");
        assert_eq!(line(&format!("{bucket},le=\"0.1\"}}")), "2");
        assert_eq!(line(&format!("{bucket},le=\"300\"}}")), "2");
        assert_eq!(line(&format!("{bucket},le=\"+Inf\"}}")), "3");
        assert_eq!(
            line("productbuilder_unit_runs_total{unit=\"worker:x:global\"}"),
            "3"
        );
    }
}
