//! Git-backed repositories: real `git clone`/`push` over the sandbox's smart HTTP endpoint with
//! the token only in git's environment (an `http.<origin>/.extraheader`, as builds does), pull
//! requests created over the API on the pushed branch, and the pushed tree in the tarball.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{call, get, send};
use productbuilder_github_sandbox::{Permission, Sandbox};
use serde_json::Value;

const REPO: &str = "acme/shop";
const BRANCH: &str = "pb/issue-7";

/// A sandbox with the git-backed `acme/shop` (a README on `main`), a writer token
/// (`bot-token`, user `build-bot`) and a reader token (`reader-token`, user `rita`).
async fn setup() -> Sandbox {
    let sb = Sandbox::start().await.expect("start sandbox");
    sb.create_git_repo("acme", "shop", &[("README.md", b"# shop\n")]);
    sb.add_token("bot-token", "build-bot");
    sb.grant("bot-token", REPO, Permission::Push);
    sb.add_token("reader-token", "rita");
    sb.grant("reader-token", REPO, Permission::Pull);
    sb
}

/// Runs git with a clean environment and, with `token`, the token in an extraheader for the
/// sandbox's origin only (never in a URL or argv).
struct Git {
    home: tempfile::TempDir,
    origin: String,
    token: Option<String>,
}

impl Git {
    fn new(sb: &Sandbox, token: Option<&str>) -> Git {
        Git {
            home: tempfile::tempdir().expect("home"),
            origin: format!("{}/", sb.url()),
            token: token.map(str::to_string),
        }
    }

    async fn run(&self, cwd: &Path, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new("git");
        cmd.current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "Build Bot")
            .env("GIT_AUTHOR_EMAIL", "bot@example.invalid")
            .env("GIT_COMMITTER_NAME", "Build Bot")
            .env("GIT_COMMITTER_EMAIL", "bot@example.invalid")
            .args(args);
        if let Some(token) = &self.token {
            let basic = BASE64.encode(format!("x-access-token:{token}"));
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env(
                    "GIT_CONFIG_KEY_0",
                    format!("http.{}.extraheader", self.origin),
                )
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("AUTHORIZATION: basic {basic}"),
                );
        }
        cmd.output().await.expect("run git")
    }

    /// Runs git and insists it succeeded.
    async fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        let out = self.run(cwd, args).await;
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Clones `clone_url` into a new directory under `work`.
    async fn clone(&self, clone_url: &str, work: &Path) -> Output {
        self.run(work, &["clone", "--quiet", clone_url, "checkout"])
            .await
    }

    /// Writes `file`, commits it and pushes HEAD to `branch` with an explicit refspec; returns
    /// the pushed sha.
    async fn commit_and_push(&self, checkout: &Path, file: &str, content: &str) -> String {
        std::fs::write(checkout.join(file), content).expect("write file");
        self.ok(checkout, &["add", "--all"]).await;
        self.ok(
            checkout,
            &["commit", "--quiet", "-m", &format!("add {file}")],
        )
        .await;
        self.ok(
            checkout,
            &[
                "push",
                "--quiet",
                "origin",
                &format!("HEAD:refs/heads/{BRANCH}"),
            ],
        )
        .await;
        self.ok(checkout, &["rev-parse", "HEAD"]).await
    }
}

async fn clone_url(sb: &Sandbox) -> String {
    let repo = get(&sb.url(), "bot-token", "/repos/acme/shop").await;
    assert_eq!(repo.status, 200);
    let repo = repo.json();
    assert_eq!(repo["default_branch"], "main");
    repo["clone_url"].as_str().expect("clone_url").to_string()
}

fn new_pull(branch: &str) -> String {
    serde_json::json!({
        "title": "Build: issue 7",
        "head": format!("acme:{branch}"),
        "base": "main",
        "body": "Closes #7",
        "draft": true,
    })
    .to_string()
}

/// The files (path → content) of a `.tar.gz`.
fn untar(gz: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let mut files = Vec::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("an entry");
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().expect("a path").to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).expect("read entry");
        files.push((path, content));
    }
    files
}

fn work_dir() -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().expect("work dir");
    let checkout = work.path().join("checkout");
    (work, checkout)
}

