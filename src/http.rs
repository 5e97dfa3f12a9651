//! The only inbound port: health, readiness and metrics (later: dashboard, API, webhook).
//!
//! Only this module knows axum and the JSON shapes of the routes.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use productbuilder_scheduler::StatusBoard;
use productbuilder_store::Store;
use serde::Serialize;

#[derive(Clone)]
pub struct AppState {
    pub board: StatusBoard,
    pub store: Store,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
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
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = String::with_capacity(4096 + state.board.units().len() * 1024);
    text.push_str(&format!(
        "# HELP productbuilder_build_info The running version.\n# TYPE productbuilder_build_info gauge\nproductbuilder_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    ));
    state.board.render_prometheus(&mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
