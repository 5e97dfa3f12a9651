//! The token budget (pure): a conversation trimmed to fit, oldest turns first.
//!
//! Rules, in order of precedence:
//! - The newest user turn (the newest user message with text of its own, not only tool results)
//!   and everything after it are never dropped, even when they alone exceed the budget: an
//!   answer to a question it cannot see is worse than a large request. (The predecessor dropped
//!   the newest context first.)
//! - A turn that answers tool calls goes with the turn that made them: an orphaned
//!   `tool_result` (or `tool_use` without its result) is refused by the providers.
//! - What was dropped is replaced by one summary line at the start (how many messages, about
//!   how many tokens, and how the dropped part began), so the model knows there was more.
//!
//! Tokens are estimated (a quarter of the characters, plus a little per message and block): the
//! providers count differently, and a budget only needs to be roughly right and the same on
//! every call.

use crate::model::{Block, Message, Role, Tool};

/// What [`trim`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Messages left out.
    pub dropped_messages: usize,
    /// Their estimated tokens.
    pub dropped_tokens: u32,
    /// The estimated tokens of what is kept, the summary line included.
    pub kept_tokens: u32,
    /// What is kept is still over the budget (the newest turn alone exceeds it).
    pub over_budget: bool,
}

/// The summary line and the most of a dropped text it quotes.
const SUMMARY_QUOTE_CHARS: usize = 120;
/// Room kept for the summary line when deciding what to drop (the line is at most this long).
const SUMMARY_TOKENS: u32 = 80;

/// Estimated tokens of a text.
pub fn estimate_text(text: &str) -> u32 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4).min(u32::MAX as u64) as u32
}

/// Estimated tokens of one message.
pub fn estimate_message(m: &Message) -> u32 {
    let blocks: u32 = m
        .content
        .iter()
        .map(|b| {
            3 + match b {
                Block::Text(t) => estimate_text(t),
                Block::ToolUse(c) => estimate_text(&c.name) + estimate_text(&c.input.to_string()),
                Block::ToolResult(r) => estimate_text(&r.tool_use_id) + estimate_text(&r.content),
            }
        })
        .fold(0u32, u32::saturating_add);
    blocks.saturating_add(4)
}

/// Estimated tokens of a conversation.
pub fn estimate_messages(messages: &[Message]) -> u32 {
    messages
        .iter()
        .map(estimate_message)
        .fold(0, u32::saturating_add)
}

/// Estimated tokens of the tool definitions.
pub fn estimate_tools(tools: &[Tool]) -> u32 {
    tools
        .iter()
        .map(|t| {
            estimate_text(&t.name)
                .saturating_add(estimate_text(&t.description))
                .saturating_add(estimate_text(&t.schema.to_string()))
                .saturating_add(4)
        })
        .fold(0, u32::saturating_add)
}

/// `messages` trimmed to at most `budget` estimated tokens (see the module's rules).
pub fn trim(messages: &[Message], budget: u32) -> (Vec<Message>, Trimmed) {
    let total = estimate_messages(messages);
    if total <= budget || messages.is_empty() {
        return (
            messages.to_vec(),
            Trimmed {
                kept_tokens: total,
                over_budget: total > budget,
                ..Trimmed::default()
            },
        );
    }
    let protected = newest_user_turn(messages);
    // Group starts: a message answering tool calls belongs to the group before it.
    let starts: Vec<usize> = (0..messages.len())
        .filter(|&i| i == 0 || !messages[i].has_tool_results())
        .collect();
    let mut kept_from = 0;
    let mut kept = total;
    for (g, &start) in starts.iter().enumerate() {
        if start >= protected || kept.saturating_add(SUMMARY_TOKENS) <= budget {
            break;
        }
        let end = starts.get(g + 1).copied().unwrap_or(messages.len());
        kept -= estimate_messages(&messages[start..end]);
        kept_from = end;
    }
    if kept_from == 0 {
        return (
            messages.to_vec(),
            Trimmed {
                kept_tokens: total,
                over_budget: true,
                ..Trimmed::default()
            },
        );
    }
    let dropped = &messages[..kept_from];
    let line = summary(dropped, total - kept);
    let mut out: Vec<Message> = messages[kept_from..].to_vec();
    // The first turn must be the user's (Anthropic refuses otherwise): the summary joins the
    // first kept user turn, or comes as a user turn of its own before an assistant's.
    match out.first_mut() {
        Some(first) if first.role == Role::User => first.content.insert(0, Block::Text(line)),
        _ => out.insert(0, Message::user(line)),
    }
    let kept_tokens = estimate_messages(&out);
    (
        out,
        Trimmed {
            dropped_messages: kept_from,
            dropped_tokens: total - kept,
            kept_tokens,
            over_budget: kept_tokens > budget,
        },
    )
}

