//! Builds' GitHub calls (`repository`, `branch_head`, `open_pull_for_branch`, `create_pull`,
//! `edit_pull`, labels) against the sandbox GitHub with a git-backed repository: a branch pushed
//! with real git over HTTP, the token only in git's environment.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use productbuilder_github::{
    BudgetLimits, ClientConfig, Credentials, GithubClient, NewPull, Token,
};
use productbuilder_github_sandbox::{Permission, Sandbox};
use productbuilder_store::Store;

const TOKEN: &str = "ghp_builds_token";
const REPO: &str = "acme/shop";
const BRANCH: &str = "pb/issue-3";

struct Setup {
    sandbox: Sandbox,
    client: GithubClient,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let sandbox = Sandbox::start().await.unwrap();
    sandbox.create_git_repo("acme", "shop", &[("README.md", b"# shop\n")]);
    sandbox.add_token(TOKEN, "productbuilder-bot");
    sandbox.grant(TOKEN, REPO, Permission::Push);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("productbuilder.db")).unwrap();
    store.migrate().unwrap();
    let client = GithubClient::new(
        ClientConfig {
            api_url: sandbox.url(),
            credentials: Credentials::Token(Token::new(TOKEN)),
            limits: BudgetLimits::default(),
            request_timeout: Duration::from_secs(10),
        },
        store,
    )
    .unwrap();
    Setup {
        sandbox,
        client,
        _dir: dir,
    }
}

/// Runs git in `cwd` with a clean environment and the token in an extraheader for `origin`.
async fn git(cwd: &Path, origin: &str, args: &[&str]) -> String {
    let basic = BASE64.encode(format!("x-access-token:{TOKEN}"));
    let out = tokio::process::Command::new("git")
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "bot")
        .env("GIT_AUTHOR_EMAIL", "bot@example.invalid")
        .env("GIT_COMMITTER_NAME", "bot")
        .env("GIT_COMMITTER_EMAIL", "bot@example.invalid")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", format!("http.{origin}.extraheader"))
        .env(
            "GIT_CONFIG_VALUE_0",
            format!("AUTHORIZATION: basic {basic}"),
        )
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Clones `clone_url`, commits `file`, pushes HEAD to [`BRANCH`]; returns the pushed sha.
async fn push_branch(sandbox: &Sandbox, clone_url: &str, work: &Path, file: &str) -> String {
    let origin = format!("{}/", sandbox.url());
    let checkout = work.join("checkout");
    if !checkout.exists() {
        git(work, &origin, &["clone", "--quiet", clone_url, "checkout"]).await;
    }
    std::fs::write(checkout.join(file), file).unwrap();
    git(&checkout, &origin, &["add", "--all"]).await;
    git(&checkout, &origin, &["commit", "--quiet", "-m", file]).await;
    let refspec = format!("HEAD:refs/heads/{BRANCH}");
    git(&checkout, &origin, &["push", "--quiet", "origin", &refspec]).await;
    git(&checkout, &origin, &["rev-parse", "HEAD"]).await
}

fn new_pull(head: &str) -> NewPull {
    NewPull {
        title: "Build: issue 3".into(),
        head: head.into(),
        base: "main".into(),
        body: "Closes #3".into(),
        draft: true,
    }
}

#[tokio::test]
async fn a_pushed_branch_is_opened_once_even_when_asked_twice() {
    // `_dir` keeps the database directory alive for the test.
    let Setup {
        sandbox,
        client,
        _dir,
    } = setup().await;
    let info = client.repository(REPO).await.unwrap();
    assert_eq!(
        info.clone_url,
        format!("{}/git/acme/shop.git", sandbox.url())
    );
    assert_eq!(info.default_branch, "main");
    assert!(!info.private);
    assert_eq!(
        client.branch_head(REPO, "main").await.unwrap(),
        sandbox.branch_head(REPO, "main")
    );
    assert_eq!(client.branch_head(REPO, BRANCH).await.unwrap(), None);
    assert_eq!(
        client
            .open_pull_for_branch(REPO, "acme", BRANCH)
            .await
            .unwrap(),
        None
    );

    let work = tempfile::tempdir().unwrap();
    let pushed = push_branch(&sandbox, &info.clone_url, work.path(), "a.txt").await;
    assert_eq!(
        client.branch_head(REPO, BRANCH).await.unwrap().as_deref(),
        Some(pushed.as_str())
    );

    let opened = client.create_pull(REPO, &new_pull(BRANCH)).await.unwrap();
    assert_eq!(opened.head_sha, pushed);
    assert!(opened.draft);
    assert!(
        opened
            .html_url
            .ends_with(&format!("/acme/shop/pull/{}", opened.number))
    );
    // A retry (after a crash between opening and recording) gets the same pull request.
    let again = client.create_pull(REPO, &new_pull(BRANCH)).await.unwrap();
    assert_eq!(again, opened);
    assert_eq!(sandbox.pulls_with_head(REPO, BRANCH), vec![opened.number]);
    assert_eq!(
        client
            .open_pull_for_branch(REPO, "acme", BRANCH)
            .await
            .unwrap(),
        Some(opened.clone())
    );

    // A later push moves the head GitHub reports.
    let second = push_branch(&sandbox, &info.clone_url, work.path(), "b.txt").await;
    let found = client
        .open_pull_for_branch(REPO, "acme", BRANCH)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.head_sha, second);

    let edited = client
        .edit_pull(REPO, opened.number, Some("Build: issue 3 (done)"), None)
        .await
        .unwrap();
    assert_eq!(edited.number, opened.number);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_missing_branch_is_an_error_naming_the_reason() {
    // `_dir` keeps the database directory alive for the test.
    let Setup {
        sandbox,
        client,
        _dir,
    } = setup().await;
    let err = client
        .create_pull(REPO, &new_pull("no-such-branch"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(err.to_string().contains("head invalid"), "{err}");
    assert!(!err.to_string().contains(TOKEN));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn labels_are_added_by_the_daemon_and_removed() {
    // `_dir` keeps the database directory alive for the test.
    let Setup {
        sandbox,
        client,
        _dir,
    } = setup().await;
    let issue = sandbox.create_issue(REPO, "Add a cart", "please", "alice");
    client
        .add_labels(REPO, issue, &["building", "needs review"])
        .await
        .unwrap();
    let events = client.label_events(REPO, issue).await.unwrap();
    let added: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.label.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        added,
        [
            ("building", "productbuilder-bot"),
            ("needs review", "productbuilder-bot")
        ]
    );
    client
        .remove_label(REPO, issue, "needs review")
        .await
        .unwrap();
    client
        .remove_label(REPO, issue, "never-there")
        .await
        .unwrap();
    let events = client.label_events(REPO, issue).await.unwrap();
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("unlabeled"));
    assert_eq!(
        events.last().map(|e| e.label.as_str()),
        Some("needs review")
    );
    sandbox.shutdown().await;
}
