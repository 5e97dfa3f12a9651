//! The only inbound port: health, readiness, metrics, the dashboard, the tenants API and the
//! webhook accelerator, plus every module's own routes (`productbuilder_routes::Module::routes`).
//!
//! Every route is listed once with its [`Access`]: this binary's in [`ROUTES`], each module's in
//! its crate. The router is built from those lists alone ([`router`]), and one layer around it
//! ([`authorize`]) enforces the decision of the whole table for every request.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use productbuilder_github::webhook::{self, Deliveries};
use productbuilder_github::{GithubState, Pull};
use productbuilder_preview::Previews;
pub use productbuilder_routes::{Access, Route, Table};
use productbuilder_scheduler::StatusBoard;
use productbuilder_store::Store;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

#[derive(Clone)]
pub struct AppState {
    pub board: StatusBoard,
    pub store: Store,
    pub github: GithubState,
    pub previews: Previews,
    /// Configured repositories, `owner/name`, as written in the tenant files.
    pub tenants: Vec<String>,
    pub webhook_secret: Option<Secret>,
    pub deliveries: Arc<Deliveries>,
    pub tokens: ApiTokens,
    /// The Slack client, with `[slack]` (its counters for `/metrics`).
    pub slack: Option<productbuilder_slack::api::SlackApi>,
    /// The build queue, with `[builds]` (the dashboard's builds and `/metrics`' counts).
    pub builds: Option<productbuilder_builds::Queue>,
}

/// The API's bearer tokens (`[http].api_token`, `[http].read_token`), kept as SHA-256 digests:
/// comparing digests in constant time reveals neither a token's length nor a matching prefix.
#[derive(Clone, Default)]
pub struct ApiTokens {
    api: Option<[u8; 32]>,
    read: Option<[u8; 32]>,
}

impl ApiTokens {
    pub fn new(api: Option<&Secret>, read: Option<&Secret>) -> ApiTokens {
        let digest = |s: &Secret| Sha256::digest(s.expose().as_bytes()).into();
        ApiTokens {
            api: api.map(digest),
            read: read.map(digest),
        }
    }

    /// The decision for a request to a route of `access`, from its `Authorization` header.
    fn decide(&self, access: Access, authorization: Option<&[u8]>) -> Result<(), Denied> {
        let presented: Option<[u8; 32]> = authorization
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .map(|t| Sha256::digest(t.trim_ascii()).into());
        let matches = |want: Option<[u8; 32]>| matches!((want, presented), (Some(w), Some(p)) if bool::from(w.ct_eq(&p)));
        match access {
            Access::Public => Ok(()),
            Access::Read if self.read.is_none() => Ok(()),
            Access::Read if matches(self.read) || matches(self.api) => Ok(()),
            Access::Read => Err(Denied::Unauthenticated),
            Access::Mutating if self.api.is_none() => Err(Denied::NoApiToken),
            Access::Mutating if matches(self.api) => Ok(()),
            Access::Mutating => Err(Denied::Unauthenticated),
        }
    }
}

enum Denied {
    Unauthenticated,
    NoApiToken,
}

/// One of this binary's own routes: its method and path, who may call it, and its handler.
pub struct OwnRoute {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    handler: fn(MethodFilter) -> MethodRouter<AppState>,
}

