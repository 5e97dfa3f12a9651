//! The phases: preflights by stage, then one long-lived task per worker and per service; a
//! degraded tenant's own recovery in between.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::cycle::{CycleEnd, run_cycle};
use crate::error::UnitError;
use crate::service::service_loop;
use crate::status::{DegradedTenant, StatusBoard, TenantState, UnitStatus};
use crate::tenant::{Recovery, RecoveryCtx, degrade, recover};
use crate::unit::{Schedule, TenantId, UnitSpec};
use crate::worker::{Tick, worker_loop};

/// Knobs of the scheduler itself (not of any unit).
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// How many preflights of one stage run at once.
    pub preflight_concurrency: usize,
    /// How long in-flight runs may finish after shutdown was requested.
    pub shutdown_grace: Duration,
    /// Seeds the jitter; `None` seeds from the OS. Tests set it for repeatable schedules.
    pub seed: Option<u64>,
    /// Worker wake-ups are rounded up to a multiple of this (counted from the scheduler's start),
    /// so that many units share one timer tick and the runtime wakes less often. Zero disables it.
    pub tick: Duration,
    /// How a degraded tenant's failing preflight is retried: doubling, capped, never giving up.
    pub tenant_retry: Backoff,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            preflight_concurrency: 8,
            shutdown_grace: Duration::from_secs(30),
            seed: None,
            tick: Duration::from_millis(10),
            tenant_retry: Backoff {
                base: Duration::from_secs(5),
                max: Duration::from_secs(300),
            },
        }
    }
}

/// Two units with one name: the plan is ambiguous and is refused before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateUnits(pub Vec<String>);

impl fmt::Display for DuplicateUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "duplicate unit names (each unit must be unique; check for a repository configured twice): {}",
            self.0.join(", ")
        )
    }
}

impl std::error::Error for DuplicateUnits {}

/// A global preflight failed permanently or ran out of retries: start-up stops here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightFailed {
    pub unit: String,
    pub attempts: u32,
    pub error: UnitError,
}

impl fmt::Display for PreflightFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tries = if self.attempts == 1 {
            "1 attempt".to_owned()
        } else {
            format!("{} attempts", self.attempts)
        };
        write!(f, "{} failed after {tries}: {}", self.unit, self.error)
    }
}

impl std::error::Error for PreflightFailed {}

/// Why [`Scheduler::run`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupFailed {
    /// A global preflight (no tenant: the database) failed: nothing can run.
    Global(PreflightFailed),
    /// No tenant can start: at start-up every tenant's preflight failed (for good, or after its
    /// retries); later, every tenant is degraded by a failure for good (not found, bad
    /// credentials, ...). While one tenant runs, a transient failure only makes its tenant wait.
    EveryTenant(Vec<DegradedTenant>),
}

