//! The planner: the only place that knows how configured tenants turn into scheduler units.
//!
//! # Brief overview
//! - A [`Module`] (GitHub polling, previews, Slack, ...) declares [`Spec`]s: a resource name, a
//!   [`Scope`] (once per tenant, or once globally), a schedule, retry rules and a work function
//!   that receives a [`TenantCtx`].
//! - [`plan`] multiplies tenants by specs into [`UnitSpec`]s named
//!   `{phase}:{resource}:{owner}/{name}` (or `{phase}:{resource}:global`), and refuses a plan with
//!   duplicate names or malformed resources before anything runs.
//! - [`feeds`]: a module's [`Feed`]s (what it publishes) and [`Wake`]s (which feed nudges which of
//!   its units), resolved by [`subscriptions`] against the tenants and the plan.
//! - [`names`] derives every preview's Compose project, workspace and host with a collision-free
//!   encoding, and [`check_names`] refuses tenants whose preview hosts could still meet.
//!
//! # Why the planner is pure
//! `plan` reads no file, database or network: `productbuilder plan` prints exactly what `run` would
//! schedule, and it can be tested as "tenants in, unit list out". Everything a unit needs at run
//! time reaches it through its captured module state and the [`TenantCtx`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use productbuilder_scheduler::{
    RestartPolicy, RetryPolicy, RunCtx, RunFuture, Schedule, TenantId, UnitError, UnitSpec,
};

pub mod feeds;
pub mod names;

pub use feeds::{Changes, Feed, Subscription, Wake, subscriptions};

/// GitHub's numeric repository id, shared by every unit of a tenant. Empty until a preflight (or
/// the database) fills it; 0 is never a valid id, so it stands for "unknown".
#[derive(Debug, Clone, Default)]
pub struct RepoIdCell(Arc<AtomicU64>);

impl RepoIdCell {
    pub fn get(&self) -> Option<u64> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    pub fn set(&self, id: u64) {
        self.0.store(id, Ordering::Release);
    }
}

/// One configured repository, as units see it. Modules keep their own per-tenant settings (keyed
/// by [`Tenant::repo`]): no module has a field here.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub owner: String,
    pub name: String,
    /// How often this tenant's pollers run.
    pub poll_interval: Duration,
    /// The file the tenant was configured in, for messages.
    pub source: String,
    pub repo_id: RepoIdCell,
}

impl Tenant {
    /// `owner/name`.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// What a unit run receives: the scheduler's context plus, for per-tenant units, its tenant.
#[derive(Debug, Clone)]
pub struct TenantCtx {
    pub run: RunCtx,
    pub tenant: Option<Arc<Tenant>>,
}

impl TenantCtx {
    /// The tenant of a per-tenant unit.
    ///
    /// # Panics
    /// When called from a global unit: that is a bug in the module, caught by its first test.
    pub fn tenant(&self) -> &Arc<Tenant> {
        self.tenant
            .as_ref()
            .expect("tenant() called from a global unit")
    }
}

/// Which tenants get a unit of a per-tenant spec. A closure, so that a module decides from its own
/// per-tenant configuration (for example the preview module from each tenant's `previews`).
pub type AppliesTo = Arc<dyn Fn(&Tenant) -> bool + Send + Sync + 'static>;

/// The work function of a spec.
pub type SpecWork = Arc<dyn Fn(TenantCtx) -> RunFuture + Send + Sync + 'static>;

/// Wraps an async closure as a [`SpecWork`].
pub fn spec_work<F, Fut>(f: F) -> SpecWork
where
    F: Fn(TenantCtx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), UnitError>> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}

/// Whether a spec yields one unit per tenant or one in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    PerTenant,
    Global,
}

/// How often a worker spec runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    /// The tenant's `poll_interval` (global units: the default poll interval passed to [`plan`]).
    PollInterval,
    Fixed(Duration),
}

