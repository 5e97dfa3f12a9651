//! The sandbox's in-memory state (`World`) and the public records the control API hands out.
//!
//! Everything lives behind one `std::sync::Mutex` (never held across an `.await`). Control-API
//! methods (called by tests) panic with a clear message on misuse such as an unknown repository;
//! REST-facing methods return [`ApiError`]s so hostile HTTP input never panics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::Method;
use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use crate::http::ApiError;

/// A level of access to a repository, as GitHub's `permissions` object reports it.
///
/// `Pull` reads, `Push` also writes content (comments, statuses, deployments), `Admin` is what
/// the repository owner has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Read access.
    Pull,
    /// Read and write access.
    Push,
    /// Full access (the owner).
    Admin,
}

/// A pull request to open with [`Sandbox::open_pr`](crate::Sandbox::open_pr).
///
/// Build it with [`NewPr::new`] and the `with_*`/`as_*` helpers, or with struct syntax and
/// `..Default::default()`.
#[derive(Clone, Debug, Default)]
pub struct NewPr {
    /// The title.
    pub title: String,
    /// The description (`body`); `None` is GitHub's `null` body.
    pub body: Option<String>,
    /// The author's login (created as a user on demand).
    pub author: String,
    /// The head branch name; empty means `patch-<number>`.
    pub head_ref: String,
    /// The files of the head commit: `(path, content)`. Paths are relative, `/`-separated.
    pub files: Vec<(String, Vec<u8>)>,
    /// Whether the head lives in a fork `<author>/<repo name>` (created on demand).
    pub fork: bool,
    /// Whether the pull request is a draft.
    pub draft: bool,
    /// Label names (label definitions are created on demand).
    pub labels: Vec<String>,
    /// `author_association` as GitHub reports it (`OWNER`, `MEMBER`, `COLLABORATOR`,
    /// `CONTRIBUTOR`, `FIRST_TIME_CONTRIBUTOR`, `NONE`...). Empty means: computed from the
    /// repository (`OWNER` for the owner, `COLLABORATOR` with push access, else `NONE`).
    pub author_association: String,
}

impl NewPr {
    /// A pull request with a title, an author and a head branch, and no files yet.
    pub fn new(title: &str, author: &str, head_ref: &str) -> NewPr {
        NewPr {
            title: title.to_string(),
            author: author.to_string(),
            head_ref: head_ref.to_string(),
            ..NewPr::default()
        }
    }

    /// Adds a file to the head commit.
    pub fn with_file(mut self, path: &str, content: impl Into<Vec<u8>>) -> NewPr {
        self.files.push((path.to_string(), content.into()));
        self
    }

    /// Sets the description.
    pub fn with_body(mut self, body: &str) -> NewPr {
        self.body = Some(body.to_string());
        self
    }

    /// Adds a label.
    pub fn with_label(mut self, label: &str) -> NewPr {
        self.labels.push(label.to_string());
        self
    }

    /// Sets `author_association`.
    pub fn with_association(mut self, association: &str) -> NewPr {
        self.author_association = association.to_string();
        self
    }

    /// Puts the head in a fork owned by the author.
    pub fn from_fork(mut self) -> NewPr {
        self.fork = true;
        self
    }

    /// Marks the pull request as a draft.
    pub fn as_draft(mut self) -> NewPr {
        self.draft = true;
        self
    }
}

/// A fault to inject with [`Sandbox::inject`](crate::Sandbox::inject).
///
/// For each request, the first fault in injection order whose `method` (if any) and
/// `path_prefix` match and whose `times` is above zero applies, and its `times` is decremented.
/// It applies before authentication: the request then waits `delay` (if any) and, unless
/// `status` is `0`, is answered with `status` and `body` (default: GitHub's error JSON for that
/// status) plus `retry-after` and, with `rate_limit_remaining_zero`, rate-limit headers showing
/// `x-ratelimit-remaining: 0`. Fault responses do not cost primary quota. With `status == 0` the
/// request goes on normally after the delay (a slow but healthy answer).
#[derive(Clone, Debug)]
pub struct Fault {
    /// Only requests with this method; `None` matches every method.
    pub method: Option<Method>,
    /// Matches requests whose path-and-query starts with this (`""` matches all).
    pub path_prefix: String,
    /// How many more requests this fault applies to.
    pub times: usize,
    /// The status to answer with; `0` means "no error, just the delay".
    pub status: u16,
    /// A `retry-after` header value in seconds (GitHub's secondary-limit answer).
    pub retry_after: Option<u64>,
    /// Sleep this long before answering (the request counts as in flight meanwhile).
    pub delay: Option<Duration>,
    /// A raw body to send instead of the default error JSON (e.g. malformed JSON).
    pub body: Option<String>,
    /// Send `x-ratelimit-remaining: 0` (and `used` = `limit`) instead of the real counters.
    pub rate_limit_remaining_zero: bool,
}

impl Fault {
    /// A fault answering `status` once for requests under `path_prefix`.
    pub fn new(path_prefix: &str, status: u16) -> Fault {
        Fault {
            method: None,
            path_prefix: path_prefix.to_string(),
            times: 1,
            status,
            retry_after: None,
            delay: None,
            body: None,
            rate_limit_remaining_zero: false,
        }
    }

    /// A fault that only delays requests under `path_prefix` (once), then serves them normally.
    pub fn delay_only(path_prefix: &str, delay: Duration) -> Fault {
        Fault {
            delay: Some(delay),
            ..Fault::new(path_prefix, 0)
        }
    }

    /// Applies to `n` requests instead of one.
    pub fn times(mut self, n: usize) -> Fault {
        self.times = n;
        self
    }

    /// Applies only to requests with this method.
    pub fn method(mut self, method: Method) -> Fault {
        self.method = Some(method);
        self
    }

    /// Adds `retry-after: <seconds>`.
    pub fn retry_after(mut self, seconds: u64) -> Fault {
        self.retry_after = Some(seconds);
        self
    }

    /// Waits this long before answering.
    pub fn delay(mut self, delay: Duration) -> Fault {
        self.delay = Some(delay);
        self
    }

    /// Answers with this raw body.
    pub fn body(mut self, body: &str) -> Fault {
        self.body = Some(body.to_string());
        self
    }

    /// Reports `x-ratelimit-remaining: 0`.
    pub fn rate_limit_exhausted(mut self) -> Fault {
        self.rate_limit_remaining_zero = true;
        self
    }

    fn matches(&self, method: &Method, path_and_query: &str) -> bool {
        self.times > 0
            && self.method.as_ref().is_none_or(|m| m == method)
            && path_and_query.starts_with(&self.path_prefix)
    }
}

/// An issue or pull-request comment, as [`Sandbox::comments`](crate::Sandbox::comments) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment {
    /// The comment id (as in `PATCH /repos/{o}/{r}/issues/comments/{id}`).
    pub id: u64,
    /// The author's login (an installation writes as `<app slug>[bot]`).
    pub author: String,
    /// The body.
    pub body: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last edited (equal to `created_at` if never).
    pub updated_at: DateTime<Utc>,
}

/// A commit status, as [`Sandbox::statuses`](crate::Sandbox::statuses) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRecord {
    /// The status id.
    pub id: u64,
    /// `error`, `failure`, `pending` or `success`.
    pub state: String,
    /// The context (`default` when none was given).
    pub context: String,
    /// The description.
    pub description: Option<String>,
    /// The target URL.
    pub target_url: Option<String>,
    /// Who created it.
    pub creator: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A deployment and its statuses, as [`Sandbox::deployments`](crate::Sandbox::deployments)
/// reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentRecord {
    /// The deployment id.
    pub id: u64,
    /// The commit it deploys.
    pub sha: String,
    /// The `ref` it was created with.
    pub ref_name: String,
    /// The environment.
    pub environment: String,
    /// The description.
    pub description: Option<String>,
    /// `transient_environment`.
    pub transient_environment: bool,
    /// `production_environment`.
    pub production_environment: bool,
    /// Who created it.
    pub creator: String,
    /// Its statuses, oldest first: `(state, environment_url)`.
    pub statuses: Vec<(String, Option<String>)>,
}

