//! The build runner: runs one claimed build to its end.
//!
//! ## Expected flow
//! Clone (the base branch, or the build's branch when an earlier run pushed it: a build that goes
//! on from its pull request) → the deterministic branch → Agent → Commit (everything the agent
//! changed) → Push (to the clone URL the daemon holds, explicit refspec) → PullRequest (looked up
//! by branch right before it is created) → Callback → `queue.finish`. Each step is recorded with
//! `queue.record_step` BEFORE it runs; what it produced is saved in the build's `state.json`
//! after. A heartbeat extends the lease on an interval and carries cancel requests.
//!
//! ## Guarantees
//! - **Budgets keep the work.** When `max_duration`, `max_turns` or `max_cost_usd` is spent, or
//!   the agent fails midway, whatever it changed is committed as WIP, pushed, and opened as a
//!   DRAFT pull request saying what happened and how to go on (`/productbuilder continue`); the
//!   build is `failed` with the reason and its result carries the branch and pull request.
//! - **Nothing changed, nothing published.** An agent that changed nothing fails the build with
//!   "the agent changed nothing", and no pull request.
//! - **At most one pull request per branch.** It is looked up before it is created, also after a
//!   crash between creating it and recording it.
//! - **The token** reaches git's environment only (see [`crate::git`]); the agent's environment is
//!   the allowlist, minus any variable that holds the token; the transcript is redacted of the
//!   token, its base64 form, the callback secret and the agent's secret variables.
//! - **The workspace** `{state_dir}/builds/{id}/` (checkout and state) is removed when the build
//!   ends, whatever the end; kept across a transient retry and a crash so the work goes on.
//!
//! ## Errors
//! Transient ones (GitHub's 5xx and network, git's clone, ls-remote and push, a busy database)
//! put the build back with `queue.retry_later`; the rest fail it with the error. A lost lease
//! stops the runner at once (recovery took the build).

mod agent;
mod live;
pub mod state;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use productbuilder_settings::Secret;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::callback::{CallbackPolicy, Callbacks, payload};
use crate::comment;
use crate::config::BuildsConfig;
use crate::forge::{Forge, ForgeError, IssueText, NewPull, PullRef, ReviewComment};
use crate::git::{Author, BranchFor, Credentials, Git, GitError, branch_name};
use crate::prompt::{self, Continuing, PromptParts};
use crate::queue::{Claim, Finish, Queue, QueueError, Retry};
use crate::records::{Build, BuildId};
use crate::spec::BuildResult;
use crate::status::{Status, Step};
use crate::transcript::{self, Transcript};
use state::{AgentDone, AgentEnd, Saved, SavedEnd, SavedPull};

/// While the agent runs, the build comment shows its latest progress at most once a minute.
pub const PROGRESS_COMMENT_EVERY: Duration = Duration::from_secs(60);

/// The runner's clock (the queue's `now`).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// What happens to builds, as it happens (for live views and tests).
#[derive(Debug, Clone, PartialEq)]
pub struct BuildEvent {
    pub id: BuildId,
    /// `owner/name`: the feed of a tenant's build changes filters on it.
    pub repo: Arc<str>,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// About to start this step.
    Step(Step),
    /// A step of the agent (redacted).
    Progress(String),
    /// Finished with this status.
    Finished(Status),
}

/// How a run of [`Runner::run`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ran {
    /// Finished: the row is final.
    Finished { status: Status, reason: String },
    /// A transient failure: back to pending, tried again later.
    Retry { at: DateTime<Utc>, error: String },
    /// A transient failure with its attempts spent: failed.
    GaveUp { error: String },
    /// Recovery took the build (this runner was too slow): nothing more was done.
    LeaseLost,
    /// The daemon is stopping: the build stays running until recovery takes it back.
    Stopped,
}

