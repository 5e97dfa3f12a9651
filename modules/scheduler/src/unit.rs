//! What the scheduler runs: named units with a kind, a timeout, retry rules and a work function.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::UnitError;
use crate::retry::RetryPolicy;

/// A boxed unit run.
pub type RunFuture = Pin<Box<dyn Future<Output = Result<(), UnitError>> + Send + 'static>>;

/// The work of a unit: called once per attempt, with a fresh [`RunCtx`].
pub type WorkFn = Arc<dyn Fn(RunCtx) -> RunFuture + Send + Sync + 'static>;

/// Wraps an async closure as a [`WorkFn`].
pub fn work<F, Fut>(f: F) -> WorkFn
where
    F: Fn(RunCtx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), UnitError>> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}

/// Everything a run is told. Deliberately not *why* it runs (first run, interval, nudge, retry):
/// work must converge on the whole desired state whatever woke it.
#[derive(Debug, Clone)]
pub struct RunCtx {
    /// The unit's name, for logs.
    pub unit: Arc<str>,
    /// 1 for the first attempt of a cycle, then 2, 3, ... for its retries.
    pub attempt: u32,
    /// Cancelled at shutdown: a long run should stop at the next safe point.
    pub cancel: CancellationToken,
}

/// The two phases; named `preflight` and `worker` (the first part of a unit's name).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Phase {
    Preflight,
    Worker,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// When a unit runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Once before any worker starts. Stages run in ascending order; the units of one stage run
    /// concurrently (bounded). A later stage may rely on what an earlier one did (migrations first).
    Preflight { stage: u8 },
    /// Repeatedly, `interval` after the previous run ended.
    Worker { interval: Duration },
}

impl Schedule {
    pub fn phase(&self) -> Phase {
        match self {
            Schedule::Preflight { .. } => Phase::Preflight,
            Schedule::Worker { .. } => Phase::Worker,
        }
    }
}

/// One schedulable unit.
#[derive(Clone)]
pub struct UnitSpec {
    /// Unique, `{phase}:{resource}:{scope}`.
    pub name: String,
    /// Units of one group are nudged together (the planner uses the tenant's `owner/name`).
    pub group: Option<String>,
    pub schedule: Schedule,
    /// Every attempt is cut off after this long and counts as a [`Timeout`](crate::ErrorKind::Timeout).
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub work: WorkFn,
}

impl fmt::Debug for UnitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitSpec")
            .field("name", &self.name)
            .field("group", &self.group)
            .field("schedule", &self.schedule)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
