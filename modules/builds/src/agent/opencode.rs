//! `opencode run --format json …`: one JSON object per line, `{"type", "timestamp", "sessionID",
//! …}`.
//!
//! Shapes from the research notes (llm-and-agents.md §3, from `packages/opencode/src/cli/cmd/run.ts`
//! and an OpenCode 1.18.31 fixture): `step_start`; `text` (`part.text`, when a text part ends);
//! `reasoning`; `tool_use` (`part.tool`, `part.state.status` `completed|error`, `part.state.input`,
//! `part.state.title`); `step_finish` (`part.reason` `stop|tool-calls`, `part.cost`,
//! `part.tokens`); `error` (`error.name`, `error.data.message`); and in current builds a final
//! `done` (`reason: "idle"`). OpenCode has no single result line: the run succeeded when it ended a
//! step with `reason: "stop"` or said `done`, and reported no `error`; a run that stopped printing
//! before either (it is known to hang on provider errors) crashed.

use serde_json::Value;

use super::{
    FailReason, Format, Progress, ProgressKind, Report, SUMMARY_MAX_CHARS, Verdict, cost_field,
    json_object, short, str_field, tool_subject, tool_text,
};

#[derive(Default)]
pub(super) struct Opencode {
    started: bool,
    steps: u32,
    stopped: bool,
    error: Option<String>,
}

impl Format for Opencode {
    fn line(&mut self, line: &[u8], report: &mut Report, out: &mut Vec<Progress>) {
        let Some(event) = json_object(line, report) else {
            return;
        };
        let event = Value::Object(event);
        if !self.started
            && let Some(id) = str_field(&event, "sessionID")
        {
            self.started = true;
            report.session_id = Some(short(id, 200));
            out.push(Progress::new(
                ProgressKind::Started,
                &format!("started (session {})", short(id, 80)),
            ));
        }
        let part = event.get("part").unwrap_or(&Value::Null);
        match str_field(&event, "type") {
            Some("text") => {
                if let Some(text) = str_field(part, "text")
                    && !text.trim().is_empty()
                {
                    out.push(Progress::new(ProgressKind::Text, text));
                    report.summary = Some(short(text, SUMMARY_MAX_CHARS));
                }
            }
            Some("tool_use") => {
                let name = str_field(part, "tool").unwrap_or("tool");
                let state = part.get("state").unwrap_or(&Value::Null);
                let subject = tool_subject(state.get("input")).or(str_field(state, "title"));
                let kind = if str_field(state, "status") == Some("error") {
                    ProgressKind::ToolFailed
                } else {
                    ProgressKind::Tool
                };
                out.push(Progress::new(kind, &tool_text(name, subject)));
            }
            Some("step_finish") => {
                self.steps = self.steps.saturating_add(1);
                report.turns = Some(self.steps);
                if let Some(cost) = cost_field(part, "cost") {
                    report.cost_usd = Some(report.cost_usd.unwrap_or(0.0) + cost);
                }
                self.stopped = str_field(part, "reason") == Some("stop");
            }
            Some("done") => self.stopped = true,
            Some("error") => {
                let error = event.get("error").unwrap_or(&Value::Null);
                let message = error
                    .get("data")
                    .and_then(|d| str_field(d, "message"))
                    .or(str_field(error, "message"))
                    .or(str_field(error, "name"))
                    .unwrap_or("the agent reported an error");
                out.push(Progress::new(ProgressKind::Error, message));
                self.error = Some(short(message, SUMMARY_MAX_CHARS));
            }
            _ => {}
        }
    }

    fn finish(&mut self, report: &mut Report) {
        report.verdict = Some(match (&self.error, self.stopped) {
            (Some(detail), _) => {
                report.summary = Some(detail.clone());
                Verdict::Failed {
                    reason: FailReason::Error,
                    detail: detail.clone(),
                }
            }
            (None, true) => Verdict::Success,
            (None, false) => Verdict::Crashed,
        });
    }
}
