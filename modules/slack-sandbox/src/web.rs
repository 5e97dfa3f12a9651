//! The Web API: `{base}/api/{method}`, GET or POST, parameters in the query string, a
//! form-encoded body or a JSON body (merged), the token in `Authorization: Bearer` or a `token`
//! parameter. Every Slack-level error is HTTP 200 with `ok: false`; only rate limits and
//! injected faults use other statuses.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::Shared;
use crate::shapes;
use crate::ts::Ts;
use crate::world::{Author, Rejection, RequestRecord, TokenKind, World};

type Params = Map<String, Value>;

/// `GET|POST /api/{method}`.
pub(crate) async fn call(
    State(shared): State<Arc<Shared>>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut params = Params::new();
    if let Some(query) = query {
        merge_form(&mut params, query.as_bytes());
    }
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let blank = body.iter().all(u8::is_ascii_whitespace);
    if is_json && !blank {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => params.extend(map),
            _ => {
                let invalid = Ok(shapes::error("invalid_json"));
                return answer(&shared, &method, params, Instant::now(), invalid);
            }
        }
    } else if !blank {
        merge_form(&mut params, &body);
    }
    let token = bearer(&headers).or_else(|| {
        params
            .remove("token")
            .and_then(|t| t.as_str().map(str::to_owned))
    });
    params.remove("token");

    let arrived = Instant::now();
    let outcome = {
        let mut world = shared.world();
        match world.admit(&method, arrived) {
            Err(rejection) => Err(rejection),
            Ok(()) => Ok(dispatch(
                &mut world,
                &shared,
                &method,
                token.as_deref(),
                &params,
            )),
        }
    };
    answer(&shared, &method, params, arrived, outcome)
}

/// Records the call, tells waiting tests, and renders the answer.
fn answer(
    shared: &Shared,
    method: &str,
    params: Params,
    at: Instant,
    outcome: Result<Value, Rejection>,
) -> Response {
    let (status, error) = match &outcome {
        Ok(body) => (
            200,
            body.get("error").and_then(Value::as_str).map(str::to_owned),
        ),
        Err(rejection) => (rejection.status, Some("ratelimited".to_owned())),
    };
    shared.world().requests.push(RequestRecord {
        method: method.to_owned(),
        status,
        error,
        params,
        at,
    });
    shared.changed();
    match outcome {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(rejection) => {
            let status =
                StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = if status == StatusCode::TOO_MANY_REQUESTS {
                json_response(status, &shapes::error("ratelimited"))
            } else {
                (status, "sandbox fault").into_response()
            };
            if let Some(secs) = rejection.retry_after {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, serde_json::to_string(body).unwrap_or_default()).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// Adds `a=1&b=2` pairs as strings; JSON-valued parameters (`blocks`, `metadata`) are decoded
/// where they are used.
fn merge_form(params: &mut Params, bytes: &[u8]) {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes).unwrap_or_default();
    for (key, value) in pairs {
        params.insert(key, Value::String(value));
    }
}

fn dispatch(
    world: &mut World,
    shared: &Shared,
    method: &str,
    token: Option<&str>,
    params: &Params,
) -> Value {
    let Some(token) = token else {
        return shapes::error("not_authed");
    };
    let Some(kind) = world.tokens.get(token).copied() else {
        return shapes::error("invalid_auth");
    };
    let needs = if method == "apps.connections.open" {
        TokenKind::App
    } else {
        TokenKind::Bot
    };
    let known = matches!(
        method,
        "auth.test"
            | "chat.postMessage"
            | "chat.update"
            | "conversations.history"
            | "conversations.replies"
            | "apps.connections.open"
    );
    if !known {
        return shapes::error("unknown_method");
    }
    if kind != needs {
        return shapes::error("not_allowed_token_type");
    }
    let result = match method {
        "auth.test" => Ok(auth_test(world)),
        "chat.postMessage" => post_message(world, shared, params),
        "chat.update" => update(world, params),
        "conversations.history" => history(world, params),
        "conversations.replies" => replies(world, params),
        _ => Ok(crate::socket::open(world, shared)),
    };
    result.unwrap_or_else(shapes::error)
}

type Answer = Result<Value, &'static str>;

fn auth_test(world: &World) -> Value {
    json!({
        "ok": true,
        "url": "https://sandbox.slack.com/",
        "team": world.team_name,
        "user": world.bot_name,
        "team_id": world.team_id,
        "user_id": world.bot_user_id,
        "bot_id": world.bot_id,
        "is_enterprise_install": false,
    })
}

fn string<'a>(params: &'a Params, key: &str) -> Option<&'a str> {
    params
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A JSON-valued parameter: JSON in a JSON body, a JSON string in a form.
fn json_param(params: &Params, key: &str) -> Result<Option<Value>, &'static str> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => serde_json::from_str(s).map(Some).map_err(|_| match key {
            "blocks" => "invalid_blocks",
            _ => "invalid_metadata_format",
        }),
        Some(other) => Ok(Some(other.clone())),
    }
}

