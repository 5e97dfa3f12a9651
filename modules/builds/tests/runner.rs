//! The runner end to end: real git (a bare origin over `file://`), real SQLite, a scripted agent
//! (a shell script printing Claude Code's stream-json), the fake forge, a real HTTP server for
//! callbacks. Nothing sleeps: tests await the run, the runner's events, or the server's requests.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use productbuilder_builds::callback::CallbackPolicy;
use productbuilder_builds::recovery::Action;
use productbuilder_builds::{BuildSpec, EventKind, Ran, Status, Step};
use support::{REPO, Site, TOKEN, claude};
use tokio_util::sync::CancellationToken;

fn spec_for_issue(n: u64) -> BuildSpec {
    let mut spec = BuildSpec::new("Implement the issue.");
    spec.issue = Some(n);
    spec
}

fn script(lines: &[String]) -> String {
    lines.join("\n")
}

fn basic() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
}

#[tokio::test]
async fn a_build_becomes_a_branch_a_commit_and_a_pull_request() {
    let site = Site::new();
    let config = site.agent(
        "happy",
        &script(&[
            claude::echo(claude::INIT),
            "echo 'hello, footer' >> app.txt".into(),
            claude::echo(&claude::edit("app.txt")),
            // A leak the agent stumbled on: the transcript must not keep it.
            format!("echo 'found {TOKEN} in a file'"),
            format!("echo 'and its header {}' >&2", basic()),
            claude::echo(&claude::success(3, 0.12, "Added a footer.")),
            // The exit code does not decide: the result line does.
            "exit 1".into(),
        ]),
    );
    let runner = site.runner(config);
    let queue = runner.queue().clone();
    let enqueued = queue
        .enqueue(REPO, None, spec_for_issue(7), Utc::now())
        .await
        .unwrap();
    let id = enqueued.build.id;

    let (ran_id, ran) = runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .expect("a build was due");
    assert_eq!(ran_id, id);
    assert_eq!(
        ran,
        Ran::Finished {
            status: Status::Completed,
            reason: "completed".into()
        }
    );

    // The branch is on the origin with the change, on top of main.
    let branch = "productbuilder/issue-7";
    let sha = site.origin_branch(branch).expect("the branch was pushed");
    let app = support::raw_git(&site.bare, &["show", &format!("{sha}:app.txt")]);
    assert_eq!(app, "hello\nhello, footer\n");
    let log = support::raw_git(&site.bare, &["log", "--format=%an <%ae>|%s", "-2", &sha]);
    assert_eq!(
        log,
        "productbuilder <productbuilder@users.noreply.github.com>|Implement the issue.\nsomeone <someone@example.com>|seed\n"
    );

    // One pull request, closing the issue, not a draft.
    let pulls = site.forge.pulls();
    assert_eq!(pulls.len(), 1);
    let (asked, pr) = &pulls[0];
    assert_eq!((asked.head.as_str(), asked.base.as_str()), (branch, "main"));
    assert!(asked.body.starts_with("Closes #7\n"), "{}", asked.body);
    assert!(asked.body.contains("Added a footer."), "{}", asked.body);
    assert!(!asked.draft);
    assert_eq!(asked.title, "Implement the issue. (#7)");

    // The result, as stored.
    let build = queue.get(id).await.unwrap().unwrap();
    assert_eq!(build.status, Status::Completed);
    let result = build.result.unwrap();
    assert!(result.success);
    assert_eq!(result.error, None);
    assert_eq!(result.commit_sha.as_deref(), Some(sha.as_str()));
    assert_eq!(result.files_changed, ["app.txt"]);
    assert_eq!(result.branch.as_deref(), Some(branch));
    assert_eq!(result.pr_number, Some(pr.number));
    assert_eq!(result.pr_url.as_deref(), Some(pr.url.as_str()));
    assert_eq!((result.turns, result.cost_usd), (Some(3), Some(0.12)));
    assert!(
        result.output.contains("found [redacted] in a file"),
        "{}",
        result.output
    );

    // The prompt was one argument holding the spec's prompt and the issue, fenced.
    let argv = site.mark("argv");
    assert!(argv.starts_with("-p\nImplement the issue.\n"), "{argv}");
    assert!(argv.contains("issue #7"), "{argv}");
    assert!(
        argv.contains("````text\nThe page needs a footer."),
        "{argv}"
    );

    // The token: in none of the agent's argv, its environment, the checkout's .git/config, the
    // transcript; and the agent's environment is the allowlist (PATH) plus what sh adds itself.
    let transcript = std::fs::read_to_string(runner.transcript_path(id)).unwrap();
    let basic = basic();
    for (what, text) in [
        ("argv", argv.clone()),
        ("env", site.mark("env")),
        (".git/config", site.mark("git-config")),
        ("transcript", transcript.clone()),
        ("result", serde_json::to_string(&result).unwrap()),
    ] {
        assert!(!text.contains(TOKEN), "the token is in the {what}");
        assert!(
            !text.contains(&basic),
            "the token's header is in the {what}"
        );
    }
    assert!(!site.mark("git-config").is_empty());
    let names: Vec<String> = site
        .mark("env")
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
        .filter(|k| !matches!(k.as_str(), "PWD" | "SHLVL" | "_" | "OLDPWD"))
        .collect();
    assert_eq!(names, ["PATH"]);
    assert!(
        transcript.contains("found [redacted] in a file"),
        "{transcript}"
    );
    assert!(
        transcript.contains("[productbuilder] step push"),
        "{transcript}"
    );

    // The build comment: written when the agent starts and at the end, edited in place (not at
    // every step: each edit is a paced GitHub write).
    let comments = site.forge.comments(7);
    assert_eq!(comments.len(), 2, "{comments:#?}");
    assert!(comments[0].contains("**productbuilder build 1**: running (step: agent)"));
    let last = comments.last().unwrap();
    assert!(last.starts_with("<!-- productbuilder:build -->"));
    assert!(last.contains(": completed"), "{last}");
    assert!(
        last.contains(&format!("Pull request: #{}", pr.number)),
        "{last}"
    );
    assert!(last.contains("Edit: app.txt"), "{last}");

    // The workspace is gone; the transcript stays.
    assert!(!site.state_dir.join("builds/1").exists());
    assert!(runner.transcript_path(id).exists());
}