/// Runs builds from the queue.
#[derive(Clone)]
pub struct Runner {
    queue: Queue,
    forge: Arc<dyn Forge>,
    config: Arc<BuildsConfig>,
    state_dir: PathBuf,
    owner: String,
    callbacks: Callbacks,
    heartbeat_every: Duration,
    /// While the agent runs, its build comment shows its latest progress at most this often.
    progress_comment_every: Duration,
    git_program: OsString,
    clock: Clock,
    events: broadcast::Sender<BuildEvent>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("owner", &self.owner)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// A failed step: its message (redacted before it is shown) and whether to try again later.
#[derive(Debug)]
struct StepError {
    transient: bool,
    message: String,
    lease_lost: bool,
}

impl StepError {
    fn permanent(message: impl Into<String>) -> StepError {
        StepError {
            transient: false,
            message: message.into(),
            lease_lost: false,
        }
    }
}

impl From<ForgeError> for StepError {
    fn from(e: ForgeError) -> StepError {
        StepError {
            transient: e.is_transient(),
            message: e.to_string(),
            lease_lost: false,
        }
    }
}

impl From<QueueError> for StepError {
    fn from(e: QueueError) -> StepError {
        StepError {
            transient: e.is_busy(),
            lease_lost: matches!(e, QueueError::LeaseLost { .. }),
            message: e.to_string(),
        }
    }
}

impl From<GitError> for StepError {
    fn from(e: GitError) -> StepError {
        use crate::git::Step as G;
        // Network steps may succeed later; a rejected push or a broken checkout will not, but
        // the attempts are bounded.
        let transient = matches!(e.step(), Some(G::Clone | G::Push | G::ListRemote))
            && !matches!(&e, GitError::Failed { source, .. } if matches!(source, productbuilder_process::Error::Cancelled { .. }));
        let tail = e.tail().trim();
        let message = if tail.is_empty() {
            e.to_string()
        } else {
            format!("{e}: {}", crate::agent::short(tail, 600))
        };
        StepError {
            transient,
            message,
            lease_lost: false,
        }
    }
}

impl From<std::io::Error> for StepError {
    fn from(e: std::io::Error) -> StepError {
        StepError::permanent(format!("the build's workspace: {e}"))
    }
}

impl Runner {
    /// A runner taking builds from `queue` as `owner` (unique per daemon: `host:pid`, say), with
    /// GitHub behind `forge`, workspaces and transcripts under `{state_dir}/builds/`.
    pub fn new(
        queue: Queue,
        forge: Arc<dyn Forge>,
        config: BuildsConfig,
        state_dir: impl Into<PathBuf>,
        owner: impl Into<String>,
    ) -> std::io::Result<Runner> {
        let callbacks = Callbacks::new(config.callback_secret.clone(), CallbackPolicy::default())?;
        let heartbeat_every = (queue.config().lease / 3).max(Duration::from_millis(10));
        Ok(Runner {
            queue,
            forge,
            config: Arc::new(config),
            state_dir: state_dir.into(),
            owner: owner.into(),
            callbacks,
            heartbeat_every,
            progress_comment_every: PROGRESS_COMMENT_EVERY,
            git_program: "git".into(),
            clock: Arc::new(Utc::now),
            events: broadcast::channel(1024).0,
        })
    }

    /// How often the lease is extended and cancel requests are looked at (default: a third of
    /// the lease).
    pub fn heartbeat_every(mut self, every: Duration) -> Runner {
        self.heartbeat_every = every.max(Duration::from_millis(1));
        self
    }

    /// How often, at most, the build comment shows the agent's latest progress while it runs
    /// (default [`PROGRESS_COMMENT_EVERY`]): each edit is a GitHub write, paced with the rest.
    pub fn progress_comment_every(mut self, every: Duration) -> Runner {
        self.progress_comment_every = every.max(Duration::from_millis(1));
        self
    }

    pub fn callback_policy(mut self, policy: CallbackPolicy) -> std::io::Result<Runner> {
        self.callbacks = Callbacks::new(self.config.callback_secret.clone(), policy)?;
        Ok(self)
    }

    pub fn clock(mut self, clock: Clock) -> Runner {
        self.clock = clock;
        self
    }

