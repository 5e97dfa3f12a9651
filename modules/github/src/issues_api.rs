//! What the agent asks of GitHub (issue 12): create an issue, comment, close, read an issue or
//! a pull request, read a file.
//!
//! Reads are unconditional (always fresh); writes go through the identity's write budget. A
//! missing issue, pull request or file is `Ok(None)`, not an error: the agent tells the model.
//! File contents are bounded ([`MAX_FILE_BYTES`]) and the path is checked before any request.

use base64::Engine as _;
use http::Method;
use serde::Deserialize;
use serde_json::json;

use crate::client::{GithubClient, GithubError};
use crate::pulls_api::encode;

/// The most of a file the agent reads (GitHub's contents API serves up to 1 MB inline).
pub const MAX_FILE_BYTES: usize = 256 * 1024;

/// An issue or comment just written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The issue's number (for a comment: the issue it is on).
    pub number: u64,
    /// Its page.
    pub html_url: String,
}

/// An issue (or a pull request read as an issue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueDetail {
    pub number: u64,
    pub title: String,
    /// `open` or `closed`.
    pub state: String,
    pub body: String,
    pub author: String,
    pub labels: Vec<String>,
    pub is_pull: bool,
    pub html_url: String,
}

/// A pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullDetail {
    pub number: u64,
    pub title: String,
    pub state: String,
    pub merged: bool,
    pub draft: bool,
    pub body: String,
    pub author: String,
    pub head_ref: String,
    pub head_sha: String,
    pub base_ref: String,
    pub html_url: String,
}

/// A file of the repository, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileText {
    pub path: String,
    /// Its size on GitHub.
    pub size: u64,
    /// UTF-8 (invalid bytes replaced), at most [`MAX_FILE_BYTES`] of it.
    pub text: String,
    pub truncated: bool,
}

/// Why a path or ref is refused before any request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not a plain path inside the repository")]
pub struct BadPath {
    pub what: &'static str,
    pub value: String,
}

#[derive(Deserialize)]
struct UserJson {
    login: String,
}

#[derive(Deserialize)]
struct LabelJson {
    name: String,
}

#[derive(Deserialize)]
struct IssueJson {
    number: u64,
    title: String,
    state: String,
    #[serde(default)]
    body: Option<String>,
    user: UserJson,
    #[serde(default)]
    labels: Vec<LabelJson>,
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
    html_url: String,
}

#[derive(Deserialize)]
struct CommentJson {
    html_url: String,
}

#[derive(Deserialize)]
struct RefJson {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
}

#[derive(Deserialize)]
struct PullJson {
    number: u64,
    title: String,
    state: String,
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default)]
    merged_at: Option<String>,
    #[serde(default)]
    draft: Option<bool>,
    #[serde(default)]
    body: Option<String>,
    user: UserJson,
    head: RefJson,
    base: RefJson,
    html_url: String,
}

#[derive(Deserialize)]
struct ContentJson {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

/// A relative path of plain segments (no `.`, `..`, empty segment, backslash or control
/// character).
pub fn check_path(path: &str) -> Result<(), BadPath> {
    let plain = !path.is_empty()
        && path.len() <= 1024
        && !path.starts_with('/')
        && !path.chars().any(|c| c.is_control() || c == '\\')
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if plain {
        Ok(())
    } else {
        Err(BadPath {
            what: "path",
            value: path.chars().take(200).collect(),
        })
    }
}

/// A branch, tag or sha: letters, digits, `. _ - /`, no `..`, not starting with `-` or `/`.
pub fn check_ref(git_ref: &str) -> Result<(), BadPath> {
    let plain = !git_ref.is_empty()
        && git_ref.len() <= 255
        && !git_ref.starts_with(['-', '/'])
        && !git_ref.contains("..")
        && git_ref
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if plain {
        Ok(())
    } else {
        Err(BadPath {
            what: "ref",
            value: git_ref.chars().take(200).collect(),
        })
    }
}

fn missing(e: &GithubError) -> bool {
    matches!(e.status(), Some(404) | Some(410))
}

impl GithubClient {
    /// Opens an issue (`POST /repos/{repo}/issues`).
    pub async fn create_issue(
        &self,
        repo: &str,
        title: &str,
        body: &str,
    ) -> Result<Written, GithubError> {
        let identity = self.identity(repo).await?;
        let url = self.url(&format!("/repos/{repo}/issues"));
        let created: IssueJson = self
            .write(
                &identity,
                Method::POST,
                &url,
                &json!({"title": title, "body": body}),
            )
            .await?;
        Ok(Written {
            number: created.number,
            html_url: created.html_url,
        })
    }