#[tokio::test]
async fn an_agent_that_changed_nothing_fails_the_build_without_a_pull_request() {
    let site = Site::new();
    let config = site.agent(
        "idle",
        &script(&[
            claude::echo(claude::INIT),
            claude::echo(&claude::success(1, 0.01, "Nothing to do.")),
        ]),
    );
    let runner = site.runner(config);
    let id = runner
        .queue()
        .enqueue(REPO, None, spec_for_issue(8), Utc::now())
        .await
        .unwrap()
        .build
        .id;
    let (_, ran) = runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ran,
        Ran::Finished {
            status: Status::Failed,
            reason: "the agent changed nothing".into()
        }
    );
    assert!(site.forge.pulls().is_empty());
    assert_eq!(site.origin_branch("productbuilder/issue-8"), None);
    let build = runner.queue().get(id).await.unwrap().unwrap();
    assert_eq!(build.error.as_deref(), Some("the agent changed nothing"));
    let result = build.result.unwrap();
    assert!(!result.success && result.pr_number.is_none() && result.branch.is_none());
    let last = site.forge.comments(8).pop().unwrap();
    assert!(
        last.contains(": failed") && last.contains("the agent changed nothing"),
        "{last}"
    );
    assert!(
        !site.state_dir.join(format!("builds/{id}")).exists(),
        "the workspace is removed"
    );
}

