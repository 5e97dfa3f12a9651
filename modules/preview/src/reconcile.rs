//! The previews reconciler: for one tenant, the desired state (its open pull requests that the
//! tenant's rules allow, each at its head sha) against the actual state (the `previews` rows and
//! the containers labelled by productbuilder on the engine), and the actions that close the gap.
//!
//! It is level-triggered: [`Previews::reconcile`] never learns why it was called (a new push, a
//! close, a restart, a vanished container, a timer) and always compares the whole state. A pass is
//! three steps: gather (the pull requests with the rules' verdict and consent, the rows, the
//! labelled containers, the jobs in flight), decide ([`crate::decide`], pure), apply (start jobs,
//! reserve places under `max_previews` in [`crate::capacity`]'s transaction, attach the router,
//! ask for reports). Deploys ([`crate::deploy`]) and removals ([`crate::teardown`]) run as keyed
//! jobs (`productbuilder_jobs`, key `{repo}#{number}`, policy `Replace`), one per pull request at
//! a time; a newer head commit cancels the deploy in flight (killing its Compose process) instead
//! of queueing behind it, and a panic frees the key. Reporting ([`crate::report`]) and log
//! streaming ([`crate::logs`]) have their own files.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use productbuilder_github::{GithubState, MarkerComments, Pull, Reporter};
use productbuilder_jobs::{JobSpec, Jobs};
use productbuilder_store::Store;
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::archive::Limits;
use crate::backoff::Backoffs;
use crate::capacity::{self, Reserved};
use crate::consent;
use crate::db::{self, DeletedReason, Details, PreviewRow};
use crate::decide::{self, Action, Job, OpenPull};
use crate::engine::Engine;
use crate::policy::Policy;
use crate::runner::ComposeCli;
use crate::state::{Event, Status};

pub use crate::logs::{LogsError, MAX_FOLLOW_DURATION, MAX_FOLLOWS, at_most};

/// The marker of the one comment per pull request.
pub const MARKER: &str = "<!-- productbuilder:preview -->";

/// The longest wait before a deploy the host failed is tried again.
const HOST_RETRY_MAX: Duration = Duration::from_secs(600);

/// Host-wide preview settings (`[preview]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Workspaces live under `{state_dir}/previews/{project}`.
    pub state_dir: PathBuf,
    pub domain: String,
    /// Placeholders `{owner}` `{repo}` (as `names::label` writes them) `{number}` `{domain}`.
    pub url_template: String,
    pub compose_command: Vec<String>,
    pub network: String,
    pub entrypoint: String,
    pub cert_resolver: Option<String>,
    pub max_previews: usize,
    pub max_builds: usize,
    pub ttl: Duration,
    /// Where this daemon's HTTP API is reachable by people, for log links; none when unknown.
    pub public_url: Option<String>,
    pub limits: Limits,
    /// Whether previews may open connections out of their networks.
    pub egress: Egress,
    /// The first wait before a deploy the host failed is tried again (doubled per failure).
    pub host_retry: Duration,
    /// `[preview] docker_config`: the directory Compose gets as `DOCKER_CONFIG` (registry
    /// credentials for image pulls and builds, and its `cli-plugins`); none means builds see no
    /// registry credentials of the operator's.
    pub docker_config: Option<PathBuf>,
}

/// `[preview] egress`: whether a preview's containers may open connections out of its networks.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Egress {
    /// Outbound traffic is allowed (package registries, APIs), and so is the host's network.
    #[default]
    Open,
    /// Every network of a preview is internal: the router still reaches it, nothing leaves it.
    None,
}

/// One tenant's rules (`[preview]` in its file).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRules {
    pub allow_forks: bool,
    /// GitHub only lets people with triage or write access add labels, so a label on a fork's pull
    /// request is the maintainers' consent.
    pub fork_label: String,
    /// Only pull requests carrying `fork_label` get a preview: an opt-in per pull request, and a
    /// way to retry a failed preview without a push (remove the label, add it again).
    pub require_label: bool,
    pub drafts: bool,
    pub policy: Policy,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    /// `[preview.env.<service>]`: variables for named services of the pull request's compose
    /// file, ordered by service, then name.
    pub env: Vec<PreviewVar>,
    /// Whether fork pull requests get the secret variables too; like GitHub Actions, they do not
    /// by default (anyone can open one, and its code would read them).
    pub secrets_for_forks: bool,
}

