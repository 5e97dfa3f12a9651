//! The REST routes. Each handler takes the world's lock once, checks access, and answers with
//! a shape from [`crate::shapes`]; the `gate` middleware does everything cross-cutting.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Router, middleware};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Shared;
use crate::http::{ApiError, Query, Reply, gate, paginate};
use crate::shapes::{self, Ctx};
use crate::world::{
    Caller, DeploymentInput, DeploymentStatusInput, Identity, Issue, Permission, PullEdit,
    PullInput, Repo, StatusInput, World, repo_key,
};

type St = State<Arc<Shared>>;
type Me = Extension<Caller>;
type Answer = Result<Reply, ApiError>;

/// The sandbox's whole HTTP surface.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let repo = "/repos/{owner}/{repo}";
    Router::new()
        .route("/rate_limit", get(rate_limit))
        .route("/user", get(authenticated_user))
        .route("/app", get(authenticated_app))
        .route(
            &format!("{repo}/collaborators/{{username}}/permission"),
            get(collaborator_permission),
        )
        .route(
            &format!("{repo}/issues/{{number}}/events"),
            get(list_issue_events),
        )
        .route(repo, get(get_repo))
        .route(&format!("{repo}/pulls"), get(list_pulls).post(create_pull))
        .route(
            &format!("{repo}/pulls/{{number}}"),
            get(get_pull).patch(edit_pull),
        )
        .route(
            &format!("{repo}/pulls/{{number}}/comments"),
            get(list_review_comments),
        )
        .route(&format!("{repo}/branches/{{*branch}}"), get(get_branch))
        .route(
            &format!("{repo}/issues/{{number}}/labels"),
            post(add_labels),
        )
        .route(
            &format!("{repo}/issues/{{number}}/labels/{{name}}"),
            axum::routing::delete(remove_label),
        )
        .route(
            &format!("{repo}/issues"),
            get(list_issues).post(create_issue),
        )
        .route(&format!("{repo}/contents/{{*path}}"), get(get_contents))
        .route(&format!("{repo}/issues/comments"), get(list_repo_comments))
        .route(
            &format!("{repo}/issues/comments/{{id}}"),
            // GitHub accepts POST wherever it accepts PATCH (octocrab's `update_comment` uses it).
            get(get_comment)
                .patch(edit_comment)
                .post(edit_comment)
                .delete(delete_comment),
        )
        .route(
            &format!("{repo}/issues/{{number}}"),
            get(get_issue).patch(edit_issue_state),
        )
        .route(
            &format!("{repo}/issues/{{number}}/comments"),
            get(list_issue_comments).post(create_comment),
        )
        .route(&format!("{repo}/statuses/{{sha}}"), post(create_status))
        .route(
            &format!("{repo}/commits/{{sha}}/statuses"),
            get(list_statuses),
        )
        .route(
            &format!("{repo}/deployments"),
            get(list_deployments).post(create_deployment),
        )
        .route(&format!("{repo}/deployments/{{id}}"), get(get_deployment))
        .route(
            &format!("{repo}/deployments/{{id}}/statuses"),
            get(list_deployment_statuses).post(create_deployment_status),
        )
        .route(&format!("{repo}/tarball"), get(tarball_default_branch))
        .route(&format!("{repo}/tarball/{{*reference}}"), get(tarball))
        .route(&format!("{repo}/installation"), get(repo_installation))
        .route(
            "/app/installations/{id}/access_tokens",
            post(create_installation_token),
        )
        .route(
            "/_sandbox/tarballs/{owner}/{repo}/{sha}",
            get(download_tarball),
        )
        .route("/git/{owner}/{repo}/{*rest}", any(crate::git_http::serve))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// A numeric path parameter; anything else is a 404 like on GitHub.
fn number(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found())
}

/// Parses a JSON request body: 400 when it is not JSON, 422 when it lacks required fields or
/// has wrongly typed ones.
fn body<T: DeserializeOwned>(bytes: &[u8], resource: &str) -> Result<T, ApiError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|_| ApiError::problems_parsing_json())?;
    if !value.is_object() {
        return Err(ApiError::problems_parsing_json());
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable(format!("Invalid request.\n\n{e} (in {resource})")))
}

#[derive(serde::Deserialize)]
struct BodyInput {
    body: Option<String>,
}

fn comment_body(bytes: &[u8]) -> Result<String, ApiError> {
    let input: BodyInput = body(bytes, "IssueComment")?;
    input
        .body
        .ok_or_else(|| ApiError::invalid("IssueComment", "body", "missing_field"))
}