#[tokio::test]
async fn a_pushed_branch_becomes_a_pull_request_whose_tarball_holds_the_push() {
    let sb = setup().await;
    let url = sb.url();
    let clone_url = clone_url(&sb).await;
    assert_eq!(clone_url, format!("{url}/git/acme/shop.git"));

    let git = Git::new(&sb, Some("bot-token"));
    let (work, checkout) = work_dir();
    let out = git.clone(&clone_url, work.path()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(checkout.join("README.md")).unwrap(),
        "# shop\n"
    );
    let pushed = git
        .commit_and_push(&checkout, "feature.txt", "built\n")
        .await;
    assert_eq!(
        sb.branch_head(REPO, BRANCH).as_deref(),
        Some(pushed.as_str())
    );
    assert!(
        sb.branches(REPO)
            .iter()
            .any(|(b, sha)| b == BRANCH && *sha == pushed)
    );

    let branch = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/branches/{BRANCH}"),
    )
    .await;
    assert_eq!(branch.status, 200);
    assert_eq!(branch.json()["commit"]["sha"], pushed.as_str());
    let missing = get(&url, "bot-token", "/repos/acme/shop/branches/nope").await;
    assert_eq!(missing.status, 404);

    let created = call(
        &url,
        "bot-token",
        "POST",
        "/repos/acme/shop/pulls",
        &new_pull(BRANCH),
    )
    .await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let pr = created.json();
    let number = pr["number"].as_u64().expect("number");
    assert_eq!(pr["head"]["sha"], pushed.as_str());
    assert_eq!(pr["head"]["ref"], BRANCH);
    assert_eq!(pr["base"]["ref"], "main");
    assert_eq!(pr["draft"], true);
    assert_eq!(pr["user"]["login"], "build-bot");
    assert_eq!(sb.pulls_with_head(REPO, BRANCH), vec![number]);

    let listed = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/pulls?head=acme:{BRANCH}&state=open"),
    )
    .await
    .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["number"], number);
    assert_eq!(listed[0]["head"]["sha"], pushed.as_str());
    let other = get(
        &url,
        "bot-token",
        "/repos/acme/shop/pulls?head=acme:other&state=all",
    )
    .await
    .json();
    assert_eq!(other, Value::Array(vec![]));

    let redirect = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/tarball/{pushed}"),
    )
    .await;
    assert_eq!(redirect.status, 302);
    let location = redirect.header("location").expect("location").to_string();
    let download = send(&url, "GET", &location, &[], None).await;
    assert_eq!(download.status, 200);
    let files = untar(&download.body);
    let top = format!("acme-shop-{}", &pushed[..7]);
    assert!(
        files.contains(&(format!("{top}/feature.txt"), b"built\n".to_vec())),
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(files.iter().any(|(p, _)| *p == format!("{top}/README.md")));

    // The token travelled in a header on every git request, never in a URL.
    let basic = BASE64.encode("x-access-token:bot-token");
    let git_log = sb.git_requests();
    assert!(
        git_log
            .iter()
            .any(|r| r.service.as_deref() == Some("git-receive-pack"))
    );
    for r in &git_log {
        assert!(r.authorized, "{r:?}");
        assert_eq!(r.identity.as_deref(), Some("user:build-bot"));
        assert!(!r.path_and_query.contains("bot-token") && !r.path_and_query.contains(&basic));
    }
    for r in sb.requests() {
        assert!(!r.path_and_query.contains("bot-token"), "{r:?}");
    }
    sb.shutdown().await;
}

