//! The two phases: preflights by stage, then one long-lived task per worker.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::error::{ErrorKind, UnitError};
use crate::retry::{Verdict, delay_for};
use crate::status::{StatusBoard, UnitStatus};
use crate::unit::{RunCtx, Schedule, UnitSpec};

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
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            preflight_concurrency: 8,
            shutdown_grace: Duration::from_secs(30),
            seed: None,
            tick: Duration::from_millis(10),
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

/// A preflight failed permanently or ran out of retries: start-up stops here.
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

struct Unit {
    spec: UnitSpec,
    status: Arc<UnitStatus>,
}

/// Runs a plan: every preflight (stage by stage), then every worker until cancelled.
///
/// # Guarantees
/// - A unit never overlaps itself: one cycle (a run and its retries) at a time.
/// - Workers start only after every preflight passed; a failed preflight means no worker ever runs.
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
                    spec.group.clone(),
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

    /// The live status of every unit; also how to nudge them.
    pub fn board(&self) -> StatusBoard {
        self.board.clone()
    }

    /// Runs until `cancel` fires (`Ok`) or a preflight fails (`Err`).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), PreflightFailed> {
        let mut rng = match self.options.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let mut stages: BTreeMap<u8, Vec<Unit>> = BTreeMap::new();
        let mut workers = Vec::new();
        for unit in self.units {
            match unit.spec.schedule {
                Schedule::Preflight { stage } => stages.entry(stage).or_default().push(unit),
                Schedule::Worker { interval } => workers.push((unit, interval)),
            }
        }

        for (stage, units) in stages {
            info!(stage, units = units.len(), "running preflights");
            let outcome = run_stage(units, &self.options, &cancel, &mut rng).await;
            match outcome {
                StageEnd::Passed => {}
                StageEnd::Cancelled => {
                    info!("shutdown requested during preflights");
                    return Ok(());
                }
                StageEnd::Failed(failed) => return Err(failed),
            }
        }
        self.board.set_preflights_passed();
        info!(
            workers = workers.len(),
            "preflights passed; starting workers"
        );

        let mut tasks = JoinSet::new();
        let clock = Tick {
            base: Instant::now(),
            tick: self.options.tick,
        };
        for (unit, interval) in workers {
            // Spread first runs over one interval so a thousand units never fire in lockstep.
            let first = Duration::from_millis(rng.u64(0..interval.as_millis().max(1) as u64));
            let unit_rng = fastrand::Rng::with_seed(rng.u64(..));
            tasks.spawn(worker_loop(
                unit,
                interval,
                first,
                clock,
                cancel.clone(),
                unit_rng,
            ));
        }
        cancel.cancelled().await;
        drain(tasks, self.options.shutdown_grace).await;
        Ok(())
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
    Passed,
    Cancelled,
    Failed(PreflightFailed),
}