impl fmt::Display for StartupFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupFailed::Global(failed) => failed.fmt(f),
            StartupFailed::EveryTenant(tenants) => {
                f.write_str("no tenant can start; the preflight of each failed: ")?;
                for (i, t) in tenants.iter().enumerate() {
                    let sep = if i > 0 { "; " } else { "" };
                    write!(f, "{sep}{}: {}: {}", t.tenant, t.unit, t.reason)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for StartupFailed {}

impl From<PreflightFailed> for StartupFailed {
    fn from(failed: PreflightFailed) -> Self {
        StartupFailed::Global(failed)
    }
}

pub(crate) struct Unit {
    pub spec: UnitSpec,
    pub status: Arc<UnitStatus>,
}

impl Unit {
    fn tenant(&self) -> Option<&TenantId> {
        self.spec.tenant.as_ref()
    }
}

/// Runs a plan: every preflight (stage by stage), then every worker and service until cancelled.
///
/// # Guarantees
/// - A unit never overlaps itself: one cycle (a run and its retries) at a time.
/// - A global preflight (no tenant) that fails stops start-up: no worker ever runs.
/// - A tenant's preflight that fails degrades that tenant alone: its later preflights, workers
///   and services wait while the failing one is retried with [`SchedulerOptions::tenant_retry`];
///   every other tenant starts. `run` gives up when, at the end of start-up, no tenant could start.
/// - One unit's failure, timeout or panic affects no other unit.
/// - After cancellation no new run starts; in-flight runs get [`SchedulerOptions::shutdown_grace`].
pub struct Scheduler {
    units: Vec<Unit>,
    board: StatusBoard,
    options: SchedulerOptions,
}

impl Scheduler {
    pub fn new(specs: Vec<UnitSpec>, options: SchedulerOptions) -> Result<Self, DuplicateUnits> {
        let mut seen = HashSet::with_capacity(specs.len());
        let mut duplicates: Vec<String> = specs
            .iter()
            .filter(|s| !seen.insert(s.name.as_str()))
            .map(|s| s.name.clone())
            .collect();
        if !duplicates.is_empty() {
            duplicates.sort();
            duplicates.dedup();
            return Err(DuplicateUnits(duplicates));
        }
        let units: Vec<Unit> = specs
            .into_iter()
            .map(|spec| {
                let status = Arc::new(UnitStatus::new(
                    Arc::from(spec.name.as_str()),
                    spec.tenant.clone(),
                    spec.schedule,
                ));
                Unit { spec, status }
            })
            .collect();
        let board = StatusBoard::new(units.iter().map(|u| u.status.clone()).collect());
        Ok(Scheduler {
            units,
            board,
            options,
        })
    }

    /// The live status of every unit and tenant; also how to nudge them.
    pub fn board(&self) -> StatusBoard {
        self.board.clone()
    }

    /// Runs until `cancel` fires (`Ok`), a global preflight fails, or every tenant failed for
    /// good (`Err`).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), StartupFailed> {
        let mut rng = match self.options.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        // Our own token: giving up stops every task of ours without cancelling the caller's.
        let stop = cancel.child_token();
        let board = self.board;
        let mut stages: BTreeMap<u8, Vec<Unit>> = BTreeMap::new();
        let mut started = Vec::new();
        for unit in self.units {
            match unit.spec.schedule {
                Schedule::Preflight { stage } => stages.entry(stage).or_default().push(unit),
                Schedule::Worker { .. } | Schedule::Service { .. } => started.push(unit),
            }
        }

        // The preflights of degraded tenants, the failing ones first, then by stage.
        let mut held: BTreeMap<TenantId, Vec<Unit>> = BTreeMap::new();
        for (stage, units) in stages {
            let (now, later): (Vec<Unit>, Vec<Unit>) = units
                .into_iter()
                .partition(|u| !u.tenant().is_some_and(|t| held.contains_key(t)));
            for unit in later {
                let tenant = unit.tenant().expect("held units have a tenant").clone();
                held.entry(tenant).or_default().push(unit);
            }
            info!(stage, units = now.len(), "running preflights");
            match run_stage(now, &self.options, &board, &stop, &mut rng).await {
                StageEnd::Passed { failed, skipped } => {
                    for unit in failed.into_iter().chain(skipped) {
                        let tenant = unit.tenant().expect("only tenants' units are held").clone();
                        held.entry(tenant).or_default().push(unit);
                    }
                }
                StageEnd::Cancelled => {
                    info!("shutdown requested during preflights");
                    return Ok(());
                }
                StageEnd::Failed(failed) => return Err(StartupFailed::Global(failed)),
            }
        }
        for (tenant, state) in board.tenants() {
            if state == TenantState::Starting {
                board.set_tenant_state(&tenant, TenantState::Running);
            }
        }
        // At start-up a transient failure has had its retries (the engine or DNS may be coming up):
        // when still no tenant can start, the host is not ready and the operator is told so. Once
        // one tenant runs, a degraded tenant only waits.
        if board.every_tenant_degraded() {
            return Err(StartupFailed::EveryTenant(board.degraded_tenants()));
        }
        board.set_preflights_passed();

        let clock = Tick {
            base: Instant::now(),
            tick: self.options.tick,
        };
        let mut waiting: BTreeMap<TenantId, Vec<Unit>> = BTreeMap::new();
        let mut tasks = JoinSet::new();
        let mut running = 0;
        for unit in started {
            match unit.tenant().filter(|t| held.contains_key(*t)) {
                Some(tenant) => waiting.entry(tenant.clone()).or_default().push(unit),
                None => {
                    running += 1;
                    tasks.spawn(start(unit, clock, stop.clone(), &mut rng));
                }
            }
        }
        info!(
            units = running,
            degraded_tenants = held.len(),
            "preflights passed; starting workers and services"
        );
        let recovery = RecoveryCtx {
            board: board.clone(),
            backoff: self.options.tenant_retry,
            clock,
            cancel: stop.clone(),
        };
        for (tenant, preflights) in held {
            let started = waiting.remove(&tenant).unwrap_or_default();
            let unit_rng = fastrand::Rng::with_seed(rng.u64(..));
            tasks.spawn(recover(
                Recovery {
                    tenant,
                    preflights,
                    started,
                },
                recovery.clone(),
                unit_rng,
            ));
        }

        // Once one tenant runs, the daemon serves it; degraded tenants wait for their preflight.
        stop.cancelled().await;
        drain(tasks, self.options.shutdown_grace).await;
        Ok(())
    }
}

/// The long-lived task of a worker or a service.
pub(crate) fn start(
    unit: Unit,
    clock: Tick,
    cancel: CancellationToken,
    rng: &mut fastrand::Rng,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let unit_rng = fastrand::Rng::with_seed(rng.u64(..));
    match unit.spec.schedule {
        Schedule::Worker { interval } => {
            Box::pin(worker_loop(unit, interval, clock, cancel, unit_rng))
        }
        Schedule::Service { restart } => Box::pin(service_loop(unit, restart, cancel, unit_rng)),
        Schedule::Preflight { .. } => unreachable!("preflights run in stages"),
    }
}

/// Waits for tasks to end, at most `grace`, then abandons the rest.
async fn drain<T: 'static>(mut tasks: JoinSet<T>, grace: Duration) {
    let in_flight = tasks.len();
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        warn!(
            abandoned = tasks.len(),
            of = in_flight,
            grace = ?grace,
            "runs still in flight after the shutdown grace period; abandoning them"
        );
        tasks.abort_all();
    }
}

