//! The GitHub client: credentials, identities, conditional GETs through the persisted ETag cache,
//! pagination, writes, and the translation of every failure into one error type.
//!
//! octocrab is the transport and supplies the models and JWT signing; authentication, retries and
//! rate limiting are done here, because octocrab retries POSTs without backoff and drops App
//! authentication on `next` links whose host is not api.github.com (research/crates.md).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, header};
use octocrab::Octocrab;
use productbuilder_scheduler::{ErrorKind, UnitError};
use productbuilder_store::{Store, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::budget::{Access, Budget, BudgetLimits, BudgetSnapshot};
use crate::cache;

/// Largest response body accepted; a bigger one is an error, not an allocation.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// How long a user's permission on a repository is trusted before it is asked again: a revoked
/// writer can approve for at most this long.
const PERMISSION_TTL: Duration = Duration::from_secs(10 * 60);
/// Installation tokens live an hour; renew them this long before they expire.
const TOKEN_RENEWAL_MARGIN: Duration = Duration::from_secs(5 * 60);

/// A credential. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Token(value.into())
    }
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// How the daemon authenticates.
#[derive(Clone)]
pub enum Credentials {
    /// A personal access token (or any static token): one identity for every tenant.
    Token(Token),
    /// A GitHub App: a JWT buys installation tokens; each installation is one identity, shared by
    /// the tenants it covers.
    App {
        app_id: u64,
        key: Arc<octocrab::EncodingKey>,
        /// Set when every tenant is in one installation; otherwise found per repository.
        installation_id: Option<u64>,
    },
}

impl Credentials {
    /// Parses an App's PEM private key.
    pub fn app(app_id: u64, pem: &str, installation_id: Option<u64>) -> Result<Self, String> {
        let key = octocrab::EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| format!("the GitHub App private key is not a valid RSA PEM key: {e}"))?;
        Ok(Credentials::App {
            app_id,
            key: Arc::new(key),
            installation_id,
        })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Credentials::Token([redacted])"),
            Credentials::App {
                app_id,
                installation_id,
                ..
            } => write!(
                f,
                "Credentials::App {{ app_id: {app_id}, installation_id: {installation_id:?}, key: [redacted] }}"
            ),
        }
    }
}

/// Every way a GitHub call fails. Messages name the method and path and never a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GithubError {
    #[error("{method} {path}: HTTP {status}: {message}")]
    Status {
        method: Method,
        path: String,
        status: u16,
        message: String,
        wait_hint: Option<Duration>,
    },
    #[error("{method} {path}: {detail}")]
    Network {
        method: Method,
        path: String,
        detail: String,
    },
    #[error("{method} {path}: no answer within {after:?}")]
    Timeout {
        method: Method,
        path: String,
        after: Duration,
    },
    #[error("{method} {path}: unexpected response body: {detail}")]
    Decode {
        method: Method,
        path: String,
        detail: String,
    },
    #[error("GitHub App authentication: {0}")]
    Auth(String),
    #[error("{0}")]
    Store(String),
}

impl GithubError {
    pub fn status(&self) -> Option<u16> {
        match self {
            GithubError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the same request may succeed later: the network, a timeout, a locked database,
    /// GitHub failing (5xx) or limiting the rate (429, or a 403 that says so). Anything else
    /// (a 4xx, a body we cannot read, the App's authentication) fails the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            GithubError::Network { .. } | GithubError::Timeout { .. } | GithubError::Store(_) => {
                true
            }
            GithubError::Status { status, .. } => {
                *status >= 500
                    || *status == 429
                    || (*status == 403
                        && self.to_string().to_ascii_lowercase().contains("rate limit"))
            }
            GithubError::Decode { .. } | GithubError::Auth(_) => false,
        }
    }
}

impl From<StoreError> for GithubError {
    fn from(e: StoreError) -> Self {
        GithubError::Store(e.to_string())
    }
}

impl From<GithubError> for UnitError {
    fn from(e: GithubError) -> Self {
        let message = e.to_string();
        match e {
            GithubError::Status {
                status, wait_hint, ..
            } => UnitError::from_http_status(status, wait_hint, message),
            GithubError::Network { .. } => UnitError::new(ErrorKind::Network, message),
            GithubError::Timeout { .. } => UnitError::new(ErrorKind::Timeout, message),
            // Every Decode is a disagreement between our code and the answer (a body that is not
            // the shape we expect, our own body failing to serialize, the 1,000-page refusal, a
            // 304 for a request without ETag): the same request fails the same way, so retrying
            // only spends the quota. Internal, not Validation: GitHub did not reject our input.
            GithubError::Decode { .. } => UnitError::new(ErrorKind::Internal, message),
            GithubError::Auth(_) => UnitError::new(ErrorKind::BadCredentials, message),
            GithubError::Store(_) => UnitError::new(ErrorKind::Internal, message),
        }
    }
}

/// One answered request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body, unless it was streamed to a file.
    pub body: Vec<u8>,
    /// Bytes streamed to a file by [`GithubClient::download_to`].
    pub written: u64,
}

/// The result of a polled (conditional) GET: the body is current either way.
#[derive(Debug, Clone)]
pub struct Polled {
    pub body: Vec<u8>,
    /// False when GitHub answered 304 and the cached body was used.
    pub modified: bool,
    pub next: Option<String>,
    /// The answer's ETag (the cached one after a 304); `None` when GitHub sent none.
    pub etag: Option<String>,
}