/// What the shapes need to draw an answer for `who`.
/// A `GET` of one item of a repository the caller can read, by the number or id in its path:
/// `find` picks it, `shape` renders it; 404 when either the repository or the item is missing.
fn read_one<T>(
    s: &Shared,
    me: &Caller,
    (owner, name, raw): (&str, &str, &str),
    find: impl FnOnce(&Repo, u64) -> Option<&T>,
    shape: impl FnOnce(&Ctx<'_>, &Repo, &T) -> Value,
) -> Answer {
    let n = number(raw)?;
    let world = s.world();
    let key = world.check_repo(&me.identity, owner, name, Permission::Pull)?;
    let repo = &world.repos[&key];
    let item = find(repo, n).ok_or_else(ApiError::not_found)?;
    let ctx = ctx(s, &world, &me.identity);
    Ok(Reply::ok(shape(&ctx, repo, item)))
}

fn ctx<'a>(s: &'a Shared, world: &'a World, who: &'a Identity) -> Ctx<'a> {
    Ctx {
        base: &s.base_url,
        world,
        who,
    }
}

/// Answers the requested page of `items` as a JSON array, each item drawn by `shape`, with the
/// `Link` header to the other pages.
fn paged<T>(ctx: &Ctx, q: &Query, uri: &Uri, items: Vec<T>, shape: impl Fn(&T) -> Value) -> Answer {
    let (page, link) = paginate(items, q, ctx.base, uri.path());
    let body = page.iter().map(shape).collect();
    Ok(Reply::ok(Value::Array(body)).link(link))
}

// ---------------------------------------------------------------------------------------------

async fn rate_limit(State(s): St, Extension(me): Me) -> Answer {
    let mut world = s.world();
    let bucket = *world.bucket(&me.identity);
    Ok(Reply::ok(shapes::rate_limit(bucket)))
}

async fn get_repo(
    State(s): St,
    Extension(me): Me,
    Path((owner, name)): Path<(String, String)>,
) -> Answer {
    let world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Pull)?;
    let ctx = ctx(&s, &world, &me.identity);
    Ok(Reply::ok(shapes::repository(
        &ctx,
        &world.repos[&key],
        true,
    )))
}

/// Orders items by `(key, number)`, reversed for `direction=desc`.
fn order<K: Ord>(items: &mut [&Issue], desc: bool, key: impl Fn(&Issue) -> K) {
    items.sort_by(|a, b| key(a).cmp(&key(b)).then(a.id.cmp(&b.id)));
    if desc {
        items.reverse();
    }
}

fn state_filter(q: &Query) -> Result<impl Fn(&Issue) -> bool, ApiError> {
    let state = q
        .choice("state", &["open", "closed", "all"], "open")?
        .to_string();
    Ok(move |i: &Issue| match state.as_str() {
        "open" => i.open,
        "closed" => !i.open,
        _ => true,
    })
}

async fn list_pulls(
    State(s): St,
    Extension(me): Me,
    Path((owner, name)): Path<(String, String)>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Answer {
    let q = Query::parse(raw.as_deref());
    let keep = state_filter(&q)?;
    let sort = q.choice(
        "sort",
        &["created", "updated", "popularity", "long-running"],
        "created",
    )?;
    let default_direction = if sort == "created" { "desc" } else { "asc" };
    let desc = q.choice("direction", &["asc", "desc"], default_direction)? == "desc";
    s.sync_git_heads(&repo_key(&owner, &name)).await;
    let world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Pull)?;
    let repo = &world.repos[&key];
    let head = q.get("head").map(|h| match h.split_once(':') {
        Some((user, branch)) => (Some(user.to_ascii_lowercase()), branch.to_string()),
        None => (None, h.to_string()),
    });
    let base = q.get("base");
    let mut items: Vec<&Issue> = repo
        .issues
        .values()
        .filter(|i| keep(i))
        .filter(|i| {
            let Some(p) = &i.pull else { return false };
            let head_ok = head.as_ref().is_none_or(|(user, branch)| {
                p.head_ref == *branch
                    && user
                        .as_ref()
                        .is_none_or(|u| p.head_repo.split('/').next() == Some(u.as_str()))
            });
            head_ok && base.is_none_or(|b| p.base_ref == b)
        })
        .collect();
    match sort {
        "updated" => order(&mut items, desc, |i| i.updated_at),
        "popularity" => order(&mut items, desc, |i| repo.comment_count(i.number)),
        // long-running: open the longest and still active; approximated by creation time.
        "long-running" => order(&mut items, !desc, |i| i.created_at),
        _ => order(&mut items, desc, |i| i.created_at),
    }
    let ctx = ctx(&s, &world, &me.identity);
    paged(&ctx, &q, &uri, items, |i| {
        shapes::pull(&ctx, repo, i, false)
    })
}

