//! The Slack module as the planner sees it: which units exist, for which tenants.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use productbuilder_github::GithubState;
use productbuilder_planner::{
    AppliesTo, Every, Module, Scope, Spec, Tenant, TenantCtx, Wake, When, every_tenant, spec_work,
    stage,
};
use productbuilder_scheduler::{Backoff, RestartPolicy, RetryPolicy, UnitError};

use crate::api::SlackApi;
use crate::config::SlackConfig;
use crate::debounce::StatusDebounce;
use crate::respond::Responder;

/// Slack for the tenants with a `slack_channel`; without `[slack]` it has no units at all.
pub struct SlackModule {
    /// `None` without `[slack]`.
    pub config: Option<SlackConfig>,
    /// The workspace's client (with its one budget); `Some` exactly when `config` is.
    pub api: Option<SlackApi>,
    /// Each tenant's channel, by `owner/name` as configured; tenants without one are absent.
    pub channels: Arc<BTreeMap<String, String>>,
    pub run_timeout: Duration,
    /// The GitHub poller's state: its database (the items, comments and previews read) and its
    /// client (the daemon's own login, whose comments are never mirrored).
    pub github: GithubState,
    /// GitHub's web origin, for links (`https://github.com`).
    pub github_web: String,
    /// The status lane's debounce, shared by every tenant's passes.
    pub debounce: Arc<StatusDebounce>,
    /// Each tenant's `[slack] writers`, by `owner/name`.
    pub writers: Arc<BTreeMap<String, Vec<String>>>,
    /// The agent that answers mentions (with `[llm]`); `status`/`help` without.
    pub responder: Option<Arc<dyn Responder>>,
}

impl SlackModule {
    /// Per-tenant units exist only for tenants with a channel, and only with `[slack]`.
    pub fn with_channel(&self) -> AppliesTo {
        let channels = self.channels.clone();
        let on = self.config.is_some();
        Arc::new(move |t: &Tenant| on && channels.contains_key(&t.repo()))
    }
}

/// `preflight:slack:global`: the bot token works (`auth.test`). A bad token is permanent, so
/// `run` exits 1 naming `[slack] bot_token`.
async fn check_token(api: &SlackApi) -> Result<(), UnitError> {
    let me = api.me().await.map_err(|e| e.into_unit_error())?;
    tracing::info!(team = %me.team, bot_user = %me.user_id, "Slack token works");
    Ok(())
}

impl Module for SlackModule {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn preflights(&self) -> Vec<Spec> {
        let Some(api) = self.api.clone() else {
            return Vec::new();
        };
        vec![Spec {
            resource: "slack",
            scope: Scope::Global,
            when: When::Preflight {
                stage: stage::REPOSITORY,
            },
            timeout: self.run_timeout,
            retry: RetryPolicy::remote_api(),
            applies_to: every_tenant(),
            work: spec_work(move |_ctx: TenantCtx| {
                let api = api.clone();
                async move { check_token(&api).await }
            }),
        }]
    }