/// A conditional GET for a caller that already processed some version of the resource.
#[derive(Debug)]
pub enum Conditional {
    /// 304 with the ETag the caller said it has seen: nothing was read, not even the cache.
    Unchanged { etag: String, next: Option<String> },
    /// Changed, or a version the caller has not seen (the cached body after a 304).
    Current(Polled),
}

/// What the client remembers of each polled URL: the validator of the row in `http_cache`, so
/// that a poll answered 304 reads nothing from SQLite unless the caller needs the body.
#[derive(Debug, Clone)]
struct Validator {
    etag: String,
    next: Option<String>,
    /// When the row's `used_at` was last brought up to date (the pruning keeps used rows).
    marked_used: std::time::Instant,
}

/// At most this many validators are kept in memory (about 200 bytes each); past it they are
/// forgotten and read again from SQLite, one per URL.
const MAX_VALIDATORS: usize = 100_000;
/// How often a row read only through its in-memory validator is marked used in SQLite; well
/// inside the week after which [`cache::prune`] removes unused rows.
const MARK_USED_EVERY: Duration = Duration::from_secs(12 * 3600);

/// An identity: who GitHub thinks we are, with its token and budget.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Stable across token rotation: `installation:{id}`, or `token:{hash}`.
    pub key: String,
    token: Token,
    pub budget: Budget,
}

#[derive(Debug, Clone)]
struct InstallationToken {
    token: Token,
    expires_at: SystemTime,
}

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub api_url: String,
    pub credentials: Credentials,
    pub limits: BudgetLimits,
    pub request_timeout: Duration,
}

/// The GitHub client. Cheap to clone; one per process.
#[derive(Clone)]
pub struct GithubClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: Octocrab,
    /// `token:{hash}` of a static token, hashed once (every poll asks for its identity).
    token_key: Option<String>,
    api_url: String,
    origin: String,
    credentials: Credentials,
    limits: BudgetLimits,
    timeout: Duration,
    store: Store,
    budgets: Mutex<HashMap<String, Budget>>,
    installation_tokens: Mutex<HashMap<u64, InstallationToken>>,
    repo_installations: Mutex<HashMap<String, u64>>,
    renewal: tokio::sync::Mutex<()>,
    /// The login the daemon writes as, once asked.
    own_login: tokio::sync::OnceCell<String>,
    /// (repo, lower-cased login) → (may write, when asked).
    permissions: Mutex<HashMap<(String, String), (bool, std::time::Instant)>>,
    /// identity key → url → the validator of its `http_cache` row (nested, so a lookup by
    /// `&str` allocates nothing).
    validators: Mutex<HashMap<String, HashMap<String, Validator>>>,
}

/// One `labeled` or `unlabeled` event of an issue or pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelEvent {
    pub id: u64,
    /// `labeled` or `unlabeled`.
    pub event: String,
    pub label: String,
    /// Who added or removed it.
    pub actor: String,
    /// GitHub's `created_at`.
    pub created_at: String,
}

/// Whether a collaborator-permission answer means write access: `permission` is the legacy base
/// role (maintain reads as `write`, triage as `read`), `role_name` the actual one. Only write,
/// maintain and admin may approve; triage may label but not approve.
pub fn is_writer(permission: &str, role_name: Option<&str>) -> bool {
    matches!(permission, "admin" | "write")
        || role_name.is_some_and(|r| matches!(r, "admin" | "maintain" | "write"))
}

fn origin_of(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    url[..end].to_ascii_lowercase()
}

fn path_of<'a>(url: &'a str, origin: &str) -> &'a str {
    url.get(origin.len()..)
        .filter(|p| !p.is_empty())
        .unwrap_or(url)
}

/// The `rel="next"` target of a `Link` header.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

