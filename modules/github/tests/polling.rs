//! The GitHub units against the sandbox GitHub, over real HTTP, with a real SQLite file.

use std::sync::Arc;
use std::time::Duration;

use productbuilder_github::{
    BudgetLimits, ClientConfig, CommitState, Credentials, DeploymentState, GithubClient,
    GithubModule, GithubState, MarkerComments, Published, Reporter, Token, stored_comments,
    stored_issue_numbers,
};
use productbuilder_github_sandbox::{Fault, NewPr, Permission, Sandbox};
use productbuilder_planner::{Module, RepoIdCell, Tenant, plan};
use productbuilder_scheduler::{
    ErrorKind, RunCtx, Scheduler, SchedulerOptions, UnitError, UnitSpec,
};
use productbuilder_store::Store;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "ghp_sandbox_token";

struct World {
    sandbox: Sandbox,
    dir: tempfile::TempDir,
}

impl World {
    async fn new(repos: &[&str]) -> World {
        let sandbox = Sandbox::start().await.unwrap();
        sandbox.add_token(TOKEN, "productbuilder-bot");
        for repo in repos {
            let (owner, name) = repo.split_once('/').unwrap();
            sandbox.create_repo(owner, name);
            sandbox.grant("productbuilder-bot", repo, Permission::Push);
        }
        World {
            sandbox,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A fresh client and store on the same database file: what a restart sees.
    fn daemon(&self, credentials: Credentials) -> Daemon {
        let store = Store::open(self.dir.path().join("productbuilder.db")).unwrap();
        store.migrate().unwrap();
        let client = GithubClient::new(
            ClientConfig {
                api_url: self.sandbox.url(),
                credentials,
                limits: BudgetLimits::default(),
                request_timeout: Duration::from_secs(10),
            },
            store.clone(),
        )
        .unwrap();
        Daemon {
            state: GithubState::new(client, store),
        }
    }

    fn token_daemon(&self) -> Daemon {
        self.daemon(Credentials::Token(Token::new(TOKEN)))
    }

    fn pull_requests_sent(&self) -> Vec<(String, u16, bool, bool)> {
        self.sandbox
            .requests()
            .into_iter()
            .map(|r| (r.path_and_query, r.status, r.if_none_match, r.counted))
            .collect()
    }
}

struct Daemon {
    state: GithubState,
}

fn tenant(repo: &str) -> Arc<Tenant> {
    let (owner, name) = repo.split_once('/').unwrap();
    Arc::new(Tenant {
        owner: owner.into(),
        name: name.into(),
        poll_interval: Duration::from_secs(60),
        source: format!("tenants/{name}.toml"),
        repo_id: RepoIdCell::default(),
    })
}

impl Daemon {
    fn units(&self, tenants: &[Arc<Tenant>]) -> Vec<UnitSpec> {
        let module = GithubModule {
            state: self.state.clone(),
            run_timeout: Duration::from_secs(30),
        };
        let modules: [&dyn Module; 1] = [&module];
        plan(&modules, tenants, Duration::from_secs(60)).unwrap()
    }

    /// One run of one unit, as the scheduler would start it (no retries).
    async fn run(&self, tenants: &[Arc<Tenant>], name: &str) -> Result<(), UnitError> {
        let units = self.units(tenants);
        let unit = units
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no unit {name}"));
        (unit.work)(RunCtx::new(name, 1, CancellationToken::new())).await
    }
}

fn pr(n: usize) -> NewPr {
    NewPr::new(&format!("Change {n}"), "alice", &format!("feature-{n}"))
        .with_file("index.html", format!("<h1>{n}</h1>"))
}

#[tokio::test]
async fn an_idle_repository_costs_no_quota_after_the_first_round() {
    let world = World::new(&["acme/shop"]).await;
    for n in 0..3 {
        world.sandbox.open_pr("acme/shop", pr(n));
    }
    let daemon = world.token_daemon();
    let shop = [tenant("acme/shop")];
    daemon.run(&shop, "worker:pulls:acme/shop").await.unwrap();
    let pulls = daemon.state.open_pulls("acme/shop").await.unwrap();
    assert_eq!(pulls.len(), 3);
    assert!(
        pulls
            .iter()
            .all(|p| p.head_sha.len() == 40 && !p.fork && p.author == "alice")
    );

    world.sandbox.clear_requests();
    for _ in 0..5 {
        daemon.run(&shop, "worker:pulls:acme/shop").await.unwrap();
    }
    let sent = world.pull_requests_sent();
    assert_eq!(sent.len(), 5, "{sent:?}");
    for (path, status, conditional, counted) in &sent {
        assert!(path.starts_with("/repos/acme/shop/pulls?"), "{path}");
        assert_eq!(
            (*status, *conditional, *counted),
            (304, true, false),
            "{path}"
        );
    }
    // The full set is still handed on after 304s.
    let feed = daemon.state.subscribe("acme/shop");
    assert_eq!(feed.borrow().pulls.len(), 3);
}

#[tokio::test]
async fn etags_survive_a_restart() {
    let world = World::new(&["acme/shop"]).await;
    world.sandbox.open_pr("acme/shop", pr(1));
    let shop = [tenant("acme/shop")];
    world
        .token_daemon()
        .run(&shop, "worker:pulls:acme/shop")
        .await
        .unwrap();
    world.sandbox.clear_requests();
    // A new process: new client, same database file.
    let restarted = world.token_daemon();
    restarted
        .run(&shop, "worker:pulls:acme/shop")
        .await
        .unwrap();
    let sent = world.pull_requests_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].1, sent[0].3), (304, false), "{sent:?}");
    assert_eq!(
        restarted.state.open_pulls("acme/shop").await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn etags_survive_an_installation_token_rotation() {
    let world = World::new(&["acme/shop"]).await;
    world.sandbox.add_app(7);
    world.sandbox.install(7, 4242, &["acme/shop"]);
    world.sandbox.open_pr("acme/shop", pr(1));
    let pem = include_str!("data/test-app-key.pem");
    let daemon = world.daemon(Credentials::app(7, pem, None).unwrap());
    let shop = [tenant("acme/shop")];
    daemon.run(&shop, "worker:pulls:acme/shop").await.unwrap();
    daemon.run(&shop, "worker:pulls:acme/shop").await.unwrap();
    let minted_before = world
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.path_and_query.ends_with("/access_tokens"))
        .count();
    assert_eq!(minted_before, 1, "one token serves both polls");
    // A renewed token (same installation) must still get 304s for the cached ETags.
    daemon.state.client.forget_tokens();
    world.sandbox.clear_requests();
    daemon.run(&shop, "worker:pulls:acme/shop").await.unwrap();
    let requests = world.sandbox.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path_and_query.ends_with("/access_tokens"))
    );
    let poll = requests
        .iter()
        .find(|r| r.path_and_query.starts_with("/repos/acme/shop/pulls"))
        .unwrap();
    assert_eq!(poll.identity.as_deref(), Some("installation:4242"));
    assert_eq!((poll.status, poll.counted), (304, false));
}

