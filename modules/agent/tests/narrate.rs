//! The narrator and closed loop against a real SQLite file, the real build queue, the previews'
//! own row functions, the sandbox Slack and a tiny local HTTP server as the preview: what a
//! delegated build became is told once in its thread, a failed preview gets exactly one
//! follow-up build on its pull request at `max_fix_attempts = 1`, and a kill between the
//! intent and the post neither loses nor doubles a message.

use chrono::Utc;
use productbuilder_agent::narrate::check::Checker;
use productbuilder_agent::narrate::{Done, Narrator};
use productbuilder_agent::record_delegated;
use productbuilder_builds::{BuildId, BuildResult, Finish, Queue, QueueConfig, Status};
use productbuilder_preview::db::{self, Details};
use productbuilder_preview::state::{Event, Stage};
use productbuilder_slack::api::SlackApi;
use productbuilder_slack_sandbox::{BOT_TOKEN, Sandbox};
use productbuilder_store::Store;
use productbuilder_store::rusqlite::params;

const REPO: &str = "acme/shop";
const ISSUE: u64 = 12;
const PR: u64 = 7;
const RUNNER: &str = "test-runner";

struct Site {
    slack: Sandbox,
    channel: String,
    narrator: Narrator,
    store: Store,
    queue: Queue,
    _dir: tempfile::TempDir,
}

async fn site() -> Site {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = Sandbox::start().await.unwrap();
    let channel = slack.create_channel("shop");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("productbuilder.db")).unwrap();
    store.migrate().unwrap();
    let queue = Queue::new(store.clone(), QueueConfig::default());
    let narrator = Narrator {
        store: store.clone(),
        slack: SlackApi::new(&slack.api_url(), BOT_TOKEN, 1000).unwrap(),
        queue: queue.clone(),
        checker: Checker::new(None).unwrap(),
        max_fix_attempts: 1,
    };
    Site {
        slack,
        channel,
        narrator,
        store,
        queue,
        _dir: dir,
    }
}

/// A preview that answers `GET /` with 200.
async fn preview_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "shop" }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/")
}

impl Site {
    /// A user's "implement this" in a new thread, and the build the agent delegated for it.
    async fn delegated(&self) -> (String, BuildId) {
        let thread = self
            .slack
            .post_user_message(&self.channel, "U0ALICE", "implement this", None);
        let mut spec = productbuilder_builds::BuildSpec::new("Implement issue #12.");
        spec.issue = Some(ISSUE);
        let queued = self
            .queue
            .enqueue(REPO, Some(ISSUE), spec, Utc::now())
            .await
            .unwrap();
        let id = queued.build.id;
        record_delegated(
            &self.store,
            id.0 as u64,
            REPO,
            ISSUE,
            &self.channel,
            &thread,
        )
        .await
        .unwrap();
        // Idempotent.
        record_delegated(
            &self.store,
            id.0 as u64,
            REPO,
            ISSUE,
            &self.channel,
            &thread,
        )
        .await
        .unwrap();
        (thread, id)
    }

    /// Runs `id` (the oldest pending build) to completion on pull request #7 at `sha`.
    async fn complete(&self, id: BuildId, sha: &str) {
        let claim = self.queue.claim(RUNNER, Utc::now()).await.unwrap().unwrap();
        assert_eq!(claim.build.id, id);
        let result = BuildResult {
            success: true,
            commit_sha: Some(sha.into()),
            branch: Some("productbuilder/issue-12".into()),
            pr_number: Some(PR),
            pr_url: Some(format!("https://github.com/{REPO}/pull/{PR}")),
            ..BuildResult::default()
        };
        self.queue
            .finish(id, RUNNER, Finish::Completed(result), Utc::now())
            .await
            .unwrap();
    }