/// When a spec's units run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Preflight {
        stage: u8,
    },
    Worker(Every),
    /// A long-lived task (`service:{resource}:{scope}`), started once its tenant's preflights
    /// passed and restarted with this policy whenever it stops; its run gets
    /// `ctx.run.health` to say when it is degraded. `timeout` and `retry` do not apply.
    Service(RestartPolicy),
}

/// Preflight stages in use; a later stage may rely on an earlier one.
pub mod stage {
    /// Database migrations.
    pub const DATABASE: u8 = 0;
    /// Checks of each repository against the remote API.
    pub const REPOSITORY: u8 = 1;
    /// Reconciling what runs on this host (previews) with what the repositories want.
    pub const RECONCILE: u8 = 2;
}

/// One kind of unit a module contributes.
#[derive(Clone)]
pub struct Spec {
    /// The middle part of the unit name: lowercase letters, digits and `-`.
    pub resource: &'static str,
    pub scope: Scope,
    pub when: When,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Per-tenant specs only: which tenants get a unit (for example "previews enabled").
    pub applies_to: AppliesTo,
    pub work: SpecWork,
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spec")
            .field("resource", &self.resource)
            .field("scope", &self.scope)
            .field("when", &self.when)
            .finish_non_exhaustive()
    }
}

/// `applies_to` for specs that every tenant gets.
pub fn every_tenant() -> AppliesTo {
    Arc::new(|_| true)
}

/// A vertical of the daemon. Modules only declare; the planner decides how many units exist.
pub trait Module: Send + Sync {
    /// For messages: `"github"`, `"preview"`, ...
    fn name(&self) -> &'static str;
    fn preflights(&self) -> Vec<Spec> {
        Vec::new()
    }
    /// Workers, and services ([`When::Service`]).
    fn workers(&self) -> Vec<Spec> {
        Vec::new()
    }
    /// The per-tenant feeds this module publishes ([`feeds`]).
    fn feeds(&self) -> Vec<Feed> {
        Vec::new()
    }
    /// Which feed wakes which of this module's units ([`feeds`]).
    fn wakes(&self) -> Vec<Wake> {
        Vec::new()
    }
}

/// Why a plan was refused. Every problem is reported, not only the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError(pub Vec<String>);

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the plan is invalid: {}", self.0.join("; "))
    }
}

impl std::error::Error for PlanError {}

/// Multiplies tenants by the modules' specs. Preflights come first, then workers, each in module
/// order and then tenant order, so the output is stable.
pub fn plan(
    modules: &[&dyn Module],
    tenants: &[Arc<Tenant>],
    default_interval: Duration,
) -> Result<Vec<UnitSpec>, PlanError> {
    let mut problems = Vec::new();
    let mut units = Vec::new();
    let specs = modules
        .iter()
        .flat_map(|m| m.preflights().into_iter().map(move |s| (m.name(), s)))
        .chain(
            modules
                .iter()
                .flat_map(|m| m.workers().into_iter().map(move |s| (m.name(), s))),
        );
    for (module, spec) in specs {
        let valid = !spec.resource.is_empty()
            && spec
                .resource
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            problems.push(format!(
                "module {module}: resource {:?} must be lowercase letters, digits and '-'",
                spec.resource
            ));
            continue;
        }
        let mut targets: Vec<Option<Arc<Tenant>>> = match spec.scope {
            Scope::Global => vec![None],
            Scope::PerTenant => tenants
                .iter()
                .filter(|t| (spec.applies_to)(t))
                .cloned()
                .map(Some)
                .collect(),
        };
        for tenant in targets.drain(..) {
            let (phase, schedule) = match spec.when {
                When::Preflight { stage } => ("preflight", Schedule::Preflight { stage }),
                When::Worker(every) => {
                    let interval = match (every, &tenant) {
                        (Every::Fixed(d), _) => d,
                        (Every::PollInterval, Some(t)) => t.poll_interval,
                        (Every::PollInterval, None) => default_interval,
                    };
                    ("worker", Schedule::Worker { interval })
                }
                When::Service(restart) => ("service", Schedule::Service { restart }),
            };
            let scope = tenant
                .as_ref()
                .map_or_else(|| "global".to_owned(), |t| t.repo());
            let name = format!("{phase}:{}:{scope}", spec.resource);
            if let Schedule::Worker { interval } = schedule
                && interval.is_zero()
            {
                problems.push(format!("{name}: the interval must be longer than zero"));
                continue;
            }
            let work = spec.work.clone();
            let run_tenant = tenant.clone();
            units.push(UnitSpec {
                name,
                tenant: tenant.as_ref().map(|t| TenantId::from(t.repo())),
                schedule,
                timeout: spec.timeout,
                retry: spec.retry.clone(),
                work: Arc::new(move |run| {
                    work(TenantCtx {
                        run,
                        tenant: run_tenant.clone(),
                    })
                }),
            });
        }
    }
    let mut names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
    names.sort_unstable();
    for pair in names.windows(2) {
        if pair[0] == pair[1] {
            problems.push(format!("unit {} is planned twice", pair[0]));
        }
    }
    problems.dedup();
    if problems.is_empty() {
        Ok(units)
    } else {
        Err(PlanError(problems))
    }
}

