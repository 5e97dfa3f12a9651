//! Reporting, a reconciler of its own over the preview rows: for each row whose report key
//! ([`crate::db::PreviewRow::report_key`]: head, status, stage, waiting head) differs from the last
//! one reported, the marker comment, the deployment and its status, and the commit status are
//! brought to what the row says.
//!
//! - One report per pull request at a time (a keyed job); asking again while one runs makes it
//!   run once more at the end, with the latest row. A panic frees the pull request.
//! - A refusal for good (401/403 without a wait hint, 404, 422) is recorded with the row as
//!   `report_error` (the API and the dashboard show it) and not sent again until the row changes.
//! - A transient failure (an outage, a rate limit, a busy database) backs off per pull request
//!   (doubling from [`RETRY_FIRST`], a server's wait hint first) before the passes try again; a
//!   change of the row is reported at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use productbuilder_github::{CommitState, DeploymentState, GithubError};
use productbuilder_jobs::{JobSpec, Jobs};
use productbuilder_store::StoreError;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoffs;
use crate::comment::{self, CommentView};
use crate::db::{self, DeletedReason};
use crate::decide;
use crate::reconcile::Previews;
use crate::state::Status;

/// The first wait after a transient failure of a report (doubled per failure in a row).
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
/// The longest wait between two attempts at a report.
pub const RETRY_MAX: Duration = Duration::from_secs(600);

/// Why a report did not reach GitHub.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// GitHub refused it and would again: recorded against `key`, not sent again until the row
    /// changes.
    #[error("GitHub refused the report for good: {source}")]
    Refused { key: String, source: GithubError },
    /// An outage, a rate limit: the passes try again after a backoff.
    #[error("GitHub did not take the report now: {0}")]
    Transient(GithubError),
    /// The database failed: the passes try again after a backoff.
    #[error("previews database: {0}")]
    Store(#[from] StoreError),
}

impl ReportError {
    /// Classified once, by the scheduler's rules for GitHub's answers.
    fn from_github(e: GithubError, key: &str) -> ReportError {
        use productbuilder_scheduler::ErrorKind::*;
        match productbuilder_scheduler::UnitError::from(e.clone()).kind() {
            BadCredentials | Forbidden | NotFound | Validation => ReportError::Refused {
                key: key.to_owned(),
                source: e,
            },
            _ => ReportError::Transient(e),
        }
    }

    /// The wait GitHub asked for, if it did.
    fn wait_hint(&self) -> Option<Duration> {
        match self {
            ReportError::Transient(GithubError::Status { wait_hint, .. }) => *wait_hint,
            _ => None,
        }
    }
}

/// The reports running, per pull request, and the backoff of those that failed for a while.
pub(crate) struct Reports {
    /// One job per pull request at a time (this map says whether another was asked for meanwhile).
    jobs: Jobs,
    running: Arc<Mutex<HashMap<(String, u64), bool>>>,
    backoff: Backoffs,
}

impl Reports {
    /// Reports are not stopped by the daemon's shutdown: a removal at exit (the demo's) is still
    /// reported, and one report is short (each request has its own timeout).
    pub fn new() -> Reports {
        Reports {
            jobs: Jobs::builder(&CancellationToken::new()).build(),
            running: Arc::default(),
            backoff: Backoffs::new(RETRY_FIRST, RETRY_MAX),
        }
    }

    pub async fn idle(&self) {
        self.jobs.idle().await;
    }

    pub fn is_idle(&self) -> bool {
        self.jobs.is_idle()
    }
}

/// Frees a pull request's place in [`Reports::running`] however its job ends (a panic too).
struct Running {
    running: Arc<Mutex<HashMap<(String, u64), bool>>>,
    key: (String, u64),
    /// The place was given back by [`Running::again`].
    released: bool,
}

impl Running {
    /// Whether another report was asked for meanwhile (then the place stays taken and the report
    /// runs again); else gives the place back, under the same lock, so no request is lost.
    fn again(&mut self) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.get_mut(&self.key) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                running.remove(&self.key);
                self.released = true;
                false
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A job that panicked (or was dropped at shutdown) still frees its pull request.
        if !self.released {
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.key);
        }
    }
}

