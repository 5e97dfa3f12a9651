//! JSON bodies in GitHub's shapes (the field names and types of the OpenAPI examples in
//! `shared/fixtures/github-rest/`), built from the sandbox's state.
//!
//! API URLs (`url`, `*_url`) point at the sandbox itself so clients that follow them stay inside
//! it; `html_url`s use the same host like GitHub Enterprise Server does (they are not served).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::world::{
    App, Bucket, CommitStatus, Deployment, DeploymentStatus, Identity, Installation, Issue,
    IssueComment, IssueEvent, LabelDef, Permission, Repo, User, World,
};

/// What every shape needs: the base URL, the state, and who is looking (for `permissions`).
pub(crate) struct Ctx<'a> {
    pub base: &'a str,
    pub world: &'a World,
    pub who: &'a Identity,
}

/// RFC 3339 with whole seconds and `Z`, as GitHub prints timestamps.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn opt_ts(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(ts(t)))
}

/// GitHub's legacy global node ids: base64 of `0<len>:<Type><id>`.
fn node_id(kind: &str, id: u64) -> String {
    STANDARD.encode(format!("0{}:{kind}{id}", kind.len()))
}

/// Percent-encodes one path segment (label names may contain spaces and the like).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn user(base: &str, u: &User) -> Value {
    let login = &u.login;
    let api = format!("{base}/users/{}", segment(login));
    json!({
        "login": login,
        "id": u.id,
        "node_id": node_id(if login.ends_with("[bot]") { "Bot" } else { "User" }, u.id),
        "avatar_url": format!("{base}/_sandbox/avatars/{}", u.id),
        "gravatar_id": "",
        "url": api,
        "html_url": format!("{base}/{}", segment(login)),
        "followers_url": format!("{api}/followers"),
        "following_url": format!("{api}/following{{/other_user}}"),
        "gists_url": format!("{api}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/subscriptions"),
        "organizations_url": format!("{api}/orgs"),
        "repos_url": format!("{api}/repos"),
        "events_url": format!("{api}/events{{/privacy}}"),
        "received_events_url": format!("{api}/received_events"),
        "type": if login.ends_with("[bot]") { "Bot" } else { "User" },
        "site_admin": false,
    })
}

fn login_json(ctx: &Ctx, login: &str) -> Value {
    user(ctx.base, &ctx.world.user(login))
}

fn permissions(p: Permission) -> Value {
    json!({
        "admin": p >= Permission::Admin,
        "maintain": p >= Permission::Admin,
        "push": p >= Permission::Push,
        "triage": p >= Permission::Push,
        "pull": true,
    })
}

/// The URL fields of the repository shape (split out to keep `json!` literals small).
fn repository_urls(base: &str, full_name: &str) -> Value {
    let api = format!("{base}/repos/{full_name}");
    let html = format!("{base}/{full_name}");
    let host = base
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    json!({
        "archive_url": format!("{api}/{{archive_format}}{{/ref}}"),
        "assignees_url": format!("{api}/assignees{{/user}}"),
        "blobs_url": format!("{api}/git/blobs{{/sha}}"),
        "branches_url": format!("{api}/branches{{/branch}}"),
        "collaborators_url": format!("{api}/collaborators{{/collaborator}}"),
        "comments_url": format!("{api}/comments{{/number}}"),
        "commits_url": format!("{api}/commits{{/sha}}"),
        "compare_url": format!("{api}/compare/{{base}}...{{head}}"),
        "contents_url": format!("{api}/contents/{{+path}}"),
        "contributors_url": format!("{api}/contributors"),
        "deployments_url": format!("{api}/deployments"),
        "downloads_url": format!("{api}/downloads"),
        "events_url": format!("{api}/events"),
        "forks_url": format!("{api}/forks"),
        "git_commits_url": format!("{api}/git/commits{{/sha}}"),
        "git_refs_url": format!("{api}/git/refs{{/sha}}"),
        "git_tags_url": format!("{api}/git/tags{{/sha}}"),
        "git_url": format!("git://{host}/{full_name}.git"),
        "issue_comment_url": format!("{api}/issues/comments{{/number}}"),
        "issue_events_url": format!("{api}/issues/events{{/number}}"),
        "issues_url": format!("{api}/issues{{/number}}"),
        "keys_url": format!("{api}/keys{{/key_id}}"),
        "labels_url": format!("{api}/labels{{/name}}"),
        "languages_url": format!("{api}/languages"),
        "merges_url": format!("{api}/merges"),
        "milestones_url": format!("{api}/milestones{{/number}}"),
        "notifications_url": format!("{api}/notifications{{?since,all,participating}}"),
        "pulls_url": format!("{api}/pulls{{/number}}"),
        "releases_url": format!("{api}/releases{{/id}}"),
        "ssh_url": format!("git@{host}:{full_name}.git"),
        "stargazers_url": format!("{api}/stargazers"),
        "statuses_url": format!("{api}/statuses/{{sha}}"),
        "subscribers_url": format!("{api}/subscribers"),
        "subscription_url": format!("{api}/subscription"),
        "tags_url": format!("{api}/tags"),
        "teams_url": format!("{api}/teams"),
        "trees_url": format!("{api}/git/trees{{/sha}}"),
        "clone_url": format!("{html}.git"),
        "mirror_url": null,
        "hooks_url": format!("{api}/hooks"),
        "svn_url": html,
    })
}

