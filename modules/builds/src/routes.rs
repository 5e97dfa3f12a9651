//! The builds API: start a build, read the history, one build, its transcript, cancel.
//!
//! Every route needs the api token ([`Access::Mutating`]), reads included: a build's spec holds
//! the prompt and the callback URL someone gave, and its transcript what the agent saw; with no
//! api token configured, every build route answers 403.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use chrono::{DateTime, SecondsFormat, Utc};
use productbuilder_routes::{Access, Route};
use serde::Serialize;

use crate::queue::{Cancel, Queue, QueueError};
use crate::records::{Build, BuildId};
use crate::spec::{BuildResult, BuildSpec, SpecError};
use crate::status::Status;

/// The most of a transcript one response carries: its end.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;

/// What the routes need.
#[derive(Clone)]
pub struct RouteState {
    pub queue: Queue,
    /// The repositories (`owner/name`) builds may be started for: the tenants.
    pub repos: Arc<BTreeSet<String>>,
    /// Where the runner keeps each build's transcript (`{id}.log`).
    pub logs: PathBuf,
}

/// The routes, bound to `state`.
pub fn routes(state: RouteState) -> Vec<Route> {
    vec![
        Route::new(
            Method::POST,
            "/projects/{owner}/{repo}/builds",
            Access::Mutating,
            |m| on(m, start).with_state(state.clone()),
        ),
        Route::new(
            Method::GET,
            "/projects/{owner}/{repo}/builds",
            Access::Mutating,
            |m| on(m, history).with_state(state.clone()),
        ),
        Route::new(Method::GET, "/builds/{id}", Access::Mutating, |m| {
            on(m, one).with_state(state.clone())
        }),
        Route::new(Method::GET, "/builds/{id}/log", Access::Mutating, |m| {
            on(m, log).with_state(state.clone())
        }),
        Route::new(Method::POST, "/builds/{id}/cancel", Access::Mutating, |m| {
            on(m, cancel).with_state(state.clone())
        }),
    ]
}

