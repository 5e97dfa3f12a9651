//! [`Forge`] over the daemon's GitHub client: the one place builds talk to GitHub. Errors are
//! sorted by what GitHub answered: network, timeouts, 5xx and rate limits are transient (the build
//! is retried later); anything else is permanent (the build fails with the message).

use productbuilder_github::{GithubClient, GithubError, MarkerComments};
use productbuilder_settings::Secret;

use crate::forge::{
    BUILD_COMMENT_MARKER, Forge, ForgeError, ForgeFuture, IssueText, NewPull, PullRef, RepoInfo,
    ReviewComment,
};

/// GitHub for the runner.
#[derive(Clone)]
pub struct GithubForge {
    client: GithubClient,
    comments: MarkerComments,
}

impl GithubForge {
    pub fn new(client: GithubClient) -> GithubForge {
        GithubForge {
            comments: MarkerComments::new(client.clone(), BUILD_COMMENT_MARKER),
            client,
        }
    }
}

fn forge_error(e: GithubError) -> ForgeError {
    if e.is_transient() {
        ForgeError::transient(e)
    } else {
        ForgeError::permanent(e)
    }
}

#[derive(serde::Deserialize)]
struct IssueJson {
    title: String,
    body: Option<String>,
}

#[derive(serde::Deserialize)]
struct ReviewCommentJson {
    user: Option<Login>,
    path: Option<String>,
    body: String,
}

#[derive(serde::Deserialize)]
struct PullJson {
    state: String,
    head: HeadJson,
}

#[derive(serde::Deserialize)]
struct HeadJson {
    r#ref: String,
    repo: Option<RepoJson>,
}

#[derive(serde::Deserialize)]
struct RepoJson {
    full_name: String,
}

#[derive(serde::Deserialize)]
struct Login {
    login: String,
}

impl Forge for GithubForge {
    fn repository<'a>(&'a self, repo: &'a str) -> ForgeFuture<'a, RepoInfo> {
        Box::pin(async move {
            let info = self.client.repository(repo).await.map_err(forge_error)?;
            Ok(RepoInfo {
                clone_url: info.clone_url,
                default_branch: info.default_branch,
            })
        })
    }

    fn token_for<'a>(&'a self, repo: &'a str) -> ForgeFuture<'a, Option<Secret>> {
        Box::pin(async move {
            let token = self.client.git_token(repo).await.map_err(forge_error)?;
            Ok(Some(Secret::new(token)))
        })
    }

    fn open_pull_for_branch<'a>(
        &'a self,
        repo: &'a str,
        branch: &'a str,
    ) -> ForgeFuture<'a, Option<PullRef>> {
        Box::pin(async move {
            let owner = repo.split('/').next().unwrap_or(repo);
            let found = self
                .client
                .open_pull_for_branch(repo, owner, branch)
                .await
                .map_err(forge_error)?;
            Ok(found.map(pull_ref))
        })
    }

    fn create_pull<'a>(&'a self, repo: &'a str, pull: &'a NewPull) -> ForgeFuture<'a, PullRef> {
        Box::pin(async move {
            let created = self
                .client
                .create_pull(
                    repo,
                    &productbuilder_github::NewPull {
                        title: pull.title.clone(),
                        head: pull.head.clone(),
                        base: pull.base.clone(),
                        body: pull.body.clone(),
                        draft: pull.draft,
                    },
                )
                .await
                .map_err(forge_error)?;
            Ok(pull_ref(created))
        })
    }

    fn upsert_build_comment<'a>(
        &'a self,
        repo: &'a str,
        number: u64,
        body: &'a str,
    ) -> ForgeFuture<'a, ()> {
        Box::pin(async move {
            // MarkerComments puts the marker on the first line itself.
            let text = body
                .strip_prefix(BUILD_COMMENT_MARKER)
                .unwrap_or(body)
                .trim_start_matches('\n');
            self.comments
                .publish(repo, number, text)
                .await
                .map(drop)
                .map_err(forge_error)
        })
    }

    fn issue<'a>(&'a self, repo: &'a str, number: u64) -> ForgeFuture<'a, IssueText> {
        Box::pin(async move {
            let identity = self.client.identity(repo).await.map_err(forge_error)?;
            let url = self.client.url(&format!("/repos/{repo}/issues/{number}"));
            let issue: IssueJson = self
                .client
                .get(&identity, &url)
                .await
                .map_err(forge_error)?;
            Ok(IssueText {
                title: issue.title,
                body: issue.body.unwrap_or_default(),
            })
        })
    }

    fn pull_branch<'a>(&'a self, repo: &'a str, number: u64) -> ForgeFuture<'a, Option<String>> {
        Box::pin(async move {
            let identity = self.client.identity(repo).await.map_err(forge_error)?;
            let url = self.client.url(&format!("/repos/{repo}/pulls/{number}"));
            let pull: PullJson = self
                .client
                .get(&identity, &url)
                .await
                .map_err(forge_error)?;
            let own = pull
                .head
                .repo
                .is_some_and(|r| r.full_name.eq_ignore_ascii_case(repo));
            Ok((pull.state == "open" && own).then_some(pull.head.r#ref))
        })
    }

    fn review_comments<'a>(
        &'a self,
        repo: &'a str,
        number: u64,
    ) -> ForgeFuture<'a, Vec<ReviewComment>> {
        Box::pin(async move {
            let identity = self.client.identity(repo).await.map_err(forge_error)?;
            let url = self.client.url(&format!(
                "/repos/{repo}/pulls/{number}/comments?per_page=100"
            ));
            let comments: Vec<ReviewCommentJson> = self
                .client
                .get(&identity, &url)
                .await
                .map_err(forge_error)?;
            Ok(comments
                .into_iter()
                .map(|c| ReviewComment {
                    author: c.user.map(|u| u.login).unwrap_or_default(),
                    path: c.path,
                    body: c.body,
                })
                .collect())
        })
    }
}

fn pull_ref(p: productbuilder_github::PullRef) -> PullRef {
    PullRef {
        number: p.number,
        url: p.html_url,
        head_sha: p.head_sha,
        draft: p.draft,
    }
}
