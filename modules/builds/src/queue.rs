//! The durable build queue over the daemon's SQLite file.
//!
//! Every operation is one `BEGIN IMMEDIATE` transaction: the write lock is taken before the
//! first read, so two daemons (or two claimers) on one file never both see room for a build and
//! both take it. The clock is an argument (`now`) everywhere, so that leases, backoff and
//! recovery are tested without sleeping.
//!
//! A runner's life: [`Queue::claim`] (a lease owned by `owner` until `now + lease`), then, before
//! each step, [`Queue::record_step`], and every so often [`Queue::heartbeat`] (which extends the
//! lease and says whether a cancel was requested), and at the end [`Queue::finish`] or, for a
//! transient failure, [`Queue::retry_later`]. A runner that loses its lease (recovery took the
//! build) gets [`QueueError::LeaseLost`] and must stop. Recovery is in [`crate::recovery`].

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use productbuilder_store::rusqlite::{
    self, Connection, OptionalExtension, Transaction, TransactionBehavior, params,
};
use productbuilder_store::{Store, StoreError};

use crate::records::{self, AuditEntry, Build, BuildId, millis};
use crate::spec::{BuildResult, BuildSpec, SpecError};
use crate::status::{Status, Step, TransitionError};

/// How the queue behaves; `Default` is issue 11's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Builds running at once on this host (`[builds] max_concurrent`, default 1).
    pub max_concurrent: u32,
    /// How long a claim or heartbeat holds a build; a runner heartbeats well within it.
    pub lease: Duration,
    /// Claims a build may have before a transient failure fails it for good.
    pub max_attempts: u32,
    /// The first retry's delay, doubled for each further attempt, up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Times a build interrupted in a resumable step is resumed before it is failed.
    pub max_resumes: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_concurrent: 1,
            lease: Duration::from_secs(60),
            max_attempts: 3,
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(30 * 60),
            max_resumes: 3,
        }
    }
}

/// The delay before the retry that follows `attempts` claims: `base · 2^(attempts-1)`, capped.
/// No jitter: one host claims from its own file, so there is no herd to spread.
pub fn backoff(config: &QueueConfig, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    config
        .backoff_base
        .saturating_mul(1 << doublings)
        .min(config.backoff_cap)
}

pub(crate) fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// What went wrong with a queue operation.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("build queue: {0}")]
    Store(#[from] StoreError),
    #[error("build spec refused: {0}")]
    Spec(#[from] SpecError),
    #[error("build {0} does not exist")]
    NotFound(BuildId),
    #[error(
        "build {id}: {owner} no longer holds its lease (it finished, or recovery took it after the lease ran out); stop working on it"
    )]
    LeaseLost { id: BuildId, owner: String },
    #[error("build {id}: {source}")]
    Transition {
        id: BuildId,
        source: TransitionError,
    },
}

impl QueueError {
    /// A locked database: worth trying again.
    pub fn is_busy(&self) -> bool {
        matches!(self, QueueError::Store(e) if e.is_busy())
    }
}

/// The result of [`Queue::enqueue`].
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueued {
    pub build: Build,
    /// `false`: the issue or pull request already had an active build, returned instead.
    pub created: bool,
}

/// A build a runner now owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub build: Build,
    /// Where to go on from: the step it was in when its daemon died, if that step is resumable.
    pub resume_from: Option<Step>,
}

/// The result of [`Queue::heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub lease_until: DateTime<Utc>,
    /// Someone asked to cancel: stop, and finish as [`Finish::Cancelled`].
    pub cancel_requested: bool,
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Completed(BuildResult),
    Failed { result: BuildResult, reason: String },
    Cancelled(BuildResult),
}

/// The result of [`Queue::retry_later`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Back to pending, claimable from `at`.
    Scheduled { at: DateTime<Utc> },
    /// Its attempts are spent: failed.
    GaveUp,
}

/// The result of [`Queue::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// It was pending: cancelled at once.
    Cancelled,
    /// It is running: its runner sees the request at its next heartbeat.
    Requested,
    /// It had already ended.
    AlreadyFinal(Status),
}