/// A build as the API shows it (the contract's fields).
#[derive(Debug, Serialize)]
pub struct BuildView {
    pub id: i64,
    pub repo: String,
    pub number: Option<u64>,
    pub status: Status,
    pub spec: BuildSpec,
    pub result: Option<BuildResult>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub url: String,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The view of `build`; `started_at` is its first `running` in the audit.
pub async fn view(queue: &Queue, build: Build) -> Result<BuildView, QueueError> {
    let started_at = queue
        .audit(build.id)
        .await?
        .into_iter()
        .find(|e| e.to == Status::Running)
        .map(|e| rfc3339(e.at));
    Ok(BuildView {
        id: build.id.0,
        url: format!("/builds/{}", build.id.0),
        repo: build.repo,
        number: build.number,
        status: build.status,
        spec: build.spec,
        result: build.result,
        error: build.error,
        created_at: rfc3339(build.created_at),
        started_at,
        finished_at: build.finished_at.map(rfc3339),
    })
}

/// An error answer: its status and a JSON body `{"error": …}`.
struct Problem {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    Problem {
        status,
        message: message.into(),
    }
    .into_response()
}

fn queue_problem(e: QueueError) -> Response {
    match e {
        QueueError::NotFound(id) => problem(StatusCode::NOT_FOUND, format!("no build {}", id.0)),
        // A locked database, or one not migrated yet (the routes answer from the start, the
        // migrations run in the first preflight): try again once `/readyz` says 200.
        e @ QueueError::Store(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{e}; try again in a moment (GET /readyz says when the daemon is ready)"),
        ),
        e => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn spec_problem(e: SpecError) -> Response {
    let status = match e {
        SpecError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (
        status,
        axum::Json(serde_json::json!({ "error": e.to_string(), "field": e.field() })),
    )
        .into_response()
}

/// `owner/repo` when builds may run for it.
fn tenant(state: &RouteState, owner: &str, repo: &str) -> Result<String, Problem> {
    let full = format!("{owner}/{repo}");
    state
        .repos
        .iter()
        .find(|r| r.eq_ignore_ascii_case(&full))
        .cloned()
        .ok_or_else(|| Problem {
            status: StatusCode::NOT_FOUND,
            message: format!("{full} is not a configured repository"),
        })
}

/// `POST /projects/{owner}/{repo}/builds`: 202 with the new build, or 200 with the active build
/// of the same issue or pull request (a second trigger starts nothing new).
async fn start(
    State(state): State<RouteState>,
    Path((owner, repo)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let repo = match tenant(&state, &owner, &repo) {
        Ok(repo) => repo,
        Err(r) => return r.into_response(),
    };
    let spec = match BuildSpec::from_json(&body) {
        Ok(spec) => spec,
        Err(e) => return spec_problem(e),
    };
    let number = spec.pull_request.or(spec.issue);
    match state.queue.enqueue(&repo, number, spec, Utc::now()).await {
        Ok(enqueued) => {
            let status = if enqueued.created {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            let b = enqueued.build;
            (
                status,
                axum::Json(serde_json::json!({
                    "id": b.id.0,
                    "status": b.status,
                    "url": format!("/builds/{}", b.id.0),
                    "created": enqueued.created,
                })),
            )
                .into_response()
        }
        Err(QueueError::Spec(e)) => spec_problem(e),
        Err(e) => queue_problem(e),
    }
}

/// `GET /projects/{owner}/{repo}/builds`: the newest 100.
async fn history(
    State(state): State<RouteState>,
    Path((owner, repo)): Path<(String, String)>,
) -> Response {
    let repo = match tenant(&state, &owner, &repo) {
        Ok(repo) => repo,
        Err(r) => return r.into_response(),
    };
    let builds = match state.queue.list(&repo, 100).await {
        Ok(builds) => builds,
        Err(e) => return queue_problem(e),
    };
    let mut views = Vec::with_capacity(builds.len());
    for build in builds {
        match view(&state.queue, build).await {
            Ok(v) => views.push(v),
            Err(e) => return queue_problem(e),
        }
    }
    axum::Json(views).into_response()
}

fn build_id(raw: &str) -> Result<BuildId, Problem> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(BuildId)
        .ok_or_else(|| Problem {
            status: StatusCode::NOT_FOUND,
            message: format!("no build {raw:?}"),
        })
}

/// `GET /builds/{id}`.
async fn one(State(state): State<RouteState>, Path(id): Path<String>) -> Response {
    let id = match build_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match state.queue.get(id).await {
        Ok(Some(build)) => match view(&state.queue, build).await {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => queue_problem(e),
        },
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no build {}", id.0)),
        Err(e) => queue_problem(e),
    }
}

/// `GET /builds/{id}/log`: the transcript the runner wrote (redacted as it was written), its
/// last [`MAX_LOG_BYTES`].
async fn log(State(state): State<RouteState>, Path(id): Path<String>) -> Response {
    let id = match build_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match state.queue.get(id).await {
        Ok(Some(_)) => {}
        Ok(None) => return problem(StatusCode::NOT_FOUND, format!("no build {}", id.0)),
        Err(e) => return queue_problem(e),
    }
    let path = state.logs.join(format!("{}.log", id.0));
    let text = tokio::task::spawn_blocking(move || tail(&path, MAX_LOG_BYTES)).await;
    match text {
        Ok(Ok(text)) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            String::new(),
        )
            .into_response(),
        Ok(Err(e)) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the transcript: {e}"),
        ),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The last `limit` bytes of `path` as text (a cut character is replaced).
fn tail(path: &std::path::Path, limit: u64) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > limit {
        file.seek(SeekFrom::Start(len - limit))?;
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `POST /builds/{id}/cancel`: 200 cancelled (it was pending), 202 requested (it is running; its
/// runner stops at its next heartbeat), 409 when it had already ended.
async fn cancel(State(state): State<RouteState>, Path(id): Path<String>) -> Response {
    let id = match build_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match state
        .queue
        .cancel(id, "cancelled over the API", Utc::now())
        .await
    {
        Ok(Cancel::Cancelled) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "id": id.0, "status": "cancelled" })),
        )
            .into_response(),
        Ok(Cancel::Requested) => (
            StatusCode::ACCEPTED,
            axum::Json(
                serde_json::json!({ "id": id.0, "status": "running", "cancel_requested": true }),
            ),
        )
            .into_response(),
        Ok(Cancel::AlreadyFinal(status)) => problem(
            StatusCode::CONFLICT,
            format!("build {} already ended: {status}", id.0),
        ),
        Err(e) => queue_problem(e),
    }
}
