//! On-demand jobs keyed by a string (a preview per pull request, a build per issue, an agent run
//! per thread), run on the tokio runtime with the rules every such job needs, so that no module
//! grows its own task map again.
//!
//! - **Per key, one job at a time**, in submission order. The [`Policy`] of the newer job says what
//!   happens to the older ones:
//!   - [`Policy::Replace`]: every earlier job for the key (running or waiting) is cancelled, and
//!     the new job starts only once they have all *returned*, so it never overlaps the one it
//!     replaced (a deploy of a newer head never races the teardown of the older one).
//!   - [`Policy::Queue`]: the job runs after the earlier ones. Queued jobs do **not** coalesce:
//!     every queued job runs, in order. A caller that wants "only the latest pending one" submits
//!     with `Replace`, or checks [`Jobs::is_busy`] first.
//! - **Global and per-group limits**: at most `global_limit` jobs run at once, and at most the
//!   group's limit within a group (a caller-chosen string such as `"builds"`). A job waiting for
//!   a slot is not running: its deadline has not started and cancelling it means it never runs.
//! - **For every job**: a name (the tracing span and the logs), a [`CancellationToken`] (a child of
//!   the root given to [`Jobs::builder`], so cancelling the root or [`Jobs::shutdown`] cancels them
//!   all), an optional deadline measured from the job's start (on expiry the token is cancelled
//!   and the job recorded as timed out; one that still has not returned after the grace period is
//!   dropped), and panic containment: a panic fails that job only, is logged and counted, and
//!   frees its key for the next job.
//! - Cancellation is cooperative: a job observes its token and returns. Nothing is aborted except
//!   a job past its deadline and its grace period.
//! - [`Jobs::idle`] for tests, [`Jobs::metrics`] for `/metrics` ([`Metrics::collector`]).

mod metrics;

pub use metrics::{Metrics, MetricsCollector};

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// What a newer job does to the earlier jobs of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Cancel every earlier job of the key and start once they have returned.
    Replace,
    /// Run after the earlier jobs of the key, each of which still runs.
    Queue,
}

/// How a job ended.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    /// The job returned `Ok` without being cancelled.
    Succeeded,
    /// The job returned an error (logged with the job's name and key).
    Failed,
    /// The job panicked (logged with the panic message).
    Panicked,
    /// The job was cancelled (replaced, by its handle, or at shutdown), before or after it started.
    Cancelled,
    /// The job ran past its deadline.
    TimedOut,
}

impl Outcome {
    /// The label value used in metrics and logs (`timed_out`, ...).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What to run: the key, the name, the policy, and optionally a group and a deadline.
#[derive(Clone)]
pub struct JobSpec {
    key: String,
    name: String,
    policy: Policy,
    group: Option<String>,
    deadline: Option<Duration>,
    tag: Option<Tag>,
}

/// What a caller attached to a job to read it back typed ([`Jobs::latest_tag`]), instead of
/// parsing its name.
type Tag = Arc<dyn std::any::Any + Send + Sync>;

impl JobSpec {
    /// A job for `key`, named `name` in logs and spans (e.g. `deploy abc1234`).
    pub fn new(key: impl Into<String>, name: impl Into<String>, policy: Policy) -> Self {
        JobSpec {
            key: key.into(),
            name: name.into(),
            policy,
            group: None,
            deadline: None,
            tag: None,
        }
    }

    /// Attaches a typed value to the job (what kind of job it is, for the caller's decisions),
    /// read back with [`Jobs::latest_tag`].
    pub fn tag<T: Send + Sync + 'static>(mut self, tag: T) -> Self {
        self.tag = Some(Arc::new(tag));
        self
    }

    /// Counts the job against `group`'s limit (a group with no limit configured has none).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Cancels the job, and records it as timed out, once it has run for `deadline`.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSpec")
            .field("key", &self.key)
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("group", &self.group)
            .field("deadline", &self.deadline)
            .field("tagged", &self.tag.is_some())
            .finish()
    }
}