/// A value that must never be shown: `Debug` and `Display` print `[redacted]`, only
/// [`Secret::expose`] reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that hands it to the preview.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One environment variable a tenant gives a service of its previews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewVar {
    /// The Compose service it is set on.
    pub service: String,
    pub name: String,
    /// Redacted even when not secret: a plain value may still be something nobody should read
    /// in a log.
    pub value: Secret,
    /// Read from a `<NAME>_file`: withheld from fork pull requests unless `secrets_for_forks`.
    pub secret: bool,
}

impl PreviewVar {
    /// Names the daemon sets itself, which a tenant cannot override.
    pub const RESERVED: &[&str] = &["BASE_URL"];
    /// A prefix the daemon keeps for its own variables.
    pub const RESERVED_PREFIX: &str = "PRODUCTBUILDER_";

    /// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
    pub fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    /// Whether the daemon sets (or may later set) `name` itself.
    pub fn reserved(name: &str) -> bool {
        Self::RESERVED.contains(&name) || name.starts_with(Self::RESERVED_PREFIX)
    }
}

impl Default for TenantRules {
    fn default() -> Self {
        TenantRules {
            allow_forks: false,
            fork_label: "preview".into(),
            require_label: false,
            drafts: false,
            policy: Policy::default(),
            cpus: Some(1.0),
            memory: Some("1g".into()),
            env: Vec::new(),
            secrets_for_forks: false,
        }
    }
}

impl TenantRules {
    /// Whether `pull` gets a preview.
    pub fn wants(&self, pull: &Pull) -> bool {
        if pull.draft && !self.drafts {
            return false;
        }
        let labelled = pull.labels.contains(&self.fork_label);
        if self.require_label && !labelled {
            return false;
        }
        !pull.fork || self.allow_forks || labelled
    }

    /// The variables a pull request's preview gets: all of them, except the secret ones when
    /// the pull request comes from a fork and the tenant has not set `secrets_for_forks`.
    pub fn env_for(&self, fork: bool) -> impl Iterator<Item = &PreviewVar> {
        let withhold = fork && !self.secrets_for_forks;
        self.env.iter().filter(move |v| !(withhold && v.secret))
    }

    /// The variables [`TenantRules::env_for`] leaves out, so that the comment can say which
    /// names a fork's preview runs without (names only, never values).
    pub fn env_withheld(&self, fork: bool) -> impl Iterator<Item = &PreviewVar> {
        let withhold = fork && !self.secrets_for_forks;
        self.env.iter().filter(move |v| withhold && v.secret)
    }
}

/// The key of a pull request's deploy and removal jobs (`#` is in no repository name).
fn job_key(repo: &str, number: u64) -> String {
    format!("{repo}#{number}")
}

pub(crate) struct Inner {
    pub(crate) settings: Settings,
    pub(crate) rules: HashMap<String, TenantRules>,
    pub(crate) store: Store,
    pub(crate) github: GithubState,
    pub(crate) comments: MarkerComments,
    pub(crate) reporter: Reporter,
    engine: OnceCell<Engine>,
    compose: OnceCell<ComposeCli>,
    pub(crate) builds: Semaphore,
    /// Deploys and removals, at most one per pull request (keyed by [`job_key`], `Replace`,
    /// tagged with their [`Job`]); children of `shutdown`.
    jobs: Jobs,
    /// Log follows open now, per preview.
    pub(crate) follows: crate::logs::Follows,
    /// The report of each pull request, one at a time, and the backoff of transient failures.
    pub(crate) reports: crate::report::Reports,
    /// Deploys that ended ready, failed, or were cancelled by a newer head or shutdown.
    outcomes: [std::sync::atomic::AtomicU64; 3],
    /// Bumped after every recorded step or outcome: what dashboards and tests can await.
    changes: tokio::sync::watch::Sender<u64>,
    /// The repository of every row that moved, for the `preview:rows` feed ([`crate::feeds`]).
    moved: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Deploys the host failed, per pull request: the next is tried after a doubling wait.
    pub(crate) host_failures: Backoffs,
    /// Cancelled at shutdown: tasks stop at their next step, leaving the row where it was; the
    /// next start converges from there.
    shutdown: CancellationToken,
}

