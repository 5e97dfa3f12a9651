//! Feeds: what a module publishes, and which feed wakes which of its units.
//!
//! A module publishes per-tenant [`Feed`]s named `{module}:{feed}` ("github:pulls": the open pull
//! requests of a repository) and declares [`Wake`]s ("a change of github:pulls of a tenant nudges
//! that tenant's `worker:previews`"). [`subscriptions`] resolves the declarations against the
//! tenants and the plan; the binary relays each subscription's changes to the scheduler as
//! nudges. A unit is never told why it runs: a nudge only runs it earlier.

use std::sync::Arc;

use futures_util::stream::BoxStream;
use productbuilder_scheduler::UnitSpec;

use crate::{Module, PlanError, Tenant};

/// The changes of one tenant's feed: one item per change of its value (not per publication: a
/// publisher that republishes an equal value yields nothing). Ends when the publisher is gone.
pub type Changes = BoxStream<'static, ()>;

/// A per-tenant feed a module publishes.
#[derive(Clone)]
pub struct Feed {
    /// `{module}:{feed}`, lowercase: what a [`Wake`] names.
    pub name: &'static str,
    /// A new subscription to one tenant's feed.
    pub subscribe: Arc<dyn Fn(&Tenant) -> Changes + Send + Sync>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("name", &self.name).finish()
    }
}

/// A module's declaration: a change of `feed` of a tenant nudges that tenant's unit
/// `worker:{worker}:{owner}/{name}` (when the plan has it: tenants without the unit are skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wake {
    pub feed: &'static str,
    pub worker: &'static str,
}

/// One resolved wake: the changes of one tenant's feed, and the unit they nudge.
pub struct Subscription {
    /// `{feed}:{owner}/{name}`, for logs.
    pub feed: String,
    pub unit: String,
    pub changes: Changes,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("feed", &self.feed)
            .field("unit", &self.unit)
            .finish_non_exhaustive()
    }
}

/// Every module's wakes against the published feeds, the tenants and the planned `units`. A wake
/// on a feed no module publishes, or two modules publishing one feed name, refuses the plan.
pub fn subscriptions(
    modules: &[&dyn Module],
    tenants: &[Arc<Tenant>],
    units: &[UnitSpec],
) -> Result<Vec<Subscription>, PlanError> {
    let mut problems = Vec::new();
    let feeds: Vec<(&'static str, Feed)> = modules
        .iter()
        .flat_map(|m| m.feeds().into_iter().map(move |f| (m.name(), f)))
        .collect();
    for (i, (module, feed)) in feeds.iter().enumerate() {
        if let Some((other, _)) = feeds[..i].iter().find(|(_, f)| f.name == feed.name) {
            problems.push(format!(
                "feed {} is published by both module {other} and module {module}",
                feed.name
            ));
        }
    }
    let mut subscriptions = Vec::new();
    for module in modules {
        for wake in module.wakes() {
            let Some((_, feed)) = feeds.iter().find(|(_, f)| f.name == wake.feed) else {
                problems.push(format!(
                    "module {}: wakes on feed {}, which no module publishes",
                    module.name(),
                    wake.feed
                ));
                continue;
            };
            for tenant in tenants {
                let unit = format!("worker:{}:{}", wake.worker, tenant.repo());
                if units.iter().any(|u| u.name == unit) {
                    subscriptions.push(Subscription {
                        feed: format!("{}:{}", feed.name, tenant.repo()),
                        unit,
                        changes: (feed.subscribe)(tenant),
                    });
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(subscriptions)
    } else {
        Err(PlanError(problems))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use productbuilder_scheduler::RetryPolicy;

    use super::*;
    use crate::{Every, RepoIdCell, Scope, Spec, TenantCtx, When, plan, spec_work};

    /// Publishes `pulls`, one change per tenant; its subscribers' streams say which tenant.
    struct Publisher;

    impl Module for Publisher {
        fn name(&self) -> &'static str {
            "source"
        }
        fn feeds(&self) -> Vec<Feed> {
            vec![Feed {
                name: "source:pulls",
                subscribe: Arc::new(|_| futures_util::stream::iter([()]).boxed()),
            }]
        }
    }

    /// A worker for the tenants it names, woken by `feed`.
    struct Subscriber {
        feed: &'static str,
        tenants: Vec<&'static str>,
    }

    impl Module for Subscriber {
        fn name(&self) -> &'static str {
            "sink"
        }
        fn workers(&self) -> Vec<Spec> {
            let tenants = self.tenants.clone();
            vec![Spec {
                resource: "sink",
                scope: Scope::PerTenant,
                when: When::Worker(Every::PollInterval),
                timeout: Duration::from_secs(1),
                retry: RetryPolicy::remote_api(),
                applies_to: Arc::new(move |t| tenants.contains(&t.repo().as_str())),
                work: spec_work(|_: TenantCtx| async { Ok(()) }),
            }]
        }
        fn wakes(&self) -> Vec<Wake> {
            vec![Wake {
                feed: self.feed,
                worker: "sink",
            }]
        }
    }

    fn tenant(repo: &str) -> Arc<Tenant> {
        let (owner, name) = repo.split_once('/').unwrap();
        Arc::new(Tenant {
            owner: owner.into(),
            name: name.into(),
            poll_interval: Duration::from_secs(30),
            source: format!("tenants/{name}.toml"),
            repo_id: RepoIdCell::default(),
        })
    }

    #[tokio::test]
    async fn a_wake_subscribes_the_tenants_that_have_the_unit() {
        let tenants = [tenant("acme/shop"), tenant("acme/blog")];
        let sink = Subscriber {
            feed: "source:pulls",
            tenants: vec!["acme/shop"],
        };
        let modules: [&dyn Module; 2] = [&Publisher, &sink];
        let units = plan(&modules, &tenants, Duration::from_secs(30)).unwrap();
        let subs = subscriptions(&modules, &tenants, &units).unwrap();
        let described: Vec<(&str, &str)> = subs
            .iter()
            .map(|s| (s.feed.as_str(), s.unit.as_str()))
            .collect();
        assert_eq!(
            described,
            [("source:pulls:acme/shop", "worker:sink:acme/shop")]
        );
        let mut changes = subs.into_iter().next().unwrap().changes;
        assert_eq!(changes.next().await, Some(()));
        assert_eq!(changes.next().await, None);
    }

    #[test]
    fn a_wake_on_an_unpublished_feed_refuses_the_plan() {
        let tenants = [tenant("acme/shop")];
        let sink = Subscriber {
            feed: "source:issues",
            tenants: vec!["acme/shop"],
        };
        let modules: [&dyn Module; 2] = [&Publisher, &sink];
        let units = plan(&modules, &tenants, Duration::from_secs(30)).unwrap();
        let err = subscriptions(&modules, &tenants, &units).unwrap_err();
        assert_eq!(
            err.0,
            ["module sink: wakes on feed source:issues, which no module publishes"]
        );
        let twice: [&dyn Module; 2] = [&Publisher, &Publisher];
        let err = subscriptions(&twice, &tenants, &[]).unwrap_err();
        assert_eq!(
            err.0,
            ["feed source:pulls is published by both module source and module source"]
        );
    }
}
