//! The previews reconciler: for one tenant, the desired state (its open pull requests that the
//! tenant's rules allow, each at its head sha) against the actual state (the `previews` rows and
//! the containers labelled by productbuilder on the engine), and the actions that close the gap.
//!
//! It is level-triggered: [`Previews::reconcile`] never learns why it was called (a new push, a
//! close, a restart, a vanished container, a timer) and always compares the whole state. Deploys
//! and removals run as keyed jobs (`productbuilder_jobs`, key `{repo}#{number}`, policy
//! `Replace`), one per pull request at a time; a newer head commit cancels the deploy in flight
//! (killing its Compose process) instead of queueing behind it, and a panic frees the key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use productbuilder_github::{
    CommitState, DeploymentState, GithubState, MarkerComments, Pull, Reporter,
};
use productbuilder_jobs::{JobSpec, Jobs};
use productbuilder_store::Store;
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::archive::Limits;
use crate::comment::{self, CommentView};
use crate::compose::{self, Rewrite};
use crate::consent;
use crate::db::{self, DeletedReason, Details, PreviewRow};
use crate::engine::{Engine, Labelled};
use crate::policy::{Policy, Rule};
use crate::runner::{self, ComposeCli, Project};
use crate::source;
use crate::spec::LogSource;
use crate::state::{Event, Stage, Status};

/// The marker of the one comment per pull request.
pub const MARKER: &str = "<!-- productbuilder:preview -->";

/// How long an image build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Attempts at a download whose failure looks transient, and the first wait between them
/// (then four times longer each time).
const DOWNLOAD_ATTEMPTS: u32 = 3;
const DOWNLOAD_BACKOFF: Duration = Duration::from_secs(2);
/// How long `up`, a migration or one post-deploy command may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Log follows of one preview at once: each holds a connection to the engine (and, for a log file,
/// a process in the container), so an API client must not be able to open them without end.
pub const MAX_FOLLOWS: usize = 4;
/// How long one log follow lasts at most; the client reconnects for more.
pub const MAX_FOLLOW_DURATION: Duration = Duration::from_secs(30 * 60);

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Egress {
    /// Outbound traffic is allowed (package registries, APIs), and so is the host's network.
    #[default]
    Open,
    /// Every network of a preview is internal: the router still reaches it, nothing leaves it.
    None,
}

/// Under a preview's workspace: one directory per deploy attempt (`{sha12}-{random}`).
const HEADS: &str = "heads";

/// Removes every attempt directory under `heads` but `keep`; failures are logged, not fatal.
async fn remove_other_attempts(heads: &Path, keep: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(heads).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path != keep
            && let Err(e) = tokio::fs::remove_dir_all(&path).await
        {
            tracing::debug!(path = %path.display(), error = %e, "previews: an earlier attempt's checkout is still in use");
        }
    }
}

/// Most processes in one preview container.
const PIDS_LIMIT: u32 = 1024;

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

/// What a deploy or removal task is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Job {
    Deploy { sha: String },
    Remove,
}

impl Job {
    /// The job's name in [`Jobs`]: its span and logs, and how [`Previews::job_of`] reads it back.
    fn name(&self) -> String {
        match self {
            Job::Deploy { sha } => format!("deploy {sha}"),
            Job::Remove => "remove".to_owned(),
        }
    }

    fn from_name(name: &str) -> Job {
        match name.strip_prefix("deploy ") {
            Some(sha) => Job::Deploy {
                sha: sha.to_owned(),
            },
            None => Job::Remove,
        }
    }
}

/// The key of a pull request's deploy and removal jobs (`#` is in no repository name).
fn job_key(repo: &str, number: u64) -> String {
    format!("{repo}#{number}")
}

struct Inner {
    settings: Settings,
    rules: HashMap<String, TenantRules>,
    store: Store,
    github: GithubState,
    comments: MarkerComments,
    reporter: Reporter,
    engine: OnceCell<Engine>,
    compose: OnceCell<ComposeCli>,
    builds: Semaphore,
    /// Deploys and removals, at most one per pull request (keyed by [`job_key`], `Replace`);
    /// children of `shutdown`.
    jobs: Jobs,
    /// Log follows open now, per preview (at most [`MAX_FOLLOWS`]).
    follows: Arc<Mutex<HashMap<(String, u64), usize>>>,
    /// Reports running, and whether another was asked for meanwhile.
    reporting: Mutex<HashMap<(String, u64), bool>>,
    /// Deploys that ended ready, failed, or were cancelled by a newer head or shutdown.
    outcomes: [std::sync::atomic::AtomicU64; 3],
    /// Bumped after every recorded step or outcome: what dashboards and tests can await.
    changes: tokio::sync::watch::Sender<u64>,
    /// How many report tasks run, for [`Previews::idle`].
    reports_running: tokio::sync::watch::Sender<usize>,
    /// Serialises the "count, then evict" decision across tenants, and holds the slots it granted
    /// to deploys whose row is not written yet (the spawned task writes it), so that a burst of
    /// pull requests in one pass, or two tenants at once, cannot all see the same count.
    capacity: tokio::sync::Mutex<HashSet<(String, u64)>>,
    /// Deploys the host failed, per pull request: how many in a row, and not before when the next.
    host_failures: Mutex<HashMap<(String, u64), (u32, tokio::time::Instant)>>,
    /// Cancelled at shutdown: tasks stop at their next step, leaving the row where it was; the
    /// next start converges from there.
    shutdown: CancellationToken,
}

/// The previews of every tenant. Cheap to clone.
#[derive(Clone)]
pub struct Previews {
    inner: Arc<Inner>,
}

/// Why a reconcile could not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileError {
    /// The Docker engine is missing or not answering.
    Engine(String),
    /// The configured Compose CLI is missing or is not Compose v2: waiting will not mend it.
    Compose(String),
    /// The database failed; `busy` when another connection held the lock (worth a retry).
    Store { message: String, busy: bool },
}

impl std::fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReconcileError::Engine(m)
            | ReconcileError::Compose(m)
            | ReconcileError::Store { message: m, .. } => f.write_str(m),
        }
    }
}

impl std::error::Error for ReconcileError {}

