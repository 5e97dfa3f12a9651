//! What builds ask of GitHub around a push: the repository's clone URL and default branch, a
//! branch's head, the open pull request of a branch, opening one, editing it, and labelling
//! issues.
//!
//! Opening a pull request converges: a `422` (GitHub's answer when an open pull request for the
//! same head already exists) is answered by looking that pull request up, so a build retried
//! after a crash between "opened" and "recorded" gets the same pull request, never a second.
//! Reads are unconditional (always fresh); writes go through the identity's write budget.

use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::{GithubClient, GithubError};

/// What builds need to know of a repository (`GET /repos/{repo}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RepoInfo {
    /// The `https://…/{owner}/{name}.git` URL git clones and pushes (no credentials in it).
    pub clone_url: String,
    /// The branch pull requests target by default.
    pub default_branch: String,
    /// Whether the repository is private.
    pub private: bool,
}

/// A pull request, as builds record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRef {
    pub number: u64,
    pub html_url: String,
    /// The head commit GitHub knows for it (the pushed sha once the push is seen).
    pub head_sha: String,
    pub draft: bool,
}

/// A pull request to open from a branch of the repository itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewPull {
    pub title: String,
    /// The branch name (in the same repository; no `owner:` prefix).
    pub head: String,
    /// The branch to merge into (usually [`RepoInfo::default_branch`]).
    pub base: String,
    pub body: String,
    pub draft: bool,
}

#[derive(Debug, Deserialize)]
struct PullJson {
    number: u64,
    html_url: String,
    #[serde(default)]
    draft: Option<bool>,
    head: PullHead,
}

#[derive(Debug, Deserialize)]
struct PullHead {
    sha: String,
}

impl From<PullJson> for PullRef {
    fn from(p: PullJson) -> PullRef {
        PullRef {
            number: p.number,
            html_url: p.html_url,
            head_sha: p.head.sha,
            draft: p.draft.unwrap_or(false),
        }
    }
}

#[derive(Debug, Deserialize)]
struct BranchJson {
    commit: BranchCommit,
}

#[derive(Debug, Deserialize)]
struct BranchCommit {
    sha: String,
}

#[derive(Debug, Deserialize)]
struct LabelJson {
    #[allow(dead_code)] // decoded to check the answer's shape
    name: String,
}

impl GithubClient {
    /// `GET /repos/{repo}`: the clone URL, default branch and visibility.
    pub async fn repository(&self, repo: &str) -> Result<RepoInfo, GithubError> {
        let identity = self.identity(repo).await?;
        self.get(&identity, &self.url(&format!("/repos/{repo}")))
            .await
    }

