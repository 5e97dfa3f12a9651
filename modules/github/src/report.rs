//! Reporting a preview on GitHub: a Deployment for environment `preview/pr-{n}` with its
//! statuses, and the commit status `productbuilder/preview` on the head sha. All writes go
//! through the identity's write budget.
//!
//! Creating a deployment is made idempotent by looking for an existing one of the same sha and
//! environment first, so a restart between "created" and "recorded" never creates a second one.

use http::Method;
use serde::Deserialize;
use serde_json::json;

use crate::client::{GithubClient, GithubError};

/// The commit status context.
pub const STATUS_CONTEXT: &str = "productbuilder/preview";

/// A commit status state, named as GitHub spells it (`pending`, ...).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum CommitState {
    Pending,
    Success,
    Failure,
    Error,
}

/// A deployment status state (the subset previews use), named as GitHub spells it
/// (`in_progress`, ...).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum DeploymentState {
    InProgress,
    Success,
    Failure,
    Inactive,
}

/// GitHub caps descriptions at 140 characters; control characters are dropped.
pub fn description(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    if clean.chars().count() <= 140 {
        clean
    } else {
        let mut short: String = clean.chars().take(139).collect();
        short.push('…');
        short
    }
}

/// The environment name of a pull request's preview.
pub fn environment(number: u64) -> String {
    format!("preview/pr-{number}")
}

#[derive(Debug, Deserialize)]
struct Deployment {
    id: u64,
    sha: String,
}

#[derive(Debug, Deserialize)]
struct Created {
    id: u64,
}

/// Writes deployments and statuses.
#[derive(Clone)]
pub struct Reporter {
    client: GithubClient,
}

impl Reporter {
    pub fn new(client: GithubClient) -> Self {
        Reporter { client }
    }

    /// Sets `productbuilder/preview` on `sha`.
    pub async fn commit_status(
        &self,
        repo: &str,
        sha: &str,
        state: CommitState,
        text: &str,
        target_url: Option<&str>,
    ) -> Result<(), GithubError> {
        let identity = self.client.identity(repo).await?;
        let url = self.client.url(&format!("/repos/{repo}/statuses/{sha}"));
        let mut body = json!({
            "state": state.as_ref(),
            "context": STATUS_CONTEXT,
            "description": description(text),
        });
        if let Some(target) = target_url {
            body["target_url"] = json!(target);
        }
        let _: Created = self
            .client
            .write(&identity, Method::POST, &url, &body)
            .await?;
        Ok(())
    }

    /// The deployment of `sha` to the pull request's environment: found, or created.
    pub async fn ensure_deployment(
        &self,
        repo: &str,
        number: u64,
        sha: &str,
    ) -> Result<u64, GithubError> {
        let identity = self.client.identity(repo).await?;
        let env = environment(number);
        let list = self.client.url(&format!(
            "/repos/{repo}/deployments?environment={}&sha={sha}&per_page=100",
            env.replace('/', "%2F")
        ));
        let (existing, _) = self.client.poll_all::<Deployment>(&identity, &list).await?;
        if let Some(found) = existing.iter().find(|d| d.sha == sha) {
            return Ok(found.id);
        }
        let url = self.client.url(&format!("/repos/{repo}/deployments"));
        let body = json!({
            "ref": sha,
            "environment": env,
            "description": description(&format!("Preview of pull request #{number}")),
            "auto_merge": false,
            "required_contexts": [],
            "transient_environment": true,
            "production_environment": false,
        });
        let created: Created = self
            .client
            .write(&identity, Method::POST, &url, &body)
            .await?;
        Ok(created.id)
    }

    /// Adds a status to a deployment.
    pub async fn deployment_status(
        &self,
        repo: &str,
        deployment: u64,
        state: DeploymentState,
        text: &str,
        environment_url: Option<&str>,
        log_url: Option<&str>,
    ) -> Result<(), GithubError> {
        let identity = self.client.identity(repo).await?;
        let url = self
            .client
            .url(&format!("/repos/{repo}/deployments/{deployment}/statuses"));
        let mut body = json!({ "state": state.as_ref(), "description": description(text) });
        if let Some(env_url) = environment_url {
            body["environment_url"] = json!(env_url);
        }
        if let Some(log) = log_url {
            body["log_url"] = json!(log);
        }
        let _: Created = self
            .client
            .write(&identity, Method::POST, &url, &body)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The states as GitHub spells them: what is sent must not change.
    #[test]
    fn states_are_sent_as_github_spells_them() {
        use std::str::FromStr;
        for (state, name) in [
            (CommitState::Pending, "pending"),
            (CommitState::Success, "success"),
            (CommitState::Failure, "failure"),
            (CommitState::Error, "error"),
        ] {
            assert_eq!(state.as_ref(), name);
            assert_eq!(state.to_string(), name);
            assert_eq!(CommitState::from_str(name), Ok(state));
        }
        for (state, name) in [
            (DeploymentState::InProgress, "in_progress"),
            (DeploymentState::Success, "success"),
            (DeploymentState::Failure, "failure"),
            (DeploymentState::Inactive, "inactive"),
        ] {
            assert_eq!(state.as_ref(), name);
            assert_eq!(state.to_string(), name);
            assert_eq!(DeploymentState::from_str(name), Ok(state));
        }
    }

    #[test]
    fn descriptions_fit_githubs_limit() {
        assert_eq!(description("ok\nfine"), "okfine");
        let long = description(&"x".repeat(500));
        assert_eq!(long.chars().count(), 140);
        assert!(long.ends_with('…'));
        assert_eq!(environment(7), "preview/pr-7");
    }
}
