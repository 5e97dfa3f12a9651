//! The builds module as the planner and the HTTP seam see it: without `[builds]` it has no units
//! and no routes; with it,
//! - `service:builds:global`: the runner ([`Runner::serve`]): recovery of what a dead daemon
//!   left, then claims up to `max_concurrent` builds, woken when one is enqueued;
//! - `worker:builds:{owner}/{name}`: at the tenant's poll interval, the triggers on GitHub
//!   ([`crate::triggers`]) and the loop's close ([`crate::link`]: a ready preview of a build's pull
//!   request goes into its result and comment);
//! - the builds API ([`crate::routes`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use productbuilder_github::GithubState;
use productbuilder_planner::{
    AppliesTo, Every, Feed, Module, Scope, Spec, Tenant, TenantCtx, Wake, When, every_tenant,
    spec_work,
};
use productbuilder_routes::Route;
use productbuilder_scheduler::{Backoff, ErrorKind, RestartPolicy, RetryPolicy, UnitError};
use tokio::sync::Notify;

use crate::config::BuildsConfig;
use crate::forge::Forge;
use crate::github_forge::GithubForge;
use crate::queue::{Queue, QueueError};
use crate::runner::Runner;
use crate::triggers::{Outcome, TriggerError, Triggers};

/// How often the runner looks at the queue when nothing woke it (a retry's backoff ending, a
/// build enqueued by another daemon on the same file).
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Builds for every tenant; nothing without `[builds]`.
pub struct BuildsModule {
    parts: Option<Parts>,
    run_timeout: Duration,
}

#[derive(Clone)]
struct Parts {
    queue: Queue,
    runner: Runner,
    triggers: Triggers,
    forge: Arc<dyn Forge>,
    github: GithubState,
    /// Told when a trigger enqueued a build.
    wake: Arc<Notify>,
    repos: Arc<BTreeSet<String>>,
    state_dir: PathBuf,
}

impl BuildsModule {
    /// `owner` names this daemon in build leases (unique per process on a shared database).
    pub fn new(
        config: Option<BuildsConfig>,
        github: GithubState,
        state_dir: PathBuf,
        repos: BTreeSet<String>,
        owner: String,
        run_timeout: Duration,
    ) -> std::io::Result<BuildsModule> {
        let Some(config) = config else {
            return Ok(BuildsModule {
                parts: None,
                run_timeout,
            });
        };
        let queue = Queue::new(github.store.clone(), config.queue_config());
        let forge: Arc<dyn Forge> = Arc::new(GithubForge::new(github.client.clone()));
        let triggers = Triggers::new(github.clone(), queue.clone(), config.label.clone());
        let runner = Runner::new(queue.clone(), forge.clone(), config, &state_dir, owner)?;
        Ok(BuildsModule {
            parts: Some(Parts {
                queue,
                runner,
                triggers,
                forge,
                github,
                wake: Arc::new(Notify::new()),
                repos: Arc::new(repos),
                state_dir,
            }),
            run_timeout,
        })
    }

    /// The queue, when builds are on (the dashboard reads it).
    pub fn queue(&self) -> Option<&Queue> {
        self.parts.as_ref().map(|p| &p.queue)
    }

    fn on(&self) -> AppliesTo {
        let on = self.parts.is_some();
        Arc::new(move |_: &Tenant| on)
    }
}

fn trigger_error(e: TriggerError) -> UnitError {
    match e {
        TriggerError::Github(e) => e.into(),
        TriggerError::Queue(e) => queue_error(e),
        TriggerError::Store(e) => e.into(),
    }
}

fn queue_error(e: QueueError) -> UnitError {
    match e {
        QueueError::Store(e) => e.into(),
        e => UnitError::new(ErrorKind::Internal, e.to_string()),
    }
}

impl Parts {
    /// `worker:builds:{owner}/{name}`.
    async fn pass(&self, repo: &str) -> Result<(), UnitError> {
        let considered = self
            .triggers
            .pass(repo, Utc::now())
            .await
            .map_err(trigger_error)?;
        if considered.iter().any(|c| c.outcome == Outcome::Started) {
            self.wake.notify_one();
        }
        crate::link::link_previews(
            &self.github.store,
            &self.queue,
            self.forge.as_ref(),
            repo,
            Utc::now(),
        )
        .await
        .map_err(queue_error)?;
        Ok(())
    }
}

impl Module for BuildsModule {
    fn name(&self) -> &'static str {
        "builds"
    }

    /// Published whether builds are on or not, so that modules may wake on it either way.
    fn feeds(&self) -> Vec<Feed> {
        vec![crate::feeds::rows(
            self.parts.as_ref().map(|p| p.runner.clone()),
        )]
    }

    /// A preview that moved may be a build's, now ready: link it at once.
    fn wakes(&self) -> Vec<Wake> {
        vec![Wake {
            feed: productbuilder_preview::feeds::ROWS,
            worker: "builds",
        }]
    }

    fn workers(&self) -> Vec<Spec> {
        let Some(parts) = self.parts.clone() else {
            return Vec::new();
        };
        let service = parts.clone();
        vec![
            Spec {
                resource: "builds",
                scope: Scope::Global,
                when: When::Service(RestartPolicy {
                    backoff: Backoff {
                        base: Duration::from_secs(1),
                        max: Duration::from_secs(60),
                    },
                    healthy_after: Duration::from_secs(60),
                }),
                timeout: self.run_timeout,
                retry: RetryPolicy::never(),
                applies_to: every_tenant(),
                work: spec_work(move |ctx: TenantCtx| {
                    let parts = service.clone();
                    async move {
                        parts
                            .runner
                            .clone()
                            .serve(ctx.run.cancel.clone(), parts.wake.clone(), LOOK_EVERY)
                            .await;
                        Ok(())
                    }
                }),
            },
            Spec {
                resource: "builds",
                scope: Scope::PerTenant,
                when: When::Worker(Every::PollInterval),
                timeout: self.run_timeout,
                retry: RetryPolicy::remote_api(),
                applies_to: self.on(),
                work: spec_work(move |ctx: TenantCtx| {
                    let parts = parts.clone();
                    async move { parts.pass(&ctx.tenant().repo()).await }
                }),
            },
        ]
    }
}

impl productbuilder_routes::Module for BuildsModule {
    fn routes(&self) -> Vec<Route> {
        let Some(parts) = &self.parts else {
            return Vec::new();
        };
        crate::routes::routes(crate::routes::RouteState {
            queue: parts.queue.clone(),
            repos: parts.repos.clone(),
            logs: parts.state_dir.join("builds"),
        })
    }
}
