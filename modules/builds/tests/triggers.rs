//! Builds started on GitHub, against the sandbox GitHub (issue events and collaborator
//! permissions over real HTTP) with the poller's rows written into a real database: a writer's
//! label or command starts one build; a read-only user's starts none; a second trigger while a
//! build is active joins it; the daemon's own comments and anything from before builds were
//! enabled start nothing; a command on a pull request asks for more commits on its branch.

use std::time::Duration;

use chrono::Utc;
use productbuilder_builds::triggers::{Outcome, Triggers};
use productbuilder_builds::{Queue, QueueConfig};
use productbuilder_github::{
    BudgetLimits, ClientConfig, Credentials, GithubClient, GithubState, Token,
};
use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};
use productbuilder_store::Store;
use productbuilder_store::rusqlite::params;

const REPO: &str = "acme/shop";

struct World {
    sandbox: Sandbox,
    store: Store,
    triggers: Triggers,
    queue: Queue,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let sandbox = Sandbox::start().await.unwrap();
    sandbox.add_token("tok", "pb-bot");
    sandbox.create_repo("acme", "shop");
    sandbox.grant("pb-bot", REPO, Permission::Push);
    sandbox.grant("alice", REPO, Permission::Push);
    sandbox.grant("eve", REPO, Permission::Pull);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    store.migrate().unwrap();
    let client = GithubClient::new(
        ClientConfig {
            api_url: sandbox.url(),
            credentials: Credentials::Token(Token::new("tok")),
            limits: BudgetLimits::default(),
            request_timeout: Duration::from_secs(10),
        },
        store.clone(),
    )
    .unwrap();
    let queue = Queue::new(store.clone(), QueueConfig::default());
    let triggers = Triggers::new(
        GithubState::new(client, store.clone()),
        queue.clone(),
        "productbuilder",
    );
    World {
        sandbox,
        store,
        triggers,
        queue,
        _dir: dir,
    }
}

fn now_text() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl World {
    /// The issues poller's row for `number`, as it would store it now.
    async fn store_issue(&self, number: u64, is_pull: bool, labels: &[&str]) {
        let labels = serde_json::to_string(labels).unwrap();
        self.store
            .write(move |c| {
                c.execute(
                    "INSERT OR REPLACE INTO issues (repo, number, title, state, author, is_pull, labels, updated_at)
                     VALUES (?1, ?2, 'an issue', 'open', 'alice', ?3, ?4, ?5)",
                    params![REPO, number as i64, is_pull, labels, now_text()],
                )
            })
            .await
            .unwrap();
    }

    /// A comment on GitHub, and the comments poller's row for it.
    async fn comment(&self, number: u64, author: &str, body: &str) -> u64 {
        let id = self.sandbox.add_comment(REPO, number, author, body);
        let (author, body) = (author.to_owned(), body.to_owned());
        self.store
            .write(move |c| {
                c.execute(
                    "INSERT INTO comments (repo, id, issue_number, author, body, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![REPO, id as i64, number as i64, author, body, now_text()],
                )
            })
            .await
            .unwrap();
        id
    }

    async fn builds(&self) -> Vec<productbuilder_builds::Build> {
        self.queue.list(REPO, 100).await.unwrap()
    }
}

