//! A stateful fake of the GitHub REST API, served over real HTTP on `127.0.0.1`.
//!
//! It stands in for `api.github.com` in the daemon's tests and in `productbuilder demo`:
//! configure the daemon's API URL to [`Sandbox::url`] and drive the world through the control
//! API (plain Rust calls, no HTTP), then look at what the daemon did.
//!
//! # Main types
//!
//! - [`Sandbox`]: the running server and its control API (repositories, tokens, pull requests,
//!   pushes, comments, faults, rate limits, the request log).
//! - [`NewPr`]: a pull request to open. [`Permission`]: access levels to [`grant`](Sandbox::grant).
//! - [`Fault`]: an injected failure (status, `retry-after`, delay, malformed body).
//! - [`RequestRecord`], [`GitRequest`], [`Comment`], [`StatusRecord`], [`DeploymentRecord`]:
//!   what the daemon did.
//!
//! # What is real
//!
//! Payloads have the field names and types of GitHub's OpenAPI examples (see
//! `shared/fixtures/github-rest/`). Every API response carries `x-ratelimit-*` headers for the
//! caller's identity (5000/hour by default, 60 for anonymous callers); GET responses carry a
//! weak `ETag`, and a matching `If-None-Match` gets an empty `304` that costs no quota. ETags
//! are derived from the body and the *identity* (user or installation), not the token string,
//! so rotated installation tokens keep their 304s. Lists page with `per_page`/`page` and a
//! `Link` header (`next`, `last`, `prev`, `first`). An exhausted identity gets
//! `403 API rate limit exceeded`. Timestamps come from a logical clock that never repeats, so
//! `since` cursors (inclusive, `updated_at >= since`) are testable. `GET .../tarball/{ref}`
//! redirects to an unauthenticated download of a real `.tar.gz` with one top directory
//! `{owner}-{repo}-{sha7}/`. GitHub App JWTs are checked (`iss`, `exp`, `iat`; the RS256
//! signature too for apps registered with [`Sandbox::add_app_with_key`]) and mint one-hour
//! installation tokens.
//!
//! # Git-backed repositories
//!
//! [`Sandbox::create_git_repo`] backs a repository with a real bare git repository (in a
//! directory the sandbox owns and removes), served over git's smart HTTP protocol by the real
//! `git http-backend` at its `clone_url`, `{url}/git/{owner}/{name}.git`. Git authenticates as
//! on GitHub (Basic, a known token as the password; reads need read access, pushes write
//! access), except that anonymous requests are always refused, so tests prove the token
//! travelled; every git request is logged ([`Sandbox::git_requests`]). Branch heads are read
//! from git after each push and before answers that show them: `POST .../pulls` opens a pull
//! request on a pushed branch (GitHub's 422s for a missing branch or a duplicate), a later push
//! moves its head (and `updated_at`), `GET .../branches/{branch}` answers the head, and
//! tarballs are `git archive`s. File-tree repositories ([`Sandbox::create_repo`],
//! [`Sandbox::open_pr`], [`Sandbox::push`]) work as before.
//!
//! # Example
//!
//! ```no_run
//! use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let gh = Sandbox::start().await?;
//! gh.create_repo("acme", "shop");
//! gh.add_token("t-bot", "preview-bot");
//! gh.grant("t-bot", "acme/shop", Permission::Push);
//! let pr = gh.open_pr(
//!     "acme/shop",
//!     NewPr::new("Add a banner", "alice", "banner").with_file("compose.yaml", "services: {}\n"),
//! );
//! // ... point the daemon at gh.url() with token "t-bot", let it poll ...
//! let new_sha = gh.push("acme/shop", pr, vec![("index.html".into(), b"<h1>v2</h1>".to_vec())]);
//! assert_eq!(new_sha.len(), 40);
//! for c in gh.comments("acme/shop", pr) {
//!     println!("{}: {}", c.author, c.body);
//! }
//! gh.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod git_http;
mod gitrepo;
mod http;
mod jwt;
mod routes;
mod shapes;
mod tarball;
mod world;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use axum::http::Method;
pub use world::{
    Comment, DeploymentRecord, Fault, GitRequest, NewPr, Permission, RequestRecord, StatusRecord,
};

