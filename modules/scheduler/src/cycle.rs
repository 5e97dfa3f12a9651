//! One cycle of a preflight or worker: the first attempt and the retries its rules allow; and one
//! attempt of any unit, with its timeout and panic containment.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span, warn};

use crate::error::{ErrorKind, UnitError};
use crate::retry::{Verdict, delay_for};
use crate::scheduler::Unit;
use crate::status::{Health, UnitStatus};
use crate::unit::{RunCtx, UnitSpec};

pub(crate) enum CycleEnd {
    Passed,
    Cancelled,
    Failed {
        error: UnitError,
        attempts: u32,
        /// Retries ran out (a transient error); false: the error matched no rule (permanent).
        exhausted: bool,
    },
}

/// One cycle: the first attempt and the retries its rules allow.
pub(crate) async fn run_cycle(
    unit: &Unit,
    cancel: &CancellationToken,
    rng: &mut fastrand::Rng,
) -> CycleEnd {
    let spec = &unit.spec;
    let status = &unit.status;
    // Retries spent per rule in this cycle: each rule has its own budget.
    let mut spent: Vec<(&'static str, u32)> = Vec::new();
    let mut attempt = 1;
    loop {
        let started = Instant::now();
        let result = run_once(
            spec,
            status,
            attempt,
            cancel,
            Some(spec.timeout),
            Health::detached(),
        )
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

/// One attempt, cut off after `timeout` (services have none); a panic becomes an error of kind
/// `Panicked`.
pub(crate) async fn run_once(
    spec: &UnitSpec,
    status: &UnitStatus,
    attempt: u32,
    cancel: &CancellationToken,
    timeout: Option<Duration>,
    health: Health,
) -> Result<(), UnitError> {
    let mut ctx = RunCtx::new(status.name.clone(), attempt, cancel.clone());
    ctx.health = health;
    let future = match std::panic::catch_unwind(AssertUnwindSafe(|| (spec.work)(ctx))) {
        Ok(future) => future,
        Err(panic) => return Err(panicked(panic)),
    };
    let guarded = AssertUnwindSafe(future).catch_unwind();
    let outcome = match timeout {
        Some(limit) => match tokio::time::timeout(limit, guarded).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(UnitError::new(
                    ErrorKind::Timeout,
                    format!("run exceeded its timeout of {limit:?}"),
                ));
            }
        },
        None => guarded.await,
    };
    match outcome {
        Err(panic) => Err(panicked(panic)),
        Ok(result) => result,
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

/// Sleeps until `deadline` unless nudged first. False when cancelled.
pub(crate) async fn idle(deadline: Instant, nudge: &Notify, cancel: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        () = nudge.notified() => true,
        () = tokio::time::sleep_until(deadline) => true,
    }
}