/// One HTTP request the sandbox answered, as [`Sandbox::requests`](crate::Sandbox::requests)
/// reports it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// The method.
    pub method: Method,
    /// The path and query, as sent.
    pub path_and_query: String,
    /// The credential sent in `Authorization` (token or JWT), if any.
    pub token: Option<String>,
    /// The identity it resolved to: `user:<login>`, `installation:<id>`, `app:<id>`,
    /// `anonymous`; `None` when authentication failed or was not attempted.
    pub identity: Option<String>,
    /// Whether the request carried `If-None-Match`.
    pub if_none_match: bool,
    /// The status answered.
    pub status: u16,
    /// Whether it cost one unit of the identity's primary rate limit.
    pub counted: bool,
    /// When the request arrived.
    pub at: Instant,
}

/// One request to a git-backed repository's smart HTTP endpoint (`{sandbox}/git/...`), as
/// [`Sandbox::git_requests`](crate::Sandbox::git_requests) reports it.
#[derive(Clone, Debug)]
pub struct GitRequest {
    /// The method.
    pub method: Method,
    /// The path and query, as sent (tests assert no token is in it).
    pub path_and_query: String,
    /// Whether the request carried an `Authorization` header.
    pub authorized: bool,
    /// The identity it resolved to (`user:<login>`, `installation:<id>`); `None` when it
    /// carried no or bad credentials.
    pub identity: Option<String>,
    /// `git-upload-pack` (a read) or `git-receive-pack` (a push), when the request names one.
    pub service: Option<String>,
    /// The request body's `Content-Encoding` (git gzips larger upload-pack requests).
    pub content_encoding: Option<String>,
    /// The status answered.
    pub status: u16,
}

// ---------------------------------------------------------------------------------------------
// Internal model

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Identity {
    /// No `Authorization` header.
    Anonymous,
    /// A user token (lower-cased login).
    User(String),
    /// An installation access token.
    Installation(u64),
    /// A GitHub App JWT.
    App(u64),
}

impl Identity {
    /// The key rate-limit buckets, grants and ETags are tied to. Every token of one user (or
    /// of one installation) shares it.
    pub(crate) fn key(&self) -> String {
        match self {
            Identity::Anonymous => "anonymous".to_string(),
            Identity::User(login) => format!("user:{login}"),
            Identity::Installation(id) => format!("installation:{id}"),
            Identity::App(id) => format!("app:{id}"),
        }
    }
}

/// The caller of one request, put into the request's extensions by the gate middleware.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub identity: Identity,
}

#[derive(Clone, Debug)]
struct TokenEntry {
    identity: Identity,
    /// `None` for user tokens (they never expire).
    expires_at: Option<SystemTime>,
}

/// A primary rate-limit bucket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    pub limit: u64,
    pub used: u64,
    /// Unix seconds.
    pub reset: u64,
}