/// The previews of every tenant. Cheap to clone.
#[derive(Clone)]
pub struct Previews {
    pub(crate) inner: Arc<Inner>,
}

/// Why a reconcile could not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// The Docker engine is missing or not answering.
    #[error("{0}")]
    Engine(String),
    /// The configured Compose CLI is missing or is not Compose v2: waiting will not mend it.
    #[error("{0}")]
    Compose(String),
    /// The database failed; `busy` when another connection held the lock (worth a retry).
    #[error("{message}")]
    Store { message: String, busy: bool },
}

impl From<crate::engine::EngineError> for ReconcileError {
    fn from(e: crate::engine::EngineError) -> Self {
        ReconcileError::Engine(e.to_string())
    }
}

pub(crate) fn store_err(e: productbuilder_store::StoreError) -> ReconcileError {
    ReconcileError::Store {
        busy: e.is_busy(),
        message: format!("previews database: {e}"),
    }
}

/// A move the state machine refused: a bug, reported as such.
fn refused(e: db::TransitionError) -> ReconcileError {
    ReconcileError::Store {
        busy: false,
        message: format!("previews: {e}"),
    }
}

/// Why a preview cannot be deployed again on request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeployError {
    /// No such preview, removed, or its pull request is no longer open or wanted.
    #[error("{0}")]
    NotFound(String),
    /// The engine, Compose or the database is not answering now.
    #[error("{0}")]
    Unavailable(String),
}

/// What a redeploy request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeploy {
    /// A deploy at this sha was started.
    Started(String),
    /// A deploy at this sha was already under way; it goes on.
    AlreadyDeploying(String),
}