/// Configures [`Jobs`].
#[derive(Debug)]
pub struct Builder {
    root: CancellationToken,
    global: Option<usize>,
    groups: HashMap<String, usize>,
    grace: Duration,
}

impl Builder {
    /// At most `limit` jobs run at once (at least 1). Unlimited by default.
    pub fn global_limit(mut self, limit: usize) -> Self {
        self.global = Some(limit.max(1));
        self
    }

    /// At most `limit` jobs of `group` run at once (at least 1).
    pub fn group_limit(mut self, group: impl Into<String>, limit: usize) -> Self {
        self.groups.insert(group.into(), limit.max(1));
        self
    }

    /// How long a job past its deadline may take to return after its token is cancelled before it
    /// is dropped (10 s by default).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn build(self) -> Jobs {
        Jobs {
            inner: Arc::new(Inner {
                root: self.root.child_token(),
                grace: self.grace,
                global: self.global.map(|n| Arc::new(Semaphore::new(n))),
                groups: self
                    .groups
                    .into_iter()
                    .map(|(group, n)| (group, Arc::new(Semaphore::new(n))))
                    .collect(),
                keys: Mutex::default(),
                live: watch::channel(0).0,
                next_id: AtomicU64::new(0),
                counters: Counters::default(),
            }),
        }
    }
}

/// The jobs of one runtime. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    /// A child of the caller's root: [`Jobs::shutdown`] cancels it, not the caller's root.
    root: CancellationToken,
    grace: Duration,
    global: Option<Arc<Semaphore>>,
    groups: HashMap<String, Arc<Semaphore>>,
    /// Per key, the jobs submitted and not yet ended, oldest first.
    keys: Mutex<HashMap<String, Vec<Live>>>,
    /// How many jobs are submitted and not yet ended: what [`Jobs::idle`] awaits.
    live: watch::Sender<usize>,
    next_id: AtomicU64,
    counters: Counters,
}

struct Live {
    id: u64,
    name: String,
    tag: Option<Tag>,
    cancel: CancellationToken,
    started: bool,
    done: watch::Receiver<Option<Outcome>>,
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
    running: AtomicU64,
}

/// A submitted job: cancel it, or await how it ended.
#[derive(Debug, Clone)]
pub struct JobHandle {
    cancel: CancellationToken,
    done: watch::Receiver<Option<Outcome>>,
}

impl JobHandle {
    /// Cancels the job (it never starts if it has not yet).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the job to end.
    pub async fn outcome(mut self) -> Outcome {
        match self.done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.unwrap_or(Outcome::Cancelled),
            // Unreachable: the runner always stores an outcome before dropping its sender.
            Err(_) => Outcome::Cancelled,
        }
    }
}

impl Jobs {
    /// Jobs whose tokens are children of `root`: cancelling `root` cancels every job.
    pub fn builder(root: &CancellationToken) -> Builder {
        Builder {
            root: root.clone(),
            global: None,
            groups: HashMap::new(),
            grace: Duration::from_secs(10),
        }
    }

