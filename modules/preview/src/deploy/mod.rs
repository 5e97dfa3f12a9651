//! A deploy of one pull request at one commit, step by step, each step in its own file:
//! [`download`], [`checkout`] (config and policy), [`project`] (the rewritten compose file and the
//! tenant's variables), [`build`], [`up`] (start, the router, old images), [`commands`]
//! (migration and post-deploy commands) and [`health`]. [`workspace`] gives every attempt its own
//! directory.
//!
//! # Expected flow
//! The row is (re)written `pending` at the sha with its place under `max_previews`
//! ([`crate::capacity`]); each step is recorded before it starts ([`Attempt::step`]); the deploy
//! ends `ready` or `failed` at a stage, with the error and the output's tail.
//!
//! # Guarantees
//! - A newer head or shutdown cancels the attempt at its next await (a Compose process is killed
//!   with its group); the row stays where it was and the next pass converges from there.
//! - A failure of the host (the workspace cannot be written, the engine or Compose unusable) does
//!   not stick to the commit: the row keeps its place, and the deploy is tried again after a
//!   doubling backoff.
//! - What reaches the pull request names no path of the host ([`workspace::host_paths_hidden`]).

mod build;
mod checkout;
mod commands;
mod download;
mod health;
mod project;
mod up;
pub(crate) mod workspace;

use std::future::Future;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::TenantRules;
use crate::db::Details;
use crate::reconcile::Previews;
use crate::state::{Event, Stage};

/// A step that failed: its stage, message and output tail.
pub(crate) struct Failure {
    pub stage: Stage,
    pub error: String,
    pub tail: Option<String>,
}

/// Why an attempt stopped before `ready`.
pub(crate) enum Stop {
    /// The commit failed a step: recorded with the row, until a new push.
    Failed(Failure),
    /// The host failed (the engine, Compose, the workspace's disk), not the commit: the row stays
    /// where it was and the deploy is tried again after a backoff.
    Host(Failure),
    /// Replaced by a newer job, or shutdown.
    Cancelled,
}

impl Stop {
    pub fn failed(stage: Stage, error: impl Into<String>) -> Stop {
        Stop::Failed(Failure {
            stage,
            error: error.into(),
            tail: None,
        })
    }

    pub fn failed_with_tail(stage: Stage, error: impl Into<String>, tail: &str) -> Stop {
        Stop::Failed(Failure {
            stage,
            error: error.into(),
            tail: Some(tail.to_owned()).filter(|t| !t.is_empty()),
        })
    }

    pub fn host(stage: Stage, error: impl Into<String>) -> Stop {
        Stop::Host(Failure {
            stage,
            error: error.into(),
            tail: None,
        })
    }

    /// A Compose command of `stage` that failed: its message and output tail.
    pub fn command(stage: Stage) -> impl Fn(crate::runner::CommandError) -> Stop {
        move |e| Stop::failed_with_tail(stage, e.to_string(), &e.tail)
    }
}

/// The end of a step that was stopped by a newer job or by shutdown.
pub(crate) struct Cancelled;

impl From<Cancelled> for Stop {
    fn from(_: Cancelled) -> Self {
        Stop::Cancelled
    }
}

/// One deploy attempt: what every step needs.
pub(crate) struct Attempt<'a> {
    pub previews: &'a Previews,
    pub repo: &'a str,
    pub number: u64,
    pub sha: &'a str,
    /// The Compose project name.
    pub project: &'a str,
    pub url: &'a str,
    pub rules: TenantRules,
    /// The preview's workspace (the rewritten compose file lives here).
    pub workspace: PathBuf,
    /// This attempt's own directory under the workspace (the tarball and the checkout).
    pub dir: PathBuf,
    pub cancel: &'a CancellationToken,
}

