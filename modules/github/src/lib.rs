//! GitHub, polled: every pull request, push, close, issue and comment of every configured
//! repository, noticed without an inbound webhook and at (almost) no rate-limit cost when nothing
//! changes.
//!
//! # Brief overview
//! - [`GithubClient`]: credentials (a token, or a GitHub App whose installation tokens are renewed
//!   five minutes before they expire and shared by the tenants of one installation), the persisted
//!   ETag cache behind [`GithubClient::poll`], pagination on the API's own host only, and every
//!   failure as a [`GithubError`] that converts into the scheduler's error kinds.
//! - [`Budget`]: one per identity, shared by all tenants: requests in flight, pacing, pauses on
//!   GitHub's hints, and the content-write caps.
//! - [`GithubModule`]: the units `preflight:repository`, `worker:pulls`, `worker:issues`,
//!   `worker:comments`, and [`GithubState`], what they publish.
//! - [`config`]: `[github]` of the main file, as typed and resolved.
//! - [`feeds`]: what the module publishes to others ([`feeds::PULLS`]).
//! - [`webhook`]: signature checks and delivery dedup for the accelerator.
//! - Builds' calls on [`GithubClient`]: [`repository`](GithubClient::repository),
//!   [`branch_head`](GithubClient::branch_head),
//!   [`open_pull_for_branch`](GithubClient::open_pull_for_branch),
//!   [`create_pull`](GithubClient::create_pull) (idempotent), `edit_pull`, `add_labels`,
//!   `remove_label`.
//!
//! # Why conditional requests carry the whole state
//! A 304 costs no primary quota, so the pulls worker asks for the full list of open pull requests
//! every cycle and gets the cached body back when nothing changed. Downstream code therefore always
//! sees the whole desired set, never a diff that a missed cycle could lose.

mod budget;
mod cache;
mod client;
mod comments;
pub mod config;
pub mod feeds;
mod issues_api;
mod model;
mod poll;
mod pulls_api;
mod report;
pub mod webhook;

pub use budget::{Access, Budget, BudgetLimits, BudgetSnapshot, Quota, wait_hint};
pub use cache::{CacheLimits, Pruned, prune};
pub use client::{
    Answer, ClientConfig, Conditional, Credentials, GithubClient, GithubError, Identity,
    LabelEvent, Listing, Page, Polled, Token, is_writer, next_link, parse_rfc3339,
};
pub use comments::{MarkerComments, Published};
pub use issues_api::{
    BadPath, FileText, IssueDetail, MAX_FILE_BYTES, PullDetail, Written, check_path, check_ref,
};
pub use model::{Pull, PullSet};
pub use poll::{
    Cursor, GithubModule, GithubState, TenantPollState, poll_pulls, stored_comments,
    stored_issue_numbers,
};
pub use pulls_api::{NewPull, PullRef, RepoInfo};
pub use report::{
    CommitState, DeploymentState, Reporter, STATUS_CONTEXT, description, environment,
};

/// No routes of its own yet: `/webhook` and `/api/tenants` are still served by the binary.
impl productbuilder_routes::Module for GithubModule {}
