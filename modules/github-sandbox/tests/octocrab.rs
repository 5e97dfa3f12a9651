//! The sandbox against octocrab, the client the daemon uses: its responses and GitHub's real
//! example bodies (`shared/fixtures/github-rest/`) deserialize into the same octocrab models,
//! carry the same fields with the same JSON types, and octocrab's own client (paging,
//! comments, statuses, GitHub App auth with a signed JWT, tarball redirects) works against it.

mod common;

use std::any::type_name;
use std::io::Read;
use std::path::{Path, PathBuf};

use common::{REPO, call, get, sandbox_with_bot, send, unix_now, unsigned_jwt};
use octocrab::Octocrab;
use octocrab::models::issues::{Comment, Issue};
use octocrab::models::pulls::PullRequest;
use octocrab::models::repos::{Deployment, DeploymentStatus};
use octocrab::models::{
    AppId, Installation, InstallationId, InstallationToken, RateLimit, Repository, Status,
    StatusState,
};
use octocrab::params;
use productbuilder_github_sandbox::{NewPr, Sandbox};
use serde::de::DeserializeOwned;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/github-rest"
    ));
    assert!(
        dir.join("INDEX.md").is_file(),
        "GitHub REST fixtures not found at {}: these tests expect the project's `shared/` \
         directory beside the `main` checkout (<x>/main and <x>/shared/fixtures/github-rest)",
        dir.display()
    );
    dir.to_path_buf()
}

fn fixture(name: &str) -> Value {
    let path = fixture_dir().join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Fields of GitHub's examples that the sandbox leaves out on purpose (features it does not
/// model). Everything else in an example must be present with the same JSON type.
const NOT_MODELLED: &[&str] = &[
    "organization",          // the sandbox has no organizations
    "security_and_analysis", // admin-only repository settings
    "temp_clone_token",      // only for private repositories, and not useful here
];

/// Collects every place where the sandbox body lacks a field of the fixture, or has it with a
/// different JSON type (nulls on either side are compatible: most fields are nullable).
fn shape_diff(path: &str, fixture: &Value, ours: &Value, out: &mut Vec<String>) {
    match (fixture, ours) {
        (Value::Object(f), Value::Object(o)) => {
            for (key, fv) in f {
                if NOT_MODELLED.contains(&key.as_str()) {
                    continue;
                }
                match o.get(key) {
                    None => out.push(format!("{path}.{key}: missing")),
                    Some(ov) => shape_diff(&format!("{path}.{key}"), fv, ov, out),
                }
            }
        }
        (Value::Array(f), Value::Array(o)) => {
            if let (Some(fv), Some(ov)) = (f.first(), o.first()) {
                shape_diff(&format!("{path}[0]"), fv, ov, out);
            }
        }
        (Value::Null, _) | (_, Value::Null) => {}
        (f, o) if json_type(f) != json_type(o) => {
            out.push(format!(
                "{path}: {} in the fixture, {} here",
                json_type(f),
                json_type(o)
            ));
        }
        _ => {}
    }
}

/// Deserializes the fixture and the sandbox body into `T`, and compares their shapes.
fn check<T: DeserializeOwned>(fixture_name: &str, ours: &Value) {
    let example = fixture(fixture_name);
    serde_json::from_value::<T>(example.clone())
        .unwrap_or_else(|e| panic!("fixture {fixture_name} into {}: {e}", type_name::<T>()));
    serde_json::from_value::<T>(ours.clone()).unwrap_or_else(|e| {
        panic!(
            "sandbox body for {fixture_name} into {}: {e}\n{ours:#}",
            type_name::<T>()
        )
    });
    let mut diff = Vec::new();
    shape_diff("$", &example, ours, &mut diff);
    assert!(
        diff.is_empty(),
        "{fixture_name}: shape differs:\n{}",
        diff.join("\n")
    );
}

/// Checks `required` properties of an OpenAPI schema (recursively) against a value.
fn required_fields(path: &str, schema: &Value, value: &Value, out: &mut Vec<String>) {
    if value.is_null() {
        return;
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, v) in values.iter().enumerate().take(3) {
            required_fields(&format!("{path}[{i}]"), items, v, out);
        }
    }
    let Some(object) = value.as_object() else {
        return;
    };
    for key in schema["required"].as_array().into_iter().flatten() {
        let key = key.as_str().unwrap_or_default();
        if !object.contains_key(key) {
            out.push(format!("{path}.{key}"));
        }
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (key, sub) in properties {
            if let Some(v) = object.get(key) {
                required_fields(&format!("{path}.{key}"), sub, v, out);
            }
        }
    }
}