impl GithubClient {
    pub fn new(config: ClientConfig, store: Store) -> Result<Self, String> {
        let api_url = config.api_url.trim_end_matches('/').to_owned();
        let http = Octocrab::builder()
            .base_uri(api_url.as_str())
            .map_err(|e| format!("[github].api_url {api_url:?}: {e}"))?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(config.request_timeout))
            .build()
            .map_err(|e| format!("cannot build the GitHub client: {e}"))?;
        Ok(GithubClient {
            inner: Arc::new(Inner {
                token_key: match &config.credentials {
                    Credentials::Token(token) => Some(token_key(token)),
                    Credentials::App { .. } => None,
                },
                origin: origin_of(&api_url),
                http,
                api_url,
                credentials: config.credentials,
                limits: config.limits,
                timeout: config.request_timeout,
                store,
                budgets: Mutex::new(HashMap::new()),
                installation_tokens: Mutex::new(HashMap::new()),
                repo_installations: Mutex::new(HashMap::new()),
                renewal: tokio::sync::Mutex::new(()),
                own_login: tokio::sync::OnceCell::new(),
                permissions: Mutex::new(HashMap::new()),
                validators: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn api_url(&self) -> &str {
        &self.inner.api_url
    }

    /// `{api_url}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.api_url)
    }

    fn static_token_key(&self, token: &Token) -> String {
        self.inner
            .token_key
            .clone()
            .unwrap_or_else(|| token_key(token))
    }

    fn budget(&self, key: &str) -> Budget {
        let mut budgets = self.inner.budgets.lock().unwrap_or_else(|p| p.into_inner());
        budgets
            .entry(key.to_owned())
            .or_insert_with(|| Budget::new(key, self.inner.limits.clone()))
            .clone()
    }

    /// Every identity's budget, for metrics and the API.
    pub fn budgets(&self) -> Vec<BudgetSnapshot> {
        let budgets = self.inner.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<BudgetSnapshot> = budgets.values().map(Budget::snapshot).collect();
        all.sort_by(|a, b| a.identity.cmp(&b.identity));
        all
    }

    /// The budget a repository's requests are charged to, once known.
    pub fn budget_for(&self, repo: &str) -> Option<BudgetSnapshot> {
        let key = match &self.inner.credentials {
            Credentials::Token(token) => self.static_token_key(token),
            Credentials::App {
                installation_id: Some(id),
                ..
            } => format!("installation:{id}"),
            Credentials::App { .. } => {
                let map = self
                    .inner
                    .repo_installations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                format!("installation:{}", map.get(repo)?)
            }
        };
        let budgets = self.inner.budgets.lock().unwrap_or_else(|p| p.into_inner());
        budgets.get(&key).map(Budget::snapshot)
    }

    /// The identity that acts on `repo` (`owner/name`).
    pub async fn identity(&self, repo: &str) -> Result<Identity, GithubError> {
        match &self.inner.credentials {
            Credentials::Token(token) => {
                let key = self.static_token_key(token);
                Ok(Identity {
                    budget: self.budget(&key),
                    key,
                    token: token.clone(),
                })
            }
            Credentials::App {
                app_id,
                key,
                installation_id,
            } => {
                let installation = match installation_id {
                    Some(id) => *id,
                    None => self.installation_of(repo, *app_id, key).await?,
                };
                let token = self.installation_token(installation, *app_id, key).await?;
                let key = format!("installation:{installation}");
                Ok(Identity {
                    budget: self.budget(&key),
                    key,
                    token,
                })
            }
        }
    }

    /// The token `repo`'s identity holds now (an installation token is renewed first when it is
    /// about to expire), for git's environment alone: builds clone and push with it. Never log,
    /// store or pass it in an argv.
    pub async fn git_token(&self, repo: &str) -> Result<String, GithubError> {
        Ok(self.identity(repo).await?.token.expose().to_owned())
    }

    /// The login the daemon's comments carry: the token's user (`GET /user`), or `{slug}[bot]`
    /// for a GitHub App (`GET /app` with the App's JWT). Asked once per process; `repo` is only
    /// used to find an identity to ask with.
    pub async fn own_login(&self, repo: &str) -> Result<String, GithubError> {
        #[derive(serde::Deserialize)]
        struct User {
            login: String,
        }
        #[derive(serde::Deserialize)]
        struct App {
            slug: String,
        }
        self.inner
            .own_login
            .get_or_try_init(|| async {
                match &self.inner.credentials {
                    Credentials::Token(_) => {
                        let identity = self.identity(repo).await?;
                        let user: User = self.get(&identity, &self.url("/user")).await?;
                        Ok(user.login)
                    }
                    Credentials::App { app_id, key, .. } => {
                        let app = self.jwt_identity(*app_id, key)?;
                        let found: App = self.get(&app, &self.url("/app")).await?;
                        Ok(format!("{}[bot]", found.slug))
                    }
                }
            })
            .await
            .cloned()
    }

    /// Whether `user` has write, maintain or admin access to `repo`
    /// (`GET /repos/{repo}/collaborators/{user}/permission`), remembered for ten minutes. A user
    /// GitHub does not know has none. `author_association` is not used: COLLABORATOR includes
    /// read-only collaborators.
    pub async fn can_write(&self, repo: &str, user: &str) -> Result<bool, GithubError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            permission: String,
            role_name: Option<String>,
        }
        let key = (repo.to_owned(), user.to_ascii_lowercase());
        let lock = || {
            self.inner
                .permissions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        if let Some((writer, at)) = lock().get(&key)
            && at.elapsed() < PERMISSION_TTL
        {
            return Ok(*writer);
        }
        if user.is_empty()
            || !user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_[]".contains(c))
        {
            return Ok(false);
        }
        let identity = self.identity(repo).await?;
        let url = self.url(&format!("/repos/{repo}/collaborators/{user}/permission"));
        let writer = match self.get::<Answer>(&identity, &url).await {
            Ok(a) => is_writer(&a.permission, a.role_name.as_deref()),
            Err(e) if e.status() == Some(404) => false,
            Err(e) => return Err(e),
        };
        lock().insert(key, (writer, std::time::Instant::now()));
        Ok(writer)
    }

    /// The `labeled` and `unlabeled` events of `repo#number`, oldest first (conditional requests:
    /// an unchanged list costs no quota).
    pub async fn label_events(
        &self,
        repo: &str,
        number: u64,
    ) -> Result<Vec<LabelEvent>, GithubError> {
        #[derive(serde::Deserialize)]
        struct Actor {
            login: String,
        }
        #[derive(serde::Deserialize)]
        struct Label {
            name: String,
        }
        #[derive(serde::Deserialize)]
        struct Event {
            id: u64,
            event: String,
            actor: Option<Actor>,
            label: Option<Label>,
            created_at: String,
        }
        let identity = self.identity(repo).await?;
        let url = self.url(&format!(
            "/repos/{repo}/issues/{number}/events?per_page=100"
        ));
        let (events, _) = self.poll_all::<Event>(&identity, &url).await?;
        Ok(events
            .into_iter()
            .filter(|e| matches!(e.event.as_str(), "labeled" | "unlabeled"))
            .filter_map(|e| {
                Some(LabelEvent {
                    id: e.id,
                    label: e.label?.name,
                    actor: e.actor.map_or_else(|| "ghost".to_owned(), |a| a.login),
                    event: e.event,
                    created_at: e.created_at,
                })
            })
            .collect())
    }

    fn jwt_identity(
        &self,
        app_id: u64,
        key: &octocrab::EncodingKey,
    ) -> Result<Identity, GithubError> {
        let jwt = octocrab::auth::create_jwt(octocrab::models::AppId(app_id), key)
            .map_err(|e| GithubError::Auth(format!("cannot sign a JWT for app {app_id}: {e}")))?;
        let budget_key = format!("app:{app_id}");
        Ok(Identity {
            budget: self.budget(&budget_key),
            key: budget_key,
            token: Token::new(jwt),
        })
    }

    async fn installation_of(
        &self,
        repo: &str,
        app_id: u64,
        key: &octocrab::EncodingKey,
    ) -> Result<u64, GithubError> {
        if let Some(id) = self
            .inner
            .repo_installations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(repo)
        {
            return Ok(*id);
        }
        #[derive(serde::Deserialize)]
        struct Installation {
            id: u64,
        }
        let app = self.jwt_identity(app_id, key)?;
        let url = self.url(&format!("/repos/{repo}/installation"));
        let answer = self
            .send(
                &app,
                Method::GET,
                &url,
                None,
                HeaderMap::new(),
                Access::Read,
            )
            .await?;
        let installation: Installation = decode(
            &Method::GET,
            path_of(&url, &self.inner.origin),
            &answer.body,
        )?;
        self.inner
            .repo_installations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(repo.to_owned(), installation.id);
        Ok(installation.id)
    }

    async fn installation_token(
        &self,
        installation: u64,
        app_id: u64,
        key: &octocrab::EncodingKey,
    ) -> Result<Token, GithubError> {
        let fresh = |tokens: &HashMap<u64, InstallationToken>| {
            tokens.get(&installation).and_then(|t| {
                (t.expires_at > SystemTime::now() + TOKEN_RENEWAL_MARGIN).then(|| t.token.clone())
            })
        };
        if let Some(token) = fresh(&self.lock_tokens()) {
            return Ok(token);
        }
        // One renewal at a time: the tenants of an installation share its token.
        let _renewing = self.inner.renewal.lock().await;
        if let Some(token) = fresh(&self.lock_tokens()) {
            return Ok(token);
        }
        let app = self.jwt_identity(app_id, key)?;
        let url = self.url(&format!("/app/installations/{installation}/access_tokens"));
        let answer = self
            .send(
                &app,
                Method::POST,
                &url,
                Some(b"{}".to_vec()),
                HeaderMap::new(),
                Access::Read,
            )
            .await?;
        let minted: octocrab::models::InstallationToken = decode(
            &Method::POST,
            path_of(&url, &self.inner.origin),
            &answer.body,
        )?;
        let expires_at = minted
            .expires_at
            .as_deref()
            .and_then(parse_rfc3339)
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600));
        let token = Token::new(minted.token);
        tracing::info!(installation, expires_in = ?expires_at.duration_since(SystemTime::now()).unwrap_or_default(), "renewed the installation token");
        self.lock_tokens().insert(
            installation,
            InstallationToken {
                token: token.clone(),
                expires_at,
            },
        );
        Ok(token)
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<u64, InstallationToken>> {
        self.inner
            .installation_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets cached installation tokens (after a 401, or in tests).
    pub fn forget_tokens(&self) {
        self.lock_tokens().clear();
    }

    /// Sends one request under the identity's budget. Non-2xx answers (other than 304) are errors.
    pub async fn send(
        &self,
        identity: &Identity,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        headers: HeaderMap,
        access: Access,
    ) -> Result<Answer, GithubError> {
        self.exchange(
            identity,
            method,
            url,
            body,
            headers,
            access,
            None,
            self.inner.timeout,
        )
        .await
    }

    /// Downloads `url` into `file`, refusing more than `max_bytes`, within `timeout`. Redirects
    /// are followed, and credentials are dropped on a redirect to another origin (GitHub's
    /// tarball links point at a pre-signed URL on another host). Returns the bytes written.
    pub async fn download_to(
        &self,
        identity: &Identity,
        url: &str,
        file: &Path,
        max_bytes: u64,
        timeout: Duration,
    ) -> Result<u64, GithubError> {
        let answer = self
            .exchange(
                identity,
                Method::GET,
                url,
                None,
                HeaderMap::new(),
                Access::Read,
                Some((file, max_bytes)),
                timeout,
            )
            .await?;
        Ok(answer.written)
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        identity: &Identity,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        mut headers: HeaderMap,
        access: Access,
        to_file: Option<(&Path, u64)>,
        timeout: Duration,
    ) -> Result<Answer, GithubError> {
        let path = path_of(url, &self.inner.origin).to_owned();
        if origin_of(url) != self.inner.origin {
            return Err(GithubError::Network {
                method,
                path,
                detail: format!(
                    "refusing to send credentials to {}: it is not [github].api_url",
                    origin_of(url)
                ),
            });
        }
        let authorization = HeaderValue::from_str(&format!("Bearer {}", identity.token.expose()))
            .map_err(|_| {
            GithubError::Auth("the token contains characters not allowed in a header".into())
        })?;
        headers.insert(header::AUTHORIZATION, authorization);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static("2022-11-28"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("productbuilder/", env!("CARGO_PKG_VERSION"))),
        );
        let mut builder = http::Request::builder().method(method.clone()).uri(url);
        for (k, v) in &headers {
            builder = builder.header(k, v);
        }
        let request = match body {
            Some(bytes) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                builder.body(octocrab::OctoBody::from(bytes))
            }
            None => builder.body(octocrab::OctoBody::empty()),
        }
        .map_err(|e| GithubError::Network {
            method: method.clone(),
            path: path.clone(),
            detail: format!("cannot build the request: {e}"),
        })?;

        let _permit = identity.budget.acquire(access).await;
        let exchange = async {
            let response =
                self.inner
                    .http
                    .execute(request)
                    .await
                    .map_err(|e| GithubError::Network {
                        method: method.clone(),
                        path: path.clone(),
                        detail: network_detail(&e),
                    })?;
            let (parts, body) = response.into_parts();
            let status = parts.status.as_u16();
            let network = |detail| GithubError::Network {
                method: method.clone(),
                path: path.clone(),
                detail,
            };
            let (bytes, written) = match to_file {
                Some((file, max)) if (200..300).contains(&status) => (
                    Vec::new(),
                    stream_to_file(body, file, max).await.map_err(network)?,
                ),
                _ => (read_capped(body).await.map_err(network)?, 0),
            };
            Ok::<_, GithubError>(Answer {
                status,
                headers: parts.headers,
                body: bytes,
                written,
            })
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| GithubError::Timeout {
                method: method.clone(),
                path: path.clone(),
                after: timeout,
            })??;
        let wait_hint = identity
            .budget
            .observe(answer.status, &answer.headers, &answer.body);
        if answer.status == 401 && matches!(self.inner.credentials, Credentials::App { .. }) {
            // The installation token may have been revoked early; the next attempt mints one.
            self.forget_tokens();
        }
        if (200..300).contains(&answer.status) || answer.status == 304 {
            return Ok(answer);
        }
        Err(GithubError::Status {
            method,
            path,
            status: answer.status,
            message: error_message(&answer.body),
            wait_hint,
        })
    }