impl Previews {
    pub fn new(
        settings: Settings,
        rules: HashMap<String, TenantRules>,
        store: Store,
        github: GithubState,
    ) -> Previews {
        let comments = MarkerComments::new(github.client.clone(), MARKER);
        let reporter = Reporter::new(github.client.clone());
        let shutdown = CancellationToken::new();
        Previews {
            inner: Arc::new(Inner {
                builds: Semaphore::new(settings.max_builds.max(1)),
                host_failures: Backoffs::new(settings.host_retry, HOST_RETRY_MAX),
                reports: crate::report::Reports::new(),
                settings,
                rules,
                store,
                github,
                comments,
                reporter,
                engine: OnceCell::new(),
                compose: OnceCell::new(),
                jobs: Jobs::builder(&shutdown).build(),
                follows: crate::logs::Follows::default(),
                changes: tokio::sync::watch::channel(0).0,
                moved: tokio::sync::broadcast::channel(crate::feeds::MOVED_BACKLOG).0,
                outcomes: Default::default(),
                shutdown,
            }),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Stops every task at its next step (their rows stay where they were).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Deploys ended so far: (ready, failed, cancelled).
    pub fn outcomes(&self) -> (u64, u64, u64) {
        let [r, f, c] = &self.inner.outcomes;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        (load(r), load(f), load(c))
    }

    /// Image builds running now.
    pub fn builds_running(&self) -> usize {
        self.inner
            .settings
            .max_builds
            .max(1)
            .saturating_sub(self.inner.builds.available_permits())
    }

    /// Counts a deploy's end: 0 ready, 1 failed, 2 cancelled.
    pub(crate) fn count_outcome(&self, index: usize) {
        self.inner.outcomes[index].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Changes whenever a preview's row moved (a step began, a deploy ended, a removal).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// The repository of each row that moves from now on (see [`crate::feeds::rows`]).
    pub fn moved(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.inner.moved.subscribe()
    }

    /// Says that a row of `repo` moved: to `changes` and to the `preview:rows` feed.
    fn announce(&self, repo: &str) {
        self.inner.changes.send_modify(|n| *n += 1);
        // No subscriber (no module wakes on previews) is not an error.
        let _ = self.inner.moved.send(Arc::from(repo));
    }

    /// Waits until no deploy, removal or report is running.
    pub async fn idle(&self) {
        loop {
            self.inner.jobs.idle().await;
            self.inner.reports.idle().await;
            // A task that ended may have started a report meanwhile: check both again.
            if self.inner.jobs.is_idle() && self.inner.reports.is_idle() {
                return;
            }
        }
    }

    /// The deploy and removal jobs' counters, for `/metrics`.
    pub fn job_metrics(&self) -> productbuilder_jobs::Metrics {
        self.inner.jobs.metrics()
    }

    /// The engine, connected once; the error names the socket.
    pub async fn engine(&self) -> Result<&Engine, ReconcileError> {
        self.inner
            .engine
            .get_or_try_init(|| async {
                let engine = Engine::connect().await?;
                engine.ensure_network(&self.inner.settings.network).await?;
                Ok(engine)
            })
            .await
    }

    pub(crate) async fn compose(&self) -> Result<&ComposeCli, ReconcileError> {
        self.inner
            .compose
            .get_or_try_init(|| async {
                let cli = ComposeCli::detect_with(
                    &self.inner.settings.compose_command,
                    self.inner.settings.docker_config.as_deref(),
                )
                .await
                .map_err(|e| ReconcileError::Compose(e.to_string()))?;
                // Builds get the operator's registry credentials only when configured; else an
                // empty configuration directory of the daemon's.
                let dir = match &self.inner.settings.docker_config {
                    Some(dir) => dir.clone(),
                    None => {
                        let dir = self.inner.settings.state_dir.join("docker-config");
                        std::fs::create_dir_all(&dir).map_err(|e| {
                            ReconcileError::Compose(format!("cannot create {}: {e}", dir.display()))
                        })?;
                        dir
                    }
                };
                Ok(cli.with_docker_config(dir))
            })
            .await
    }

    /// Every preview row (deleted ones too), newest first.
    pub async fn list(&self) -> Result<Vec<PreviewRow>, ReconcileError> {
        self.inner
            .store
            .read(|c| db::rows(c, None))
            .await
            .map_err(store_err)
    }

    pub async fn get(&self, repo: &str, number: u64) -> Result<Option<PreviewRow>, ReconcileError> {
        let repo = repo.to_owned();
        self.inner
            .store
            .read(move |c| db::row(c, &repo, number))
            .await
            .map_err(store_err)
    }

    /// The preview's public URL (the encoding of names is the planner's).
    pub fn url(&self, repo: &str, number: u64) -> String {
        let settings = &self.inner.settings;
        productbuilder_planner::names::url(&settings.url_template, &settings.domain, repo, number)
    }

    pub(crate) fn workspace(&self, project: &str) -> PathBuf {
        self.inner.settings.state_dir.join("previews").join(project)
    }

    pub(crate) fn rules(&self, repo: &str) -> TenantRules {
        self.inner.rules.get(repo).cloned().unwrap_or_default()
    }

    /// Brings `repo`'s previews to the desired state. Returns quickly: deploys and removals run in
    /// the background. Does nothing until the pull requests have been polled once by this process
    /// (an empty list before that is "unknown", not "none open").
    pub async fn reconcile(&self, repo: &str) -> Result<(), ReconcileError> {
        // Gather.
        let engine = self.engine().await?.clone();
        self.compose().await?;
        let pulls = self.inner.github.subscribe(repo).borrow().clone();
        if !pulls.polled {
            tracing::debug!(repo, "previews: pull requests not polled yet");
            return Ok(());
        }
        let rules = self.rules(repo);
        let open = self.judge(repo, &rules, &pulls.pulls).await?;
        let key = repo.to_owned();
        let rows = self
            .inner
            .store
            .read(move |c| db::rows(c, Some(&key)))
            .await
            .map_err(store_err)?;
        let containers = engine.labelled(Some(repo)).await?;
        let numbers: HashSet<u64> = open
            .iter()
            .map(|p| p.number)
            .chain(rows.iter().map(|r| r.number))
            .chain(containers.iter().map(|c| c.number))
            .collect();
        let jobs: HashMap<u64, Job> = numbers
            .iter()
            .filter_map(|&n| Some((n, self.job_of(repo, n)?)))
            .collect();
        let host_backoff: HashSet<u64> = numbers
            .iter()
            .copied()
            .filter(|&n| self.inner.host_failures.waiting(repo, n))
            .collect();

        // Decide.
        let actions = decide::decide(&decide::Inputs {
            open: &open,
            rows: &rows,
            containers: &containers,
            jobs: &jobs,
            host_backoff: &host_backoff,
            now: std::time::SystemTime::now(),
            ttl: self.inner.settings.ttl,
        });

        // Apply.
        for action in actions {
            self.apply(repo, &engine, action).await?;
        }
        Ok(())
    }

    async fn apply(
        &self,
        repo: &str,
        engine: &Engine,
        action: Action,
    ) -> Result<(), ReconcileError> {
        match action {
            Action::Deploy { number, sha } => {
                if self.reserve(repo, number, &sha).await? {
                    self.spawn_deploy(repo, number, &sha);
                } else {
                    tracing::info!(
                        repo,
                        number,
                        "previews: no room yet under max_previews; waiting for the next pass"
                    );
                }
            }
            Action::Remove { number, reason } => self.spawn_remove(repo, number, reason),
            Action::RemoveOrphan { number, project } => {
                tracing::info!(
                    repo,
                    number,
                    project,
                    "previews: removing orphaned containers"
                );
                self.spawn_orphan_removal(repo, number, &project);
            }
            Action::AttachRouter { number, project } => {
                if let Err(e) = engine
                    .attach_routers_to_project(&self.inner.settings.network, &project)
                    .await
                {
                    tracing::warn!(repo, number, error = %e, "previews: cannot attach the router");
                }
            }
            Action::SetWaiting { number, sha } => {
                let r = repo.to_owned();
                let changed = self
                    .inner
                    .store
                    .write(move |c| db::set_waiting(c, &r, number, sha.as_deref()))
                    .await
                    .map_err(store_err)?;
                if changed {
                    self.report(repo, number);
                }
            }
            Action::Report { number } => self.report_due(repo, number),
        }
        Ok(())
    }

    /// Every open pull request with the tenant's verdict and, for those it wants, the commit its
    /// consent allows (see [`crate::consent`]) and the head that waits for approval, if any.
    async fn judge(
        &self,
        repo: &str,
        rules: &TenantRules,
        pulls: &[Pull],
    ) -> Result<Vec<OpenPull>, ReconcileError> {
        let mut open = Vec::new();
        for pull in pulls {
            if !rules.wants(pull) {
                open.push(OpenPull {
                    number: pull.number,
                    wanted: false,
                    deploy_sha: None,
                    waiting_sha: None,
                });
                continue;
            }
            let approvals = if consent::gated(rules, pull) {
                consent::approvals(&self.inner.github, &self.inner.store, repo, pull, rules)
                    .await
                    .map_err(|e| ReconcileError::Store {
                        message: e.to_string(),
                        busy: false,
                    })?
            } else {
                Vec::new()
            };
            let decision = consent::decide(rules, pull, &approvals);
            open.push(OpenPull {
                number: pull.number,
                wanted: true,
                deploy_sha: decision.deploy,
                waiting_sha: decision.waiting,
            });
        }
        Ok(open)
    }

    /// Takes a place under `max_previews` for a deploy of `repo#number` at `sha` and writes its
    /// row (`pending`), in one transaction ([`crate::capacity`]); the previews evicted for it are
    /// removed in the background. `false` when there is no room now: the next pass asks again.
    pub(crate) async fn reserve(
        &self,
        repo: &str,
        number: u64,
        sha: &str,
    ) -> Result<bool, ReconcileError> {
        let request = capacity::Request {
            repo: repo.to_owned(),
            number,
            sha: sha.to_owned(),
            url: self.url(repo, number),
            project: crate::compose::project_name(repo, number),
            max_previews: self.inner.settings.max_previews,
        };
        let jobs = self.inner.jobs.clone();
        let reserved = self
            .inner
            .store
            .write(move |c| {
                capacity::reserve(c, &request, &|r, n| {
                    jobs.latest_tag::<Job>(&job_key(r, n)).is_some()
                })
            })
            .await
            .map_err(store_err)?;
        self.announce(repo);
        match reserved {
            Reserved::Wait => Ok(false),
            Reserved::Admitted { evicted } => {
                for (victim, victim_number) in evicted {
                    self.announce(&victim);
                    tracing::info!(
                        repo = %victim,
                        number = victim_number,
                        for_repo = repo,
                        for_number = number,
                        max = self.inner.settings.max_previews,
                        "previews: evicting the least recently updated preview"
                    );
                    self.spawn_remove(&victim, victim_number, DeletedReason::Evicted);
                }
                Ok(true)
            }
        }
    }

    /// Removes the previews this host still runs for repositories whose previews were turned off
    /// or which left the configuration (their rows say so; containers of other daemons on the same
    /// engine are never touched). No report: those repositories are no longer ours to write to.
    pub async fn sweep(&self) -> Result<usize, ReconcileError> {
        if !self.inner.rules.is_empty() {
            self.warn_without_router().await;
        }
        let rows = self.list().await?;
        let stale: Vec<PreviewRow> = rows
            .into_iter()
            .filter(|r| r.is_live() && !self.inner.rules.contains_key(&r.repo))
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        self.engine().await?;
        for row in &stale {
            tracing::info!(repo = %row.repo, number = row.number, "previews: removing a preview of a repository without previews");
            self.teardown(&row.project)
                .await
                .map_err(|e| ReconcileError::Engine(e.to_string()))?;
            self.transition(
                &row.repo,
                row.number,
                &row.head_sha,
                Event::Delete,
                Details {
                    deleted_reason: Some(DeletedReason::Unwanted),
                    ..Details::default()
                },
            )
            .await?;
            // Nothing to report to a repository that is no longer ours: mark it reported.
            let (r, n) = (row.repo.clone(), row.number);
            self.inner
                .store
                .write(move |c| match db::row(c, &r, n)? {
                    Some(now) => db::set_reported(c, &r, n, &now.report_key()).map(|_| ()),
                    None => Ok(()),
                })
                .await
                .map_err(store_err)?;
        }
        Ok(stale.len())
    }

    /// Says once, at start-up, when previews will deploy but nobody can reach them.
    async fn warn_without_router(&self) {
        let network = &self.inner.settings.network;
        let Ok(engine) = self.engine().await else {
            return; // the tenants' preflights report an unreachable engine
        };
        match engine.routers_on(network).await {
            Ok(Some(routers)) if !routers.is_empty() => {
                tracing::info!(network, routers = %routers.join(", "), "previews: routed by Traefik");
            }
            Ok(_) => tracing::warn!(
                network,
                "previews: no Traefik container on the shared network; previews will deploy but nobody can reach them (README, \"On the host\")"
            ),
            Err(e) => tracing::warn!(network, error = %e, "previews: cannot look for Traefik"),
        }
    }

    /// The newest deploy or removal of `repo#number` not yet ended (running or waiting).
    fn job_of(&self, repo: &str, number: u64) -> Option<Job> {
        self.inner.jobs.latest_tag::<Job>(&job_key(repo, number))
    }

    /// Submits a job for `repo#number`, replacing (cancelling) the ones in flight; the new job
    /// starts only once they have returned. A job replaced before it started never runs (the
    /// next pass converges from the rows). A panic ends that job only and frees the key, so the
    /// next pass deploys or removes that pull request again.
    fn spawn_task<F, Fut>(&self, repo: &str, number: u64, job: Job, work: F)
    where
        F: FnOnce(Previews, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        let spec = JobSpec::new(
            job_key(repo, number),
            job.name(),
            productbuilder_jobs::Policy::Replace,
        )
        .tag(job);
        self.inner.jobs.submit(spec, move |cancel| async move {
            work(this, cancel).await;
            Ok::<(), Infallible>(())
        });
    }

    fn spawn_deploy(&self, repo: &str, number: u64, sha: &str) {
        let (repo_owned, sha) = (repo.to_owned(), sha.to_owned());
        tracing::info!(repo, number, sha = %sha, "previews: deploying");
        self.spawn_task(
            repo,
            number,
            Job::Deploy { sha: sha.clone() },
            move |this, cancel| async move {
                this.deploy(&repo_owned, number, &sha, &cancel).await;
            },
        );
    }

    fn spawn_remove(&self, repo: &str, number: u64, reason: DeletedReason) {
        let repo_owned = repo.to_owned();
        tracing::info!(repo, number, reason = reason.as_str(), "previews: removing");
        self.spawn_task(repo, number, Job::Remove, move |this, _cancel| async move {
            // A removal is not cancelled by shutdown half-way: `down` is idempotent and the row
            // says deleted only once it finished.
            this.remove(&repo_owned, number, reason).await;
        });
    }

    fn spawn_orphan_removal(&self, repo: &str, number: u64, project: &str) {
        let project = project.to_owned();
        self.spawn_task(repo, number, Job::Remove, move |this, _cancel| async move {
            if let Err(e) = this.teardown(&project).await {
                tracing::warn!(project, error = %e, "previews: orphan removal failed; retrying on the next pass");
            }
        });
    }

    /// Moves `repo#number` at `sha` by `event` in the table (every move goes through here, and
    /// wakes [`Previews::changes`]). `Ok(false)` when a newer head took the row over.
    pub(crate) async fn transition(
        &self,
        repo: &str,
        number: u64,
        sha: &str,
        event: Event,
        details: Details<'_>,
    ) -> Result<bool, ReconcileError> {
        let (r, s) = (repo.to_owned(), sha.to_owned());
        let (error, tail) = (
            details.error.map(str::to_owned),
            details.log_tail.map(str::to_owned),
        );
        let reason = details.deleted_reason;
        let moved = self
            .inner
            .store
            .write(move |c| {
                Ok(db::transition(
                    c,
                    &r,
                    number,
                    &s,
                    event,
                    &Details {
                        error: error.as_deref(),
                        log_tail: tail.as_deref(),
                        deleted_reason: reason,
                    },
                ))
            })
            .await;
        self.announce(repo);
        moved.map_err(store_err)?.map_err(refused)
    }

    /// Persists a step before it starts, or an outcome. A failure is logged: the deploy goes on,
    /// and the next pass converges from whatever the row says.
    pub(crate) async fn record(
        &self,
        repo: &str,
        number: u64,
        sha: &str,
        event: Event,
        details: Details<'_>,
    ) {
        if let Err(e) = self.transition(repo, number, sha, event, details).await {
            tracing::error!(repo, number, error = %e, "previews: cannot record a step");
        }
    }

    /// Removes every live preview now and waits for it (the demo's clean exit; a daemon keeps its
    /// previews across restarts).
    pub async fn remove_all(&self) {
        self.idle().await;
        let live = match self.list().await {
            Ok(rows) => rows
                .into_iter()
                .filter(PreviewRow::is_live)
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "previews: cannot list what to remove");
                return;
            }
        };
        for row in live {
            self.remove(&row.repo, row.number, DeletedReason::Closed)
                .await;
        }
    }

    /// Deploys `repo#number` again at the commit its row holds, whatever its status: a failed
    /// preview otherwise waits for a new push. Only a preview the reconciler still wants (its pull
    /// request open and allowed) is redeployed; the row's commit is the one the reconciler chose.
    pub async fn redeploy(&self, repo: &str, number: u64) -> Result<Redeploy, RedeployError> {
        let unavailable = |e: ReconcileError| RedeployError::Unavailable(e.to_string());
        let missing =
            |what: &str| RedeployError::NotFound(format!("the preview of {repo}#{number} {what}"));
        let row = self
            .get(repo, number)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| missing("does not exist"))?;
        if row.status == Status::Deleted {
            return Err(missing("was removed"));
        }
        let wanted = {
            let pulls = self.inner.github.subscribe(repo).borrow().clone();
            let rules = self.rules(repo);
            pulls
                .pulls
                .iter()
                .any(|p| p.number == number && rules.wants(p))
        };
        if !wanted {
            return Err(missing(
                "is not wanted: its pull request is closed or not allowed",
            ));
        }
        self.engine().await.map_err(unavailable)?;
        self.compose().await.map_err(unavailable)?;
        let sha = row.head_sha;
        if self.job_of(repo, number) == Some(Job::Deploy { sha: sha.clone() }) {
            return Ok(Redeploy::AlreadyDeploying(sha));
        }
        if !self
            .reserve(repo, number, &sha)
            .await
            .map_err(unavailable)?
        {
            return Err(RedeployError::Unavailable(format!(
                "no room for {repo}#{number} under max_previews now: deploys under way hold every place; try again shortly"
            )));
        }
        tracing::info!(repo, number, sha = %sha, "previews: redeploy requested");
        self.spawn_deploy(repo, number, &sha);
        Ok(Redeploy::Started(sha))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(fork: bool, draft: bool, labels: &[&str]) -> Pull {
        Pull {
            number: 1,
            title: "t".into(),
            head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
            head_ref: "b".into(),
            head_repo: Some(if fork { "mallory/shop" } else { "acme/shop" }.into()),
            fork,
            author: "a".into(),
            author_association: "NONE".into(),
            draft,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            updated_at: None,
            seen_at: "2026-11-25T00:00:00Z".into(),
        }
    }

    #[test]
    fn who_gets_a_preview() {
        let default = TenantRules::default();
        let forks_ok = TenantRules {
            allow_forks: true,
            ..TenantRules::default()
        };
        let drafts_ok = TenantRules {
            drafts: true,
            ..TenantRules::default()
        };
        let opt_in = TenantRules {
            require_label: true,
            ..TenantRules::default()
        };
        let table: &[(&TenantRules, Pull, bool, &str)] = &[
            (
                &default,
                pull(false, false, &[]),
                true,
                "a branch of the repository",
            ),
            (
                &default,
                pull(true, false, &[]),
                false,
                "a fork without the label",
            ),
            (
                &default,
                pull(true, false, &["preview"]),
                true,
                "a fork a maintainer labelled",
            ),
            (
                &default,
                pull(true, false, &["Preview"]),
                false,
                "labels match exactly",
            ),
            (&forks_ok, pull(true, false, &[]), true, "forks allowed"),
            (&default, pull(false, true, &[]), false, "a draft"),
            (
                &default,
                pull(false, true, &["preview"]),
                false,
                "a labelled draft",
            ),
            (&drafts_ok, pull(false, true, &[]), true, "drafts allowed"),
            (&opt_in, pull(false, false, &[]), false, "opt-in, no label"),
            (
                &opt_in,
                pull(false, false, &["preview"]),
                true,
                "opt-in, labelled",
            ),
            (
                &opt_in,
                pull(true, false, &["preview"]),
                true,
                "opt-in, a labelled fork",
            ),
        ];
        for (rules, pr, want, case) in table {
            assert_eq!(rules.wants(pr), *want, "{case}");
        }
    }

    #[test]
    fn secrets_are_withheld_from_forks_unless_the_tenant_allows() {
        let var = |name: &str, secret: bool| PreviewVar {
            service: "web".into(),
            name: name.into(),
            value: Secret::new(format!("value of {name}")),
            secret,
        };
        let env = vec![var("DATABASE_URL", false), var("API_KEY", true)];
        let strict = TenantRules {
            env: env.clone(),
            ..TenantRules::default()
        };
        let generous = TenantRules {
            env,
            secrets_for_forks: true,
            ..TenantRules::default()
        };
        let names =
            |vars: Vec<&PreviewVar>| vars.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
        // rules, fork, the names given, the names withheld, the case
        type Case<'a> = (&'a TenantRules, bool, &'a [&'a str], &'a [&'a str], &'a str);
        let table: &[Case] = &[
            (
                &strict,
                false,
                &["DATABASE_URL", "API_KEY"],
                &[],
                "same repository",
            ),
            (
                &strict,
                true,
                &["DATABASE_URL"],
                &["API_KEY"],
                "a fork, by default",
            ),
            (
                &generous,
                false,
                &["DATABASE_URL", "API_KEY"],
                &[],
                "same repository, generous",
            ),
            (
                &generous,
                true,
                &["DATABASE_URL", "API_KEY"],
                &[],
                "a fork, secrets_for_forks",
            ),
        ];
        for (rules, fork, given, withheld, case) in table {
            assert_eq!(names(rules.env_for(*fork).collect()), *given, "{case}");
            assert_eq!(
                names(rules.env_withheld(*fork).collect()),
                *withheld,
                "{case}"
            );
        }
    }

    #[test]
    fn values_never_print() {
        let v = PreviewVar {
            service: "web".into(),
            name: "API_KEY".into(),
            value: Secret::new("hunter2"),
            secret: true,
        };
        let rules = TenantRules {
            env: vec![v.clone()],
            ..TenantRules::default()
        };
        for shown in [format!("{v:?}"), format!("{rules:?}"), v.value.to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
        assert_eq!(v.value.expose(), "hunter2");
    }

    #[test]
    fn variable_names() {
        for ok in ["A", "_", "DATABASE_URL", "api_key2", "_X"] {
            assert!(PreviewVar::valid_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "É", "A.B"] {
            assert!(!PreviewVar::valid_name(bad), "{bad}");
        }
        assert!(PreviewVar::reserved("BASE_URL"));
        assert!(PreviewVar::reserved("PRODUCTBUILDER_TOKEN"));
        assert!(!PreviewVar::reserved("base_url"));
    }
}