fn flag(params: &Params, key: &str) -> bool {
    match params.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true" || s == "1",
        Some(Value::Number(n)) => n.as_u64() == Some(1),
        _ => false,
    }
}

fn number(params: &Params, key: &str) -> Option<u64> {
    match params.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn channel_of(world: &World, params: &Params) -> Result<String, &'static str> {
    let channel = string(params, "channel").ok_or("channel_not_found")?;
    world.channel_id(channel).ok_or("channel_not_found")
}

fn post_message(world: &mut World, shared: &Shared, params: &Params) -> Answer {
    let channel = channel_of(world, params)?;
    let blocks = json_param(params, "blocks")?;
    let metadata = json_param(params, "metadata")?;
    let text = string(params, "text").unwrap_or("");
    if text.is_empty() && blocks.is_none() {
        return Err("no_text");
    }
    let thread_ts = string(params, "thread_ts");
    if thread_ts.is_some_and(|t| Ts::parse(t).is_none()) {
        return Err("invalid_thread_ts");
    }
    let message = world
        .append(&channel, Author::Bot, text, thread_ts, blocks, metadata)
        .ok_or("thread_not_found")?;
    crate::socket::on_message(world, shared, &channel, &message);
    let shown = shapes::message(world, &world.channels[&channel], &message, true);
    Ok(json!({"ok": true, "channel": channel, "ts": message.ts, "message": shown}))
}

fn update(world: &mut World, params: &Params) -> Answer {
    let channel = channel_of(world, params)?;
    let ts = string(params, "ts")
        .and_then(Ts::parse)
        .ok_or("message_not_found")?;
    let blocks = json_param(params, "blocks")?;
    let text = string(params, "text");
    if text.is_none() && blocks.is_none() {
        return Err("no_text");
    }
    let message = world.update(&channel, ts, text, blocks)?;
    let shown = shapes::message(world, &world.channels[&channel], &message, true);
    Ok(json!({
        "ok": true,
        "channel": channel,
        "ts": message.ts,
        "text": message.text,
        "message": shown,
    }))
}

/// The inclusive/exclusive `oldest`..`latest` window of history and replies.
struct Window {
    oldest: Option<Ts>,
    latest: Option<Ts>,
    inclusive: bool,
}

impl Window {
    fn parse(params: &Params) -> Result<Window, &'static str> {
        let bound = |key: &str, error: &'static str| match string(params, key) {
            None => Ok(None),
            Some(raw) => Ts::parse(raw).map(Some).ok_or(error),
        };
        Ok(Window {
            oldest: bound("oldest", "invalid_ts_oldest")?,
            latest: bound("latest", "invalid_ts_latest")?,
            inclusive: flag(params, "inclusive"),
        })
    }

    fn contains(&self, ts: Ts) -> bool {
        let after = self
            .oldest
            .is_none_or(|o| if self.inclusive { ts >= o } else { ts > o });
        let before = self
            .latest
            .is_none_or(|l| if self.inclusive { ts <= l } else { ts < l });
        after && before
    }
}