#[tokio::test]
async fn pushes_and_closes_are_seen_and_closes_are_confirmed() {
    let world = World::new(&["acme/shop"]).await;
    let one = world.sandbox.open_pr("acme/shop", pr(1));
    let two = world.sandbox.open_pr("acme/shop", pr(2));
    let daemon = world.token_daemon();
    let shop = [tenant("acme/shop")];
    daemon.run(&shop, "worker:pulls:acme/shop").await.unwrap();
    let before = daemon.state.open_pulls("acme/shop").await.unwrap();

    let new_sha = world.sandbox.push(
        "acme/shop",
        one,
        vec![("index.html".into(), b"<h1>v2</h1>".to_vec())],
    );
    world.sandbox.close_pr("acme/shop", two, false);
    world.sandbox.clear_requests();
    daemon.run(&shop, "worker:pulls:acme/shop").await.unwrap();

    let after = daemon.state.open_pulls("acme/shop").await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].number, one);
    assert_eq!(after[0].head_sha, new_sha);
    assert!(after[0].seen_at >= before[0].seen_at);
    let confirm = format!("/repos/acme/shop/pulls/{two}");
    assert!(
        world
            .pull_requests_sent()
            .iter()
            .any(|(path, status, ..)| *path == confirm && *status == 200),
        "the close was confirmed with one GET"
    );
}