async fn get_pull(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, n)): Path<(String, String, String)>,
) -> Answer {
    s.sync_git_heads(&repo_key(&owner, &name)).await;
    read_one(
        &s,
        &me,
        (&owner, &name, &n),
        |repo, n| repo.issues.get(&n).filter(|i| i.pull.is_some()),
        |ctx, repo, issue| shapes::pull(ctx, repo, issue, true),
    )
}

/// `GET /repos/{o}/{r}/pulls/{n}/comments`: review comments. The sandbox has no line comments
/// (its reviews are issue comments), so a readable pull request has an empty list.
async fn list_review_comments(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, n)): Path<(String, String, String)>,
) -> Answer {
    read_one(
        &s,
        &me,
        (&owner, &name, &n),
        |repo, n| repo.issues.get(&n).filter(|i| i.pull.is_some()),
        |_, _, _| serde_json::json!([]),
    )
}

/// Refuses anonymous writes as GitHub does (before any repository lookup).
fn signed_in(me: &Caller) -> Result<(), ApiError> {
    if me.identity == Identity::Anonymous {
        return Err(ApiError::unauthorized(
            "Requires authentication".to_string(),
        ));
    }
    Ok(())
}

/// `POST /repos/{o}/{r}/pulls`: a pull request from a pushed branch of a git-backed repository.
async fn create_pull(
    State(s): St,
    Extension(me): Me,
    Path((owner, name)): Path<(String, String)>,
    bytes: Bytes,
) -> Answer {
    signed_in(&me)?;
    let input: PullInput = body(&bytes, "PullRequest")?;
    let key = {
        let world = s.world();
        world.check_repo(&me.identity, &owner, &name, Permission::Pull)?
    };
    s.sync_git_heads(&key).await;
    let mut world = s.world();
    let author = world.actor_login(&me.identity);
    let number = world.create_pull(&key, &author, input)?;
    let ctx = ctx(&s, &world, &me.identity);
    let repo = &world.repos[&key];
    let body = shapes::pull(&ctx, repo, &repo.issues[&number], true);
    let location = body["url"].as_str().unwrap_or_default().to_string();
    Ok(Reply::created(body).header(LOCATION, &location))
}

/// `PATCH /repos/{o}/{r}/pulls/{n}`: title, body, state.
async fn edit_pull(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, n)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    let n = number(&n)?;
    let input: PullEdit = body(&bytes, "PullRequest")?;
    let mut world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    world.edit_pull(&key, n, input)?;
    let ctx = ctx(&s, &world, &me.identity);
    let repo = &world.repos[&key];
    Ok(Reply::ok(shapes::pull(&ctx, repo, &repo.issues[&n], true)))
}

/// `GET /repos/{o}/{r}/branches/{branch}`: read from git now for git-backed repositories.
async fn get_branch(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, branch)): Path<(String, String, String)>,
) -> Answer {
    let key = {
        let world = s.world();
        world.check_repo(&me.identity, &owner, &name, Permission::Pull)?
    };
    if !crate::gitrepo::check_branch(&branch) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "Branch not found"));
    }
    s.sync_git_heads(&key).await;
    let world = s.world();
    let repo = &world.repos[&key];
    let sha = match &repo.git {
        Some(git) => git.branches.get(&branch).cloned(),
        None => repo.resolve_ref(&branch),
    }
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Branch not found"))?;
    let ctx = ctx(&s, &world, &me.identity);
    Ok(Reply::ok(shapes::branch(&ctx, repo, &branch, &sha)))
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum LabelsInput {
    Object { labels: Vec<String> },
    List(Vec<String>),
}

/// `POST /repos/{o}/{r}/issues/{n}/labels` (`{"labels": [...]}` or a bare array): adds them,
/// recording `labeled` events by the caller; answers the issue's labels.
async fn add_labels(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, n)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    let n = number(&n)?;
    let input: LabelsInput = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::invalid("Label", "labels", "invalid"))?;
    let labels = match input {
        LabelsInput::Object { labels } | LabelsInput::List(labels) => labels,
    };
    if labels.iter().any(|l| l.trim().is_empty() || l.len() > 100) {
        return Err(ApiError::invalid("Label", "name", "invalid"));
    }
    let mut world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    let actor = world.actor_login(&me.identity);
    let now = world.add_labels(&key, n, &labels, &actor)?;
    let ctx = ctx(&s, &world, &me.identity);
    let repo = &world.repos[&key];
    Ok(Reply::ok(Value::Array(
        now.iter().map(|l| shapes::label(&ctx, repo, l)).collect(),
    )))
}