    /// Submits `work` under `spec`. `work` receives the job's token; it should return soon after
    /// the token is cancelled. An error it returns is logged (with the job's name and key) and
    /// counted as failed. Must be called within a tokio runtime.
    pub fn submit<F, Fut, E>(&self, spec: JobSpec, work: F) -> JobHandle
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = self.inner.root.child_token();
        let (done_tx, done_rx) = watch::channel(None);
        let predecessor = {
            let mut keys = self.inner.keys();
            let jobs = keys.entry(spec.key.clone()).or_default();
            if spec.policy == Policy::Replace {
                for earlier in jobs.iter() {
                    earlier.cancel.cancel();
                }
            }
            let predecessor = jobs.last().map(|j| j.done.clone());
            jobs.push(Live {
                id,
                name: spec.name.clone(),
                tag: spec.tag.clone(),
                cancel: cancel.clone(),
                started: false,
                done: done_rx.clone(),
            });
            self.inner.live.send_modify(|n| *n += 1);
            predecessor
        };
        let finish = Finish {
            inner: self.inner.clone(),
            key: spec.key.clone(),
            id,
            started: false,
            outcome: Outcome::Cancelled,
            done: done_tx,
        };
        tokio::spawn(run(spec, cancel.clone(), predecessor, finish, work));
        JobHandle {
            cancel,
            done: done_rx,
        }
    }

    /// The name of the job running now for `key` (not one waiting).
    pub fn running(&self, key: &str) -> Option<String> {
        self.inner
            .keys()
            .get(key)
            .and_then(|jobs| jobs.iter().find(|j| j.started))
            .map(|j| j.name.clone())
    }

    /// The name of the newest job submitted for `key` that has not ended (running or waiting):
    /// the one that will have the last word.
    pub fn latest(&self, key: &str) -> Option<String> {
        self.inner
            .keys()
            .get(key)
            .and_then(|jobs| jobs.last())
            .map(|j| j.name.clone())
    }

    /// The tag of the newest job submitted for `key` that has not ended (see [`Jobs::latest`]),
    /// when it was tagged with a `T`.
    pub fn latest_tag<T: Clone + 'static>(&self, key: &str) -> Option<T> {
        self.inner
            .keys()
            .get(key)
            .and_then(|jobs| jobs.last())
            .and_then(|j| j.tag.as_ref())
            .and_then(|tag| tag.downcast_ref::<T>())
            .cloned()
    }

    /// Whether a job for `key` is running or waiting.
    pub fn is_busy(&self, key: &str) -> bool {
        self.inner.keys().contains_key(key)
    }

    /// Whether no job is running or waiting now.
    pub fn is_idle(&self) -> bool {
        *self.inner.live.borrow() == 0
    }

    /// Resolves once no job is running or waiting.
    pub async fn idle(&self) {
        let mut live = self.inner.live.subscribe();
        // The sender lives in `inner`, which `self` keeps alive: this cannot fail.
        let _ = live.wait_for(|n| *n == 0).await;
    }

    /// Cancels every job, waiting or running, and waits for them to end. Jobs submitted later are
    /// cancelled before they start.
    pub async fn shutdown(&self) {
        self.inner.root.cancel();
        self.idle().await;
    }

    pub fn metrics(&self) -> Metrics {
        let c = &self.inner.counters;
        let running = c.running.load(Ordering::Relaxed);
        let live = *self.inner.live.borrow() as u64;
        Metrics {
            started: c.started.load(Ordering::Relaxed),
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            panicked: c.panicked.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            running,
            waiting: live.saturating_sub(running),
        }
    }
}