#[tokio::test]
async fn a_writer_s_label_or_command_starts_one_build_and_nobody_else_s_does() {
    let w = world().await;
    let old = w
        .sandbox
        .create_issue(REPO, "Old", "labelled before builds", "alice");
    w.sandbox.add_label(REPO, old, "productbuilder", "alice");
    w.store_issue(old, false, &["productbuilder"]).await;
    let first = w.triggers.pass(REPO, Utc::now()).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].outcome, Outcome::Predates, "{first:?}");
    assert!(w.builds().await.is_empty(), "the first pass starts nothing");

    let issue = w
        .sandbox
        .create_issue(REPO, "Cart", "Add a cart page", "bob");
    w.sandbox.add_label(REPO, issue, "productbuilder", "alice");
    w.store_issue(issue, false, &["productbuilder"]).await;
    let considered = w.triggers.pass(REPO, Utc::now()).await.unwrap();
    assert_eq!(considered.len(), 1, "{considered:?}");
    assert_eq!(considered[0].number, issue);
    assert_eq!(considered[0].given_by, "alice");
    assert_eq!(considered[0].outcome, Outcome::Started);
    let build = considered[0].build.expect("alice may write");
    let builds = w.builds().await;
    assert_eq!(builds.len(), 1, "nothing for the old label: {builds:?}");
    assert_eq!(builds[0].spec.issue, Some(issue));
    assert!(
        w.triggers.pass(REPO, Utc::now()).await.unwrap().is_empty(),
        "a label that stays is considered once"
    );

    // A read-only user's command: recorded, no build.
    let other = w.sandbox.create_issue(REPO, "Search", "", "eve");
    w.store_issue(other, false, &[]).await;
    w.comment(other, "eve", "/productbuilder implement please")
        .await;
    let considered = w.triggers.pass(REPO, Utc::now()).await.unwrap();
    assert_eq!(considered.len(), 1);
    assert_eq!(considered[0].outcome, Outcome::Refused);
    assert_eq!(considered[0].build, None);
    assert_eq!(w.builds().await.len(), 1);

    // A writer's command while the label's build is active joins it; the daemon's own comment
    // (which quotes the command) starts nothing.
    w.comment(issue, "alice", "/productbuilder implement").await;
    w.comment(issue, "pb-bot", "/productbuilder implement")
        .await;
    let considered = w.triggers.pass(REPO, Utc::now()).await.unwrap();
    assert_eq!(considered.len(), 1, "{considered:?}");
    assert_eq!(considered[0].outcome, Outcome::Joined);
    assert_eq!(considered[0].build, Some(build), "joins the active build");
    assert_eq!(w.builds().await.len(), 1);

    // On a pull request: more commits on its branch.
    let pull = w
        .sandbox
        .open_pr(REPO, NewPr::new("Cart", "alice", "productbuilder/issue-2"));
    w.store_issue(pull, true, &[]).await;
    w.comment(pull, "alice", "/productbuilder continue add tests")
        .await;
    let considered = w.triggers.pass(REPO, Utc::now()).await.unwrap();
    assert_eq!(considered.len(), 1, "{considered:?}");
    let builds = w.builds().await;
    let on_pull = builds.iter().find(|b| b.number == Some(pull)).unwrap();
    assert_eq!(on_pull.spec.pull_request, Some(pull));
    assert_eq!(on_pull.spec.issue, None);
    assert!(on_pull.spec.prompt.contains("add tests"));

    // Removing and adding the label again is a new trigger (a new event), which joins the
    // active build rather than starting a second.
    w.sandbox.add_label(REPO, issue, "productbuilder", "alice");
    w.store_issue(issue, false, &["productbuilder"]).await;
    let considered = w.triggers.pass(REPO, Utc::now()).await.unwrap();
    assert!(
        considered.iter().all(|c| c.build == Some(build)),
        "{considered:?}"
    );
    assert_eq!(
        w.builds()
            .await
            .iter()
            .filter(|b| b.number == Some(issue))
            .count(),
        1
    );
}

/// One trigger GitHub refuses for good (its issue's events answer 404) does not hold up the
/// others: the pass skips it and starts the rest.
#[tokio::test]
async fn a_trigger_github_refuses_is_skipped_and_the_others_go_on() {
    let w = world().await;
    w.triggers.pass(REPO, Utc::now()).await.unwrap();
    let broken = w.sandbox.create_issue(REPO, "Broken", "", "bob");
    w.sandbox.add_label(REPO, broken, "productbuilder", "alice");
    w.store_issue(broken, false, &["productbuilder"]).await;
    w.sandbox.inject(
        productbuilder_github_sandbox::Fault::new(
            &format!("/repos/{REPO}/issues/{broken}/events"),
            404,
        )
        .times(10),
    );
    let fine = w.sandbox.create_issue(REPO, "Fine", "", "bob");
    w.store_issue(fine, false, &[]).await;
    w.comment(fine, "alice", "/productbuilder implement").await;
    let considered = w.triggers.pass(REPO, Utc::now()).await.unwrap();
    assert_eq!(considered.len(), 1, "{considered:?}");
    assert_eq!(considered[0].number, fine);
    assert_eq!(considered[0].outcome, Outcome::Started);
    assert!(
        w.triggers.pass(REPO, Utc::now()).await.unwrap().is_empty(),
        "the skipped issue is not asked about again until it changes"
    );
}
