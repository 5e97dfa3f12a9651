//! The agent as the Slack module's [`Responder`]: a mention in a tenant's thread becomes a
//! [`RunInput`] (the thread as the Slack module stored it, whether the author is a writer, what
//! the agent did there before), and the run's outcome a reply with a link to every write.
//!
//! Per run, the tools are wrapped by [`ThreadTools`], which ties writes to the conversation: an
//! issue filed from a thread that is no item's becomes that thread's issue (the adoption is
//! recorded before the issue is created, so a Slack pass that sees the issue first still finds
//! the thread), and a build delegated from a thread is narrated there ([`crate::narrate`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use productbuilder_llm::LlmClient;
use productbuilder_slack::respond::ReplyFuture;
use productbuilder_slack::{Conversation, Link, Reply, Responder, conversation};
use productbuilder_store::Store;
use tokio_util::sync::CancellationToken;

use crate::run::{Agent, Limits, RunInput, ThreadMessage};
use crate::tools::{Action, Call, ToolError, ToolFuture, Tools};
use crate::trace::Traces;

/// The answer to a mention whose first answer was interrupted (a crash or a restart while the
/// agent worked): what it did then is not known here, so nothing is done again.
pub const INTERRUPTED: &str = "I was interrupted while working on this (productbuilder restarted). \
I won't redo it blindly, in case part of it was done: check the repository, then ask me again if \
something is missing.";

/// The agent answering Slack mentions.
pub struct AgentResponder {
    pub llm: Arc<LlmClient>,
    pub tools: Arc<dyn Tools>,
    pub traces: Traces,
    /// The daemon's database (the conversations' links live in the Slack module's tables).
    pub store: Store,
    /// GitHub's web origin (`https://github.com`), for links to what was written.
    pub web: String,
    pub limits: Limits,
}

/// The Slack link for a write.
pub fn link(action: &Action, repo: &str, web: &str) -> Link {
    match action {
        Action::Created { number, url } => Link {
            label: format!("#{number} created"),
            url: Some(url.clone()),
        },
        Action::Commented { number, url } => Link {
            label: format!("commented on #{number}"),
            url: Some(url.clone()),
        },
        Action::Closed { number } => Link {
            label: format!("#{number} closed"),
            url: Some(format!("{web}/{repo}/issues/{number}")),
        },
        Action::BuildStarted { issue, build } => Link {
            label: format!("build {build} started for #{issue}"),
            url: None,
        },
    }
}

impl Responder for AgentResponder {
    fn respond<'a>(
        &'a self,
        conversation: &'a Conversation,
        cancel: &'a CancellationToken,
    ) -> ReplyFuture<'a> {
        Box::pin(async move {
            if conversation.resumed {
                return Reply {
                    text: INTERRUPTED.into(),
                    ..Reply::default()
                };
            }
            let tools = Arc::new(ThreadTools {
                inner: self.tools.clone(),
                store: self.store.clone(),
                channel: conversation.channel.clone(),
                thread_ts: conversation.thread_ts.clone(),
                may_adopt: AtomicBool::new(conversation.item.is_none()),
            });
            let agent =
                Agent::new(self.llm.clone(), tools, self.traces.clone()).with_limits(self.limits);
            let input = RunInput {
                repo: conversation.repo.clone(),
                channel: conversation.channel.clone(),
                thread_ts: conversation.thread_ts.clone(),
                issue: conversation.item,
                messages: conversation
                    .messages
                    .iter()
                    .map(|m| ThreadMessage {
                        user: m.user.clone(),
                        from_bot: m.from_bot,
                        text: m.text.clone(),
                    })
                    .collect(),
                author_is_writer: conversation.author_is_writer,
                summary: conversation.summary.clone(),
            };
            let done = agent.run(&input, cancel).await;
            let summary = (!done.actions.is_empty()).then(|| {
                done.actions
                    .iter()
                    .map(Action::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            Reply {
                text: done.reply,
                links: done
                    .actions
                    .iter()
                    .map(|a| link(a, &conversation.repo, &self.web))
                    .collect(),
                summary,
            }
        })
    }
}

/// The tools of one run in one thread (see the module's docs).
struct ThreadTools {
    inner: Arc<dyn Tools>,
    store: Store,
    channel: String,
    thread_ts: String,
    /// The thread is no item's yet: the first issue filed from it becomes its issue.
    may_adopt: AtomicBool,
}

impl Tools for ThreadTools {
    fn run<'a>(&'a self, repo: &'a str, call: &'a Call) -> ToolFuture<'a> {
        Box::pin(async move {
            let adopting = match call {
                Call::CreateIssue { title, .. } if self.may_adopt.swap(false, Ordering::SeqCst) => {
                    conversation::intend_adoption(
                        &self.store,
                        repo,
                        &self.channel,
                        &self.thread_ts,
                        title,
                    )
                    .await
                    .map_err(|e| ToolError::Unavailable(format!("the database: {e}")))?;
                    true
                }
                _ => false,
            };
            let output = self.inner.run(repo, call).await?;
            match &output.action {
                Some(Action::Created { number, .. }) if adopting => {
                    // The issue exists: a failure here is healed by the Slack pass, which adopts
                    // by the recorded intent.
                    if let Err(e) = conversation::adopt(
                        &self.store,
                        repo,
                        *number,
                        &self.channel,
                        &self.thread_ts,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, number, "agent: linking the new issue to its thread waits for the next Slack pass");
                    }
                }
                Some(Action::BuildStarted { issue, build }) => {
                    // The narrator follows the build in this thread from now on. Without the
                    // record the build still runs; its thread then only gets the Slack module's
                    // status line.
                    if let Err(e) = crate::narrate::record_delegated(
                        &self.store,
                        *build,
                        repo,
                        *issue,
                        &self.channel,
                        &self.thread_ts,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, build, "agent: the build will not be narrated in its thread");
                    }
                }
                _ => {}
            }
            Ok(output)
        })
    }
}