/// Whether process `pid` is gone (or a zombie waiting for init to reap it).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn an_agent_past_max_duration_is_killed_with_its_children_and_its_work_kept_as_a_draft() {
    let site = Site::new();
    let child = site.marks.join("child");
    let mut config = site.agent(
        "slow",
        &script(&[
            format!("sleep 1000 & echo $! > '{}'", child.display()),
            claude::echo(claude::INIT),
            "echo 'half a footer' >> app.txt".into(),
            claude::echo(&claude::edit("app.txt")),
            "sleep 1000".into(),
        ]),
    );
    config.max_duration = Duration::from_secs(2);
    let runner = site.runner(config);
    let id = runner
        .queue()
        .enqueue(REPO, None, spec_for_issue(9), Utc::now())
        .await
        .unwrap()
        .build
        .id;
    let (_, ran) = runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    let Ran::Finished { status, reason } = ran else {
        panic!("{ran:?}")
    };
    assert_eq!(status, Status::Failed);
    assert!(reason.contains("max_duration (2s)"), "{reason}");

    // The child the agent started is gone with it.
    let pid: u32 = std::fs::read_to_string(&child)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(pid), "the agent's child {pid} outlived it");

    // Its work is a WIP commit on the branch, in a draft pull request saying how to go on.
    let sha = site.origin_branch("productbuilder/issue-9").unwrap();
    let subject = support::raw_git(&site.bare, &["log", "-1", "--format=%s", &sha]);
    assert_eq!(subject.trim(), "WIP: Implement the issue.");
    let pulls = site.forge.pulls();
    assert_eq!(pulls.len(), 1);
    let (asked, pr) = &pulls[0];
    assert!(asked.draft && pr.draft);
    assert!(asked.title.starts_with("WIP: "));
    assert!(
        asked.body.starts_with("Closes #9\n\n**Unfinished.**"),
        "{}",
        asked.body
    );
    assert!(asked.body.contains("max_duration"), "{}", asked.body);
    assert!(
        asked.body.contains("`/productbuilder continue`"),
        "{}",
        asked.body
    );
    let build = runner.queue().get(id).await.unwrap().unwrap();
    let result = build.result.unwrap();
    assert!(!result.success);
    assert_eq!(result.pr_number, Some(pr.number));
    assert_eq!(result.branch.as_deref(), Some("productbuilder/issue-9"));
    assert_eq!(result.files_changed, ["app.txt"]);
    assert!(result.error.unwrap().contains("max_duration"));
}

#[tokio::test]
async fn an_agent_at_its_turn_limit_leaves_a_draft_pull_request() {
    let site = Site::new();
    let mut config = site.agent(
        "turns",
        &script(&[
            claude::echo(claude::INIT),
            "echo 'a footer, mostly' >> app.txt".into(),
            claude::echo(&claude::max_turns(40)),
        ]),
    );
    config.max_turns = Some(40);
    let runner = site.runner(config);
    runner
        .queue()
        .enqueue(REPO, None, spec_for_issue(10), Utc::now())
        .await
        .unwrap();
    let (_, ran) = runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    let Ran::Finished { status, reason } = ran else {
        panic!("{ran:?}")
    };
    assert_eq!(status, Status::Failed);
    assert!(reason.contains("turn limit"), "{reason}");
    let pulls = site.forge.pulls();
    assert_eq!(pulls.len(), 1);
    assert!(pulls[0].0.draft);
    assert!(pulls[0].0.body.contains("turn limit"));
}