impl Previews {
    /// Reports `repo#number` as its row says, unless that was already reported (the row changed:
    /// at once, whatever the backoff).
    pub fn report(&self, repo: &str, number: u64) {
        let reports = &self.inner.reports;
        let key = (repo.to_owned(), number);
        {
            let mut running = reports.running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(again) = running.get_mut(&key) {
                *again = true;
                return;
            }
            running.insert(key.clone(), false);
        }
        let mut guard = Running {
            running: reports.running.clone(),
            key,
            released: false,
        };
        let this = self.clone();
        let spec = JobSpec::new(
            format!("{repo}#{number}"),
            "report",
            productbuilder_jobs::Policy::Queue,
        );
        reports.jobs.submit(spec, move |_cancel| async move {
            loop {
                let (repo, number) = (guard.key.0.clone(), guard.key.1);
                this.report_and_record(&repo, number).await;
                if !guard.again() {
                    return Ok::<(), Infallible>(());
                }
            }
        });
    }

    /// A report the pass found due ([`decide::report_due`]): sent unless it is backing off.
    pub(crate) fn report_due(&self, repo: &str, number: u64) {
        if self.inner.reports.backoff.waiting(repo, number) {
            tracing::debug!(
                repo,
                number,
                "previews: report backing off after a transient failure"
            );
            return;
        }
        self.report(repo, number);
    }

    async fn report_and_record(&self, repo: &str, number: u64) {
        let backoff = &self.inner.reports.backoff;
        match self.report_once(repo, number).await {
            Ok(()) => backoff.succeeded(repo, number),
            Err(ReportError::Refused { key, source }) => {
                backoff.succeeded(repo, number);
                tracing::warn!(repo, number, error = %source, "previews: GitHub refused the report for good; not sending it again until the preview changes");
                let (r, message) = (repo.to_owned(), source.to_string());
                if let Err(e) = self
                    .inner
                    .store
                    .write(move |c| db::set_report_refused(c, &r, number, &key, &message))
                    .await
                {
                    tracing::warn!(repo, number, error = %e, "previews: cannot record the refused report");
                }
            }
            Err(e) => {
                let wait = backoff.failed_with_hint(repo, number, e.wait_hint());
                tracing::warn!(repo, number, error = %e, retry_in = ?wait, "previews: reporting to GitHub failed; trying again later");
            }
        }
    }