/// A pull request that left the listing keeps whether it was merged (GitHub's `merged_at` from the
/// confirming GET), so a thread can say "merged" rather than "closed".
#[tokio::test]
async fn a_merge_is_told_from_a_close() {
    let world = World::new(&["acme/shop"]).await;
    let merged = world.sandbox.open_pr("acme/shop", pr(1));
    let closed = world.sandbox.open_pr("acme/shop", pr(2));
    let daemon = world.token_daemon();
    let shop = [tenant("acme/shop")];
    daemon.run(&shop, "worker:pulls:acme/shop").await.unwrap();
    world.sandbox.close_pr("acme/shop", merged, true);
    world.sandbox.close_pr("acme/shop", closed, false);
    daemon.run(&shop, "worker:pulls:acme/shop").await.unwrap();
    let rows: Vec<(u64, String, bool)> = daemon
        .state
        .store
        .read(|c| {
            let mut stmt = c.prepare(
                "SELECT number, state, merged_at IS NOT NULL FROM pulls ORDER BY number",
            )?;
            stmt.query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
            })?
            .collect()
        })
        .await
        .unwrap();
    assert_eq!(
        rows,
        [
            (merged, "closed".to_owned(), true),
            (closed, "closed".to_owned(), false)
        ]
    );
}

#[tokio::test]
async fn every_page_is_read() {
    let world = World::new(&["acme/big"]).await;
    for n in 0..250 {
        world.sandbox.open_pr("acme/big", pr(n));
    }
    let daemon = world.token_daemon();
    daemon
        .run(&[tenant("acme/big")], "worker:pulls:acme/big")
        .await
        .unwrap();
    assert_eq!(
        daemon.state.open_pulls("acme/big").await.unwrap().len(),
        250
    );
    let pages = world
        .pull_requests_sent()
        .iter()
        .filter(|(p, ..)| p.starts_with("/repos/acme/big/pulls"))
        .count();
    assert_eq!(pages, 3);
}

/// A first sync of a large repository commits page by page: when a later page fails, what the
/// earlier pages brought is stored and the cursor says so; the next run resumes from there and
/// asks for nothing twice.
#[tokio::test]
async fn a_first_sync_that_fails_halfway_keeps_its_pages_and_resumes() {
    let world = World::new(&["acme/big"]).await;
    for n in 0..250 {
        world
            .sandbox
            .create_issue("acme/big", &format!("Issue {n}"), "", "carol");
    }
    let daemon = world.token_daemon();
    let big = [tenant("acme/big")];
    world.sandbox.inject(Fault::new(
        "/repos/acme/big/issues?state=all&sort=updated&direction=asc&per_page=100&page=2",
        404,
    ));
    assert!(daemon.run(&big, "worker:issues:acme/big").await.is_err());
    let store = daemon.state.store.clone();
    assert_eq!(
        stored_issue_numbers(&store, "acme/big")
            .await
            .unwrap()
            .len(),
        100,
        "the first page is kept"
    );

    world.sandbox.clear_requests();
    daemon.run(&big, "worker:issues:acme/big").await.unwrap();
    assert_eq!(
        stored_issue_numbers(&store, "acme/big")
            .await
            .unwrap()
            .len(),
        250
    );
    // The newest-first page does not reach back to the cursor, so the oldest-first listing
    // resumes `since` the stored cursor, not from its first page.
    let sent = world.pull_requests_sent();
    assert!(
        sent.iter()
            .filter(|(p, ..)| p.contains("direction=asc"))
            .all(|(p, ..)| p.contains("since=")),
        "the second run resumes from the stored cursor: {sent:?}"
    );
    assert!(
        sent.iter().any(|(p, ..)| p.contains("direction=asc")),
        "{sent:?}"
    );
}

