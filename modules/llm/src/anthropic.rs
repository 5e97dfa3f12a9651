//! Anthropic Messages: `POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version`.
//!
//! Prompt caching: `cache_control: {"type": "ephemeral"}` on the system block and on the last
//! tool, so the system prompt and every tool (the prefix up to that breakpoint) are cached
//! together. Usage counts the cache reads and writes apart from the other input tokens.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Provider;
use crate::model::{Block, Message, Request, Response, Role, Stop, ToolCall, Usage};

/// The API version this crate speaks.
pub const VERSION: &str = "2023-06-01";

/// The URL a request goes to.
pub fn url(base_url: &str) -> String {
    format!("{}/v1/messages", base_url.trim_end_matches('/'))
}

/// The request body.
pub fn body(model: &str, request: &Request, max_tokens: u32) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": request.messages.iter().map(message).collect::<Vec<_>>(),
    });
    if !request.system.is_empty() {
        body["system"] = json!([{
            "type": "text",
            "text": request.system,
            "cache_control": {"type": "ephemeral"},
        }]);
    }
    if !request.tools.is_empty() {
        let last = request.tools.len() - 1;
        let tools: Vec<Value> = request
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut tool = json!({
                    "name": t.name,
                    "description": t.description,
                    "input_schema": t.schema,
                });
                if i == last {
                    tool["cache_control"] = json!({"type": "ephemeral"});
                }
                tool
            })
            .collect();
        body["tools"] = Value::Array(tools);
    }
    body
}

