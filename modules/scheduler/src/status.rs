//! Per-unit counters and flags, written by the scheduler alone and read by anyone (HTTP, tests).
//!
//! Everything here is atomics so that a run pays a handful of relaxed increments, never a lock:
//! the scheduler must stay cheap with ten thousand units.

use std::collections::{BTreeMap, HashMap};
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

use crate::error::ErrorKind;
use crate::unit::{Phase, Schedule, TenantId};

/// Upper bounds (seconds) of the run-duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 10] =
    [0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 60.0, 300.0];

/// The live status of one unit.
#[derive(Debug)]
pub struct UnitStatus {
    pub(crate) name: Arc<str>,
    pub(crate) tenant: Option<TenantId>,
    pub(crate) schedule: Schedule,
    runs: AtomicU64,
    restarts: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    panics: AtomicU64,
    degraded: AtomicBool,
    /// Unix milliseconds of the last successful run; 0 for never.
    last_success_ms: AtomicU64,
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len()],
    duration_sum_us: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Why a service is degraded (it stopped, or it said so); `None` when healthy.
    degraded_reason: Mutex<Option<String>>,
    pub(crate) nudge: Notify,
}

impl UnitStatus {
    pub(crate) fn new(name: Arc<str>, tenant: Option<TenantId>, schedule: Schedule) -> Self {
        UnitStatus {
            name,
            tenant,
            schedule,
            runs: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            last_success_ms: AtomicU64::new(0),
            duration_buckets: Default::default(),
            duration_sum_us: AtomicU64::new(0),
            last_error: Mutex::new(None),
            degraded_reason: Mutex::new(None),
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

    pub(crate) fn record_restart(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }

    /// Degraded with a reason (`Some`) or healthy (`None`); returns whether it was degraded.
    pub(crate) fn set_degraded_reason(&self, reason: Option<String>) -> bool {
        let degraded = reason.is_some();
        *self
            .degraded_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = reason;
        self.set_degraded(degraded)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tenant's `owner/name`, `None` for a global unit.
    pub fn group(&self) -> Option<&str> {
        self.tenant.as_ref().map(TenantId::as_str)
    }

    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// Times a service was started again after it stopped.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Relaxed)
    }

    /// Why a service is degraded, as it said or as the scheduler saw it stop.
    pub fn degraded_reason(&self) -> Option<String> {
        self.degraded_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

/// A service's handle on its own state: it says when it cannot do its job (the socket keeps
/// dropping, the remote refuses) and when it can again. The board shows the reason (`/readyz`,
/// `/metrics`, the dashboard). Preflights and workers get a detached handle that does nothing.
#[derive(Debug, Clone, Default)]
pub struct Health(Option<Arc<UnitStatus>>);

impl Health {
    pub(crate) fn of(unit: Arc<UnitStatus>) -> Self {
        Health(Some(unit))
    }

    /// A handle tied to no unit.
    pub fn detached() -> Self {
        Health(None)
    }

    /// Marks the service degraded, with a reason safe to show. Logged when it was healthy.
    pub fn degraded(&self, reason: impl Into<String>) {
        if let Some(unit) = &self.0 {
            let reason = reason.into();
            if !unit.set_degraded_reason(Some(reason.clone())) {
                tracing::warn!(unit = %unit.name, %reason, "service degraded");
            }
        }
    }

    /// Marks the service healthy again. Logged when it was degraded.
    pub fn healthy(&self) {
        if let Some(unit) = &self.0
            && unit.set_degraded_reason(None)
        {
            tracing::info!(unit = %unit.name, "service healthy again");
        }
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
    /// Every tenant's start-up state. Written only when a tenant changes state (rare), never on
    /// the run path.
    tenants: Mutex<BTreeMap<TenantId, TenantState>>,
}

/// Where a tenant stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantState {
    /// Its preflights have not all passed yet (and none has failed for good).
    Starting,
    /// Its preflights passed; its workers and services run.
    Running,
    /// A preflight of its failed: its later preflights, workers and services wait while that
    /// preflight is retried with backoff. Every other tenant runs.
    Degraded(DegradedTenant),
}

/// Why a tenant is degraded, for `/readyz`, `/metrics` and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DegradedTenant {
    pub tenant: TenantId,
    /// The preflight that failed.
    pub unit: String,
    pub kind: ErrorKind,
    /// The error, safe to show (units never put secrets in messages).
    pub reason: String,
    /// The last failure matched no retry rule (not found, bad credentials, ...): it will not go
    /// away by itself, though it is still retried (a repository may be renamed back, a token
    /// granted access). When every tenant is degraded for good, `run` gives up.
    pub permanent: bool,
    /// Failed cycles of that preflight in a row (each cycle may hold several attempts).
    pub failures: u32,
    /// When the tenant became degraded.
    pub since: SystemTime,
}

impl StatusBoard {
    pub(crate) fn new(units: Vec<Arc<UnitStatus>>) -> Self {
        let mut by_name = HashMap::with_capacity(units.len());
        let mut by_group: HashMap<String, Vec<usize>> = HashMap::new();
        let mut tenants = BTreeMap::new();
        for (i, unit) in units.iter().enumerate() {
            by_name.insert(unit.name.clone(), i);
            if let Some(tenant) = &unit.tenant {
                by_group
                    .entry(tenant.as_str().to_owned())
                    .or_default()
                    .push(i);
                tenants.insert(tenant.clone(), TenantState::Starting);
            }
        }
        StatusBoard {
            inner: Arc::new(BoardInner {
                units,
                by_name,
                by_group,
                preflights_passed: AtomicBool::new(false),
                tenants: Mutex::new(tenants),
            }),
        }
    }

    fn tenant_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<TenantId, TenantState>> {
        self.inner.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every tenant and its state, in tenant order.
    pub fn tenants(&self) -> Vec<(TenantId, TenantState)> {
        self.tenant_map()
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect()
    }

    pub fn tenant_state(&self, tenant: &str) -> Option<TenantState> {
        self.tenant_map().get(tenant).cloned()
    }

    /// The degraded tenants and why, in tenant order.
    pub fn degraded_tenants(&self) -> Vec<DegradedTenant> {
        self.tenant_map()
            .values()
            .filter_map(|s| match s {
                TenantState::Degraded(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn set_tenant_state(&self, tenant: &TenantId, state: TenantState) {
        self.tenant_map().insert(tenant.clone(), state);
    }

    /// True when there are tenants and every one of them is degraded for good: nothing is left
    /// that could start by itself.
    /// Every tenant is degraded, whatever the kind of its failure: at the end of start-up, no
    /// tenant could start even after its preflight's retries.
    pub(crate) fn every_tenant_degraded(&self) -> bool {
        let tenants = self.tenant_map();
        !tenants.is_empty()
            && tenants
                .values()
                .all(|s| matches!(s, TenantState::Degraded(_)))
    }

    pub fn units(&self) -> &[Arc<UnitStatus>] {
        &self.inner.units
    }

    pub fn unit(&self, name: &str) -> Option<&Arc<UnitStatus>> {
        self.inner.by_name.get(name).map(|&i| &self.inner.units[i])
    }

    /// The units of one tenant (`owner/name`), in plan order.
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

    /// Wakes every unit of a tenant early (a degraded tenant's failing preflight is retried at
    /// once); returns how many were nudged.
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
        let services: Vec<&Arc<UnitStatus>> = units
            .iter()
            .filter(|u| u.phase() == Phase::Service)
            .collect();
        if !services.is_empty() {
            let mut family = encoder.encode_descriptor(
                "productbuilder_service_restarts",
                "Times a service was started again after it stopped.",
                None,
                MetricType::Counter,
            )?;
            for u in services {
                ConstCounter::new(u.restarts())
                    .encode(family.encode_family(&[("unit", u.name())])?)?;
            }
        }
        let tenants = self.tenants();
        let mut family = encoder.encode_descriptor(
            "productbuilder_tenant_degraded",
            "1 while a preflight of the tenant fails: its workers wait, every other tenant runs.",
            None,
            MetricType::Gauge,
        )?;
        for (tenant, state) in &tenants {
            let degraded = matches!(state, TenantState::Degraded(_));
            ConstGauge::new(u64::from(degraded))
                .encode(family.encode_family(&[("tenant", tenant.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "productbuilder_tenant_degraded_info",
            "Why a tenant is degraded: the failing preflight, its error kind, and whether it is permanent (the message is in /readyz).",
            None,
            MetricType::Gauge,
        )?;
        for (_, state) in &tenants {
            if let TenantState::Degraded(d) = state {
                let permanent = if d.permanent { "true" } else { "false" };
                ConstGauge::new(1u64).encode(family.encode_family(&[
                    ("tenant", d.tenant.as_str()),
                    ("unit", d.unit.as_str()),
                    ("kind", d.kind.as_str()),
                    ("permanent", permanent),
                ])?)?;
            }
        }
        ConstGauge::new(u64::from(self.preflights_passed())).encode(encoder.encode_descriptor(
            "productbuilder_preflights_passed",
            "1 once the global preflights passed and every tenant's passed or left it degraded.",
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
