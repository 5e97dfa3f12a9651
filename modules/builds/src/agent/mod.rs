//! Readers of a coding agent's standard output, one per `agent_format`.
//!
//! The output is hostile: the agent runs a model on a repository whose files anyone may have
//! written, so a line may be arbitrary bytes, invalid UTF-8, invalid JSON, JSON of an unknown
//! event type or of a known type with fields missing or of the wrong type, or one line of many
//! megabytes. A [`Reader`] takes the output as it arrives ([`Reader::feed`] with any chunk of
//! bytes, or [`Reader::feed_line`] with one line), turns each step into a short [`Progress`] (to be
//! redacted by the caller before it is shown), and at the end ([`Reader::finish`]) gives the
//! [`Outcome`], judged from what the agent reported (its result line), never from its exit code:
//! the research notes (llm-and-agents.md §2, §3) show Claude Code exiting 0 on an API error and 1
//! on success, and Codex exiting 0 after a failed turn.
//!
//! Memory is bounded: a line is kept up to [`Reader::with_line_cap`] bytes; the rest of it is read
//! and dropped, and the line counted in [`Outcome::lines_cut`] (it is then, almost always, not
//! valid JSON, and counted in [`Outcome::lines_ignored`] too). Progress texts and the final summary
//! are cut to a few hundred characters, control characters removed.

mod claude;
mod codex;
mod opencode;
mod text;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

/// The default cap on one line: Claude Code's `result` line carries the agent's whole final
/// message, which can be long, but not this long.
pub const DEFAULT_LINE_CAP: usize = 1024 * 1024;
/// A progress text is cut at this many characters.
pub const PROGRESS_MAX_CHARS: usize = 200;
/// The final summary (the agent's last message, or the error it reported) is cut at this many.
pub const SUMMARY_MAX_CHARS: usize = 4000;

/// How the agent's standard output is read (`[builds] agent_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentFormat {
    /// `claude -p … --output-format stream-json --verbose`.
    ClaudeStreamJson,
    /// `opencode run --format json …`.
    OpencodeJson,
    /// `codex exec --json …`.
    CodexJson,
    /// Anything else: each line is progress, and the output holds no verdict.
    Text,
}

impl AgentFormat {
    pub const ALL: [AgentFormat; 4] = [
        AgentFormat::ClaudeStreamJson,
        AgentFormat::OpencodeJson,
        AgentFormat::CodexJson,
        AgentFormat::Text,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentFormat::ClaudeStreamJson => "claude-stream-json",
            AgentFormat::OpencodeJson => "opencode-json",
            AgentFormat::CodexJson => "codex-json",
            AgentFormat::Text => "text",
        }
    }
}

impl fmt::Display for AgentFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `agent_format` that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown agent format `{0}`: use one of claude-stream-json, opencode-json, codex-json, text"
)]
pub struct UnknownFormat(pub String);

impl FromStr for AgentFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<AgentFormat, UnknownFormat> {
        AgentFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownFormat(s.to_owned()))
    }
}

/// What kind of step a [`Progress`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    /// The session began (model, session id).
    Started,
    /// The assistant said something.
    Text,
    /// The assistant used a tool (edit a file, run a command, ...).
    Tool,
    /// A tool call failed.
    ToolFailed,
    /// The agent reported an error it may recover from, or the final error.
    Error,
    /// A line of a `text` agent.
    Output,
}

/// One step of the agent, for people: short, single-line, free of control characters. It may
/// still hold a secret the agent printed: redact before showing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub kind: ProgressKind,
    pub text: String,
}

impl Progress {
    fn new(kind: ProgressKind, text: &str) -> Progress {
        Progress {
            kind,
            text: short(text, PROGRESS_MAX_CHARS),
        }
    }
}

/// Why an agent's run failed, as far as it reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// It stopped at its turn limit (Claude Code `error_max_turns`).
    MaxTurns,
    /// It stopped at its cost limit (Claude Code `error_max_budget_usd`).
    MaxBudget,
    /// It reported any other error (an API error, a failed turn, an execution error).
    Error,
}