#[tokio::test]
async fn cursors_neither_skip_nor_repeat() {
    let world = World::new(&["acme/shop"]).await;
    let issue = world
        .sandbox
        .create_issue("acme/shop", "Bug", "it breaks", "carol");
    world
        .sandbox
        .add_comment("acme/shop", issue, "carol", "first");
    world
        .sandbox
        .add_comment("acme/shop", issue, "dave", "second");
    let daemon = world.token_daemon();
    let shop = [tenant("acme/shop")];
    daemon
        .run(&shop, "worker:comments:acme/shop")
        .await
        .unwrap();
    daemon.run(&shop, "worker:issues:acme/shop").await.unwrap();
    let bodies =
        |c: Vec<(i64, i64, String, String)>| c.into_iter().map(|c| c.3).collect::<Vec<_>>();
    let store = daemon.state.store.clone();
    assert_eq!(
        bodies(stored_comments(&store, "acme/shop").await.unwrap()),
        ["first", "second"]
    );

    // Several more comments, some within the same second as the cursor.
    for body in ["third", "fourth", "/preview"] {
        world.sandbox.add_comment("acme/shop", issue, "erin", body);
    }
    world.sandbox.clear_requests();
    for _ in 0..3 {
        daemon
            .run(&shop, "worker:comments:acme/shop")
            .await
            .unwrap();
    }
    assert_eq!(
        bodies(stored_comments(&store, "acme/shop").await.unwrap()),
        ["first", "second", "third", "fourth", "/preview"]
    );
    // Once a cursor exists, every poll asks the one newest-first page: the first run brings the
    // three comments (the cursor drops those it covers), the next two are idle and get 304s.
    let sent = world.pull_requests_sent();
    let statuses: Vec<u16> = sent.iter().map(|(_, status, ..)| *status).collect();
    assert_eq!(statuses, [200, 304, 304], "{sent:?}");
    assert!(
        sent.iter()
            .all(|(p, ..)| p.contains("direction=desc") && !p.contains("&page=")),
        "{sent:?}"
    );

    let second = world.sandbox.create_issue("acme/shop", "Idea", "", "carol");
    world
        .sandbox
        .edit_issue("acme/shop", issue, "it still breaks");
    daemon.run(&shop, "worker:issues:acme/shop").await.unwrap();
    assert_eq!(
        stored_issue_numbers(&store, "acme/shop").await.unwrap(),
        [issue as i64, second as i64]
    );
}

/// GitHub does not count a 304 against the quota: once settled, a change of the issues or
/// comments listing costs the one request that brings it (before, the first poll of the new
/// `since` URL, which had no ETag yet, cost a second one).
#[tokio::test]
async fn one_change_costs_one_counted_request_per_listing() {
    let world = World::new(&["acme/shop"]).await;
    let issue = world
        .sandbox
        .create_issue("acme/shop", "Bug", "it breaks", "carol");
    world
        .sandbox
        .add_comment("acme/shop", issue, "carol", "first");
    let daemon = world.token_daemon();
    let shop = [tenant("acme/shop")];
    let units = ["worker:issues:acme/shop", "worker:comments:acme/shop"];
    // The first sync, then the first poll of the newest-first page; after that, idle.
    for _ in 0..3 {
        for unit in units {
            daemon.run(&shop, unit).await.unwrap();
        }
    }
    let counted = |listing: &str| {
        world
            .sandbox
            .requests()
            .iter()
            .filter(|r| r.counted && r.path_and_query.starts_with(listing))
            .map(|r| r.status)
            .collect::<Vec<_>>()
    };
    let (issues, comments) = (
        "/repos/acme/shop/issues?",
        "/repos/acme/shop/issues/comments?",
    );

    // An edit of the issue: one counted request for the issues listing, none for comments.
    world.sandbox.clear_requests();
    world
        .sandbox
        .edit_issue("acme/shop", issue, "it still breaks");
    for _ in 0..3 {
        for unit in units {
            daemon.run(&shop, unit).await.unwrap();
        }
    }
    assert_eq!(counted(issues), [200], "{:?}", world.pull_requests_sent());
    assert_eq!(counted(comments), [] as [u16; 0]);
    assert_eq!(world.sandbox.requests().len(), 6, "every poll asked once");

    // A new comment changes both listings (it updates its issue too): one each.
    world.sandbox.clear_requests();
    world
        .sandbox
        .add_comment("acme/shop", issue, "dave", "second");
    for _ in 0..3 {
        for unit in units {
            daemon.run(&shop, unit).await.unwrap();
        }
    }
    assert_eq!(counted(issues), [200], "{:?}", world.pull_requests_sent());
    assert_eq!(counted(comments), [200], "{:?}", world.pull_requests_sent());
    let store = daemon.state.store.clone();
    let bodies: Vec<String> = stored_comments(&store, "acme/shop")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.3)
        .collect();
    assert_eq!(bodies, ["first", "second"]);
}

