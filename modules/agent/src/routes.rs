//! `GET /agent/runs/{id}`: one traced run with its steps, as JSON (read token: a trace holds
//! what people wrote in Slack and what the tools read on GitHub).

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use productbuilder_routes::{Access, Route};

use crate::trace::Traces;

/// The agent's routes, bound to `traces`.
pub fn routes(traces: Traces) -> Vec<Route> {
    vec![Route::new(
        Method::GET,
        "/agent/runs/{id}",
        Access::Read,
        |m| on(m, one).with_state(traces),
    )]
}

fn problem(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn one(State(traces): State<Traces>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no agent run {id:?}: run ids are numbers"),
        );
    };
    match traces.get(id).await {
        Ok(Some(run)) => axum::Json(run).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no agent run {id}")),
        // A locked database, or one not migrated yet.
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{e}; try again in a moment (GET /readyz says when the daemon is ready)"),
        ),
    }
}