/// The verdict on a run, from the agent's own report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The agent reported success.
    Success,
    /// The agent reported a failure; `detail` is what it said (cut, to be redacted).
    Failed { reason: FailReason, detail: String },
    /// The output ended without the line that reports the end: the agent crashed, hung and was
    /// killed, or was not the agent the format names.
    Crashed,
    /// The format carries no verdict (`text`): judge by the exit code and the changes.
    Unreported,
}

/// What a run came to, from its output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Turns, as the agent counted them (Claude Code `num_turns`; OpenCode steps; Codex turns).
    pub turns: Option<u32>,
    /// Cost in US dollars, where the agent reports it (Claude Code `total_cost_usd`, OpenCode's
    /// summed step costs).
    pub cost_usd: Option<f64>,
    /// The agent's session (to resume it), where reported.
    pub session_id: Option<String>,
    /// The agent's last message (or final error), cut to [`SUMMARY_MAX_CHARS`]; to be redacted.
    pub summary: Option<String>,
    /// Lines read.
    pub lines: u64,
    /// Lines longer than the cap, of which only the beginning was read.
    pub lines_cut: u64,
    /// Lines that were not JSON objects (JSON formats only).
    pub lines_ignored: u64,
}

/// Turns and cost so far ([`Reader::usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Usage {
    pub turns: Option<u32>,
    pub cost_usd: Option<f64>,
}

/// What every format keeps while reading; each format fills it from its own lines.
#[derive(Debug, Default)]
struct Report {
    /// `Some` once the line that ends a run has been read.
    verdict: Option<Verdict>,
    turns: Option<u32>,
    cost_usd: Option<f64>,
    session_id: Option<String>,
    summary: Option<String>,
    lines_ignored: u64,
}

/// One format's reading of one line.
trait Format: Send {
    fn line(&mut self, line: &[u8], report: &mut Report, out: &mut Vec<Progress>);

    /// The verdict when the output has ended; the default: a verdict line, or a crash.
    fn finish(&mut self, report: &mut Report) {
        if report.verdict.is_none() {
            report.verdict = Some(Verdict::Crashed);
        }
    }
}

/// Reads one agent's output, incrementally. Feed it what the process prints, in any chunks.
pub struct Reader {
    format: Box<dyn Format>,
    report: Report,
    line_cap: usize,
    /// The current line's bytes, up to `line_cap`.
    pending: Vec<u8>,
    /// The current line went over the cap: the rest of it, up to the next newline, is dropped.
    cutting: bool,
    lines: u64,
    lines_cut: u64,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("line_cap", &self.line_cap)
            .field("lines", &self.lines)
            .field("lines_cut", &self.lines_cut)
            .finish_non_exhaustive()
    }
}

impl Reader {
    pub fn new(format: AgentFormat) -> Reader {
        Reader::with_line_cap(format, DEFAULT_LINE_CAP)
    }

    /// A reader that keeps at most `line_cap` bytes of one line (at least 1).
    pub fn with_line_cap(format: AgentFormat, line_cap: usize) -> Reader {
        let format: Box<dyn Format> = match format {
            AgentFormat::ClaudeStreamJson => Box::new(claude::Claude),
            AgentFormat::OpencodeJson => Box::<opencode::Opencode>::default(),
            AgentFormat::CodexJson => Box::<codex::Codex>::default(),
            AgentFormat::Text => Box::new(text::Text),
        };
        Reader {
            format,
            report: Report::default(),
            line_cap: line_cap.max(1),
            pending: Vec::new(),
            cutting: false,
            lines: 0,
            lines_cut: 0,
        }
    }

