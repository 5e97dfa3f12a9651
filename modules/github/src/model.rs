//! What the pollers keep of GitHub's objects: small domain types, apart from octocrab's models
//! (the wire) and from the SQLite rows (storage).

use serde::Serialize;

/// An open pull request as last polled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pull {
    pub number: u64,
    pub title: String,
    pub head_sha: String,
    pub head_ref: String,
    /// `owner/name` of the head repository; `None` when the fork was deleted.
    pub head_repo: Option<String>,
    /// The head lives in another repository than the base.
    pub fork: bool,
    pub author: String,
    /// OWNER, MEMBER, COLLABORATOR, CONTRIBUTOR, FIRST_TIME_CONTRIBUTOR, NONE, ...
    pub author_association: String,
    pub draft: bool,
    pub labels: Vec<String>,
    /// GitHub's `updated_at`.
    pub updated_at: Option<String>,
    /// When this head sha was first seen by the poller (RFC 3339).
    pub seen_at: String,
}

impl Pull {
    /// Reads what we need from octocrab's model; `None` when the payload lacks a head sha.
    pub fn from_model(pr: &octocrab::models::pulls::PullRequest, base_repo: &str) -> Option<Pull> {
        let head_repo = pr.head.repo.as_ref().and_then(|r| r.full_name.clone());
        let fork = match &head_repo {
            Some(full_name) => !full_name.eq_ignore_ascii_case(base_repo),
            // A deleted head repository can only have been a fork.
            None => true,
        };
        let author_association = pr
            .author_association
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "NONE".to_owned());
        let sha = pr.head.sha.clone();
        if sha.is_empty() {
            return None;
        }
        Some(Pull {
            number: pr.number,
            title: pr.title.clone().unwrap_or_default(),
            head_sha: sha,
            head_ref: pr.head.ref_field.clone(),
            head_repo,
            fork,
            author: pr
                .user
                .as_ref()
                .map(|u| u.login.clone())
                .unwrap_or_else(|| "ghost".to_owned()),
            author_association,
            draft: pr.draft.unwrap_or(false),
            labels: pr
                .labels
                .as_ref()
                .map(|ls| ls.iter().map(|l| l.name.clone()).collect())
                .unwrap_or_default(),
            updated_at: pr
                .updated_at
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            seen_at: String::new(),
        })
    }
}

/// The full set of open pull requests of one repository, handed on every cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullSet {
    pub repo: String,
    pub pulls: Vec<Pull>,
    /// False until the first poll of this process published the set: an empty list before that
    /// means "not known yet", not "no pull request open", and must not remove previews.
    pub polled: bool,
}
