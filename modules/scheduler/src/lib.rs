//! A generic two-phase scheduler. It knows units, not repositories.
//!
//! # Brief overview
//! - [`UnitSpec`]: a named piece of work with a [`Schedule`] (a preflight stage, or a worker
//!   interval), a per-attempt timeout, a [`RetryPolicy`] and a [`WorkFn`].
//! - [`Scheduler`]: runs the preflights stage by stage (bounded concurrency), refuses to start
//!   anything if a global one (the database) fails, degrades a tenant alone when one of its own
//!   fails (retried with backoff while the others run), then runs each worker as a fixed delay
//!   after its previous run, with the first runs spread by jitter, and each service (a
//!   long-lived task, [`Schedule::Service`]) restarted with backoff whenever it stops.
//! - [`TenantId`]: which tenant a unit belongs to; [`StatusBoard::degraded_tenants`] says which
//!   tenants wait and why.
//! - [`UnitError`] and [`RetryPolicy`]: a run fails with an error *kind*; an ordered list of rules
//!   turns the kind into "retry after this backoff" or "permanent". A server's wait hint replaces the
//!   computed backoff.
//! - [`StatusBoard`]: counters, degraded flags (units, tenants, services with their reason) and
//!   nudges, readable while the scheduler runs, and rendered as Prometheus text.
//!
//! # Why units are never told why they run
//! A run gets a [`RunCtx`] with its name, attempt number and a cancellation token, and nothing about
//! the cause (first run, interval, nudge). Work must converge on the whole desired state every
//! time; a webhook or a cross-unit trigger only moves the next run earlier through
//! [`StatusBoard::nudge_unit`] or [`StatusBoard::nudge_group`].
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use productbuilder_scheduler::{work, RetryPolicy, Schedule, Scheduler, SchedulerOptions, UnitSpec};
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cancel = CancellationToken::new();
//! let stop = cancel.clone();
//! let unit = UnitSpec {
//!     name: "worker:hello:global".into(),
//!     tenant: None,
//!     schedule: Schedule::Worker { interval: Duration::from_millis(10) },
//!     timeout: Duration::from_secs(1),
//!     retry: RetryPolicy::remote_api(),
//!     work: work(move |_ctx| {
//!         let stop = stop.clone();
//!         async move { stop.cancel(); Ok(()) }
//!     }),
//! };
//! let scheduler = Scheduler::new(vec![unit], SchedulerOptions::default()).unwrap();
//! let board = scheduler.board();
//! scheduler.run(cancel).await.unwrap();
//! assert_eq!(board.unit("worker:hello:global").unwrap().runs(), 1);
//! # }
//! ```

mod backoff;
mod cycle;
mod error;
mod retry;
mod scheduler;
mod service;
mod status;
mod tenant;
mod unit;
mod worker;

pub use backoff::{Backoff, RestartPolicy};
pub use error::{ErrorKind, UnitError};
pub use retry::{RetryPolicy, RetryRule, Verdict, delay_for};
pub use scheduler::{DuplicateUnits, PreflightFailed, Scheduler, SchedulerOptions, StartupFailed};
pub use status::{DURATION_BUCKETS, DegradedTenant, Health, StatusBoard, TenantState, UnitStatus};
pub use unit::{Phase, RunCtx, RunFuture, Schedule, TenantId, UnitSpec, WorkFn, work};