/// The repository fields the sandbox does not model (constant values).
fn repository_constants() -> Value {
    json!({
        "homepage": null,
        "language": null,
        "forks_count": 0,
        "forks": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "watchers": 0,
        "size": 0,
        "is_template": false,
        "topics": [],
        "has_issues": true,
        "has_projects": false,
        "has_wiki": false,
        "has_pages": false,
        "has_downloads": true,
        "has_discussions": false,
        "archived": false,
        "disabled": false,
        "allow_rebase_merge": true,
        "allow_squash_merge": true,
        "allow_merge_commit": true,
        "allow_auto_merge": false,
        "delete_branch_on_merge": false,
        "allow_forking": true,
        "web_commit_signoff_required": false,
        "license": null,
        "template_repository": null,
        "network_count": 0,
        "subscribers_count": 0,
    })
}

/// The repository shape; `full` (`GET /repos/{o}/{r}`) adds `parent` and `source` for forks.
pub(crate) fn repository(ctx: &Ctx, repo: &Repo, full: bool) -> Value {
    let full_name = repo.full_name();
    let api = format!("{}/repos/{full_name}", ctx.base);
    let html = format!("{}/{full_name}", ctx.base);
    let open_issues = repo.issues.values().filter(|i| i.open).count();
    let mut v = json!({
        "id": repo.id,
        "node_id": node_id("Repository", repo.id),
        "name": repo.name,
        "full_name": full_name,
        "owner": login_json(ctx, &repo.owner),
        "private": repo.private,
        "html_url": html,
        "description": null,
        "fork": repo.fork,
        "url": api,
        "default_branch": repo.default_branch,
        "open_issues_count": open_issues,
        "open_issues": open_issues,
        "visibility": if repo.private { "private" } else { "public" },
        "pushed_at": ts(repo.pushed_at),
        "created_at": ts(repo.created_at),
        "updated_at": ts(repo.updated_at),
    });
    let Some(map) = v.as_object_mut() else {
        return v;
    };
    if let Some(p) = ctx.world.permission(ctx.who, repo)
        && *ctx.who != Identity::Anonymous
    {
        map.insert("permissions".to_string(), permissions(p));
    }
    for part in [
        repository_urls(ctx.base, &full_name),
        repository_constants(),
    ] {
        if let Some(part) = part.as_object() {
            map.extend(part.clone());
        }
    }
    if repo.git.is_some() {
        // Git-backed repositories are cloned from the sandbox's smart HTTP endpoint.
        let clone_url = format!("{}/git/{full_name}.git", ctx.base);
        map.insert("clone_url".to_string(), json!(clone_url));
    }
    if full && let Some(parent) = repo.parent.as_ref().and_then(|k| ctx.world.repos.get(k)) {
        let parent = repository(ctx, parent, false);
        map.insert("parent".to_string(), parent.clone());
        map.insert("source".to_string(), parent);
    }
    v
}

