//! The preview module's HTTP routes, mounted by the binary behind its one auth layer:
//! `GET /previews`, `GET /previews/{owner}/{repo}/{number}/logs` and
//! `POST /previews/{owner}/{repo}/{number}/redeploy`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use productbuilder_routes::{Access, Route};
use serde_json::json;

use crate::module::PreviewModule;
use crate::reconcile::{LogsError, Previews, Redeploy, RedeployError};

/// What the handlers need: the previews, and every configured repository (to answer "not a
/// configured repository" apart from "no such preview").
#[derive(Clone)]
struct RouteState {
    previews: Previews,
    tenants: Arc<BTreeMap<String, bool>>,
}

impl RouteState {
    /// The configured spelling of a repository name, matched case-insensitively as GitHub does.
    fn tenant(&self, repo: &str) -> Option<String> {
        self.tenants
            .keys()
            .find(|t| t.eq_ignore_ascii_case(repo))
            .cloned()
    }
}

impl productbuilder_routes::Module for PreviewModule {
    fn routes(&self) -> Vec<Route> {
        let state = RouteState {
            previews: self.previews.clone(),
            tenants: self.tenants.clone(),
        };
        vec![
            Route::new(Method::GET, "/previews", Access::Read, |m| {
                on(m, list).with_state(state.clone())
            }),
            Route::new(
                Method::GET,
                "/previews/{owner}/{repo}/{number}/logs",
                Access::Read,
                |m| on(m, logs).with_state(state.clone()),
            ),
            Route::new(
                Method::POST,
                "/previews/{owner}/{repo}/{number}/redeploy",
                Access::Mutating,
                |m| on(m, redeploy).with_state(state.clone()),
            ),
        ]
    }
}

/// `GET /previews`: every preview, deleted ones too, newest first.
async fn list(State(state): State<RouteState>) -> Response {
    match state.previews.list().await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
    follow: Option<bool>,
}

/// Lines a `tail` may ask for at most: a log route must not become a way to exhaust memory.
const MAX_TAIL: usize = 10_000;

/// `GET /previews/{owner}/{repo}/{number}/logs?tail=N&follow=BOOL`: the preview's logs as text,
/// read the way its `logging` section says (container logs, or a file inside the container),
/// streamed while `follow`.
async fn logs(
    State(state): State<RouteState>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    Query(query): Query<LogsQuery>,
) -> Response {
    let Some(tenant) = state.tenant(&format!("{owner}/{repo}")) else {
        return (
            StatusCode::NOT_FOUND,
            format!("{owner}/{repo} is not a configured repository\n"),
        )
            .into_response();
    };
    let tail = query.tail.unwrap_or(200).min(MAX_TAIL);
    let follow = query.follow.unwrap_or(false);
    match state.previews.logs(&tenant, number, tail, follow).await {
        Ok(stream) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                // The text comes from the preview: never let a browser treat it as anything else.
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            axum::body::Body::from_stream(stream),
        )
            .into_response(),
        Err(e @ LogsError::NotFound(_)) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Err(e @ LogsError::Unavailable(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
        Err(e @ LogsError::TooManyFollows(_)) => {
            (StatusCode::TOO_MANY_REQUESTS, format!("{e}\n")).into_response()
        }
    }
}

/// `POST /previews/{owner}/{repo}/{number}/redeploy`: deploys the preview again at its current
/// commit (a failed preview otherwise waits for a push). 202 once the deploy is under way.
async fn redeploy(
    State(state): State<RouteState>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
) -> Response {
    let error = |status: StatusCode, message: String| {
        (status, axum::Json(json!({ "error": message }))).into_response()
    };
    let Some(tenant) = state.tenant(&format!("{owner}/{repo}")) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("{owner}/{repo} is not a configured repository"),
        );
    };
    match state.previews.redeploy(&tenant, number).await {
        Ok(Redeploy::Started(sha)) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "redeploy": "started", "sha": sha })),
        )
            .into_response(),
        Ok(Redeploy::AlreadyDeploying(sha)) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "redeploy": "already_deploying", "sha": sha })),
        )
            .into_response(),
        Err(e @ RedeployError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ RedeployError::Unavailable(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}