/// Refuses tenants whose previews could get the same host from `url_template` (see
/// [`names::conflicts`]), naming both tenants and their files; only tenants for which
/// `has_previews` holds are compared. Compose projects and workspaces need no check:
/// [`names::project`] is distinct for distinct repositories by construction.
pub fn check_names(
    tenants: &[Arc<Tenant>],
    url_template: &str,
    domain: &str,
    has_previews: &dyn Fn(&Tenant) -> bool,
) -> Result<(), PlanError> {
    let tenants: Vec<&Tenant> = tenants
        .iter()
        .map(Arc::as_ref)
        .filter(|t| has_previews(t))
        .collect();
    let problems = names::conflicts(&tenants, url_template, domain);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PlanError(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Fake {
        seen: Arc<Mutex<Vec<String>>>,
        resource: &'static str,
        /// The tenants that get the `previews` worker: the module's own per-tenant setting.
        with_previews: Vec<&'static str>,
    }

    impl Module for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn preflights(&self) -> Vec<Spec> {
            vec![
                self.spec("database", Scope::Global, When::Preflight { stage: 0 }),
                self.spec(
                    self.resource,
                    Scope::PerTenant,
                    When::Preflight { stage: 1 },
                ),
            ]
        }
        fn workers(&self) -> Vec<Spec> {
            let mut previews = self.spec(
                "previews",
                Scope::PerTenant,
                When::Worker(Every::Fixed(Duration::from_secs(5))),
            );
            let with_previews = self.with_previews.clone();
            previews.applies_to = Arc::new(move |t| with_previews.contains(&t.repo().as_str()));
            vec![
                self.spec("pulls", Scope::PerTenant, When::Worker(Every::PollInterval)),
                previews,
            ]
        }
    }

    impl Fake {
        fn spec(&self, resource: &'static str, scope: Scope, when: When) -> Spec {
            let seen = self.seen.clone();
            Spec {
                resource,
                scope,
                when,
                timeout: Duration::from_secs(10),
                retry: RetryPolicy::remote_api(),
                applies_to: every_tenant(),
                work: spec_work(move |ctx: TenantCtx| {
                    let seen = seen.clone();
                    async move {
                        let who = match &ctx.tenant {
                            Some(t) => format!("{} id={:?}", t.repo(), t.repo_id.get()),
                            None => "global".to_owned(),
                        };
                        seen.lock().unwrap().push(format!("{} {who}", ctx.run.unit));
                        Ok(())
                    }
                }),
            }
        }
    }

    fn tenant(repo: &str, secs: u64) -> Arc<Tenant> {
        let (owner, name) = repo.split_once('/').unwrap();
        Arc::new(Tenant {
            owner: owner.into(),
            name: name.into(),
            poll_interval: Duration::from_secs(secs),
            source: format!("tenants/{name}.toml"),
            repo_id: RepoIdCell::default(),
        })
    }

    fn describe(units: &[UnitSpec]) -> Vec<String> {
        units
            .iter()
            .map(|u| match u.schedule {
                Schedule::Preflight { stage } => format!("{} stage={stage}", u.name),
                Schedule::Worker { interval } => format!("{} every={interval:?}", u.name),
                Schedule::Service { .. } => format!("{} service", u.name),
            })
            .collect()
    }

    #[test]
    fn tenants_times_specs_in_a_stable_order() {
        let fake = Fake {
            seen: Default::default(),
            resource: "repository",
            with_previews: vec!["acme/shop"],
        };
        let tenants = [tenant("acme/shop", 15), tenant("acme/blog", 30)];
        let units = plan(&[&fake], &tenants, Duration::from_secs(60)).unwrap();
        assert_eq!(
            describe(&units),
            [
                "preflight:database:global stage=0",
                "preflight:repository:acme/shop stage=1",
                "preflight:repository:acme/blog stage=1",
                "worker:pulls:acme/shop every=15s",
                "worker:pulls:acme/blog every=30s",
                "worker:previews:acme/shop every=5s",
            ]
        );
        assert_eq!(
            units[1].tenant.as_ref().map(TenantId::as_str),
            Some("acme/shop")
        );
        assert_eq!(units[0].tenant, None);
    }

    #[tokio::test]
    async fn units_receive_their_tenant_and_its_cached_repository_id() {
        let fake = Fake {
            seen: Default::default(),
            resource: "repository",
            with_previews: vec!["acme/shop"],
        };
        let shop = tenant("acme/shop", 15);
        shop.repo_id.set(1296269);
        let units = plan(&[&fake], &[shop], Duration::from_secs(60)).unwrap();
        for unit in &units[..2] {
            let ctx = RunCtx::new(unit.name.as_str(), 1, Default::default());
            (unit.work)(ctx).await.unwrap();
        }
        assert_eq!(
            *fake.seen.lock().unwrap(),
            [
                "preflight:database:global global",
                "preflight:repository:acme/shop acme/shop id=Some(1296269)",
            ]
        );
    }

    #[test]
    fn duplicates_and_bad_resources_are_all_reported() {
        let fake = Fake {
            seen: Default::default(),
            resource: "Repo Sitory",
            with_previews: vec![],
        };
        let twice = [tenant("acme/shop", 15), tenant("acme/shop", 15)];
        let err = plan(&[&fake], &twice, Duration::from_secs(60)).unwrap_err();
        assert!(err.0.iter().any(|p| p.contains("\"Repo Sitory\"")), "{err}");
        assert!(
            err.0
                .iter()
                .any(|p| p == "unit worker:pulls:acme/shop is planned twice"),
            "{err}"
        );
    }

    #[test]
    fn a_zero_interval_is_refused() {
        let fake = Fake {
            seen: Default::default(),
            resource: "repository",
            with_previews: vec!["acme/shop"],
        };
        let err = plan(&[&fake], &[tenant("acme/shop", 0)], Duration::from_secs(60)).unwrap_err();
        assert_eq!(
            err.0,
            ["worker:pulls:acme/shop: the interval must be longer than zero"]
        );
    }

    #[test]
    fn services_are_named_by_their_phase_and_carry_their_tenant() {
        struct Sockets;
        impl Module for Sockets {
            fn name(&self) -> &'static str {
                "sockets"
            }
            fn workers(&self) -> Vec<Spec> {
                vec![Spec {
                    resource: "socket",
                    scope: Scope::PerTenant,
                    when: When::Service(RestartPolicy::default()),
                    timeout: Duration::from_secs(10),
                    retry: RetryPolicy::never(),
                    applies_to: every_tenant(),
                    work: spec_work(|_ctx: TenantCtx| async { Ok(()) }),
                }]
            }
        }
        let units = plan(
            &[&Sockets],
            &[tenant("acme/shop", 15)],
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(describe(&units), ["service:socket:acme/shop service"]);
        assert_eq!(
            units[0].schedule,
            Schedule::Service {
                restart: RestartPolicy::default()
            }
        );
        assert_eq!(units[0].tenant, Some(TenantId::from("acme/shop")));
    }
}