#[tokio::test]
async fn a_cancel_through_the_queue_kills_the_agent_and_cancels_the_build() {
    let site = Site::new();
    let child = site.marks.join("child");
    let config = site.agent(
        "cancelled",
        &script(&[
            format!("sleep 1000 & echo $! > '{}'", child.display()),
            "echo 'started on it' >> app.txt".into(),
            claude::echo(claude::INIT),
            claude::echo(&claude::text("working on it")),
            "sleep 1000".into(),
        ]),
    );
    let runner = site.runner(config);
    let queue = runner.queue().clone();
    let id = queue
        .enqueue(REPO, None, spec_for_issue(11), Utc::now())
        .await
        .unwrap()
        .build
        .id;
    let mut events = runner.subscribe();
    let running = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run_once(&CancellationToken::new()).await }
    });
    // Wait until the agent is at work.
    loop {
        let event = events.recv().await.unwrap();
        if event.kind == EventKind::Progress("working on it".into()) {
            break;
        }
    }
    assert_eq!(
        queue
            .cancel(id, "asked by a test", Utc::now())
            .await
            .unwrap(),
        productbuilder_builds::Cancel::Requested
    );
    let (_, ran) = running.await.unwrap().unwrap().unwrap();
    assert_eq!(
        ran,
        Ran::Finished {
            status: Status::Cancelled,
            reason: "cancel requested".into()
        }
    );
    let pid: u32 = std::fs::read_to_string(&child)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(pid), "the agent's child {pid} outlived the cancel");
    assert!(site.forge.pulls().is_empty());
    assert_eq!(site.origin_branch("productbuilder/issue-11"), None);
    let build = queue.get(id).await.unwrap().unwrap();
    assert_eq!(build.status, Status::Cancelled);
    assert!(!site.state_dir.join(format!("builds/{id}")).exists());
}

/// One callback request as the receiver saw it.
#[derive(Debug)]
struct Received {
    signature: Option<String>,
    idempotency: Option<String>,
    body: Vec<u8>,
}

#[tokio::test]
async fn the_callback_arrives_signed_and_is_retried_after_a_500() {
    use axum::http::{HeaderMap, StatusCode};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Received>();
    let answers = Arc::new(std::sync::Mutex::new(vec![
        StatusCode::OK,
        StatusCode::INTERNAL_SERVER_ERROR,
    ]));
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            let answers = answers.clone();
            async move {
                let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
                tx.send(Received {
                    signature: header("x-productbuilder-signature-256"),
                    idempotency: header("idempotency-key"),
                    body: body.to_vec(),
                })
                .unwrap();
                answers.lock().unwrap().pop().unwrap_or(StatusCode::OK)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let site = Site::new();
    let mut config = site.agent(
        "callback",
        &script(&[
            claude::echo(claude::INIT),
            "echo 'footer' >> app.txt".into(),
            claude::echo(&claude::success(2, 0.05, "Done.")),
        ]),
    );
    config.callback_secret = Some(productbuilder_settings::Secret::new("cb-secret"));
    let runner = site
        .runner(config)
        .callback_policy(CallbackPolicy {
            attempts: 3,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            attempt_timeout: Duration::from_secs(10),
        })
        .unwrap();
    let mut spec = spec_for_issue(12);
    spec.callback_url = Some(format!("http://{addr}/cb"));
    let id = runner
        .queue()
        .enqueue(REPO, None, spec, Utc::now())
        .await
        .unwrap()
        .build
        .id;
    let (_, ran) = runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            ran,
            Ran::Finished {
                status: Status::Completed,
                ..
            }
        ),
        "{ran:?}"
    );

    let first = rx.recv().await.unwrap();
    let second = rx.recv().await.unwrap();
    assert!(rx.try_recv().is_err(), "delivered once 2xx came");
    assert_eq!(first.body, second.body, "the same body again");
    for got in [&first, &second] {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"cb-secret").unwrap();
        mac.update(&got.body);
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(got.signature.as_deref(), Some(want.as_str()));
        assert_eq!(
            got.idempotency.as_deref(),
            Some(format!("productbuilder-build-{id}").as_str())
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(v["id"], id.0);
    assert_eq!(v["repo"], REPO);
    assert_eq!(v["status"], "completed");
    assert_eq!(v["success"], true);
    assert_eq!(v["pr_number"], 100);
    assert_eq!(v["branch"], "productbuilder/issue-12");
    assert!(!String::from_utf8_lossy(&second.body).contains("cb-secret"));
    let transcript = std::fs::read_to_string(runner.transcript_path(id)).unwrap();
    assert!(
        transcript.contains("callback delivered (answered 200 after 2 attempts)"),
        "{transcript}"
    );
}