/// The queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    pub(crate) store: Store,
    pub(crate) config: QueueConfig,
}

/// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer, committing when it returns a
/// value and rolling back on a domain error.
pub(crate) async fn immediate<T, F>(store: &Store, f: F) -> Result<T, QueueError>
where
    T: Send + 'static,
    F: FnOnce(&Transaction<'_>) -> rusqlite::Result<Result<T, QueueError>> + Send + 'static,
{
    store
        .write(move |c: &mut Connection| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            if out.is_ok() {
                tx.commit()?;
            }
            Ok(out)
        })
        .await?
}

/// The build `id` if `owner` holds it running.
fn held(
    tx: &Transaction<'_>,
    id: BuildId,
    owner: &str,
) -> rusqlite::Result<Result<Build, QueueError>> {
    Ok(match records::get(tx, id)? {
        None => Err(QueueError::NotFound(id)),
        Some(b) if b.status == Status::Running && b.lease_owner.as_deref() == Some(owner) => Ok(b),
        Some(_) => Err(QueueError::LeaseLost {
            id,
            owner: owner.to_owned(),
        }),
    })
}

fn transition(
    tx: &Transaction<'_>,
    id: BuildId,
    from: Status,
    to: Status,
    now: DateTime<Utc>,
    reason: &str,
) -> rusqlite::Result<Result<(), QueueError>> {
    Ok(records::set_status(tx, id, from, to, now, reason)?
        .map_err(|source| QueueError::Transition { id, source }))
}

/// Reads the row back after a change, inside the transaction.
fn reread(tx: &Transaction<'_>, id: BuildId) -> rusqlite::Result<Result<Build, QueueError>> {
    Ok(records::get(tx, id)?.ok_or(QueueError::NotFound(id)))
}

macro_rules! tri {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        }
    };
}
pub(crate) use tri;

