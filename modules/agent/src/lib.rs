//! The agent's core (issue 12), without its Slack wiring: a router and specialists that act on
//! GitHub, the previews and the builds through typed tools.
//!
//! # Brief overview
//! - [`Agent::run`] answers a thread's newest message ([`RunInput`]: the repository, the
//!   thread's messages with their authors, whether the author is a writer) with a
//!   [`RunOutcome`] (the reply to post, the writes done, the trace's id). The flow is in [`run`].
//! - [`tools`]: the contract's tools ([`ToolName`], their schemas, [`Call::parse`] reading
//!   hostile arguments), the executor trait [`Tools`] and a recording [`FakeTools`].
//! - [`sanitize`]: untrusted text as quoted data (pure).
//! - [`claims`]: no claimed action without its tool call (pure).
//! - [`trace`]: every run in SQLite, pruned by `[llm] trace_retention`; [`routes`] serves
//!   `GET /agent/runs/{id}`.
//!
//! - [`GithubTools`]: the tools over the daemon's GitHub client, database, build queue and
//!   previews.
//! - [`narrate`]: the builds the agent delegated from a thread ([`record_delegated`]) told in
//!   that thread (finished, pull request, preview ready with what it answered, or failed), and a
//!   failed preview fixed by a follow-up build within `[builds] max_fix_attempts`.
//!
//! # Example: answering a mention
//! ```no_run
//! use std::sync::Arc;
//! use productbuilder_agent::{Agent, GithubTools, RunInput, ThreadMessage, Traces};
//! # async fn demo(llm: productbuilder_llm::LlmClient, tools: GithubTools,
//! #               store: productbuilder_store::Store) {
//! let agent = Agent::new(Arc::new(llm), Arc::new(tools), Traces::new(store));
//! let input = RunInput {
//!     repo: "acme/shop".into(),
//!     channel: "C0123".into(),
//!     thread_ts: "1700000000.000100".into(),
//!     issue: Some(12),
//!     messages: vec![ThreadMessage {
//!         user: "U42".into(),
//!         from_bot: false,
//!         text: "implement this".into(),
//!     }],
//!     author_is_writer: true,
//!     summary: None,
//! };
//! let done = agent.run(&input, &tokio_util::sync::CancellationToken::new()).await;
//! // Post done.reply in the thread; link each of done.actions; done.run_id is the trace.
//! # }
//! ```
//!
//! # Why writes are decided outside the model
//! The model reads text anyone can write (issues, comments, logs). So whether a write is
//! possible at all is decided before the model is asked: a non-writer's run is never offered a
//! write tool, a specialist sees only its own tools, a close needs the same writer's "yes" in a
//! later message, and a reply is checked against the writes that really happened.

pub mod claims;
pub mod github_tools;
mod module;
pub mod narrate;
mod responder;
pub mod routes;
pub mod run;
pub mod sanitize;
pub mod tools;
pub mod trace;

pub use github_tools::GithubTools;
pub use module::{AgentModule, LoopParts};
pub use narrate::record_delegated;
pub use responder::{AgentResponder, INTERRUPTED};
pub use run::{Agent, Limits, Outcome, RunInput, RunOutcome, Specialist, ThreadMessage};
pub use tools::{AGENT_MARKER, Action, Call, FakeTools, ToolName, Tools};
pub use trace::{RunId, RunSummary, RunTrace, Traces};