impl Inner {
    fn keys(&self) -> MutexGuard<'_, HashMap<String, Vec<Live>>> {
        // Nothing panics while holding the lock; recover rather than poison every later call.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot in the job's group, then a global one: in that order, so that a job waiting for its
    /// group never holds a global slot another group could use.
    async fn slots(
        &self,
        group: Option<&str>,
    ) -> (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>) {
        let group = match group.and_then(|g| self.groups.get(g)) {
            // The semaphores are never closed, so acquiring cannot fail.
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        let global = match &self.global {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        (group, global)
    }
}

/// Ends a job however its task ends (returned, panicked past the catch, or dropped with the
/// runtime): counts the outcome, frees the key, then wakes the next job and [`Jobs::idle`].
struct Finish {
    inner: Arc<Inner>,
    key: String,
    id: u64,
    started: bool,
    outcome: Outcome,
    done: watch::Sender<Option<Outcome>>,
}

impl Finish {
    fn start(&mut self) {
        self.started = true;
        let c = &self.inner.counters;
        c.started.fetch_add(1, Ordering::Relaxed);
        c.running.fetch_add(1, Ordering::Relaxed);
        if let Some(job) = self
            .inner
            .keys()
            .get_mut(&self.key)
            .and_then(|jobs| jobs.iter_mut().find(|j| j.id == self.id))
        {
            job.started = true;
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let c = &self.inner.counters;
        if self.started {
            c.running.fetch_sub(1, Ordering::Relaxed);
        }
        let counter = match self.outcome {
            Outcome::Succeeded => &c.succeeded,
            Outcome::Failed => &c.failed,
            Outcome::Panicked => &c.panicked,
            Outcome::Cancelled => &c.cancelled,
            Outcome::TimedOut => &c.timed_out,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        {
            let mut keys = self.inner.keys();
            if let Some(jobs) = keys.get_mut(&self.key) {
                jobs.retain(|j| j.id != self.id);
                if jobs.is_empty() {
                    keys.remove(&self.key);
                }
            }
        }
        // `send_replace` stores the outcome even when no handle is listening.
        self.done.send_replace(Some(self.outcome));
        self.inner.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn run<F, Fut, E>(
    spec: JobSpec,
    cancel: CancellationToken,
    predecessor: Option<watch::Receiver<Option<Outcome>>>,
    mut finish: Finish,
    work: F,
) where
    F: FnOnce(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let span = tracing::info_span!("job", job = %spec.name, key = %spec.key);
    // Not cancellable: even a cancelled job ends only after the one before it, so a job that
    // replaces a chain of cancelled ones still starts after the one that was running.
    if let Some(mut predecessor) = predecessor {
        let _ = predecessor.wait_for(Option::is_some).await;
    }
    let slots = tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        slots = finish.inner.slots(spec.group.as_deref()) => Some(slots),
    };
    let Some(_slots) = slots else {
        span.in_scope(|| tracing::debug!("job cancelled before it started"));
        return; // `finish` records it as cancelled
    };
    if cancel.is_cancelled() {
        span.in_scope(|| tracing::debug!("job cancelled before it started"));
        return;
    }
    finish.start();
    finish.outcome = execute(&spec, &cancel, finish.inner.grace, work)
        .instrument(span)
        .await;
}

async fn execute<F, Fut, E>(
    spec: &JobSpec,
    cancel: &CancellationToken,
    grace: Duration,
    work: F,
) -> Outcome
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display + Send + 'static,
{
    tracing::debug!("job started");
    let token = cancel.clone();
    // `work` is called inside the future so that a panic building it is caught too.
    let job = AssertUnwindSafe(async move { work(token).await }).catch_unwind();
    tokio::pin!(job);
    let mut timed_out = false;
    let ended = match spec.deadline {
        None => Some(job.as_mut().await),
        Some(deadline) => tokio::select! {
            ended = job.as_mut() => Some(ended),
            () = tokio::time::sleep(deadline) => {
                timed_out = true;
                tracing::warn!(deadline = ?deadline, "job ran past its deadline; cancelling it");
                cancel.cancel();
                tokio::select! {
                    ended = job.as_mut() => Some(ended),
                    () = tokio::time::sleep(grace) => None,
                }
            }
        },
    };
    let outcome = match ended {
        None => {
            tracing::warn!(grace = ?grace, "job did not return within the grace period after its deadline; dropped");
            Outcome::TimedOut
        }
        Some(Err(panic)) => {
            tracing::error!(
                panic = panic_message(&*panic),
                "job panicked; its key is free again"
            );
            Outcome::Panicked
        }
        Some(Ok(_)) if timed_out => Outcome::TimedOut,
        Some(Ok(_)) if cancel.is_cancelled() => Outcome::Cancelled,
        Some(Ok(Ok(()))) => Outcome::Succeeded,
        Some(Ok(Err(e))) => {
            tracing::warn!(error = %e, "job failed");
            Outcome::Failed
        }
    };
    tracing::debug!(outcome = outcome.as_str(), "job ended");
    outcome
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(not a string)"
    }
}
