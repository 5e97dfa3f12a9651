//! The agent as the planner and the HTTP seam see it, so far: with `[llm]`, its traces are
//! served (`GET /agent/runs/{id}`) and kept `[llm] trace_retention`
//! (`worker:agent-traces:global`, hourly). With `[llm]`, `[slack]` and `[builds]` as well
//! ([`AgentModule::with_loop`]), `worker:agent-loop:{owner}/{name}` tells the threads what
//! became of the builds the agent delegated there, and fixes failed previews
//! ([`crate::narrate`]); it runs at the tenant's poll interval and at once when a build or a
//! preview of the tenant moves. Without `[llm]` it has no unit and no route.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use productbuilder_builds::Queue;
use productbuilder_planner::{
    Every, Module, Scope, Spec, TenantCtx, Wake, When, every_tenant, spec_work,
};
use productbuilder_preview::Previews;
use productbuilder_routes::Route;
use productbuilder_scheduler::{RetryPolicy, UnitError};
use productbuilder_slack::api::SlackApi;
use productbuilder_store::Store;

use crate::narrate::Narrator;
use crate::narrate::check::Checker;
use crate::trace::Traces;

/// How often old traces are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The unit name of the narrator, for its wakes.
const LOOP_WORKER: &str = "agent-loop";

/// The agent's traces and its loop; nothing without `[llm]`.
pub struct AgentModule {
    store: Store,
    /// `Some((traces, retention))` with `[llm]`.
    traces: Option<(Traces, Duration)>,
    run_timeout: Duration,
    /// With `[llm]`, `[slack]` and `[builds]`.
    narrator: Option<Narrator>,
}

/// What the closed loop needs beyond the traces: each `None` when its section is not
/// configured (then there is no loop).
pub struct LoopParts {
    /// The Slack workspace's client, with `[slack]`.
    pub slack: Option<SlackApi>,
    /// The build queue, with `[builds]`.
    pub queue: Option<Queue>,
    /// The previews, whose logs the check reads; `None`: the check reports no logs.
    pub previews: Option<Previews>,
    /// `[builds] max_fix_attempts`.
    pub max_fix_attempts: u32,
}

impl AgentModule {
    /// `retention` is `[llm] trace_retention`; `None` without `[llm]`.
    pub fn new(store: Store, retention: Option<Duration>, run_timeout: Duration) -> AgentModule {
        AgentModule {
            traces: retention.map(|r| (Traces::new(store.clone()), r)),
            store,
            run_timeout,
            narrator: None,
        }
    }

    /// Adds the narrator and closed loop (`worker:agent-loop:{owner}/{name}`) when `[llm]`
    /// (given to [`AgentModule::new`]), Slack and builds are all there; otherwise unchanged.
    /// Fails only when the system's root certificates cannot be loaded (for https previews).
    pub fn with_loop(mut self, parts: LoopParts) -> std::io::Result<AgentModule> {
        if let (Some(_), Some(slack), Some(queue)) = (&self.traces, parts.slack, parts.queue) {
            self.narrator = Some(Narrator {
                store: self.store.clone(),
                slack,
                queue,
                checker: Checker::new(parts.previews)?,
                max_fix_attempts: parts.max_fix_attempts,
            });
        }
        Ok(self)
    }
}

/// Removes the traces, and the stored Slack messages (the conversations' memory), older than
/// `trace_retention`: what the agent read is kept as long as what it did.
async fn prune(traces: &Traces, store: &Store, retention: Duration) -> Result<(), UnitError> {
    let gone = traces.prune(Utc::now(), retention).await?;
    let cutoff = Utc::now().timestamp() - retention.as_secs() as i64;
    let messages = productbuilder_slack::conversation::forget_before(store, cutoff)
        .await
        .map_err(|e| {
            UnitError::new(productbuilder_scheduler::ErrorKind::Internal, e.to_string())
        })?;
    if gone > 0 || messages > 0 {
        tracing::info!(
            runs = gone,
            messages,
            "agent: traces and Slack messages older than trace_retention removed"
        );
    }
    Ok(())
}

