//! Builds (issue 11): a coding agent implements an issue in a fresh checkout, and the daemon turns
//! what it changed into a commit, a push and a pull request. This crate holds the two foundations
//! the module will stand on; the module itself (queue, triggers, routes, config) is the next step.
//!
//! - [`agent`]: readers of the agent's standard output, one per `agent_format`
//!   (`claude-stream-json`, `opencode-json`, `codex-json`, `text`), fed incrementally, giving
//!   progress steps and an [`agent::Outcome`] judged from the agent's own result line, never its
//!   exit code (agents exit 0 on failures and 1 on successes; see the module's documentation).
//!
//! **What is hostile.** The agent runs a model on a repository anyone may have written to, so its
//! output is untrusted bytes: invalid UTF-8 or JSON, unknown events, wrong field types, lines of
//! megabytes. The readers skip and count what they cannot read, bound every line and every text
//! they keep, and leave redaction of what they return to the caller (they do not know the
//! secrets).
pub mod agent;