use world::World;

/// State shared by the control API and the HTTP server.
pub(crate) struct Shared {
    world: Mutex<World>,
    /// `http://127.0.0.1:PORT`, used for every absolute URL the sandbox prints.
    pub(crate) base_url: String,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) peak: AtomicUsize,
    pub(crate) request_seq: AtomicU64,
    /// Built source archives by (repository, sha): a commit's tree never changes, and like
    /// codeload, the archive is built once, not on every download.
    pub(crate) archives: Mutex<std::collections::HashMap<(String, String), axum::body::Bytes>>,
    /// The bare repositories of git-backed repositories (removed with the sandbox).
    pub(crate) git_root: gitrepo::GitRoot,
    /// Numbers reads of branch heads, so an older read never overwrites a newer one.
    pub(crate) git_read_seq: AtomicU64,
}

impl Shared {
    /// The world, even if a panicking test thread poisoned the lock.
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bare repository of a git-backed repository (by key), if it is one.
    pub(crate) fn git_dir_of(&self, key: &str) -> Option<PathBuf> {
        self.world()
            .repos
            .get(key)
            .and_then(|r| r.git.as_ref())
            .map(|g| g.dir.clone())
    }

    /// Reads a git-backed repository's branch heads now and hands them to the world (pull
    /// request heads follow). Nothing for other repositories; a failed read is logged and
    /// leaves the last heads.
    pub(crate) async fn sync_git_heads(&self, key: &str) {
        let Some(dir) = self.git_dir_of(key) else {
            return;
        };
        let seq = self.git_read_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let root = self.git_root.path().to_path_buf();
        let read = tokio::task::spawn_blocking(move || gitrepo::branches(&root, &dir)).await;
        match read {
            Ok(Ok(heads)) => self.world().apply_heads(key, seq, heads),
            Ok(Err(error)) => tracing::warn!(%error, key, "github sandbox: reading branches"),
            Err(error) => tracing::warn!(%error, key, "github sandbox: reading branches"),
        }
    }

    /// [`sync_git_heads`](Self::sync_git_heads) for the control API (blocking).
    fn sync_git_heads_now(&self, key: &str) {
        let Some(dir) = self.git_dir_of(key) else {
            return;
        };
        let seq = self.git_read_seq.fetch_add(1, Ordering::SeqCst) + 1;
        match gitrepo::branches(self.git_root.path(), &dir) {
            Ok(heads) => self.world().apply_heads(key, seq, heads),
            Err(error) => panic!("reading the branches of {key}: {error}"),
        }
    }
}

/// A running fake GitHub. Dropping it stops the server; [`Sandbox::shutdown`] stops it
/// gracefully.
///
/// Control-API methods panic with a clear message when misused (an unknown repository or pull
/// request, a malformed `owner/name`, a file path with `..`): they are test set-up, and a
/// panic there is a bug in the test. Nothing a client sends over HTTP can panic the server.
pub struct Sandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("url", &self.url()).finish()
    }
}