#[tokio::test]
async fn a_daemon_that_dies_after_opening_the_pull_request_resumes_without_a_second_one() {
    let site = Site::new();
    let config = site.agent(
        "crash",
        &script(&[
            claude::echo(claude::INIT),
            "echo 'footer' >> app.txt".into(),
            claude::echo(&claude::success(2, 0.05, "Done.")),
        ]),
    );
    site.forge.hang_after_create.store(true, Ordering::SeqCst);
    let runner = site.runner(config.clone());
    let queue = runner.queue().clone();
    let id = queue
        .enqueue(REPO, None, spec_for_issue(13), Utc::now())
        .await
        .unwrap()
        .build
        .id;
    let first = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run_once(&CancellationToken::new()).await }
    });
    // GitHub created the pull request; the daemon dies before it hears the answer.
    site.forge.created.notified().await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let build = queue.get(id).await.unwrap().unwrap();
    assert_eq!(
        (build.status, build.step),
        (Status::Running, Some(Step::PullRequest))
    );

    // Later, the lease has run out: recovery resumes it from its step, on a new daemon.
    site.forge.hang_after_create.store(false, Ordering::SeqCst);
    let later = Utc::now() + TimeDelta::minutes(10);
    let recovered = queue.recover(later).await.unwrap();
    assert_eq!(
        recovered.iter().map(|r| r.action).collect::<Vec<_>>(),
        [Action::Resume {
            from: Some(Step::PullRequest)
        }]
    );
    let agent_runs_before = site.mark("argv");
    std::fs::remove_file(site.marks.join("argv")).unwrap();
    let runner = site
        .runner(config)
        .clock(Arc::new(|| Utc::now() + TimeDelta::minutes(11)));
    let (_, ran) = runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            ran,
            Ran::Finished {
                status: Status::Completed,
                ..
            }
        ),
        "{ran:?}"
    );

    assert!(!agent_runs_before.is_empty());
    assert_eq!(site.mark("argv"), "", "the agent did not run again");
    let pulls = site.forge.pulls();
    assert_eq!(pulls.len(), 1, "one pull request");
    let creates = site
        .forge
        .recorded
        .lock()
        .unwrap()
        .calls
        .iter()
        .filter(|c| c.starts_with("create_pull"))
        .count();
    assert_eq!(creates, 1);
    let result = queue.get(id).await.unwrap().unwrap().result.unwrap();
    assert_eq!(result.pr_number, Some(pulls[0].1.number));
    assert!(result.commit_sha.is_some());
}

