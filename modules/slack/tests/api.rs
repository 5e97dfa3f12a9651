//! The client against a tiny fake Slack over plain `http://`: the connector accepts it, a 429's
//! `Retry-After` is waited out and the write goes through (never dropped), metadata is sent, and
//! a bad token is reported as permanent. (slack-morphism sends auth.test as GET; Slack takes
//! both.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use productbuilder_scheduler::ErrorKind;
use productbuilder_slack::api::SlackApi;

#[derive(Default)]
struct Fake {
    /// Answer the next chat.postMessage with 429 this many times.
    limited: usize,
    posts: Vec<serde_json::Value>,
    auth_headers: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

async fn auth_test(State(fake): State<Shared>, headers: HeaderMap) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    fake.lock().unwrap().auth_headers.push(auth.clone());
    if auth == "Bearer xoxb-good" {
        json(
            StatusCode::OK,
            serde_json::json!({"ok": true, "url": "https://t.slack.com/", "team": "T", "user": "pb",
                "team_id": "T1", "user_id": "UBOT", "bot_id": "BBOT"}),
        )
    } else {
        json(
            StatusCode::OK,
            serde_json::json!({"ok": false, "error": "invalid_auth"}),
        )
    }
}

async fn post_message(State(fake): State<Shared>, body: String) -> Response {
    let mut fake = fake.lock().unwrap();
    if fake.limited > 0 {
        fake.limited -= 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1"), ("content-type", "application/json")],
            r#"{"ok":false,"error":"ratelimited"}"#,
        )
            .into_response();
    }
    let request: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ts = format!("1700000000.{:06}", fake.posts.len() + 1);
    let channel = request["channel"].clone();
    fake.posts.push(request);
    json(
        StatusCode::OK,
        serde_json::json!({"ok": true, "channel": channel, "ts": ts,
            "message": {"ts": ts, "text": "x"}}),
    )
}

async fn start(fake: Shared) -> String {
    let app = Router::new()
        .route("/api/auth.test", get(auth_test).post(auth_test))
        .route("/api/chat.postMessage", post(post_message))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn auth_test_over_plain_http_with_the_bearer_token() {
    provider();
    let fake = Shared::default();
    let url = start(fake.clone()).await;
    let api = SlackApi::new(&url, "xoxb-good", 50).unwrap();
    let me = api.auth_test().await.unwrap();
    assert_eq!(me.user_id, "UBOT");
    assert_eq!(me.bot_id.as_deref(), Some("BBOT"));
    assert_eq!(fake.lock().unwrap().auth_headers, ["Bearer xoxb-good"]);
}

#[tokio::test]
async fn a_bad_token_is_permanent_and_names_the_key() {
    provider();
    let url = start(Shared::default()).await;
    let api = SlackApi::new(&url, "xoxb-revoked", 50).unwrap();
    let e = api.auth_test().await.unwrap_err().into_unit_error();
    assert_eq!(e.kind(), ErrorKind::BadCredentials);
    assert!(e.message().contains("[slack] bot_token"), "{}", e.message());
}

#[tokio::test]
async fn a_post_waits_out_retry_after_and_is_not_dropped() {
    provider();
    let fake = Shared::new(Mutex::new(Fake {
        limited: 1,
        ..Fake::default()
    }));
    let url = start(fake.clone()).await;
    let api = SlackApi::new(&url, "xoxb-good", 50).unwrap();
    let start = Instant::now();
    let ts = api
        .post("C1", Some("1.1"), "hello", Some("comment:42"))
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(ts, "1700000000.000001");
    let posts = fake.lock().unwrap().posts.clone();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0]["thread_ts"], "1.1");
    assert_eq!(posts[0]["metadata"]["event_type"], "productbuilder_event");
    assert_eq!(posts[0]["metadata"]["event_payload"]["key"], "comment:42");
    assert_eq!(
        api.counters
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        api.counters
            .posted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