    /// A conditional GET of a polled resource: `If-None-Match` from the cache, and the cached body
    /// on a 304 (which costs no primary quota). The cache is keyed by the identity's stable key, so
    /// a renewed installation token keeps its 304s, and it is persisted, so a restart does too.
    pub async fn poll(&self, identity: &Identity, url: &str) -> Result<Polled, GithubError> {
        match self.poll_unless_seen(identity, url, None).await? {
            Conditional::Current(polled) => Ok(polled),
            // Only returned for the ETag the caller named, and it named none.
            Conditional::Unchanged { .. } => unreachable!("no ETag was named as seen"),
        }
    }

    /// [`poll`](Self::poll) for a caller that already processed the version with ETag `seen`:
    /// when GitHub answers 304 for it, neither the body nor the cache row is read.
    pub async fn poll_unless_seen(
        &self,
        identity: &Identity,
        url: &str,
        seen: Option<&str>,
    ) -> Result<Conditional, GithubError> {
        let store = &self.inner.store;
        // Twice at most: a 304 whose body the cache no longer holds (pruned since) is asked again
        // without an ETag.
        let mut conditional = true;
        loop {
            let mut loaded = None;
            let validator = match conditional.then(|| self.validator(&identity.key, url)) {
                None => None,
                Some(Some(validator)) => Some(validator),
                Some(None) => {
                    loaded = cache::get(store, &identity.key, url).await?;
                    loaded.as_ref().map(|entry| {
                        self.remember(&identity.key, url, &entry.etag, entry.next.as_deref())
                    })
                }
            };
            let mut headers = HeaderMap::new();
            if let Some(validator) = &validator
                && let Ok(value) = HeaderValue::from_str(&validator.etag)
            {
                headers.insert(header::IF_NONE_MATCH, value);
            }
            let answer = self
                .send(identity, Method::GET, url, None, headers, Access::Read)
                .await?;
            if answer.status == 304 {
                let Some(validator) = validator else {
                    return Err(GithubError::Decode {
                        method: Method::GET,
                        path: path_of(url, &self.inner.origin).to_owned(),
                        detail: "304 Not Modified for a request that had no ETag".into(),
                    });
                };
                if validator.marked_used.elapsed() >= MARK_USED_EVERY {
                    cache::mark_used(store, &identity.key, url).await?;
                    self.remember(
                        &identity.key,
                        url,
                        &validator.etag,
                        validator.next.as_deref(),
                    );
                }
                if seen == Some(validator.etag.as_str()) {
                    return Ok(Conditional::Unchanged {
                        etag: validator.etag,
                        next: validator.next,
                    });
                }
                let body = match loaded {
                    Some(entry) => Some(entry.body),
                    None => cache::body(store, &identity.key, url, &validator.etag).await?,
                };
                match body {
                    Some(body) => {
                        return Ok(Conditional::Current(Polled {
                            body,
                            modified: false,
                            next: validator.next,
                            etag: Some(validator.etag),
                        }));
                    }
                    None => {
                        self.forget_validator(&identity.key, url);
                        conditional = false;
                        continue;
                    }
                }
            }
            let next = next_link(&answer.headers);
            let etag = answer
                .headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match &etag {
                Some(etag) => {
                    cache::put(
                        store,
                        &identity.key,
                        url,
                        etag,
                        &answer.body,
                        next.as_deref(),
                    )
                    .await?;
                    self.remember(&identity.key, url, etag, next.as_deref());
                }
                // The row (if any) stays as it was, as before: the next poll reads it again.
                None => self.forget_validator(&identity.key, url),
            }
            return Ok(Conditional::Current(Polled {
                body: answer.body,
                modified: true,
                next,
                etag,
            }));
        }
    }