#[tokio::test]
async fn the_runner_stops_an_agent_past_max_turns_as_it_reports_them() {
    let site = Site::new();
    let turn = r#"{"type":"turn.completed","usage":{"input_tokens":10,"output_tokens":5}}"#;
    let mut config = site.agent(
        "codex",
        &script(&[
            claude::echo(r#"{"type":"thread.started","thread_id":"t-1"}"#),
            "echo 'footer' >> app.txt".into(),
            claude::echo(turn),
            claude::echo(turn),
            claude::echo(turn),
            // It would go on for ever: the runner stops it at the third turn.
            "sleep 1000".into(),
        ]),
    );
    config.agent_format = productbuilder_builds::agent::AgentFormat::CodexJson;
    config.max_turns = Some(2);
    let runner = site.runner(config);
    let id = runner
        .queue()
        .enqueue(REPO, None, spec_for_issue(14), Utc::now())
        .await
        .unwrap()
        .build
        .id;
    let (_, ran) = runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    let Ran::Finished { status, reason } = ran else {
        panic!("{ran:?}")
    };
    assert_eq!(status, Status::Failed);
    assert!(
        reason.contains("it took 3 turns, past max_turns (2)"),
        "{reason}"
    );
    let pulls = site.forge.pulls();
    assert_eq!(pulls.len(), 1);
    assert!(pulls[0].0.draft);
    let result = runner
        .queue()
        .get(id)
        .await
        .unwrap()
        .unwrap()
        .result
        .unwrap();
    assert_eq!(result.turns, Some(3));
}

#[tokio::test]
async fn a_runner_whose_lease_was_taken_stops_and_writes_nothing() {
    let site = Site::new();
    let config = site.agent(
        "slow-lease",
        &script(&[
            "echo 'footer' >> app.txt".into(),
            claude::echo(claude::INIT),
            claude::echo(&claude::text("working on it")),
            "sleep 1000".into(),
        ]),
    );
    let runner = site.runner(config);
    let queue = runner.queue().clone();
    let id = queue
        .enqueue(REPO, None, spec_for_issue(15), Utc::now())
        .await
        .unwrap()
        .build
        .id;
    let mut events = runner.subscribe();
    let running = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run_once(&CancellationToken::new()).await }
    });
    loop {
        if events.recv().await.unwrap().kind == EventKind::Progress("working on it".into()) {
            break;
        }
    }
    // Recovery on another daemon, after the lease: the agent step is retried once from the start.
    let recovered = queue
        .recover(Utc::now() + TimeDelta::minutes(10))
        .await
        .unwrap();
    assert_eq!(recovered[0].action, Action::RetryOnce);
    let (_, ran) = running.await.unwrap().unwrap().unwrap();
    assert_eq!(ran, Ran::LeaseLost);
    let build = queue.get(id).await.unwrap().unwrap();
    assert_eq!(build.status, Status::Pending);
    assert!(site.forge.pulls().is_empty());
    assert!(
        !site
            .state_dir
            .join(format!("builds/{id}/state.json"))
            .exists()
            || !std::fs::read_to_string(site.state_dir.join(format!("builds/{id}/state.json")))
                .unwrap()
                .contains("\"agent\":{"),
        "no agent result was saved"
    );
}

#[tokio::test]
async fn a_build_goes_on_from_its_open_pull_request() {
    let site = Site::new();
    let first = site.agent(
        "first",
        &script(&[
            claude::echo(claude::INIT),
            "echo 'footer' >> app.txt".into(),
            claude::echo(&claude::max_turns(5)),
        ]),
    );
    let runner = site.runner(first);
    runner
        .queue()
        .enqueue(REPO, None, spec_for_issue(16), Utc::now())
        .await
        .unwrap();
    runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    let draft = site.origin_branch("productbuilder/issue-16").unwrap();
    assert_eq!(site.forge.pulls().len(), 1);

    // `/productbuilder continue`: a new build for the issue finds the branch and its pull request.
    let second = site.agent(
        "second",
        &script(&[
            claude::echo(claude::INIT),
            "echo 'blue footer' >> app.txt".into(),
            claude::echo(&claude::success(2, 0.1, "Finished the footer.")),
        ]),
    );
    let runner = site.runner(second);
    runner
        .queue()
        .enqueue(REPO, None, spec_for_issue(16), Utc::now())
        .await
        .unwrap();
    let (_, ran) = runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            ran,
            Ran::Finished {
                status: Status::Completed,
                ..
            }
        ),
        "{ran:?}"
    );
    let head = site.origin_branch("productbuilder/issue-16").unwrap();
    let parent = support::raw_git(&site.bare, &["rev-parse", &format!("{head}^")]);
    assert_eq!(
        parent.trim(),
        draft,
        "the work goes on from the draft's commit"
    );
    let app = support::raw_git(&site.bare, &["show", &format!("{head}:app.txt")]);
    assert_eq!(app, "hello\nfooter\nblue footer\n");
    assert_eq!(site.forge.pulls().len(), 1, "the same pull request");
    let argv = site.mark("argv");
    assert!(argv.contains("goes on from pull request #100"), "{argv}");
    assert!(argv.contains("Make the footer blue."), "{argv}");
}