/// `DELETE /repos/{o}/{r}/issues/{n}/labels/{name}`.
async fn remove_label(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, n, label)): Path<(String, String, String, String)>,
) -> Answer {
    let n = number(&n)?;
    let mut world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    let actor = world.actor_login(&me.identity);
    let now = world.remove_label(&key, n, &label, &actor)?;
    let ctx = ctx(&s, &world, &me.identity);
    let repo = &world.repos[&key];
    Ok(Reply::ok(Value::Array(
        now.iter().map(|l| shapes::label(&ctx, repo, l)).collect(),
    )))
}

async fn list_issues(
    State(s): St,
    Extension(me): Me,
    Path((owner, name)): Path<(String, String)>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Answer {
    let q = Query::parse(raw.as_deref());
    let keep = state_filter(&q)?;
    let sort = q.choice("sort", &["created", "updated", "comments"], "created")?;
    let desc = q.choice("direction", &["asc", "desc"], "desc")? == "desc";
    let since = q.since()?;
    let labels: Vec<String> = q
        .get("labels")
        .map(|l| {
            l.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let creator = q.get("creator").map(str::to_ascii_lowercase);
    let world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Pull)?;
    let repo = &world.repos[&key];
    let mut items: Vec<&Issue> = repo
        .issues
        .values()
        .filter(|i| keep(i))
        .filter(|i| since.is_none_or(|t| i.updated_at >= t))
        .filter(|i| labels.iter().all(|l| i.labels.contains(l)))
        .filter(|i| {
            creator
                .as_ref()
                .is_none_or(|c| i.author.eq_ignore_ascii_case(c))
        })
        .collect();
    match sort {
        "updated" => order(&mut items, desc, |i| i.updated_at),
        "comments" => order(&mut items, desc, |i| repo.comment_count(i.number)),
        _ => order(&mut items, desc, |i| i.created_at),
    }
    let ctx = ctx(&s, &world, &me.identity);
    paged(&ctx, &q, &uri, items, |i| shapes::issue(&ctx, repo, i))
}

async fn get_issue(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, n)): Path<(String, String, String)>,
) -> Answer {
    read_one(
        &s,
        &me,
        (&owner, &name, &n),
        |repo, n| repo.issues.get(&n),
        shapes::issue,
    )
}

#[derive(serde::Deserialize)]
struct IssueInput {
    title: String,
    #[serde(default)]
    body: Option<String>,
}

/// `POST /repos/{o}/{r}/issues`: a new issue by the caller (push access, as the daemon has).
async fn create_issue(
    State(s): St,
    Extension(me): Me,
    Path((owner, name)): Path<(String, String)>,
    bytes: Bytes,
) -> Answer {
    signed_in(&me)?;
    let input: IssueInput = body(&bytes, "Issue")?;
    if input.title.trim().is_empty() {
        return Err(ApiError::invalid("Issue", "title", "missing_field"));
    }
    let mut world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    let author = world.actor_login(&me.identity);
    let number = world.create_issue(
        &key,
        &input.title,
        input.body.as_deref().unwrap_or(""),
        &author,
    );
    let ctx = ctx(&s, &world, &me.identity);
    let repo = &world.repos[&key];
    let body = shapes::issue(&ctx, repo, &repo.issues[&number]);
    let location = body["url"].as_str().unwrap_or_default().to_string();
    Ok(Reply::created(body).header(LOCATION, &location))
}

#[derive(serde::Deserialize)]
struct IssueStateInput {
    state: Option<String>,
}

/// `PATCH /repos/{o}/{r}/issues/{n}`: the state (`open` or `closed`); other fields are ignored.
async fn edit_issue_state(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, n)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    signed_in(&me)?;
    let n = number(&n)?;
    let input: IssueStateInput = body(&bytes, "Issue")?;
    let open = match input.state.as_deref() {
        None => None,
        Some("open") => Some(true),
        Some("closed") => Some(false),
        Some(_) => return Err(ApiError::invalid("Issue", "state", "invalid")),
    };
    let mut world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    let actor = world.actor_login(&me.identity);
    world.set_issue_state(&key, n, open, &actor)?;
    let ctx = ctx(&s, &world, &me.identity);
    let repo = &world.repos[&key];
    Ok(Reply::ok(shapes::issue(&ctx, repo, &repo.issues[&n])))
}