    /// Reads a chunk of output (any split: lines are reassembled, at most `line_cap` bytes of each
    /// kept) and returns the steps of the lines it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Progress> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while !rest.is_empty() {
            let (piece, ended) = match rest.iter().position(|&b| b == b'\n') {
                Some(at) => (&rest[..at], true),
                None => (rest, false),
            };
            rest = if ended { &rest[piece.len() + 1..] } else { &[] };
            if !self.cutting {
                let room = self.line_cap - self.pending.len();
                if piece.len() > room {
                    self.pending.extend_from_slice(&piece[..room]);
                    self.cutting = true;
                } else {
                    self.pending.extend_from_slice(piece);
                }
            }
            if ended {
                self.end_line(&mut out);
            }
        }
        out
    }

    /// Reads one whole line (without its newline; one is not expected inside). A line over the cap
    /// is read up to it.
    pub fn feed_line(&mut self, line: &[u8]) -> Vec<Progress> {
        let mut out = Vec::new();
        if !self.pending.is_empty() || self.cutting {
            // A partial line fed before: it ends here.
            self.end_line(&mut out);
        }
        self.cutting = line.len() > self.line_cap;
        self.pending
            .extend_from_slice(&line[..line.len().min(self.line_cap)]);
        self.end_line(&mut out);
        out
    }

    /// Turns and cost reported so far, for budgets enforced while the agent runs (OpenCode reports
    /// both per step and Codex its turns; Claude Code reports both only in its result line, so
    /// give it `--max-turns` and `--max-budget-usd` itself).
    pub fn usage(&self) -> Usage {
        Usage {
            turns: self.report.turns,
            cost_usd: self.report.cost_usd,
        }
    }

    /// The output has ended (the process exited or was killed): reads a last line without a
    /// newline, and judges the run.
    pub fn finish(mut self) -> (Vec<Progress>, Outcome) {
        let mut out = Vec::new();
        if !self.pending.is_empty() || self.cutting {
            self.end_line(&mut out);
        }
        self.format.finish(&mut self.report);
        let report = self.report;
        let outcome = Outcome {
            verdict: report.verdict.unwrap_or(Verdict::Crashed),
            turns: report.turns,
            cost_usd: report.cost_usd,
            session_id: report.session_id,
            summary: report.summary,
            lines: self.lines,
            lines_cut: self.lines_cut,
            lines_ignored: report.lines_ignored,
        };
        (out, outcome)
    }

    fn end_line(&mut self, out: &mut Vec<Progress>) {
        self.lines += 1;
        if self.cutting {
            self.lines_cut += 1;
        }
        let mut line = std::mem::take(&mut self.pending);
        let text = line.strip_suffix(b"\r").unwrap_or(&line);
        self.format.line(text, &mut self.report, out);
        self.cutting = false;
        // The buffer is reused, unless a huge line grew it: that should not pin a megabyte per
        // build for the rest of the run.
        if line.capacity() <= 64 * 1024 {
            line.clear();
            self.pending = line;
        }
    }
}

/// A line as a JSON object, or `None` (counted) when it is not one. Blank lines are neither.
fn json_object(line: &[u8], report: &mut Report) -> Option<serde_json::Map<String, Value>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(map)) => Some(map),
        _ => {
            report.lines_ignored += 1;
            None
        }
    }
}

/// A string field, if it is one.
fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A count that fits a `u32`, if the field is one.
fn count_field(value: &Value, key: &str) -> Option<u32> {
    value
        .get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

/// A cost: a finite, non-negative number.
fn cost_field(value: &Value, key: &str) -> Option<f64> {
    value
        .get(key)
        .and_then(Value::as_f64)
        .filter(|c| c.is_finite() && *c >= 0.0)
}

/// `text` on one line, control characters (newlines included) turned into spaces, runs of
/// whitespace collapsed, cut at `max` characters with an ellipsis.
pub fn short(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    // Leading spaces (and control characters) are skipped as if one had been written already.
    let mut space = true;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' {
            if space {
                continue;
            }
            space = true;
        } else {
            space = false;
        }
        if count == max {
            out.truncate(out.trim_end().len());
            out.push('…');
            return out;
        }
        out.push(c);
        count += 1;
    }
    out.truncate(out.trim_end().len());
    out
}

/// What a tool call was about: the file, command or pattern in its input, if any.
fn tool_subject(input: Option<&Value>) -> Option<&str> {
    let input = input?;
    [
        "file_path",
        "filePath",
        "path",
        "command",
        "pattern",
        "url",
        "query",
        "description",
    ]
    .into_iter()
    .find_map(|key| str_field(input, key))
}

fn tool_text(name: &str, subject: Option<&str>) -> String {
    match subject {
        Some(subject) => format!("{name}: {subject}"),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests;