impl Module for AgentModule {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn workers(&self) -> Vec<Spec> {
        let Some((traces, retention)) = self.traces.clone() else {
            return Vec::new();
        };
        let traces = Arc::new(traces);
        let store = self.store.clone();
        let mut specs = vec![Spec {
            resource: "agent-traces",
            scope: Scope::Global,
            when: When::Worker(Every::Fixed(PRUNE_EVERY)),
            timeout: self.run_timeout,
            retry: RetryPolicy::remote_api(),
            applies_to: every_tenant(),
            work: spec_work(move |_ctx: TenantCtx| {
                let (traces, store) = (traces.clone(), store.clone());
                async move { prune(&traces, &store, retention).await }
            }),
        }];
        if let Some(narrator) = self.narrator.clone() {
            specs.push(Spec {
                resource: LOOP_WORKER,
                scope: Scope::PerTenant,
                when: When::Worker(Every::PollInterval),
                timeout: self.run_timeout,
                retry: RetryPolicy::remote_api(),
                applies_to: every_tenant(),
                work: spec_work(move |ctx: TenantCtx| {
                    let narrator = narrator.clone();
                    async move {
                        let repo = ctx.tenant().repo();
                        let done = narrator.pass(&repo).await?;
                        if !done.posted.is_empty() || !done.fixes.is_empty() {
                            tracing::info!(repo, posted = done.posted.len(),
                                fixes = ?done.fixes, "agent loop: told the threads");
                        }
                        Ok(())
                    }
                }),
            });
        }
        specs
    }

    /// A build that moved (finished, failed) or a preview that moved (ready, failed) is worth
    /// telling at once.
    fn wakes(&self) -> Vec<Wake> {
        if self.narrator.is_none() {
            return Vec::new();
        }
        vec![
            Wake {
                feed: productbuilder_builds::feeds::ROWS,
                worker: LOOP_WORKER,
            },
            Wake {
                feed: productbuilder_preview::feeds::ROWS,
                worker: LOOP_WORKER,
            },
        ]
    }
}

impl productbuilder_routes::Module for AgentModule {
    fn routes(&self) -> Vec<Route> {
        match &self.traces {
            Some((traces, _)) => crate::routes::routes(traces.clone()),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use productbuilder_builds::QueueConfig;

    use super::*;

    fn units(m: &AgentModule) -> Vec<(&'static str, Scope)> {
        m.workers().iter().map(|s| (s.resource, s.scope)).collect()
    }

    #[test]
    fn the_loop_runs_only_with_llm_slack_and_builds() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Store::in_memory().unwrap();
        let slack = SlackApi::new("http://127.0.0.1:9", "xoxb-test", 1000).unwrap();
        let queue = Queue::new(store.clone(), QueueConfig::default());
        let parts = |slack: Option<SlackApi>, queue: Option<Queue>| LoopParts {
            slack,
            queue,
            previews: None,
            max_fix_attempts: 1,
        };
        let hour = Duration::from_secs(3600);
        let minute = Duration::from_secs(60);

        let all = AgentModule::new(store.clone(), Some(hour), minute)
            .with_loop(parts(Some(slack.clone()), Some(queue.clone())))
            .unwrap();
        assert_eq!(
            units(&all),
            [
                ("agent-traces", Scope::Global),
                ("agent-loop", Scope::PerTenant)
            ]
        );
        let wakes: Vec<_> = all.wakes().iter().map(|w| (w.feed, w.worker)).collect();
        assert_eq!(
            wakes,
            [
                (productbuilder_builds::feeds::ROWS, "agent-loop"),
                (productbuilder_preview::feeds::ROWS, "agent-loop")
            ]
        );

        let cases = [
            ("no [llm]", None, Some(slack.clone()), Some(queue.clone())),
            ("no [slack]", Some(hour), None, Some(queue.clone())),
            ("no [builds]", Some(hour), Some(slack.clone()), None),
        ];
        for (name, retention, slack, queue) in cases {
            let m = AgentModule::new(store.clone(), retention, minute)
                .with_loop(parts(slack, queue))
                .unwrap();
            assert!(!units(&m).iter().any(|(r, _)| *r == "agent-loop"), "{name}");
            assert!(m.wakes().is_empty(), "{name}");
        }
    }
}