/// The page size: `limit` (default 100, at most 999 like Slack), capped by the sandbox's
/// `max_page_size`.
fn page_size(world: &World, params: &Params) -> usize {
    let asked = number(params, "limit")
        .filter(|&n| n > 0)
        .unwrap_or(100)
        .min(999) as usize;
    world.max_page_size.map_or(asked, |cap| asked.min(cap))
}

/// Cursors are opaque to clients; like Slack's they are base64 of `next_ts:<ts>`.
fn encode_cursor(ts: Ts) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("next_ts:{ts}"))
}

fn decode_cursor(params: &Params) -> Result<Option<Ts>, &'static str> {
    use base64::Engine;
    let Some(raw) = string(params, "cursor") else {
        return Ok(None);
    };
    base64::engine::general_purpose::STANDARD
        .decode(raw)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("next_ts:").and_then(Ts::parse))
        .map(Some)
        .ok_or("invalid_cursor")
}

/// A page of messages; `pin_count` only for history, as in Slack's examples.
fn paged(messages: Vec<Value>, next: Option<Ts>, pin_count: bool) -> Value {
    let mut body = json!({
        "ok": true,
        "messages": messages,
        "has_more": next.is_some(),
    });
    let Some(map) = body.as_object_mut() else {
        return body;
    };
    if pin_count {
        map.insert("pin_count".into(), json!(0));
    }
    if let Some(next) = next {
        map.insert(
            "response_metadata".into(),
            json!({"next_cursor": encode_cursor(next)}),
        );
    }
    body
}

fn history(world: &World, params: &Params) -> Answer {
    let channel_id = channel_of(world, params)?;
    let channel = world.channel(&channel_id).ok_or("channel_not_found")?;
    let window = Window::parse(params)?;
    let cursor = decode_cursor(params)?;
    let limit = page_size(world, params);
    let with_metadata = flag(params, "include_all_metadata");
    let mut matching = channel
        .messages
        .iter()
        .rev()
        .filter(|m| !m.is_reply() && window.contains(m.key))
        .filter(|m| cursor.is_none_or(|c| m.key <= c));
    let page: Vec<Value> = matching
        .by_ref()
        .take(limit)
        .map(|m| shapes::message(world, channel, m, with_metadata))
        .collect();
    let next = matching.next().map(|m| m.key);
    Ok(paged(page, next, true))
}

fn replies(world: &World, params: &Params) -> Answer {
    let channel_id = channel_of(world, params)?;
    let channel = world.channel(&channel_id).ok_or("channel_not_found")?;
    let ts = string(params, "ts")
        .and_then(Ts::parse)
        .ok_or("thread_not_found")?;
    let window = Window::parse(params)?;
    let cursor = decode_cursor(params)?;
    let with_metadata = flag(params, "include_all_metadata");
    let parent = channel.find(ts).ok_or("thread_not_found")?;
    let mut page = vec![shapes::message(world, channel, parent, with_metadata)];
    if parent.is_reply() {
        // A reply's ts gives that reply alone, as Slack does.
        return Ok(paged(page, None, false));
    }
    // The parent comes first on every page and counts towards the limit.
    let limit = page_size(world, params).saturating_sub(1).max(1);
    let mut matching = channel
        .replies(ts)
        .filter(|m| window.contains(m.key))
        .filter(|m| cursor.is_none_or(|c| m.key >= c));
    page.extend(
        matching
            .by_ref()
            .take(limit)
            .map(|m| shapes::message(world, channel, m, with_metadata)),
    );
    let next = matching.next().map(|m| m.key);
    Ok(paged(page, next, false))
}