fn message(m: &Message) -> Value {
    let content: Vec<Value> = m
        .content
        .iter()
        .filter_map(|b| match b {
            // The API refuses empty text blocks.
            Block::Text(t) if t.is_empty() => None,
            Block::Text(t) => Some(json!({"type": "text", "text": t})),
            Block::ToolUse(c) => Some(json!({
                "type": "tool_use",
                "id": c.id,
                "name": c.name,
                "input": if c.input.is_object() { c.input.clone() } else { json!({}) },
            })),
            Block::ToolResult(r) => Some(json!({
                "type": "tool_result",
                "tool_use_id": r.tool_use_id,
                "content": r.content,
                "is_error": r.is_error,
            })),
        })
        .collect();
    json!({
        "role": match m.role { Role::User => "user", Role::Assistant => "assistant" },
        "content": content,
    })
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

/// A success body, read; unknown fields and block types are ignored.
pub fn parse(bytes: &[u8]) -> Result<Response, String> {
    let wire: Wire = serde_json::from_slice(bytes).map_err(|e| format!("{e}"))?;
    let mut texts = Vec::new();
    let mut tool_calls = Vec::new();
    for (i, block) in wire.content.into_iter().enumerate() {
        match block {
            WireBlock::Text { text } => texts.push(text),
            WireBlock::ToolUse { id, name, input } => {
                let input_error =
                    (!input.is_object()).then(|| "the tool input is not a JSON object".to_owned());
                tool_calls.push(ToolCall {
                    id: if id.is_empty() {
                        format!("toolu_{i}")
                    } else {
                        id
                    },
                    name,
                    input: if input.is_object() { input } else { json!({}) },
                    input_error,
                });
            }
            WireBlock::Unknown => {}
        }
    }
    let stop = match wire.stop_reason.as_deref() {
        Some("end_turn") => Stop::EndTurn,
        Some("tool_use") => Stop::ToolUse,
        Some("max_tokens") => Stop::MaxTokens,
        _ => Stop::Other,
    };
    Ok(Response {
        content: texts.join("\n"),
        tool_calls,
        stop,
        usage: Usage {
            input: wire.usage.input_tokens,
            output: wire.usage.output_tokens,
            cache_read: wire.usage.cache_read_input_tokens.unwrap_or(0),
            cache_write: wire.usage.cache_creation_input_tokens.unwrap_or(0),
        },
        model: wire.model,
        provider: Provider::Anthropic,
    })
}

/// The message of an error body (`{"type": "error", "error": {"type", "message"}}`).
pub fn error_message(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let kind = v["error"]["type"].as_str().unwrap_or("error");
    let message = v["error"]["message"].as_str()?;
    Some(format!("{kind}: {message}"))
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
        let r = parse(&fixture("anthropic.messages.text.json")).unwrap();
        assert_eq!(
            r.content,
            "The weather in SF is currently **20°C** (68°F) and **Sunny**!"
        );
        assert!(r.tool_calls.is_empty());
        assert_eq!(r.stop, Stop::EndTurn);
        assert_eq!(r.model, "claude-haiku-4-5-20251001");
        assert_eq!(
            r.usage,
            Usage {
                input: 705,
                output: 25,
                cache_read: 0,
                cache_write: 0
            }
        );
    }

    #[test]
    fn a_tool_use_answer_is_read() {
        let r = parse(&fixture("anthropic.messages.tool_use.json")).unwrap();
        assert!(r.content.starts_with("I'll get the weather"));
        assert_eq!(r.stop, Stop::ToolUse);
        assert_eq!(r.tool_calls.len(), 1);
        let c = &r.tool_calls[0];
        assert_eq!(c.id, "toolu_01LRanfq6DmHn1yDTB4d1SAh");
        assert_eq!(c.name, "get_weather");
        assert_eq!(
            c.input,
            json!({"location": "San Francisco, CA", "units": "f"})
        );
        assert_eq!(c.input_error, None);
        assert_eq!(r.usage.output, 93);
    }

    #[test]
    fn error_bodies_give_their_message() {
        let m = error_message(&fixture("anthropic.error.529.overloaded_error.json")).unwrap();
        assert_eq!(m, "overloaded_error: Overloaded");
        let m = error_message(&fixture("anthropic.error.429.rate_limit_error.json")).unwrap();
        assert!(m.starts_with("rate_limit_error: This request would exceed"));
        assert!(parse(b"{not json").is_err());
        assert_eq!(error_message(b"<html>"), None);
    }

    #[test]
    fn a_tool_input_that_is_not_an_object_is_an_error_for_that_call() {
        let r = parse(br#"{"content":[{"type":"tool_use","id":"t","name":"x","input":"rm -rf"}],"stop_reason":"tool_use"}"#).unwrap();
        assert_eq!(r.tool_calls[0].input, json!({}));
        assert!(r.tool_calls[0].input_error.is_some());
    }

    #[test]
    fn the_body_caches_the_system_prompt_and_the_tools() {
        let request = Request {
            system: "be brief".into(),
            messages: vec![
                Message::user("hi"),
                Message {
                    role: Role::Assistant,
                    content: vec![
                        Block::Text(String::new()),
                        Block::ToolUse(ToolCall {
                            id: "t1".into(),
                            name: "get_issue".into(),
                            input: json!({"number": 3}),
                            input_error: None,
                        }),
                    ],
                },
                Message::tool_results(vec![ToolResult {
                    tool_use_id: "t1".into(),
                    content: "open".into(),
                    is_error: false,
                }]),
            ],
            tools: vec![
                Tool {
                    name: "a".into(),
                    description: "A".into(),
                    schema: json!({"type": "object"}),
                },
                Tool {
                    name: "get_issue".into(),
                    description: "B".into(),
                    schema: json!({"type": "object"}),
                },
            ],
            max_tokens: None,
        };
        let b = body("claude-x", &request, 321);
        assert_eq!(b["model"], "claude-x");
        assert_eq!(b["max_tokens"], 321);
        assert_eq!(b["system"][0]["text"], "be brief");
        assert_eq!(b["system"][0]["cache_control"]["type"], "ephemeral");
        assert!(b["tools"][0].get("cache_control").is_none());
        assert_eq!(b["tools"][1]["cache_control"]["type"], "ephemeral");
        assert_eq!(b["tools"][1]["input_schema"], json!({"type": "object"}));
        let assistant = &b["messages"][1]["content"];
        assert_eq!(assistant.as_array().unwrap().len(), 1, "empty text dropped");
        assert_eq!(assistant[0]["type"], "tool_use");
        assert_eq!(b["messages"][2]["content"][0]["type"], "tool_result");
        assert_eq!(b["messages"][2]["content"][0]["tool_use_id"], "t1");
    }
}
