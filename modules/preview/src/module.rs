//! The preview units: `preflight:previews:{owner}/{name}` and `worker:previews:{owner}/{name}`
//! for tenants with previews on, both running the same reconcile (the preflight first polls the
//! open pull requests itself, so that what runs at start-up comes from GitHub and the engine, not
//! from the database alone); and `preflight:previews:global`, which removes what this host still
//! runs for repositories whose previews were turned off or which left the configuration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use productbuilder_github::{GithubState, poll_pulls};
use productbuilder_planner::{
    AppliesTo, Every, Module, Scope, Spec, TenantCtx, Wake, When, every_tenant, spec_work, stage,
};
use productbuilder_scheduler::{ErrorKind, RetryPolicy, UnitError};

use crate::reconcile::{Previews, ReconcileError};

pub struct PreviewModule {
    pub previews: Previews,
    pub github: GithubState,
    /// Timeout of one unit run (a reconcile only starts deploys; it does not wait for them).
    pub run_timeout: Duration,
    /// Every configured repository (`owner/name`, as configured) and whether it has previews on:
    /// this module's own per-tenant table, from [`crate::config::PreviewConfig`].
    pub tenants: Arc<BTreeMap<String, bool>>,
}

impl PreviewModule {
    /// Only tenants with previews on get the per-tenant preview units.
    fn with_previews(&self) -> AppliesTo {
        let tenants = self.tenants.clone();
        Arc::new(move |tenant| tenants.get(&tenant.repo()).copied().unwrap_or(false))
    }
}

fn unit_error(e: ReconcileError) -> UnitError {
    match e {
        // The engine may still be starting: retried by the network rule, then the preflight fails
        // for good and `run` exits 1 with this message, which names the socket.
        ReconcileError::Engine(m) => UnitError::new(ErrorKind::Network, m),
        // Compose v1 or no Compose at all: the message says how to install v2.
        ReconcileError::Compose(m) => UnitError::new(ErrorKind::Validation, m),
        ReconcileError::Store {
            message,
            busy: true,
        } => UnitError::new(ErrorKind::Timeout, message),
        ReconcileError::Store {
            message,
            busy: false,
        } => UnitError::new(ErrorKind::Internal, message),
    }
}

impl Module for PreviewModule {
    fn name(&self) -> &'static str {
        "preview"
    }

    /// A changed set of open pull requests reconciles that tenant's previews at once, instead
    /// of at the next interval.
    fn feeds(&self) -> Vec<productbuilder_planner::Feed> {
        vec![crate::feeds::rows(self.previews.clone())]
    }

    fn wakes(&self) -> Vec<Wake> {
        vec![Wake {
            feed: productbuilder_github::feeds::PULLS,
            worker: "previews",
        }]
    }

    fn preflights(&self) -> Vec<Spec> {
        let (previews, github) = (self.previews.clone(), self.github.clone());
        let sweeper = self.previews.clone();
        vec![
            Spec {
                resource: "previews",
                scope: Scope::Global,
                when: When::Preflight {
                    stage: stage::RECONCILE,
                },
                timeout: self.run_timeout,
                retry: RetryPolicy::remote_api(),
                applies_to: every_tenant(),
                work: spec_work(move |_ctx: TenantCtx| {
                    let previews = sweeper.clone();
                    async move { previews.sweep().await.map(|_| ()).map_err(unit_error) }
                }),
            },
            Spec {
                resource: "previews",
                scope: Scope::PerTenant,
                when: When::Preflight {
                    stage: stage::RECONCILE,
                },
                timeout: self.run_timeout,
                retry: RetryPolicy::remote_api(),
                applies_to: self.with_previews(),
                work: spec_work(move |ctx: TenantCtx| {
                    let (previews, github) = (previews.clone(), github.clone());
                    async move {
                        let tenant = ctx.tenant();
                        previews.engine().await.map_err(unit_error)?;
                        poll_pulls(&github, tenant).await?;
                        previews.reconcile(&tenant.repo()).await.map_err(unit_error)
                    }
                }),
            },
        ]
    }

    fn workers(&self) -> Vec<Spec> {
        let previews = self.previews.clone();
        vec![Spec {
            resource: "previews",
            scope: Scope::PerTenant,
            when: When::Worker(Every::PollInterval),
            timeout: self.run_timeout,
            retry: RetryPolicy::remote_api(),
            applies_to: self.with_previews(),
            work: spec_work(move |ctx: TenantCtx| {
                let previews = previews.clone();
                async move {
                    previews
                        .reconcile(&ctx.tenant().repo())
                        .await
                        .map_err(unit_error)
                }
            }),
        }]
    }
}