impl Sandbox {
    /// Binds `127.0.0.1` on a free port and serves in a background task.
    pub async fn start() -> io::Result<Sandbox> {
        Sandbox::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Binds `addr` and serves in a background task. An unspecified address (`0.0.0.0`)
    /// listens everywhere but prints loopback URLs.
    pub async fn start_on(addr: SocketAddr) -> io::Result<Sandbox> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let host = match local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let base_url = format!("http://{}", SocketAddr::new(host, local.port()));
        let shared = Arc::new(Shared {
            world: Mutex::new(World::default()),
            base_url,
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            request_seq: AtomicU64::new(0),
            archives: Mutex::default(),
            git_root: gitrepo::GitRoot::new()?,
            git_read_seq: AtomicU64::new(0),
        });
        let app = routes::router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(error) = server.await {
                tracing::warn!(%error, "github sandbox server stopped");
            }
        });
        tracing::debug!(url = %shared.base_url, "github sandbox listening");
        Ok(Sandbox {
            shared,
            addr: local,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The API base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server: no new connections, in-flight requests get up to five seconds; then
    /// the bare repositories of git-backed repositories are removed (dropping removes them too).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.shared.world()
    }

    // -- identities ----------------------------------------------------------------------------

    /// Registers a user token (`Authorization: Bearer <token>` or `token <token>`) for `login`.
    /// All tokens of one login share its rate limit, grants and ETags. Unknown tokens get
    /// `401 Bad credentials`; requests without `Authorization` are anonymous (60/hour, public
    /// repositories only, read-only).
    pub fn add_token(&self, token: &str, login: &str) {
        self.world().add_token(token, login);
    }

    /// Grants `permission` on `repo` (`owner/name`) to a token's identity, or to a login when
    /// no such token exists. The owner of a repository always has `Admin`.
    pub fn grant(&self, token_or_login: &str, repo: &str, permission: Permission) {
        self.world().grant(token_or_login, repo, permission);
    }

    /// Registers a GitHub App whose JWTs are accepted on payload checks alone (`iss` = this
    /// id, `exp` in the future and at most ten minutes ahead, `iat` not in the future); the
    /// signature is not verified. Its bot user is `sandbox-app-<id>[bot]`.
    pub fn add_app(&self, app_id: u64) {
        self.world().add_app(app_id, None);
    }

    /// Like [`add_app`](Self::add_app), and also verifies each JWT's RS256 signature with this
    /// RSA public key (PEM, `BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`).
    pub fn add_app_with_key(&self, app_id: u64, public_key_pem: &str) -> Result<(), String> {
        jwt::check_public_key(public_key_pem.as_bytes())?;
        self.world()
            .add_app(app_id, Some(public_key_pem.as_bytes().to_vec()));
        Ok(())
    }

    /// Installs app `app_id` as installation `installation_id` on `repos` (`owner/name`, which
    /// need not exist yet). Its tokens get `Push` on those repositories (read on other public
    /// ones) and are minted by `POST /app/installations/{id}/access_tokens`.
    pub fn install(&self, app_id: u64, installation_id: u64, repos: &[&str]) {
        self.world().install(app_id, installation_id, repos);
    }

    /// Makes every installation token minted so far expire now (they then get 401).
    pub fn expire_installation_tokens(&self) {
        self.world().expire_installation_tokens();
    }

    /// Sets the primary rate limit of a token's identity (or a login's): `limit`, `remaining`,
    /// and a window resetting `reset_in` from now.
    pub fn set_rate_limit(&self, token: &str, limit: u64, remaining: u64, reset_in: Duration) {
        self.world()
            .set_rate_limit(token, limit, remaining, reset_in);
    }

    /// What remains of a token's (or a login's) primary rate limit.
    pub fn rate_limit_remaining(&self, token_or_login: &str) -> u64 {
        let mut world = self.world();
        let who = world.subject(token_or_login);
        world.bucket(&who).remaining()
    }

    // -- repositories, pull requests, issues ------------------------------------------------

    /// Creates the public repository `owner/name` (default branch `main`, one empty commit)
    /// and returns its id; an existing one is kept and its id returned.
    pub fn create_repo(&self, owner: &str, name: &str) -> u64 {
        self.world().create_repo(owner, name, None)
    }

    /// Creates the public repository `owner/name` backed by a real bare git repository (in a
    /// directory the sandbox owns and removes), whose default branch `main` holds one commit of
    /// `files`, and returns its id. It is served over git's smart HTTP protocol at its
    /// `clone_url` (`{url}/git/{owner}/{name}.git`, Basic auth with a token as the password);
    /// pushed branches are real: pull requests can be opened on them over the API
    /// (`POST .../pulls`), follow their pushes, and their tarballs are `git archive`s.
    /// An existing git-backed repository is kept; a file-tree one of that name panics.
    pub fn create_git_repo(&self, owner: &str, name: &str, files: &[(&str, &[u8])]) -> u64 {
        let key = world::repo_key(owner, name);
        if let Some(repo) = self.world().repos.get(&key) {
            assert!(
                repo.git.is_some(),
                "create_git_repo: {owner}/{name} already exists without git"
            );
            return repo.id;
        }
        let files: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(path, content)| {
                world::check_path(path);
                (path.to_string(), content.to_vec())
            })
            .collect();
        let dir = self.shared.git_root.repo_dir(&key);
        let head = gitrepo::init(self.shared.git_root.path(), &dir, "main", &files)
            .unwrap_or_else(|e| panic!("create_git_repo {owner}/{name}: {e}"));
        self.world().create_git_repo(owner, name, dir, &head)
    }

    /// The bare git repository behind a git-backed repository (panics for others).
    pub fn git_dir(&self, repo: &str) -> PathBuf {
        let key = self.world().repo_ctl(repo).key();
        self.shared
            .git_dir_of(&key)
            .unwrap_or_else(|| panic!("{repo} is not git-backed; use create_git_repo"))
    }

    /// The head of `branch` in a git-backed repository, read from git now.
    pub fn branch_head(&self, repo: &str, branch: &str) -> Option<String> {
        let dir = self.git_dir(repo);
        gitrepo::branches(self.shared.git_root.path(), &dir)
            .unwrap_or_else(|e| panic!("reading the branches of {repo}: {e}"))
            .remove(branch)
    }

    /// Every branch of a git-backed repository and its head, read from git now.
    pub fn branches(&self, repo: &str) -> Vec<(String, String)> {
        let dir = self.git_dir(repo);
        gitrepo::branches(self.shared.git_root.path(), &dir)
            .unwrap_or_else(|e| panic!("reading the branches of {repo}: {e}"))
            .into_iter()
            .collect()
    }

    /// The pull requests (any state) whose head is `branch` of `repo` itself, oldest first; for
    /// a git-backed repository after reading its heads from git.
    pub fn pulls_with_head(&self, repo: &str, branch: &str) -> Vec<u64> {
        let key = self.world().repo_ctl(repo).key();
        self.shared.sync_git_heads_now(&key);
        self.world().pulls_with_head(repo, branch)
    }

    /// Every request to the git endpoints so far, in the order they finished.
    pub fn git_requests(&self) -> Vec<GitRequest> {
        self.world().git_requests.clone()
    }

    /// Makes a repository private (visible only to its owner, grantees and installations:
    /// everyone else gets 404) or public again.
    pub fn set_private(&self, repo: &str, private: bool) {
        self.world().repo_ctl(repo).private = private;
    }

    /// Opens a pull request and returns its number (shared with issues). Its head commit holds
    /// `pr.files`; for `pr.fork`, the head lives in `<author>/<repo name>`.
    pub fn open_pr(&self, repo: &str, pr: NewPr) -> u64 {
        self.world().open_pr(repo, pr)
    }

    /// The current head sha of a pull request.
    pub fn head_sha(&self, repo: &str, number: u64) -> String {
        self.world().head_sha(repo, number)
    }

    /// Pushes a commit to a pull request's head: `files` are added or replaced on top of the
    /// previous head's files. Returns the new head sha (40 hex, derived from the content and a
    /// counter); bumps `updated_at`. Older shas stay downloadable.
    pub fn push(&self, repo: &str, number: u64, files: Vec<(String, Vec<u8>)>) -> String {
        self.world().push(repo, number, files)
    }

    /// Closes a pull request; with `merged`, merges it (the default branch then holds its
    /// files).
    pub fn close_pr(&self, repo: &str, number: u64, merged: bool) {
        self.world().close_pr(repo, number, merged);
    }

    /// Reopens a closed, unmerged pull request.
    pub fn reopen_pr(&self, repo: &str, number: u64) {
        self.world().reopen_pr(repo, number);
    }

    /// Replaces the labels of an issue or pull request, as the repository's owner would (the
    /// issue events name the owner as the actor).
    pub fn set_labels(&self, repo: &str, number: u64, labels: Vec<String>) {
        self.world().set_labels(repo, number, labels, None);
    }

    /// Adds one label to an issue or pull request as `actor` (a `labeled` event by them).
    pub fn add_label(&self, repo: &str, number: u64, label: &str, actor: &str) {
        let mut world = self.world();
        let mut labels = world
            .repo_ctl(repo)
            .issues
            .get(&number)
            .map(|i| i.labels.clone())
            .unwrap_or_else(|| panic!("{repo} has no issue or pull request #{number}"));
        if !labels.iter().any(|l| l == label) {
            labels.push(label.to_owned());
        }
        world.set_labels(repo, number, labels, Some(actor));
    }

    /// Creates an issue and returns its number.
    pub fn create_issue(&self, repo: &str, title: &str, body: &str, author: &str) -> u64 {
        self.world().create_issue(repo, title, body, author)
    }

    /// The numbers and titles of a repository's issues and pull requests, with whether each is
    /// open, by number.
    pub fn issue_titles(&self, repo: &str) -> Vec<(u64, String, bool)> {
        let world = self.world();
        let key = world.repo_key_of(repo);
        world
            .repos
            .get(&key)
            .map(|r| {
                r.issues
                    .values()
                    .map(|i| (i.number, i.title.clone(), i.open))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether an issue or pull request is open; `None` when it does not exist.
    pub fn issue_open(&self, repo: &str, number: u64) -> Option<bool> {
        let world = self.world();
        let key = world.repo_key_of(repo);
        world.repos.get(&key)?.issues.get(&number).map(|i| i.open)
    }

    /// Replaces an issue's (or pull request's) body.
    pub fn edit_issue(&self, repo: &str, number: u64, body: &str) {
        self.world().edit_issue(repo, number, body);
    }

    // -- comments, statuses, deployments ----------------------------------------------------

    /// Adds a comment by `author` to an issue or pull request; returns the comment id.
    pub fn add_comment(&self, repo: &str, number: u64, author: &str, body: &str) -> u64 {
        let mut world = self.world();
        let key = world.repo_ctl(repo).key();
        match world.add_comment(&key, number, author, body) {
            Ok(comment) => comment.id,
            Err(_) => panic!("{repo} has no issue or pull request #{number}"),
        }
    }

    /// The comments of an issue or pull request, oldest first.
    pub fn comments(&self, repo: &str, number: u64) -> Vec<Comment> {
        self.world().comments_ctl(repo, number)
    }

    /// The commit statuses of `sha`, oldest first.
    pub fn statuses(&self, repo: &str, sha: &str) -> Vec<StatusRecord> {
        self.world().statuses_ctl(repo, sha)
    }

    /// The deployments of a repository, oldest first, with their statuses.
    pub fn deployments(&self, repo: &str) -> Vec<DeploymentRecord> {
        self.world().deployments_ctl(repo)
    }

    // -- faults and observation -------------------------------------------------------------

    /// Adds a fault; see [`Fault`] for how faults match and apply.
    pub fn inject(&self, fault: Fault) {
        self.world().inject(fault);
    }

    /// How many times the source archive of `sha` was requested from `repo`
    /// (`GET /repos/{repo}/tarball/{sha}`), whatever the answer.
    pub fn tarball_requests(&self, repo: &str, sha: &str) -> usize {
        let path = format!("/repos/{repo}/tarball/{sha}").to_ascii_lowercase();
        self.world()
            .requests
            .iter()
            .filter(|r| r.path_and_query.to_ascii_lowercase().starts_with(&path))
            .count()
    }

    /// Every request answered so far, in the order they finished.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.world().requests.clone()
    }

    /// Forgets the request log (and the in-flight peak).
    pub fn clear_requests(&self) {
        self.world().requests.clear();
        self.shared.peak.store(
            self.shared.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }

    /// The most requests ever in flight at once (since start or [`clear_requests`](Self::clear_requests)).
    pub fn in_flight_peak(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.shared.git_root.remove();
    }
}

/// Every file below `root` as `(path relative to root, bytes)`, `/`-separated: a directory read as
/// the files of a repository (for [`Sandbox::create_git_repo`] or a pull request's head).
///
/// # Panics
/// When the tree cannot be read (a test's or a bench's own files).
pub fn files_below(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("below the root");
                let bytes =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let relative = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((relative, bytes));
            }
        }
    }
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files
}