async fn run_stage(
    units: Vec<Unit>,
    options: &SchedulerOptions,
    cancel: &CancellationToken,
    rng: &mut fastrand::Rng,
) -> StageEnd {
    let permits = Arc::new(Semaphore::new(options.preflight_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for unit in units {
        let permits = permits.clone();
        let cancel = cancel.clone();
        let mut unit_rng = fastrand::Rng::with_seed(rng.u64(..));
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let end = run_cycle(&unit, &cancel, &mut unit_rng).await;
            (unit.spec.name, end)
        });
    }
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => return StageEnd::Passed,
                Some(Ok((_, CycleEnd::Passed))) => {}
                Some(Ok((_, CycleEnd::Cancelled))) => {}
                Some(Ok((unit, CycleEnd::Failed { error, attempts, .. }))) => {
                    error!(unit = %unit, attempts, cause = %error, "preflight failed; workers will not start");
                    tasks.abort_all();
                    return StageEnd::Failed(PreflightFailed { unit, attempts, error });
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

/// Rounds deadlines up to the next tick boundary.
#[derive(Debug, Clone, Copy)]
struct Tick {
    base: Instant,
    tick: Duration,
}

impl Tick {
    fn after(&self, period: Duration) -> Instant {
        let deadline = Instant::now() + period;
        let tick = self.tick.as_nanos();
        if tick == 0 {
            return deadline;
        }
        let since = deadline.duration_since(self.base).as_nanos();
        let rounded = since.div_ceil(tick) * tick;
        self.base + Duration::from_nanos(rounded as u64)
    }
}

async fn worker_loop(
    unit: Unit,
    interval: Duration,
    first: Duration,
    clock: Tick,
    cancel: CancellationToken,
    mut rng: fastrand::Rng,
) {
    if !idle(clock.after(first), &unit.status.nudge, &cancel).await {
        return;
    }
    loop {
        match run_cycle(&unit, &cancel, &mut rng).await {
            CycleEnd::Passed => {
                if unit.status.set_degraded(false) {
                    info!(unit = %unit.spec.name, "unit recovered");
                }
            }
            CycleEnd::Failed {
                error,
                attempts,
                exhausted,
            } => {
                let why = if exhausted {
                    "retries exhausted"
                } else {
                    "permanent failure"
                };
                if unit.status.set_degraded(true) {
                    warn!(unit = %unit.spec.name, attempts, cause = %error, "unit still degraded ({why}); keeps its schedule");
                } else {
                    error!(unit = %unit.spec.name, attempts, cause = %error, "unit degraded ({why}); keeps its schedule");
                }
            }
            CycleEnd::Cancelled => return,
        }
        if cancel.is_cancelled() || !idle(clock.after(interval), &unit.status.nudge, &cancel).await
        {
            return;
        }
    }
}

/// Sleeps until `deadline` unless nudged first. False when cancelled.
async fn idle(deadline: Instant, nudge: &Notify, cancel: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        () = nudge.notified() => true,
        () = tokio::time::sleep_until(deadline) => true,
    }
}

enum CycleEnd {
    Passed,
    Cancelled,
    Failed {
        error: UnitError,
        attempts: u32,
        exhausted: bool,
    },
}

/// One cycle: the first attempt and the retries its rules allow.
async fn run_cycle(unit: &Unit, cancel: &CancellationToken, rng: &mut fastrand::Rng) -> CycleEnd {
    let spec = &unit.spec;
    let status = &unit.status;
    // Retries spent per rule in this cycle: each rule has its own budget.
    let mut spent: Vec<(&'static str, u32)> = Vec::new();
    let mut attempt = 1;
    loop {
        let started = Instant::now();
        let result = run_once(spec, status, attempt, cancel)
            .instrument(info_span!("unit", unit = %spec.name, attempt))
            .await;
        status.record_run(started.elapsed());
        let error = match result {
            Ok(()) => {
                status.record_success();
                return CycleEnd::Passed;
            }
            Err(error) => error,
        };
        status.record_failure(&error.to_string(), error.kind() == ErrorKind::Panicked);
        let rule = match spec.retry.classify(&error) {
            Verdict::Transient(rule) => rule,
            Verdict::Permanent => {
                return CycleEnd::Failed {
                    error,
                    attempts: attempt,
                    exhausted: false,
                };
            }
        };
        let used = match spent.iter_mut().find(|(name, _)| *name == rule.name) {
            Some((_, used)) => used,
            None => {
                spent.push((rule.name, 0));
                &mut spent.last_mut().expect("just pushed").1
            }
        };
        if *used >= rule.attempts {
            return CycleEnd::Failed {
                error,
                attempts: attempt,
                exhausted: true,
            };
        }
        *used += 1;
        let delay = delay_for(rule, &error, *used, rng);
        status.record_retry();
        warn!(
            unit = %spec.name,
            attempt,
            delay = ?delay,
            rule = rule.name,
            cause = %error,
            "transient failure; retrying"
        );
        tokio::select! {
            () = cancel.cancelled() => return CycleEnd::Cancelled,
            () = tokio::time::sleep(delay) => {}
        }
        attempt += 1;
    }
}

/// One attempt, with its timeout; a panic becomes an error of kind `Panicked`.
async fn run_once(
    spec: &UnitSpec,
    status: &UnitStatus,
    attempt: u32,
    cancel: &CancellationToken,
) -> Result<(), UnitError> {
    let ctx = RunCtx {
        unit: status.name.clone(),
        attempt,
        cancel: cancel.clone(),
    };
    let future = match std::panic::catch_unwind(AssertUnwindSafe(|| (spec.work)(ctx))) {
        Ok(future) => future,
        Err(panic) => return Err(panicked(panic)),
    };
    match tokio::time::timeout(spec.timeout, AssertUnwindSafe(future).catch_unwind()).await {
        Err(_) => Err(UnitError::new(
            ErrorKind::Timeout,
            format!("run exceeded its timeout of {:?}", spec.timeout),
        )),
        Ok(Err(panic)) => Err(panicked(panic)),
        Ok(Ok(result)) => result,
    }
}

fn panicked(payload: Box<dyn std::any::Any + Send>) -> UnitError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    UnitError::new(ErrorKind::Panicked, format!("panicked: {message}"))
}