#[tokio::test]
async fn serve_runs_what_is_enqueued_until_shutdown() {
    let site = Site::new();
    let config = site.agent(
        "served",
        &script(&[
            claude::echo(claude::INIT),
            "echo \"footer $$\" >> app.txt".into(),
            claude::echo(&claude::success(1, 0.01, "Done.")),
        ]),
    );
    let runner = site.runner(config);
    let queue = runner.queue().clone();
    let mut events = runner.subscribe();
    let shutdown = CancellationToken::new();
    let wake = Arc::new(tokio::sync::Notify::new());
    let served =
        tokio::spawn(runner.serve(shutdown.clone(), wake.clone(), Duration::from_secs(3600)));
    let mut ids = Vec::new();
    for issue in [21, 22] {
        ids.push(
            queue
                .enqueue(REPO, None, spec_for_issue(issue), Utc::now())
                .await
                .unwrap()
                .build
                .id,
        );
        wake.notify_one();
    }
    let mut finished = Vec::new();
    while finished.len() < 2 {
        let event = events.recv().await.unwrap();
        if let EventKind::Finished(status) = event.kind {
            assert_eq!(status, Status::Completed);
            finished.push(event.id);
        }
    }
    finished.sort();
    assert_eq!(finished, ids);
    shutdown.cancel();
    served.await.unwrap();
    assert_eq!(site.forge.pulls().len(), 2);
}

#[tokio::test]
async fn a_transient_github_error_retries_later_and_a_permanent_one_fails() {
    let site = Site::new();
    let config = site.agent(
        "retried",
        &script(&[
            claude::echo(claude::INIT),
            "echo 'footer' >> app.txt".into(),
            claude::echo(&claude::success(1, 0.01, "Done.")),
        ]),
    );
    *site.forge.fail_repository.lock().unwrap() = Some(
        productbuilder_builds::ForgeError::transient("GET /repos/acme/web: 502 Bad Gateway"),
    );
    let runner = site.runner(config.clone());
    let queue = runner.queue().clone();
    let id = queue
        .enqueue(REPO, None, spec_for_issue(17), Utc::now())
        .await
        .unwrap()
        .build
        .id;
    let (_, ran) = runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    let Ran::Retry { at, error } = ran else {
        panic!("{ran:?}")
    };
    assert!(error.contains("502 Bad Gateway"), "{error}");
    let build = queue.get(id).await.unwrap().unwrap();
    assert_eq!(build.status, Status::Pending);
    assert_eq!(
        build.next_attempt_at.timestamp_millis(),
        at.timestamp_millis()
    );
    // Not before the backoff; then it runs to its end.
    assert!(
        runner
            .run_once(&CancellationToken::new())
            .await
            .unwrap()
            .is_none()
    );
    let later = site
        .runner(config.clone())
        .clock(Arc::new(move || at + TimeDelta::seconds(1)));
    let (_, ran) = later
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            ran,
            Ran::Finished {
                status: Status::Completed,
                ..
            }
        ),
        "{ran:?}"
    );

    *site.forge.fail_repository.lock().unwrap() =
        Some(productbuilder_builds::ForgeError::permanent(
            "GET /repos/acme/web: 404 Not Found; is the app installed on it?",
        ));
    queue
        .enqueue(REPO, None, spec_for_issue(18), Utc::now())
        .await
        .unwrap();
    let (_, ran) = site
        .runner(config)
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    let Ran::Finished { status, reason } = ran else {
        panic!("{ran:?}")
    };
    assert_eq!(status, Status::Failed);
    assert!(reason.contains("404 Not Found"), "{reason}");
}