    /// The head sha of `branch` (`GET /repos/{repo}/branches/{branch}`); `None` when it does
    /// not exist.
    pub async fn branch_head(
        &self,
        repo: &str,
        branch: &str,
    ) -> Result<Option<String>, GithubError> {
        let identity = self.identity(repo).await?;
        let url = self.url(&format!("/repos/{repo}/branches/{}", encode(branch, b"/")));
        match self.get::<BranchJson>(&identity, &url).await {
            Ok(found) => Ok(Some(found.commit.sha)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The open pull request whose head is `owner_login:branch`
    /// (`GET /repos/{repo}/pulls?head=…&state=open`), if any.
    pub async fn open_pull_for_branch(
        &self,
        repo: &str,
        owner_login: &str,
        branch: &str,
    ) -> Result<Option<PullRef>, GithubError> {
        let identity = self.identity(repo).await?;
        let head = format!("{owner_login}:{branch}");
        let url = self.url(&format!(
            "/repos/{repo}/pulls?head={}&state=open&per_page=100",
            encode(&head, b"/:")
        ));
        let open: Vec<PullJson> = self.get(&identity, &url).await?;
        Ok(open.into_iter().next().map(PullRef::from))
    }

    /// Opens a pull request from `pull.head` (`POST /repos/{repo}/pulls`). When GitHub answers
    /// 422 and an open pull request for that branch exists (one this call or an earlier attempt
    /// opened), that one is returned; any other 422 (a missing branch, nothing to merge) is the
    /// error, with GitHub's reason in its message.
    pub async fn create_pull(&self, repo: &str, pull: &NewPull) -> Result<PullRef, GithubError> {
        let identity = self.identity(repo).await?;
        let url = self.url(&format!("/repos/{repo}/pulls"));
        match self
            .write::<_, PullJson>(&identity, Method::POST, &url, pull)
            .await
        {
            Ok(created) => Ok(created.into()),
            Err(e) if e.status() == Some(422) => {
                let owner = repo.split('/').next().unwrap_or(repo);
                match self.open_pull_for_branch(repo, owner, &pull.head).await? {
                    Some(existing) => Ok(existing),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Changes a pull request's title and/or body (`PATCH /repos/{repo}/pulls/{number}`).
    pub async fn edit_pull(
        &self,
        repo: &str,
        number: u64,
        title: Option<&str>,
        body: Option<&str>,
    ) -> Result<PullRef, GithubError> {
        let identity = self.identity(repo).await?;
        let url = self.url(&format!("/repos/{repo}/pulls/{number}"));
        let mut change = json!({});
        if let Some(title) = title {
            change["title"] = json!(title);
        }
        if let Some(body) = body {
            change["body"] = json!(body);
        }
        let edited: PullJson = self.write(&identity, Method::PATCH, &url, &change).await?;
        Ok(edited.into())
    }

    /// Adds labels to an issue or pull request (`POST /repos/{repo}/issues/{number}/labels`);
    /// GitHub records a `labeled` event by the daemon's login for each new one.
    pub async fn add_labels(
        &self,
        repo: &str,
        number: u64,
        labels: &[&str],
    ) -> Result<(), GithubError> {
        let identity = self.identity(repo).await?;
        let url = self.url(&format!("/repos/{repo}/issues/{number}/labels"));
        let _: Vec<LabelJson> = self
            .write(&identity, Method::POST, &url, &json!({ "labels": labels }))
            .await?;
        Ok(())
    }

    /// Removes a label from an issue or pull request; one it does not carry is no error.
    pub async fn remove_label(
        &self,
        repo: &str,
        number: u64,
        label: &str,
    ) -> Result<(), GithubError> {
        let identity = self.identity(repo).await?;
        let url = self.url(&format!(
            "/repos/{repo}/issues/{number}/labels/{}",
            encode(label, b"")
        ));
        match self
            .write::<_, Vec<LabelJson>>(&identity, Method::DELETE, &url, &json!({}))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Percent-encodes everything but unreserved characters and `keep`, so a branch or label name
/// (which may hold `+`, `#`, `?`, `%`, spaces) stays one path segment or query value.
pub(crate) fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_one_segment_or_value() {
        assert_eq!(encode("pb/issue-7", b"/"), "pb/issue-7");
        assert_eq!(encode("a+b c#d?e%f", b"/"), "a%2Bb%20c%23d%3Fe%25f");
        assert_eq!(encode("acme:pb/x", b"/:"), "acme:pb/x");
        assert_eq!(encode("needs review", b""), "needs%20review");
        assert_eq!(encode("a/b", b""), "a%2Fb");
    }

    #[test]
    fn pull_answers_decode() {
        let raw = r#"{"number":3,"html_url":"h","draft":true,"head":{"sha":"abc","ref":"b"}}"#;
        let pull: PullRef = serde_json::from_str::<PullJson>(raw).unwrap().into();
        assert_eq!(
            pull,
            PullRef {
                number: 3,
                html_url: "h".into(),
                head_sha: "abc".into(),
                draft: true
            }
        );
        let raw = r#"{"number":3,"html_url":"h","head":{"sha":"abc"}}"#;
        let pull: PullRef = serde_json::from_str::<PullJson>(raw).unwrap().into();
        assert!(!pull.draft);
    }
}
