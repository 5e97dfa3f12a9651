//! The Agent step: the configured argv with the prompt as one argument, in the checkout, with an
//! environment of the allowlist only (never the GitHub token), killed with its whole process group
//! on cancel, at `max_duration`, or past `max_turns`/`max_cost_usd`. Its output is read line by
//! line as it arrives: the reader of `agent_format` turns it into progress, every line goes to the
//! transcript (redacted), and the verdict comes from the agent's result line, not its exit code.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use productbuilder_process::{Command, Error as ProcessError, Stream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::state::{AgentDone, AgentEnd};
use super::{BuildEvent, EventKind};
use crate::agent::{FailReason, Reader, Verdict};
use crate::config::BuildsConfig;
use crate::records::BuildId;
use crate::transcript::Transcript;

/// Standard output kept per line: the agent's final message can be long.
const AGENT_LINE_CAP: usize = 1024 * 1024;
/// Progress lines a build keeps for its comment.
const PROGRESS_KEPT: usize = 50;

/// One run of the agent.
pub(crate) struct AgentRun<'a> {
    pub id: BuildId,
    pub repo: std::sync::Arc<str>,
    pub config: &'a BuildsConfig,
    pub argv: Vec<String>,
    pub checkout: &'a Path,
    /// Name and value of every variable the agent gets.
    pub env: Vec<(OsString, OsString)>,
    /// Redacted from what it prints.
    pub secrets: Vec<String>,
    /// The build's: cancelled on request (or a lost lease).
    pub cancel: CancellationToken,
    pub events: &'a broadcast::Sender<BuildEvent>,
}

impl AgentRun<'_> {
    pub async fn run(self, transcript: &mut Transcript, progress: &mut Vec<String>) -> AgentDone {
        let config = self.config;
        // Stopped by the build's cancel, or by us when a budget is spent.
        let stop = self.cancel.child_token();
        let (lines, mut receive) = mpsc::unbounded_channel::<(Stream, String)>();
        let program = self.argv[0].clone();
        let shown_name = Path::new(&program)
            .file_name()
            .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned());
        let mut command = Command::new(&program, format!("agent {shown_name}"))
            .args(&self.argv[1..])
            .current_dir(self.checkout)
            .stdout_cap(AGENT_LINE_CAP)
            .deadline(config.max_duration)
            .cancel_on(stop.clone())
            .on_line(move |stream, line| {
                // Unbounded, but drained as fast as lines arrive by the loop below.
                let _ = lines.send((stream, line.to_owned()));
            });
        for (name, value) in self.env {
            command = command.env(name, value);
        }
        for secret in &self.secrets {
            command = command.redact(secret.clone());
        }
        transcript.note(&format!(
            "agent started: {shown_name} ({} arguments), at most {}",
            self.argv.len() - 1,
            humantime::format_duration(config.max_duration)
        ));

        let run = async move {
            let result = command.run().await;
            // The observer (and with it the last sender) goes with the command: the loop ends.
            drop(command);
            result
        };
        let mut reader = Reader::with_line_cap(config.agent_format, AGENT_LINE_CAP);
        let mut budget: Option<String> = None;
        let events = self.events;
        let (id, repo) = (self.id, self.repo.clone());
        let show = |text: String, progress: &mut Vec<String>| {
            let _ = events.send(BuildEvent {
                id,
                repo: repo.clone(),
                kind: EventKind::Progress(text.clone()),
            });
            progress.push(text);
            if progress.len() > PROGRESS_KEPT {
                progress.remove(0);
            }
        };
        let read = async {
            while let Some((stream, line)) = receive.recv().await {
                match stream {
                    Stream::Stdout => {
                        transcript.line(&line);
                        for step in reader.feed_line(line.as_bytes()) {
                            show(transcript.redacted(&step.text), progress);
                        }
                        if budget.is_none()
                            && let Some(why) = over_budget(config, reader.usage())
                        {
                            transcript.note(&format!("stopping the agent: {why}"));
                            budget = Some(why);
                            stop.cancel();
                        }
                    }
                    Stream::Stderr => transcript.line(&format!("stderr: {line}")),
                }
            }
        };
        let (result, ()) = tokio::join!(run, read);
        let (last, outcome) = reader.finish();
        for step in last {
            show(transcript.redacted(&step.text), progress);
        }
        let summary = outcome.summary.as_deref().map(|s| transcript.redacted(s));
        let end = judge(
            config,
            &result,
            budget,
            self.cancel.is_cancelled(),
            &outcome.verdict,
        );
        transcript.note(&format!("agent ended: {}", describe(&end)));
        AgentDone {
            end,
            turns: outcome.turns,
            cost_usd: outcome.cost_usd,
            summary,
        }
    }
}

/// Why the agent must stop now, if a budget is spent.
fn over_budget(config: &BuildsConfig, usage: crate::agent::Usage) -> Option<String> {
    if let (Some(max), Some(turns)) = (config.max_turns, usage.turns)
        && turns > max
    {
        return Some(format!("it took {turns} turns, past max_turns ({max})"));
    }
    if let (Some(max), Some(cost)) = (config.max_cost_usd, usage.cost_usd)
        && cost > max
    {
        return Some(format!("it cost ${cost:.2}, past max_cost_usd (${max:.2})"));
    }
    None
}

/// How the run ended: from what the agent reported, unless it was stopped.
fn judge(
    config: &BuildsConfig,
    result: &Result<productbuilder_process::Output, ProcessError>,
    budget: Option<String>,
    cancelled: bool,
    verdict: &Verdict,
) -> AgentEnd {
    let partial = |reason: String| AgentEnd::Partial { reason };
    match result {
        Err(ProcessError::Cancelled { .. }) if cancelled => AgentEnd::Cancelled,
        Err(ProcessError::Cancelled { .. }) => partial(format!(
            "the agent was stopped: {}",
            budget.unwrap_or_else(|| "a budget was spent".into())
        )),
        Err(ProcessError::Deadline { .. }) => partial(format!(
            "the agent ran past max_duration ({}) and was stopped",
            humantime::format_duration(round(config.max_duration))
        )),
        Err(e @ (ProcessError::NotFound { .. } | ProcessError::Spawn { .. })) => AgentEnd::Failed {
            reason: format!("the agent could not be started: {e}"),
        },
        Err(ProcessError::Io { .. }) | Ok(_) | Err(ProcessError::Exit { .. }) => match verdict {
            Verdict::Success => AgentEnd::Success,
            Verdict::Failed { reason, detail } => partial(match reason {
                FailReason::MaxTurns => format!("the agent stopped at its turn limit: {detail}"),
                FailReason::MaxBudget => format!("the agent stopped at its cost limit: {detail}"),
                FailReason::Error => format!("the agent reported an error: {detail}"),
            }),
            Verdict::Crashed => partial(format!(
                "the agent ended without reporting a result ({})",
                exit(result)
            )),
            Verdict::Unreported => match result {
                Ok(_) => AgentEnd::Success,
                _ => partial(format!("the agent {}", exit(result))),
            },
        },
    }
}

fn exit(result: &Result<productbuilder_process::Output, ProcessError>) -> String {
    match result {
        Ok(_) => "exited with code 0".into(),
        Err(ProcessError::Exit { ended, .. }) => ended.to_string(),
        Err(e) => e.to_string(),
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

pub(crate) fn describe(end: &AgentEnd) -> String {
    match end {
        AgentEnd::Success => "it reported success".into(),
        AgentEnd::Partial { reason } | AgentEnd::Failed { reason } => reason.clone(),
        AgentEnd::Cancelled => "cancelled on request".into(),
    }
}
