//! The neutral model: one request and one response shape for every provider. The wire formats
//! (`anthropic.rs`, `openai.rs`) translate to and from these, so the agent never sees a provider.

use serde_json::Value;

use crate::config::Provider;

/// One model call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// The system prompt (Anthropic caches it).
    pub system: String,
    /// The conversation, oldest first; the client trims the oldest turns to `token_budget`.
    pub messages: Vec<Message>,
    /// The tools the model may call (Anthropic caches them, up to the last one).
    pub tools: Vec<Tool>,
    /// The most tokens of the reply; capped by the endpoint's `max_tokens`, which is used when
    /// this is `None`.
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

impl Message {
    pub fn user(text: impl Into<String>) -> Message {
        Message {
            role: Role::User,
            content: vec![Block::Text(text.into())],
        }
    }

    pub fn assistant(text: impl Into<String>) -> Message {
        Message {
            role: Role::Assistant,
            content: vec![Block::Text(text.into())],
        }
    }

    /// The assistant turn a [`Response`] was: its text, then its tool calls.
    pub fn from_response(response: &Response) -> Message {
        let mut content = Vec::new();
        if !response.content.is_empty() {
            content.push(Block::Text(response.content.clone()));
        }
        content.extend(response.tool_calls.iter().cloned().map(Block::ToolUse));
        Message {
            role: Role::Assistant,
            content,
        }
    }

    /// A user turn answering tool calls.
    pub fn tool_results(results: Vec<ToolResult>) -> Message {
        Message {
            role: Role::User,
            content: results.into_iter().map(Block::ToolResult).collect(),
        }
    }

    /// The text blocks, joined by newlines.
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        texts.join("\n")
    }

    /// Whether this turn answers tool calls (and so belongs with the turn that made them).
    pub fn has_tool_results(&self) -> bool {
        self.content
            .iter()
            .any(|b| matches!(b, Block::ToolResult(_)))
    }

    /// Whether this turn calls tools.
    pub fn has_tool_uses(&self) -> bool {
        self.content.iter().any(|b| matches!(b, Block::ToolUse(_)))
    }
}

/// A part of a turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    /// A tool call the assistant made.
    ToolUse(ToolCall),
    /// The answer to a tool call, in a user turn.
    ToolResult(ToolResult),
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// The JSON Schema of the tool's input (an object schema).
    pub schema: Value,
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments, a JSON object; `{}` when they could not be read (see `input_error`).
    pub input: Value,
    /// Why the arguments could not be read (an OpenAI-compatible server sends them as a JSON
    /// string, which may be anything). The caller answers such a call with an error result and
    /// never runs the tool.
    pub input_error: Option<String>,
}

/// The answer to one tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub tool_use_id: String,
    pub content: String,
    pub is_error: bool,
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A complete answer.
    EndTurn,
    /// It wants its tool calls answered.
    ToolUse,
    /// It ran into `max_tokens`.
    MaxTokens,
    /// A stop sequence, a refusal, a content filter, or a reason this crate does not know.
    Other,
}

/// Tokens, as the provider counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens not read from the cache (Anthropic's `input_tokens`; for OpenAI
    /// `prompt_tokens` minus the cached ones).
    pub input: u64,
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache (Anthropic only).
    pub cache_write: u64,
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The text blocks, joined by newlines.
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub stop: Stop,
    pub usage: Usage,
    /// The model that answered, as the provider names it.
    pub model: String,
    pub provider: Provider,
}