/// The index of the newest user message with text of its own; else the last message.
fn newest_user_turn(messages: &[Message]) -> usize {
    messages
        .iter()
        .rposition(|m| {
            m.role == Role::User
                && !m.has_tool_results()
                && m.content.iter().any(|b| matches!(b, Block::Text(_)))
        })
        .unwrap_or(messages.len() - 1)
}

fn summary(dropped: &[Message], tokens: u32) -> String {
    let first_text = dropped
        .iter()
        .map(Message::text)
        .find(|t| !t.trim().is_empty())
        .unwrap_or_default();
    let one_line = first_text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut quote: String = one_line.chars().take(SUMMARY_QUOTE_CHARS).collect();
    if one_line.chars().count() > SUMMARY_QUOTE_CHARS {
        quote.push('…');
    }
    let count = match dropped.len() {
        1 => "1 message".to_owned(),
        n => format!("{n} messages"),
    };
    format!(
        "[Earlier conversation left out to fit the token budget: {count}, about {tokens} tokens. It began: \"{quote}\"]"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ToolCall, ToolResult};
    use serde_json::json;

    fn words(n: usize, tag: &str) -> String {
        format!("{tag} {}", "word ".repeat(n))
    }

    fn call(id: &str) -> Message {
        Message {
            role: Role::Assistant,
            content: vec![Block::ToolUse(ToolCall {
                id: id.into(),
                name: "get_issue".into(),
                input: json!({"n": 1}),
                input_error: None,
            })],
        }
    }

    fn result(id: &str, size: usize) -> Message {
        Message::tool_results(vec![ToolResult {
            tool_use_id: id.into(),
            content: "r".repeat(size),
            is_error: false,
        }])
    }

    /// The tags of the kept messages' texts (the first word of each text block), in order.
    fn tags(messages: &[Message]) -> Vec<String> {
        messages
            .iter()
            .flat_map(|m| {
                m.content.iter().map(|b| match b {
                    Block::Text(t) if t.starts_with("[Earlier") => "summary".to_owned(),
                    Block::Text(t) => t.split(' ').next().unwrap().to_owned(),
                    Block::ToolUse(c) => format!("use:{}", c.id),
                    Block::ToolResult(r) => format!("result:{}", r.tool_use_id),
                })
            })
            .collect()
    }

    #[test]
    fn trimming_table() {
        struct Case {
            name: &'static str,
            messages: Vec<Message>,
            budget: u32,
            kept: &'static [&'static str],
            over: bool,
        }
        let cases = vec![
            Case {
                name: "within the budget: unchanged",
                messages: vec![Message::user(words(10, "u1")), Message::assistant("a1")],
                budget: 1000,
                kept: &["u1", "a1"],
                over: false,
            },
            Case {
                name: "the oldest turns go first, the summary joins the first user turn",
                messages: vec![
                    Message::user(words(400, "u1")),
                    Message::assistant(words(400, "a1")),
                    Message::user(words(400, "u2")),
                    Message::assistant(words(100, "a2")),
                    Message::user(words(100, "u3")),
                ],
                budget: 1000,
                kept: &["summary", "u2", "a2", "u3"],
                over: false,
            },
            Case {
                name: "an assistant turn first gets a summary turn before it",
                messages: vec![
                    Message::user(words(400, "u1")),
                    Message::assistant(words(100, "a1")),
                    Message::user(words(100, "u2")),
                ],
                budget: 400,
                kept: &["summary", "a1", "u2"],
                over: false,
            },
            Case {
                name: "the newest user turn stays even alone over the budget",
                messages: vec![
                    Message::user(words(100, "u1")),
                    Message::assistant(words(100, "a1")),
                    Message::user(words(4000, "u2")),
                ],
                budget: 1000,
                kept: &["summary", "u2"],
                over: true,
            },
            Case {
                name: "nothing before the newest turn: kept whole, over budget",
                messages: vec![Message::user(words(4000, "u1"))],
                budget: 1000,
                kept: &["u1"],
                over: true,
            },
            Case {
                name: "tool calls after the newest user turn are kept",
                messages: vec![
                    Message::user(words(800, "u1")),
                    Message::assistant(words(10, "a1")),
                    Message::user(words(50, "u2")),
                    call("t1"),
                    result("t1", 400),
                ],
                budget: 500,
                kept: &["summary", "a1", "u2", "use:t1", "result:t1"],
                over: false,
            },
            Case {
                name: "a tool call and its result go together",
                messages: vec![
                    Message::user(words(50, "u1")),
                    call("t1"),
                    result("t1", 2000),
                    Message::assistant(words(10, "a1")),
                    Message::user(words(50, "u2")),
                ],
                budget: 400,
                kept: &["summary", "a1", "u2"],
                over: false,
            },
            Case {
                name: "a pair is never split: a small result keeps its call",
                messages: vec![
                    Message::user(words(2000, "u1")),
                    call("t1"),
                    result("t1", 10),
                    Message::user(words(50, "u2")),
                ],
                budget: 300,
                kept: &["summary", "use:t1", "result:t1", "u2"],
                over: false,
            },
        ];
        for c in cases {
            let (out, trimmed) = trim(&c.messages, c.budget);
            assert_eq!(tags(&out), c.kept, "{}", c.name);
            assert_eq!(trimmed.over_budget, c.over, "{}", c.name);
            assert_eq!(trimmed.kept_tokens, estimate_messages(&out), "{}", c.name);
            if !c.over {
                assert!(trimmed.kept_tokens <= c.budget, "{}", c.name);
            }
            // Never an orphaned tool result, and the first turn is the user's.
            assert_eq!(out[0].role, Role::User, "{}", c.name);
            assert!(!out[0].has_tool_results(), "{}", c.name);
        }
    }

    #[test]
    fn the_summary_says_what_was_dropped() {
        let messages = vec![
            Message::user(format!(
                "please file a bug about the cart total\n\n{}",
                "x".repeat(4000)
            )),
            Message::assistant("done"),
            Message::user("and its status?"),
        ];
        let (out, trimmed) = trim(&messages, 200);
        assert_eq!(trimmed.dropped_messages, 1);
        let line = match &out[0].content[0] {
            Block::Text(t) => t.clone(),
            other => panic!("{other:?}"),
        };
        assert!(line.contains(": 1 message, about 1"), "{line}");
        assert!(
            line.contains("It began: \"please file a bug about the cart total "),
            "{line}"
        );
        // As a turn of its own (before the assistant's), it fits the room kept for it.
        assert_eq!(estimate_message(&out[0]), estimate_text(&line) + 7);
        assert!(estimate_message(&out[0]) <= SUMMARY_TOKENS, "{line}");
        assert_eq!(out[1].text(), "done");
        assert_eq!(out.last().unwrap().text(), "and its status?");
    }
}