/// `GET /repos/{o}/{r}/contents/{path}?ref=`: a file of a git-backed repository, base64 as
/// GitHub answers it; 404 for a missing file, a directory, or a path that is not plain.
async fn get_contents(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, path)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Answer {
    use base64::Engine as _;
    let q = Query::parse(raw.as_deref());
    let reference = q.get("ref").map(str::to_owned);
    if !crate::gitrepo::check_path(&path)
        || reference
            .as_deref()
            .is_some_and(|r| !crate::gitrepo::check_revision(r))
    {
        return Err(ApiError::not_found());
    }
    let key = {
        let world = s.world();
        world.check_repo(&me.identity, &owner, &name, Permission::Pull)?
    };
    s.sync_git_heads(&key).await;
    let (sha, dir) = {
        let world = s.world();
        let repo = &world.repos[&key];
        let reference = reference.as_deref().unwrap_or(&repo.default_branch);
        let dir = repo
            .git
            .as_ref()
            .map(|g| g.dir.clone())
            .ok_or_else(ApiError::not_found)?;
        (
            repo.resolve_ref(reference)
                .ok_or_else(ApiError::not_found)?,
            dir,
        )
    };
    let root = s.git_root.path().to_path_buf();
    let (sha2, path2) = (sha.clone(), path.clone());
    let bytes =
        tokio::task::spawn_blocking(move || crate::gitrepo::file_at(&root, &dir, &sha2, &path2))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .ok_or_else(ApiError::not_found)?;
    let file_name = path.rsplit('/').next().unwrap_or(&path).to_string();
    Ok(Reply::ok(serde_json::json!({
        "type": "file",
        "encoding": "base64",
        "size": bytes.len(),
        "name": file_name,
        "path": path,
        "sha": sha,
        "content": base64::engine::general_purpose::STANDARD.encode(&bytes),
    })))
}

/// Lists comments (of one issue, or of the whole repository) with `since`, `sort`, `direction`
/// and paging.
fn list_comments(
    s: &Shared,
    me: &Caller,
    owner: &str,
    name: &str,
    issue: Option<u64>,
    uri: &Uri,
    raw: Option<&str>,
) -> Answer {
    let q = Query::parse(raw);
    let since = q.since()?;
    let sort = q.choice("sort", &["created", "updated"], "created")?;
    let desc = q.choice("direction", &["asc", "desc"], "asc")? == "desc";
    let world = s.world();
    let key = world.check_repo(&me.identity, owner, name, Permission::Pull)?;
    let repo = &world.repos[&key];
    if let Some(n) = issue
        && !repo.issues.contains_key(&n)
    {
        return Err(ApiError::not_found());
    }
    let mut items: Vec<_> = repo
        .comments
        .values()
        .filter(|c| issue.is_none_or(|n| c.issue == n))
        .filter(|c| since.is_none_or(|t| c.updated_at >= t))
        .collect();
    let stamp = |c: &crate::world::IssueComment| -> DateTime<Utc> {
        if sort == "updated" {
            c.updated_at
        } else {
            c.created_at
        }
    };
    items.sort_by(|a, b| stamp(a).cmp(&stamp(b)).then(a.id.cmp(&b.id)));
    if desc {
        items.reverse();
    }
    let ctx = ctx(s, &world, &me.identity);
    paged(&ctx, &q, uri, items, |c| shapes::comment(&ctx, repo, c))
}

async fn list_repo_comments(
    State(s): St,
    Extension(me): Me,
    Path((owner, name)): Path<(String, String)>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Answer {
    list_comments(&s, &me, &owner, &name, None, &uri, raw.as_deref())
}

async fn list_issue_comments(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, n)): Path<(String, String, String)>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Answer {
    let n = number(&n)?;
    list_comments(&s, &me, &owner, &name, Some(n), &uri, raw.as_deref())
}

async fn get_comment(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, id)): Path<(String, String, String)>,
) -> Answer {
    read_one(
        &s,
        &me,
        (&owner, &name, &id),
        |repo, id| repo.comments.get(&id),
        shapes::comment,
    )
}

async fn create_comment(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, n)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    let n = number(&n)?;
    let mut world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    let text = comment_body(&bytes)?;
    let author = world.actor_login(&me.identity);
    let comment = world.add_comment(&key, n, &author, &text)?;
    let ctx = ctx(&s, &world, &me.identity);
    let body = shapes::comment(&ctx, &world.repos[&key], &comment);
    let location = body["url"].as_str().unwrap_or_default().to_string();
    Ok(Reply::created(body).header(LOCATION, &location))
}