/// A branch (`GET /repos/{o}/{r}/branches/{branch}`), at `sha`.
pub(crate) fn branch(ctx: &Ctx, repo: &Repo, name: &str, sha: &str) -> Value {
    let full_name = repo.full_name();
    let api = format!("{}/repos/{full_name}", ctx.base);
    let html = format!("{}/{full_name}", ctx.base);
    json!({
        "name": name,
        "commit": {
            "sha": sha,
            "node_id": node_id("Commit", 0),
            "url": format!("{api}/commits/{sha}"),
            "html_url": format!("{html}/commit/{sha}"),
        },
        "_links": {
            "self": format!("{api}/branches/{}", segment(name)),
            "html": format!("{html}/tree/{}", segment(name)),
        },
        "protected": false,
        "protection_url": format!("{api}/branches/{}/protection", segment(name)),
    })
}

pub(crate) fn label(ctx: &Ctx, repo: &Repo, name: &str) -> Value {
    let fallback = LabelDef {
        id: 0,
        name: name.to_string(),
        color: "ededed".to_string(),
    };
    let def = repo.labels.get(name).unwrap_or(&fallback);
    json!({
        "id": def.id,
        "node_id": node_id("Label", def.id),
        "url": format!("{}/repos/{}/labels/{}", ctx.base, repo.full_name(), segment(&def.name)),
        "name": def.name,
        "description": null,
        "color": def.color,
        "default": false,
    })
}

fn labels(ctx: &Ctx, repo: &Repo, issue: &Issue) -> Value {
    Value::Array(issue.labels.iter().map(|l| label(ctx, repo, l)).collect())
}

/// One end of a pull request (its `head` or `base`): a branch of `repo` at `sha`.
fn pull_end(ctx: &Ctx, repo: &Repo, branch: &str, sha: &str) -> Value {
    json!({
        "label": format!("{}:{branch}", repo.owner),
        "ref": branch,
        "sha": sha,
        "user": login_json(ctx, &repo.owner),
        "repo": repository(ctx, repo, false),
    })
}

/// A pull request: `pull-request-simple` (lists) or `pull-request` when `full`.
/// Returns `Null` for plain issues.
pub(crate) fn pull(ctx: &Ctx, repo: &Repo, issue: &Issue, full: bool) -> Value {
    let Some(p) = &issue.pull else {
        return Value::Null;
    };
    let full_name = repo.full_name();
    let api = format!("{}/repos/{full_name}", ctx.base);
    let html = format!("{}/{full_name}/pull/{}", ctx.base, issue.number);
    let n = issue.number;
    let head_repo = ctx.world.repos.get(&p.head_repo).unwrap_or(repo);
    let state = if issue.open { "open" } else { "closed" };
    let head = pull_end(ctx, head_repo, &p.head_ref, &p.head_sha);
    let base = pull_end(ctx, repo, &p.base_ref, &p.base_sha);
    let links = json!({
        "self": {"href": format!("{api}/pulls/{n}")},
        "html": {"href": html},
        "issue": {"href": format!("{api}/issues/{n}")},
        "comments": {"href": format!("{api}/issues/{n}/comments")},
        "review_comments": {"href": format!("{api}/pulls/{n}/comments")},
        "review_comment": {"href": format!("{api}/pulls/comments{{/number}}")},
        "commits": {"href": format!("{api}/pulls/{n}/commits")},
        "statuses": {"href": format!("{api}/statuses/{}", p.head_sha)},
    });
    let mut v = json!({
        "url": format!("{api}/pulls/{n}"),
        "id": p.id,
        "node_id": node_id("PullRequest", p.id),
        "html_url": html,
        "diff_url": format!("{html}.diff"),
        "patch_url": format!("{html}.patch"),
        "issue_url": format!("{api}/issues/{n}"),
        "commits_url": format!("{api}/pulls/{n}/commits"),
        "review_comments_url": format!("{api}/pulls/{n}/comments"),
        "review_comment_url": format!("{api}/pulls/comments{{/number}}"),
        "comments_url": format!("{api}/issues/{n}/comments"),
        "statuses_url": format!("{api}/statuses/{}", p.head_sha),
        "number": n,
        "state": state,
        "locked": false,
        "title": issue.title,
        "user": login_json(ctx, &issue.author),
        "body": issue.body,
        "labels": labels(ctx, repo, issue),
        "milestone": null,
        "active_lock_reason": null,
        "created_at": ts(issue.created_at),
        "updated_at": ts(issue.updated_at),
        "closed_at": opt_ts(issue.closed_at),
        "merged_at": opt_ts(p.merged_at),
        "merge_commit_sha": p.merge_commit_sha,
        "assignee": null,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "head": head,
        "base": base,
        "_links": links,
        "author_association": issue.author_association,
        "auto_merge": null,
        "draft": p.draft,
    });
    if full && let Some(map) = v.as_object_mut() {
        let (mergeable, mergeable_state) = match (issue.open, p.draft) {
            (true, true) => (json!(true), "draft"),
            (true, false) => (json!(true), "clean"),
            (false, _) => (Value::Null, "unknown"),
        };
        let extra = json!({
            "merged": p.merged,
            "mergeable": mergeable,
            "rebaseable": mergeable,
            "mergeable_state": mergeable_state,
            "merged_by": p.merged_by.as_deref().map_or(Value::Null, |l| login_json(ctx, l)),
            "comments": repo.comment_count(n),
            "review_comments": 0,
            "maintainer_can_modify": head_repo.id != repo.id,
            "commits": p.commits,
            "additions": p.additions,
            "deletions": 0,
            "changed_files": p.changed_files,
        });
        if let Some(extra) = extra.as_object() {
            map.extend(extra.clone());
        }
    }
    v
}