/// More changes between two polls than the newest-first page holds: the oldest-first listing
/// `since` the cursor catches up, and nothing is skipped.
#[tokio::test]
async fn more_changes_than_one_page_are_caught_up_since_the_cursor() {
    let world = World::new(&["acme/shop"]).await;
    let issue = world.sandbox.create_issue("acme/shop", "Bug", "", "carol");
    world.sandbox.add_comment("acme/shop", issue, "carol", "0");
    let daemon = world.token_daemon();
    let shop = [tenant("acme/shop")];
    for _ in 0..2 {
        daemon
            .run(&shop, "worker:comments:acme/shop")
            .await
            .unwrap();
    }
    for n in 1..=45 {
        world
            .sandbox
            .add_comment("acme/shop", issue, "dave", &n.to_string());
    }
    world.sandbox.clear_requests();
    daemon
        .run(&shop, "worker:comments:acme/shop")
        .await
        .unwrap();
    let stored = stored_comments(&daemon.state.store, "acme/shop")
        .await
        .unwrap();
    assert_eq!(stored.len(), 46);
    let sent = world.pull_requests_sent();
    assert!(
        sent.iter()
            .any(|(p, ..)| p.contains("direction=asc") && p.contains("since=")),
        "{sent:?}"
    );
    // Then idle again: one 304.
    world.sandbox.clear_requests();
    daemon
        .run(&shop, "worker:comments:acme/shop")
        .await
        .unwrap();
    let sent = world.pull_requests_sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].1, sent[0].3), (304, false), "{sent:?}");
}

#[tokio::test]
async fn a_secondary_limit_retry_after_is_honoured() {
    let world = World::new(&["acme/shop"]).await;
    world.sandbox.open_pr("acme/shop", pr(1));
    world
        .sandbox
        .inject(Fault::new("/repos/acme/shop/pulls", 403).retry_after(1).body(
            r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}"#,
        ));
    let daemon = world.token_daemon();
    let shop = [tenant("acme/shop")];
    let err = daemon
        .run(&shop, "worker:pulls:acme/shop")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.wait_hint(), Some(Duration::from_secs(1)));
    // Any unit of this identity now waits for the hint before sending anything.
    daemon.run(&shop, "worker:issues:acme/shop").await.unwrap();
    let requests = world.sandbox.requests();
    assert_eq!(requests[0].status, 403);
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_secs(1), "next request after {gap:?}");
}

