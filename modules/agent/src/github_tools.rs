//! [`Tools`] over the daemon's real parts: GitHub (only `modules/github` talks to it), the
//! poller's `issues` table, the previews' rows and logs, and the build queue.
//!
//! Every comment the agent writes carries [`crate::tools::AGENT_MARKER`] so the Slack module
//! does not mirror it back. GitHub's errors reach the model as short text, never a token (the
//! client's errors carry none).

use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use productbuilder_builds::{BuildId, BuildSpec, Queue};
use productbuilder_github::{GithubClient, GithubError};
use productbuilder_preview::Previews;
use productbuilder_store::Store;
use productbuilder_store::rusqlite::params;
use serde_json::json;

use crate::sanitize::bound;
use crate::tools::{Action, Call, Output, ToolError, ToolFuture, Tools, marked};

/// The most issues a search answers.
pub const MAX_SEARCH_RESULTS: u32 = 20;
/// How long reading a preview's logs may take.
const LOGS_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a preview's logs given to the model, in characters.
const MAX_LOG_CHARS: usize = 8000;
/// The lines of logs read when the model does not say.
const DEFAULT_TAIL: u64 = 50;

/// The tools of the daemon.
#[derive(Clone)]
pub struct GithubTools {
    pub client: GithubClient,
    /// The daemon's database: the poller's `issues` table, the previews' rows.
    pub store: Store,
    /// `None`: builds are off (no `[builds]`), `delegate_build` is refused.
    pub queue: Option<Queue>,
    /// `None`: previews are not run here, their logs cannot be read.
    pub previews: Option<Previews>,
}

fn github(e: GithubError) -> ToolError {
    match e.status() {
        Some(403 | 404 | 410 | 422) => ToolError::Refused(format!("GitHub refused: {e}")),
        _ => ToolError::Unavailable(format!("GitHub: {e}")),
    }
}