    fn workers(&self) -> Vec<Spec> {
        let (Some(api), Some(config)) = (self.api.clone(), self.config.clone()) else {
            return Vec::new();
        };
        let pass = Pass {
            api: api.clone(),
            github: self.github.clone(),
            channels: self.channels.clone(),
            config: config.clone(),
            web: self.github_web.clone(),
            debounce: self.debounce.clone(),
            writers: self.writers.clone(),
            responder: self.responder.clone(),
        };
        let mut specs = Vec::new();
        if let Some(app_token) = &config.app_token {
            let socket = crate::socket::Socket {
                api: api.clone(),
                app_token: app_token.expose().to_owned(),
                store: self.github.store.clone(),
                channels: Arc::new(
                    self.channels
                        .iter()
                        .map(|(repo, channel)| {
                            (
                                channel.clone(),
                                crate::socket::ChannelTenant {
                                    repo: repo.clone(),
                                    web: self.github_web.clone(),
                                    writers: self.writers.get(repo).cloned().unwrap_or_default(),
                                },
                            )
                        })
                        .collect(),
                ),
                in_flight: Default::default(),
                responder: self.responder.clone(),
            };
            specs.push(Spec {
                resource: "slack-socket",
                scope: Scope::Global,
                // Reconnect soon after a disconnect frame or a drop; a connection that held a
                // minute starts the backoff over.
                when: When::Service(RestartPolicy {
                    backoff: Backoff {
                        base: Duration::from_millis(500),
                        max: Duration::from_secs(60),
                    },
                    healthy_after: Duration::from_secs(60),
                }),
                timeout: self.run_timeout,
                retry: RetryPolicy::never(),
                applies_to: every_tenant(),
                work: spec_work(move |ctx: TenantCtx| {
                    let socket = socket.clone();
                    async move { socket.run(ctx.run).await }
                }),
            });
        }
        specs.push(Spec {
            resource: "slack",
            scope: Scope::PerTenant,
            when: When::Worker(Every::PollInterval),
            timeout: self.run_timeout,
            retry: RetryPolicy::remote_api(),
            applies_to: self.with_channel(),
            work: spec_work(move |ctx: TenantCtx| {
                let pass = pass.clone();
                async move { pass.run(ctx.tenant(), &ctx.run.cancel).await }
            }),
        });
        specs
    }

    /// A change of the open pull requests (a new thread, a closed one), of a tenant's previews or
    /// of its builds (the status line) is worth a pass at once.
    fn wakes(&self) -> Vec<Wake> {
        vec![
            Wake {
                feed: productbuilder_github::feeds::PULLS,
                worker: "slack",
            },
            Wake {
                feed: productbuilder_preview::feeds::ROWS,
                worker: "slack",
            },
            Wake {
                feed: productbuilder_builds::feeds::ROWS,
                worker: "slack",
            },
        ]
    }
}

/// What `worker:slack:{owner}/{name}` needs of the module.
#[derive(Clone)]
struct Pass {
    api: SlackApi,
    github: GithubState,
    channels: Arc<BTreeMap<String, String>>,
    config: SlackConfig,
    web: String,
    debounce: Arc<StatusDebounce>,
    writers: Arc<BTreeMap<String, Vec<String>>>,
    responder: Option<Arc<dyn Responder>>,
}

impl Pass {
    /// `worker:slack:{owner}/{name}`: the threads, then (without Socket Mode) the mentions.
    async fn run(
        &self,
        tenant: &Tenant,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), UnitError> {
        let Pass {
            api,
            github,
            channels,
            config,
            web,
            debounce,
            writers,
            responder,
        } = self;
        let repo = tenant.repo();
        let Some(channel) = channels.get(&repo) else {
            return Ok(());
        };
        // Unknown login (GitHub unreachable): the marker still keeps the daemon's comments out.
        let own_login = github.client.own_login(&repo).await.ok();
        let slack_tenant = crate::worker::Tenant {
            repo,
            channel: channel.clone(),
            web: web.to_owned(),
            backfill: config.backfill,
            own_login,
            debounce: debounce.clone(),
        };
        crate::worker::pass(api, &github.store, &slack_tenant).await?;
        if config.app_token.is_none() {
            let me = api.me().await.map_err(|e| e.into_unit_error())?;
            let no_writers = Vec::new();
            crate::input::Poll {
                api,
                store: &github.store,
                channel,
                repo: &slack_tenant.repo,
                bot_user: &me.user_id,
                page_size: config.history_page_size,
                thread_checks: config.history_requests_per_minute as usize,
                web: &slack_tenant.web,
                writers: writers.get(&slack_tenant.repo).unwrap_or(&no_writers),
                responder: responder.as_ref(),
                cancel,
            }
            .run()
            .await?;
        }
        Ok(())
    }
}

impl productbuilder_routes::Module for SlackModule {}
