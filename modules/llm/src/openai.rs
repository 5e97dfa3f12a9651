//! OpenAI-compatible chat completions: `POST {base_url}/chat/completions` (the base URL holds the
//! version path, e.g. `.../v1`) with `Authorization: Bearer`.
//!
//! The reply's length is capped with `max_completion_tokens`, the field of the current spec:
//! OpenAI's newer models refuse the deprecated `max_tokens`, and a server that does not know the
//! new field ignores it (the reply is then uncapped, not refused).
//!
//! Tools are `function`s; the model's tool calls carry their arguments as a JSON *string*, which
//! may be anything a server or a model produces: one that is not a JSON object becomes that
//! call's `input_error` (the caller answers it with an error result), never a failure of the
//! whole answer and never a panic.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Provider;
use crate::model::{Block, Message, Request, Response, Role, Stop, ToolCall, Usage};

/// Tool arguments longer than this are not parsed (the body bound already caps them; this keeps
/// one call from being most of it).
const MAX_ARGUMENTS_BYTES: usize = 256 * 1024;

/// The URL a request goes to.
pub fn url(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
}

/// The request body.
pub fn body(model: &str, request: &Request, max_tokens: u32) -> Value {
    let mut messages = Vec::new();
    if !request.system.is_empty() {
        messages.push(json!({"role": "system", "content": request.system}));
    }
    for m in &request.messages {
        push_message(&mut messages, m);
    }
    let mut body = json!({
        "model": model,
        "max_completion_tokens": max_tokens,
        "messages": messages,
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.schema,
                    },
                })
            })
            .collect();
    }
    body
}

/// One neutral turn as chat messages: tool results are `tool` messages of their own (before any
/// text of the same turn), an assistant's tool calls ride on its message.
fn push_message(out: &mut Vec<Value>, m: &Message) {
    let text = m.text();
    match m.role {
        Role::User => {
            for b in &m.content {
                if let Block::ToolResult(r) = b {
                    let content = if r.is_error {
                        format!("error: {}", r.content)
                    } else {
                        r.content.clone()
                    };
                    out.push(json!({
                        "role": "tool",
                        "tool_call_id": r.tool_use_id,
                        "content": content,
                    }));
                }
            }
            if !text.is_empty() {
                out.push(json!({"role": "user", "content": text}));
            }
        }
        Role::Assistant => {
            let calls: Vec<Value> = m
                .content
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse(c) => Some(json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.input.to_string()},
                    })),
                    _ => None,
                })
                .collect();
            let mut message = json!({
                "role": "assistant",
                "content": if text.is_empty() { Value::Null } else { Value::String(text) },
            });
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(calls);
            }
            out.push(message);
        }
    }
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: String,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: String,
    /// A JSON string as the spec says; some servers send an object instead.
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
}

#[derive(Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

/// A success body, read (the first choice); unknown fields are ignored.
pub fn parse(bytes: &[u8]) -> Result<Response, String> {
    let wire: Wire = serde_json::from_slice(bytes).map_err(|e| format!("{e}"))?;
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err("it has no choices".into());
    };
    let tool_calls = choice
        .message
        .tool_calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let (input, input_error) = arguments(c.function.arguments);
            ToolCall {
                id: if c.id.is_empty() {
                    format!("call_{i}")
                } else {
                    c.id
                },
                name: c.function.name,
                input,
                input_error,
            }
        })
        .collect();
    let stop = match choice.finish_reason.as_deref() {
        Some("stop") => Stop::EndTurn,
        Some("tool_calls" | "function_call") => Stop::ToolUse,
        Some("length") => Stop::MaxTokens,
        _ => Stop::Other,
    };
    let usage = wire.usage.map_or(Usage::default(), |u| {
        let cached = u.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
        Usage {
            input: u.prompt_tokens.saturating_sub(cached),
            output: u.completion_tokens,
            cache_read: cached,
            cache_write: 0,
        }
    });
    Ok(Response {
        content: choice.message.content.unwrap_or_default(),
        tool_calls,
        stop,
        usage,
        model: wire.model,
        provider: Provider::Openaicompat,
    })
}

/// A tool call's arguments: the object, or `{}` and why not.
fn arguments(raw: Value) -> (Value, Option<String>) {
    let parsed = match raw {
        Value::String(s) if s.len() > MAX_ARGUMENTS_BYTES => {
            return (
                json!({}),
                Some(format!(
                    "the arguments are longer than {MAX_ARGUMENTS_BYTES} bytes"
                )),
            );
        }
        Value::String(s) if s.trim().is_empty() => Ok(json!({})),
        Value::String(s) => serde_json::from_str::<Value>(&s),
        other => Ok(other),
    };
    match parsed {
        Ok(v) if v.is_object() => (v, None),
        Ok(_) => (
            json!({}),
            Some("the arguments are not a JSON object".into()),
        ),
        Err(e) => (
            json!({}),
            Some(format!("the arguments are not valid JSON ({e})")),
        ),
    }
}