enum StageEnd {
    /// Every global preflight passed. `failed`: tenants' preflights that failed (their tenants
    /// are degraded now); `skipped`: preflights not run because their tenant became degraded
    /// while they waited.
    Passed {
        failed: Vec<Unit>,
        skipped: Vec<Unit>,
    },
    Cancelled,
    Failed(PreflightFailed),
}

enum StageUnit {
    Passed,
    Cancelled,
    Skipped(Unit),
    TenantFailed(Unit),
    GlobalFailed(PreflightFailed),
}

async fn run_stage(
    units: Vec<Unit>,
    options: &SchedulerOptions,
    board: &StatusBoard,
    cancel: &CancellationToken,
    rng: &mut fastrand::Rng,
) -> StageEnd {
    let permits = Arc::new(Semaphore::new(options.preflight_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for unit in units {
        let permits = permits.clone();
        let cancel = cancel.clone();
        let board = board.clone();
        let mut unit_rng = fastrand::Rng::with_seed(rng.u64(..));
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            if let Some(tenant) = unit.tenant()
                && let Some(TenantState::Degraded(_)) = board.tenant_state(tenant.as_str())
            {
                return StageUnit::Skipped(unit);
            }
            match run_cycle(&unit, &cancel, &mut unit_rng).await {
                CycleEnd::Passed => StageUnit::Passed,
                CycleEnd::Cancelled => StageUnit::Cancelled,
                CycleEnd::Failed {
                    error,
                    attempts,
                    exhausted,
                } => match unit.tenant().cloned() {
                    // Marked while the permit is held, so that the tenant's queued preflights
                    // see it and wait.
                    Some(tenant) => {
                        degrade(&board, &tenant, &unit, &error, !exhausted, 1);
                        StageUnit::TenantFailed(unit)
                    }
                    None => {
                        error!(unit = %unit.spec.name, attempts, cause = %error, "global preflight failed; workers will not start");
                        StageUnit::GlobalFailed(PreflightFailed {
                            unit: unit.spec.name.clone(),
                            attempts,
                            error,
                        })
                    }
                },
            }
        });
    }
    let (mut failed, mut skipped) = (Vec::new(), Vec::new());
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => return StageEnd::Passed { failed, skipped },
                Some(Ok(StageUnit::Passed | StageUnit::Cancelled)) => {}
                Some(Ok(StageUnit::Skipped(unit))) => skipped.push(unit),
                Some(Ok(StageUnit::TenantFailed(unit))) => failed.push(unit),
                Some(Ok(StageUnit::GlobalFailed(failed))) => {
                    tasks.abort_all();
                    return StageEnd::Failed(failed);
                }
                // Runs catch their own panics, so a join error means the task was aborted.
                Some(Err(_)) => {}
            },
            () = cancel.cancelled() => {
                drain(tasks, options.shutdown_grace).await;
                return StageEnd::Cancelled;
            }
        }
    }
}