async fn edit_comment(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, id)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    let id = number(&id)?;
    let mut world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    let text = comment_body(&bytes)?;
    let comment = world.edit_comment(&key, id, &text)?;
    let ctx = ctx(&s, &world, &me.identity);
    Ok(Reply::ok(shapes::comment(
        &ctx,
        &world.repos[&key],
        &comment,
    )))
}

async fn delete_comment(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, id)): Path<(String, String, String)>,
) -> Answer {
    let id = number(&id)?;
    let mut world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    world.delete_comment(&key, id)?;
    Ok(Reply::no_content())
}

async fn create_status(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, sha)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    let mut world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    let input: StatusInput = body(&bytes, "Status")?;
    let creator = world.actor_login(&me.identity);
    let status = world.add_status(&key, &sha, &creator, input)?;
    let ctx = ctx(&s, &world, &me.identity);
    let body = shapes::status(&ctx, &world.repos[&key], &status);
    let location = body["url"].as_str().unwrap_or_default().to_string();
    Ok(Reply::created(body).header(LOCATION, &location))
}

async fn list_statuses(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, reference)): Path<(String, String, String)>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Answer {
    let q = Query::parse(raw.as_deref());
    let world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Pull)?;
    let repo = &world.repos[&key];
    let sha = repo
        .resolve_ref(&reference)
        .ok_or_else(|| ApiError::unprocessable(format!("No commit found for SHA: {reference}")))?;
    let items: Vec<_> = repo
        .statuses
        .iter()
        .rev()
        .filter(|st| st.sha == sha)
        .collect();
    let ctx = ctx(&s, &world, &me.identity);
    paged(&ctx, &q, &uri, items, |st| shapes::status(&ctx, repo, st))
}

async fn list_deployments(
    State(s): St,
    Extension(me): Me,
    Path((owner, name)): Path<(String, String)>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Answer {
    let q = Query::parse(raw.as_deref());
    let world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Pull)?;
    let repo = &world.repos[&key];
    let (environment, sha, reference, task) = (
        q.get("environment"),
        q.get("sha"),
        q.get("ref"),
        q.get("task"),
    );
    let items: Vec<_> = repo
        .deployments
        .values()
        .rev()
        .filter(|d| environment.is_none_or(|e| d.environment == e))
        .filter(|d| sha.is_none_or(|x| d.sha == x))
        .filter(|d| reference.is_none_or(|r| d.ref_name == r))
        .filter(|d| task.is_none_or(|t| d.task == t))
        .collect();
    let ctx = ctx(&s, &world, &me.identity);
    paged(&ctx, &q, &uri, items, |d| shapes::deployment(&ctx, repo, d))
}

async fn get_deployment(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, id)): Path<(String, String, String)>,
) -> Answer {
    read_one(
        &s,
        &me,
        (&owner, &name, &id),
        |repo, id| repo.deployments.get(&id),
        shapes::deployment,
    )
}

async fn create_deployment(
    State(s): St,
    Extension(me): Me,
    Path((owner, name)): Path<(String, String)>,
    bytes: Bytes,
) -> Answer {
    let mut world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    let input: DeploymentInput = body(&bytes, "Deployment")?;
    let creator = world.actor_login(&me.identity);
    let deployment = world.create_deployment(&key, &creator, input)?;
    let ctx = ctx(&s, &world, &me.identity);
    Ok(Reply::created(shapes::deployment(
        &ctx,
        &world.repos[&key],
        &deployment,
    )))
}

async fn list_deployment_statuses(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, id)): Path<(String, String, String)>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Answer {
    let id = number(&id)?;
    let q = Query::parse(raw.as_deref());
    let world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Pull)?;
    let repo = &world.repos[&key];
    let deployment = repo.deployments.get(&id).ok_or_else(ApiError::not_found)?;
    let items: Vec<_> = deployment.statuses.iter().rev().collect();
    let ctx = ctx(&s, &world, &me.identity);
    paged(&ctx, &q, &uri, items, |st| {
        shapes::deployment_status(&ctx, repo, deployment, st)
    })
}