fn store_err(e: productbuilder_store::StoreError) -> ReconcileError {
    ReconcileError::Store {
        busy: e.is_busy(),
        message: format!("previews database: {e}"),
    }
}

/// A move the state machine refused: a bug, reported as such.
fn refused(e: String) -> ReconcileError {
    ReconcileError::Store {
        busy: false,
        message: format!("previews: {e}"),
    }
}

/// Why a report did not reach GitHub.
#[derive(Debug)]
enum ReportError {
    /// GitHub refused it and would again (a 401/403 without a wait hint, 404, 422): recorded
    /// against `key`, not sent again until the row changes.
    Refused { key: String, message: String },
    /// An outage, a rate limit, a busy database: the next pass tries again.
    Transient(String),
}

impl ReportError {
    fn from_github(e: productbuilder_github::GithubError, key: &str) -> ReportError {
        use productbuilder_scheduler::ErrorKind::*;
        let message = e.to_string();
        match productbuilder_scheduler::UnitError::from(e).kind() {
            BadCredentials | Forbidden | NotFound | Validation => ReportError::Refused {
                key: key.to_owned(),
                message,
            },
            _ => ReportError::Transient(message),
        }
    }
}

/// Why a preview's logs cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogsError {
    /// No such preview, removed, or not started: nothing to read.
    NotFound(String),
    /// The preview exists but its logs cannot be read now (the engine, a missing container).
    Unavailable(String),
    /// [`MAX_FOLLOWS`] follows of this preview are open already.
    TooManyFollows(String),
}

impl std::fmt::Display for LogsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogsError::NotFound(m) | LogsError::Unavailable(m) | LogsError::TooManyFollows(m) => {
                f.write_str(m)
            }
        }
    }
}

/// Why a preview cannot be deployed again on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeployError {
    /// No such preview, removed, or its pull request is no longer open or wanted.
    NotFound(String),
    /// The engine, Compose or the database is not answering now.
    Unavailable(String),
}

impl std::fmt::Display for RedeployError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedeployError::NotFound(m) | RedeployError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// What a redeploy request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeploy {
    /// A deploy at this sha was started.
    Started(String),
    /// A deploy at this sha was already under way; it goes on.
    AlreadyDeploying(String),
}

/// One open log follow of a preview; gives its place back when dropped.
struct FollowSlot {
    follows: Arc<Mutex<HashMap<(String, u64), usize>>>,
    key: (String, u64),
}

impl FollowSlot {
    fn take(
        follows: &Arc<Mutex<HashMap<(String, u64), usize>>>,
        key: (String, u64),
    ) -> Option<FollowSlot> {
        let mut open = follows.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.clone()).or_default();
        if *n >= MAX_FOLLOWS {
            return None;
        }
        *n += 1;
        Some(FollowSlot {
            follows: follows.clone(),
            key,
        })
    }
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        let mut open = self.follows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// `stream`, ended after `limit` at the latest.
pub fn at_most(stream: crate::engine::LogStream, limit: Duration) -> crate::engine::LogStream {
    use futures_util::StreamExt;
    Box::pin(stream.take_until(tokio::time::sleep(limit)))
}

/// A step that failed: its stage, message and output tail.
struct Failure {
    stage: Stage,
    error: String,
    tail: Option<String>,
}

/// The end of a task that was stopped by a newer one or by shutdown.
struct Cancelled;

enum Stop {
    Failed(Failure),
    /// The host failed (the engine, Compose, the workspace's disk), not the commit: the row stays
    /// where it was and the deploy is tried again after a backoff.
    Host(Failure),
    Cancelled,
}

impl From<Cancelled> for Stop {
    fn from(_: Cancelled) -> Self {
        Stop::Cancelled
    }
}