    /// Comments on an issue or pull request (`POST /repos/{repo}/issues/{number}/comments`).
    pub async fn create_comment(
        &self,
        repo: &str,
        number: u64,
        body: &str,
    ) -> Result<Written, GithubError> {
        let identity = self.identity(repo).await?;
        let url = self.url(&format!("/repos/{repo}/issues/{number}/comments"));
        let created: CommentJson = self
            .write(&identity, Method::POST, &url, &json!({"body": body}))
            .await?;
        Ok(Written {
            number,
            html_url: created.html_url,
        })
    }

    /// Closes an issue (`PATCH /repos/{repo}/issues/{number}` with `state: closed`); closing a
    /// closed one is no error.
    pub async fn close_issue(&self, repo: &str, number: u64) -> Result<(), GithubError> {
        let identity = self.identity(repo).await?;
        let url = self.url(&format!("/repos/{repo}/issues/{number}"));
        let _: IssueJson = self
            .write(&identity, Method::PATCH, &url, &json!({"state": "closed"}))
            .await?;
        Ok(())
    }

    /// An issue or pull request as an issue (`GET /repos/{repo}/issues/{number}`); `None` when
    /// it does not exist.
    pub async fn issue(&self, repo: &str, number: u64) -> Result<Option<IssueDetail>, GithubError> {
        let identity = self.identity(repo).await?;
        let url = self.url(&format!("/repos/{repo}/issues/{number}"));
        match self.get::<IssueJson>(&identity, &url).await {
            Ok(i) => Ok(Some(IssueDetail {
                number: i.number,
                title: i.title,
                state: i.state,
                body: i.body.unwrap_or_default(),
                author: i.user.login,
                labels: i.labels.into_iter().map(|l| l.name).collect(),
                is_pull: i.pull_request.is_some(),
                html_url: i.html_url,
            })),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A pull request (`GET /repos/{repo}/pulls/{number}`); `None` when it does not exist.
    pub async fn pull(&self, repo: &str, number: u64) -> Result<Option<PullDetail>, GithubError> {
        let identity = self.identity(repo).await?;
        let url = self.url(&format!("/repos/{repo}/pulls/{number}"));
        match self.get::<PullJson>(&identity, &url).await {
            Ok(p) => Ok(Some(PullDetail {
                number: p.number,
                title: p.title,
                state: p.state,
                merged: p.merged.unwrap_or(p.merged_at.is_some()),
                draft: p.draft.unwrap_or(false),
                body: p.body.unwrap_or_default(),
                author: p.user.login,
                head_ref: p.head.name,
                head_sha: p.head.sha,
                base_ref: p.base.name,
                html_url: p.html_url,
            })),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A file as text (`GET /repos/{repo}/contents/{path}?ref=`), at most [`MAX_FILE_BYTES`];
    /// `None` when there is no such file (or it is a directory). The path and ref are checked
    /// first: a hostile one never reaches GitHub.
    pub async fn file(
        &self,
        repo: &str,
        path: &str,
        git_ref: Option<&str>,
    ) -> Result<Result<Option<FileText>, BadPath>, GithubError> {
        if let Err(e) = check_path(path) {
            return Ok(Err(e));
        }
        if let Some(Err(e)) = git_ref.map(check_ref) {
            return Ok(Err(e));
        }
        let identity = self.identity(repo).await?;
        let mut url = self.url(&format!("/repos/{repo}/contents/{}", encode(path, b"/")));
        if let Some(r) = git_ref {
            url.push_str(&format!("?ref={}", encode(r, b"/")));
        }
        let content = match self.get::<ContentJson>(&identity, &url).await {
            Ok(c) => c,
            Err(e) if missing(&e) => return Ok(Ok(None)),
            Err(e) => return Err(e),
        };
        if content.kind != "file" {
            return Ok(Ok(None));
        }
        let encoded: String = content
            .content
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let bytes = match content.encoding.as_deref() {
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .unwrap_or_default(),
            _ => encoded.into_bytes(),
        };
        let truncated = bytes.len() > MAX_FILE_BYTES;
        let kept = &bytes[..bytes.len().min(MAX_FILE_BYTES)];
        Ok(Ok(Some(FileText {
            path: path.to_owned(),
            size: content.size,
            text: String::from_utf8_lossy(kept).into_owned(),
            truncated,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_refs_are_checked() {
        for good in ["README.md", "src/a b.rs", ".github/workflows/ci.yml"] {
            assert!(check_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a\\b",
            "a\u{0}",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        for good in ["main", "pb/issue-3", "v1.2", "0123abcd"] {
            assert!(check_ref(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "/x", "a..b", "a b", "a~1", "a:b"] {
            assert!(check_ref(bad).is_err(), "{bad:?}");
        }
    }
}