async fn create_deployment_status(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, id)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    let id = number(&id)?;
    let mut world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    let input: DeploymentStatusInput = body(&bytes, "DeploymentStatus")?;
    let creator = world.actor_login(&me.identity);
    let (deployment, status) = world.add_deployment_status(&key, id, &creator, input)?;
    let ctx = ctx(&s, &world, &me.identity);
    Ok(Reply::created(shapes::deployment_status(
        &ctx,
        &world.repos[&key],
        &deployment,
        &status,
    )))
}

// -- identities, permissions, issue events ---------------------------------------------------

/// `GET /user`: the user a token belongs to. Installation tokens and JWTs are not users.
async fn authenticated_user(State(s): St, Extension(me): Me) -> Answer {
    let world = s.world();
    match &me.identity {
        Identity::User(login) => Ok(Reply::ok(shapes::user(&s.base_url, &world.user(login)))),
        Identity::Anonymous => Err(ApiError::unauthorized(
            "Requires authentication".to_string(),
        )),
        _ => Err(ApiError::forbidden(
            "Resource not accessible by integration",
        )),
    }
}

/// `GET /app`: the App a JWT was signed for.
async fn authenticated_app(State(s): St, Extension(me): Me) -> Answer {
    let id = app_of(&me)?;
    let world = s.world();
    let app = world.apps.get(&id).ok_or_else(ApiError::not_found)?;
    let ctx = ctx(&s, &world, &me.identity);
    Ok(Reply::ok(shapes::app(&ctx, app)))
}

async fn collaborator_permission(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, username)): Path<(String, String, String)>,
) -> Answer {
    let world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Push)?;
    if !world.users.contains_key(&username.to_ascii_lowercase()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{username} is not a user"),
        ));
    }
    let repo = &world.repos[&key];
    let permission = world.collaborator_permission(&username, repo);
    let ctx = ctx(&s, &world, &me.identity);
    Ok(Reply::ok(shapes::collaborator_permission(
        &ctx, &username, permission,
    )))
}

async fn list_issue_events(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, n)): Path<(String, String, String)>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Answer {
    let n = number(&n)?;
    let q = Query::parse(raw.as_deref());
    let world = s.world();
    let key = world.check_repo(&me.identity, &owner, &name, Permission::Pull)?;
    let repo = &world.repos[&key];
    if !repo.issues.contains_key(&n) {
        return Err(ApiError::not_found());
    }
    let items: Vec<_> = repo.events.iter().filter(|e| e.issue == n).collect();
    let ctx = ctx(&s, &world, &me.identity);
    paged(&ctx, &q, &uri, items, |e| {
        shapes::issue_event(&ctx, repo, e)
    })
}

// -- archives ---------------------------------------------------------------------------------

async fn tarball_for(
    s: &Shared,
    me: &Caller,
    owner: &str,
    name: &str,
    reference: Option<&str>,
) -> Answer {
    let key = {
        let world = s.world();
        world.check_repo(&me.identity, owner, name, Permission::Pull)?
    };
    s.sync_git_heads(&key).await;
    let (found, git_dir, location_base) = {
        let world = s.world();
        let repo = &world.repos[&key];
        let reference = reference.unwrap_or(&repo.default_branch);
        (
            repo.resolve_ref(reference),
            repo.git.as_ref().map(|g| g.dir.clone()),
            format!(
                "{}/_sandbox/tarballs/{}/{}",
                s.base_url, repo.owner, repo.name
            ),
        )
    };
    let sha = match (found, git_dir, reference) {
        (Some(sha), _, _) => sha,
        // Any other commit git knows (an older one, an abbreviated sha), asked of git.
        (None, Some(dir), Some(reference)) if crate::gitrepo::check_revision(reference) => {
            let root = s.git_root.path().to_path_buf();
            let reference = reference.to_string();
            tokio::task::spawn_blocking(move || crate::gitrepo::resolve(&root, &dir, &reference))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .ok_or_else(ApiError::not_found)?
        }
        _ => return Err(ApiError::not_found()),
    };
    Ok(Reply::redirect(&format!("{location_base}/{sha}")))
}

async fn tarball_default_branch(
    State(s): St,
    Extension(me): Me,
    Path((owner, name)): Path<(String, String)>,
) -> Answer {
    tarball_for(&s, &me, &owner, &name, None).await
}

async fn tarball(
    State(s): St,
    Extension(me): Me,
    Path((owner, name, reference)): Path<(String, String, String)>,
) -> Answer {
    tarball_for(&s, &me, &owner, &name, Some(&reference)).await
}

