//! What the scheduler runs: named units with a kind, a timeout, retry rules and a work function.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::RestartPolicy;
use crate::error::UnitError;
use crate::retry::RetryPolicy;
use crate::status::Health;

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
#[non_exhaustive]
pub struct RunCtx {
    /// The unit's name, for logs.
    pub unit: Arc<str>,
    /// 1 for the first attempt of a cycle, then 2, 3, ... for its retries (services: 1 for the
    /// first start, then one more per restart).
    pub attempt: u32,
    /// Cancelled at shutdown: a long run should stop at the next safe point.
    pub cancel: CancellationToken,
    /// A service's handle to say it is degraded (and why) or healthy again while it runs. For
    /// preflights and workers it is detached (their cycle's outcome decides their state), so
    /// calling it there does nothing.
    pub health: Health,
}

impl RunCtx {
    /// A context with a detached [`Health`]: for running a unit's work outside the scheduler
    /// (`check --online`, tests).
    pub fn new(unit: impl Into<Arc<str>>, attempt: u32, cancel: CancellationToken) -> Self {
        RunCtx {
            unit: unit.into(),
            attempt,
            cancel,
            health: Health::detached(),
        }
    }
}

/// The tenant a unit belongs to, `owner/name` for the planner's repositories. Opaque to the
/// scheduler: it only compares them. A tenant whose preflight fails is degraded alone (its later
/// preflights, workers and services wait) while the other tenants run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        TenantId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Compares, hashes and orders as its text, so maps keyed by it can be looked up with a `&str`.
impl std::borrow::Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for TenantId {
    fn from(id: &str) -> Self {
        TenantId::new(id)
    }
}

impl From<String> for TenantId {
    fn from(id: String) -> Self {
        TenantId::new(id)
    }
}

/// The phases: preflights, then workers and services; named `preflight`, `worker`, `service`
/// (the first part of a unit's name).
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
    Service,
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
    /// A long-lived task (a socket held open), started with the workers (a tenant's: once its
    /// preflights passed) and running until shutdown. When its run returns or fails it is
    /// started again after the policy's backoff; meanwhile it is degraded. The unit's `timeout`
    /// and `retry` do not apply: a service has no deadline but its cancel token.
    Service { restart: RestartPolicy },
}

impl Schedule {
    pub fn phase(&self) -> Phase {
        match self {
            Schedule::Preflight { .. } => Phase::Preflight,
            Schedule::Worker { .. } => Phase::Worker,
            Schedule::Service { .. } => Phase::Service,
        }
    }
}

/// One schedulable unit.
#[derive(Clone)]
pub struct UnitSpec {
    /// Unique, `{phase}:{resource}:{scope}`.
    pub name: String,
    /// The tenant the unit belongs to (`None`: global, like the database migration). A global
    /// preflight that fails stops start-up; a tenant's degrades that tenant alone. The units of
    /// one tenant are also nudged together ([`StatusBoard::nudge_group`](crate::StatusBoard::nudge_group)).
    pub tenant: Option<TenantId>,
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
            .field("tenant", &self.tenant)
            .field("schedule", &self.schedule)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