    /// The git binary (default `git` on the daemon's `PATH`).
    pub fn git_program(mut self, program: impl Into<OsString>) -> Runner {
        self.git_program = program.into();
        self
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BuildEvent> {
        self.events.subscribe()
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The transcript of build `id` (`GET /builds/{id}/log`).
    pub fn transcript_path(&self, id: BuildId) -> PathBuf {
        transcript::path(&self.state_dir, id)
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Claims one build, if one is due and there is room, and runs it to its end.
    pub async fn run_once(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<(BuildId, Ran)>, QueueError> {
        let Some(claim) = self.queue.claim(&self.owner, self.now()).await? else {
            return Ok(None);
        };
        let id = claim.build.id;
        Ok(Some((id, self.run(claim, shutdown).await)))
    }

    /// Runs builds until `shutdown`: recovery first (builds a dead daemon left), then claims up
    /// to `max_concurrent` at once, looking again when one ends, when `wake` is notified (a
    /// build was enqueued) or every `poll` otherwise. Each build runs as a named task; all are
    /// dropped (their agents killed) at shutdown.
    pub async fn serve(
        self,
        shutdown: CancellationToken,
        wake: Arc<tokio::sync::Notify>,
        poll: Duration,
    ) {
        let mut running = tokio::task::JoinSet::new();
        let max = self.config.max_concurrent.max(1) as usize;
        loop {
            if let Err(e) = self.queue.recover(self.now()).await {
                tracing::warn!(error = %e, "builds: recovery failed; trying again at the next look");
            }
            while running.len() < max {
                match self.queue.claim(&self.owner, self.now()).await {
                    Ok(Some(claim)) => {
                        let runner = self.clone();
                        let shutdown = shutdown.clone();
                        running.spawn(async move {
                            let id = claim.build.id;
                            let ran = runner.run(claim, &shutdown).await;
                            tracing::info!(build = %id, ran = ?ran, "builds: a build ran");
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "builds: claiming failed");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        running.shutdown().await;
    }

    /// Runs `claim` to its end (see the module documentation).
    pub async fn run(&self, claim: Claim, shutdown: &CancellationToken) -> Ran {
        let build = claim.build;
        let id = build.id;
        let cancel = CancellationToken::new();
        let lost = Arc::new(AtomicBool::new(false));
        let mut run = BuildRun {
            lost: lost.clone(),
            runner: self,
            dir: self.state_dir.join("builds").join(id.to_string()),
            transcript: Transcript::open(&self.transcript_path(id)),
            progress: Vec::new(),
            saved: Saved::default(),
            started: Instant::now(),
            cancel: cancel.clone(),
            build,
        };
        if let Some(secret) = &self.config.callback_secret {
            run.transcript.redact(secret.expose());
        }
        for secret in self.config.env_files.values() {
            run.transcript.redact(secret.expose());
        }
        tokio::select! {
            ran = run.drive(claim.resume_from) => ran,
            never = heartbeat(self, id, cancel.clone(), lost) => match never {},
            _ = shutdown.cancelled() => Ran::Stopped,
        }
    }
}

/// Extends the lease every `heartbeat_every`; a cancel request or a lost lease cancels the build
/// (a lost lease also sets `lost`: then nothing more is written, not even the saved state).
async fn heartbeat(
    runner: &Runner,
    id: BuildId,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(runner.heartbeat_every).await;
        match runner
            .queue
            .heartbeat(id, &runner.owner, runner.now())
            .await
        {
            Ok(beat) if beat.cancel_requested => cancel.cancel(),
            Ok(_) => {}
            Err(QueueError::LeaseLost { .. }) => {
                lost.store(true, Ordering::SeqCst);
                cancel.cancel();
            }
            Err(e) => tracing::warn!(build = %id, error = %e, "builds: heartbeat failed"),
        }
    }
}

/// One build being run.
struct BuildRun<'a> {
    runner: &'a Runner,
    build: Build,
    /// `{state_dir}/builds/{id}`: `checkout/` and `state.json`.
    dir: PathBuf,
    transcript: Transcript,
    progress: Vec<String>,
    saved: Saved,
    started: Instant,
    cancel: CancellationToken,
    /// Recovery took the build: stop without writing anything.
    lost: Arc<AtomicBool>,
}

impl BuildRun<'_> {
    fn id(&self) -> BuildId {
        self.build.id
    }

    fn checkout(&self) -> PathBuf {
        self.dir.join("checkout")
    }

    fn config(&self) -> &BuildsConfig {
        &self.runner.config
    }

    /// The issue or pull request the build comment goes on.
    fn comment_on(&self) -> Option<u64> {
        self.build.spec.issue.or(self.build.number)
    }

    async fn drive(&mut self, resume_from: Option<Step>) -> Ran {
        self.transcript.note(&format!(
            "build {} attempt {} for {}{}",
            self.id(),
            self.build.attempts,
            self.build.repo,
            resume_from.map_or(String::new(), |s| format!(", resuming from step {s}"))
        ));
        self.saved = self.resumable_state();
        let end = match self.saved.end.clone() {
            Some(end) => Ok(end),
            None => self.work().await,
        };
        match end {
            Ok(end) => self.end(end).await,
            Err(e) => self.failed_step(e).await,
        }
    }

    /// The saved state, when the work it records can go on from it; otherwise a fresh workspace.
    fn resumable_state(&mut self) -> Saved {
        if let Some(saved) = Saved::load(&self.dir) {
            let needs_checkout = saved.end.is_none() && !saved.pushed;
            if saved.agent.is_some() && (!needs_checkout || self.checkout().is_dir()) {
                self.transcript
                    .note("going on from the saved state (the agent's run is not repeated)");
                return saved;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Saved::default()
    }

    fn save(&self) -> Result<(), StepError> {
        self.saved.store(&self.dir).map_err(StepError::from)
    }

    async fn step(&mut self, step: Step) -> Result<(), StepError> {
        self.runner
            .queue
            .record_step(self.id(), &self.runner.owner, step, self.runner.now())
            .await?;
        let _ = self.runner.events.send(BuildEvent {
            id: self.id(),
            repo: Arc::from(self.build.repo.as_str()),
            kind: EventKind::Step(step),
        });
        self.transcript.note(&format!("step {step}"));
        // The comment is written when the long step begins (the agent) and at the end, not at
        // every step: each edit is a GitHub write, paced a second apart with the daemon's other
        // writes (the benchmark: six of a build's eight writes were these edits).
        if step == Step::Agent {
            self.comment("running", Some(step.as_str()), None).await;
        }
        Ok(())
    }

    /// Upserts the build comment; a failure is logged, never fails the build.
    async fn comment(&mut self, status: &str, step: Option<&str>, detail: Option<&str>) {
        let Some(number) = self.comment_on() else {
            return;
        };
        let detail = detail.map(|d| self.transcript.redacted(d));
        let pr = self
            .saved
            .pull
            .as_ref()
            .map(|p| (p.number, p.url.as_str(), p.draft));
        let body = comment::body(comment::View {
            id: self.id(),
            status,
            step,
            branch: self.saved.branch.as_deref(),
            pr,
            progress: &self.progress,
            detail: detail.as_deref(),
            preview: None,
        });
        let forge = &self.runner.forge;
        if let Err(e) = forge
            .upsert_build_comment(&self.build.repo, number, &body)
            .await
        {
            tracing::warn!(build = %self.build.id, error = %e, "builds: the build comment was not written");
            self.transcript
                .note(&format!("the build comment was not written: {e}"));
        }
    }

    /// git for this build: the token (if the forge gives one and the URL is http(s)) in its
    /// environment only, redacted from the transcript too.
    async fn git(&mut self, clone_url: &str) -> Result<Git, StepError> {
        let config = self.config();
        let mut git = Git::new(Author {
            name: config.author_name.clone(),
            email: config.author_email.clone(),
        })
        .program(self.runner.git_program.clone())
        .cancel_on(self.cancel.clone());
        if let Some(key) = &config.signing_key_file {
            git = git.signing_key(key);
        }
        let token = self.runner.forge.token_for(&self.build.repo).await?;
        if let Some(token) = token {
            self.redact_token(&token);
            if clone_url.starts_with("https://") || clone_url.starts_with("http://") {
                let credentials = Credentials::for_url(clone_url, token.expose())?;
                git = git.credentials(credentials);
            }
        }
        Ok(git)
    }

    /// The token and the header git sends it in (`base64("x-access-token:" + token)`), whatever
    /// the clone URL.
    fn redact_token(&mut self, token: &Secret) {
        use base64::Engine as _;
        self.transcript.redact(token.expose());
        self.transcript.redact(
            base64::engine::general_purpose::STANDARD
                .encode(format!("x-access-token:{}", token.expose())),
        );
    }

    /// Clone, agent, commit, push, pull request: the end the build comes to.
    async fn work(&mut self) -> Result<SavedEnd, StepError> {
        if self.saved.agent.is_none() {
            // Comments when the agent starts.
            self.clone_and_run_agent().await?;
        } else {
            // Resumed after the agent: say it runs again.
            self.comment("running", None, None).await;
        }
        let agent = self.saved.agent.clone().expect("the agent ran");
        let (status, reason) = match &agent.end {
            AgentEnd::Cancelled => return Ok(self.ending(Status::Cancelled, "cancel requested")),
            AgentEnd::Failed { reason } => {
                return Ok(self.ending(Status::Failed, reason));
            }
            AgentEnd::Success => (Status::Completed, String::new()),
            AgentEnd::Partial { reason } => (Status::Failed, reason.clone()),
        };
        let spec = self.build.spec.clone();
        if !spec.auto_commit {
            return Ok(self.ending(status, &reason));
        }
        // Where the work goes is decided again, never read back from the saved state: the agent
        // runs beside that file and could point the push (and the token) elsewhere.
        let info = self.runner.forge.repository(&self.build.repo).await?;
        let clone_url = info.clone_url;
        let branch = self.branch().await?;
        self.saved.branch = Some(branch.clone());
        self.saved.base_branch = Some(spec.base.clone().unwrap_or(info.default_branch));
        if !self.saved.pushed {
            let git = self.git(&clone_url).await?;
            let checkout = self.checkout();
            if self.saved.commit_sha.is_none() {
                self.step(Step::Commit).await?;
                git.stage_all(&checkout).await?;
                let message = self.commit_message(&agent);
                git.commit(&checkout, &message).await?;
                let head = git.head(&checkout).await?;
                let base = self.saved.base_sha.clone().unwrap_or_default();
                if head == base {
                    let why = match &agent.end {
                        AgentEnd::Partial { reason } => {
                            format!("the agent changed nothing ({reason})")
                        }
                        _ => "the agent changed nothing".to_owned(),
                    };
                    return Ok(self.ending(Status::Failed, &why));
                }
                self.saved.files_changed = git.files_changed(&checkout, &base).await?;
                self.saved.commit_sha = Some(head);
                self.save()?;
            }
            if !spec.auto_push {
                return Ok(self.ending(status, &reason));
            }
            self.step(Step::Push).await?;
            git.push(&checkout, &clone_url, &branch).await?;
            self.saved.pushed = true;
            self.save()?;
        }
        if spec.open_pr && self.saved.pull.is_none() {
            self.step(Step::PullRequest).await?;
            let pull = self.pull_request(&agent, &branch).await?;
            self.saved.pull = Some(SavedPull {
                number: pull.number,
                url: pull.url,
                draft: pull.draft,
            });
            self.save()?;
        }
        Ok(self.ending(status, &reason))
    }

    async fn clone_and_run_agent(&mut self) -> Result<(), StepError> {
        let runner = self.runner;
        let repo = self.build.repo.clone();
        let spec = self.build.spec.clone();
        std::fs::create_dir_all(&self.dir)?;
        self.step(Step::Clone).await?;
        let info = runner.forge.repository(&repo).await?;
        let git = self.git(&info.clone_url).await?;
        let branch = self.branch().await?;
        let base_branch = spec.base.clone().unwrap_or(info.default_branch.clone());
        let checkout = self.checkout();
        let _ = std::fs::remove_dir_all(&checkout);
        let continuing = if git.remote_branch(&info.clone_url, &branch).await?.is_some() {
            // An earlier run pushed this branch: go on from its work.
            git.clone(&info.clone_url, &checkout, Some(&branch)).await?;
            runner
                .forge
                .open_pull_for_branch(&repo, &branch)
                .await?
                .map(|p| p.number)
        } else {
            git.clone(&info.clone_url, &checkout, Some(&base_branch))
                .await?;
            git.create_branch(&checkout, &branch).await?;
            None
        };
        self.saved.base_sha = Some(git.head(&checkout).await?);
        self.saved.branch = Some(branch.clone());
        self.saved.base_branch = Some(base_branch);
        self.saved.continuing = continuing;
        self.save()?;

        let issue = match spec.issue {
            Some(n) => Some((n, runner.forge.issue(&repo, n).await?)),
            None => None,
        };
        let comments: Vec<ReviewComment> = match continuing {
            Some(pr) => runner.forge.review_comments(&repo, pr).await?,
            None => Vec::new(),
        };
        let prompt = prompt::prompt(PromptParts {
            spec: &spec,
            issue: issue.as_ref().map(|(n, i): &(u64, IssueText)| (*n, i)),
            continuing: continuing.map(|pr_number| Continuing {
                pr_number,
                branch: &branch,
                comments: &comments,
            }),
        });

        self.step(Step::Agent).await?;
        let token = runner.forge.token_for(&repo).await?;
        let (env, secrets) = agent_env(self.config(), std::env::vars_os(), token.as_ref());
        let agent_ended = CancellationToken::new();
        let live = live::live_progress(live::LiveProgress {
            forge: runner.forge.clone(),
            events: runner.events.subscribe(),
            repo: repo.clone(),
            number: self.comment_on(),
            id: self.id(),
            branch: branch.clone(),
            every: runner.progress_comment_every,
            until: agent_ended.clone(),
        });
        let run = async {
            let done = agent::AgentRun {
                id: self.id(),
                repo: Arc::from(repo.as_str()),
                config: &runner.config,
                argv: runner.config.argv(&prompt),
                checkout: &checkout,
                env,
                secrets,
                cancel: self.cancel.clone(),
                events: &runner.events,
            }
            .run(&mut self.transcript, &mut self.progress)
            .await;
            agent_ended.cancel();
            done
        };
        let (done, ()) = tokio::join!(run, live);
        if self.lease_lost() {
            return Err(StepError {
                transient: false,
                message: "the lease was lost".into(),
                lease_lost: true,
            });
        }
        self.saved.agent = Some(done);
        self.save()?;
        Ok(())
    }

    /// The build's branch: a pull request's own head branch (more commits on it), else
    /// `{prefix}issue-{n}`, or `{prefix}build-{id}` without an issue.
    async fn branch(&self) -> Result<String, StepError> {
        let prefix = &self.config().branch_prefix;
        if let Some(pull) = self.build.spec.pull_request {
            let found = self
                .runner
                .forge
                .pull_branch(&self.build.repo, pull)
                .await?;
            let Some(branch) = found else {
                return Err(StepError {
                    transient: false,
                    message: format!(
                        "pull request #{pull} is not open, or its branch lives in a fork (which the daemon cannot push to)"
                    ),
                    lease_lost: false,
                });
            };
            crate::git::check_branch(&branch)?;
            return Ok(branch);
        }
        Ok(match self.build.spec.issue {
            Some(n) => branch_name(prefix, BranchFor::Issue(n)),
            None => branch_name(prefix, BranchFor::Build(&self.id().to_string())),
        }?)
    }

    fn title(&self) -> String {
        let spec = &self.build.spec;
        let first = spec.prompt.lines().next().unwrap_or("").trim();
        crate::agent::short(first, 72)
    }

    fn commit_message(&self, agent: &AgentDone) -> String {
        let mut message = match &agent.end {
            AgentEnd::Partial { .. } => format!("WIP: {}", self.title()),
            _ => self.title(),
        };
        message.push_str(&format!("\n\nproductbuilder build {}", self.id()));
        if let Some(n) = self.build.spec.issue {
            message.push_str(&format!(" for #{n}"));
        }
        if let AgentEnd::Partial { reason } = &agent.end {
            message.push_str(&format!(
                "\n\nUnfinished: {}",
                self.transcript.redacted(&crate::agent::short(reason, 400))
            ));
        }
        message
    }

    /// The build's open pull request for `branch`, or a new one (draft when asked, or when the
    /// work is partial).
    async fn pull_request(
        &mut self,
        agent: &AgentDone,
        branch: &str,
    ) -> Result<PullRef, StepError> {
        let forge = &self.runner.forge;
        let repo = self.build.repo.clone();
        if let Some(existing) = forge.open_pull_for_branch(&repo, branch).await? {
            self.transcript.note(&format!(
                "pull request #{} is already open for {branch}",
                existing.number
            ));
            return Ok(existing);
        }
        let partial = matches!(agent.end, AgentEnd::Partial { .. });
        let mut body = String::new();
        if let Some(n) = self.build.spec.issue {
            body.push_str(&format!("Closes #{n}\n\n"));
        }
        if let AgentEnd::Partial { reason } = &agent.end {
            // The reason quotes the agent: fenced, so no mention or markup of it renders.
            body.push_str(&format!(
                "**Unfinished.** What the agent changed so far is committed here. To go on, comment `/productbuilder continue` on this pull request. Why it stopped:\n\n{}\n",
                prompt::fenced(&self.transcript.redacted(&crate::agent::short(reason, 600)))
            ));
        }
        if let Some(summary) = &agent.summary {
            body.push_str("The agent's summary:\n\n");
            body.push_str(&prompt::fenced(&prompt::cut(summary, 4000)));
            body.push('\n');
        }
        body.push_str(&format!(
            "Built by productbuilder (build {}{}{}).",
            self.id(),
            agent
                .turns
                .map_or(String::new(), |t| format!(", {t} turns")),
            agent
                .cost_usd
                .map_or(String::new(), |c| format!(", ${c:.2}"))
        ));
        let title = match self.build.spec.issue {
            Some(n) => format!("{} (#{n})", self.title()),
            None => self.title(),
        };
        let pull = NewPull {
            title: if partial {
                format!("WIP: {title}")
            } else {
                title
            },
            head: branch.to_owned(),
            base: self.saved.base_branch.clone().unwrap_or_default(),
            body: self.transcript.redacted(&body),
            draft: self.build.spec.draft || partial,
        };
        Ok(forge.create_pull(&repo, &pull).await?)
    }

    /// The end, with the result filled from what was saved; saved before the callback.
    fn ending(&mut self, status: Status, reason: &str) -> SavedEnd {
        let agent = self.saved.agent.as_ref();
        let error = (status != Status::Completed && !reason.is_empty())
            .then(|| self.transcript.redacted(reason));
        let result = BuildResult {
            success: status == Status::Completed,
            output: BuildResult::bounded_output(&self.transcript.tail()),
            error,
            commit_sha: self.saved.commit_sha.clone(),
            files_changed: self.saved.files_changed.clone(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            artifacts: Vec::new(),
            branch: self
                .saved
                .pushed
                .then(|| self.saved.branch.clone())
                .flatten(),
            pr_number: self.saved.pull.as_ref().map(|p| p.number),
            pr_url: self.saved.pull.as_ref().map(|p| p.url.clone()),
            preview_url: None,
            cost_usd: agent.and_then(|a| a.cost_usd),
            turns: agent.and_then(|a| a.turns),
        };
        let reason = if reason.is_empty() {
            status.as_str().to_owned()
        } else {
            self.transcript.redacted(reason)
        };
        SavedEnd {
            status,
            reason,
            result,
        }
    }

    /// Callback, finish, comment, cleanup.
    fn lease_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    async fn end(&mut self, end: SavedEnd) -> Ran {
        if self.lease_lost() {
            self.transcript.note("the lease was lost; stopping");
            return Ran::LeaseLost;
        }
        self.saved.end = Some(end.clone());
        if let Err(e) = self.save() {
            self.transcript.note(&e.message);
        }
        if let Some(url) = self.build.spec.callback_url.clone() {
            if let Err(e) = self.step(Step::Callback).await {
                if e.lease_lost {
                    return Ran::LeaseLost;
                }
                // Busy: the saved end is called back and finished on the next attempt.
                return self.retry(e.message).await;
            }
            let body = payload(self.id(), &self.build.repo, end.status, &end.result);
            // Not the build's cancel: a cancelled build is still called back.
            let never = CancellationToken::new();
            match self
                .runner
                .callbacks
                .send(&url, self.id(), body, &never)
                .await
            {
                Ok(d) => self.transcript.note(&format!(
                    "callback delivered (answered {} after {} attempts)",
                    d.status, d.attempts
                )),
                Err(e) => {
                    tracing::warn!(build = %self.id(), error = %e, "builds: callback not delivered");
                    self.transcript
                        .note(&format!("callback not delivered: {e}"));
                }
            }
        }
        let finish = match end.status {
            Status::Completed => Finish::Completed(end.result.clone()),
            Status::Cancelled => Finish::Cancelled(end.result.clone()),
            _ => Finish::Failed {
                result: end.result.clone(),
                reason: end.reason.clone(),
            },
        };
        let finished = self
            .runner
            .queue
            .finish(self.id(), &self.runner.owner, finish, self.runner.now())
            .await;
        match finished {
            Ok(_) => {}
            Err(QueueError::LeaseLost { .. }) => return Ran::LeaseLost,
            Err(e) => {
                // Busy, most likely: the saved end is sent and finished again on resume.
                self.transcript.note(&format!("finishing failed: {e}"));
                return self.retry(e.to_string()).await;
            }
        }
        self.transcript
            .note(&format!("build {}: {}", end.status, end.reason));
        let detail = (end.status != Status::Completed).then_some(end.reason.as_str());
        self.comment(end.status.as_str(), None, detail).await;
        let _ = self.runner.events.send(BuildEvent {
            id: self.id(),
            repo: Arc::from(self.build.repo.as_str()),
            kind: EventKind::Finished(end.status),
        });
        let _ = std::fs::remove_dir_all(&self.dir);
        Ran::Finished {
            status: end.status,
            reason: end.reason,
        }
    }

    async fn failed_step(&mut self, e: StepError) -> Ran {
        if e.lease_lost || self.lease_lost() {
            self.transcript.note("the lease was lost; stopping");
            return Ran::LeaseLost;
        }
        let message = self.transcript.redacted(&e.message);
        self.transcript.note(&format!("step failed: {message}"));
        if self.cancel.is_cancelled() {
            // A git step or the forge stopped because of the cancel: the build is cancelled.
            let end = self.ending(Status::Cancelled, "cancel requested");
            return self.end(end).await;
        }
        if e.transient {
            return self.retry(message).await;
        }
        let end = self.ending(Status::Failed, &message);
        self.end(end).await
    }

    async fn retry(&mut self, error: String) -> Ran {
        let retried = self
            .runner
            .queue
            .retry_later(self.id(), &self.runner.owner, &error, self.runner.now())
            .await;
        match retried {
            Ok(Retry::Scheduled { at }) => {
                self.transcript
                    .note(&format!("transient failure, tried again at {at}: {error}"));
                self.comment("pending", None, Some(&error)).await;
                Ran::Retry { at, error }
            }
            Ok(Retry::GaveUp) => {
                self.transcript
                    .note(&format!("transient failure, attempts spent: {error}"));
                self.comment("failed", None, Some(&error)).await;
                let _ = std::fs::remove_dir_all(&self.dir);
                Ran::GaveUp { error }
            }
            Err(QueueError::LeaseLost { .. }) => Ran::LeaseLost,
            Err(e) => {
                // The lease runs out and recovery takes the build.
                self.transcript.note(&format!("retry not recorded: {e}"));
                Ran::Retry {
                    at: self.runner.now(),
                    error,
                }
            }
        }
    }
}

/// The agent's environment from the daemon's `vars`: the allowlisted ones, and the secret files;
/// a variable whose value holds the token is left out. Also what to redact from its output: the
/// token, the secret files, and allowlisted variables whose names say they are secrets.
pub(crate) fn agent_env(
    config: &BuildsConfig,
    vars: impl Iterator<Item = (OsString, OsString)>,
    token: Option<&Secret>,
) -> (Vec<(OsString, OsString)>, Vec<String>) {
    let mut env = Vec::new();
    let mut secrets = Vec::new();
    for (name, value) in productbuilder_process::allowed_env(&config.env, vars) {
        let text = value.to_string_lossy();
        if let Some(token) = token
            && text.contains(token.expose())
        {
            tracing::warn!(variable = ?name, "builds: a variable that holds the GitHub token is not given to the agent");
            continue;
        }
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if ["KEY", "TOKEN", "SECRET", "PASS", "AUTH"]
            .iter()
            .any(|w| upper.contains(w))
        {
            secrets.push(text.into_owned());
        }
        env.push((name, value));
    }
    for (name, value) in &config.env_files {
        env.push((name.into(), value.expose().into()));
        secrets.push(value.expose().to_owned());
    }
    if let Some(token) = token {
        use base64::Engine as _;
        secrets.push(token.expose().to_owned());
        secrets.push(
            base64::engine::general_purpose::STANDARD
                .encode(format!("x-access-token:{}", token.expose())),
        );
    }
    (env, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_gets_the_allowlist_and_never_the_token() {
        let mut config = BuildsConfig::new(vec!["agent".into(), "{prompt}".into()]);
        config.env = vec!["PATH".into(), "ANTHROPIC_API_KEY".into(), "LEAKY".into()];
        config
            .env_files
            .insert("OPENAI_API_KEY".into(), Secret::new("sk-file"));
        let vars = [
            ("PATH", "/usr/bin"),
            ("ANTHROPIC_API_KEY", "sk-ant-1"),
            ("LEAKY", "Bearer ghs_TOKEN"),
            ("PRODUCTBUILDER_GITHUB__TOKEN", "ghs_TOKEN"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let token = Secret::new("ghs_TOKEN");
        let (env, secrets) = agent_env(&config, vars.into_iter(), Some(&token));
        let names: Vec<_> = env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["PATH", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"]);
        assert!(
            env.iter()
                .all(|(_, v)| !v.to_string_lossy().contains("ghs_TOKEN"))
        );
        assert_eq!(
            secrets,
            [
                "sk-ant-1",
                "sk-file",
                "ghs_TOKEN",
                "eC1hY2Nlc3MtdG9rZW46Z2hzX1RPS0VO"
            ]
        );
    }
}
