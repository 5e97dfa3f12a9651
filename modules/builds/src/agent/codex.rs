//! `codex exec --json …`: one JSON object per line, by `type`.
//!
//! Shapes from the research notes (llm-and-agents.md §3, from openai/codex `docs/exec.md`):
//! `thread.started` (`thread_id`, the id to resume); `turn.started`;
//! `item.started|updated|completed` with `item.type` `agent_message` (`text`), `reasoning`,
//! `command_execution` (`command`, `exit_code`, `status`), `file_change` (`changes[].path`),
//! `mcp_tool_call`, `web_search`, `todo_list`, `error` (`message`); `turn.completed` (`usage`, no
//! cost); `turn.failed` (`error.message`); and a top-level `error`, which can be transient
//! ("Reconnecting…") and so does not end the run. The last `turn.completed` or `turn.failed` is the
//! verdict (Codex exits 0 after a failed turn); only completed items are shown, once each.

use serde_json::Value;

use super::{
    FailReason, Format, Progress, ProgressKind, Report, SUMMARY_MAX_CHARS, Verdict, json_object,
    short, str_field,
};

#[derive(Default)]
pub(super) struct Codex {
    turns: u32,
}

impl Format for Codex {
    fn line(&mut self, line: &[u8], report: &mut Report, out: &mut Vec<Progress>) {
        let Some(event) = json_object(line, report) else {
            return;
        };
        let event = Value::Object(event);
        match str_field(&event, "type") {
            Some("thread.started") => {
                let id = str_field(&event, "thread_id").unwrap_or("unknown");
                report.session_id = Some(short(id, 200));
                out.push(Progress::new(
                    ProgressKind::Started,
                    &format!("started (thread {})", short(id, 80)),
                ));
            }
            Some("item.completed") => {
                if let Some(item) = event.get("item") {
                    completed_item(item, report, out);
                }
            }
            Some("turn.completed") => {
                self.turns = self.turns.saturating_add(1);
                report.turns = Some(self.turns);
                report.verdict = Some(Verdict::Success);
            }
            Some("turn.failed") => {
                self.turns = self.turns.saturating_add(1);
                report.turns = Some(self.turns);
                let message = event
                    .get("error")
                    .and_then(|e| str_field(e, "message"))
                    .unwrap_or("the turn failed");
                out.push(Progress::new(ProgressKind::Error, message));
                let detail = short(message, SUMMARY_MAX_CHARS);
                report.summary = Some(detail.clone());
                report.verdict = Some(Verdict::Failed {
                    reason: FailReason::Error,
                    detail,
                });
            }
            Some("error") => {
                let message = str_field(&event, "message").unwrap_or("error");
                out.push(Progress::new(ProgressKind::Error, message));
            }
            _ => {}
        }
    }
}

fn completed_item(item: &Value, report: &mut Report, out: &mut Vec<Progress>) {
    match str_field(item, "type") {
        Some("agent_message") => {
            if let Some(text) = str_field(item, "text")
                && !text.trim().is_empty()
            {
                out.push(Progress::new(ProgressKind::Text, text));
                report.summary = Some(short(text, SUMMARY_MAX_CHARS));
            }
        }
        Some("command_execution") => {
            let command = str_field(item, "command").unwrap_or("a command");
            let exit_code = item.get("exit_code").and_then(Value::as_i64);
            let failed =
                str_field(item, "status") == Some("failed") || exit_code.is_some_and(|c| c != 0);
            let kind = if failed {
                ProgressKind::ToolFailed
            } else {
                ProgressKind::Tool
            };
            out.push(Progress::new(kind, &format!("command: {command}")));
        }
        Some("file_change") => {
            let paths: Vec<&str> = item
                .get("changes")
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(|c| str_field(c, "path")).collect())
                .unwrap_or_default();
            out.push(Progress::new(
                ProgressKind::Tool,
                &format!("edit: {}", paths.join(", ")),
            ));
        }
        Some("mcp_tool_call") => {
            let tool = str_field(item, "tool").unwrap_or("tool");
            let server = str_field(item, "server").unwrap_or("mcp");
            out.push(Progress::new(
                ProgressKind::Tool,
                &format!("{server}: {tool}"),
            ));
        }
        Some("web_search") => {
            let query = str_field(item, "query").unwrap_or("");
            out.push(Progress::new(
                ProgressKind::Tool,
                &format!("web search: {query}"),
            ));
        }
        Some("error") => {
            let message = str_field(item, "message").unwrap_or("error");
            out.push(Progress::new(ProgressKind::Error, message));
        }
        _ => {}
    }
}
