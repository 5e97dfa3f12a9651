//! A scriptable fake LLM, served over real HTTP on `127.0.0.1`, speaking both wire formats the
//! daemon uses: Anthropic Messages (`POST …/v1/messages`) and OpenAI chat completions
//! (`POST …/chat/completions`, under any prefix, so a `base_url` with a path can be tested).
//!
//! # What it models
//! - Answers with the real shapes (`shared/fixtures/llm/`): text, tool calls (Anthropic
//!   `tool_use` blocks with an object `input`; OpenAI `tool_calls` with JSON-*string*
//!   `arguments`), `stop_reason`/`finish_reason`, and usage figures: input tokens estimated as a
//!   quarter of the request's characters, output tokens of the reply, and for Anthropic the
//!   prompt cache (the system prompt and tools marked `cache_control`: written the first time a
//!   prefix is seen, read after).
//! - Script: replies queued in order ([`Sandbox::push`]), then rules on the newest message's
//!   text ([`Sandbox::rule`]), then, when switched on ([`Sandbox::use_demo_model`]), a small
//!   rule-based model that answers the agent's requests plausibly (`demo_model.rs`: the
//!   `productbuilder demo` without an API key), then a default ([`Sandbox::set_default`], a
//!   short text). Every answer, the demo model's too, carries the usage figures below.
//! - Faults ([`Reply`]): any status with the provider's error body (429 and 529 as Anthropic
//!   sends them, 429 and 503 as OpenAI does), with or without `Retry-After`; a delay before any
//!   reply (to force timeouts); malformed JSON; an endless-looking oversized body; a tool call
//!   with hostile arguments.
//! - Every request is recorded when it arrives ([`Sandbox::requests`]): the time, the path, the
//!   headers, the raw and parsed body, so tests assert retries, waits, fallback, budgets and
//!   headers. With [`Sandbox::require_key`], a request without the key in its header is 401.
//!
//! # What it does not model
//! Streaming (SSE), batches, token counting endpoints, real tokenization, model names (it
//! echoes the request's `model`), rate limits of its own (script them as faults).

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

mod demo_model;
mod wire;

use wire::{
    ToolArguments, cache_prefix, error_body, estimate, header_is, json_response, newest_text,
    oversized, plain, success,
};

/// What the sandbox answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A text answer (`end_turn` / `stop`).
    Text(String),
    /// Tool calls, after an optional text (`tool_use` / `tool_calls`).
    ToolCalls {
        text: String,
        calls: Vec<(String, Value)>,
    },
    /// One tool call whose arguments are this raw text (OpenAI: the `arguments` string as is;
    /// Anthropic: `input` as a JSON string instead of an object).
    RawToolCall { name: String, arguments: String },
    /// An error status with the provider's error body, and `Retry-After` when given.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with a body of this many bytes, streamed without a length.
    Oversized { bytes: usize },
    /// Waits, then answers.
    Delayed { delay: Duration, then: Box<Reply> },
}

impl Reply {
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Text(text.into())
    }

    pub fn tool_call(name: impl Into<String>, input: Value) -> Reply {
        Reply::ToolCalls {
            text: String::new(),
            calls: vec![(name.into(), input)],
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply::Status {
            status,
            retry_after: None,
        }
    }

    pub fn status_retry_after(status: u16, retry_after: impl Into<String>) -> Reply {
        Reply::Status {
            status,
            retry_after: Some(retry_after.into()),
        }
    }

    pub fn delayed(delay: Duration, then: Reply) -> Reply {
        Reply::Delayed {
            delay,
            then: Box::new(then),
        }
    }
}

/// The wire format of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Anthropic,
    OpenAi,
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When it arrived (before any scripted delay).
    pub at: Instant,
    pub format: Format,
    /// The path, e.g. `/v1/messages` or `/custom/v1/chat/completions`.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub raw: String,
    /// The body parsed (`Null` when it was not JSON).
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct World {
    queue: VecDeque<Reply>,
    rules: Vec<(String, Reply)>,
    default: Option<Reply>,
    requests: Vec<Recorded>,
    required_key: Option<String>,
    cached_prefixes: HashSet<String>,
    served: u64,
    /// Whether the demo model answers what the queue and the rules do not.
    demo: bool,
}

struct Inner {
    world: Mutex<World>,
    /// Told on every request, for [`Sandbox::wait_for_requests`].
    arrived: tokio::sync::Notify,
}

type Shared = Arc<Inner>;