impl Bucket {
    pub(crate) fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct User {
    pub id: u64,
    pub login: String,
}

#[derive(Clone, Debug)]
pub(crate) struct App {
    pub id: u64,
    pub slug: String,
    pub public_key_pem: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub(crate) struct Installation {
    pub id: u64,
    pub app_id: u64,
    /// Lower-cased login of the account it is installed on.
    pub account: String,
    /// Repository keys (`owner/name`, lower case).
    pub repos: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub(crate) struct LabelDef {
    pub id: u64,
    pub name: String,
    pub color: String,
}

#[derive(Clone, Debug)]
pub(crate) struct PullData {
    pub id: u64,
    pub head_ref: String,
    pub head_sha: String,
    /// Key of the repository the head lives in (a fork for fork pull requests).
    pub head_repo: String,
    pub base_ref: String,
    pub base_sha: String,
    pub draft: bool,
    pub merged: bool,
    pub merged_at: Option<DateTime<Utc>>,
    pub merge_commit_sha: Option<String>,
    pub merged_by: Option<String>,
    pub commits: u64,
    pub changed_files: u64,
    pub additions: u64,
}

/// An issue; pull requests are issues with `pull` data, sharing the number sequence.
#[derive(Clone, Debug)]
pub(crate) struct Issue {
    pub id: u64,
    pub number: u64,
    pub title: String,
    pub body: Option<String>,
    pub author: String,
    pub open: bool,
    pub labels: Vec<String>,
    pub author_association: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
    pub pull: Option<PullData>,
}

#[derive(Clone, Debug)]
pub(crate) struct IssueComment {
    pub id: u64,
    pub issue: u64,
    pub author: String,
    pub body: String,
    pub author_association: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An issue event (`GET /repos/{o}/{r}/issues/{n}/events`): who labelled or unlabelled what.
#[derive(Clone, Debug)]
pub(crate) struct IssueEvent {
    pub id: u64,
    pub issue: u64,
    pub actor: String,
    /// `labeled` or `unlabeled`.
    pub event: String,
    pub label: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub(crate) struct CommitStatus {
    pub id: u64,
    pub sha: String,
    pub state: String,
    pub context: String,
    pub description: Option<String>,
    pub target_url: Option<String>,
    pub creator: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub(crate) struct DeploymentStatus {
    pub id: u64,
    pub state: String,
    pub description: Option<String>,
    pub environment: String,
    pub environment_url: Option<String>,
    pub log_url: Option<String>,
    pub creator: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub(crate) struct Deployment {
    pub id: u64,
    pub sha: String,
    pub ref_name: String,
    pub task: String,
    pub payload: serde_json::Value,
    pub environment: String,
    pub original_environment: String,
    pub description: Option<String>,
    pub transient_environment: bool,
    pub production_environment: bool,
    pub creator: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub statuses: Vec<DeploymentStatus>,
}

/// One file tree, keyed by path.
pub(crate) type Tree = BTreeMap<String, Vec<u8>>;

#[derive(Clone, Debug)]
pub(crate) struct Repo {
    pub id: u64,
    pub owner: String,
    pub name: String,
    pub private: bool,
    pub fork: bool,
    /// Key of the parent for forks.
    pub parent: Option<String>,
    pub default_branch: String,
    /// Head commit of the default branch.
    pub base_sha: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub pushed_at: DateTime<Utc>,
    pub issues: BTreeMap<u64, Issue>,
    pub comments: BTreeMap<u64, IssueComment>,
    pub events: Vec<IssueEvent>,
    pub statuses: Vec<CommitStatus>,
    pub deployments: BTreeMap<u64, Deployment>,
    pub labels: BTreeMap<String, LabelDef>,
    /// File trees per commit sha, so old shas still download.
    pub snapshots: HashMap<String, Tree>,
    /// The bare git repository behind a git-backed repository (`None`: file trees only).
    pub git: Option<GitBacking>,
    next_number: u64,
}

/// What the world knows of a git-backed repository: where it is and the branch heads last read
/// from it (refreshed after every push and before every answer that shows a head).
#[derive(Clone, Debug)]
pub(crate) struct GitBacking {
    pub dir: std::path::PathBuf,
    /// Branch name → head sha, as last read.
    pub branches: BTreeMap<String, String>,
    /// Every commit ever seen at a branch head: statuses and deployments may name them.
    pub commits: HashSet<String>,
    /// The sequence number of the read `branches` came from: a read started earlier (and so
    /// possibly older) never overwrites it.
    pub read_seq: u64,
}

impl Repo {
    pub(crate) fn key(&self) -> String {
        repo_key(&self.owner, &self.name)
    }

    pub(crate) fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// Whether `sha` is a commit of this repository (a file-tree snapshot or a git head seen).
    pub(crate) fn has_commit(&self, sha: &str) -> bool {
        self.snapshots.contains_key(sha)
            || self.git.as_ref().is_some_and(|g| g.commits.contains(sha))
    }

    pub(crate) fn comment_count(&self, number: u64) -> usize {
        self.comments.values().filter(|c| c.issue == number).count()
    }

    /// Resolves a git ref the way the tarball and deployment endpoints do: a full sha this
    /// repository knows, `pull/<n>/head` (also with a `refs/` prefix), the default branch, or a
    /// pull request's head branch (an open one first, the newest first).
    pub(crate) fn resolve_ref(&self, reference: &str) -> Option<String> {
        let reference = reference.strip_prefix("refs/").unwrap_or(reference);
        if self.has_commit(reference) {
            return Some(reference.to_string());
        }
        if let Some(n) = reference
            .strip_prefix("pull/")
            .and_then(|r| r.strip_suffix("/head"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            return self
                .issues
                .get(&n)
                .and_then(|i| i.pull.as_ref())
                .map(|p| p.head_sha.clone());
        }
        let branch = reference.strip_prefix("heads/").unwrap_or(reference);
        if let Some(git) = &self.git {
            return git.branches.get(branch).cloned();
        }
        if branch == self.default_branch {
            return Some(self.base_sha.clone());
        }
        let key = self.key();
        let mut candidates: Vec<&Issue> = self
            .issues
            .values()
            .filter(|i| {
                i.pull
                    .as_ref()
                    .is_some_and(|p| p.head_ref == branch && p.head_repo == key)
            })
            .collect();
        candidates.sort_by_key(|i| (i.open, i.number));
        candidates
            .last()
            .and_then(|i| i.pull.as_ref())
            .map(|p| p.head_sha.clone())
    }
}

/// Lower-cased `owner/name`: GitHub names are case-insensitive.
pub(crate) fn repo_key(owner: &str, name: &str) -> String {
    format!(
        "{}/{}",
        owner.to_ascii_lowercase(),
        name.to_ascii_lowercase()
    )
}

/// A logical clock: every value is at least the wall clock (whole seconds, as GitHub prints
/// them) and strictly greater than the previous one. Bulk setup therefore runs it ahead of the
/// wall clock by one second per change.
#[derive(Debug, Default)]
struct Clock {
    last: Option<DateTime<Utc>>,
}

impl Clock {
    fn tick(&mut self) -> DateTime<Utc> {
        let now = whole_seconds(Utc::now());
        let next = match self.last {
            Some(last) if now <= last => last + TimeDelta::seconds(1),
            _ => now,
        };
        self.last = Some(next);
        next
    }
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Id sequences, one per kind, starting at distinct bases so ids of different kinds rarely
/// collide (which makes mix-ups visible in tests).
#[derive(Debug)]
struct Ids {
    user: u64,
    repo: u64,
    issue: u64,
    pull: u64,
    comment: u64,
    label: u64,
    status: u64,
    deployment: u64,
    deployment_status: u64,
    event: u64,
}

impl Default for Ids {
    fn default() -> Ids {
        Ids {
            user: 1_000,
            repo: 100_000,
            issue: 500_000,
            pull: 700_000,
            comment: 900_000,
            label: 200_000,
            status: 300_000,
            deployment: 1,
            deployment_status: 1,
            event: 40_000_000,
        }
    }
}

fn next(counter: &mut u64) -> u64 {
    *counter += 1;
    *counter
}

/// The whole fake GitHub.
#[derive(Debug, Default)]
pub(crate) struct World {
    clock: Clock,
    ids: Ids,
    commit_counter: u64,
    token_counter: u64,
    pub users: BTreeMap<String, User>,
    tokens: HashMap<String, TokenEntry>,
    pub apps: BTreeMap<u64, App>,
    pub installations: BTreeMap<u64, Installation>,
    pub repos: BTreeMap<String, Repo>,
    /// `(identity key, repo key)` → granted permission.
    grants: HashMap<(String, String), Permission>,
    buckets: HashMap<String, Bucket>,
    faults: Vec<Fault>,
    pub requests: Vec<RequestRecord>,
    pub git_requests: Vec<GitRequest>,
}

/// Installation tokens live one hour, like GitHub's.
pub(crate) const INSTALLATION_TOKEN_TTL: Duration = Duration::from_secs(3600);

impl World {
    pub(crate) fn tick(&mut self) -> DateTime<Utc> {
        self.clock.tick()
    }

    /// The user with this login, created on demand.
    pub(crate) fn ensure_user(&mut self, login: &str) -> User {
        let key = login.to_ascii_lowercase();
        if let Some(user) = self.users.get(&key) {
            return user.clone();
        }
        let user = User {
            id: next(&mut self.ids.user),
            login: login.to_string(),
        };
        self.users.insert(key, user.clone());
        user
    }

    /// The user with this login, or a stand-in (id 0) for one never seen.
    pub(crate) fn user(&self, login: &str) -> User {
        self.users
            .get(&login.to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| User {
                id: 0,
                login: login.to_string(),
            })
    }

    /// A deterministic 40-hex commit sha from a parent, the content and a counter.
    fn new_sha(&mut self, parent: &str, tree: &Tree) -> String {
        self.commit_counter += 1;
        let mut h = Sha256::new();
        h.update(self.commit_counter.to_be_bytes());
        h.update(parent.as_bytes());
        for (path, content) in tree {
            h.update((path.len() as u64).to_be_bytes());
            h.update(path.as_bytes());
            h.update((content.len() as u64).to_be_bytes());
            h.update(content);
        }
        let digest = h.finalize();
        let mut sha = hex::encode(digest.as_slice());
        sha.truncate(40);
        sha
    }

    // -- identities --------------------------------------------------------------------------

    pub(crate) fn add_token(&mut self, token: &str, login: &str) {
        self.ensure_user(login);
        self.tokens.insert(
            token.to_string(),
            TokenEntry {
                identity: Identity::User(login.to_ascii_lowercase()),
                expires_at: None,
            },
        );
    }

    /// A token's identity, or a login's if no such token exists.
    pub(crate) fn subject(&self, token_or_login: &str) -> Identity {
        match self.tokens.get(token_or_login) {
            Some(entry) => entry.identity.clone(),
            None => Identity::User(token_or_login.to_ascii_lowercase()),
        }
    }

    /// Resolves a bearer credential. JWTs (three dot-separated parts) are app credentials.
    pub(crate) fn authenticate(&self, credential: Option<&str>) -> Result<Identity, ApiError> {
        let Some(credential) = credential else {
            return Ok(Identity::Anonymous);
        };
        if let Some(entry) = self.tokens.get(credential) {
            if entry.expires_at.is_some_and(|exp| exp <= SystemTime::now()) {
                return Err(ApiError::bad_credentials());
            }
            return Ok(entry.identity.clone());
        }
        if credential.split('.').count() == 3 {
            let claims = crate::jwt::decode(credential).map_err(ApiError::unauthorized)?;
            let app = self.apps.get(&claims.iss).ok_or_else(|| {
                ApiError::unauthorized(format!("Integration not found (iss {})", claims.iss))
            })?;
            crate::jwt::check_times(&claims, unix_now()).map_err(ApiError::unauthorized)?;
            if let Some(pem) = &app.public_key_pem {
                crate::jwt::verify_signature(credential, pem).map_err(ApiError::unauthorized)?;
            }
            return Ok(Identity::App(app.id));
        }
        Err(ApiError::bad_credentials())
    }

    /// The login an identity writes as.
    pub(crate) fn actor_login(&self, who: &Identity) -> String {
        match who {
            Identity::User(login) => self.user(login).login,
            Identity::Installation(id) => self
                .installations
                .get(id)
                .and_then(|i| self.apps.get(&i.app_id))
                .map(|a| format!("{}[bot]", a.slug))
                .unwrap_or_else(|| "ghost".to_string()),
            Identity::App(id) => self
                .apps
                .get(id)
                .map(|a| format!("{}[bot]", a.slug))
                .unwrap_or_else(|| "ghost".to_string()),
            Identity::Anonymous => "ghost".to_string(),
        }
    }

    pub(crate) fn add_app(&mut self, app_id: u64, public_key_pem: Option<Vec<u8>>) {
        self.apps.insert(
            app_id,
            App {
                id: app_id,
                slug: format!("sandbox-app-{app_id}"),
                public_key_pem,
            },
        );
    }

    pub(crate) fn install(&mut self, app_id: u64, installation_id: u64, repos: &[&str]) {
        let Some(app) = self.apps.get(&app_id) else {
            panic!("install: unknown app {app_id}; call add_app first");
        };
        let bot = format!("{}[bot]", app.slug);
        self.ensure_user(&bot);
        let keys: Vec<String> = repos.iter().map(|r| self.repo_key_of(r)).collect();
        let account = keys
            .first()
            .and_then(|k| k.split('/').next())
            .unwrap_or("sandbox")
            .to_string();
        let created_at = self.tick();
        self.installations.insert(
            installation_id,
            Installation {
                id: installation_id,
                app_id,
                account,
                repos: keys,
                created_at,
            },
        );
    }

    /// Mints an installation token for an app's installation.
    pub(crate) fn mint_installation_token(
        &mut self,
        app_id: u64,
        installation_id: u64,
    ) -> Result<(String, SystemTime), ApiError> {
        match self.installations.get(&installation_id) {
            Some(inst) if inst.app_id == app_id => {}
            _ => return Err(ApiError::not_found()),
        }
        self.token_counter += 1;
        let mut h = Sha256::new();
        h.update(b"installation-token");
        h.update(installation_id.to_be_bytes());
        h.update(self.token_counter.to_be_bytes());
        let token = format!("ghs_{}", &hex::encode(h.finalize().as_slice())[..36]);
        let expires_at = SystemTime::now() + INSTALLATION_TOKEN_TTL;
        self.tokens.insert(
            token.clone(),
            TokenEntry {
                identity: Identity::Installation(installation_id),
                expires_at: Some(expires_at),
            },
        );
        Ok((token, expires_at))
    }

    pub(crate) fn expire_installation_tokens(&mut self) {
        for entry in self.tokens.values_mut() {
            if matches!(entry.identity, Identity::Installation(_)) {
                entry.expires_at = Some(UNIX_EPOCH);
            }
        }
    }

    // -- rate limits -------------------------------------------------------------------------

    /// The identity's primary bucket, reset when its window has passed.
    pub(crate) fn bucket(&mut self, who: &Identity) -> &mut Bucket {
        let now = unix_now();
        let limit = if *who == Identity::Anonymous {
            60
        } else {
            5000
        };
        let bucket = self.buckets.entry(who.key()).or_insert(Bucket {
            limit,
            used: 0,
            reset: now + 3600,
        });
        if now >= bucket.reset {
            bucket.used = 0;
            bucket.reset = now + 3600;
        }
        bucket
    }

    pub(crate) fn set_rate_limit(
        &mut self,
        token_or_login: &str,
        limit: u64,
        remaining: u64,
        reset_in: Duration,
    ) {
        let who = self.subject(token_or_login);
        self.buckets.insert(
            who.key(),
            Bucket {
                limit,
                used: limit.saturating_sub(remaining),
                reset: unix_now() + reset_in.as_secs(),
            },
        );
    }

    // -- faults and request log --------------------------------------------------------------

    pub(crate) fn inject(&mut self, fault: Fault) {
        self.faults.push(fault);
    }

    /// Takes one use of the first matching fault.
    pub(crate) fn take_fault(&mut self, method: &Method, path_and_query: &str) -> Option<Fault> {
        let fault = self
            .faults
            .iter_mut()
            .find(|f| f.matches(method, path_and_query))?;
        fault.times -= 1;
        let taken = fault.clone();
        self.faults.retain(|f| f.times > 0);
        Some(taken)
    }

    // -- repositories and access -------------------------------------------------------------

    /// The key of `owner/name`, panicking (control API) when malformed.
    pub(crate) fn repo_key_of(&self, full_name: &str) -> String {
        match full_name.split_once('/') {
            Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => {
                repo_key(owner, name)
            }
            _ => panic!("expected a repository as \"owner/name\", got {full_name:?}"),
        }
    }

    /// The repository `owner/name`, panicking (control API) when unknown.
    pub(crate) fn repo_ctl(&mut self, full_name: &str) -> &mut Repo {
        let key = self.repo_key_of(full_name);
        match self.repos.get_mut(&key) {
            Some(repo) => repo,
            None => panic!("unknown repository {full_name:?}; call create_repo first"),
        }
    }

    pub(crate) fn create_repo(&mut self, owner: &str, name: &str, fork_of: Option<String>) -> u64 {
        let key = repo_key(owner, name);
        if let Some(existing) = self.repos.get(&key) {
            return existing.id;
        }
        self.ensure_user(owner);
        let now = self.tick();
        let base_sha = self.new_sha("", &Tree::new());
        let id = next(&mut self.ids.repo);
        let mut snapshots = HashMap::new();
        snapshots.insert(base_sha.clone(), Tree::new());
        self.repos.insert(
            key,
            Repo {
                id,
                owner: owner.to_string(),
                name: name.to_string(),
                private: false,
                fork: fork_of.is_some(),
                parent: fork_of,
                default_branch: "main".to_string(),
                base_sha,
                created_at: now,
                updated_at: now,
                pushed_at: now,
                issues: BTreeMap::new(),
                comments: BTreeMap::new(),
                events: Vec::new(),
                statuses: Vec::new(),
                deployments: BTreeMap::new(),
                labels: BTreeMap::new(),
                snapshots,
                git: None,
                next_number: 1,
            },
        );
        id
    }

    pub(crate) fn grant(&mut self, token_or_login: &str, repo: &str, permission: Permission) {
        let who = self.subject(token_or_login);
        if let Identity::User(login) = &who
            && !self.tokens.contains_key(token_or_login)
        {
            // A login granted access is a user GitHub knows.
            let login = login.clone();
            self.ensure_user(&login);
        }
        let key = self.repo_ctl(repo).key();
        self.grants.insert((who.key(), key), permission);
    }

    /// What `who` may do in `repo`; `None` means the repository is invisible to it.
    pub(crate) fn permission(&self, who: &Identity, repo: &Repo) -> Option<Permission> {
        let granted = match who {
            Identity::User(login) if login.eq_ignore_ascii_case(&repo.owner) => {
                Some(Permission::Admin)
            }
            Identity::User(_) => self.grants.get(&(who.key(), repo.key())).copied(),
            Identity::Installation(id) => {
                let installed = self
                    .installations
                    .get(id)
                    .filter(|inst| inst.repos.contains(&repo.key()))
                    .map(|_| Permission::Push);
                let granted = self.grants.get(&(who.key(), repo.key())).copied();
                installed.max(granted)
            }
            Identity::Anonymous | Identity::App(_) => None,
        };
        match (granted, who) {
            (Some(p), _) => Some(p),
            (None, Identity::App(_)) => None,
            (None, _) if !repo.private => Some(Permission::Pull),
            (None, _) => None,
        }
    }

    /// A user's permission on a repository as `GET .../collaborators/{user}/permission` names it:
    /// `admin`, `write`, `read` or `none` (the legacy base roles).
    pub(crate) fn collaborator_permission(&self, login: &str, repo: &Repo) -> &'static str {
        let who = Identity::User(login.to_ascii_lowercase());
        match self.permission(&who, repo) {
            Some(Permission::Admin) => "admin",
            Some(Permission::Push) => "write",
            Some(Permission::Pull) => "read",
            None => "none",
        }
    }

    /// Checks that `who` may use `owner/name` with at least `need`; returns the repo key.
    /// Invisible or missing repositories are 404, like GitHub.
    pub(crate) fn check_repo(
        &self,
        who: &Identity,
        owner: &str,
        name: &str,
        need: Permission,
    ) -> Result<String, ApiError> {
        if let Identity::App(_) = who {
            return Err(ApiError::forbidden(
                "Resource not accessible by integration (use an installation access token, not the app JWT)",
            ));
        }
        let key = repo_key(owner, name);
        let repo = self.repos.get(&key).ok_or_else(ApiError::not_found)?;
        let have = self.permission(who, repo).ok_or_else(ApiError::not_found)?;
        if have >= need {
            return Ok(key);
        }
        Err(match who {
            Identity::Anonymous => ApiError::unauthorized("Requires authentication".to_string()),
            Identity::Installation(_) => {
                ApiError::forbidden("Resource not accessible by integration")
            }
            _ => ApiError::forbidden("Resource not accessible by personal access token"),
        })
    }

    /// `author_association` of `login` in `repo`.
    pub(crate) fn association(&self, login: &str, repo_key: &str) -> String {
        let Some(repo) = self.repos.get(repo_key) else {
            return "NONE".to_string();
        };
        let who = Identity::User(login.to_ascii_lowercase());
        match self.permission(&who, repo) {
            Some(Permission::Admin) if login.eq_ignore_ascii_case(&repo.owner) => "OWNER",
            Some(Permission::Admin | Permission::Push)
                if self.grants.contains_key(&(who.key(), repo.key())) =>
            {
                "COLLABORATOR"
            }
            _ => "NONE",
        }
        .to_string()
    }

    fn ensure_labels(&mut self, key: &str, labels: &[String]) {
        for name in labels {
            let exists = self
                .repos
                .get(key)
                .is_some_and(|r| r.labels.contains_key(name));
            if !exists {
                let id = next(&mut self.ids.label);
                let color = format!("{:06x}", id.wrapping_mul(0x9e37_79b9) & 0xff_ffff);
                if let Some(repo) = self.repos.get_mut(key) {
                    repo.labels.insert(
                        name.clone(),
                        LabelDef {
                            id,
                            name: name.clone(),
                            color,
                        },
                    );
                }
            }
        }
    }

    // -- pull requests and issues (control API) ----------------------------------------------

    pub(crate) fn open_pr(&mut self, repo: &str, pr: NewPr) -> u64 {
        for (path, _) in &pr.files {
            check_path(path);
        }
        assert!(
            !pr.author.is_empty(),
            "open_pr: the author must not be empty"
        );
        let key = self.repo_ctl(repo).key();
        let author = self.ensure_user(&pr.author);
        let (base_name, base_ref, base_sha) = {
            let r = &self.repos[&key];
            (r.name.clone(), r.default_branch.clone(), r.base_sha.clone())
        };
        let head_repo = if pr.fork {
            self.create_repo(&pr.author, &base_name, Some(key.clone()));
            repo_key(&pr.author, &base_name)
        } else {
            key.clone()
        };
        let tree: Tree = pr.files.into_iter().collect();
        let head_sha = self.new_sha(&base_sha, &tree);
        self.ensure_labels(&key, &pr.labels);
        let association = if pr.author_association.is_empty() {
            self.association(&pr.author, &key)
        } else {
            pr.author_association
        };
        let now = self.tick();
        let issue_id = next(&mut self.ids.issue);
        let pull_id = next(&mut self.ids.pull);
        if head_repo != key
            && let Some(fork) = self.repos.get_mut(&head_repo)
        {
            fork.snapshots.insert(head_sha.clone(), tree.clone());
            fork.pushed_at = now;
        }
        let r = self.repos.get_mut(&key).expect("checked above");
        let number = r.next_number;
        r.next_number += 1;
        let head_ref = if pr.head_ref.is_empty() {
            format!("patch-{number}")
        } else {
            pr.head_ref
        };
        let changed_files = tree.len() as u64;
        let additions = tree.values().map(|c| line_count(c)).sum();
        r.snapshots.insert(head_sha.clone(), tree);
        r.updated_at = now;
        // Labels given at opening are recorded as added by the repository's owner (on GitHub,
        // only people with triage access or more can label).
        let owner = r.owner.clone();
        for label in &pr.labels {
            let id = next(&mut self.ids.event);
            let r = self.repos.get_mut(&key).expect("checked above");
            r.events.push(IssueEvent {
                id,
                issue: number,
                actor: owner.clone(),
                event: "labeled".into(),
                label: label.clone(),
                created_at: now,
            });
        }
        let r = self.repos.get_mut(&key).expect("checked above");
        r.issues.insert(
            number,
            Issue {
                id: issue_id,
                number,
                title: pr.title,
                body: pr.body,
                author: author.login,
                open: true,
                labels: pr.labels,
                author_association: association,
                created_at: now,
                updated_at: now,
                closed_at: None,
                closed_by: None,
                pull: Some(PullData {
                    id: pull_id,
                    head_ref,
                    head_sha,
                    head_repo,
                    base_ref,
                    base_sha,
                    draft: pr.draft,
                    merged: false,
                    merged_at: None,
                    merge_commit_sha: None,
                    merged_by: None,
                    commits: 1,
                    changed_files,
                    additions,
                }),
            },
        );
        number
    }

    fn pull_ctl(&mut self, repo: &str, number: u64) -> (String, &mut Issue) {
        let key = self.repo_ctl(repo).key();
        let issue = self
            .repos
            .get_mut(&key)
            .and_then(|r| r.issues.get_mut(&number))
            .filter(|i| i.pull.is_some());
        match issue {
            Some(issue) => (key, issue),
            None => panic!("{repo} has no pull request #{number}"),
        }
    }

    fn issue_ctl(&mut self, repo: &str, number: u64) -> &mut Issue {
        match self.repo_ctl(repo).issues.get_mut(&number) {
            Some(issue) => issue,
            None => panic!("{repo} has no issue or pull request #{number}"),
        }
    }

    pub(crate) fn head_sha(&mut self, repo: &str, number: u64) -> String {
        let (_, issue) = self.pull_ctl(repo, number);
        issue
            .pull
            .as_ref()
            .map(|p| p.head_sha.clone())
            .unwrap_or_default()
    }

    pub(crate) fn push(
        &mut self,
        repo: &str,
        number: u64,
        files: Vec<(String, Vec<u8>)>,
    ) -> String {
        for (path, _) in &files {
            check_path(path);
        }
        let (key, issue) = self.pull_ctl(repo, number);
        let pull = issue.pull.clone().expect("pull_ctl returns pull requests");
        let mut tree = self.repos[&key]
            .snapshots
            .get(&pull.head_sha)
            .cloned()
            .unwrap_or_default();
        tree.extend(files);
        let sha = self.new_sha(&pull.head_sha, &tree);
        let now = self.tick();
        if pull.head_repo != key
            && let Some(fork) = self.repos.get_mut(&pull.head_repo)
        {
            fork.snapshots.insert(sha.clone(), tree.clone());
            fork.pushed_at = now;
        }
        let r = self.repos.get_mut(&key).expect("pull_ctl checked the repo");
        let changed_files = tree.len() as u64;
        let additions = tree.values().map(|c| line_count(c)).sum();
        r.snapshots.insert(sha.clone(), tree);
        if let Some(issue) = r.issues.get_mut(&number) {
            issue.updated_at = now;
            if let Some(p) = issue.pull.as_mut() {
                p.head_sha = sha.clone();
                p.commits += 1;
                p.changed_files = changed_files;
                p.additions = additions;
            }
        }
        sha
    }

    pub(crate) fn close_pr(&mut self, repo: &str, number: u64, merged: bool) {
        let (key, _) = self.pull_ctl(repo, number);
        let now = self.tick();
        let owner = self.repos[&key].owner.clone();
        let (base_sha, head_sha) = {
            let issue = &self.repos[&key].issues[&number];
            let p = issue.pull.as_ref().expect("pull_ctl returns pull requests");
            (self.repos[&key].base_sha.clone(), p.head_sha.clone())
        };
        let merge = if merged {
            let tree = self.repos[&key]
                .snapshots
                .get(&head_sha)
                .cloned()
                .unwrap_or_default();
            Some((self.new_sha(&base_sha, &tree), tree))
        } else {
            None
        };
        let r = self.repos.get_mut(&key).expect("pull_ctl checked the repo");
        if let Some((sha, tree)) = &merge {
            r.snapshots.insert(sha.clone(), tree.clone());
            r.base_sha = sha.clone();
            r.pushed_at = now;
        }
        let Some(issue) = r.issues.get_mut(&number) else {
            return;
        };
        issue.open = false;
        issue.closed_at = Some(now);
        issue.closed_by = Some(owner.clone());
        issue.updated_at = now;
        if let (Some(p), Some((sha, _))) = (issue.pull.as_mut(), merge) {
            p.merged = true;
            p.merged_at = Some(now);
            p.merge_commit_sha = Some(sha);
            p.merged_by = Some(owner);
        }
    }

    pub(crate) fn reopen_pr(&mut self, repo: &str, number: u64) {
        let now = self.tick();
        let (_, issue) = self.pull_ctl(repo, number);
        assert!(
            !issue.pull.as_ref().is_some_and(|p| p.merged),
            "reopen_pr: {repo}#{number} is merged; GitHub cannot reopen merged pull requests"
        );
        issue.open = true;
        issue.closed_at = None;
        issue.closed_by = None;
        issue.updated_at = now;
    }

    /// Replaces the labels, recording `labeled`/`unlabeled` events by `actor` (the owner when
    /// `None`).
    pub(crate) fn set_labels(
        &mut self,
        repo: &str,
        number: u64,
        labels: Vec<String>,
        actor: Option<&str>,
    ) {
        let key = self.repo_ctl(repo).key();
        self.ensure_labels(&key, &labels);
        let actor = match actor {
            Some(login) => self.ensure_user(login).login,
            None => self.repos[&key].owner.clone(),
        };
        let now = self.tick();
        let before = self.issue_ctl(repo, number).labels.clone();
        let mut changes: Vec<(&str, String)> = Vec::new();
        for gone in before.iter().filter(|l| !labels.contains(l)) {
            changes.push(("unlabeled", gone.clone()));
        }
        for added in labels.iter().filter(|l| !before.contains(l)) {
            changes.push(("labeled", added.clone()));
        }
        for (event, label) in changes {
            let id = next(&mut self.ids.event);
            self.repo_ctl(repo).events.push(IssueEvent {
                id,
                issue: number,
                actor: actor.clone(),
                event: event.to_owned(),
                label,
                created_at: now,
            });
        }
        let issue = self.issue_ctl(repo, number);
        issue.labels = labels;
        issue.updated_at = now;
    }

    // -- git-backed repositories, pulls and labels over REST ---------------------------------

    /// Makes `owner/name` a git-backed repository whose bare repository is `dir`, with its
    /// default branch at `head`. Panics (control API) when a file-tree repository of that name
    /// exists; an existing git-backed one is kept.
    pub(crate) fn create_git_repo(
        &mut self,
        owner: &str,
        name: &str,
        dir: std::path::PathBuf,
        head: &str,
    ) -> u64 {
        let key = repo_key(owner, name);
        if let Some(existing) = self.repos.get(&key) {
            assert!(
                existing.git.is_some(),
                "create_git_repo: {owner}/{name} already exists without git"
            );
            return existing.id;
        }
        let id = self.create_repo(owner, name, None);
        let repo = self.repos.get_mut(&key).expect("created above");
        let mut branches = BTreeMap::new();
        branches.insert(repo.default_branch.clone(), head.to_string());
        repo.snapshots.clear();
        repo.base_sha = head.to_string();
        repo.git = Some(GitBacking {
            dir,
            branches,
            commits: HashSet::from([head.to_string()]),
            read_seq: 0,
        });
        id
    }

    /// Takes the branch heads just read from a git-backed repository: the default branch moves
    /// the base, and every open pull request whose head branch moved gets the new head (one
    /// more commit, a new `updated_at`), so pollers see the push. `seq` orders the reads: one
    /// started before the last applied one is dropped.
    pub(crate) fn apply_heads(&mut self, key: &str, seq: u64, heads: BTreeMap<String, String>) {
        let Some(git) = self.repos.get_mut(key).and_then(|r| r.git.as_mut()) else {
            return;
        };
        if seq <= git.read_seq {
            return;
        }
        git.read_seq = seq;
        if git.branches == heads {
            return;
        }
        let repo = &self.repos[key];
        let Some(git) = &repo.git else {
            return;
        };
        // Deleting a pull request's head branch closes it, as on GitHub.
        let deleted: Vec<u64> = repo
            .issues
            .values()
            .filter(|i| i.open)
            .filter(|i| {
                i.pull.as_ref().is_some_and(|p| {
                    p.head_repo == key
                        && git.branches.contains_key(&p.head_ref)
                        && !heads.contains_key(&p.head_ref)
                })
            })
            .map(|i| i.number)
            .collect();
        let moved: Vec<u64> = repo
            .issues
            .values()
            .filter(|i| i.open)
            .filter(|i| {
                i.pull.as_ref().is_some_and(|p| {
                    p.head_repo == key
                        && heads.get(&p.head_ref).is_some_and(|sha| *sha != p.head_sha)
                })
            })
            .map(|i| i.number)
            .collect();
        let now = self.tick();
        let repo = self.repos.get_mut(key).expect("checked above");
        let default_head = heads.get(&repo.default_branch).cloned();
        if let Some(head) = default_head {
            repo.base_sha = head;
        }
        for number in deleted {
            if let Some(issue) = repo.issues.get_mut(&number) {
                issue.open = false;
                issue.closed_at = Some(now);
                issue.closed_by = Some(repo.owner.clone());
                issue.updated_at = now;
            }
        }
        for number in moved {
            let Some(issue) = repo.issues.get_mut(&number) else {
                continue;
            };
            if let Some(p) = issue.pull.as_mut()
                && let Some(sha) = heads.get(&p.head_ref)
            {
                p.head_sha = sha.clone();
                p.commits += 1;
                issue.updated_at = now;
            }
        }
        repo.pushed_at = now;
        repo.updated_at = now;
        if let Some(git) = repo.git.as_mut() {
            git.commits.extend(heads.values().cloned());
            git.branches = heads;
        }
    }

    /// `POST /repos/{o}/{r}/pulls` on a git-backed repository (whose heads were just applied):
    /// GitHub's 422s for a missing branch, nothing to merge, or an open pull request for the
    /// same head and base.
    pub(crate) fn create_pull(
        &mut self,
        key: &str,
        author: &str,
        input: PullInput,
    ) -> Result<u64, ApiError> {
        let invalid = |field| ApiError::invalid("PullRequest", field, "invalid");
        let repo = self.repos.get(key).ok_or_else(ApiError::not_found)?;
        let title = input
            .title
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| ApiError::invalid("PullRequest", "title", "missing_field"))?;
        let branch = match input.head.split_once(':') {
            Some((owner, branch)) if owner.eq_ignore_ascii_case(&repo.owner) => branch,
            Some(_) => return Err(invalid("head")),
            None => input.head.as_str(),
        };
        let git = repo.git.as_ref().ok_or_else(|| invalid("head"))?;
        let base_sha = git
            .branches
            .get(&input.base)
            .cloned()
            .ok_or_else(|| invalid("base"))?;
        let head_sha = git
            .branches
            .get(branch)
            .cloned()
            .ok_or_else(|| invalid("head"))?;
        if head_sha == base_sha {
            return Err(ApiError::validation_custom(
                "PullRequest",
                &format!("No commits between {} and {branch}", input.base),
            ));
        }
        let duplicate = repo.issues.values().any(|i| {
            i.open
                && i.pull.as_ref().is_some_and(|p| {
                    p.head_repo == key && p.head_ref == branch && p.base_ref == input.base
                })
        });
        if duplicate {
            return Err(ApiError::validation_custom(
                "PullRequest",
                &format!("A pull request already exists for {}:{branch}.", repo.owner),
            ));
        }
        let branch = branch.to_string();
        let user = self.ensure_user(author);
        let association = self.association(author, key);
        let now = self.tick();
        let issue_id = next(&mut self.ids.issue);
        let pull_id = next(&mut self.ids.pull);
        let repo = self.repos.get_mut(key).expect("checked above");
        let number = repo.next_number;
        repo.next_number += 1;
        repo.updated_at = now;
        repo.issues.insert(
            number,
            Issue {
                id: issue_id,
                number,
                title,
                body: input.body,
                author: user.login,
                open: true,
                labels: Vec::new(),
                author_association: association,
                created_at: now,
                updated_at: now,
                closed_at: None,
                closed_by: None,
                pull: Some(PullData {
                    id: pull_id,
                    head_ref: branch,
                    head_sha,
                    head_repo: key.to_string(),
                    base_ref: input.base,
                    base_sha,
                    draft: input.draft.unwrap_or(false),
                    merged: false,
                    merged_at: None,
                    merge_commit_sha: None,
                    merged_by: None,
                    commits: 1,
                    changed_files: 0,
                    additions: 0,
                }),
            },
        );
        Ok(number)
    }

    /// `PATCH /repos/{o}/{r}/pulls/{n}`: title, body and state (`closed` closes without
    /// merging; `open` reopens an unmerged one).
    pub(crate) fn edit_pull(
        &mut self,
        key: &str,
        number: u64,
        input: PullEdit,
    ) -> Result<(), ApiError> {
        let reopen_merged = {
            let repo = self.repos.get(key).ok_or_else(ApiError::not_found)?;
            let issue = repo
                .issues
                .get(&number)
                .filter(|i| i.pull.is_some())
                .ok_or_else(ApiError::not_found)?;
            input.state.as_deref() == Some("open") && issue.pull.as_ref().is_some_and(|p| p.merged)
        };
        if let Some(state) = input.state.as_deref()
            && state != "open"
            && state != "closed"
        {
            return Err(ApiError::invalid("PullRequest", "state", "invalid"));
        }
        if reopen_merged {
            return Err(ApiError::validation_custom(
                "PullRequest",
                "state cannot be changed. The pull request has been merged.",
            ));
        }
        let now = self.tick();
        let owner = self.repos[key].owner.clone();
        let repo = self.repos.get_mut(key).ok_or_else(ApiError::not_found)?;
        let issue = repo
            .issues
            .get_mut(&number)
            .ok_or_else(ApiError::not_found)?;
        if let Some(title) = input.title {
            issue.title = title;
        }
        if let Some(body) = input.body {
            issue.body = Some(body);
        }
        match input.state.as_deref() {
            Some("closed") if issue.open => {
                issue.open = false;
                issue.closed_at = Some(now);
                issue.closed_by = Some(owner);
            }
            Some("open") if !issue.open => {
                issue.open = true;
                issue.closed_at = None;
                issue.closed_by = None;
            }
            _ => {}
        }
        issue.updated_at = now;
        Ok(())
    }

    /// `POST /repos/{o}/{r}/issues/{n}/labels`: adds labels (definitions created on demand),
    /// one `labeled` event by `actor` for each label not already there. Returns the labels.
    pub(crate) fn add_labels(
        &mut self,
        key: &str,
        number: u64,
        labels: &[String],
        actor: &str,
    ) -> Result<Vec<String>, ApiError> {
        let before = self
            .repos
            .get(key)
            .and_then(|r| r.issues.get(&number))
            .map(|i| i.labels.clone())
            .ok_or_else(ApiError::not_found)?;
        self.ensure_labels(key, labels);
        let now = self.tick();
        let mut after = before.clone();
        for label in labels {
            if after.contains(label) {
                continue;
            }
            after.push(label.clone());
            let id = next(&mut self.ids.event);
            let repo = self.repos.get_mut(key).ok_or_else(ApiError::not_found)?;
            repo.events.push(IssueEvent {
                id,
                issue: number,
                actor: actor.to_string(),
                event: "labeled".into(),
                label: label.clone(),
                created_at: now,
            });
        }
        let repo = self.repos.get_mut(key).ok_or_else(ApiError::not_found)?;
        let issue = repo
            .issues
            .get_mut(&number)
            .ok_or_else(ApiError::not_found)?;
        if after != before {
            issue.labels = after.clone();
            issue.updated_at = now;
        }
        Ok(after)
    }

    /// `DELETE /repos/{o}/{r}/issues/{n}/labels/{name}`: an `unlabeled` event by `actor`; 404
    /// `Label does not exist` when the issue does not carry it. Returns the remaining labels.
    pub(crate) fn remove_label(
        &mut self,
        key: &str,
        number: u64,
        label: &str,
        actor: &str,
    ) -> Result<Vec<String>, ApiError> {
        let now = self.tick();
        let id = next(&mut self.ids.event);
        let repo = self.repos.get_mut(key).ok_or_else(ApiError::not_found)?;
        let issue = repo
            .issues
            .get_mut(&number)
            .ok_or_else(ApiError::not_found)?;
        if !issue.labels.iter().any(|l| l == label) {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "Label does not exist",
            ));
        }
        issue.labels.retain(|l| l != label);
        issue.updated_at = now;
        let remaining = issue.labels.clone();
        repo.events.push(IssueEvent {
            id,
            issue: number,
            actor: actor.to_string(),
            event: "unlabeled".into(),
            label: label.to_string(),
            created_at: now,
        });
        Ok(remaining)
    }

    /// The numbers of the pull requests (open or not) whose head is `branch` of this repository.
    pub(crate) fn pulls_with_head(&mut self, repo: &str, branch: &str) -> Vec<u64> {
        let r = self.repo_ctl(repo);
        let key = r.key();
        r.issues
            .values()
            .filter(|i| {
                i.pull
                    .as_ref()
                    .is_some_and(|p| p.head_repo == key && p.head_ref == branch)
            })
            .map(|i| i.number)
            .collect()
    }

    pub(crate) fn create_issue(
        &mut self,
        repo: &str,
        title: &str,
        body: &str,
        author: &str,
    ) -> u64 {
        let key = self.repo_ctl(repo).key();
        let user = self.ensure_user(author);
        let association = self.association(author, &key);
        let now = self.tick();
        let id = next(&mut self.ids.issue);
        let r = self.repos.get_mut(&key).expect("repo_ctl checked the repo");
        let number = r.next_number;
        r.next_number += 1;
        r.issues.insert(
            number,
            Issue {
                id,
                number,
                title: title.to_string(),
                body: Some(body.to_string()),
                author: user.login,
                open: true,
                labels: Vec::new(),
                author_association: association,
                created_at: now,
                updated_at: now,
                closed_at: None,
                closed_by: None,
                pull: None,
            },
        );
        number
    }

    /// Opens or closes an issue (not a pull request) by `actor`; `None` leaves it as it is.
    pub(crate) fn set_issue_state(
        &mut self,
        key: &str,
        number: u64,
        open: Option<bool>,
        actor: &str,
    ) -> Result<(), ApiError> {
        let now = self.tick();
        let repo = self.repos.get_mut(key).ok_or_else(ApiError::not_found)?;
        let issue = repo
            .issues
            .get_mut(&number)
            .filter(|i| i.pull.is_none())
            .ok_or_else(ApiError::not_found)?;
        if let Some(open) = open
            && open != issue.open
        {
            issue.open = open;
            issue.closed_at = (!open).then_some(now);
            issue.closed_by = (!open).then(|| actor.to_string());
            issue.updated_at = now;
        }
        Ok(())
    }

    pub(crate) fn edit_issue(&mut self, repo: &str, number: u64, body: &str) {
        let now = self.tick();
        let issue = self.issue_ctl(repo, number);
        issue.body = Some(body.to_string());
        issue.updated_at = now;
    }

    // -- comments, statuses, deployments (shared by control API and REST) --------------------

    /// Adds a comment by `author` to issue `number` of the repo with key `key`.
    pub(crate) fn add_comment(
        &mut self,
        key: &str,
        number: u64,
        author: &str,
        body: &str,
    ) -> Result<IssueComment, ApiError> {
        let repo = self.repos.get(key).ok_or_else(ApiError::not_found)?;
        if !repo.issues.contains_key(&number) {
            return Err(ApiError::not_found());
        }
        let user = self.ensure_user(author);
        let association = self.association(author, key);
        let now = self.tick();
        let id = next(&mut self.ids.comment);
        let comment = IssueComment {
            id,
            issue: number,
            author: user.login,
            body: body.to_string(),
            author_association: association,
            created_at: now,
            updated_at: now,
        };
        let repo = self.repos.get_mut(key).ok_or_else(ApiError::not_found)?;
        repo.comments.insert(id, comment.clone());
        if let Some(issue) = repo.issues.get_mut(&number) {
            issue.updated_at = now;
        }
        Ok(comment)
    }

    pub(crate) fn edit_comment(
        &mut self,
        key: &str,
        id: u64,
        body: &str,
    ) -> Result<IssueComment, ApiError> {
        let now = self.tick();
        let repo = self.repos.get_mut(key).ok_or_else(ApiError::not_found)?;
        let comment = repo.comments.get_mut(&id).ok_or_else(ApiError::not_found)?;
        comment.body = body.to_string();
        comment.updated_at = now;
        Ok(comment.clone())
    }

    pub(crate) fn delete_comment(&mut self, key: &str, id: u64) -> Result<(), ApiError> {
        let repo = self.repos.get_mut(key).ok_or_else(ApiError::not_found)?;
        repo.comments
            .remove(&id)
            .map(|_| ())
            .ok_or_else(ApiError::not_found)
    }

    pub(crate) fn comments_ctl(&mut self, repo: &str, number: u64) -> Vec<Comment> {
        self.repo_ctl(repo)
            .comments
            .values()
            .filter(|c| c.issue == number)
            .map(|c| Comment {
                id: c.id,
                author: c.author.clone(),
                body: c.body.clone(),
                created_at: c.created_at,
                updated_at: c.updated_at,
            })
            .collect()
    }

    pub(crate) fn add_status(
        &mut self,
        key: &str,
        sha: &str,
        creator: &str,
        input: StatusInput,
    ) -> Result<CommitStatus, ApiError> {
        const STATES: [&str; 4] = ["error", "failure", "pending", "success"];
        if !STATES.contains(&input.state.as_str()) {
            return Err(ApiError::validation(
                "Status",
                "state",
                "state is not included in the list",
            ));
        }
        let repo = self.repos.get(key).ok_or_else(ApiError::not_found)?;
        if !repo.has_commit(sha) {
            return Err(ApiError::unprocessable(format!(
                "No commit found for SHA: {sha}"
            )));
        }
        let context = input.context.unwrap_or_else(|| "default".to_string());
        let same = repo
            .statuses
            .iter()
            .filter(|s| s.sha == sha && s.context == context)
            .count();
        if same >= 1000 {
            return Err(ApiError::validation(
                "Status",
                "context",
                "This SHA and context has reached the maximum number of statuses.",
            ));
        }
        let now = self.tick();
        let status = CommitStatus {
            id: next(&mut self.ids.status),
            sha: sha.to_string(),
            state: input.state,
            context,
            description: input.description,
            target_url: input.target_url,
            creator: creator.to_string(),
            created_at: now,
        };
        let repo = self.repos.get_mut(key).ok_or_else(ApiError::not_found)?;
        repo.statuses.push(status.clone());
        Ok(status)
    }

    pub(crate) fn statuses_ctl(&mut self, repo: &str, sha: &str) -> Vec<StatusRecord> {
        self.repo_ctl(repo)
            .statuses
            .iter()
            .filter(|s| s.sha == sha)
            .map(|s| StatusRecord {
                id: s.id,
                state: s.state.clone(),
                context: s.context.clone(),
                description: s.description.clone(),
                target_url: s.target_url.clone(),
                creator: s.creator.clone(),
                created_at: s.created_at,
            })
            .collect()
    }

    pub(crate) fn create_deployment(
        &mut self,
        key: &str,
        creator: &str,
        input: DeploymentInput,
    ) -> Result<Deployment, ApiError> {
        let repo = self.repos.get(key).ok_or_else(ApiError::not_found)?;
        let sha = match &input.sha {
            Some(sha) if repo.has_commit(sha) => sha.clone(),
            Some(sha) => {
                return Err(ApiError::unprocessable(format!(
                    "No commit found for SHA: {sha}"
                )));
            }
            None => repo.resolve_ref(&input.ref_name).ok_or_else(|| {
                ApiError::unprocessable(format!("No ref found for: {}", input.ref_name))
            })?,
        };
        // Required contexts: every listed context (all contexts seen on the commit when the
        // list is omitted) must have a latest status of `success`.
        let mut latest: BTreeMap<&str, &str> = BTreeMap::new();
        for s in repo.statuses.iter().filter(|s| s.sha == sha) {
            latest.insert(&s.context, &s.state);
        }
        let required: Vec<String> = match &input.required_contexts {
            Some(list) => list.clone(),
            None => latest.keys().map(|k| k.to_string()).collect(),
        };
        let failing: Vec<&str> = required
            .iter()
            .filter(|c| latest.get(c.as_str()) != Some(&"success"))
            .map(String::as_str)
            .collect();
        if !failing.is_empty() {
            let contexts: Vec<serde_json::Value> = failing
                .iter()
                .map(|c| {
                    let state = latest.get(c).copied().unwrap_or("missing");
                    serde_json::json!({ "context": c, "state": state })
                })
                .collect();
            let message = format!(
                "Conflict: Commit status checks failed for {}.",
                input.ref_name
            );
            return Err(ApiError::conflict(message).with_errors(serde_json::json!([{
                "contexts": contexts,
                "resource": "Deployment",
                "field": "required_contexts",
                "code": "invalid",
            }])));
        }
        let now = self.tick();
        let environment = input
            .environment
            .unwrap_or_else(|| "production".to_string());
        let production = input
            .production_environment
            .unwrap_or(environment == "production");
        let deployment = Deployment {
            id: next(&mut self.ids.deployment),
            sha,
            ref_name: input.ref_name,
            task: input.task.unwrap_or_else(|| "deploy".to_string()),
            payload: input.payload.unwrap_or_else(|| serde_json::json!({})),
            original_environment: environment.clone(),
            environment,
            description: input.description,
            transient_environment: input.transient_environment.unwrap_or(false),
            production_environment: production,
            creator: creator.to_string(),
            created_at: now,
            updated_at: now,
            statuses: Vec::new(),
        };
        let repo = self.repos.get_mut(key).ok_or_else(ApiError::not_found)?;
        repo.deployments.insert(deployment.id, deployment.clone());
        Ok(deployment)
    }

    pub(crate) fn add_deployment_status(
        &mut self,
        key: &str,
        deployment_id: u64,
        creator: &str,
        input: DeploymentStatusInput,
    ) -> Result<(Deployment, DeploymentStatus), ApiError> {
        const STATES: [&str; 7] = [
            "error",
            "failure",
            "inactive",
            "in_progress",
            "queued",
            "pending",
            "success",
        ];
        if !STATES.contains(&input.state.as_str()) {
            return Err(ApiError::validation(
                "DeploymentStatus",
                "state",
                "state is not included in the list",
            ));
        }
        let repo = self.repos.get(key).ok_or_else(ApiError::not_found)?;
        let deployment = repo
            .deployments
            .get(&deployment_id)
            .ok_or_else(ApiError::not_found)?;
        let environment = input
            .environment
            .clone()
            .unwrap_or_else(|| deployment.environment.clone());
        // auto_inactive (default true): a new `success` marks earlier non-transient,
        // non-production deployments of the same environment `inactive`.
        let mut inactive_ids = Vec::new();
        if input.state == "success" && input.auto_inactive.unwrap_or(true) {
            inactive_ids = repo
                .deployments
                .values()
                .filter(|d| {
                    d.id != deployment_id
                        && d.environment == environment
                        && !d.transient_environment
                        && !d.production_environment
                        && d.statuses.last().is_some_and(|s| s.state != "inactive")
                })
                .map(|d| d.id)
                .collect();
        }
        let now = self.tick();
        let status = DeploymentStatus {
            id: next(&mut self.ids.deployment_status),
            state: input.state.clone(),
            description: input.description,
            environment: environment.clone(),
            environment_url: input.environment_url,
            // `target_url` is the deprecated name of `log_url`.
            log_url: input.log_url.or(input.target_url),
            creator: creator.to_string(),
            created_at: now,
        };
        let mut inactive = Vec::new();
        for _ in &inactive_ids {
            inactive.push((next(&mut self.ids.deployment_status), self.tick()));
        }
        let repo = self.repos.get_mut(key).ok_or_else(ApiError::not_found)?;
        for (id, (status_id, at)) in inactive_ids.iter().zip(inactive) {
            if let Some(d) = repo.deployments.get_mut(id) {
                let env = d.environment.clone();
                d.statuses.push(DeploymentStatus {
                    id: status_id,
                    state: "inactive".to_string(),
                    description: None,
                    environment: env,
                    environment_url: None,
                    log_url: None,
                    creator: creator.to_string(),
                    created_at: at,
                });
                d.updated_at = at;
            }
        }
        let deployment = repo
            .deployments
            .get_mut(&deployment_id)
            .ok_or_else(ApiError::not_found)?;
        deployment.statuses.push(status.clone());
        deployment.updated_at = now;
        Ok((deployment.clone(), status))
    }

    pub(crate) fn deployments_ctl(&mut self, repo: &str) -> Vec<DeploymentRecord> {
        self.repo_ctl(repo)
            .deployments
            .values()
            .map(|d| DeploymentRecord {
                id: d.id,
                sha: d.sha.clone(),
                ref_name: d.ref_name.clone(),
                environment: d.environment.clone(),
                description: d.description.clone(),
                transient_environment: d.transient_environment,
                production_environment: d.production_environment,
                creator: d.creator.clone(),
                statuses: d
                    .statuses
                    .iter()
                    .map(|s| (s.state.clone(), s.environment_url.clone()))
                    .collect(),
            })
            .collect()
    }
}

/// Parsed body of `POST /repos/{o}/{r}/pulls`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct PullInput {
    pub title: Option<String>,
    pub head: String,
    pub base: String,
    pub body: Option<String>,
    pub draft: Option<bool>,
}

/// Parsed body of `PATCH /repos/{o}/{r}/pulls/{n}` (`base` and `maintainer_can_modify` are
/// accepted and ignored).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct PullEdit {
    pub title: Option<String>,
    pub body: Option<String>,
    pub state: Option<String>,
}

/// Parsed body of `POST /repos/{o}/{r}/statuses/{sha}`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct StatusInput {
    pub state: String,
    pub target_url: Option<String>,
    pub description: Option<String>,
    pub context: Option<String>,
}

/// Parsed body of `POST /repos/{o}/{r}/deployments`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct DeploymentInput {
    #[serde(rename = "ref")]
    pub ref_name: String,
    pub sha: Option<String>,
    pub task: Option<String>,
    #[allow(dead_code)] // accepted for fidelity; the sandbox never needs to merge
    pub auto_merge: Option<bool>,
    pub required_contexts: Option<Vec<String>>,
    pub payload: Option<serde_json::Value>,
    pub environment: Option<String>,
    pub description: Option<String>,
    pub transient_environment: Option<bool>,
    pub production_environment: Option<bool>,
}

/// Parsed body of `POST /repos/{o}/{r}/deployments/{id}/statuses`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct DeploymentStatusInput {
    pub state: String,
    pub target_url: Option<String>,
    pub log_url: Option<String>,
    pub description: Option<String>,
    pub environment: Option<String>,
    pub environment_url: Option<String>,
    pub auto_inactive: Option<bool>,
}

/// Rejects file paths that could escape the archive's top directory (control API input).
pub(crate) fn check_path(path: &str) {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    assert!(
        !bad,
        "file path {path:?} must be relative, '/'-separated, without empty, '.' or '..' parts"
    );
}

fn line_count(content: &[u8]) -> u64 {
    content.iter().filter(|b| **b == b'\n').count() as u64
}