impl Queue {
    /// A queue over `store`, whose migrations have been applied.
    pub fn new(store: Store, config: QueueConfig) -> Queue {
        Queue { store, config }
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Adds a build for `repo` (`owner/name`) and its issue or pull request `number` (when not
    /// given, the spec's `issue`); while that one has a pending or running build, returns it
    /// instead. A build with neither is never deduplicated.
    pub async fn enqueue(
        &self,
        repo: &str,
        number: Option<u64>,
        spec: BuildSpec,
        now: DateTime<Utc>,
    ) -> Result<Enqueued, QueueError> {
        spec.validate()?;
        let number = number.or(spec.issue);
        let repo = repo.to_owned();
        let spec_json = serde_json::to_string(&spec).expect("a BuildSpec always serialises");
        immediate(&self.store, move |tx| {
            if let Some(number) = number
                && let Some(build) = records::active(tx, &repo, number)?
            {
                return Ok(Ok(Enqueued {
                    build,
                    created: false,
                }));
            }
            tx.execute(
                "INSERT INTO builds (repo, number, spec, status, next_attempt_at, created_at, \
                 updated_at) VALUES (?1, ?2, ?3, 'pending', ?4, ?4, ?4)",
                params![repo, number.map(|n| n as i64), spec_json, millis(now)],
            )?;
            let id = BuildId(tx.last_insert_rowid());
            records::record(tx, id, None, Status::Pending, now, "enqueued")?;
            let build = tri!(reread(tx, id));
            Ok(Ok(Enqueued {
                build,
                created: true,
            }))
        })
        .await
    }

    /// Takes the oldest claimable build for `owner`, if fewer than `max_concurrent` run on
    /// this host; `None` when there is no room or nothing is due.
    pub async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Claim>, QueueError> {
        let owner = owner.to_owned();
        let config = self.config.clone();
        immediate(&self.store, move |tx| {
            // Running builds count until they finish or recovery takes them, expired lease or
            // not: a runner that is only slow must not find a second build started beside it.
            let running: u32 = tx.query_row(
                "SELECT count(*) FROM builds WHERE status = 'running'",
                [],
                |r| r.get(0),
            )?;
            if running >= config.max_concurrent {
                return Ok(Ok(None));
            }
            let next: Option<i64> = tx
                .query_row(
                    "SELECT id FROM builds WHERE status = 'pending' AND next_attempt_at <= ?1 \
                     ORDER BY next_attempt_at, id LIMIT 1",
                    [millis(now)],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = next.map(BuildId) else {
                return Ok(Ok(None));
            };
            tri!(transition(
                tx,
                id,
                Status::Pending,
                Status::Running,
                now,
                &format!("claimed by {owner}")
            ));
            tx.execute(
                "UPDATE builds SET lease_owner = ?2, lease_until = ?3, attempts = attempts + 1 \
                 WHERE id = ?1",
                params![id.0, owner, millis(now + delta(config.lease))],
            )?;
            let build = tri!(reread(tx, id));
            let resume_from = build.step.filter(|s| s.resumable());
            Ok(Ok(Some(Claim { build, resume_from })))
        })
        .await
    }

    /// Extends `owner`'s lease on `id` to `now + lease`, and says whether a cancel was asked.
    /// A lease past its end is still extended while recovery has not taken the build: a runner
    /// that was only slow keeps its build; once recovery ran, it gets [`QueueError::LeaseLost`].
    pub async fn heartbeat(
        &self,
        id: BuildId,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<Heartbeat, QueueError> {
        let owner = owner.to_owned();
        let lease_until = now + delta(self.config.lease);
        immediate(&self.store, move |tx| {
            let build = tri!(held(tx, id, &owner));
            tx.execute(
                "UPDATE builds SET lease_until = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.0, millis(lease_until), millis(now)],
            )?;
            Ok(Ok(Heartbeat {
                lease_until,
                cancel_requested: build.cancel_requested,
            }))
        })
        .await
    }

    /// Records that `owner` is about to start `step` of `id` (written before the step runs, so
    /// that a restart knows where the build was).
    pub async fn record_step(
        &self,
        id: BuildId,
        owner: &str,
        step: Step,
        now: DateTime<Utc>,
    ) -> Result<(), QueueError> {
        let owner = owner.to_owned();
        immediate(&self.store, move |tx| {
            tri!(held(tx, id, &owner));
            tx.execute(
                "UPDATE builds SET step = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.0, step.as_str(), millis(now)],
            )?;
            Ok(Ok(()))
        })
        .await
    }

    /// Ends `id`, which `owner` holds, with its result.
    pub async fn finish(
        &self,
        id: BuildId,
        owner: &str,
        finish: Finish,
        now: DateTime<Utc>,
    ) -> Result<Build, QueueError> {
        let owner = owner.to_owned();
        let (to, mut result, reason) = match finish {
            Finish::Completed(r) => (Status::Completed, r, "completed".to_owned()),
            Finish::Failed { result, reason } => (Status::Failed, result, reason),
            Finish::Cancelled(r) => (Status::Cancelled, r, "cancel requested".to_owned()),
        };
        result.output = BuildResult::bounded_output(&result.output);
        let error = result
            .error
            .clone()
            .or_else(|| (to == Status::Failed).then(|| reason.clone()));
        let result_json = serde_json::to_string(&result).expect("a BuildResult always serialises");
        immediate(&self.store, move |tx| {
            tri!(held(tx, id, &owner));
            tri!(transition(tx, id, Status::Running, to, now, &reason));
            tx.execute(
                "UPDATE builds SET result = ?2, error = ?3, finished_at = ?4, lease_owner = NULL, \
                 lease_until = NULL WHERE id = ?1",
                params![id.0, result_json, error, millis(now)],
            )?;
            reread(tx, id)
        })
        .await
    }

    /// A transient failure of `id` (network, a locked database): back to pending after the
    /// backoff, from the start, or failed once `max_attempts` claims are spent.
    pub async fn retry_later(
        &self,
        id: BuildId,
        owner: &str,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<Retry, QueueError> {
        let owner = owner.to_owned();
        let error = error.to_owned();
        let config = self.config.clone();
        immediate(&self.store, move |tx| {
            let build = tri!(held(tx, id, &owner));
            if build.attempts >= config.max_attempts {
                let reason = format!(
                    "transient failure, attempts spent ({}): {error}",
                    build.attempts
                );
                tri!(transition(
                    tx,
                    id,
                    Status::Running,
                    Status::Failed,
                    now,
                    &reason
                ));
                tx.execute(
                    "UPDATE builds SET error = ?2, finished_at = ?3, lease_owner = NULL, \
                     lease_until = NULL WHERE id = ?1",
                    params![id.0, reason, millis(now)],
                )?;
                return Ok(Ok(Retry::GaveUp));
            }
            let at = now + delta(backoff(&config, build.attempts));
            let reason = format!("transient failure, retry at {}: {error}", at.to_rfc3339());
            tri!(transition(
                tx,
                id,
                Status::Running,
                Status::Pending,
                now,
                &reason
            ));
            tx.execute(
                "UPDATE builds SET next_attempt_at = ?2, error = ?3, step = NULL, \
                 lease_owner = NULL, lease_until = NULL WHERE id = ?1",
                params![id.0, millis(at), error],
            )?;
            Ok(Ok(Retry::Scheduled { at }))
        })
        .await
    }

    /// Cancels `id`: a pending build at once, a running one by request (its runner stops at
    /// its next heartbeat).
    pub async fn cancel(
        &self,
        id: BuildId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Cancel, QueueError> {
        let reason = reason.to_owned();
        immediate(&self.store, move |tx| {
            let Some(build) = records::get(tx, id)? else {
                return Ok(Err(QueueError::NotFound(id)));
            };
            match build.status {
                Status::Pending => {
                    tri!(transition(
                        tx,
                        id,
                        Status::Pending,
                        Status::Cancelled,
                        now,
                        &reason
                    ));
                    tx.execute(
                        "UPDATE builds SET cancel_requested = 1, finished_at = ?2 WHERE id = ?1",
                        params![id.0, millis(now)],
                    )?;
                    Ok(Ok(Cancel::Cancelled))
                }
                Status::Running => {
                    tx.execute(
                        "UPDATE builds SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1",
                        params![id.0, millis(now)],
                    )?;
                    Ok(Ok(Cancel::Requested))
                }
                status => Ok(Ok(Cancel::AlreadyFinal(status))),
            }
        })
        .await
    }

    /// Records the preview of a completed build's pull request in its result (the loop closes:
    /// the result and the comment carry `preview_url`). The build, or `None` when it is not
    /// completed or already has one.
    pub async fn set_preview_url(
        &self,
        id: BuildId,
        url: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Build>, QueueError> {
        let url = url.to_owned();
        immediate(&self.store, move |tx| {
            let build = tri!(reread(tx, id));
            let Some(mut result) = build.result.clone() else {
                return Ok(Ok(None));
            };
            if build.status != Status::Completed || result.preview_url.is_some() {
                return Ok(Ok(None));
            }
            result.preview_url = Some(url);
            let json = serde_json::to_string(&result).expect("a BuildResult always serialises");
            tx.execute(
                "UPDATE builds SET result = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.0, json, millis(now)],
            )?;
            Ok(Ok(Some(tri!(reread(tx, id)))))
        })
        .await
    }

    pub async fn get(&self, id: BuildId) -> Result<Option<Build>, QueueError> {
        Ok(self.store.read(move |c| records::get(c, id)).await?)
    }

    /// `repo`'s builds, newest first, at most `limit`.
    pub async fn list(&self, repo: &str, limit: u32) -> Result<Vec<Build>, QueueError> {
        let repo = repo.to_owned();
        Ok(self
            .store
            .read(move |c| records::list(c, &repo, limit))
            .await?)
    }

    /// Every transition of `id`, oldest first.
    pub async fn audit(&self, id: BuildId) -> Result<Vec<AuditEntry>, QueueError> {
        Ok(self.store.read(move |c| records::audit(c, id)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let config = QueueConfig::default();
        let secs: Vec<u64> = (1..=8).map(|a| backoff(&config, a).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1800, 1800]);
        assert_eq!(backoff(&config, 0).as_secs(), 30);
        assert_eq!(backoff(&config, u32::MAX), config.backoff_cap);
    }
}