/// This binary's own routes, each with its one access decision (the modules' come with them).
/// The router is built from these lists only, so a route cannot exist without a decision.
pub const ROUTES: &[OwnRoute] = &[
    OwnRoute {
        method: Method::GET,
        path: "/",
        access: Access::Read,
        handler: |m| on(m, dashboard),
    },
    OwnRoute {
        method: Method::GET,
        path: "/healthz",
        access: Access::Public,
        handler: |m| on(m, healthz),
    },
    OwnRoute {
        method: Method::GET,
        path: "/readyz",
        access: Access::Public,
        handler: |m| on(m, readyz),
    },
    OwnRoute {
        method: Method::GET,
        path: "/metrics",
        access: Access::Read,
        handler: |m| on(m, metrics),
    },
    OwnRoute {
        method: Method::GET,
        path: "/api/tenants",
        access: Access::Read,
        handler: |m| on(m, api_tenants),
    },
    OwnRoute {
        method: Method::GET,
        path: "/api/tenants/{owner}/{repo}/pulls",
        access: Access::Read,
        handler: |m| on(m, api_pulls),
    },
    OwnRoute {
        method: Method::POST,
        path: "/webhook",
        access: Access::Public,
        handler: |m| on(m, webhook).layer(DefaultBodyLimit::max(webhook::MAX_BODY_BYTES)),
    },
];

/// What the auth layer decides with: the tokens and the table of every route.
#[derive(Clone)]
struct Guard {
    tokens: ApiTokens,
    table: Arc<Table>,
}

/// The one auth layer, around the whole router: the decision of the route table for the request,
/// enforced before routing, from the table alone (a path or method the table does not list is
/// refused here, whatever the router holds). Tokens are never logged; a denial names the method
/// and the path only.
async fn authorize(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.uri().path().to_owned();
    let tokens = &guard.tokens;
    let access = match guard.table.access_of(&method, &route) {
        Ok(access) => access,
        Err(status) => return status.into_response(),
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match tokens.decide(access, authorization) {
        Ok(()) => next.run(request).await,
        Err(Denied::Unauthenticated) => {
            tracing::info!(%method, route, "API request without a valid bearer token; refused");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"productbuilder\"")],
                match access {
                    Access::Mutating => "this route needs `Authorization: Bearer <[http].api_token>`\n",
                    _ => "this route needs `Authorization: Bearer <[http].read_token or api_token>`\n",
                },
            )
                .into_response()
        }
        Err(Denied::NoApiToken) => (
            StatusCode::FORBIDDEN,
            "mutating routes are off: set [http].api_token (or api_token_file) to enable them\n",
        )
            .into_response(),
    }
}

impl AppState {
    /// The configured spelling of a repository name, matched case-insensitively as GitHub does.
    fn tenant(&self, repo: &str) -> Option<&str> {
        self.tenants
            .iter()
            .find(|t| t.eq_ignore_ascii_case(repo))
            .map(String::as_str)
    }
}

/// Every route: this binary's own ([`ROUTES`], bound to `state`), then the modules'.
pub fn routes(state: &AppState, modules: Vec<Route>) -> Vec<Route> {
    ROUTES
        .iter()
        .map(|r| {
            Route::new(r.method.clone(), r.path, r.access, |m| {
                (r.handler)(m).with_state(state.clone())
            })
        })
        .chain(modules)
        .collect()
}

/// The one router: every route of [`routes`], behind the one auth layer deciding from their table.
pub fn router(state: AppState, modules: Vec<Route>) -> Router {
    let tokens = state.tokens.clone();
    let routes = routes(&state, modules);
    let table = Arc::new(Table::new(&routes));
    let mut router = Router::new();
    for route in routes {
        router = router.route(route.path, route.handler);
    }
    router.layer(middleware::from_fn_with_state(
        Guard { tokens, table },
        authorize,
    ))
}

async fn dashboard(State(state): State<AppState>) -> Response {
    let page = crate::dashboard::render(
        &state.board,
        &state.github,
        &state.previews,
        &state.tenants,
        state.slack.as_ref(),
        state.builds.as_ref(),
    )
    .await;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    preflights_passed: bool,
    database: bool,
    units: usize,
    degraded: Vec<String>,
    /// Tenants whose preflight fails: their workers wait while it is retried; the others run.
    degraded_tenants: Vec<DegradedTenantView>,
}

#[derive(Serialize)]
struct DegradedTenantView {
    tenant: String,
    unit: String,
    kind: &'static str,
    reason: String,
    permanent: bool,
    failures: u32,
    since: String,
}

