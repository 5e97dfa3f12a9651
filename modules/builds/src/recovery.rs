//! Recovery: builds whose runner died (its lease ran out) are taken back, at start-up and
//! whenever the module chooses to look again.
//!
//! Each expired build is decided by [`decide`] (pure): a cancel that was requested ends it
//! `cancelled`; a build interrupted before its first step or in a resumable step goes back to
//! `pending` keeping its step, so that the next claim resumes from it (at most `max_resumes`
//! times); a build interrupted in a step that cannot be resumed (the agent) is failed with reason
//! `interrupted` and retried once from the start (back to `pending`), and fails for good with
//! reason `interrupted` the second time.

use chrono::{DateTime, Utc};
use productbuilder_store::rusqlite::params;

use crate::queue::{Queue, QueueConfig, QueueError, immediate, tri};
use crate::records::{self, Build, BuildId, millis};
use crate::status::{Status, Step};

/// What recovery did with one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Back to pending; the next claim resumes from `from` (`None`: from the start, nothing had
    /// begun).
    Resume { from: Option<Step> },
    /// Interrupted in a step that cannot be resumed: back to pending to run again from the
    /// start, once.
    RetryOnce,
    /// Failed with reason `interrupted`.
    Fail,
    /// A cancel had been requested: cancelled.
    Cancel,
}

/// One recovered build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub id: BuildId,
    pub step: Option<Step>,
    pub action: Action,
}

/// What to do with `build`, running with an expired lease.
pub fn decide(config: &QueueConfig, build: &Build) -> Action {
    if build.cancel_requested {
        return Action::Cancel;
    }
    match build.step {
        None => Action::Resume { from: None },
        Some(step) if step.resumable() => {
            if build.interruptions < config.max_resumes {
                Action::Resume { from: Some(step) }
            } else {
                Action::Fail
            }
        }
        Some(_) if build.interruptions == 0 => Action::RetryOnce,
        Some(_) => Action::Fail,
    }
}

impl Queue {
    /// Takes back every running build whose lease ended before `now`; see the module docs.
    pub async fn recover(&self, now: DateTime<Utc>) -> Result<Vec<Recovered>, QueueError> {
        let config = self.config.clone();
        immediate(&self.store, move |tx| {
            let mut done = Vec::new();
            for build in records::expired(tx, now)? {
                let id = build.id;
                let step = build.step;
                let action = decide(&config, &build);
                let at = |s: Option<Step>| {
                    s.map_or("before its first step".to_owned(), |s| {
                        format!("in step {s}")
                    })
                };
                let (to, reason) = match action {
                    Action::Cancel => (
                        Status::Cancelled,
                        "cancel requested; its runner died".to_owned(),
                    ),
                    Action::Resume { from: None } => (
                        Status::Pending,
                        "interrupted before its first step; starts again".to_owned(),
                    ),
                    Action::Resume { from: Some(s) } => (
                        Status::Pending,
                        format!("interrupted in step {s}; resumes from it"),
                    ),
                    Action::RetryOnce => (
                        Status::Pending,
                        format!("interrupted {}; retried once from the start", at(step)),
                    ),
                    Action::Fail => (Status::Failed, "interrupted".to_owned()),
                };
                tri!(
                    records::set_status(tx, id, Status::Running, to, now, &reason)
                        .map(|r| r.map_err(|source| QueueError::Transition { id, source }))
                );
                // A build that had not begun cost nothing: it does not count as an interruption.
                let counted = i64::from(!matches!(action, Action::Resume { from: None }));
                let keep_step = matches!(action, Action::Resume { .. });
                tx.execute(
                    "UPDATE builds SET lease_owner = NULL, lease_until = NULL, \
                     interruptions = interruptions + ?2, \
                     step = CASE WHEN ?3 THEN step ELSE NULL END, \
                     next_attempt_at = ?4, \
                     error = CASE WHEN ?5 = 'failed' THEN 'interrupted' ELSE error END, \
                     finished_at = CASE WHEN ?5 IN ('failed', 'cancelled') THEN ?4 ELSE NULL END \
                     WHERE id = ?1",
                    params![id.0, counted, keep_step, millis(now), to.as_str()],
                )?;
                done.push(Recovered { id, step, action });
            }
            Ok(Ok(done))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::BuildId;
    use crate::spec::BuildSpec;

    fn running(step: Option<Step>, interruptions: u32, cancel_requested: bool) -> Build {
        let t = DateTime::<Utc>::UNIX_EPOCH;
        Build {
            id: BuildId(1),
            repo: "acme/web".into(),
            number: Some(1),
            spec: BuildSpec::new("p"),
            status: Status::Running,
            attempts: 1,
            next_attempt_at: t,
            lease_owner: Some("host-a".into()),
            lease_until: Some(t),
            cancel_requested,
            step,
            interruptions,
            result: None,
            error: None,
            created_at: t,
            updated_at: t,
            finished_at: None,
        }
    }

    #[test]
    fn what_recovery_does_with_an_expired_build() {
        let config = QueueConfig::default();
        let cases = [
            (None, 0, false, Action::Resume { from: None }),
            (None, 5, false, Action::Resume { from: None }),
            (
                Some(Step::Clone),
                0,
                false,
                Action::Resume {
                    from: Some(Step::Clone),
                },
            ),
            (
                Some(Step::Push),
                2,
                false,
                Action::Resume {
                    from: Some(Step::Push),
                },
            ),
            (Some(Step::Push), 3, false, Action::Fail),
            (Some(Step::Agent), 0, false, Action::RetryOnce),
            (Some(Step::Agent), 1, false, Action::Fail),
            (Some(Step::Agent), 0, true, Action::Cancel),
            (None, 0, true, Action::Cancel),
        ];
        for (step, interruptions, cancel, expected) in cases {
            let build = running(step, interruptions, cancel);
            assert_eq!(
                decide(&config, &build),
                expected,
                "{step:?} after {interruptions} interruptions, cancel {cancel}"
            );
        }
    }
}
