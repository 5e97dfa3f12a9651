//! The agent as the planner and the HTTP seam see it, so far: with `[llm]`, its traces are
//! served (`GET /agent/runs/{id}`) and kept `[llm] trace_retention`
//! (`worker:agent-traces:global`, hourly). Without `[llm]` it has no unit and no route. The runs
//! themselves are not started from Slack yet (issue 12).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use productbuilder_planner::{
    Every, Module, Scope, Spec, TenantCtx, When, every_tenant, spec_work,
};
use productbuilder_routes::Route;
use productbuilder_scheduler::{RetryPolicy, UnitError};
use productbuilder_store::Store;

use crate::trace::Traces;

/// How often old traces are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The agent's traces; nothing without `[llm]`.
pub struct AgentModule {
    /// `Some((traces, retention))` with `[llm]`.
    traces: Option<(Traces, Duration)>,
    run_timeout: Duration,
}

impl AgentModule {
    /// `retention` is `[llm] trace_retention`; `None` without `[llm]`.
    pub fn new(store: Store, retention: Option<Duration>, run_timeout: Duration) -> AgentModule {
        AgentModule {
            traces: retention.map(|r| (Traces::new(store), r)),
            run_timeout,
        }
    }
}

async fn prune(traces: &Traces, retention: Duration) -> Result<(), UnitError> {
    let gone = traces.prune(Utc::now(), retention).await?;
    if gone > 0 {
        tracing::info!(
            runs = gone,
            "agent: traces older than trace_retention removed"
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
        vec![Spec {
            resource: "agent-traces",
            scope: Scope::Global,
            when: When::Worker(Every::Fixed(PRUNE_EVERY)),
            timeout: self.run_timeout,
            retry: RetryPolicy::remote_api(),
            applies_to: every_tenant(),
            work: spec_work(move |_ctx: TenantCtx| {
                let traces = traces.clone();
                async move { prune(&traces, retention).await }
            }),
        }]
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