impl From<productbuilder_scheduler::DegradedTenant> for DegradedTenantView {
    fn from(d: productbuilder_scheduler::DegradedTenant) -> Self {
        DegradedTenantView {
            tenant: d.tenant.to_string(),
            unit: d.unit,
            kind: d.kind.as_str(),
            reason: d.reason,
            permanent: d.permanent,
            failures: d.failures,
            since: humantime::format_rfc3339_seconds(d.since).to_string(),
        }
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let preflights_passed = state.board.preflights_passed();
    let database = state.store.ping().await;
    let body = Readiness {
        ready: preflights_passed && database,
        preflights_passed,
        database,
        units: state.board.units().len(),
        degraded: state
            .board
            .degraded()
            .map(|u| u.name().to_owned())
            .collect(),
        degraded_tenants: state
            .board
            .degraded_tenants()
            .into_iter()
            .map(DegradedTenantView::from)
            .collect(),
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = crate::metrics::render(&state).await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

#[derive(Serialize)]
struct Rate {
    remaining: Option<u64>,
    reset_at: Option<u64>,
}

#[derive(Serialize)]
struct TenantView {
    repo: String,
    last_poll_at: Option<String>,
    last_change_at: Option<String>,
    degraded: Vec<String>,
    rate: Rate,
}

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn api_tenants(State(state): State<AppState>) -> Response {
    let polls = match state.github.poll_states().await {
        Ok(rows) => rows,
        Err(e) => return internal(e),
    };
    let polls: HashMap<String, _> = polls.into_iter().map(|p| (p.repo.clone(), p)).collect();
    let views: Vec<TenantView> = state
        .tenants
        .iter()
        .map(|repo| {
            let poll = polls.get(repo);
            let budget = state.github.client.budget_for(repo);
            TenantView {
                repo: repo.clone(),
                last_poll_at: poll.and_then(|p| p.last_poll_at.clone()),
                last_change_at: poll.and_then(|p| p.last_change_at.clone()),
                degraded: state
                    .board
                    .group(repo)
                    .filter(|u| u.is_degraded())
                    .map(|u| u.name().to_owned())
                    .collect(),
                rate: Rate {
                    remaining: budget.as_ref().and_then(|b| b.remaining),
                    reset_at: budget.as_ref().and_then(|b| b.reset_at),
                },
            }
        })
        .collect();
    axum::Json(views).into_response()
}

#[derive(Serialize)]
struct PullView {
    number: u64,
    head_sha: String,
    author: String,
    fork: bool,
    draft: bool,
    labels: Vec<String>,
    seen_at: String,
    title: String,
    author_association: String,
    head_repo: Option<String>,
}

impl From<Pull> for PullView {
    fn from(p: Pull) -> Self {
        PullView {
            number: p.number,
            head_sha: p.head_sha,
            author: p.author,
            fork: p.fork,
            draft: p.draft,
            labels: p.labels,
            seen_at: p.seen_at,
            title: p.title,
            author_association: p.author_association,
            head_repo: p.head_repo,
        }
    }
}

async fn api_pulls(
    State(state): State<AppState>,
    Path((owner, repo)): Path<(String, String)>,
) -> Response {
    let Some(tenant) = state.tenant(&format!("{owner}/{repo}")) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(
                json!({ "error": format!("{owner}/{repo} is not a configured repository") }),
            ),
        )
            .into_response();
    };
    match state.github.open_pulls(tenant).await {
        Ok(pulls) => {
            axum::Json(pulls.into_iter().map(PullView::from).collect::<Vec<_>>()).into_response()
        }
        Err(e) => internal(e),
    }
}

/// The accelerator: a verified delivery nudges its repository's pollers; the payload itself is
/// never used as state.
async fn webhook(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &state.webhook_secret else {
        return (
            StatusCode::NOT_FOUND,
            "the webhook is off: set [github].webhook_secret to enable it\n",
        )
            .into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !webhook::signature_is_valid(
        secret.expose().as_bytes(),
        &body,
        header("x-hub-signature-256"),
    ) {
        tracing::warn!(
            delivery = header("x-github-delivery").unwrap_or("-"),
            "webhook with a missing or wrong signature; ignored"
        );
        return (StatusCode::UNAUTHORIZED, "bad signature\n").into_response();
    }
    let event = header("x-github-event").unwrap_or("");
    if let Some(delivery) = header("x-github-delivery")
        && !state.deliveries.first_time(delivery)
    {
        return (StatusCode::OK, "duplicate delivery; ignored\n").into_response();
    }
    if event == "ping" {
        return (StatusCode::OK, "pong\n").into_response();
    }
    let Some(repo) = webhook::repository_of(&body) else {
        return (StatusCode::OK, "no repository in the payload; ignored\n").into_response();
    };
    match state.tenant(&repo) {
        Some(tenant) => {
            let nudged = state.board.nudge_group(tenant);
            tracing::info!(event, repo = tenant, nudged, "webhook: polling early");
            (
                StatusCode::ACCEPTED,
                format!("nudged {nudged} units of {tenant}\n"),
            )
                .into_response()
        }
        None => (StatusCode::OK, "repository not configured; ignored\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    //! The whole router over real HTTP, wired as `run` wires it (real SQLite; GitHub is never
    //! reached: no route here asks it anything). Every route of the table (this binary's and every
    //! module's) is called, so a route added later is walked too, and the router has no route
    //! outside that table.

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const API: &str = "api-token-for-the-router-test";
    /// Builds are on, so that their routes are walked with the rest and their series listed (no
    /// scheduler runs here: nothing is ever claimed).
    const BUILDS: &str = "[builds]\nagent_command = [\"/bin/false\", \"{prompt}\"]\n";
    const READ: &str = "read-token-for-the-router-test";
    /// `[llm]` on, so that the agent's trace route is walked too.
    const LLM: &str = "[llm]\nprovider = \"anthropic\"\nmodel = \"m\"\napi_key = \"k\"\n";

    struct Served {
        addr: std::net::SocketAddr,
        /// Every route mounted, with its access.
        table: Table,
        _dir: tempfile::TempDir,
    }

    async fn serve(http: &str) -> Served {
        serve_with(http, Vec::new()).await
    }

    /// [`serve`] with `extra` routes mounted as a module's.
    async fn serve_with(http: &str, extra: Vec<Route>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tenants")).unwrap();
        std::fs::write(
            dir.path().join("tenants/shop.toml"),
            "repo = \"acme/shop\"\n",
        )
        .unwrap();
        let main = dir.path().join("productbuilder.toml");
        std::fs::write(
            &main,
            format!(
                "state_dir = \"state\"\n[github]\ntoken = \"t\"\napi_url = \"http://127.0.0.1:9\"\n{BUILDS}{LLM}[http]\n{http}"
            ),
        )
        .unwrap();
        let config = crate::config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(config.database_path()).unwrap();
        store.migrate().unwrap();
        let wiring = match crate::wire(&config, &store) {
            Ok(w) => w,
            Err(_) => panic!("the test config does not wire"),
        };
        let mut module_routes = wiring.routes();
        let board = productbuilder_scheduler::Scheduler::new(
            wiring.units,
            productbuilder_scheduler::SchedulerOptions::default(),
        )
        .unwrap()
        .board();
        module_routes.extend(extra);
        let state = AppState {
            board,
            store,
            github: wiring.github,
            previews: wiring.previews,
            tenants: config.tenants.iter().map(|t| t.repo()).collect(),
            webhook_secret: None,
            deliveries: Arc::new(Deliveries::new(10)),
            tokens: ApiTokens::new(
                config.http.api_token.as_ref(),
                config.http.read_token.as_ref(),
            ),
            slack: None,
            builds: wiring.builds,
        };
        let table = Table::new(&routes(&state, module_routes.clone()));
        let app = router(state, module_routes);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, app).into_future());
        Served {
            addr,
            table,
            _dir: dir,
        }
    }

    /// The route's path with its parameters filled in: a configured repository, a preview that
    /// does not exist.
    fn concrete(path: &str) -> String {
        path.replace("{owner}", "acme")
            .replace("{repo}", "shop")
            .replace("{number}", "7")
            .replace("{id}", "1")
    }

    /// Status line and head of the answer to `method path` with an optional bearer token.
    async fn call(
        served: &Served,
        method: &Method,
        path: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(served.addr).await.unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {answer:?}"));
        (status, answer)
    }

    #[tokio::test]
    async fn every_route_is_listed_once() {
        let served = serve("").await;
        let table: Vec<_> = served.table.iter().collect();
        for (i, a) in table.iter().enumerate() {
            for b in &table[i + 1..] {
                assert!(
                    !(a.0 == b.0 && a.1 == b.1),
                    "{} {} is listed twice",
                    a.0,
                    a.1
                );
            }
        }
        let public: Vec<_> = table
            .iter()
            .filter(|r| r.2 == Access::Public)
            .map(|r| format!("{} {}", r.0, r.1))
            .collect();
        assert_eq!(public, ["GET /healthz", "GET /readyz", "POST /webhook"]);
        for r in table.iter().filter(|r| r.2 == Access::Read) {
            assert_eq!(r.0, Method::GET, "{}: a read route is a GET", r.1);
        }
        // The preview module's routes are in the table, with their access.
        for (method, path, access) in [
            (Method::GET, "/previews", Access::Read),
            (
                Method::GET,
                "/previews/{owner}/{repo}/{number}/logs",
                Access::Read,
            ),
            (
                Method::POST,
                "/previews/{owner}/{repo}/{number}/redeploy",
                Access::Mutating,
            ),
        ] {
            assert!(
                table.contains(&&(method.clone(), path, access)),
                "{method} {path} is not mounted"
            );
        }
        // So are the builds', every one of them mutating (a spec holds a prompt and a callback
        // URL; a transcript what the agent saw).
        let builds: Vec<_> = table
            .iter()
            .filter(|r| r.1.contains("builds"))
            .map(|r| (r.0.to_string(), r.1, r.2))
            .collect();
        assert_eq!(
            builds,
            [
                (
                    "POST".to_owned(),
                    "/projects/{owner}/{repo}/builds",
                    Access::Mutating
                ),
                (
                    "GET".to_owned(),
                    "/projects/{owner}/{repo}/builds",
                    Access::Mutating
                ),
                ("GET".to_owned(), "/builds/{id}", Access::Mutating),
                ("GET".to_owned(), "/builds/{id}/log", Access::Mutating),
                ("POST".to_owned(), "/builds/{id}/cancel", Access::Mutating),
            ]
        );
        // The agent's traces, with [llm]: a read route.
        assert!(
            table.contains(&&(Method::GET, "/agent/runs/{id}", Access::Read)),
            "GET /agent/runs/{{id}} is not mounted"
        );
    }

    #[tokio::test]
    async fn a_module_route_is_behind_the_auth_layer() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let write = Route::new(Method::POST, "/test/write", Access::Mutating, move |m| {
            on(m, move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { StatusCode::NO_CONTENT }
            })
        });
        let served = serve_with(&format!("api_token = \"{API}\"\n"), vec![write]).await;
        let (none, head) = call(&served, &Method::POST, "/test/write", None).await;
        assert_eq!(none, 401, "{head}");
        let (wrong, _) = call(&served, &Method::POST, "/test/write", Some(READ)).await;
        assert_eq!(wrong, 401);
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the handler ran"
        );
        let (api, _) = call(&served, &Method::POST, "/test/write", Some(API)).await;
        assert_eq!(api, 204);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        let (get, _) = call(&served, &Method::GET, "/test/write", Some(API)).await;
        assert_eq!(get, 405, "a method the module did not declare");
    }

    #[tokio::test]
    async fn with_both_tokens_every_route_but_the_public_three_needs_one() {
        let served = serve(&format!("api_token = \"{API}\"\nread_token = \"{READ}\"\n")).await;
        for (method, template, access) in served.table.iter() {
            let path = concrete(template);
            let at = format!("{method} {template}");
            let (none, head) = call(&served, method, &path, None).await;
            let (wrong, _) = call(&served, method, &path, Some("not-the-token")).await;
            let (read, _) = call(&served, method, &path, Some(READ)).await;
            let (api, _) = call(&served, method, &path, Some(API)).await;
            match access {
                Access::Public => {
                    for s in [none, wrong, read, api] {
                        assert!(s != 401 && s != 403, "{at}: {s}");
                    }
                }
                Access::Read => {
                    assert_eq!((none, wrong), (401, 401), "{at}");
                    assert!(
                        head.to_ascii_lowercase()
                            .contains("www-authenticate: bearer"),
                        "{at}: {head}"
                    );
                    assert!(
                        read != 401 && read != 403,
                        "{at} with the read token: {read}"
                    );
                    assert!(api != 401 && api != 403, "{at} with the api token: {api}");
                }
                Access::Mutating => {
                    assert_eq!((none, wrong, read), (401, 401, 401), "{at}");
                    assert!(
                        head.to_ascii_lowercase()
                            .contains("www-authenticate: bearer"),
                        "{at}: {head}"
                    );
                    assert!(api != 401 && api != 403, "{at} with the api token: {api}");
                }
            }
            // Whatever the answer, it never carries a token back.
            assert!(!head.contains(API) && !head.contains(READ), "{at}: {head}");
        }
    }

    #[tokio::test]
    async fn without_tokens_mutating_routes_are_403_and_the_rest_is_open() {
        let served = serve("").await;
        for (method, template, access) in served.table.iter() {
            let path = concrete(template);
            let at = format!("{method} {template}");
            let (none, _) = call(&served, method, &path, None).await;
            let (some, _) = call(&served, method, &path, Some(API)).await;
            match access {
                Access::Mutating => assert_eq!((none, some), (403, 403), "{at}"),
                Access::Public | Access::Read => {
                    assert!(none != 401 && none != 403, "{at}: {none}")
                }
            }
        }
    }

    #[tokio::test]
    async fn with_only_an_api_token_reads_stay_open_and_mutations_need_it() {
        let served = serve(&format!("api_token = \"{API}\"\n")).await;
        for (method, template, access) in served.table.iter() {
            let path = concrete(template);
            let at = format!("{method} {template}");
            let (none, _) = call(&served, method, &path, None).await;
            match access {
                Access::Mutating => assert_eq!(none, 401, "{at}"),
                Access::Public | Access::Read => {
                    assert!(none != 401 && none != 403, "{at}: {none}")
                }
            }
        }
    }

    /// Every family `/metrics` exposes, with its type: names and types are what dashboards and
    /// alerts query, so a change here is a change for operators.
    #[tokio::test]
    async fn metrics_expose_every_family_with_its_type() {
        let served = serve("").await;
        let (status, answer) = call(&served, &Method::GET, "/metrics", None).await;
        assert_eq!(status, 200, "{answer}");
        assert!(
            answer.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{answer}"
        );
        let types: Vec<&str> = answer
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            types,
            [
                "productbuilder_build_info gauge",
                "productbuilder_unit_runs_total counter",
                "productbuilder_unit_failures_total counter",
                "productbuilder_unit_retries_total counter",
                "productbuilder_unit_panics_total counter",
                "productbuilder_unit_run_duration_seconds histogram",
                "productbuilder_unit_degraded gauge",
                "productbuilder_units_degraded gauge",
                // A service (the builds' runner) is planned.
                "productbuilder_service_restarts_total counter",
                "productbuilder_tenant_degraded gauge",
                "productbuilder_tenant_degraded_info gauge",
                "productbuilder_preflights_passed gauge",
                "productbuilder_github_rate_limit gauge",
                "productbuilder_github_rate_remaining gauge",
                "productbuilder_github_rate_reset_timestamp_seconds gauge",
                "productbuilder_github_requests_total counter",
                "productbuilder_github_not_modified_total counter",
                "productbuilder_github_in_flight gauge",
                "productbuilder_github_paused_seconds gauge",
                "productbuilder_previews gauge",
                "productbuilder_preview_deploys_total counter",
                "productbuilder_preview_builds_running gauge",
                "productbuilder_preview_jobs_started_total counter",
                "productbuilder_preview_jobs_ended_total counter",
                "productbuilder_preview_jobs_running gauge",
                "productbuilder_preview_jobs_waiting gauge",
                "productbuilder_builds gauge",
            ]
        );
        for line in [
            &format!(
                "productbuilder_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
            "productbuilder_unit_runs_total{unit=\"preflight:database:global\"} 0",
            "productbuilder_unit_run_duration_seconds_bucket{unit=\"preflight:database:global\",le=\"300\"} 0",
            "productbuilder_unit_run_duration_seconds_bucket{unit=\"preflight:database:global\",le=\"+Inf\"} 0",
            "productbuilder_unit_run_duration_seconds_count{unit=\"preflight:database:global\"} 0",
            "productbuilder_preflights_passed 0",
            "productbuilder_previews{status=\"ready\"} 0",
            "productbuilder_preview_deploys_total{outcome=\"cancelled\"} 0",
            "productbuilder_preview_builds_running 0",
            "productbuilder_preview_jobs_ended_total{outcome=\"timed_out\"} 0",
            "productbuilder_preview_jobs_waiting 0",
            "productbuilder_builds{status=\"pending\"} 0",
            "productbuilder_builds{status=\"running\"} 0",
            "productbuilder_builds{status=\"cancelled\"} 0",
        ] {
            assert!(answer.lines().any(|l| l == line), "no {line} in\n{answer}");
        }
    }

    #[tokio::test]
    async fn redeploy_of_an_unknown_tenant_or_preview_is_404() {
        let served = serve(&format!("api_token = \"{API}\"\n")).await;
        let (status, body) = call(
            &served,
            &Method::POST,
            "/previews/other/repo/1/redeploy",
            Some(API),
        )
        .await;
        assert_eq!(status, 404, "{body}");
        assert!(
            body.contains("other/repo is not a configured repository"),
            "{body}"
        );
        let (status, body) = call(
            &served,
            &Method::POST,
            "/previews/acme/shop/7/redeploy",
            Some(API),
        )
        .await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("acme/shop#7 does not exist"), "{body}");
        let (status, _) = call(
            &served,
            &Method::GET,
            "/previews/acme/shop/7/redeploy",
            Some(API),
        )
        .await;
        assert_eq!(status, 405);
    }

    #[tokio::test]
    async fn requests_are_matched_against_the_table_only() {
        let table = serve("").await.table;
        let access_of = |method: &Method, path: &str| table.access_of(method, path);
        assert_eq!(access_of(&Method::GET, "/healthz"), Ok(Access::Public));
        assert_eq!(access_of(&Method::HEAD, "/metrics"), Ok(Access::Read));
        assert_eq!(
            access_of(&Method::POST, "/previews/a/b/1/redeploy"),
            Ok(Access::Mutating)
        );
        assert_eq!(
            access_of(&Method::GET, "/previews/a/b/1/logs"),
            Ok(Access::Read)
        );
        assert_eq!(
            access_of(&Method::DELETE, "/previews"),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        for unlisted in [
            "/previews/a/b/1",
            "/previews//b/1/logs",
            "/healthz/",
            "/admin",
        ] {
            assert_eq!(
                access_of(&Method::GET, unlisted),
                Err(StatusCode::NOT_FOUND),
                "{unlisted}"
            );
        }
    }
}
