//! The two wire formats as the sandbox reads and writes them: the requests' parts the script
//! needs, and the answers with the providers' real shapes (`shared/fixtures/llm/`).

use std::io;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::Format;

pub(crate) enum ToolArguments {
    Object(Value),
    Raw(String),
}

pub(crate) fn header_is(headers: &HeaderMap, name: &str, expected: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

/// Token estimate: a quarter of the characters (the daemon's own estimate is the same rule).
pub(crate) fn estimate(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The text of the newest message (for rules).
pub(crate) fn newest_text(body: &Value) -> String {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or(Value::Null);
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str().or(b["content"].as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The cacheable prefix of an Anthropic request (system and tools, when marked), as text.
pub(crate) fn cache_prefix(format: Format, body: &Value) -> Option<String> {
    if format != Format::Anthropic {
        return None;
    }
    let system_marked = body["system"]
        .as_array()
        .is_some_and(|b| b.iter().any(|x| x.get("cache_control").is_some()));
    let tools_marked = body["tools"]
        .as_array()
        .is_some_and(|t| t.iter().any(|x| x.get("cache_control").is_some()));
    if !system_marked && !tools_marked {
        return None;
    }
    Some(format!("{}{}", body["system"], body["tools"]))
}

pub(crate) fn success(
    format: Format,
    model: &str,
    n: u64,
    text: &str,
    calls: &[(String, ToolArguments)],
    input_tokens: u64,
    cache: Option<(u64, bool)>,
) -> Response {
    let output_tokens = estimate(text)
        + calls
            .iter()
            .map(|(name, a)| {
                estimate(name)
                    + match a {
                        ToolArguments::Object(v) => estimate(&v.to_string()),
                        ToolArguments::Raw(s) => estimate(s),
                    }
            })
            .sum::<u64>()
        + 1;
    let body = match format {
        Format::Anthropic => {
            let mut content = Vec::new();
            if !text.is_empty() {
                content.push(json!({"type": "text", "text": text}));
            }
            for (i, (name, args)) in calls.iter().enumerate() {
                let input = match args {
                    ToolArguments::Object(v) => v.clone(),
                    ToolArguments::Raw(s) => Value::String(s.clone()),
                };
                content.push(json!({
                    "type": "tool_use",
                    "id": format!("toolu_sandbox_{n}_{i}"),
                    "name": name,
                    "input": input,
                }));
            }
            let (cache_read, cache_write) = match cache {
                Some((tokens, true)) => (tokens, 0),
                Some((tokens, false)) => (0, tokens),
                None => (0, 0),
            };
            json!({
                "model": model,
                "id": format!("msg_sandbox_{n}"),
                "type": "message",
                "role": "assistant",
                "content": content,
                "stop_reason": if calls.is_empty() { "end_turn" } else { "tool_use" },
                "stop_sequence": null,
                "usage": {
                    "input_tokens": input_tokens.saturating_sub(cache_read + cache_write),
                    "cache_creation_input_tokens": cache_write,
                    "cache_read_input_tokens": cache_read,
                    "cache_creation": {
                        "ephemeral_5m_input_tokens": cache_write,
                        "ephemeral_1h_input_tokens": 0,
                    },
                    "output_tokens": output_tokens,
                    "service_tier": "standard",
                },
            })
        }
        Format::OpenAi => {
            let tool_calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| {
                    let arguments = match args {
                        ToolArguments::Object(v) => v.to_string(),
                        ToolArguments::Raw(s) => s.clone(),
                    };
                    json!({
                        "id": format!("call_sandbox_{n}_{i}"),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    })
                })
                .collect();
            let mut message = json!({
                "role": "assistant",
                "content": if text.is_empty() { Value::Null } else { Value::String(text.to_owned()) },
                "refusal": null,
                "annotations": [],
            });
            if !tool_calls.is_empty() {
                message["tool_calls"] = Value::Array(tool_calls);
            }
            json!({
                "id": format!("chatcmpl-sandbox-{n}"),
                "object": "chat.completion",
                "created": 1741569952 + n,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": message,
                    "logprobs": null,
                    "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" },
                }],
                "usage": {
                    "prompt_tokens": input_tokens,
                    "completion_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                },
            })
        }
    };
    json_response(StatusCode::OK, body.to_string())
}

/// An error as the provider sends it (the fixtures' shapes and wording).
pub(crate) fn error_body(
    format: Format,
    status: u16,
    retry_after: Option<String>,
    n: u64,
) -> Response {
    let body = match format {
        Format::Anthropic => {
            let (kind, message) = match status {
                400 => ("invalid_request_error", "The request is invalid."),
                401 => ("authentication_error", "invalid x-api-key"),
                403 => (
                    "permission_error",
                    "Your API key does not have permission to use the specified resource.",
                ),
                404 => (
                    "not_found_error",
                    "The requested resource could not be found.",
                ),
                429 => (
                    "rate_limit_error",
                    "This request would exceed your organization's rate limit. Please try again later.",
                ),
                529 => ("overloaded_error", "Overloaded"),
                _ => ("api_error", "Internal server error"),
            };
            json!({
                "type": "error",
                "error": {"type": kind, "message": message},
                "request_id": format!("req_sandbox_{n}"),
            })
        }
        Format::OpenAi => {
            let (kind, code, message) = match status {
                401 => (
                    "invalid_request_error",
                    Some("invalid_api_key"),
                    "Incorrect API key provided.",
                ),
                429 => (
                    "tokens",
                    Some("rate_limit_exceeded"),
                    "Rate limit reached for requests. Please try again later.",
                ),
                503 => (
                    "server_error",
                    None,
                    "That model is currently overloaded with other requests. You can retry your request.",
                ),
                s if s < 500 => ("invalid_request_error", None, "The request is invalid."),
                _ => (
                    "server_error",
                    None,
                    "The server had an error while processing your request.",
                ),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
    };
    let mut response = json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    );
    if let Some(value) = retry_after
        && let Ok(v) = value.parse()
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

pub(crate) fn oversized(bytes: usize) -> Response {
    const CHUNK: usize = 64 * 1024;
    let chunks = bytes.div_ceil(CHUNK);
    let stream = futures_util::stream::iter((0..chunks).map(move |i| {
        let len = CHUNK.min(bytes - i * CHUNK);
        Ok::<_, io::Error>(Bytes::from(vec![b' '; len]))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid response")
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response {
    Response::builder()
        .status(status)
        .body(Body::from(text))
        .expect("a valid response")
}
