//! The agent's GitHub calls (`create_issue`, `create_comment`, `close_issue`, `issue`, `pull`,
//! `file`) against the sandbox GitHub with a git-backed repository.

use std::time::Duration;

use productbuilder_github::{BudgetLimits, ClientConfig, Credentials, GithubClient, Token};
use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};
use productbuilder_store::Store;

const TOKEN: &str = "ghp_agent_token";
const REPO: &str = "acme/shop";

async fn setup() -> (Sandbox, GithubClient, tempfile::TempDir) {
    let sandbox = Sandbox::start().await.unwrap();
    sandbox.create_git_repo(
        "acme",
        "shop",
        &[
            ("README.md", b"# shop\n"),
            ("src/cart.rs", b"fn total() {}\n"),
        ],
    );
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
    (sandbox, client, dir)
}

#[tokio::test]
async fn an_issue_is_created_commented_read_and_closed() {
    let (sandbox, client, _dir) = setup().await;
    let created = client
        .create_issue(REPO, "Cart total is wrong", "It ignores the discount.")
        .await
        .unwrap();
    assert_eq!(sandbox.issue_open(REPO, created.number), Some(true));
    assert!(
        created
            .html_url
            .ends_with(&format!("/acme/shop/issues/{}", created.number))
    );

    let read = client.issue(REPO, created.number).await.unwrap().unwrap();
    assert_eq!(read.title, "Cart total is wrong");
    assert_eq!(read.body, "It ignores the discount.");
    assert_eq!(read.state, "open");
    assert_eq!(read.author, "productbuilder-bot");
    assert!(!read.is_pull);

    let comment = client
        .create_comment(REPO, created.number, "on it <!-- productbuilder:agent -->")
        .await
        .unwrap();
    assert!(comment.html_url.contains("#issuecomment-"));
    let comments = sandbox.comments(REPO, created.number);
    assert_eq!(comments.len(), 1);
    assert!(comments[0].body.contains("<!-- productbuilder:agent -->"));

    client.close_issue(REPO, created.number).await.unwrap();
    assert_eq!(sandbox.issue_open(REPO, created.number), Some(false));
    // Closing again is no error.
    client.close_issue(REPO, created.number).await.unwrap();
    assert_eq!(
        client
            .issue(REPO, created.number)
            .await
            .unwrap()
            .unwrap()
            .state,
        "closed"
    );

    assert_eq!(client.issue(REPO, 999).await.unwrap(), None);
    assert!(client.close_issue(REPO, 999).await.is_err());
}

#[tokio::test]
async fn a_pull_request_is_read() {
    let (sandbox, client, _dir) = setup().await;
    let n = sandbox.open_pr(
        REPO,
        NewPr::new("Fix cart", "alice", "fix-cart").with_body("fixes"),
    );
    let pull = client.pull(REPO, n).await.unwrap().unwrap();
    assert_eq!(pull.title, "Fix cart");
    assert_eq!(pull.head_ref, "fix-cart");
    assert_eq!(pull.state, "open");
    assert_eq!(pull.author, "alice");
    assert!(client.issue(REPO, n).await.unwrap().unwrap().is_pull);
    assert_eq!(client.pull(REPO, 4242).await.unwrap(), None);
}

#[tokio::test]
async fn files_are_read_and_hostile_paths_never_leave_the_daemon() {
    let (sandbox, client, _dir) = setup().await;
    let file = client
        .file(REPO, "src/cart.rs", None)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(file.text, "fn total() {}\n");
    assert!(!file.truncated);
    let at_main = client.file(REPO, "README.md", Some("main")).await.unwrap();
    assert_eq!(at_main.unwrap().unwrap().text, "# shop\n");
    assert_eq!(client.file(REPO, "nope.txt", None).await.unwrap(), Ok(None));
    // A directory is not a file.
    assert_eq!(client.file(REPO, "src", None).await.unwrap(), Ok(None));

    sandbox.clear_requests();
    for bad in [
        "../../etc/passwd",
        "/etc/passwd",
        "src/../README.md",
        "a\\b",
    ] {
        assert!(
            client.file(REPO, bad, None).await.unwrap().is_err(),
            "{bad}"
        );
    }
    for bad in ["main..HEAD", "-x", "a b"] {
        assert!(
            client
                .file(REPO, "README.md", Some(bad))
                .await
                .unwrap()
                .is_err(),
            "{bad}"
        );
    }
    assert!(
        sandbox.requests().is_empty(),
        "a hostile path reached GitHub"
    );
}

#[tokio::test]
async fn an_identity_without_push_cannot_create_or_close() {
    let (sandbox, _client, dir) = setup().await;
    let n = sandbox.create_issue(REPO, "Keep me", "", "alice");
    sandbox.add_token("ghp_reader", "reader");
    sandbox.grant("ghp_reader", REPO, Permission::Pull);
    let store = Store::open(dir.path().join("reader.db")).unwrap();
    store.migrate().unwrap();
    let reader = GithubClient::new(
        ClientConfig {
            api_url: sandbox.url(),
            credentials: Credentials::Token(Token::new("ghp_reader")),
            limits: BudgetLimits::default(),
            request_timeout: Duration::from_secs(10),
        },
        store,
    )
    .unwrap();
    assert!(reader.create_issue(REPO, "x", "y").await.is_err());
    assert!(reader.close_issue(REPO, n).await.is_err());
    assert_eq!(sandbox.issue_open(REPO, n), Some(true));
    assert_eq!(
        sandbox.issue_open(REPO, n + 1),
        None,
        "no issue was created"
    );
    // Reading is allowed.
    assert_eq!(
        reader.issue(REPO, n).await.unwrap().unwrap().title,
        "Keep me"
    );
}