/// A sandbox with an open PR (labels, a comment), a fork PR, a merged PR, an issue, a status
/// and a deployment with a status.
async fn populated() -> (Sandbox, u64) {
    let sb = sandbox_with_bot().await;
    let pr = sb.open_pr(
        REPO,
        NewPr::new("Add banner", "alice", "banner")
            .with_body("Adds a banner")
            .with_file("compose.yaml", "services: {}\n")
            .with_label("preview")
            .with_association("CONTRIBUTOR"),
    );
    let fork = sb.open_pr(
        REPO,
        NewPr::new("Fork", "mallory", "f").from_fork().as_draft(),
    );
    let merged = sb.open_pr(REPO, NewPr::new("Merged", "acme", "m"));
    sb.close_pr(REPO, merged, true);
    sb.push(REPO, fork, vec![("a.txt".into(), b"a".to_vec())]);
    sb.create_issue(REPO, "Bug", "broken", "bob");
    sb.add_comment(REPO, pr, "bob", "/preview");
    (sb, pr)
}

#[tokio::test]
async fn fixtures_and_sandbox_bodies_share_octocrab_models_and_shapes() {
    let (sb, pr) = populated().await;
    let url = sb.url();
    let sha = sb.head_sha(REPO, pr);
    let body = |path: String| {
        let url = url.clone();
        async move {
            let r = get(&url, "bot-token", &path).await;
            assert!(
                r.status < 300,
                "{path}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            r.json()
        }
    };

    // The example is a fork-shaped repository (it has `parent` and `source`), so compare it with
    // the fork the fork pull request created; the base repository must deserialize too.
    check::<Repository>(
        "GET_repos_owner_repo.json",
        &body("/repos/mallory/shop".into()).await,
    );
    let base: Value = body("/repos/acme/shop".into()).await;
    serde_json::from_value::<Repository>(base).expect("base repository into octocrab's model");
    let pulls = body("/repos/acme/shop/pulls?state=all".into()).await;
    check::<Vec<PullRequest>>("GET_repos_owner_repo_pulls.json", &pulls);
    for n in 1..=3 {
        check::<PullRequest>(
            "GET_repos_owner_repo_pulls_pull_number.json",
            &body(format!("/repos/acme/shop/pulls/{n}")).await,
        );
    }
    let issues = body("/repos/acme/shop/issues?state=all&sort=updated&direction=asc".into()).await;
    check::<Vec<Issue>>("GET_repos_owner_repo_issues.json", &issues);
    check::<Vec<Comment>>(
        "GET_repos_owner_repo_issues_comments.json",
        &body("/repos/acme/shop/issues/comments".into()).await,
    );
    check::<Vec<Comment>>(
        "GET_repos_owner_repo_issues_issue_number_comments.json",
        &body(format!("/repos/acme/shop/issues/{pr}/comments")).await,
    );
    check::<RateLimit>("GET_rate_limit.json", &body("/rate_limit".into()).await);

    let created = call(
        &url,
        "bot-token",
        "POST",
        &format!("/repos/acme/shop/issues/{pr}/comments"),
        r#"{"body":"Preview: building"}"#,
    )
    .await;
    check::<Comment>(
        "POST_repos_owner_repo_issues_issue_number_comments.json",
        &created.json(),
    );
    let id = created.json()["id"].as_u64().expect("id");
    let edited = call(
        &url,
        "bot-token",
        "PATCH",
        &format!("/repos/acme/shop/issues/comments/{id}"),
        r#"{"body":"Preview: ready"}"#,
    )
    .await;
    check::<Comment>(
        "PATCH_repos_owner_repo_issues_comments_comment_id.json",
        &edited.json(),
    );

    let status = call(&url, "bot-token", "POST", &format!("/repos/acme/shop/statuses/{sha}"), r#"{"state":"success","context":"preview","description":"Ready","target_url":"http://x.local"}"#).await;
    check::<Status>("POST_repos_owner_repo_statuses_sha.json", &status.json());
    let deployment = call(&url, "bot-token", "POST", "/repos/acme/shop/deployments", r#"{"ref":"banner","environment":"pr-1","required_contexts":[],"auto_merge":false,"transient_environment":true}"#).await;
    assert_eq!(deployment.status, 201);
    check::<Deployment>("POST_repos_owner_repo_deployments.json", &deployment.json());
    let did = deployment.json()["id"].as_u64().expect("id");
    let dstatus = call(
        &url,
        "bot-token",
        "POST",
        &format!("/repos/acme/shop/deployments/{did}/statuses"),
        r#"{"state":"success","environment_url":"http://pr-1.local","log_url":"http://log.local"}"#,
    )
    .await;
    check::<DeploymentStatus>(
        "POST_repos_owner_repo_deployments_deployment_id_statuses.json",
        &dstatus.json(),
    );

    sb.add_app(3);
    sb.install(3, 30, &[REPO]);
    let now = unix_now();
    let jwt = unsigned_jwt(3, now - 60, now + 500);
    let token = call(
        &url,
        &jwt,
        "POST",
        "/app/installations/30/access_tokens",
        "",
    )
    .await;
    check::<InstallationToken>(
        "POST_app_installations_installation_id_access_tokens.json",
        &token.json(),
    );
    let installation = get(&url, &jwt, "/repos/acme/shop/installation")
        .await
        .json();
    serde_json::from_value::<Installation>(installation.clone())
        .unwrap_or_else(|e| panic!("installation into octocrab's model: {e}\n{installation:#}"));

    // The OpenAPI schemas' required fields are all present.
    for (schema, value) in [
        ("GET_repos_owner_repo_pulls.200.schema.json", pulls),
        (
            "POST_repos_owner_repo_issues_issue_number_comments.201.schema.json",
            created.json(),
        ),
    ] {
        let schema = fixture(&format!("schemas/{schema}"));
        let mut missing = Vec::new();
        required_fields("$", &schema, &value, &mut missing);
        assert!(
            missing.is_empty(),
            "required by the schema but missing: {missing:?}"
        );
    }
    sb.shutdown().await;
}

fn client(sb: &Sandbox, token: &str) -> Octocrab {
    Octocrab::builder()
        .base_uri(sb.url())
        .expect("base uri")
        .personal_token(token.to_string())
        .build()
        .expect("octocrab client")
}

#[tokio::test]
async fn octocrab_pages_comments_and_reports_statuses() {
    let sb = sandbox_with_bot().await;
    for i in 0..120 {
        sb.open_pr(
            REPO,
            NewPr::new(&format!("PR {i}"), "alice", &format!("b{i}")),
        );
    }
    let gh = client(&sb, "bot-token");
    let first = gh
        .pulls("acme", "shop")
        .list()
        .state(params::State::All)
        .per_page(100)
        .send()
        .await
        .expect("list pulls");
    assert_eq!(first.items.len(), 100);
    assert!(first.next.is_some());
    let second = gh
        .get_page::<PullRequest>(&first.next)
        .await
        .expect("second page")
        .expect("a second page");
    assert_eq!(second.items.len(), 20);
    assert!(second.next.is_none());

    let comment = gh
        .issues("acme", "shop")
        .create_comment(7, "Preview: building")
        .await
        .expect("create comment");
    gh.issues("acme", "shop")
        .update_comment(comment.id, "Preview: ready")
        .await
        .expect("update comment");
    assert_eq!(sb.comments(REPO, 7)[0].body, "Preview: ready");

    let sha = sb.head_sha(REPO, 7);
    gh.repos("acme", "shop")
        .create_status(sha.clone(), StatusState::Success)
        .context("preview".to_string())
        .send()
        .await
        .expect("create status");
    let statuses = gh
        .repos("acme", "shop")
        .list_statuses(sha.clone())
        .send()
        .await
        .expect("list statuses");
    assert_eq!(statuses.items.len(), 1);
    assert_eq!(sb.statuses(REPO, &sha)[0].context, "preview");

    // Errors arrive as octocrab's GitHub errors.
    sb.add_token("reader", "reader");
    match client(&sb, "reader")
        .issues("acme", "shop")
        .create_comment(7, "nope")
        .await
    {
        Err(octocrab::Error::GitHub { source, .. }) => {
            assert_eq!(source.status_code.as_u16(), 403);
        }
        other => panic!("expected a 403 GitHub error, got {other:?}"),
    }
    sb.shutdown().await;
}

#[tokio::test]
async fn octocrab_app_auth_with_a_signed_jwt_and_tarball_download() {
    let sb = Sandbox::start().await.expect("start");
    sb.create_repo("acme", "shop");
    let pr = sb.open_pr(
        REPO,
        NewPr::new("T", "alice", "t").with_file("compose.yaml", "x: 1\n"),
    );
    let sha = sb.head_sha(REPO, pr);
    sb.add_app_with_key(9, include_str!("keys/app-public-key.pem"))
        .expect("public key");
    assert!(sb.add_app_with_key(10, "not a key").is_err());
    sb.install(9, 90, &[REPO]);

    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("keys/app-private-key.pem"))
        .expect("private key");
    let app = Octocrab::builder()
        .base_uri(sb.url())
        .expect("base uri")
        .app(AppId(9), key)
        .build()
        .expect("app client");
    let installation = app
        .installation(InstallationId(90))
        .expect("installation client");
    let pulls = installation
        .pulls("acme", "shop")
        .list()
        .send()
        .await
        .expect("pulls with an installation token");
    assert_eq!(pulls.items.len(), 1);
    let identities: Vec<Option<String>> = sb.requests().into_iter().map(|r| r.identity).collect();
    assert!(identities.contains(&Some("app:9".to_string())));
    assert!(identities.contains(&Some("installation:90".to_string())));

    // A JWT that is not signed with the app's key is refused.
    let now = unix_now();
    let forged = call(
        &sb.url(),
        &unsigned_jwt(9, now - 60, now + 500),
        "POST",
        "/app/installations/90/access_tokens",
        "",
    )
    .await;
    assert_eq!(forged.status, 401);

    // octocrab follows the tarball redirect to the archive.
    let response = installation
        .repos("acme", "shop")
        .download_tarball(sha.clone())
        .await
        .expect("tarball");
    assert_eq!(response.status().as_u16(), 200);
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("archive body")
        .to_bytes();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_ref()));
    let mut names = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        if entry.header().entry_type() == tar::EntryType::Regular {
            let mut content = String::new();
            entry.read_to_string(&mut content).expect("utf-8");
            names.push((entry.path().expect("path").display().to_string(), content));
        }
    }
    assert_eq!(
        names,
        [(
            format!("acme-shop-{}/compose.yaml", &sha[..7]),
            "x: 1\n".to_string()
        )]
    );

    // The raw client sees the same redirect.
    let token = sb.requests().into_iter().rev().find_map(|r| {
        (r.identity.as_deref() == Some("installation:90"))
            .then_some(r.token)
            .flatten()
    });
    let token = token.expect("an installation token was used");
    let raw = get(
        &sb.url(),
        &token,
        &format!("/repos/acme/shop/tarball/{sha}"),
    )
    .await;
    assert_eq!(raw.status, 302);
    assert_eq!(
        send(
            &sb.url(),
            "GET",
            raw.header("location").unwrap_or("/"),
            &[],
            None
        )
        .await
        .status,
        200
    );
    sb.shutdown().await;
}