/// `/productbuilder implement` on a pull request someone else opened: more commits on that pull
/// request's own branch (found through the forge, never a name the spec gives), no new pull
/// request; a pull request whose branch the daemon cannot push to fails the build, naming why.
#[tokio::test]
async fn a_build_on_a_pull_request_commits_to_its_branch() {
    let site = Site::new();
    // A person's branch on the remote, with their pull request #42 open.
    let first = site.agent(
        "person",
        &script(&[
            claude::echo(claude::INIT),
            "echo 'their work' >> app.txt".into(),
            claude::echo(&claude::success(1, 0.0, "ok")),
        ]),
    );
    let runner = site.runner(first);
    let mut spec = BuildSpec::new("set up the branch");
    spec.open_pr = false;
    runner
        .queue()
        .enqueue(REPO, None, spec, Utc::now())
        .await
        .unwrap();
    runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    let branch = "productbuilder/build-1";
    let before = site
        .origin_branch(branch)
        .expect("the person's branch was pushed");
    site.forge
        .pull_branches
        .lock()
        .unwrap()
        .insert(42, branch.into());

    let second = site.agent(
        "more",
        &script(&[
            claude::echo(claude::INIT),
            "echo 'review fix' >> app.txt".into(),
            claude::echo(&claude::success(2, 0.1, "Addressed the review.")),
        ]),
    );
    let runner = site.runner(second);
    let mut spec = BuildSpec::new("Go on with pull request #42.");
    spec.pull_request = Some(42);
    runner
        .queue()
        .enqueue(REPO, Some(42), spec, Utc::now())
        .await
        .unwrap();
    let (_, ran) = runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            ran,
            Ran::Finished {
                status: Status::Completed,
                ..
            }
        ),
        "{ran:?}"
    );
    let head = site.origin_branch(branch).unwrap();
    let parent = support::raw_git(&site.bare, &["rev-parse", &format!("{head}^")]);
    assert_eq!(
        parent.trim(),
        before,
        "one more commit on the pull request's branch"
    );

    // A pull request the forge does not know as open in the repository (closed, or a fork's).
    let third = site.agent("never", &script(&[claude::echo(claude::INIT)]));
    let runner = site.runner(third);
    let mut spec = BuildSpec::new("Go on with pull request #43.");
    spec.pull_request = Some(43);
    let id = runner
        .queue()
        .enqueue(REPO, Some(43), spec, Utc::now())
        .await
        .unwrap()
        .build
        .id;
    runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    let build = runner.queue().get(id).await.unwrap().unwrap();
    assert_eq!(build.status, Status::Failed);
    assert!(
        build.error.unwrap_or_default().contains("#43 is not open"),
        "the error names the pull request"
    );
}

/// While the agent works, its build comment shows its latest progress (at most every
/// `progress_comment_every`, only when there is something new); the end's comment follows.
#[tokio::test]
async fn the_build_comment_follows_the_agent_s_progress_while_it_runs() {
    let site = Site::new();
    let agent = site.agent(
        "slow",
        &script(&[
            claude::echo(claude::INIT),
            claude::echo(&claude::text("reading the page")),
            "sleep 0.4".into(),
            claude::echo(&claude::text("writing the footer")),
            "echo 'footer' >> app.txt".into(),
            "sleep 0.4".into(),
            claude::echo(&claude::success(2, 0.1, "Done.")),
        ]),
    );
    let runner = site
        .runner(agent)
        .progress_comment_every(std::time::Duration::from_millis(100));
    runner
        .queue()
        .enqueue(REPO, None, spec_for_issue(7), Utc::now())
        .await
        .unwrap();
    runner
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    let comments = site.forge.comments(7);
    let last = comments.last().unwrap();
    assert!(last.contains(": completed"), "{last}");
    let during: Vec<&String> = comments[..comments.len() - 1]
        .iter()
        .filter(|c| c.contains("running (step: agent)") && c.contains("reading the page"))
        .collect();
    assert!(
        !during.is_empty(),
        "no progress while running: {comments:#?}"
    );
    assert!(
        comments.len() <= 2 + 3,
        "a few edits, not one per line: {comments:#?}"
    );
}