/// The message of an error body (`{"error": {"message", "type", "param", "code"}}`).
pub fn error_message(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let message = v["error"]["message"].as_str()?;
    match v["error"]["code"].as_str().or(v["error"]["type"].as_str()) {
        Some(code) => Some(format!("{code}: {message}")),
        None => Some(message.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Tool, ToolResult};

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../../shared/fixtures/llm/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn a_text_answer_is_read() {
        let r = parse(&fixture("openai.chat.completions.text.json")).unwrap();
        assert_eq!(r.content, "Hello! How can I assist you today?");
        assert_eq!(r.stop, Stop::EndTurn);
        assert_eq!(r.model, "gpt-5.4");
        assert_eq!(r.provider, Provider::Openaicompat);
        assert_eq!(
            r.usage,
            Usage {
                input: 19,
                output: 10,
                cache_read: 0,
                cache_write: 0
            }
        );
    }

    #[test]
    fn a_tool_call_answer_is_read_with_its_string_arguments() {
        let r = parse(&fixture("openai.chat.completions.tool_calls.json")).unwrap();
        assert_eq!(r.content, "");
        assert_eq!(r.stop, Stop::ToolUse);
        let c = &r.tool_calls[0];
        assert_eq!(c.id, "call_abc123");
        assert_eq!(c.name, "get_current_weather");
        assert_eq!(c.input, json!({"location": "Boston, MA"}));
        assert_eq!(c.input_error, None);
        assert_eq!(r.usage.input, 82);
    }

    #[test]
    fn hostile_arguments_are_an_error_for_that_call_only() {
        let deep = "[".repeat(100_000);
        for (arguments, ok) in [
            (json!("{\"a\": 1"), false),
            (json!("[1, 2]"), false),
            (json!("\"just a string\""), false),
            (json!(deep), false),
            (json!("x".repeat(MAX_ARGUMENTS_BYTES + 1)), false),
            (json!({"already": "an object"}), true),
            (json!(""), true),
        ] {
            let body = json!({
                "model": "m",
                "choices": [{"message": {"content": null, "tool_calls": [
                    {"id": "1", "type": "function", "function": {"name": "bad", "arguments": arguments}},
                    {"id": "2", "type": "function", "function": {"name": "good", "arguments": "{\"n\": 2}"}},
                ]}, "finish_reason": "tool_calls"}],
            });
            let r = parse(body.to_string().as_bytes()).unwrap();
            assert_eq!(r.tool_calls[0].input_error.is_none(), ok, "{arguments}");
            assert!(r.tool_calls[0].input.is_object());
            assert_eq!(r.tool_calls[1].input, json!({"n": 2}));
        }
    }

    #[test]
    fn error_bodies_give_their_message() {
        let m = error_message(&fixture("openai.error.429.rate_limit_exceeded.json")).unwrap();
        assert!(
            m.starts_with("rate_limit_exceeded: Rate limit reached"),
            "{m}"
        );
        let m = error_message(&fixture("openai.error.503.model_overloaded.json")).unwrap();
        assert!(
            m.starts_with("server_error: That model is currently overloaded"),
            "{m}"
        );
        assert!(parse(b"{\"choices\": []}").is_err());
    }

    #[test]
    fn the_body_has_functions_and_tool_messages() {
        let request = Request {
            system: "sys".into(),
            messages: vec![
                Message::user("hi"),
                Message {
                    role: Role::Assistant,
                    content: vec![Block::ToolUse(ToolCall {
                        id: "c1".into(),
                        name: "get_issue".into(),
                        input: json!({"number": 3}),
                        input_error: None,
                    })],
                },
                Message::tool_results(vec![ToolResult {
                    tool_use_id: "c1".into(),
                    content: "not found".into(),
                    is_error: true,
                }]),
            ],
            tools: vec![Tool {
                name: "get_issue".into(),
                description: "d".into(),
                schema: json!({"type": "object"}),
            }],
            max_tokens: None,
        };
        let b = body("m", &request, 77);
        assert_eq!(b["max_completion_tokens"], 77);
        assert!(
            b.get("max_tokens").is_none(),
            "refused by OpenAI's newer models"
        );
        assert_eq!(
            b["messages"][0],
            json!({"role": "system", "content": "sys"})
        );
        assert_eq!(b["messages"][2]["content"], Value::Null);
        assert_eq!(
            b["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"number\":3}"
        );
        assert_eq!(b["messages"][3]["role"], "tool");
        assert_eq!(b["messages"][3]["tool_call_id"], "c1");
        assert_eq!(b["messages"][3]["content"], "error: not found");
        assert_eq!(b["tools"][0]["type"], "function");
        assert_eq!(
            b["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(url("http://h/x/v1/"), "http://h/x/v1/chat/completions");
    }
}