#[tokio::test]
async fn a_502_on_the_repository_preflight_is_retried() {
    let world = World::new(&["acme/shop"]).await;
    world
        .sandbox
        .inject(Fault::new("/repos/acme/shop", 502).times(2));
    let daemon = world.token_daemon();
    let shop = tenant("acme/shop");
    let preflights: Vec<UnitSpec> = daemon
        .units(std::slice::from_ref(&shop))
        .into_iter()
        .filter(|u| u.name.starts_with("preflight:"))
        .collect();
    let scheduler = Scheduler::new(
        preflights,
        SchedulerOptions {
            seed: Some(1),
            ..SchedulerOptions::default()
        },
    )
    .unwrap();
    let board = scheduler.board();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(scheduler.run(cancel.clone()));
    while !board.preflights_passed() {
        assert!(!run.is_finished(), "{:?}", run.await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    run.await.unwrap().unwrap();
    let unit = board.unit("preflight:repository:acme/shop").unwrap();
    assert_eq!(unit.retries(), 2);
    assert!(shop.repo_id.get().is_some(), "the repository id is cached");
}

#[tokio::test]
async fn a_missing_repository_fails_the_preflight_for_good_with_a_clear_message() {
    let world = World::new(&["acme/shop"]).await;
    let daemon = world.token_daemon();
    let err = daemon
        .run(&[tenant("acme/gone")], "preflight:repository:acme/gone")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(
        err.message(),
        "repository acme/gone (configured in tenants/gone.toml) was not found, or these credentials cannot see it; check the name and the token's access"
    );
    assert_eq!(world.sandbox.requests().len(), 1, "permanent: no retry");
}

#[tokio::test]
async fn read_only_credentials_are_refused_by_the_preflight() {
    let world = World::new(&[]).await;
    world.sandbox.create_repo("acme", "docs");
    world
        .sandbox
        .grant("productbuilder-bot", "acme/docs", Permission::Pull);
    let err = world
        .token_daemon()
        .run(&[tenant("acme/docs")], "preflight:repository:acme/docs")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    assert!(err.message().contains("need write (push) access"), "{err}");
}

#[tokio::test]
async fn edits_of_one_comment_coalesce_and_the_latest_wins() {
    let world = World::new(&["acme/shop"]).await;
    let number = world.sandbox.open_pr("acme/shop", pr(1));
    world
        .sandbox
        .add_comment("acme/shop", number, "alice", "please review");
    let daemon = world.token_daemon();
    let marker = "<!-- productbuilder:preview -->";
    let comments = MarkerComments::new(daemon.state.client.clone(), marker);
    // A write to another pull request first: the next write must wait a second for the write
    // budget, so the bodies published meanwhile arrive while the first publish is busy.
    let other = world.sandbox.open_pr("acme/shop", pr(2));
    comments
        .publish("acme/shop", other, "warm-up")
        .await
        .unwrap();
    let first = {
        let comments = comments.clone();
        tokio::spawn(async move { comments.publish("acme/shop", number, "building 1").await })
    };
    // The first publish has looked for an existing comment: it holds the slot now.
    let listing = format!("/repos/acme/shop/issues/{number}/comments?");
    while !world
        .sandbox
        .requests()
        .iter()
        .any(|r| r.path_and_query.starts_with(&listing))
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for n in 2..=5 {
        let outcome = comments
            .publish("acme/shop", number, &format!("building {n}"))
            .await
            .unwrap();
        assert_eq!(outcome, Published::Coalesced);
    }
    assert!(matches!(
        first.await.unwrap().unwrap(),
        Published::Written(_)
    ));
    let ours: Vec<_> = world
        .sandbox
        .comments("acme/shop", number)
        .into_iter()
        .filter(|c| c.body.starts_with(marker))
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].body, format!("{marker}\nbuilding 5"));
    let writes = world
        .sandbox
        .requests()
        .iter()
        .filter(|r| {
            r.method != productbuilder_github_sandbox::Method::GET
                && r.path_and_query.contains(&format!("/issues/{number}/"))
                || r.path_and_query
                    .starts_with("/repos/acme/shop/issues/comments/")
        })
        .count();
    // One POST for pull request `number`, one PATCH with the latest body (the warm-up was a POST
    // on the other pull request).
    assert_eq!(writes, 2);

    // A process that lost its database finds the comment by its marker: still one comment.
    let amnesiac = MarkerComments::new(world.token_daemon().state.client.clone(), marker);
    amnesiac
        .publish("acme/shop", number, "ready")
        .await
        .unwrap();
    let ours: Vec<_> = world
        .sandbox
        .comments("acme/shop", number)
        .into_iter()
        .filter(|c| c.body.starts_with(marker))
        .collect();
    assert_eq!(ours.len(), 1);
    assert!(ours[0].body.ends_with("ready"));
}

#[tokio::test]
async fn cold_tenants_stretch_their_polls_when_the_quota_runs_low() {
    let world = World::new(&["acme/cold", "acme/warm"]).await;
    world.sandbox.open_pr("acme/warm", pr(1));
    // Under a tenth of the quota left.
    world
        .sandbox
        .set_rate_limit(TOKEN, 5000, 300, Duration::from_secs(3600));
    let daemon = world.token_daemon();
    let tenants = [tenant("acme/cold"), tenant("acme/warm")];
    // A first round, then acme/cold has seen no change for two hours.
    daemon
        .run(&tenants, "worker:pulls:acme/cold")
        .await
        .unwrap();
    daemon
        .run(&tenants, "worker:pulls:acme/warm")
        .await
        .unwrap();
    daemon
        .state
        .store
        .write(|c| {
            c.execute(
                "UPDATE poll_state SET last_change_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 hours') WHERE repo = 'acme/cold'",
                [],
            )
        })
        .await
        .unwrap();
    world.sandbox.clear_requests();
    for _ in 0..8 {
        daemon
            .run(&tenants, "worker:pulls:acme/cold")
            .await
            .unwrap();
        daemon
            .run(&tenants, "worker:pulls:acme/warm")
            .await
            .unwrap();
    }
    let polls = |repo: &str| {
        world
            .sandbox
            .requests()
            .iter()
            .filter(|r| {
                r.path_and_query
                    .starts_with(&format!("/repos/{repo}/pulls?"))
            })
            .count()
    };
    assert_eq!(
        polls("acme/warm"),
        8,
        "a tenant with an open pull request keeps its pace"
    );
    // Only every fourth cycle.
    assert_eq!(polls("acme/cold"), 2);
}

