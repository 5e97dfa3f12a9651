//! Builds (issue 11): a coding agent implements an issue in a fresh checkout, and the daemon turns
//! what it changed into a commit, a push and a pull request. Start at [`runner`]: it runs one
//! claimed build to its end on the pieces below. The module's wiring (triggers from GitHub,
//! routes, the `Forge` over the GitHub client) is the binary's next step.
//!
//! - [`config`]: `[builds]` as typed ([`RawBuilds`]) and resolved ([`BuildsConfig`]).
//! - [`runner`]: [`Runner`]: claim, clone, agent, commit, push, pull request, callback, finish;
//!   heartbeat and cancel; budgets that keep the work as a draft pull request; resume after a
//!   crash from the build's saved state ([`runner::state`]); [`Runner::serve`] for a service.
//! - [`forge`]: the [`Forge`] trait, what the runner needs of GitHub (the daemon implements it
//!   over its GitHub client; tests over a fake).
//! - [`prompt`] (pure): the agent's prompt: the spec's, its variables, the issue fenced as
//!   untrusted text, review comments when going on from a pull request; bounded for argv.
//! - [`comment`] (pure): the one build comment per issue, edited in place.
//! - [`callback`]: the signed, retried `POST callback_url`.
//! - [`transcript`]: `{state_dir}/builds/{id}.log`, redacted and bounded.
//! - [`agent`]: readers of the agent's standard output, one per `agent_format`
//!   (`claude-stream-json`, `opencode-json`, `codex-json`, `text`), fed incrementally, giving
//!   progress steps and an [`agent::Outcome`] judged from the agent's own result line, never its
//!   exit code (agents exit 0 on failures and 1 on successes; see the module's documentation).
//! - [`git`]: git as the real CLI through `productbuilder-process`: clone a `clone_url` with the
//!   token only in git's environment (an `http.<origin>/.extraheader` set by `GIT_CONFIG_COUNT`),
//!   create the build's deterministic branch, stage everything the agent changed, commit as the
//!   configured author (optionally SSH-signed), list the files changed, push with an explicit
//!   refspec; each step with a deadline, the build's cancel token, and an error naming the step.
//! - [`spec`]: [`BuildSpec`] and [`BuildResult`] with the seeds' JSON names; a spec from the API
//!   is validated as hostile (capped body and fields, `callback_url` only http(s)), each
//!   [`SpecError`] naming its field.
//! - [`status`]: the statuses (`pending`, `running`, `completed`, `failed`, `cancelled`), the one
//!   table of allowed transitions, and the [`Step`]s a runner records (which are resumable).
//! - [`records`]: the `builds` and `build_audit` rows (migration `migrations/*_builds.sql`);
//!   every status change goes through one function that checks the table and appends the audit
//!   row in the same transaction.
//! - [`queue`]: the durable queue: enqueue (one active build per repository and issue or pull
//!   request; a second enqueue returns the first), claim with a lease under `max_concurrent` in one
//!   `BEGIN IMMEDIATE` transaction, heartbeat (which carries a cancel request), the last step,
//!   finish, retry with backoff, cancel. The clock is an argument, so tests need no sleeps.
//! - [`metrics`]: `productbuilder_builds{status}` and the last build's duration, read from the
//!   database at the scrape.
//! - [`recovery`]: builds whose lease ran out (their daemon died) are resumed from their last step
//!   when it is resumable, or failed as `interrupted` and retried once.
//!
//! **What is hostile.** The agent runs a model on a repository anyone may have written to, so its
//! output is untrusted bytes: invalid UTF-8 or JSON, unknown events, wrong field types, lines of
//! megabytes. The readers skip and count what they cannot read, bound every line and every text
//! they keep, and leave redaction of what they return to the caller (they do not know the
//! secrets). The checkout is hostile too: the agent (and whoever wrote the repository) can plant
//! hooks in `.git/hooks`, point `core.hooksPath` or `core.fsmonitor` at its own files, or change
//! the `origin` remote. Every git call therefore runs with hooks and fsmonitor off in the
//! "command" configuration scope (which beats the repository's), without the system's or the
//! user's git configuration, without a terminal prompt or credential helper; the token reaches git
//! only through the environment of clone and push (never a URL, `.git/config`, an argv or a log:
//! the captured output is redacted of the token and its base64 form), and push goes to the clone
//! URL the daemon holds, not to the checkout's remote.
pub mod agent;
pub mod callback;
pub mod comment;
pub mod config;
pub mod feeds;
pub mod forge;
pub mod git;
pub mod github_forge;
pub mod link;
pub mod metrics;
mod module;
pub mod prompt;
pub mod queue;
pub mod records;
pub mod recovery;
pub mod routes;
pub mod runner;
pub mod spec;
pub mod status;
pub mod transcript;
pub mod triggers;

pub use config::{BuildsConfig, RawBuilds};
pub use forge::{Forge, ForgeError, ForgeFuture};
pub use module::BuildsModule;
pub use queue::{
    Cancel, Claim, Enqueued, Finish, Heartbeat, Queue, QueueConfig, QueueError, Retry,
};
pub use records::{AuditEntry, Build, BuildId};
pub use runner::{BuildEvent, EventKind, Ran, Runner};
pub use spec::{BuildResult, BuildSpec, SpecError};
pub use status::{Status, Step};