/// An issue (pull requests included, carrying a `pull_request` object).
pub(crate) fn issue(ctx: &Ctx, repo: &Repo, issue: &Issue) -> Value {
    let full_name = repo.full_name();
    let n = issue.number;
    let api = format!("{}/repos/{full_name}/issues/{n}", ctx.base);
    let kind = if issue.pull.is_some() {
        "pull"
    } else {
        "issues"
    };
    let html = format!("{}/{full_name}/{kind}/{n}", ctx.base);
    let state_reason = match (&issue.pull, issue.open) {
        (None, false) => json!("completed"),
        _ => Value::Null,
    };
    let mut v = json!({
        "id": issue.id,
        "node_id": node_id("Issue", issue.id),
        "url": api,
        "repository_url": format!("{}/repos/{full_name}", ctx.base),
        "labels_url": format!("{api}/labels{{/name}}"),
        "comments_url": format!("{api}/comments"),
        "events_url": format!("{api}/events"),
        "html_url": html,
        "number": n,
        "state": if issue.open { "open" } else { "closed" },
        "title": issue.title,
        "body": issue.body,
        "user": login_json(ctx, &issue.author),
        "labels": labels(ctx, repo, issue),
        "assignee": null,
        "assignees": [],
        "milestone": null,
        "locked": false,
        "active_lock_reason": null,
        "comments": repo.comment_count(n),
        "closed_at": opt_ts(issue.closed_at),
        "created_at": ts(issue.created_at),
        "updated_at": ts(issue.updated_at),
        "closed_by": issue.closed_by.as_deref().map_or(Value::Null, |l| login_json(ctx, l)),
        "author_association": issue.author_association,
        "state_reason": state_reason,
        "timeline_url": format!("{api}/timeline"),
        "pinned_comment": null,
        "performed_via_github_app": null,
    });
    if let (Some(p), Some(map)) = (&issue.pull, v.as_object_mut()) {
        let pulls = format!("{}/repos/{full_name}/pulls/{n}", ctx.base);
        map.insert("draft".to_string(), json!(p.draft));
        map.insert(
            "pull_request".to_string(),
            json!({
                "url": pulls,
                "html_url": html,
                "diff_url": format!("{html}.diff"),
                "patch_url": format!("{html}.patch"),
                "merged_at": opt_ts(p.merged_at),
            }),
        );
    }
    v
}