async fn or_cancel<T>(
    cancel: &CancellationToken,
    f: impl Future<Output = T>,
) -> Result<T, Cancelled> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Cancelled),
        out = f => Ok(out),
    }
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
                settings,
                rules,
                store,
                github,
                comments,
                reporter,
                engine: OnceCell::new(),
                compose: OnceCell::new(),
                jobs: Jobs::builder(&shutdown).build(),
                follows: Arc::default(),
                reporting: Mutex::default(),
                reports_running: tokio::sync::watch::channel(0).0,
                changes: tokio::sync::watch::channel(0).0,
                outcomes: Default::default(),
                capacity: tokio::sync::Mutex::new(HashSet::new()),
                host_failures: Mutex::default(),
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

    fn count_outcome(&self, index: usize) {
        self.inner.outcomes[index].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Changes whenever a preview's row moved (a step began, a deploy ended, a removal).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Waits until no deploy, removal or report is running.
    pub async fn idle(&self) {
        let mut reports = self.inner.reports_running.subscribe();
        loop {
            self.inner.jobs.idle().await;
            let _ = reports.wait_for(|n| *n == 0).await;
            // A task that ended may have started a report meanwhile: check both again.
            if self.inner.jobs.is_idle() && *self.inner.reports_running.borrow() == 0 {
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
                let engine = Engine::connect().await.map_err(ReconcileError::Engine)?;
                engine
                    .ensure_network(&self.inner.settings.network)
                    .await
                    .map_err(ReconcileError::Engine)?;
                Ok(engine)
            })
            .await
    }

    async fn compose(&self) -> Result<&ComposeCli, ReconcileError> {
        self.inner
            .compose
            .get_or_try_init(|| async {
                let cli = ComposeCli::detect_with(
                    &self.inner.settings.compose_command,
                    self.inner.settings.docker_config.as_deref(),
                )
                .await
                .map_err(ReconcileError::Compose)?;
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
            .call(|c| db::rows(c, None))
            .await
            .map_err(store_err)
    }

    pub async fn get(&self, repo: &str, number: u64) -> Result<Option<PreviewRow>, ReconcileError> {
        let repo = repo.to_owned();
        self.inner
            .store
            .call(move |c| db::row(c, &repo, number))
            .await
            .map_err(store_err)
    }

    /// The preview's public URL (the encoding of names is the planner's).
    pub fn url(&self, repo: &str, number: u64) -> String {
        let settings = &self.inner.settings;
        productbuilder_planner::names::url(&settings.url_template, &settings.domain, repo, number)
    }

    fn workspace(&self, project: &str) -> PathBuf {
        self.inner.settings.state_dir.join("previews").join(project)
    }

    /// Brings `repo`'s previews to the desired state. Returns quickly: deploys and removals run in
    /// the background. Does nothing until the pull requests have been polled once by this process
    /// (an empty list before that is "unknown", not "none open").
    pub async fn reconcile(&self, repo: &str) -> Result<(), ReconcileError> {
        let engine = self.engine().await?.clone();
        self.compose().await?;
        let pulls = self.inner.github.subscribe(repo).borrow().clone();
        if !pulls.polled {
            tracing::debug!(repo, "previews: pull requests not polled yet");
            return Ok(());
        }
        let rules = self.inner.rules.get(repo).cloned().unwrap_or_default();
        let open: BTreeMap<u64, &Pull> = pulls.pulls.iter().map(|p| (p.number, p)).collect();
        let (desired, waiting) = self.consented(repo, &rules, &open).await?;
        let key = repo.to_owned();
        let rows: BTreeMap<u64, PreviewRow> = self
            .inner
            .store
            .call(move |c| db::rows(c, Some(&key)))
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|r| (r.number, r))
            .collect();
        let containers = engine
            .labelled(Some(repo))
            .await
            .map_err(ReconcileError::Engine)?;
        let running: HashSet<(u64, &str)> = containers
            .iter()
            .filter(|c| c.running)
            .map(|c| (c.number, c.project.as_str()))
            .collect();

        for (&number, pull) in &desired {
            let row = rows.get(&number);
            let job = self.job_of(repo, number);
            match &job {
                Some(Job::Deploy { sha }) if *sha == pull.head_sha => continue,
                // A removal is finishing; the next pass redeploys if still wanted.
                Some(Job::Remove) if row.is_some_and(|r| !r.is_live()) => continue,
                _ => {}
            }
            let deploy = match row {
                None => true,
                Some(r) if r.head_sha != pull.head_sha => true,
                Some(r) => match r.status {
                    Status::Deleted => r.deleted_reason.is_none_or(DeletedReason::allows_same_sha),
                    // A failure waits for a new push (or a reopen).
                    Status::Failed => false,
                    // Its containers vanished: repair.
                    Status::Ready => !running.contains(&(number, r.project.as_str())),
                    // Under way with no task: this process restarted mid-deploy, or the host
                    // failed it (then after its backoff).
                    Status::Pending | Status::Building | Status::Deploying => {
                        job.is_none() && !self.host_backing_off(repo, number)
                    }
                },
            };
            if deploy {
                if self.make_room(repo, number).await? {
                    self.spawn_deploy(repo, pull);
                } else {
                    tracing::info!(
                        repo,
                        number,
                        "previews: no room yet under max_previews; waiting for the next pass"
                    );
                }
            } else if let Some(r) = row
                && matches!(r.status, Status::Ready | Status::Failed)
                && job.is_none()
                && self.expired(r).await?
            {
                self.spawn_remove(repo, number, DeletedReason::Expired);
            } else if let Some(r) = row
                && r.status == Status::Ready
                && job.is_none()
                // A router recreated since the deploy (an upgrade of Traefik) is on none of the
                // previews' networks: attach it again, or every preview is unreachable.
                && let Err(e) = engine
                    .attach_routers_to_project(&self.inner.settings.network, &r.project)
                    .await
            {
                tracing::warn!(repo, number, error = %e, "previews: cannot attach the router");
            }
        }

        for (number, sha) in &waiting {
            if rows.contains_key(number) {
                let (r, n, w) = (repo.to_owned(), *number, sha.clone());
                let changed = self
                    .inner
                    .store
                    .call(move |c| db::set_waiting(c, &r, n, w.as_deref()))
                    .await
                    .map_err(store_err)?;
                if changed {
                    self.report(repo, *number);
                }
            }
        }

        // Previews nobody wants any more: closed, or no longer allowed.
        for (number, row) in &rows {
            if desired.contains_key(number) || !row.is_live() {
                continue;
            }
            if self.job_of(repo, *number) == Some(Job::Remove) {
                continue;
            }
            let reason = if open.contains_key(number) {
                DeletedReason::Unwanted
            } else {
                DeletedReason::Closed
            };
            self.spawn_remove(repo, *number, reason);
        }

        // Containers no live row accounts for: leftovers of a crash, or of a lost database.
        let mut orphans: BTreeMap<&str, &Labelled> = BTreeMap::new();
        for c in &containers {
            let owned = rows
                .get(&c.number)
                .is_some_and(|r| r.is_live() && r.project == c.project);
            if !owned && self.job_of(repo, c.number).is_none() {
                orphans.entry(c.project.as_str()).or_insert(c);
            }
        }
        for (project, c) in orphans {
            tracing::info!(
                repo,
                number = c.number,
                project,
                "previews: removing orphaned containers"
            );
            self.spawn_orphan_removal(repo, c.number, project);
        }

        // Reports that did not reach GitHub (an outage, a restart): try again; not those GitHub
        // refused for good.
        for row in rows.values() {
            let key = row.report_key();
            if row.reported.as_deref() != Some(key.as_str())
                && row.report_error_key.as_deref() != Some(key.as_str())
            {
                self.report(repo, row.number);
            }
        }
        Ok(())
    }

    /// The pull requests the tenant wants, each at the commit its consent allows (see
    /// [`crate::consent`]), and for each wanted one the head that waits for approval, if any.
    async fn consented(
        &self,
        repo: &str,
        rules: &TenantRules,
        open: &BTreeMap<u64, &Pull>,
    ) -> Result<(BTreeMap<u64, Pull>, BTreeMap<u64, Option<String>>), ReconcileError> {
        let (mut desired, mut waiting) = (BTreeMap::new(), BTreeMap::new());
        for (&number, &pull) in open.iter().filter(|(_, p)| rules.wants(p)) {
            let approvals = if consent::gated(rules, pull) {
                consent::approvals(&self.inner.github, &self.inner.store, repo, pull, rules)
                    .await
                    .map_err(|message| ReconcileError::Store {
                        message,
                        busy: false,
                    })?
            } else {
                Vec::new()
            };
            let decision = consent::decide(rules, pull, &approvals);
            if let Some(sha) = decision.deploy {
                let mut at = pull.clone();
                at.head_sha = sha;
                desired.insert(number, at);
            }
            waiting.insert(number, decision.waiting);
        }
        Ok((desired, waiting))
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
                .map_err(ReconcileError::Engine)?;
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
                .call(move |c| match db::row(c, &r, n)? {
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
    fn host_failures(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, u64), (u32, tokio::time::Instant)>> {
        self.inner
            .host_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records a host failure of `repo#number`'s deploy; the wait before the next attempt
    /// (`host_retry` doubled per failure in a row, at most ten minutes).
    fn host_backoff(&self, repo: &str, number: u64) -> Duration {
        let mut failures = self.host_failures();
        let entry = failures
            .entry((repo.to_owned(), number))
            .or_insert((0, tokio::time::Instant::now()));
        entry.0 += 1;
        let wait = self
            .inner
            .settings
            .host_retry
            .saturating_mul(1 << entry.0.min(16).saturating_sub(1))
            .min(Duration::from_secs(600));
        entry.1 = tokio::time::Instant::now() + wait;
        wait
    }

    fn host_backing_off(&self, repo: &str, number: u64) -> bool {
        self.host_failures()
            .get(&(repo.to_owned(), number))
            .is_some_and(|(_, not_before)| tokio::time::Instant::now() < *not_before)
    }

    fn job_of(&self, repo: &str, number: u64) -> Option<Job> {
        self.inner
            .jobs
            .latest(&job_key(repo, number))
            .map(|name| Job::from_name(&name))
    }

    async fn expired(&self, row: &PreviewRow) -> Result<bool, ReconcileError> {
        let (at, ttl) = (row.sha_changed_at.clone(), self.inner.settings.ttl);
        self.inner
            .store
            .call(move |c| db::older_than(c, &at, ttl))
            .await
            .map_err(store_err)
    }

    /// Keeps the host under `max_previews`: a deploy of a pull request with no live preview evicts
    /// the least recently updated live ones (of any tenant) and reserves its slot; `false` when
    /// there is no room yet (the other slots are taken by deploys that have not written their
    /// row): the next pass tries again.
    async fn make_room(&self, repo: &str, number: u64) -> Result<bool, ReconcileError> {
        let mut reserved = self.inner.capacity.lock().await;
        let live = self
            .inner
            .store
            .call(|c| db::live_by_age(c))
            .await
            .map_err(store_err)?;
        // A reservation ends when its row is written, or when no deploy is on its way any more.
        reserved.retain(|(r, n)| {
            !live.iter().any(|row| row.repo == *r && row.number == *n)
                && matches!(self.job_of(r, *n), Some(Job::Deploy { .. }))
        });
        if live.iter().any(|r| r.repo == repo && r.number == number)
            || reserved.contains(&(repo.to_owned(), number))
        {
            return Ok(true);
        }
        let max = self.inner.settings.max_previews.max(1);
        let mut excess = (live.len() + reserved.len() + 1).saturating_sub(max);
        for victim in &live {
            if excess == 0 {
                break;
            }
            if self.job_of(&victim.repo, victim.number) == Some(Job::Remove) {
                continue;
            }
            tracing::info!(
                repo = %victim.repo,
                number = victim.number,
                for_repo = repo,
                for_number = number,
                max,
                "previews: evicting the least recently updated preview"
            );
            // Marked deleted now, so that the next count already sees the room.
            self.transition(
                &victim.repo,
                victim.number,
                &victim.head_sha,
                Event::Delete,
                Details {
                    deleted_reason: Some(DeletedReason::Evicted),
                    ..Details::default()
                },
            )
            .await?;
            self.spawn_remove(&victim.repo, victim.number, DeletedReason::Evicted);
            excess -= 1;
        }
        if excess > 0 {
            return Ok(false);
        }
        reserved.insert((repo.to_owned(), number));
        Ok(true)
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
        );
        self.inner.jobs.submit(spec, move |cancel| async move {
            work(this, cancel).await;
            Ok::<(), Infallible>(())
        });
    }

    fn spawn_deploy(&self, repo: &str, pull: &Pull) {
        self.spawn_deploy_at(repo, pull.number, &pull.head_sha);
    }

    fn spawn_deploy_at(&self, repo: &str, number: u64, sha: &str) {
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

    /// Runs every step of a deploy of `repo#number` at `sha`.
    async fn deploy(&self, repo: &str, number: u64, sha: &str, cancel: &CancellationToken) {
        let project = compose::project_name(repo, number);
        let url = self.url(repo, number);
        let begun = {
            let (r, s, u, p) = (
                repo.to_owned(),
                sha.to_owned(),
                url.clone(),
                project.clone(),
            );
            self.inner
                .store
                .call(move |c| db::begin(c, &r, number, &s, &u, &p))
                .await
        };
        // The row counts now; the slot make_room reserved is no longer needed.
        self.inner
            .capacity
            .lock()
            .await
            .remove(&(repo.to_owned(), number));
        if let Err(e) = begun {
            tracing::error!(repo, number, error = %e, "previews: cannot record the deploy; retrying on the next pass");
            return;
        }
        self.report(repo, number);
        match self.steps(repo, number, sha, &project, &url, cancel).await {
            Ok(()) => {
                self.host_failures().remove(&(repo.to_owned(), number));
                self.count_outcome(0);
                self.record(repo, number, sha, Event::Ready, Details::default())
                    .await;
                tracing::info!(repo, number, sha, url, "previews: ready");
            }
            Err(Stop::Failed(f)) => {
                self.count_outcome(1);
                // What reaches the comment names paths relative to the checkout, never where the
                // daemon keeps its state.
                let workspace = self.workspace(&project);
                let f = Failure {
                    error: host_paths_hidden(&f.error, &workspace, &self.inner.settings.state_dir),
                    tail: f
                        .tail
                        .map(|t| host_paths_hidden(&t, &workspace, &self.inner.settings.state_dir)),
                    ..f
                };
                tracing::warn!(repo, number, sha, stage = %f.stage, error = %f.error, "previews: deploy failed");
                self.record(
                    repo,
                    number,
                    sha,
                    Event::Fail(f.stage),
                    Details {
                        error: Some(&f.error),
                        log_tail: f.tail.as_deref(),
                        ..Details::default()
                    },
                )
                .await;
            }
            Err(Stop::Host(f)) => {
                // Not the commit's fault: the row keeps its place (a deploy under way), so the
                // next pass after the backoff deploys again; the commit is not marked failed.
                let wait = self.host_backoff(repo, number);
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

    /// Moves `repo#number` at `sha` by `event` in the table (every move goes through here, and
    /// wakes [`Previews::changes`]). `Ok(false)` when a newer head took the row over.
    async fn transition(
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
            .call(move |c| {
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
        self.inner.changes.send_modify(|n| *n += 1);
        moved.map_err(store_err)?.map_err(refused)
    }

    /// Persists a step before it starts, or an outcome. A failure is logged: the deploy goes on,
    /// and the next pass converges from whatever the row says.
    async fn record(&self, repo: &str, number: u64, sha: &str, event: Event, details: Details<'_>) {
        if let Err(e) = self.transition(repo, number, sha, event, details).await {
            tracing::error!(repo, number, error = %e, "previews: cannot record a step");
        }
    }

    async fn step(
        &self,
        repo: &str,
        number: u64,
        sha: &str,
        stage: Stage,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        if cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        self.record(repo, number, sha, Event::Step(stage), Details::default())
            .await;
        // Statuses change at build and start; the stages within them are not worth a write each.
        if matches!(stage, Stage::Download | Stage::Start) {
            self.report(repo, number);
        }
        Ok(())
    }

    async fn steps(
        &self,
        repo: &str,
        number: u64,
        sha: &str,
        project_name: &str,
        url: &str,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let rules = self.inner.rules.get(repo).cloned().unwrap_or_default();
        let workspace = self.workspace(project_name);
        // This attempt's own directory for the tarball and the checkout: a cancelled attempt's
        // extraction (a blocking thread that outlives its task) can only write into its own.
        let attempt_dir = workspace.join(HEADS).join(format!(
            "{}-{:016x}",
            sha.get(..12).unwrap_or(sha),
            fastrand::u64(..)
        ));
        let failed = |stage: Stage, error: String, tail: Option<String>| {
            Stop::Failed(Failure { stage, error, tail })
        };
        let host_failed = |stage: Stage, error: String| {
            Stop::Host(Failure {
                stage,
                error,
                tail: None,
            })
        };

        self.step(repo, number, sha, Stage::Download, cancel)
            .await?;
        let client = &self.inner.github.client;
        let mut attempt = 1;
        let dir = loop {
            let limits = &self.inner.settings.limits;
            match or_cancel(
                cancel,
                source::download(client, repo, sha, &attempt_dir, limits),
            )
            .await?
            {
                Ok(dir) => break dir,
                Err(e) if e.transient && attempt < DOWNLOAD_ATTEMPTS => {
                    let wait = DOWNLOAD_BACKOFF * 4u32.pow(attempt - 1);
                    tracing::info!(repo, number, sha, attempt, error = %e.message, ?wait, "previews: download failed; retrying");
                    or_cancel(cancel, tokio::time::sleep(wait)).await?;
                    attempt += 1;
                }
                Err(e) if e.host => return Err(host_failed(e.stage, e.message)),
                Err(e) => return Err(failed(e.stage, e.message, None)),
            }
        };

        self.step(repo, number, sha, Stage::Config, cancel).await?;
        let cli = self
            .compose()
            .await
            .map_err(|e| host_failed(Stage::Config, e.to_string()))?
            .clone();
        let checkout = or_cancel(
            cancel,
            source::check(
                &dir,
                &source::Checks {
                    policy: &rules.policy,
                    cli: &cli,
                    project: project_name,
                },
            ),
        )
        .await?
        .map_err(|e| failed(e.stage, e.message, None))?;
        let spec = checkout.spec;
        {
            let (r, note, service) = (
                repo.to_owned(),
                spec.user_facing_note.clone(),
                spec.log_service.clone(),
            );
            let file = match &spec.log_source {
                LogSource::Docker => None,
                LogSource::File { path } => Some(path.clone()),
            };
            let _ = self
                .inner
                .store
                .call(move |c| {
                    db::set_contract(c, &r, number, note.as_deref(), &service, file.as_deref())
                })
                .await;
        }
        self.step(repo, number, sha, Stage::Policy, cancel).await?;
        let host = productbuilder_planner::names::host(url).to_owned();
        let model = &checkout.resolved.model;
        let network = compose::routed_network(model, &spec.service).ok_or_else(|| {
            failed(
                Stage::Config,
                format!(
                    "service `{}` is on no network the router can join",
                    spec.service
                ),
                None,
            )
        })?;
        // Unknown counts as a fork: secrets are withheld when in doubt.
        let fork = self
            .inner
            .github
            .subscribe(repo)
            .borrow()
            .pulls
            .iter()
            .find(|p| p.number == number)
            .is_none_or(|p| p.fork);
        let env: Vec<(String, String, Secret)> = rules
            .env_for(fork)
            .map(|v| (v.service.clone(), v.name.clone(), v.value.clone()))
            .collect();
        let withheld: Vec<String> = rules.env_withheld(fork).map(|v| v.name.clone()).collect();
        if !withheld.is_empty() {
            tracing::info!(repo, number, withheld = %withheld.join(", "), "previews: secrets withheld from a fork's pull request");
        }
        let env_names: Vec<(String, String)> = env
            .iter()
            .map(|(service, name, _)| (service.clone(), name.clone()))
            .collect();
        let rendered_model;
        let project = {
            let rewritten = compose::rewrite(
                model,
                &Rewrite {
                    repo,
                    number,
                    sha,
                    project: project_name,
                    service: &spec.service,
                    internal_port: spec.internal_port,
                    host: &host,
                    base_url: url,
                    entrypoint: &self.inner.settings.entrypoint,
                    cert_resolver: self.inner.settings.cert_resolver.as_deref(),
                    cpus: rules.cpus,
                    memory: rules.memory.as_deref(),
                    pids_limit: PIDS_LIMIT,
                    internal: self.inner.settings.egress == Egress::None,
                    env: &env_names,
                },
                &network,
            );
            let text = compose::render(&rewritten).map_err(|e| failed(Stage::Config, e, None))?;
            rendered_model = rewritten;
            let values = env
                .into_iter()
                .map(|(_, name, value)| (name, value))
                .collect();
            runner::write_project(&workspace, project_name, &text, values).map_err(|e| {
                host_failed(
                    Stage::Config,
                    format!("cannot write the compose file into the workspace: {e}"),
                )
            })?
        };
        let command_failed = |stage: Stage| {
            move |e: runner::CommandError| {
                failed(
                    stage,
                    e.to_string(),
                    Some(e.tail.clone()).filter(|t| !t.is_empty()),
                )
            }
        };

        // Builds are the expensive part: at most `max_builds` at once on this host.
        let permit = or_cancel(cancel, self.inner.builds.acquire()).await?;
        self.step(repo, number, sha, Stage::Build, cancel).await?;
        or_cancel(cancel, cli.build(&project, BUILD_TIMEOUT))
            .await?
            .map_err(command_failed(Stage::Build))?;
        drop(permit);
        // A Dockerfile's `LABEL traefik...` (or a pulled image's) reaches the container, where the
        // router would read it: checked on the images themselves before anything starts.
        if !rules.policy.allowed.contains(&Rule::ReservedLabel) {
            let engine = self
                .engine()
                .await
                .map_err(|e| failed(Stage::Build, e.to_string(), None))?;
            let images = compose::service_images(&rendered_model, project_name);
            let mut pulled = false;
            for (service, image) in &images {
                let mut labels = engine
                    .image_labels(image)
                    .await
                    .map_err(|e| failed(Stage::Build, e, None))?;
                if labels.is_none() && !pulled {
                    or_cancel(cancel, cli.pull(&project, BUILD_TIMEOUT))
                        .await?
                        .map_err(command_failed(Stage::Build))?;
                    pulled = true;
                    labels = engine
                        .image_labels(image)
                        .await
                        .map_err(|e| failed(Stage::Build, e, None))?;
                }
                let refused: Vec<&String> = labels
                    .iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .filter(|k| compose::image_label_refused(k))
                    .collect();
                if let Some(label) = refused.first() {
                    return Err(failed(
                        Stage::Build,
                        format!(
                            "service `{service}`: its image carries the label `{label}`; only the daemon configures the router (rule `reserved_label`; a tenant can waive it with `[preview] allow = [\"reserved_label\"]`)"
                        ),
                        None,
                    ));
                }
            }
        }

        self.step(repo, number, sha, Stage::Start, cancel).await?;
        or_cancel(cancel, cli.start(&project, STEP_TIMEOUT))
            .await?
            .map_err(command_failed(Stage::Start))?;
        // The containers of earlier attempts are replaced now: their checkouts can go (their bind
        // mounts pointed there). Best effort: a cancelled attempt may still be writing into its own.
        remove_other_attempts(&workspace.join(HEADS), &attempt_dir).await;
        // The router joins this preview's own network (and leaves it at teardown): it routes
        // every preview, while no preview's container can reach another's.
        if let Ok(engine) = self.engine().await {
            engine
                .attach_routers_to_project(&self.inner.settings.network, project_name)
                .await
                .map_err(|e| {
                    failed(Stage::Start, format!("cannot attach the router: {e}"), None)
                })?;
        }
        // The previous head's images lost their tags to this build, and its containers were
        // replaced: remove them now, or every push would leave an image behind.
        if let Ok(engine) = self.engine().await
            && let Err(e) = engine.remove_images(project_name, true).await
        {
            tracing::warn!(repo, number, error = %e, "previews: cannot remove old images");
        }

        if let Some(migrate) = &spec.migrate_command {
            self.step(repo, number, sha, Stage::Migrate, cancel).await?;
            or_cancel(
                cancel,
                cli.exec(&project, &spec.service, migrate, STEP_TIMEOUT),
            )
            .await?
            .map_err(command_failed(Stage::Migrate))?;
        }

        self.step(repo, number, sha, Stage::Health, cancel).await?;
        // Two ways in: the loopback port the rewrite published (the daemon on the host), and the
        // container's address on the shared network (the daemon in a container on that network).
        let mut addrs = Vec::new();
        if let Ok(addr) = or_cancel(
            cancel,
            cli.port(&project, &spec.service, spec.internal_port),
        )
        .await?
        {
            addrs.push(addr);
        }
        if let Ok(engine) = self.engine().await
            && let Ok(ip) = engine
                .service_ip(project_name, &spec.service, &network)
                .await
        {
            addrs.push(std::net::SocketAddr::new(ip, spec.internal_port));
        }
        if addrs.is_empty() {
            return Err(failed(
                Stage::Health,
                format!(
                    "service `{}` has neither a published port nor an address on network {network}",
                    spec.service
                ),
                None,
            ));
        }
        or_cancel(
            cancel,
            runner::wait_healthy(
                &addrs,
                &host,
                &spec.healthcheck_path,
                Duration::from_secs(spec.startup_timeout_seconds),
            ),
        )
        .await?
        .map_err(|e| failed(Stage::Health, e, None))?;

        if !spec.post_deploy.is_empty() {
            self.step(repo, number, sha, Stage::PostDeploy, cancel)
                .await?;
            for command in &spec.post_deploy {
                let what = command
                    .description
                    .clone()
                    .unwrap_or_else(|| command.command.clone());
                or_cancel(
                    cancel,
                    cli.exec(&project, &command.service, &command.command, STEP_TIMEOUT),
                )
                .await?
                .map_err(|e| {
                    failed(
                        Stage::PostDeploy,
                        format!("{what}: {e}"),
                        Some(e.tail.clone()).filter(|t| !t.is_empty()),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Removes the preview's containers, networks, volumes, images and workspace, then marks it
    /// deleted. Failures leave the row live, so the next pass tries again.
    async fn remove(&self, repo: &str, number: u64, reason: DeletedReason) {
        let Ok(Some(row)) = self.get(repo, number).await else {
            return;
        };
        if let Err(e) = self.teardown(&row.project).await {
            tracing::warn!(repo, number, error = %e, "previews: removal failed; retrying on the next pass");
            return;
        }
        if row.is_live() {
            self.record(
                repo,
                number,
                &row.head_sha,
                Event::Delete,
                Details {
                    deleted_reason: Some(reason),
                    ..Details::default()
                },
            )
            .await;
        }
        tracing::info!(repo, number, reason = reason.as_str(), "previews: removed");
        self.report(repo, number);
    }

    /// `down` for a project: with its compose file when the workspace still has it, else (a lost
    /// workspace, an orphan, a file whose paths are gone) through the engine by Compose's project
    /// label; then the images built for it and the workspace.
    async fn teardown(&self, project: &str) -> Result<(), String> {
        let engine = self.engine().await.map_err(|e| e.to_string())?.clone();
        let workspace = self.workspace(project);
        let file = workspace.join("productbuilder.compose.yml");
        // The router is attached to the preview's networks; `down` cannot remove them until it
        // leaves.
        engine.detach_foreign(project).await?;
        let down = if file.is_file() {
            let cli = self.compose().await.map_err(|e| e.to_string())?;
            let p = Project {
                name: project.to_owned(),
                file,
                dir: workspace.clone(),
                env: Vec::new(),
            };
            cli.down(&p).await.map_err(|e| e.to_string())
        } else {
            Err("no compose file in the workspace".to_owned())
        };
        match down {
            // `down --rmi local` removed the images tagged now; earlier heads' are found by label.
            Ok(()) => engine.remove_images(project, false).await?,
            Err(why) => {
                tracing::debug!(project, why, "removing through the engine");
                engine.remove_project(project).await?;
            }
        }
        match tokio::fs::remove_dir_all(&workspace).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!(
                "cannot remove the workspace {}: {e}",
                workspace.display()
            )),
        }
    }

    /// Reports `repo#number` as its row says, unless that was already reported. One report per pull
    /// request runs at a time; asking again while it runs makes it run once more at the end, with
    /// the latest row.
    pub fn report(&self, repo: &str, number: u64) {
        let key = (repo.to_owned(), number);
        {
            let mut reporting = self
                .inner
                .reporting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(again) = reporting.get_mut(&key) {
                *again = true;
                return;
            }
            reporting.insert(key.clone(), false);
        }
        let this = self.clone();
        self.inner.reports_running.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            loop {
                match this.report_once(&key.0, key.1).await {
                    Ok(()) => {}
                    Err(ReportError::Refused {
                        key: refused,
                        message,
                    }) => {
                        tracing::warn!(repo = %key.0, number = key.1, error = %message, "previews: GitHub refused the report for good; not sending it again until the preview changes");
                        let (r, n) = (key.0.clone(), key.1);
                        if let Err(e) = this
                            .inner
                            .store
                            .call(move |c| db::set_report_refused(c, &r, n, &refused, &message))
                            .await
                        {
                            tracing::warn!(repo = %key.0, number = key.1, error = %e, "previews: cannot record the refused report");
                        }
                    }
                    Err(ReportError::Transient(e)) => {
                        tracing::warn!(repo = %key.0, number = key.1, error = %e, "previews: reporting to GitHub failed; retrying on the next pass");
                    }
                }
                let mut reporting = this
                    .inner
                    .reporting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match reporting.get_mut(&key) {
                    Some(again) if *again => *again = false,
                    _ => {
                        reporting.remove(&key);
                        this.inner.reports_running.send_modify(|n| *n -= 1);
                        return;
                    }
                }
            }
        });
    }

    async fn report_once(&self, repo: &str, number: u64) -> Result<(), ReportError> {
        let transient = |e: String| ReportError::Transient(e);
        let Some(row) = self
            .get(repo, number)
            .await
            .map_err(|e| transient(e.to_string()))?
        else {
            return Ok(());
        };
        let key = row.report_key();
        if row.reported.as_deref() == Some(key.as_str())
            || row.report_error_key.as_deref() == Some(key.as_str())
        {
            return Ok(());
        }
        let logs_url = self.inner.settings.public_url.as_ref().map(|base| {
            format!(
                "{}/previews/{repo}/{number}/logs",
                base.trim_end_matches('/')
            )
        });
        let commit_url = commit_url(&self.inner.github.client.url("/"), repo, &row.head_sha);
        let notices: Vec<String> = match row.deleted_reason {
            Some(DeletedReason::Evicted) if row.status == Status::Deleted => vec![format!(
                "Removed to make room: this host runs at most {} previews, and this one was the least recently updated. Push a commit to bring it back.",
                self.inner.settings.max_previews
            )],
            Some(DeletedReason::Expired) if row.status == Status::Deleted => vec![format!(
                "Removed after {} without a new commit. Push a commit to bring it back.",
                humantime::format_duration(self.inner.settings.ttl)
            )],
            _ => Vec::new(),
        };
        let body = comment::render(&CommentView {
            status: row.status,
            head_sha: &row.head_sha,
            commit_url: commit_url.as_deref(),
            preview_url: Some(&row.url),
            logs_url: logs_url.as_deref(),
            stage: row.stage,
            error: row.error.as_deref(),
            log_tail: row.log_tail.as_deref(),
            note: row.note.as_deref(),
            notices: &notices,
            waiting_sha: row.waiting_sha.as_deref(),
        });
        let gh = |e: productbuilder_github::GithubError| ReportError::from_github(e, &key);
        self.inner
            .comments
            .publish(repo, number, &body)
            .await
            .map_err(gh)?;

        let deployment = match row.deployment_id {
            Some(id) => id,
            None => {
                let id = self
                    .inner
                    .reporter
                    .ensure_deployment(repo, number, &row.head_sha)
                    .await
                    .map_err(gh)?;
                let (r, s) = (repo.to_owned(), row.head_sha.clone());
                self.inner
                    .store
                    .call(move |c| db::set_deployment(c, &r, number, &s, id))
                    .await
                    .map_err(|e| transient(e.to_string()))?;
                id
            }
        };
        let text = match (row.status, row.stage) {
            (Status::Failed, Some(stage)) => format!("Failed at {stage}"),
            (status, _) => format!("Preview {status}"),
        };
        let (deployment_state, commit_state) = match row.status {
            Status::Pending | Status::Building | Status::Deploying => {
                (DeploymentState::InProgress, Some(CommitState::Pending))
            }
            Status::Ready => (DeploymentState::Success, Some(CommitState::Success)),
            Status::Failed => (DeploymentState::Failure, Some(CommitState::Failure)),
            Status::Deleted => (DeploymentState::Inactive, None),
        };
        let env_url = (row.status == Status::Ready).then_some(row.url.as_str());
        self.inner
            .reporter
            .deployment_status(
                repo,
                deployment,
                deployment_state,
                &text,
                env_url,
                logs_url.as_deref(),
            )
            .await
            .map_err(gh)?;
        if let Some(state) = commit_state {
            self.inner
                .reporter
                .commit_status(
                    repo,
                    &row.head_sha,
                    state,
                    &text,
                    env_url.or(logs_url.as_deref()),
                )
                .await
                .map_err(gh)?;
        }
        let (r, k) = (repo.to_owned(), key.clone());
        self.inner
            .store
            .call(move |c| db::set_reported(c, &r, number, &k))
            .await
            .map_err(|e| transient(e.to_string()))?;
        Ok(())
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
            let rules = self.inner.rules.get(repo).cloned().unwrap_or_default();
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
        if !self.make_room(repo, number).await.map_err(unavailable)? {
            return Err(RedeployError::Unavailable(format!(
                "no room for {repo}#{number} under max_previews now: deploys under way hold every place; try again shortly"
            )));
        }
        tracing::info!(repo, number, sha = %sha, "previews: redeploy requested");
        self.spawn_deploy_at(repo, number, &sha);
        Ok(Redeploy::Started(sha))
    }

    /// The preview's logs, as the repository's contract says to read them. A follow takes one of
    /// the preview's [`MAX_FOLLOWS`] places until its stream is dropped, and ends after
    /// [`MAX_FOLLOW_DURATION`].
    pub async fn logs(
        &self,
        repo: &str,
        number: u64,
        tail: usize,
        follow: bool,
    ) -> Result<crate::engine::LogStream, LogsError> {
        let missing =
            |what: &str| LogsError::NotFound(format!("the preview of {repo}#{number} {what}"));
        let unavailable = |e: String| LogsError::Unavailable(e);
        let row = self
            .get(repo, number)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| missing("does not exist"))?;
        if !row.is_live() {
            return Err(missing("was removed"));
        }
        let service = row
            .log_service
            .clone()
            .ok_or_else(|| missing("has not started yet"))?;
        let slot = if follow {
            let slot = FollowSlot::take(&self.inner.follows, (repo.to_owned(), number));
            Some(slot.ok_or_else(|| {
                LogsError::TooManyFollows(format!(
                    "the preview of {repo}#{number} has {MAX_FOLLOWS} log follows open already; close one, or read without follow"
                ))
            })?)
        } else {
            None
        };
        let engine = self
            .engine()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let stream = match &row.log_file {
            None => {
                engine
                    .container_logs(&row.project, &service, tail, follow)
                    .await
            }
            Some(path) => {
                engine
                    .file_logs(&row.project, &service, path, tail, follow)
                    .await
            }
        };
        // The preview exists; its container may be gone (a failed start) or the engine away.
        let stream = stream.map_err(unavailable)?;
        Ok(match slot {
            None => stream,
            Some(slot) => {
                use futures_util::StreamExt;
                // The stream owns its place: dropped with it, however the follow ends.
                let stream = stream.map(move |item| {
                    let _owned = &slot;
                    item
                });
                at_most(Box::pin(stream), MAX_FOLLOW_DURATION)
            }
        })
    }
}

/// The commit's page on github.com; none for other servers (their web address is not derivable
/// from the API's).
/// `text` with the checkout's absolute path made relative (`.`), and the workspace and the state
/// directory named by role: error text reaches pull request comments.
fn host_paths_hidden(text: &str, workspace: &Path, state_dir: &Path) -> String {
    let mut out = text.to_owned();
    // Every attempt's checkout (`{workspace}/heads/{attempt}/checkout`) is the checkout.
    for form in [Some(workspace.to_path_buf()), workspace.canonicalize().ok()]
        .into_iter()
        .flatten()
    {
        let prefix = format!("{}/{HEADS}/", form.display());
        while let Some(start) = out.find(&prefix) {
            let rest = &out[start + prefix.len()..];
            let Some(end) = rest.find("/checkout") else {
                break;
            };
            let after = start + prefix.len() + end + "/checkout".len();
            let nested = out[after..].starts_with('/');
            let replacement = if nested { "" } else { "." };
            out.replace_range(start..after + usize::from(nested), replacement);
        }
    }
    let checkout = workspace.join("checkout");
    let mut forms = vec![
        (checkout.clone(), "."),
        (workspace.to_path_buf(), "<workspace>"),
    ];
    forms.push((state_dir.to_path_buf(), "<state_dir>"));
    for (path, name) in forms {
        for form in [Some(path.clone()), path.canonicalize().ok()]
            .into_iter()
            .flatten()
        {
            let form = form.display().to_string();
            if form.len() > 1 {
                if name == "." {
                    out = out.replace(&format!("{form}/"), "");
                }
                out = out.replace(&form, name);
            }
        }
    }
    out
}

fn commit_url(api_root: &str, repo: &str, sha: &str) -> Option<String> {
    api_root
        .starts_with("https://api.github.com")
        .then(|| format!("https://github.com/{repo}/commit/{sha}"))
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
    fn failures_name_no_host_path() {
        let ws = Path::new("/var/lib/pb/previews/pb--acme--shop--1");
        let state = Path::new("/var/lib/pb");
        let text = "cannot read /var/lib/pb/previews/pb--acme--shop--1/heads/0123456789ab-00ff/checkout/app/Dockerfile; \
                    wrote /var/lib/pb/previews/pb--acme--shop--1/productbuilder.compose.yml; \
                    db at /var/lib/pb/db.sqlite; checkout /var/lib/pb/previews/pb--acme--shop--1/heads/0123456789ab-00ff/checkout";
        assert_eq!(
            host_paths_hidden(text, ws, state),
            "cannot read app/Dockerfile; wrote <workspace>/productbuilder.compose.yml; \
             db at <state_dir>/db.sqlite; checkout ."
        );
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