/// A running fake LLM; stopped when dropped.
pub struct Sandbox {
    addr: SocketAddr,
    world: Shared,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Sandbox {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> io::Result<Sandbox> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let world: Shared = Arc::new(Inner {
            world: Mutex::default(),
            arrived: tokio::sync::Notify::new(),
        });
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(world.clone());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "the LLM sandbox stopped");
            }
        });
        Ok(Sandbox {
            addr,
            world,
            shutdown: Some(tx),
        })
    }

    /// Starts with the demo model switched on ([`Sandbox::use_demo_model`]).
    pub async fn start_demo() -> io::Result<Sandbox> {
        let sandbox = Sandbox::start().await?;
        sandbox.use_demo_model();
        Ok(sandbox)
    }

    /// `http://127.0.0.1:PORT`: an Anthropic `base_url` (requests go to `{it}/v1/messages`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`: an OpenAI-compatible `base_url`.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a reply: replies are used in order, one per request.
    pub fn push(&self, reply: Reply) {
        self.world().queue.push_back(reply);
    }

    /// When the queue is empty: a request whose newest message's text contains `needle` gets
    /// `reply` (rules are tried in the order added; they are not used up).
    pub fn rule(&self, needle: impl Into<String>, reply: Reply) {
        self.world().rules.push((needle.into(), reply));
    }

    /// Switches on the demo model: when neither the queue nor a rule gives a reply, a request of
    /// the agent (`productbuilder-agent`'s router and specialists, either wire format) is
    /// answered as a plausible model would: `route` by the message's keywords, the specialist's
    /// main tool with arguments from the message, then a short text saying what the tool result
    /// says. Any other request still gets the default.
    pub fn use_demo_model(&self) {
        self.world().demo = true;
    }

    /// The reply when neither the queue, a rule nor the demo model gives one (default: the text "ok").
    pub fn set_default(&self, reply: Reply) {
        self.world().default = Some(reply);
    }

    /// Requests without this key (`x-api-key`, or `Authorization: Bearer`) are answered 401.
    pub fn require_key(&self, key: impl Into<String>) {
        self.world().required_key = Some(key.into());
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.world().requests.clone()
    }

    /// Replies still queued.
    pub fn queued(&self) -> usize {
        self.world().queue.len()
    }

    /// Returns once at least `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        loop {
            let arrived = self.world.arrived.notified();
            if self.world().requests.len() >= n {
                return;
            }
            arrived.await;
        }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.world.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn handle(
    State(world): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let format = if path.ends_with("/v1/messages") {
        Format::Anthropic
    } else if path.ends_with("/chat/completions") {
        Format::OpenAi
    } else {
        return plain(StatusCode::NOT_FOUND, "no such endpoint");
    };
    if method != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    let raw = String::from_utf8_lossy(&body).into_owned();
    let parsed: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    let (reply, n, authorized, cache) = {
        let mut w = world.world.lock().unwrap_or_else(|p| p.into_inner());
        w.requests.push(Recorded {
            at: Instant::now(),
            format,
            path,
            query: uri.query().map(str::to_owned),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            raw: raw.clone(),
            body: parsed.clone(),
        });
        w.served += 1;
        let n = w.served;
        let authorized = match &w.required_key {
            None => true,
            Some(key) => match format {
                Format::Anthropic => header_is(&headers, "x-api-key", key),
                Format::OpenAi => header_is(&headers, "authorization", &format!("Bearer {key}")),
            },
        };
        let reply = match w.queue.pop_front() {
            Some(r) => r,
            None => {
                let newest = newest_text(&parsed);
                w.rules
                    .iter()
                    .find(|(needle, _)| newest.contains(needle.as_str()))
                    .map(|(_, r)| r.clone())
                    .or_else(|| w.demo.then(|| demo_model::reply(format, &parsed)).flatten())
                    .or_else(|| w.default.clone())
                    .unwrap_or_else(|| Reply::text("ok"))
            }
        };
        let cache = cache_prefix(format, &parsed).map(|prefix| {
            let tokens = estimate(&prefix);
            let hit = !w.cached_prefixes.insert(prefix);
            (tokens, hit)
        });
        (reply, n, authorized, cache)
    };
    world.arrived.notify_waiters();
    if !authorized {
        return error_body(format, 401, None, n);
    }
    let mut reply = reply;
    while let Reply::Delayed { delay, then } = reply {
        tokio::time::sleep(delay).await;
        reply = *then;
    }
    let model = parsed["model"].as_str().unwrap_or("sandbox").to_owned();
    let input_tokens = estimate(&raw);
    match reply {
        Reply::Status {
            status,
            retry_after,
        } => error_body(format, status, retry_after, n),
        Reply::Malformed => {
            json_response(StatusCode::OK, "{\"id\": \"msg_1\", \"content\": [".into())
        }
        Reply::Oversized { bytes } => oversized(bytes),
        Reply::Delayed { .. } => unreachable!("delays were waited above"),
        Reply::Text(text) => success(format, &model, n, &text, &[], input_tokens, cache),
        Reply::ToolCalls { text, calls } => {
            let calls: Vec<(String, ToolArguments)> = calls
                .into_iter()
                .map(|(name, input)| (name, ToolArguments::Object(input)))
                .collect();
            success(format, &model, n, &text, &calls, input_tokens, cache)
        }
        Reply::RawToolCall { name, arguments } => success(
            format,
            &model,
            n,
            "",
            &[(name, ToolArguments::Raw(arguments))],
            input_tokens,
            cache,
        ),
    }
}
