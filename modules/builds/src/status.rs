//! A build's status, the steps a runner records, and the one table of allowed transitions.
//!
//! `pending → running → completed | failed | cancelled`; `pending → cancelled` (cancelled before
//! it ran); `running → pending` (a transient failure retried later, or a build whose daemon died,
//! taken back by recovery); `pending → failed` (given up without running, e.g. its retries spent).
//! `completed`, `failed` and `cancelled` are final. Every transition the queue writes passes
//! [`check`] and appends an audit row in the same transaction.

/// The statuses of issue 11 (and of the `builds.status` column).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::VariantArray,
    serde::Serialize,
    serde::Deserialize,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Pending or running: at most one such build per issue or pull request.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Pending | Status::Running)
    }

    pub fn is_final(self) -> bool {
        !self.is_active()
    }
}

/// Whether `from → to` is allowed: the whole table.
pub fn allowed(from: Status, to: Status) -> bool {
    use Status::*;
    matches!(
        (from, to),
        (Pending, Running | Cancelled | Failed)
            | (Running, Completed | Failed | Cancelled | Pending)
    )
}

/// [`allowed`], as an error the caller must handle rather than a silent overwrite.
pub fn check(from: Status, to: Status) -> Result<(), TransitionError> {
    if allowed(from, to) {
        Ok(())
    } else {
        Err(TransitionError { from, to })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a build cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: Status,
    pub to: Status,
}

/// The steps of a build, recorded before each starts, so that a daemon restarted after a kill
/// knows where the build was.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum Step {
    Clone,
    Agent,
    Commit,
    Push,
    PullRequest,
    Callback,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether a build interrupted during this step can go on from it. The agent cannot: its
    /// process died with the daemon, and running it again costs a whole run (so the build is
    /// failed as `interrupted` and retried once, from the start). Cloning starts over at no
    /// cost; commit, push, pull request and callback are idempotent (the branch is
    /// deterministic, the pull request is looked up before it is created, the callback carries
    /// the build id as its idempotency key).
    pub fn resumable(self) -> bool {
        !matches!(self, Step::Agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    #[test]
    fn the_transition_table() {
        use Status::*;
        let expected: &[(Status, &[Status])] = &[
            (Pending, &[Running, Cancelled, Failed]),
            (Running, &[Pending, Completed, Failed, Cancelled]),
            (Completed, &[]),
            (Failed, &[]),
            (Cancelled, &[]),
        ];
        for &(from, targets) in expected {
            for &to in Status::VARIANTS {
                assert_eq!(allowed(from, to), targets.contains(&to), "{from} -> {to}");
                assert_eq!(check(from, to).is_ok(), targets.contains(&to));
            }
        }
        assert_eq!(
            check(Completed, Running).unwrap_err().to_string(),
            "a build cannot go from completed to running"
        );
    }

    #[test]
    fn names_are_the_api_s() {
        let names: Vec<&str> = Status::VARIANTS.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            ["pending", "running", "completed", "failed", "cancelled"]
        );
        assert_eq!("cancelled".parse::<Status>().unwrap(), Status::Cancelled);
        assert_eq!(
            serde_json::to_string(&Status::Running).unwrap(),
            "\"running\""
        );
        assert_eq!("pull_request".parse::<Step>().unwrap(), Step::PullRequest);
    }

    #[test]
    fn only_the_agent_step_is_not_resumable() {
        let not: Vec<Step> = Step::VARIANTS
            .iter()
            .copied()
            .filter(|s| !s.resumable())
            .collect();
        assert_eq!(not, [Step::Agent]);
    }
}
