//! The kernel's own units: the database migration, the first (global) preflight.

use std::sync::Arc;
use std::time::Duration;

use productbuilder_planner::{Module, Scope, Spec, Tenant, When, every_tenant, spec_work, stage};
use productbuilder_scheduler::{ErrorKind, RetryPolicy, RetryRule, UnitError};
use productbuilder_store::Store;

/// Migrates the database, then fills every tenant's cached repository id from it.
pub struct Kernel {
    pub store: Store,
    pub tenants: Vec<Arc<Tenant>>,
}

impl Module for Kernel {
    fn name(&self) -> &'static str {
        "kernel"
    }

    fn preflights(&self) -> Vec<Spec> {
        let store = self.store.clone();
        let tenants = self.tenants.clone();
        vec![Spec {
            resource: "database",
            scope: Scope::Global,
            when: When::Preflight {
                stage: stage::DATABASE,
            },
            timeout: Duration::from_secs(120),
            // Another process holding the write lock (a backup, an operator's shell) is worth
            // waiting for; anything else about a local database will not fix itself.
            retry: RetryPolicy::new(vec![RetryRule {
                name: "database-busy",
                kinds: vec![ErrorKind::Timeout],
                base: Duration::from_secs(1),
                max: Duration::from_secs(10),
                attempts: 5,
            }]),
            applies_to: every_tenant(),
            work: spec_work(move |_ctx| {
                let store = store.clone();
                let tenants = tenants.clone();
                async move {
                    let migrator = store.clone();
                    tokio::task::spawn_blocking(move || migrator.migrate())
                        .await
                        .map_err(|e| UnitError::new(ErrorKind::Internal, e.to_string()))?
                        .map_err(UnitError::from)?;
                    for tenant in &tenants {
                        if let Some(id) = store
                            .tenant_repo_id(&tenant.repo())
                            .await
                            .map_err(UnitError::from)?
                        {
                            tenant.repo_id.set(id);
                        }
                    }
                    Ok(())
                }
            }),
        }]
    }
}

/// The kernel's routes (health, readiness, metrics, the dashboard) are the binary's own
/// (`http::ROUTES`).
impl productbuilder_routes::Module for Kernel {}
