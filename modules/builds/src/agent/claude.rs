//! `claude -p … --output-format stream-json --verbose`: one JSON object per line, by `type`.
//!
//! Shapes from the research notes (llm-and-agents.md §2, from the CLI reference, the Agent SDK's
//! `message_parser.py` and real captures): `system`/`init` first (`session_id`, `model`);
//! `assistant` with `message.content[]` of `text`, `thinking` and `tool_use` (`name`, `input`);
//! `user` with `tool_result` blocks (`is_error`); `result` last, with `subtype`
//! (`success`, `error_max_turns`, `error_max_budget_usd`, `error_during_execution`, ...),
//! `is_error`, `num_turns`, `total_cost_usd`, `result` (the final message) and `errors`. Anything
//! else (`rate_limit_event`, `stream_event`, `keep_alive`, hook events) is skipped.

use serde_json::Value;

use super::{
    FailReason, Format, Progress, ProgressKind, Report, SUMMARY_MAX_CHARS, Verdict, cost_field,
    count_field, json_object, short, str_field, tool_subject, tool_text,
};

pub(super) struct Claude;

impl Format for Claude {
    fn line(&mut self, line: &[u8], report: &mut Report, out: &mut Vec<Progress>) {
        let Some(event) = json_object(line, report) else {
            return;
        };
        let event = Value::Object(event);
        match str_field(&event, "type") {
            Some("system") if str_field(&event, "subtype") == Some("init") => {
                if let Some(id) = str_field(&event, "session_id") {
                    report.session_id = Some(short(id, 200));
                }
                let model = str_field(&event, "model").unwrap_or("unknown model");
                out.push(Progress::new(
                    ProgressKind::Started,
                    &format!("started ({model})"),
                ));
            }
            Some("assistant") => {
                for block in content(&event) {
                    match str_field(block, "type") {
                        Some("text") => {
                            if let Some(text) = str_field(block, "text")
                                && !text.trim().is_empty()
                            {
                                out.push(Progress::new(ProgressKind::Text, text));
                            }
                        }
                        Some("tool_use") => {
                            let name = str_field(block, "name").unwrap_or("tool");
                            let subject = tool_subject(block.get("input"));
                            out.push(Progress::new(ProgressKind::Tool, &tool_text(name, subject)));
                        }
                        _ => {}
                    }
                }
            }
            Some("user") => {
                for block in content(&event) {
                    if str_field(block, "type") == Some("tool_result")
                        && block.get("is_error").and_then(Value::as_bool) == Some(true)
                    {
                        let text = match block.get("content") {
                            Some(Value::String(s)) => s.as_str(),
                            _ => "a tool call failed",
                        };
                        out.push(Progress::new(ProgressKind::ToolFailed, text));
                    }
                }
            }
            Some("result") => result(&event, report, out),
            _ => {}
        }
    }
}

/// The content blocks of an `assistant` or `user` event (none when the shape is wrong).
fn content(event: &Value) -> &[Value] {
    event
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The `result` line. `subtype: "success"` with `is_error: true` is an API failure
/// (anthropics/claude-code#79500, in the notes): a failure.
fn result(event: &Value, report: &mut Report, out: &mut Vec<Progress>) {
    report.turns = count_field(event, "num_turns").or(report.turns);
    report.cost_usd = cost_field(event, "total_cost_usd").or(report.cost_usd);
    if let Some(id) = str_field(event, "session_id") {
        report.session_id = Some(short(id, 200));
    }
    let subtype = str_field(event, "subtype").unwrap_or("");
    let is_error = event.get("is_error").and_then(Value::as_bool);
    let message = str_field(event, "result").filter(|m| !m.trim().is_empty());
    let errors: Vec<&str> = event
        .get("errors")
        .and_then(Value::as_array)
        .map(|errors| errors.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let detail = if errors.is_empty() {
        message.map(str::to_owned)
    } else {
        Some(errors.join("; "))
    };
    let verdict = match (subtype, is_error) {
        ("success", Some(false) | None) => Verdict::Success,
        _ => {
            let reason = match subtype {
                "error_max_turns" => FailReason::MaxTurns,
                "error_max_budget_usd" => FailReason::MaxBudget,
                _ => FailReason::Error,
            };
            let detail = detail.clone().unwrap_or_else(|| match subtype {
                "" => "the result line has no subtype".to_owned(),
                subtype => subtype.to_owned(),
            });
            Verdict::Failed {
                reason,
                detail: short(&detail, SUMMARY_MAX_CHARS),
            }
        }
    };
    if let Verdict::Failed { detail, .. } = &verdict {
        out.push(Progress::new(ProgressKind::Error, detail));
    }
    report.summary = message
        .or(detail.as_deref())
        .map(|m| short(m, SUMMARY_MAX_CHARS));
    report.verdict = Some(verdict);
}
