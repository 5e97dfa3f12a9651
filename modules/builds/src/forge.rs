//! What the runner needs of GitHub, as a trait: the daemon implements it over its GitHub client
//! (only `modules/github` talks to GitHub), the tests over an in-memory fake.
//!
//! Object safe with boxed futures (`Arc<dyn Forge>`), no `async_trait` macro: each method returns
//! a [`ForgeFuture`]. Every error says whether trying again later may help ([`ForgeError::kind`]),
//! which decides between `retry_later` and a failed build.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use productbuilder_settings::Secret;

/// The future a [`Forge`] method returns.
pub type ForgeFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ForgeError>> + Send + 'a>>;

/// The marker of the one build comment per issue, edited in place.
pub const BUILD_COMMENT_MARKER: &str = "<!-- productbuilder:build -->";

/// A repository, as the runner clones it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoInfo {
    /// `https://github.com/o/r.git` as the API returns it; pushes go back to it.
    pub clone_url: String,
    pub default_branch: String,
}

/// An open pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRef {
    pub number: u64,
    /// Its page (`html_url`).
    pub url: String,
    pub head_sha: String,
    pub draft: bool,
}

/// A pull request to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPull {
    pub title: String,
    /// The branch with the work.
    pub head: String,
    /// The branch it goes into.
    pub base: String,
    pub body: String,
    pub draft: bool,
}

/// An issue's text, for the prompt (hostile: anyone may have written it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueText {
    pub title: String,
    pub body: String,
}

/// A review comment on a build's pull request, for a build that goes on from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewComment {
    pub author: String,
    /// The file it is about, for a line comment.
    pub path: Option<String>,
    pub body: String,
}

/// Whether a failed call may succeed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Network, 5xx, rate limit: the build is retried later.
    Transient,
    /// 404, 403, 422: the build fails with the message.
    Permanent,
}

/// A failed call: what was asked, and what to do (never a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GitHub: {message}")]
pub struct ForgeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ForgeError {
    pub fn transient(message: impl fmt::Display) -> ForgeError {
        ForgeError {
            kind: ErrorKind::Transient,
            message: message.to_string(),
        }
    }

    pub fn permanent(message: impl fmt::Display) -> ForgeError {
        ForgeError {
            kind: ErrorKind::Permanent,
            message: message.to_string(),
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// GitHub, as the runner uses it. `repo` is `owner/name`.
pub trait Forge: Send + Sync {
    fn repository<'a>(&'a self, repo: &'a str) -> ForgeFuture<'a, RepoInfo>;

    /// The token git clones and pushes with (an installation token, say); `None`: anonymous
    /// (a `file://` clone URL in tests). It goes to git's environment only.
    fn token_for<'a>(&'a self, repo: &'a str) -> ForgeFuture<'a, Option<Secret>>;

    /// The open pull request whose head is `branch` of `repo` itself (not a fork's), if any.
    fn open_pull_for_branch<'a>(
        &'a self,
        repo: &'a str,
        branch: &'a str,
    ) -> ForgeFuture<'a, Option<PullRef>>;

    fn create_pull<'a>(&'a self, repo: &'a str, pull: &'a NewPull) -> ForgeFuture<'a, PullRef>;

    /// Creates or edits the one comment on issue or pull request `number` whose body starts with
    /// [`BUILD_COMMENT_MARKER`] (`body` starts with it).
    fn upsert_build_comment<'a>(
        &'a self,
        repo: &'a str,
        number: u64,
        body: &'a str,
    ) -> ForgeFuture<'a, ()>;

    fn issue<'a>(&'a self, repo: &'a str, number: u64) -> ForgeFuture<'a, IssueText>;

    /// The head branch of open pull request `number` when that branch is in `repo` itself (a
    /// fork's branch cannot be pushed to); `None` otherwise. For a build on a pull request.
    fn pull_branch<'a>(&'a self, repo: &'a str, number: u64) -> ForgeFuture<'a, Option<String>>;

    /// Review comments on pull request `number`, oldest first (for a build that goes on from
    /// it); the default: none.
    fn review_comments<'a>(
        &'a self,
        _repo: &'a str,
        _number: u64,
    ) -> ForgeFuture<'a, Vec<ReviewComment>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