impl Attempt<'_> {
    /// `f`, unless the attempt is cancelled first.
    pub async fn or_cancel<T>(&self, f: impl Future<Output = T>) -> Result<T, Cancelled> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Cancelled),
            out = f => Ok(out),
        }
    }

    /// Records that `stage` begins (and reports it when the status changes with it).
    pub async fn step(&self, stage: Stage) -> Result<(), Stop> {
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        self.previews
            .record(
                self.repo,
                self.number,
                self.sha,
                Event::Step(stage),
                Details::default(),
            )
            .await;
        // Statuses change at build and start; the stages within them are not worth a write each.
        if matches!(stage, Stage::Download | Stage::Start) {
            self.previews.report(self.repo, self.number);
        }
        Ok(())
    }

    /// Every step, in order.
    async fn run(&self) -> Result<(), Stop> {
        let dir = download::run(self).await?;
        let checkout = checkout::run(self, &dir).await?;
        let project = project::write(self, &checkout).await?;
        build::run(self, &checkout, &project).await?;
        up::run(self, &checkout, &project).await?;
        commands::migrate(self, &checkout, &project).await?;
        health::run(self, &checkout, &project).await?;
        commands::post_deploy(self, &checkout, &project).await
    }
}

impl Previews {
    /// Runs every step of a deploy of `repo#number` at `sha`, and records how it ended.
    pub(crate) async fn deploy(
        &self,
        repo: &str,
        number: u64,
        sha: &str,
        cancel: &CancellationToken,
    ) {
        // The row was written when the place was granted; a removal that ran before this job
        // started (a `Replace` waits for it) may have marked it deleted since: take the place
        // again, in the same transaction that counts.
        match self.reserve(repo, number, sha).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(
                    repo,
                    number,
                    "previews: no room any more under max_previews; waiting for the next pass"
                );
                return;
            }
            Err(e) => {
                tracing::error!(repo, number, error = %e, "previews: cannot record the deploy; retrying on the next pass");
                return;
            }
        }
        self.report(repo, number);
        let project = crate::compose::project_name(repo, number);
        let url = self.url(repo, number);
        let workspace = self.workspace(&project);
        let attempt = Attempt {
            previews: self,
            repo,
            number,
            sha,
            project: &project,
            url: &url,
            rules: self.rules(repo),
            dir: workspace::attempt_dir(&workspace, sha),
            workspace,
            cancel,
        };
        match attempt.run().await {
            Ok(()) => {
                self.inner.host_failures.succeeded(repo, number);
                self.count_outcome(0);
                self.record(repo, number, sha, Event::Ready, Details::default())
                    .await;
                tracing::info!(repo, number, sha, url, "previews: ready");
            }
            Err(Stop::Failed(f)) => {
                self.count_outcome(1);
                // What reaches the comment names paths relative to the checkout, never where the
                // daemon keeps its state.
                let state_dir = &self.inner.settings.state_dir;
                let hide = |t: &str| workspace::host_paths_hidden(t, &attempt.workspace, state_dir);
                let error = hide(&f.error);
                let tail = f.tail.as_deref().map(hide);
                tracing::warn!(repo, number, sha, stage = %f.stage, error = %error, "previews: deploy failed");
                self.record(
                    repo,
                    number,
                    sha,
                    Event::Fail(f.stage),
                    Details {
                        error: Some(&error),
                        log_tail: tail.as_deref(),
                        ..Details::default()
                    },
                )
                .await;
            }
            Err(Stop::Host(f)) => {
                // Not the commit's fault: the row keeps its place (a deploy under way), so the
                // next pass after the backoff deploys again; the commit is not marked failed.
                let wait = self.inner.host_failures.failed(repo, number);
                tracing::warn!(repo, number, sha, stage = %f.stage, error = %f.error, retry_in = ?wait, "previews: the host failed this deploy; trying again later");
                return;
            }
            Err(Stop::Cancelled) => {
                self.count_outcome(2);
                tracing::info!(repo, number, sha, "previews: deploy cancelled");
                return;
            }
        }
        self.report(repo, number);
    }
}