#[tokio::test]
async fn a_second_push_moves_the_pull_request_head() {
    let sb = setup().await;
    let url = sb.url();
    let git = Git::new(&sb, Some("bot-token"));
    let (work, checkout) = work_dir();
    git.clone(&clone_url(&sb).await, work.path()).await;
    let first = git.commit_and_push(&checkout, "a.txt", "one\n").await;
    let pr = call(
        &url,
        "bot-token",
        "POST",
        "/repos/acme/shop/pulls",
        &new_pull(BRANCH),
    )
    .await
    .json();
    let number = pr["number"].as_u64().expect("number");
    assert_eq!(pr["head"]["sha"], first.as_str());
    let before = pr["updated_at"].as_str().expect("updated_at").to_string();

    let second = git.commit_and_push(&checkout, "a.txt", "two\n").await;
    assert_ne!(first, second);
    let listed = get(
        &url,
        "bot-token",
        "/repos/acme/shop/pulls?state=open&sort=updated",
    )
    .await
    .json();
    assert_eq!(listed[0]["number"], number);
    assert_eq!(
        listed[0]["head"]["sha"],
        second.as_str(),
        "pollers see the new head"
    );
    let after = listed[0]["updated_at"].as_str().expect("updated_at");
    assert!(after > before.as_str(), "{after} > {before}");
    let one = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/pulls/{number}"),
    )
    .await
    .json();
    assert_eq!(one["head"]["sha"], second.as_str());

    // Statuses may name the new head; the old head still downloads.
    let status = call(
        &url,
        "bot-token",
        "POST",
        &format!("/repos/acme/shop/statuses/{second}"),
        r#"{"state":"pending","context":"preview"}"#,
    )
    .await;
    assert_eq!(
        status.status,
        201,
        "{}",
        String::from_utf8_lossy(&status.body)
    );
    let old = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/tarball/{first}"),
    )
    .await;
    let old = send(
        &url,
        "GET",
        old.header("location").expect("location"),
        &[],
        None,
    )
    .await;
    let files = untar(&old.body);
    assert!(
        files
            .iter()
            .any(|(p, c)| p.ends_with("/a.txt") && c == b"one\n")
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn anonymous_and_unknown_tokens_cannot_clone() {
    let sb = setup().await;
    let clone_url = clone_url(&sb).await;
    for token in [None, Some("not-a-token")] {
        let git = Git::new(&sb, token);
        let (work, checkout) = work_dir();
        let out = git.clone(&clone_url, work.path()).await;
        assert!(!out.status.success(), "{token:?} cloned");
        assert!(!checkout.join("README.md").exists());
    }
    let log = sb.git_requests();
    assert!(!log.is_empty());
    assert!(
        log.iter().all(|r| r.status == 401 && r.identity.is_none()),
        "{log:?}"
    );
    assert!(log.iter().any(|r| !r.authorized));
    let challenge = send(
        &sb.url(),
        "GET",
        "/git/acme/shop.git/info/refs?service=git-upload-pack",
        &[],
        None,
    )
    .await;
    assert_eq!(challenge.status, 401);
    assert!(
        challenge
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic"))
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn a_read_only_token_clones_but_cannot_push() {
    let sb = setup().await;
    let git = Git::new(&sb, Some("reader-token"));
    let (work, checkout) = work_dir();
    let out = git.clone(&clone_url(&sb).await, work.path()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(checkout.join("x.txt"), "x").unwrap();
    git.ok(&checkout, &["add", "--all"]).await;
    git.ok(&checkout, &["commit", "--quiet", "-m", "x"]).await;
    let push = git
        .run(
            &checkout,
            &["push", "origin", &format!("HEAD:refs/heads/{BRANCH}")],
        )
        .await;
    assert!(!push.status.success(), "a reader pushed");
    assert_eq!(sb.branch_head(REPO, BRANCH), None);
    assert!(sb.git_requests().iter().any(|r| {
        r.service.as_deref() == Some("git-receive-pack")
            && r.status == 403
            && r.identity.as_deref() == Some("user:rita")
    }));

    // Invisible to a token without access to a private repository.
    sb.add_token("stranger-token", "stranger");
    sb.set_private(REPO, true);
    let stranger = Git::new(&sb, Some("stranger-token"));
    let (work, _) = work_dir();
    let url = format!("{}/git/acme/shop.git", sb.url());
    assert!(!stranger.clone(&url, work.path()).await.status.success());
    assert_eq!(sb.git_requests().last().map(|r| r.status), Some(404));
    sb.shutdown().await;
}

#[tokio::test]
async fn pull_requests_are_refused_like_github() {
    let sb = setup().await;
    let url = sb.url();
    let pulls = "/repos/acme/shop/pulls";
    let missing = call(
        &url,
        "bot-token",
        "POST",
        pulls,
        &new_pull("no-such-branch"),
    )
    .await;
    assert_eq!(missing.status, 422);
    assert_eq!(missing.json()["errors"][0]["field"], "head");

    let git = Git::new(&sb, Some("bot-token"));
    let (work, checkout) = work_dir();
    git.clone(&clone_url(&sb).await, work.path()).await;
    git.commit_and_push(&checkout, "f.txt", "f\n").await;
    let first = call(&url, "bot-token", "POST", pulls, &new_pull(BRANCH)).await;
    assert_eq!(first.status, 201);
    let again = call(&url, "bot-token", "POST", pulls, &new_pull(BRANCH)).await;
    assert_eq!(again.status, 422);
    let body = again.json();
    assert_eq!(body["message"], "Validation Failed");
    assert_eq!(
        body["errors"][0]["message"],
        format!("A pull request already exists for acme:{BRANCH}.")
    );
    let anonymous = send(&url, "POST", pulls, &[], Some(&new_pull(BRANCH))).await;
    assert_eq!(anonymous.status, 401);
    let no_title = call(
        &url,
        "bot-token",
        "POST",
        pulls,
        r#"{"head":"x","base":"main"}"#,
    )
    .await;
    assert_eq!(no_title.status, 422);
    let hostile = call(
        &url,
        "bot-token",
        "GET",
        "/repos/acme/shop/branches/--upload-pack=touch%20x",
        "",
    )
    .await;
    assert_eq!(hostile.status, 404);
    sb.shutdown().await;
}

#[tokio::test]
async fn labels_and_pull_edits_over_the_api() {
    let sb = setup().await;
    let url = sb.url();
    let issue = sb.create_issue(REPO, "Add a cart", "please", "alice");
    let added = call(
        &url,
        "bot-token",
        "POST",
        &format!("/repos/acme/shop/issues/{issue}/labels"),
        r#"{"labels":["building"]}"#,
    )
    .await;
    assert_eq!(
        added.status,
        200,
        "{}",
        String::from_utf8_lossy(&added.body)
    );
    assert_eq!(added.json()[0]["name"], "building");
    let events = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/issues/{issue}/events"),
    )
    .await
    .json();
    assert_eq!(events[0]["event"], "labeled");
    assert_eq!(events[0]["actor"]["login"], "build-bot");
    assert_eq!(events[0]["label"]["name"], "building");

    let reader = call(
        &url,
        "reader-token",
        "POST",
        &format!("/repos/acme/shop/issues/{issue}/labels"),
        r#"{"labels":["x"]}"#,
    )
    .await;
    assert_eq!(reader.status, 403);

    let removed = call(
        &url,
        "bot-token",
        "DELETE",
        &format!("/repos/acme/shop/issues/{issue}/labels/building"),
        "",
    )
    .await;
    assert_eq!(removed.status, 200);
    assert_eq!(removed.json(), Value::Array(vec![]));

    let git = Git::new(&sb, Some("bot-token"));
    let (work, checkout) = work_dir();
    git.clone(&clone_url(&sb).await, work.path()).await;
    git.commit_and_push(&checkout, "f.txt", "f\n").await;
    let pr = call(
        &url,
        "bot-token",
        "POST",
        "/repos/acme/shop/pulls",
        &new_pull(BRANCH),
    )
    .await
    .json();
    let number = pr["number"].as_u64().expect("number");
    let edited = call(
        &url,
        "bot-token",
        "PATCH",
        &format!("/repos/acme/shop/pulls/{number}"),
        r#"{"title":"Build: issue 7 (ready)","body":"done"}"#,
    )
    .await;
    assert_eq!(edited.status, 200);
    assert_eq!(edited.json()["title"], "Build: issue 7 (ready)");
    assert_eq!(edited.json()["body"], "done");
    sb.shutdown().await;
}

#[tokio::test]
async fn gzipped_fetch_requests_are_inflated_by_the_backend() {
    let sb = setup().await;
    // Many branches at distinct commits make the clone's request list more than 1 KiB of
    // `want` lines, which git sends gzipped.
    let git = Git::new(&sb, None);
    let seed = tempfile::tempdir().expect("seed dir");
    let bare = sb.git_dir(REPO);
    let bare_url = bare.to_string_lossy().into_owned();
    git.ok(seed.path(), &["clone", "--quiet", &bare_url, "seed"])
        .await;
    let seed = seed.path().join("seed");
    for i in 0..40 {
        std::fs::write(seed.join("n.txt"), format!("{i}\n")).unwrap();
        git.ok(&seed, &["add", "--all"]).await;
        git.ok(&seed, &["commit", "--quiet", "-m", &format!("c{i}")])
            .await;
        git.ok(&seed, &["branch", &format!("b{i}")]).await;
    }
    git.ok(
        &seed,
        &["push", "--quiet", "origin", "refs/heads/*:refs/heads/*"],
    )
    .await;
    assert_eq!(sb.branches(REPO).len(), 41);

    let reader = Git::new(&sb, Some("reader-token"));
    let (work, checkout) = work_dir();
    let out = reader.clone(&clone_url(&sb).await, work.path()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let branches = reader.ok(&checkout, &["branch", "--remotes"]).await;
    assert_eq!(branches.lines().count(), 42, "{branches}"); // 41 and origin/HEAD
    let gzipped = sb
        .git_requests()
        .iter()
        .any(|r| r.content_encoding.as_deref() == Some("gzip") && r.status == 200);
    assert!(gzipped, "{:?}", sb.git_requests());
    sb.shutdown().await;
    assert!(!bare.exists(), "the bare repository outlived the sandbox");
}

#[tokio::test]
async fn deleting_the_head_branch_closes_the_pull_request() {
    let sb = setup().await;
    let url = sb.url();
    let git = Git::new(&sb, Some("bot-token"));
    let (work, checkout) = work_dir();
    git.clone(&clone_url(&sb).await, work.path()).await;
    git.commit_and_push(&checkout, "f.txt", "f\n").await;
    let pr = call(
        &url,
        "bot-token",
        "POST",
        "/repos/acme/shop/pulls",
        &new_pull(BRANCH),
    )
    .await
    .json();
    let number = pr["number"].as_u64().expect("number");
    git.ok(
        &checkout,
        &[
            "push",
            "--quiet",
            "origin",
            &format!(":refs/heads/{BRANCH}"),
        ],
    )
    .await;
    assert_eq!(sb.branch_head(REPO, BRANCH), None);
    let closed = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/pulls/{number}"),
    )
    .await
    .json();
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["merged"], false);
    let open = get(&url, "bot-token", "/repos/acme/shop/pulls?state=open")
        .await
        .json();
    assert_eq!(open, Value::Array(vec![]));
    sb.shutdown().await;
}

#[tokio::test]
async fn file_tree_pull_requests_still_work_on_a_git_backed_repository() {
    let sb = setup().await;
    let url = sb.url();
    let number = sb.open_pr(
        REPO,
        productbuilder_github_sandbox::NewPr::new("Tree PR", "alice", "tree")
            .with_file("index.html", "<h1>tree</h1>"),
    );
    let sha = sb.head_sha(REPO, number);
    let pulls = get(&url, "bot-token", "/repos/acme/shop/pulls")
        .await
        .json();
    assert_eq!(
        pulls[0]["head"]["sha"],
        sha.as_str(),
        "not closed as a deleted branch"
    );
    let redirect = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/tarball/{sha}"),
    )
    .await;
    let download = send(
        &url,
        "GET",
        redirect.header("location").expect("location"),
        &[],
        None,
    )
    .await;
    assert_eq!(download.status, 200);
    assert!(
        untar(&download.body)
            .iter()
            .any(|(p, _)| p.ends_with("/index.html"))
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn hostile_git_paths_are_not_served() {
    let sb = setup().await;
    let url = sb.url();
    let basic = format!("Basic {}", BASE64.encode("x-access-token:bot-token"));
    let auth = [("Authorization", basic.as_str())];
    let ok = send(
        &url,
        "GET",
        "/git/acme/shop.git/info/refs?service=git-upload-pack",
        &auth,
        None,
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("content-type"),
        Some("application/x-git-upload-pack-advertisement")
    );
    for path in [
        "/git/acme/shop.git/%2e%2e/%2e%2e/etc/passwd",
        "/git/acme/shop.git/objects/..%2f..%2fconfig",
        "/git/acme/other.git/info/refs?service=git-upload-pack",
        "/git/acme/shop.git/.%2e/shop.git/config",
    ] {
        let r = send(&url, "GET", path, &auth, None).await;
        assert_eq!(
            r.status,
            404,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // A bearer token is not git's Basic auth.
    let bearer = send(
        &url,
        "GET",
        "/git/acme/shop.git/info/refs?service=git-upload-pack",
        &[("Authorization", "Bearer bot-token")],
        None,
    )
    .await;
    assert_eq!(bearer.status, 401);
    sb.shutdown().await;
}