pub(crate) fn comment(ctx: &Ctx, repo: &Repo, c: &IssueComment) -> Value {
    let full_name = repo.full_name();
    let kind = match repo.issues.get(&c.issue) {
        Some(i) if i.pull.is_some() => "pull",
        _ => "issues",
    };
    json!({
        "id": c.id,
        "node_id": node_id("IssueComment", c.id),
        "url": format!("{}/repos/{full_name}/issues/comments/{}", ctx.base, c.id),
        "html_url": format!("{}/{full_name}/{kind}/{}#issuecomment-{}", ctx.base, c.issue, c.id),
        "body": c.body,
        "user": login_json(ctx, &c.author),
        "created_at": ts(c.created_at),
        "updated_at": ts(c.updated_at),
        "issue_url": format!("{}/repos/{full_name}/issues/{}", ctx.base, c.issue),
        "author_association": c.author_association,
        "performed_via_github_app": null,
        "pin": null,
        "minimized": null,
    })
}

/// One item of `GET /repos/{o}/{r}/issues/{n}/events` (a `labeled`/`unlabeled` event).
pub(crate) fn issue_event(ctx: &Ctx, repo: &Repo, e: &IssueEvent) -> Value {
    let color = repo
        .labels
        .get(&e.label)
        .map_or_else(|| "ededed".to_owned(), |l| l.color.clone());
    json!({
        "id": e.id,
        "node_id": node_id("LabeledEvent", e.id),
        "url": format!("{}/repos/{}/issues/events/{}", ctx.base, repo.full_name(), e.id),
        "actor": login_json(ctx, &e.actor),
        "event": e.event,
        "commit_id": null,
        "commit_url": null,
        "created_at": ts(e.created_at),
        "label": { "name": e.label, "color": color },
        "performed_via_github_app": null,
    })
}

/// `GET /repos/{o}/{r}/collaborators/{user}/permission`.
pub(crate) fn collaborator_permission(ctx: &Ctx, login: &str, permission: &str) -> Value {
    json!({
        "permission": permission,
        "role_name": permission,
        "user": login_json(ctx, login),
    })
}

/// `GET /app` (with the App's JWT).
pub(crate) fn app(ctx: &Ctx, app: &App) -> Value {
    json!({
        "id": app.id,
        "slug": app.slug,
        "node_id": node_id("Integration", app.id),
        "owner": login_json(ctx, "sandbox"),
        "name": app.slug,
        "description": "",
        "external_url": format!("{}/apps/{}", ctx.base, app.slug),
        "html_url": format!("{}/apps/{}", ctx.base, app.slug),
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "permissions": installation_permissions(),
        "events": ["pull_request", "issue_comment"],
    })
}

pub(crate) fn status(ctx: &Ctx, repo: &Repo, s: &CommitStatus) -> Value {
    let creator = ctx.world.user(&s.creator);
    json!({
        "url": format!("{}/repos/{}/statuses/{}", ctx.base, repo.full_name(), s.sha),
        "avatar_url": format!("{}/_sandbox/avatars/{}", ctx.base, creator.id),
        "id": s.id,
        "node_id": node_id("StatusContext", s.id),
        "state": s.state,
        "description": s.description,
        "target_url": s.target_url,
        "context": s.context,
        "created_at": ts(s.created_at),
        "updated_at": ts(s.created_at),
        "creator": user(ctx.base, &creator),
    })
}

pub(crate) fn deployment(ctx: &Ctx, repo: &Repo, d: &Deployment) -> Value {
    let api = format!("{}/repos/{}", ctx.base, repo.full_name());
    json!({
        "url": format!("{api}/deployments/{}", d.id),
        "id": d.id,
        "node_id": node_id("Deployment", d.id),
        "sha": d.sha,
        "ref": d.ref_name,
        "task": d.task,
        "payload": d.payload,
        "original_environment": d.original_environment,
        "environment": d.environment,
        "description": d.description,
        "creator": login_json(ctx, &d.creator),
        "created_at": ts(d.created_at),
        "updated_at": ts(d.updated_at),
        "statuses_url": format!("{api}/deployments/{}/statuses", d.id),
        "repository_url": api,
        "transient_environment": d.transient_environment,
        "production_environment": d.production_environment,
        "performed_via_github_app": null,
    })
}