    async fn report_once(&self, repo: &str, number: u64) -> Result<(), ReportError> {
        let key_owned = repo.to_owned();
        let Some(row) = self
            .inner
            .store
            .read(move |c| db::row(c, &key_owned, number))
            .await?
        else {
            return Ok(());
        };
        if !decide::report_due(&row) {
            return Ok(());
        }
        let key = row.report_key();
        let settings = &self.inner.settings;
        let logs_url = settings.public_url.as_ref().map(|base| {
            format!(
                "{}/previews/{repo}/{number}/logs",
                base.trim_end_matches('/')
            )
        });
        let commit_url = commit_url(&self.inner.github.client.url("/"), repo, &row.head_sha);
        let notices: Vec<String> = match row.deleted_reason {
            Some(DeletedReason::Evicted) if row.status == Status::Deleted => vec![format!(
                "Removed to make room: this host runs at most {} previews, and this one was the least recently updated. Push a commit to bring it back.",
                settings.max_previews
            )],
            Some(DeletedReason::Expired) if row.status == Status::Deleted => vec![format!(
                "Removed after {} without a new commit. Push a commit to bring it back.",
                humantime::format_duration(settings.ttl)
            )],
            _ => Vec::new(),
        };
        let body = comment::render(&CommentView {
            status: row.status,
            head_sha: &row.head_sha,
            commit_url: commit_url.as_deref(),
            preview_url: Some(&row.url),
            logs_url: logs_url.as_deref(),
            stage: row.stage,
            error: row.error.as_deref(),
            log_tail: row.log_tail.as_deref(),
            note: row.note.as_deref(),
            notices: &notices,
            waiting_sha: row.waiting_sha.as_deref(),
        });
        let gh = |e: GithubError| ReportError::from_github(e, &key);
        self.inner
            .comments
            .publish(repo, number, &body)
            .await
            .map_err(gh)?;

        let deployment = match row.deployment_id {
            Some(id) => id,
            None => {
                let id = self
                    .inner
                    .reporter
                    .ensure_deployment(repo, number, &row.head_sha)
                    .await
                    .map_err(gh)?;
                let (r, s) = (repo.to_owned(), row.head_sha.clone());
                self.inner
                    .store
                    .write(move |c| db::set_deployment(c, &r, number, &s, id))
                    .await?;
                id
            }
        };
        let text = match (row.status, row.stage) {
            (Status::Failed, Some(stage)) => format!("Failed at {stage}"),
            (status, _) => format!("Preview {status}"),
        };
        let (deployment_state, commit_state) = match row.status {
            Status::Pending | Status::Building | Status::Deploying => {
                (DeploymentState::InProgress, Some(CommitState::Pending))
            }
            Status::Ready => (DeploymentState::Success, Some(CommitState::Success)),
            Status::Failed => (DeploymentState::Failure, Some(CommitState::Failure)),
            Status::Deleted => (DeploymentState::Inactive, None),
        };
        let env_url = (row.status == Status::Ready).then_some(row.url.as_str());
        self.inner
            .reporter
            .deployment_status(
                repo,
                deployment,
                deployment_state,
                &text,
                env_url,
                logs_url.as_deref(),
            )
            .await
            .map_err(gh)?;
        if let Some(state) = commit_state {
            self.inner
                .reporter
                .commit_status(
                    repo,
                    &row.head_sha,
                    state,
                    &text,
                    env_url.or(logs_url.as_deref()),
                )
                .await
                .map_err(gh)?;
        }
        let r = repo.to_owned();
        self.inner
            .store
            .write(move |c| db::set_reported(c, &r, number, &key))
            .await?;
        Ok(())
    }
}

/// The commit's page on github.com; none for other servers (their web address is not derivable
/// from the API's).
fn commit_url(api_root: &str, repo: &str, sha: &str) -> Option<String> {
    api_root
        .starts_with("https://api.github.com")
        .then(|| format!("https://github.com/{repo}/commit/{sha}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, wait_hint: Option<Duration>) -> GithubError {
        GithubError::Status {
            method: http::Method::POST,
            path: "/repos/o/r/statuses/abc".into(),
            status: code,
            message: "no".into(),
            wait_hint,
        }
    }

    #[test]
    fn refusals_for_good_and_transient_failures() {
        for code in [401, 403, 404, 422] {
            assert!(
                matches!(
                    ReportError::from_github(status(code, None), "k"),
                    ReportError::Refused { .. }
                ),
                "{code}"
            );
        }
        for code in [500, 502, 503, 429] {
            assert!(
                matches!(
                    ReportError::from_github(status(code, None), "k"),
                    ReportError::Transient(_)
                ),
                "{code}"
            );
        }
        // A 403 with a wait hint is GitHub's secondary rate limit: wait, then try again.
        let limited = ReportError::from_github(status(403, Some(Duration::from_secs(60))), "k");
        assert!(matches!(limited, ReportError::Transient(_)), "{limited:?}");
        assert_eq!(limited.wait_hint(), Some(Duration::from_secs(60)));
        let network = GithubError::Network {
            method: http::Method::POST,
            path: "/x".into(),
            detail: "reset".into(),
        };
        assert!(matches!(
            ReportError::from_github(network, "k"),
            ReportError::Transient(_)
        ));
    }

    #[test]
    fn commit_links_only_for_github_com() {
        assert_eq!(
            commit_url("https://api.github.com/", "o/r", "abc").as_deref(),
            Some("https://github.com/o/r/commit/abc")
        );
        assert_eq!(commit_url("http://127.0.0.1:9/", "o/r", "abc"), None);
    }
}