/// `git archive` of a commit of a git-backed repository; `None` when `sha` is not one.
async fn git_archive(s: &Shared, dir: std::path::PathBuf, top: &str, sha: &str) -> Option<Bytes> {
    let full_sha = sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit());
    if !full_sha {
        return None;
    }
    let root = s.git_root.path().to_path_buf();
    let (top, sha) = (top.to_string(), sha.to_string());
    let built =
        tokio::task::spawn_blocking(move || crate::gitrepo::archive(&root, &dir, &sha, &top))
            .await
            .ok()?;
    match built {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(error) => {
            tracing::debug!(%error, "github sandbox: git archive");
            None
        }
    }
}

/// The redirect target (codeload's role): no authentication, like a signed download URL.
async fn download_tarball(
    State(s): St,
    Path((owner, name, sha)): Path<(String, String, String)>,
) -> Response {
    let key = (crate::world::repo_key(&owner, &name), sha.clone());
    let archives = || s.archives.lock().unwrap_or_else(|p| p.into_inner());
    let cached = archives().get(&key).cloned();
    // A commit with a file tree (`open_pr`/`push`, even on a git-backed repository) is built
    // from it; other commits of a git-backed repository are `git archive`d.
    let git_dir = s.git_dir_of(&key.0).filter(|_| {
        !s.world()
            .repos
            .get(&key.0)
            .is_some_and(|r| r.snapshots.contains_key(&sha))
    });
    let (top, bytes) = match (cached, git_dir) {
        (Some(bytes), _) => (crate::tarball::top_dir(&owner, &name, &sha), bytes),
        (None, Some(dir)) => {
            let top = {
                let world = s.world();
                let Some(repo) = world.repos.get(&key.0) else {
                    return ApiError::not_found().into_response();
                };
                crate::tarball::top_dir(&repo.owner, &repo.name, &sha)
            };
            let Some(bytes) = git_archive(&s, dir, &top, &sha).await else {
                return ApiError::not_found().into_response();
            };
            archives().insert(key, bytes.clone());
            (top, bytes)
        }
        (None, None) => {
            let (top, tree, mtime) = {
                let world = s.world();
                let Some(repo) = world.repos.get(&key.0) else {
                    return ApiError::not_found().into_response();
                };
                let Some(tree) = repo.snapshots.get(&sha) else {
                    return ApiError::not_found().into_response();
                };
                let mtime = u64::try_from(repo.created_at.timestamp()).unwrap_or(0);
                (
                    crate::tarball::top_dir(&repo.owner, &repo.name, &sha),
                    tree.clone(),
                    mtime,
                )
            };
            match crate::tarball::build(&top, &sha, &tree, mtime) {
                Ok(bytes) => {
                    let bytes = axum::body::Bytes::from(bytes);
                    archives().insert(key, bytes.clone());
                    (top, bytes)
                }
                Err(e) => {
                    return ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("archive: {e}"),
                    )
                    .into_response();
                }
            }
        }
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-gzip"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename={top}.tar.gz")) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    response
}

// -- GitHub Apps ------------------------------------------------------------------------------

fn app_of(me: &Caller) -> Result<u64, ApiError> {
    match me.identity {
        Identity::App(id) => Ok(id),
        _ => Err(ApiError::unauthorized(
            "A JSON web token could not be decoded".to_string(),
        )),
    }
}

async fn repo_installation(
    State(s): St,
    Extension(me): Me,
    Path((owner, name)): Path<(String, String)>,
) -> Answer {
    let app = app_of(&me)?;
    let world = s.world();
    let key = crate::world::repo_key(&owner, &name);
    let inst = world
        .installations
        .values()
        .find(|i| i.app_id == app && i.repos.contains(&key))
        .ok_or_else(ApiError::not_found)?;
    let ctx = ctx(&s, &world, &me.identity);
    Ok(Reply::ok(shapes::installation(&ctx, inst)))
}

async fn create_installation_token(
    State(s): St,
    Extension(me): Me,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Answer {
    let app = app_of(&me)?;
    let id = number(&id)?;
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        // Narrowing by `repositories`/`permissions` is accepted but not applied.
        let _: Value = body(&bytes, "InstallationToken")?;
    }
    let mut world = s.world();
    let (token, expires_at) = world.mint_installation_token(app, id)?;
    let inst = world
        .installations
        .get(&id)
        .ok_or_else(ApiError::not_found)?;
    let expires_at: DateTime<Utc> = expires_at.into();
    let ctx = Ctx {
        base: &s.base_url,
        world: &world,
        who: &Identity::Installation(id),
    };
    Ok(Reply::created(shapes::installation_token(
        &ctx, inst, &token, expires_at,
    )))
}