    #[allow(clippy::type_complexity)]
    fn lock_validators(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Validator>>> {
        self.inner
            .validators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn validator(&self, identity: &str, url: &str) -> Option<Validator> {
        self.lock_validators().get(identity)?.get(url).cloned()
    }

    /// Remembers the validator of a row that was just read or written (so marked used now).
    fn remember(&self, identity: &str, url: &str, etag: &str, next: Option<&str>) -> Validator {
        let validator = Validator {
            etag: etag.to_owned(),
            next: next.map(str::to_owned),
            marked_used: std::time::Instant::now(),
        };
        let mut validators = self.lock_validators();
        if validators.values().map(HashMap::len).sum::<usize>() >= MAX_VALIDATORS {
            validators.clear();
        }
        validators
            .entry(identity.to_owned())
            .or_default()
            .insert(url.to_owned(), validator.clone());
        validator
    }

    fn forget_validator(&self, identity: &str, url: &str) {
        if let Some(urls) = self.lock_validators().get_mut(identity) {
            urls.remove(url);
        }
    }

    /// One page of a conditional listing, decoded, with the next page's URL and whether it
    /// changed since the last poll.
    pub async fn poll_page<T: DeserializeOwned>(
        &self,
        identity: &Identity,
        url: &str,
    ) -> Result<Page<T>, GithubError> {
        let page = self.poll(identity, url).await?;
        self.decode_page(url, page)
    }

    /// [`poll_page`](Self::poll_page) for a caller that already processed the version with ETag
    /// `seen`: `None` when GitHub says it is still current (nothing is read or decoded).
    pub async fn poll_page_unless_seen<T: DeserializeOwned>(
        &self,
        identity: &Identity,
        url: &str,
        seen: Option<&str>,
    ) -> Result<Option<Page<T>>, GithubError> {
        match self.poll_unless_seen(identity, url, seen).await? {
            Conditional::Unchanged { .. } => Ok(None),
            Conditional::Current(page) => self.decode_page(url, page).map(Some),
        }
    }

    fn decode_page<T: DeserializeOwned>(
        &self,
        url: &str,
        page: Polled,
    ) -> Result<Page<T>, GithubError> {
        Ok(Page {
            items: decode(&Method::GET, path_of(url, &self.inner.origin), &page.body)?,
            next: page.next,
            modified: page.modified,
            etag: page.etag,
        })
    }

    /// Every page of a conditional listing, unless every page is still the version whose ETag
    /// `seen` names (in page order): then `None`, and no body is read or decoded. Once one page
    /// changed, the pages before it are asked again for their bodies (304s, free of quota).
    pub async fn poll_all_unless_seen<T: DeserializeOwned>(
        &self,
        identity: &Identity,
        first_url: &str,
        seen: &[String],
    ) -> Result<Option<Listing<T>>, GithubError> {
        // The pages answered "unchanged" so far, while no page changed.
        let mut unchanged: Vec<String> = Vec::new();
        let mut listing: Option<Listing<T>> = None;
        let mut url = first_url.to_owned();
        for index in 0..MAX_PAGES {
            let seen_here = match listing {
                None => seen.get(index).map(String::as_str),
                Some(_) => None,
            };
            let next = match self.poll_unless_seen(identity, &url, seen_here).await? {
                Conditional::Unchanged { next, .. } => {
                    unchanged.push(url.clone());
                    next
                }
                Conditional::Current(page) => {
                    let next = page.next.clone();
                    let mut so_far = match listing.take() {
                        Some(so_far) => so_far,
                        None => self.pages_again(identity, &unchanged).await?,
                    };
                    so_far.add(self.decode_page(&url, page)?);
                    listing = Some(so_far);
                    next
                }
            };
            let Some(next) = next else {
                return match listing {
                    Some(listing) => Ok(Some(listing)),
                    None if unchanged.len() == seen.len() => Ok(None),
                    // Fewer pages than were seen, each unchanged: read their bodies after all.
                    None => self.pages_again(identity, &unchanged).await.map(Some),
                };
            };
            url = next;
        }
        Err(self.too_many_pages(first_url))
    }

    /// The pages at `urls` polled again for their bodies, in order.
    async fn pages_again<T: DeserializeOwned>(
        &self,
        identity: &Identity,
        urls: &[String],
    ) -> Result<Listing<T>, GithubError> {
        let mut listing = Listing {
            items: Vec::new(),
            modified: false,
            etags: Some(Vec::new()),
        };
        for url in urls {
            listing.add(self.poll_page(identity, url).await?);
        }
        Ok(listing)
    }

    /// Every page of a conditional listing (at most [`MAX_PAGES`]), and whether any changed.
    pub async fn poll_all<T: DeserializeOwned>(
        &self,
        identity: &Identity,
        first_url: &str,
    ) -> Result<(Vec<T>, bool), GithubError> {
        let mut items = Vec::new();
        let mut modified = false;
        let mut url = first_url.to_owned();
        for _ in 0..MAX_PAGES {
            let mut page = self.poll_page(identity, &url).await?;
            modified |= page.modified;
            items.append(&mut page.items);
            match page.next {
                Some(next) => url = next,
                None => return Ok((items, modified)),
            }
        }
        Err(self.too_many_pages(first_url))
    }

    /// The refusal to follow a listing starting at `first_url` past [`MAX_PAGES`].
    pub(crate) fn too_many_pages(&self, first_url: &str) -> GithubError {
        GithubError::Decode {
            method: Method::GET,
            path: path_of(first_url, &self.inner.origin).to_owned(),
            detail: format!("more than {MAX_PAGES} pages; refusing to follow further"),
        }
    }

    /// An unconditional GET, decoded.
    pub async fn get<T: DeserializeOwned>(
        &self,
        identity: &Identity,
        url: &str,
    ) -> Result<T, GithubError> {
        let answer = self
            .send(
                identity,
                Method::GET,
                url,
                None,
                HeaderMap::new(),
                Access::Read,
            )
            .await?;
        decode(&Method::GET, path_of(url, &self.inner.origin), &answer.body)
    }

    /// A content write (POST, PATCH, DELETE): paced within the write caps.
    pub async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        identity: &Identity,
        method: Method,
        url: &str,
        body: &B,
    ) -> Result<T, GithubError> {
        let bytes = serde_json::to_vec(body).map_err(|e| GithubError::Decode {
            method: method.clone(),
            path: url.to_owned(),
            detail: e.to_string(),
        })?;
        let answer = self
            .send(
                identity,
                method.clone(),
                url,
                Some(bytes),
                HeaderMap::new(),
                Access::Write,
            )
            .await?;
        decode(&method, path_of(url, &self.inner.origin), &answer.body)
    }
}

fn token_key(token: &Token) -> String {
    let digest = Sha256::digest(token.expose().as_bytes());
    format!("token:{}", &hex::encode(digest)[..16])
}

fn network_detail(e: &octocrab::Error) -> String {
    // octocrab's Display for transport errors is terse; the source chain says what happened.
    error_chain(e)
}

/// An error and its sources on one line, each distinct message once (layers often repeat the
/// message of the error they wrap).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

async fn read_capped(
    body: impl http_body::Body<Data = bytes::Bytes, Error = octocrab::Error> + Unpin,
) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the response: {}", network_detail(&e)))?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > MAX_RESPONSE_BYTES {
                return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// Streams a body into a new file, stopping with an error past `max` bytes.
async fn stream_to_file(
    body: impl http_body::Body<Data = bytes::Bytes, Error = octocrab::Error> + Unpin,
    file: &Path,
    max: u64,
) -> Result<u64, String> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .await
        .map_err(|e| format!("cannot create {}: {e}", file.display()))?;
    let mut body = body;
    let mut written: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the download: {}", network_detail(&e)))?;
        if let Some(data) = frame.data_ref() {
            written += data.len() as u64;
            if written > max {
                return Err(format!(
                    "the download is larger than {max} bytes; refusing it"
                ));
            }
            out.write_all(data)
                .await
                .map_err(|e| format!("writing {}: {e}", file.display()))?;
        }
    }
    out.flush()
        .await
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    Ok(written)
}