fn store(e: impl std::fmt::Display) -> ToolError {
    ToolError::Unavailable(format!("the database: {e}"))
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

impl GithubTools {
    async fn answer(&self, repo: &str, call: &Call) -> Result<Output, ToolError> {
        match call {
            Call::CreateIssue { title, body } => {
                let w = self
                    .client
                    .create_issue(repo, title, &marked(body))
                    .await
                    .map_err(github)?;
                Ok(Output::wrote(
                    format!("created #{}: {}", w.number, w.html_url),
                    Action::Created {
                        number: w.number,
                        url: w.html_url,
                    },
                ))
            }
            Call::Comment { number, body } => {
                let w = self
                    .client
                    .create_comment(repo, *number, &marked(body))
                    .await
                    .map_err(|e| match e.status() {
                        Some(404) => ToolError::NotFound(*number),
                        _ => github(e),
                    })?;
                Ok(Output::wrote(
                    format!("commented on #{number}: {}", w.html_url),
                    Action::Commented {
                        number: *number,
                        url: w.html_url,
                    },
                ))
            }
            Call::CloseIssue { number, reason } => {
                let issue = self
                    .client
                    .issue(repo, *number)
                    .await
                    .map_err(github)?
                    .ok_or(ToolError::NotFound(*number))?;
                if issue.is_pull {
                    return Err(ToolError::Refused(format!(
                        "#{number} is a pull request; only issues are closed here"
                    )));
                }
                if !reason.trim().is_empty() {
                    self.client
                        .create_comment(repo, *number, &marked(&format!("Closing: {reason}")))
                        .await
                        .map_err(github)?;
                }
                self.client
                    .close_issue(repo, *number)
                    .await
                    .map_err(github)?;
                Ok(Output::wrote(
                    format!("closed #{number}"),
                    Action::Closed { number: *number },
                ))
            }
            Call::DelegateBuild { issue, prompt } => {
                let Some(queue) = &self.queue else {
                    return Err(ToolError::Refused(
                        "builds are off on this daemon ([builds] is not configured)".into(),
                    ));
                };
                let mut spec = BuildSpec::new(prompt.clone());
                spec.issue = Some(*issue);
                let queued = queue
                    .enqueue(repo, Some(*issue), spec, Utc::now())
                    .await
                    .map_err(|e| ToolError::Refused(format!("the build was not queued: {e}")))?;
                let id = queued.build.id.0 as u64;
                let text = if queued.created {
                    format!("build {id} queued for #{issue}")
                } else {
                    format!(
                        "#{issue} already has an active build ({id}, {}); no new one was started",
                        queued.build.status
                    )
                };
                Ok(Output {
                    text,
                    action: queued.created.then_some(Action::BuildStarted {
                        issue: *issue,
                        build: id,
                    }),
                })
            }
            Call::SearchIssues { query } => self.search(repo, query).await,
            Call::GetIssue { number } => {
                let i = self
                    .client
                    .issue(repo, *number)
                    .await
                    .map_err(github)?
                    .ok_or(ToolError::NotFound(*number))?;
                Ok(Output::read(format!(
                    "#{} {} ({}{}), by {}, labels [{}]\n{}\n\n{}",
                    i.number,
                    i.title,
                    i.state,
                    if i.is_pull { ", a pull request" } else { "" },
                    i.author,
                    i.labels.join(", "),
                    i.html_url,
                    i.body
                )))
            }
            Call::GetPullRequest { number } => {
                let p = self
                    .client
                    .pull(repo, *number)
                    .await
                    .map_err(github)?
                    .ok_or(ToolError::NotFound(*number))?;
                Ok(Output::read(format!(
                    "#{} {} ({}{}{}), by {}, {} → {} at {}\n{}\n\n{}",
                    p.number,
                    p.title,
                    p.state,
                    if p.merged { ", merged" } else { "" },
                    if p.draft { ", draft" } else { "" },
                    p.author,
                    p.head_ref,
                    p.base_ref,
                    p.head_sha,
                    p.html_url,
                    p.body
                )))
            }
            Call::ReadFile { path, git_ref } => {
                let file = self
                    .client
                    .file(repo, path, git_ref.as_deref())
                    .await
                    .map_err(github)?
                    .map_err(|e| ToolError::Refused(e.to_string()))?
                    .ok_or_else(|| ToolError::Refused(format!("there is no file {path:?}")))?;
                let cut = if file.truncated {
                    format!(" (only the first {} bytes)", file.text.len())
                } else {
                    String::new()
                };
                Ok(Output::read(format!(
                    "{} ({} bytes){cut}\n{}",
                    file.path, file.size, file.text
                )))
            }
            Call::PreviewStatus { number } => {
                let repo_owned = repo.to_owned();
                let number = *number;
                let row = self
                    .store
                    .read(move |c| productbuilder_preview::db::row(c, &repo_owned, number))
                    .await
                    .map_err(store)?;
                Ok(Output::read(match row {
                    Some(row) => pretty(&serde_json::to_value(&row).unwrap_or_default()),
                    None => format!("#{number} has no preview"),
                }))
            }
            Call::PreviewLogs { number, tail } => {
                let Some(previews) = &self.previews else {
                    return Err(ToolError::Unavailable(
                        "previews are not run by this daemon".into(),
                    ));
                };
                let tail = tail.unwrap_or(DEFAULT_TAIL) as usize;
                let mut stream = previews
                    .logs(repo, *number, tail, false)
                    .await
                    .map_err(|e| ToolError::Refused(e.to_string()))?;
                let mut text = String::new();
                let read = tokio::time::timeout(LOGS_TIMEOUT, async {
                    while let Some(chunk) = stream.next().await {
                        match chunk {
                            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                            Err(e) => return Err(e.to_string()),
                        }
                        if text.len() > MAX_LOG_CHARS * 4 {
                            break;
                        }
                    }
                    Ok(())
                })
                .await;
                match read {
                    Ok(Ok(())) | Err(_) => Ok(Output::read(bound(&text, MAX_LOG_CHARS))),
                    Ok(Err(e)) => Err(ToolError::Unavailable(format!("the logs: {e}"))),
                }
            }
            Call::BuildStatus { id, issue } => {
                let Some(queue) = &self.queue else {
                    return Ok(Output::read(
                        "builds are off on this daemon ([builds] is not configured)",
                    ));
                };
                let build = match (id, issue) {
                    (Some(id), _) => queue
                        .get(BuildId(*id as i64))
                        .await
                        .map_err(store)?
                        .filter(|b| b.repo == repo),
                    (None, Some(issue)) => queue
                        .list(repo, 200)
                        .await
                        .map_err(store)?
                        .into_iter()
                        .find(|b| b.number == Some(*issue)),
                    (None, None) => None,
                };
                let Some(b) = build else {
                    return Ok(Output::read("no such build"));
                };
                let result = b.result.as_ref();
                Ok(Output::read(pretty(&json!({
                    "id": b.id.0,
                    "issue": b.number,
                    "status": b.status.to_string(),
                    "step": b.step.map(|s| s.to_string()),
                    "error": b.error,
                    "pr_url": result.and_then(|r| r.pr_url.clone()),
                    "preview_url": result.and_then(|r| r.preview_url.clone()),
                    "branch": result.and_then(|r| r.branch.clone()),
                    "created_at": b.created_at.to_rfc3339(),
                }))))
            }
        }
    }

    /// Issues and pull requests whose title holds every word of `query` (the poller's table:
    /// no GitHub call), newest first.
    async fn search(&self, repo: &str, query: &str) -> Result<Output, ToolError> {
        let words: Vec<String> = query
            .split_whitespace()
            .map(|w| w.to_lowercase())
            .take(8)
            .collect();
        let repo = repo.to_owned();
        let rows: Vec<(i64, String, String, bool)> = self
            .store
            .read(move |c| {
                let mut stmt = c.prepare(
                    "SELECT number, title, state, is_pull FROM issues WHERE repo = ?1 \
                     ORDER BY updated_at DESC",
                )?;
                stmt.query_map(params![repo], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? != 0))
                })?
                .collect()
            })
            .await
            .map_err(store)?;
        let found: Vec<String> = rows
            .into_iter()
            .filter(|(_, title, _, _)| {
                let title = title.to_lowercase();
                words.iter().all(|w| title.contains(w.as_str()))
            })
            .take(MAX_SEARCH_RESULTS as usize)
            .map(|(n, title, state, is_pull)| {
                let kind = if is_pull { "pull request" } else { "issue" };
                format!("#{n} {title} ({kind}, {state})")
            })
            .collect();
        Ok(Output::read(if found.is_empty() {
            "nothing found".to_owned()
        } else {
            found.join("\n")
        }))
    }
}

impl Tools for GithubTools {
    fn run<'a>(&'a self, repo: &'a str, call: &'a Call) -> ToolFuture<'a> {
        Box::pin(self.answer(repo, call))
    }
}