    /// The preview of #7 deploys `sha` and ends ready, or failed at the build step.
    async fn preview(&self, sha: &str, url: &str, ready: bool) {
        let (sha, url) = (sha.to_owned(), url.to_owned());
        self.store
            .write(move |c| {
                db::begin(c, REPO, PR, &sha, &url, "pb-acme-shop-7")?;
                let none = Details::default();
                let moved = |event| {
                    db::transition(c, REPO, PR, &sha, event, &none).map_err(|e| match e {
                        db::TransitionError::Sql(e) => e,
                        db::TransitionError::Refused(e) => panic!("{e}"),
                    })
                };
                if ready {
                    moved(Event::Step(Stage::Health))?;
                    moved(Event::Ready)?;
                } else {
                    moved(Event::Step(Stage::Build))?;
                    let failed = Details {
                        error: Some("npm ci exited with 1 <!channel>"),
                        log_tail: Some("npm ERR! missing script: build\nnpm ERR! `x`\n"),
                        deleted_reason: None,
                    };
                    db::transition(c, REPO, PR, &sha, Event::Fail(Stage::Build), &failed).map_err(
                        |e| match e {
                            db::TransitionError::Sql(e) => e,
                            db::TransitionError::Refused(e) => panic!("{e}"),
                        },
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    /// The bot's replies in `thread`.
    fn replies(&self, thread: &str) -> Vec<String> {
        self.slack
            .thread(&self.channel, thread)
            .into_iter()
            .filter(|m| m.is_reply() && m.bot_id.is_some())
            .map(|m| m.text)
            .collect()
    }

    async fn pass(&self) -> Done {
        self.narrator.pass(REPO).await.unwrap()
    }

    async fn builds_on_the_pull_request(&self) -> Vec<productbuilder_builds::Build> {
        self.queue
            .list(REPO, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|b| b.spec.pull_request == Some(PR))
            .collect()
    }
}

#[tokio::test]
async fn a_ready_preview_is_told_once_with_what_it_answered() {
    let site = site().await;
    let url = preview_server().await;
    let (thread, id) = site.delegated().await;
    let other = site
        .slack
        .post_user_message(&site.channel, "U0BOB", "unrelated", None);

    assert_eq!(site.pass().await, Done::default(), "a pending build");
    site.complete(id, "sha-1").await;
    site.preview("sha-1", &url, true).await;
    let done = site.pass().await;
    assert_eq!(done.posted, [format!("loop:{}:finished", id.0)]);
    assert!(done.fixes.is_empty());

    let replies = site.replies(&thread);
    assert_eq!(replies.len(), 1, "{replies:#?}");
    let text = &replies[0];
    assert!(
        text.starts_with(&format!(
            "Build {} finished: pull request <https://github.com/{REPO}/pull/{PR}|#{PR}> opened.\nPreview of #{PR} ready: <{url}|{url}> — answered 200 in ",
            id.0
        )),
        "{text}"
    );
    assert!(
        text.ends_with("ms; its logs could not be read: previews are not run by this daemon."),
        "{text}"
    );
    assert!(
        site.replies(&other).is_empty(),
        "only the build's own thread"
    );

    assert_eq!(site.pass().await, Done::default(), "nothing twice");
    assert_eq!(site.replies(&thread).len(), 1);
}

#[tokio::test]
async fn a_failed_preview_gets_one_fix_and_then_is_over_to_you() {
    let site = site().await;
    let url = preview_server().await;
    let (thread, id) = site.delegated().await;
    site.complete(id, "sha-1").await;
    site.preview("sha-1", &url, false).await;

    let done = site.pass().await;
    assert_eq!(done.fixes.len(), 1, "{done:?}");
    let fix = BuildId(done.fixes[0] as i64);
    let replies = site.replies(&thread);
    assert_eq!(
        replies.len(),
        1,
        "the failure and the fix in one message: {replies:#?}"
    );
    let text = &replies[0];
    assert!(
        text.contains(&format!(
            "Preview of #{PR} failed at build: npm ci exited with 1 &lt;!channel&gt;."
        )),
        "{text}"
    );
    assert!(
        text.contains("```\nnpm ERR! missing script: build\nnpm ERR! ˋxˋ\n```"),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            "Started build {} on the same branch to fix build {}'s preview (fix 1 of 1).",
            fix.0, id.0
        )),
        "{text}"
    );

    // The follow-up build: on the pull request's branch, for the issue, the failure quoted.
    let on_pr = site.builds_on_the_pull_request().await;
    assert_eq!(on_pr.len(), 1);
    let b = &on_pr[0];
    assert_eq!((b.id, b.number, b.spec.issue), (fix, Some(PR), Some(ISSUE)));
    assert_eq!(b.status, Status::Pending);
    assert!(
        b.spec
            .prompt
            .contains("failed at its `build` step, at commit sha-1")
    );
    assert!(b.spec.prompt.contains("npm ERR! missing script: build"));

    // Nothing more while it runs, nor when the pass runs again.
    assert_eq!(site.pass().await, Done::default());

    // The fix's preview fails too: told, and no second fix at max_fix_attempts = 1.
    site.complete(fix, "sha-2").await;
    site.preview("sha-2", &url, false).await;
    let done = site.pass().await;
    assert!(done.fixes.is_empty(), "{done:?}");
    let replies = site.replies(&thread);
    assert_eq!(replies.len(), 2, "{replies:#?}");
    assert!(
        replies[1].starts_with(&format!(
            "Build {} finished: more commits on pull request <https://github.com/{REPO}/pull/{PR}|#{PR}>.\nPreview of #{PR} failed at build",
            fix.0
        )),
        "{}",
        replies[1]
    );
    assert!(
        replies[1].ends_with("`max_fix_attempts` (1) reached; over to you."),
        "{}",
        replies[1]
    );
    assert_eq!(site.builds_on_the_pull_request().await.len(), 1);
    assert_eq!(site.pass().await, Done::default());
}

/// Records the intent of `key` as a pass does before posting (the message key being its own).
async fn intend(site: &Site, thread: &str, key: &str) {
    let (channel, thread, key) = (site.channel.clone(), thread.to_owned(), key.to_owned());
    site.store
        .write(move |c| {
            c.execute(
                "INSERT INTO agent_narrations (key, repo, channel, thread_ts, message_key, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?1, 0)",
                params![key, REPO, channel, thread],
            )
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_kill_between_the_intent_and_the_post_posts_once() {
    let site = site().await;
    let (thread, id) = site.delegated().await;
    let claim = site.queue.claim(RUNNER, Utc::now()).await.unwrap().unwrap();
    site.queue
        .finish(
            claim.build.id,
            RUNNER,
            Finish::Failed {
                result: BuildResult::default(),
                reason: "the agent timed out".into(),
            },
            Utc::now(),
        )
        .await
        .unwrap();
    let key = format!("loop:{}:failed", id.0);

    // Killed after the intent, before the post: the next pass posts it, once.
    intend(&site, &thread, &key).await;
    let done = site.pass().await;
    assert_eq!(done.posted, [key]);
    assert_eq!(
        site.replies(&thread),
        [format!("Build {} failed: the agent timed out.", id.0)]
    );
    assert_eq!(site.pass().await, Done::default());
    assert_eq!(site.replies(&thread).len(), 1);
}

#[tokio::test]
async fn a_kill_after_the_post_before_its_record_posts_nothing_more() {
    let site = site().await;
    let (thread, id) = site.delegated().await;
    let claim = site.queue.claim(RUNNER, Utc::now()).await.unwrap().unwrap();
    site.queue
        .finish(
            claim.build.id,
            RUNNER,
            Finish::Cancelled(BuildResult::default()),
            Utc::now(),
        )
        .await
        .unwrap();
    let key = format!("loop:{}:cancelled", id.0);
    intend(&site, &thread, &key).await;
    // The post went out (with its key) just before the kill.
    site.narrator
        .slack
        .post(
            &site.channel,
            Some(&thread),
            "Build was cancelled.",
            Some(&key),
        )
        .await
        .unwrap();

    assert_eq!(site.pass().await, Done::default());
    assert_eq!(site.replies(&thread).len(), 1);
}

#[tokio::test]
async fn a_kill_between_a_fixs_intent_and_its_enqueue_starts_one() {
    let site = site().await;
    let url = preview_server().await;
    let (thread, id) = site.delegated().await;
    site.complete(id, "sha-1").await;
    site.preview("sha-1", &url, false).await;
    // Killed after the fix's intent was recorded, before it was enqueued.
    site.store
        .write(move |c| {
            c.execute(
                "INSERT INTO agent_fixes (failed_build, head_sha, repo, pull_request, created_at) \
                 VALUES (?1, 'sha-1', ?2, ?3, 0)",
                params![id.0, REPO, PR as i64],
            )
        })
        .await
        .unwrap();

    let done = site.pass().await;
    assert_eq!(done.fixes.len(), 1, "{done:?}");
    assert_eq!(site.builds_on_the_pull_request().await.len(), 1);
    assert_eq!(site.replies(&thread).len(), 1);
    assert_eq!(site.pass().await, Done::default());
    assert_eq!(site.builds_on_the_pull_request().await.len(), 1);
}

#[tokio::test]
async fn a_kill_after_a_fixs_enqueue_before_its_record_adopts_that_build() {
    let site = site().await;
    let url = preview_server().await;
    let (thread, id) = site.delegated().await;
    site.complete(id, "sha-1").await;
    site.preview("sha-1", &url, false).await;
    site.store
        .write(move |c| {
            c.execute(
                "INSERT INTO agent_fixes (failed_build, head_sha, repo, pull_request, created_at) \
                 VALUES (?1, 'sha-1', ?2, ?3, 0)",
                params![id.0, REPO, PR as i64],
            )
        })
        .await
        .unwrap();
    // The build went into the queue just before the kill.
    let mut spec = productbuilder_builds::BuildSpec::new("fix the preview");
    spec.issue = Some(ISSUE);
    spec.pull_request = Some(PR);
    let enqueued = site
        .queue
        .enqueue(REPO, Some(PR), spec, Utc::now())
        .await
        .unwrap();

    let done = site.pass().await;
    assert!(
        done.fixes.is_empty(),
        "adopted, not started again: {done:?}"
    );
    assert_eq!(site.builds_on_the_pull_request().await.len(), 1);
    let replies = site.replies(&thread);
    assert_eq!(replies.len(), 1, "{replies:#?}");
    assert!(
        replies[0].ends_with(&format!(
            "Started build {} on the same branch to fix build {}'s preview (fix 1 of 1).",
            enqueued.build.id.0, id.0
        )),
        "{}",
        replies[0]
    );
}