/// Most pages one listing is followed for.
pub const MAX_PAGES: usize = 1000;

/// One page of a listing.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
    pub modified: bool,
    /// Its ETag (the cached one after a 304), `None` when GitHub sent none.
    pub etag: Option<String>,
}

/// Every page of a listing, with the ETag of each page in order (`None` when a page had none).
#[derive(Debug)]
pub struct Listing<T> {
    pub items: Vec<T>,
    /// Whether any page changed since it was cached.
    pub modified: bool,
    pub etags: Option<Vec<String>>,
}

impl<T> Listing<T> {
    fn add(&mut self, mut page: Page<T>) {
        self.items.append(&mut page.items);
        self.modified |= page.modified;
        self.etags = match (self.etags.take(), page.etag) {
            (Some(mut etags), Some(etag)) => {
                etags.push(etag);
                Some(etags)
            }
            _ => None,
        };
    }
}

fn decode<T: DeserializeOwned>(method: &Method, path: &str, body: &[u8]) -> Result<T, GithubError> {
    serde_json::from_slice(body).map_err(|e| GithubError::Decode {
        method: method.clone(),
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// GitHub's `message`, or the start of the body; one line, bounded.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Basic {
        message: String,
        #[serde(default)]
        errors: Vec<serde_json::Value>,
    }
    let text = match serde_json::from_slice::<Basic>(body) {
        // A validation failure's reasons ("A pull request already exists for o:b.") are in
        // `errors`: they say what to fix, so they follow the message.
        Ok(b) => {
            let reasons: Vec<String> = b
                .errors
                .iter()
                .filter_map(|e| match e.get("message").and_then(|m| m.as_str()) {
                    Some(message) => Some(message.to_owned()),
                    None => {
                        let field = e.get("field")?.as_str()?;
                        let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("invalid");
                        Some(format!("{field} {code}"))
                    }
                })
                .collect();
            if reasons.is_empty() {
                b.message
            } else {
                format!("{}: {}", b.message, reasons.join("; "))
            }
        }
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    };
    let line: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
    if line.is_empty() {
        "(empty body)".into()
    } else {
        line
    }
}

/// Parses `2026-11-25T12:00:00Z` (the form GitHub sends; fractional seconds are kept).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn github_errors_map_to_scheduler_kinds() {
        let decode = |detail: &str| GithubError::Decode {
            method: Method::GET,
            path: "/repos/acme/shop/pulls".into(),
            detail: detail.into(),
        };
        let status = |status: u16, wait_hint: Option<Duration>| GithubError::Status {
            method: Method::POST,
            path: "/repos/acme/shop/issues/1/comments".into(),
            status,
            message: "m".into(),
            wait_hint,
        };
        let cases: Vec<(GithubError, ErrorKind)> = vec![
            (status(404, None), ErrorKind::NotFound),
            (status(422, None), ErrorKind::Validation),
            (status(403, None), ErrorKind::Forbidden),
            (
                status(403, Some(Duration::from_secs(60))),
                ErrorKind::RateLimited,
            ),
            (status(502, None), ErrorKind::Server),
            (
                GithubError::Network {
                    method: Method::GET,
                    path: "/x".into(),
                    detail: "connection refused".into(),
                },
                ErrorKind::Network,
            ),
            (
                GithubError::Timeout {
                    method: Method::GET,
                    path: "/x".into(),
                    after: Duration::from_secs(30),
                },
                ErrorKind::Timeout,
            ),
            (decode("expected value at line 1"), ErrorKind::Internal),
            (
                decode("more than 1000 pages; refusing to follow further"),
                ErrorKind::Internal,
            ),
            (
                decode("304 Not Modified for a request that had no ETag"),
                ErrorKind::Internal,
            ),
            (
                GithubError::Auth("no key".into()),
                ErrorKind::BadCredentials,
            ),
            (GithubError::Store("disk full".into()), ErrorKind::Internal),
        ];
        for (error, kind) in cases {
            let text = error.to_string();
            let unit = UnitError::from(error);
            assert_eq!(unit.kind(), kind, "{text}");
            assert_eq!(unit.message(), text);
        }
    }

    #[test]
    fn next_links_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static(
                "<https://api.github.com/repositories/1/pulls?page=2>; rel=\"next\", <https://api.github.com/repositories/1/pulls?page=5>; rel=\"last\"",
            ),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/repositories/1/pulls?page=2")
        );
        h.insert(
            header::LINK,
            HeaderValue::from_static("<https://x/?page=1>; rel=\"prev\""),
        );
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn origins_and_paths() {
        assert_eq!(
            origin_of("http://127.0.0.1:8080/api/v3"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            origin_of("https://API.github.com"),
            "https://api.github.com"
        );
        assert_eq!(
            path_of("https://api.github.com/repos/a/b", "https://api.github.com"),
            "/repos/a/b"
        );
    }

    #[test]
    fn rfc3339_timestamps() {
        let t = parse_rfc3339("2011-01-26T19:01:12Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_296_068_472
        );
        assert_eq!(
            parse_rfc3339(" 2011-01-26T19:01:12.250Z\n")
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            1_296_068_472_250
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2011-02-30T19:01:12Z"), None);
    }

    #[test]
    fn error_messages_are_one_bounded_line() {
        assert_eq!(
            error_message(br#"{"message":"Bad credentials"}"#),
            "Bad credentials"
        );
        assert_eq!(error_message(b"<html>\n502\n</html>"), "<html>502</html>");
        assert_eq!(error_message(&[b'x'; 5000]).len(), 200);
        assert_eq!(error_message(b""), "(empty body)");
        assert_eq!(
            error_message(
                br#"{"message":"Validation Failed","errors":[{"resource":"PullRequest","code":"custom","message":"No commits between main and b"},{"resource":"PullRequest","field":"head","code":"invalid"}]}"#
            ),
            "Validation Failed: No commits between main and b; head invalid"
        );
    }

    #[test]
    fn error_chains_name_each_cause_once() {
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl fmt::Display for Layer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|l| l as _)
            }
        }
        let e = Layer(
            "Service Error",
            Some(Box::new(Layer(
                "client error (Connect)",
                Some(Box::new(Layer(
                    "client error (Connect)",
                    Some(Box::new(Layer("dns error: no such host", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "Service Error: client error (Connect): dns error: no such host"
        );
    }

    #[test]
    fn only_write_maintain_and_admin_are_writers() {
        // (permission, role_name, writer): the legacy base role maps maintain to write and
        // triage to read; custom roles name their base in `permission`.
        let table = [
            ("admin", Some("admin"), true),
            ("write", Some("write"), true),
            ("write", Some("maintain"), true),
            ("read", Some("triage"), false),
            ("read", Some("read"), false),
            ("none", None, false),
            ("read", None, false),
            ("write", None, true),
        ];
        for (permission, role, want) in table {
            assert_eq!(is_writer(permission, role), want, "{permission} {role:?}");
        }
    }

    #[test]
    fn credentials_never_print() {
        let c = Credentials::Token(Token::new("ghp_abcdef"));
        assert!(!format!("{c:?}").contains("ghp_abcdef"));
        assert_eq!(
            token_key(&Token::new("ghp_abcdef")),
            token_key(&Token::new("ghp_abcdef"))
        );
        assert_ne!(
            token_key(&Token::new("ghp_abcdef")),
            token_key(&Token::new("ghp_other"))
        );
    }
}