#[tokio::test]
async fn deployments_are_created_once_and_statuses_reach_the_head_sha() {
    let world = World::new(&["acme/shop"]).await;
    let number = world.sandbox.open_pr("acme/shop", pr(1));
    let sha = world.sandbox.head_sha("acme/shop", number);
    let reporter = Reporter::new(world.token_daemon().state.client.clone());

    reporter
        .commit_status(
            "acme/shop",
            &sha,
            CommitState::Pending,
            "Building the preview",
            None,
        )
        .await
        .unwrap();
    let first = reporter
        .ensure_deployment("acme/shop", number, &sha)
        .await
        .unwrap();
    // A restart that forgot the id finds the same deployment instead of creating another.
    let again = Reporter::new(world.token_daemon().state.client.clone())
        .ensure_deployment("acme/shop", number, &sha)
        .await
        .unwrap();
    assert_eq!(first, again);
    reporter
        .deployment_status(
            "acme/shop",
            first,
            DeploymentState::InProgress,
            "building",
            None,
            None,
        )
        .await
        .unwrap();
    let url = "http://shop-pr-1.preview.localhost";
    reporter
        .deployment_status(
            "acme/shop",
            first,
            DeploymentState::Success,
            "ready",
            Some(url),
            None,
        )
        .await
        .unwrap();
    reporter
        .commit_status(
            "acme/shop",
            &sha,
            CommitState::Success,
            &"Ready. ".repeat(40),
            Some(url),
        )
        .await
        .unwrap();

    let deployments = world.sandbox.deployments("acme/shop");
    assert_eq!(deployments.len(), 1);
    assert_eq!(deployments[0].environment, "preview/pr-1");
    assert_eq!(deployments[0].sha, sha);
    assert_eq!(
        deployments[0].statuses,
        [
            ("in_progress".to_owned(), None),
            ("success".to_owned(), Some(url.to_owned()))
        ]
    );
    let statuses = world.sandbox.statuses("acme/shop", &sha);
    let ours: Vec<_> = statuses
        .iter()
        .filter(|s| s.context == "productbuilder/preview")
        .collect();
    assert_eq!(ours.len(), 2);
    assert!(
        ours.iter()
            .any(|s| s.state == "success" && s.target_url.as_deref() == Some(url))
    );
    assert!(ours.iter().all(|s| {
        s.description
            .as_deref()
            .is_none_or(|d| d.chars().count() <= 140)
    }));
}

#[tokio::test]
async fn a_head_tarball_downloads_through_the_redirect_within_a_size_cap() {
    let world = World::new(&["acme/shop"]).await;
    let number = world.sandbox.open_pr("acme/shop", pr(7));
    let sha = world.sandbox.head_sha("acme/shop", number);
    let client = world.token_daemon().state.client.clone();
    let identity = client.identity("acme/shop").await.unwrap();
    let url = client.url(&format!("/repos/acme/shop/tarball/{sha}"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("source.tar.gz");
    let written = client
        .download_to(
            &identity,
            &url,
            &file,
            10 * 1024 * 1024,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(written, std::fs::metadata(&file).unwrap().len());
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(&file).unwrap(),
    ));
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("/index.html")),
        "{names:?}"
    );

    // Over the cap: refused, and the partial file is the caller's to delete.
    let capped = dir.path().join("capped.tar.gz");
    let err = client
        .download_to(&identity, &url, &capped, 16, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than 16 bytes"), "{err}");
    // Never into an existing file (no following of a planted link).
    let err = client
        .download_to(
            &identity,
            &url,
            &file,
            10 * 1024 * 1024,
            Duration::from_secs(30),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot create"), "{err}");
}