pub(crate) fn deployment_status(
    ctx: &Ctx,
    repo: &Repo,
    d: &Deployment,
    s: &DeploymentStatus,
) -> Value {
    let api = format!("{}/repos/{}", ctx.base, repo.full_name());
    let log_url = s.log_url.clone().unwrap_or_default();
    json!({
        "url": format!("{api}/deployments/{}/statuses/{}", d.id, s.id),
        "id": s.id,
        "node_id": node_id("DeploymentStatus", s.id),
        "state": s.state,
        "creator": login_json(ctx, &s.creator),
        "description": s.description.clone().unwrap_or_default(),
        "environment": s.environment,
        "target_url": log_url,
        "created_at": ts(s.created_at),
        "updated_at": ts(s.created_at),
        "deployment_url": format!("{api}/deployments/{}", d.id),
        "repository_url": api,
        "environment_url": s.environment_url.clone().unwrap_or_default(),
        "log_url": log_url,
        "performed_via_github_app": null,
    })
}

/// The permissions every sandbox installation has.
pub(crate) fn installation_permissions() -> Value {
    json!({
        "contents": "read",
        "deployments": "write",
        "issues": "write",
        "metadata": "read",
        "pull_requests": "write",
        "statuses": "write",
    })
}

pub(crate) fn installation(ctx: &Ctx, inst: &Installation) -> Value {
    let account = ctx.world.user(&inst.account);
    let slug = ctx
        .world
        .apps
        .get(&inst.app_id)
        .map_or_else(String::new, |a| a.slug.clone());
    json!({
        "id": inst.id,
        "account": user(ctx.base, &account),
        "repository_selection": "selected",
        "access_tokens_url": format!("{}/app/installations/{}/access_tokens", ctx.base, inst.id),
        "repositories_url": format!("{}/installation/repositories", ctx.base),
        "html_url": format!("{}/settings/installations/{}", ctx.base, inst.id),
        "app_id": inst.app_id,
        "app_slug": slug,
        "target_id": account.id,
        "target_type": "User",
        "permissions": installation_permissions(),
        "events": ["issue_comment", "pull_request", "push"],
        "created_at": ts(inst.created_at),
        "updated_at": ts(inst.created_at),
        "single_file_name": null,
        "has_multiple_single_files": false,
        "single_file_paths": [],
        "suspended_by": null,
        "suspended_at": null,
    })
}

pub(crate) fn installation_token(
    ctx: &Ctx,
    inst: &Installation,
    token: &str,
    expires_at: DateTime<Utc>,
) -> Value {
    let repos: Vec<Value> = inst
        .repos
        .iter()
        .filter_map(|k| ctx.world.repos.get(k))
        .map(|r| repository(ctx, r, false))
        .collect();
    json!({
        "token": token,
        "expires_at": ts(expires_at),
        "permissions": installation_permissions(),
        "repository_selection": "selected",
        "repositories": repos,
    })
}

pub(crate) fn rate_limit(core: Bucket) -> Value {
    let core = json!({
        "limit": core.limit,
        "used": core.used,
        "remaining": core.remaining(),
        "reset": core.reset,
    });
    let other = |limit: u64| {
        json!({
            "limit": limit,
            "used": 0,
            "remaining": limit,
            "reset": crate::world::unix_now() + 3600,
        })
    };
    json!({
        "resources": {
            "core": core,
            "search": other(30),
            "graphql": other(5000),
            "integration_manifest": other(5000),
            "source_import": other(100),
            "actions_runner_registration": other(10000),
            "scim": other(15000),
            "dependency_snapshots": other(100),
            "code_search": other(10),
            "code_scanning_autofix": other(10),
        },
        "rate": core,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_follow_githubs_legacy_format() {
        assert_eq!(node_id("User", 1), "MDQ6VXNlcjE=");
        assert_eq!(node_id("PullRequest", 1), "MDExOlB1bGxSZXF1ZXN0MQ==");
        assert_eq!(
            node_id("Repository", 1296269),
            "MDEwOlJlcG9zaXRvcnkxMjk2MjY5"
        );
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("needs preview"), "needs%20preview");
        assert_eq!(segment("a/b"), "a%2Fb");
    }
}
