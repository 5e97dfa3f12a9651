//! The reconciler in-process, against the sandbox GitHub and the real Docker engine: repair of
//! vanished containers, eviction past `max_previews` (with the comment saying so, and no comeback
//! without a push), orphan removal, expiry, and the fork, draft and label rules. Each pass is
//! awaited with `Previews::idle`, so nothing here sleeps.

mod support;

use std::time::Duration;

use productbuilder_github_sandbox::Permission;
use productbuilder_preview::compose::project_name;
use productbuilder_preview::db::DeletedReason;
use productbuilder_preview::reconcile::{MAX_FOLLOWS, Redeploy, RedeployError};
use productbuilder_preview::state::Status;
use productbuilder_preview::{LogsError, MARKER, TenantRules};
use support::{World, app, docker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_eviction_orphans_and_expiry() {
    let w = World::new("rec").await;
    let previews = w.previews(1, Duration::from_secs(3600), TenantRules::default());
    w.guarded(&previews, async {
        // Deployed, then its container vanishes: the next pass repairs it.
        let one = w.sandbox.open_pr(&w.repo, app("one"));
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, one).await.0, Status::Ready);
        for id in w.containers(one) {
            docker(&["rm", "-f", &id]);
        }
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, one).await.0, Status::Ready);
        assert_eq!(w.containers(one).len(), 1);

        // A second pull request on a host that holds one preview: the older one makes room, says
        // so in its comment, and stays removed until a push.
        let two = w.sandbox.open_pr(&w.repo, app("two"));
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, two).await.0, Status::Ready);
        assert_eq!(
            w.status(&previews, one).await,
            (Status::Deleted, Some(DeletedReason::Evicted))
        );
        assert!(w.containers(one).is_empty());
        let comments = w.sandbox.comments(&w.repo, one);
        assert_eq!(comments.len(), 1);
        assert!(comments[0].body.starts_with(MARKER));
        assert!(
            comments[0].body.contains("Removed to make room"),
            "{}",
            comments[0].body
        );
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, one).await.0, Status::Deleted);

        // A container labelled for this tenant that no preview accounts for is removed.
        let image = docker(&[
            "inspect",
            "--format",
            "{{.Config.Image}}",
            &w.containers(two)[0],
        ]);
        let orphan_project = project_name(&w.repo, 99);
        docker(&[
            "run",
            "-d",
            "--label",
            "productbuilder.managed=true",
            "--label",
            &format!("productbuilder.tenant={}", w.repo),
            "--label",
            "productbuilder.pr=99",
            "--label",
            &format!("com.docker.compose.project={orphan_project}"),
            &image,
        ]);
        assert_eq!(w.containers(99).len(), 1);
        w.pass(&previews).await;
        assert!(w.containers(99).is_empty(), "the orphan is left");
        assert_eq!(w.status(&previews, two).await.0, Status::Ready);

        // Not updated within the TTL: removed, and not brought back by the next pass.
        let expiring = w.previews(1, Duration::ZERO, TenantRules::default());
        w.pass(&expiring).await;
        assert_eq!(
            w.status(&expiring, two).await,
            (Status::Deleted, Some(DeletedReason::Expired))
        );
        assert!(w.containers(two).is_empty());
        w.pass(&expiring).await;
        assert_eq!(w.status(&expiring, two).await.0, Status::Deleted);

        // A push brings an expired preview back.
        w.sandbox.push(
            &w.repo,
            two,
            vec![("www/index.html".into(), b"<p>three</p>\n".to_vec())],
        );
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, two).await.0, Status::Ready);
    })
    .await;
    assert!(w.containers(1).is_empty() && w.containers(2).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_drafts_and_labels_decide_what_is_deployed() {
    let w = World::new("gate").await;
    let previews = w.previews(20, Duration::from_secs(3600), TenantRules::default());
    w.guarded(&previews, async {
        let fork = w.sandbox.open_pr(&w.repo, app("fork").from_fork());
        let draft = w.sandbox.open_pr(&w.repo, app("draft").as_draft());
        w.pass(&previews).await;
        for number in [fork, draft] {
            assert!(
                previews.get(&w.repo, number).await.unwrap().is_none(),
                "#{number} was deployed"
            );
        }
        // A maintainer labels the fork's pull request: now it deploys.
        w.sandbox
            .set_labels(&w.repo, fork, vec!["preview".to_owned()]);
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, fork).await.0, Status::Ready);
        let approved = w.sandbox.head_sha(&w.repo, fork);
        // The fork pushes: the label approved the commit it was given for, not this one. The
        // preview stays, the new head is never downloaded, and the row names it as waiting.
        let pushed = w.sandbox.push(
            &w.repo,
            fork,
            vec![("www/index.html".into(), b"<p>unreviewed</p>\n".to_vec())],
        );
        w.pass(&previews).await;
        let row = previews.get(&w.repo, fork).await.unwrap().unwrap();
        assert_eq!(
            (
                row.status,
                row.head_sha.as_str(),
                row.waiting_sha.as_deref()
            ),
            (Status::Ready, approved.as_str(), Some(pushed.as_str()))
        );
        assert_eq!(row.approved_sha.as_deref(), Some(approved.as_str()));
        assert_eq!(row.approved_how.as_deref(), Some("label"));
        assert_eq!(w.sandbox.tarball_requests(&w.repo, &pushed), 0);
        // A label added by someone who may only triage approves nothing.
        let other = w.sandbox.open_pr(&w.repo, app("other").from_fork());
        w.sandbox.grant("tria", &w.repo, Permission::Pull);
        w.sandbox.add_label(&w.repo, other, "preview", "tria");
        w.pass(&previews).await;
        assert!(previews.get(&w.repo, other).await.unwrap().is_none());
        // The label removed again: the preview goes, as unwanted.
        w.sandbox.set_labels(&w.repo, fork, Vec::new());
        w.pass(&previews).await;
        assert_eq!(
            w.status(&previews, fork).await,
            (Status::Deleted, Some(DeletedReason::Unwanted))
        );
        assert!(w.containers(fork).is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_head_cancels_the_deploy_in_flight() {
    use productbuilder_preview::state::Stage;
    let w = World::new("cancel").await;
    let previews = w.previews(20, Duration::from_secs(3600), TenantRules::default());
    w.guarded(&previews, async {
        // A build that would take ten minutes.
        let dockerfile = support::dockerfile_with(&format!(
            "RUN [\"/bin/busybox\", \"sh\", \"-c\", \"sleep 600; : {}\"]",
            // New on every run: no cache of an earlier run skips the slow step (BuildKit keys a
            // step by its command and its parent's files, not by labels).
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let number = w
            .sandbox
            .open_pr(&w.repo, app("slow").with_file("Dockerfile", dockerfile));
        let slow_sha = w.sandbox.head_sha(&w.repo, number);
        let mut changes = previews.changes();
        productbuilder_github::poll_pulls(&w.github, &w.tenant)
            .await
            .unwrap();
        previews.reconcile(&w.repo).await.unwrap();
        loop {
            let row = previews.get(&w.repo, number).await.unwrap();
            if row.is_some_and(|r| r.stage == Some(Stage::Build)) {
                break;
            }
            changes.changed().await.unwrap();
        }

        // The fix lands while the slow build runs: the new head is deployed now, not after it.
        let fixed = w.sandbox.push(
            &w.repo,
            number,
            vec![(
                "Dockerfile".into(),
                support::dockerfile_with("").into_bytes(),
            )],
        );
        tokio::time::timeout(Duration::from_secs(120), w.pass(&previews))
            .await
            .expect("the new head waited behind the old build");
        let row = previews.get(&w.repo, number).await.unwrap().unwrap();
        assert_eq!(
            (row.status, row.head_sha.as_str()),
            (Status::Ready, fixed.as_str())
        );
        // The old head never got a successful deployment.
        let old: Vec<_> = w
            .sandbox
            .deployments(&w.repo)
            .into_iter()
            .filter(|d| d.sha == slow_sha)
            .flat_map(|d| d.statuses)
            .filter(|(state, _)| state == "success")
            .collect();
        assert!(old.is_empty(), "{old:?}");
        assert_eq!(w.containers(number).len(), 1);
    })
    .await;
}

/// The example app with a shell (busybox's applets installed), a migration, a post-deploy command
/// and logs read from a file inside the container.
fn app_with_steps(title: &str, post_deploy: &str) -> productbuilder_github_sandbox::NewPr {
    let root =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-preview");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))
        .unwrap()
        .replace(
            "COPY busybox /bin/busybox",
            "COPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]",
        );
    let config = format!(
        "version: 1\n\
         compose:\n  file: .productbuilding/preview/docker-compose.yml\n  service: app\n\
         runtime:\n  internal_port: 8080\n  healthcheck_path: /\n  startup_timeout_seconds: 60\n\
         database:\n  migrate_command: \"echo migrated >> /www/steps.log\"\n\
         logging:\n  service: app\n  type: file\n  path: /www/steps.log\n\
         post_deploy_commands:\n  - service: app\n    command: \"{post_deploy}\"\n    description: Seed demo data\n"
    );
    app(title)
        .with_file("Dockerfile", dockerfile)
        .with_file(".productbuilding/preview/config.yml", config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_post_deploy_commands_and_file_logs() {
    use futures_util::StreamExt;
    use productbuilder_preview::state::Stage;
    let w = World::new("steps").await;
    let previews = w.previews(20, Duration::from_secs(3600), TenantRules::default());
    w.guarded(&previews, async {
        let number = w.sandbox.open_pr(
            &w.repo,
            app_with_steps("steps", "echo seeded >> /www/steps.log"),
        );
        w.pass(&previews).await;
        let row = previews.get(&w.repo, number).await.unwrap().unwrap();
        assert_eq!(row.status, Status::Ready, "{row:?}");

        // The file the contract names, read inside the container: the migration ran first.
        let mut stream = previews.logs(&w.repo, number, 10, false).await.unwrap();
        let mut text = Vec::new();
        while let Some(chunk) = stream.next().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(String::from_utf8_lossy(&text), "migrated\nseeded\n");

        // Follows: at most four at once, each a `tail -F` in the container while its reader is
        // there, and none left once the readers went away.
        let container = w.containers(number).remove(0);
        let tails = || {
            docker(&["top", &container])
                .lines()
                .filter(|l| l.contains("tail -n 10 -F"))
                .count()
        };
        let mut follows = Vec::new();
        for _ in 0..MAX_FOLLOWS {
            let mut stream = previews.logs(&w.repo, number, 10, true).await.unwrap();
            let first = stream.next().await.unwrap().unwrap();
            assert!(
                String::from_utf8_lossy(&first).starts_with("migrated"),
                "{first:?}"
            );
            follows.push(stream);
        }
        assert_eq!(tails(), MAX_FOLLOWS);
        match previews.logs(&w.repo, number, 10, true).await {
            Err(LogsError::TooManyFollows(m)) => assert!(m.contains("4 log follows"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a fifth follow was served"),
        }
        // Reading without follow is not limited.
        drop(previews.logs(&w.repo, number, 10, false).await.unwrap());
        drop(follows);
        // The kills run in the background once the streams are gone: wait for them, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tails() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "tails left: {}",
                docker(&["top", &container])
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Their places are free again.
        drop(previews.logs(&w.repo, number, 10, true).await.unwrap());

        // A post-deploy command that fails: the stage, its description and its output are kept.
        let broken = app_with_steps("steps", "echo cannot seed; exit 3");
        let sha = w.sandbox.push(&w.repo, number, broken.files);
        w.pass(&previews).await;
        let row = previews.get(&w.repo, number).await.unwrap().unwrap();
        assert_eq!(row.head_sha, sha);
        assert_eq!(
            (row.status, row.stage),
            (Status::Failed, Some(Stage::PostDeploy))
        );
        assert!(
            row.error
                .as_deref()
                .unwrap()
                .starts_with("Seed demo data: "),
            "{row:?}"
        );
        assert!(
            row.log_tail.as_deref().unwrap().contains("cannot seed"),
            "{row:?}"
        );
        let comment = &w.sandbox.comments(&w.repo, number)[0].body;
        assert!(comment.contains("Failed at `post_deploy`"), "{comment}");
        assert!(comment.contains("cannot seed"), "{comment}");

        // A failed preview waits for a push, unless an operator asks for a redeploy: it runs
        // again at the same commit (and fails again, the same way).
        let (_, failed_before, _) = previews.outcomes();
        w.pass(&previews).await;
        assert_eq!(
            previews.outcomes().1,
            failed_before,
            "a pass alone redeployed"
        );
        assert_eq!(
            previews.redeploy(&w.repo, number).await,
            Ok(Redeploy::Started(sha.clone()))
        );
        previews.idle().await;
        assert_eq!(previews.outcomes().1, failed_before + 1);
        let row = previews.get(&w.repo, number).await.unwrap().unwrap();
        assert_eq!(
            (row.status, row.stage, row.head_sha),
            (Status::Failed, Some(Stage::PostDeploy), sha)
        );
        assert!(matches!(
            previews.redeploy(&w.repo, number + 100).await,
            Err(RedeployError::NotFound(m)) if m.contains("does not exist")
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_fails_for_a_moment_is_retried_not_reported_failed() {
    use productbuilder_github_sandbox::Fault;
    let w = World::new("flaky").await;
    let previews = w.previews(20, Duration::from_secs(3600), TenantRules::default());
    w.guarded(&previews, async {
        // GitHub answers the tarball request 502 twice, then serves it.
        w.sandbox
            .inject(Fault::new(&format!("/repos/{}/tarball", w.repo), 502).times(2));
        let number = w.sandbox.open_pr(&w.repo, app("flaky"));
        w.pass(&previews).await;
        let row = previews.get(&w.repo, number).await.unwrap().unwrap();
        assert_eq!(row.status, Status::Ready, "{row:?}");
        let tarball_requests = w
            .sandbox
            .requests()
            .iter()
            .filter(|r| r.path_and_query.contains("/tarball/"))
            .count();
        assert_eq!(tarball_requests, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_of_a_repository_that_left_the_configuration_are_swept() {
    let w = World::new("sweep").await;
    let previews = w.previews(20, Duration::from_secs(3600), TenantRules::default());
    let number = w.sandbox.open_pr(&w.repo, app("sweep"));
    w.pass(&previews).await;
    assert_eq!(w.status(&previews, number).await.0, Status::Ready);
    assert_eq!(
        previews.sweep().await.unwrap(),
        0,
        "a configured repository is kept"
    );
    assert_eq!(w.containers(number).len(), 1);

    // The next start knows no such repository.
    let restarted = productbuilder_preview::Previews::new(
        previews.settings().clone(),
        std::collections::HashMap::new(),
        w.store.clone(),
        w.github.clone(),
    );
    assert_eq!(restarted.sweep().await.unwrap(), 1);
    assert!(w.containers(number).is_empty());
    assert_eq!(
        w.status(&restarted, number).await,
        (Status::Deleted, Some(DeletedReason::Unwanted))
    );
    assert_eq!(restarted.sweep().await.unwrap(), 0);
    w.clean_up(&restarted).await;
}

#[tokio::test]
async fn a_log_follow_ends_after_its_maximum_duration() {
    use futures_util::StreamExt;
    // A follow of a quiet log: it would never end by itself.
    let quiet: productbuilder_preview::engine::LogStream =
        Box::pin(futures_util::stream::pending());
    let started = std::time::Instant::now();
    let mut limited = productbuilder_preview::reconcile::at_most(quiet, Duration::from_millis(50));
    assert!(limited.next().await.is_none());
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(
        productbuilder_preview::reconcile::MAX_FOLLOW_DURATION,
        Duration::from_secs(30 * 60)
    );
}

/// After an upgrade, a preview deployed under the project name of an earlier release
/// (`pb-{owner}-{repo}-pr-{n}`, kept in its row) keeps running, and its next deploy moves it to the
/// planner's name and removes the old project and workspace: nothing is orphaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_under_an_earlier_project_name_is_kept_then_moved() {
    let w = World::new("legacy").await;
    let previews = w.previews(4, Duration::from_secs(3600), TenantRules::default());
    w.guarded(&previews, async {
        let one = w.sandbox.open_pr(&w.repo, app("one"));
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, one).await.0, Status::Ready);

        // What an earlier release left: its containers, workspace and row under the old name.
        let current = project_name(&w.repo, one);
        let legacy = format!("pb-{}-pr-{one}", w.repo.replace('/', "-"));
        let previews_dir = w.dir.path().join("state/previews");
        // The same compose project, started by Compose under the old name from a copy of the
        // workspace (its checkout is the project directory), as the earlier release did.
        let (new_ws, old_ws) = (previews_dir.join(&current), previews_dir.join(&legacy));
        command(&["cp", "-a", &path(&new_ws), &path(&old_ws)]);
        let compose_dir = find_dir(&old_ws, ".productbuilding")
            .unwrap()
            .join("preview");
        command(&[
            "docker",
            "compose",
            "-p",
            &legacy,
            "-f",
            &path(&old_ws.join("productbuilder.compose.yml")),
            "--project-directory",
            &path(&compose_dir),
            "up",
            "-d",
            "--build",
        ]);
        for id in w.containers(one) {
            docker(&["rm", "-f", &id]);
        }
        std::fs::remove_dir_all(&new_ws).unwrap();
        let (repo, old) = (w.repo.clone(), legacy.clone());
        w.store
            .write(move |c| {
                c.execute(
                    &format!("UPDATE previews SET project = ?1 WHERE repo = ?2 AND number = {one}"),
                    [&old, &repo],
                )
            })
            .await
            .unwrap();
        let legacy_containers = || {
            docker(&[
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.compose.project={legacy}"),
            ])
        };
        assert!(!legacy_containers().is_empty());

        // The stored name is the preview's: running, so nothing is redeployed or removed.
        w.pass(&previews).await;
        let row = previews.get(&w.repo, one).await.unwrap().unwrap();
        assert_eq!(
            (row.status, row.project.as_str()),
            (Status::Ready, legacy.as_str())
        );
        assert!(
            !legacy_containers().is_empty(),
            "the running preview was torn down"
        );
        assert!(w.containers(one).is_empty());

        // A push deploys under the planner's name; the old project goes, with its workspace.
        w.sandbox.push(
            &w.repo,
            one,
            vec![("www/index.html".into(), b"<p>two</p>\n".to_vec())],
        );
        w.pass(&previews).await;
        w.pass(&previews).await;
        let row = previews.get(&w.repo, one).await.unwrap().unwrap();
        assert_eq!(
            (row.status, row.project.as_str()),
            (Status::Ready, current.as_str())
        );
        assert_eq!(w.containers(one).len(), 1);
        assert!(legacy_containers().is_empty(), "the old project is left");
        assert!(
            !previews_dir.join(&legacy).exists(),
            "the old workspace is left"
        );
    })
    .await;
}

fn path(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// Runs a command line (`cp`, `docker compose`), panicking with its output when it fails.
fn command(args: &[&str]) {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first directory named `name` under `root`, depth first.
fn find_dir(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .find_map(|p| {
            if p.file_name().is_some_and(|n| n == name) {
                Some(p)
            } else {
                find_dir(&p, name)
            }
        })
}

/// `max_previews` holds under a burst: five pull requests opened at once across two tenants whose
/// passes run concurrently, on a host that holds three, never run more than three previews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_two_tenants_never_exceeds_max_previews() {
    let w = World::new("burst").await;
    let (other, other_tenant) = w.second_tenant("burst2");
    let previews = w.previews_for(&[&other], 3);
    w.guarded(&previews, async {
        for i in 0..3 {
            w.sandbox.open_pr(&w.repo, app(&format!("a{i}")));
        }
        for i in 0..2 {
            w.sandbox.open_pr(&other, app(&format!("b{i}")));
        }
        productbuilder_github::poll_pulls(&w.github, &w.tenant)
            .await
            .unwrap();
        productbuilder_github::poll_pulls(&w.github, &other_tenant)
            .await
            .unwrap();
        for _ in 0..2 {
            let (a, b) = tokio::join!(previews.reconcile(&w.repo), previews.reconcile(&other));
            a.unwrap();
            b.unwrap();
            previews.idle().await;
            let live: Vec<_> = previews
                .list()
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.status != Status::Deleted)
                .collect();
            // Every place is used, none twice: the first pass admits three and two wait; the
            // second evicts the two oldest for them.
            assert_eq!(live.len(), 3, "{} live: {live:?}", live.len());
            let running = docker(&[
                "ps",
                "-q",
                "--filter",
                "label=productbuilder.managed=true",
                "--filter",
                &format!("label=productbuilder.tenant={}", w.repo),
            ])
            .lines()
            .count()
                + docker(&[
                    "ps",
                    "-q",
                    "--filter",
                    "label=productbuilder.managed=true",
                    "--filter",
                    &format!("label=productbuilder.tenant={other}"),
                ])
                .lines()
                .count();
            assert!(running <= 3, "{running} containers run");
        }
        // The other tenant's previews go too.
        previews.remove_all().await;
        previews.idle().await;
    })
    .await;
}

/// A report GitHub refuses for good (a 422 on the commit status) is recorded with the row and not
/// sent again on every pass; the next change of the preview is a new report and is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_refused_for_good_is_not_retried_until_the_preview_changes() {
    let w = World::new("refused").await;
    let previews = w.previews(5, Duration::from_secs(3600), TenantRules::default());
    w.guarded(&previews, async {
        let number = w.sandbox.open_pr(&w.repo, app("one"));
        // Every commit status of this repository is refused, as GitHub does for a payload it
        // will never accept.
        let statuses = format!("/repos/{}/statuses/", w.repo);
        w.sandbox.inject(
            productbuilder_github_sandbox::Fault::new(&statuses, 422)
                .method(http::Method::POST)
                .times(1000),
        );
        w.pass(&previews).await;
        let row = previews.get(&w.repo, number).await.unwrap().unwrap();
        assert_eq!(row.status, Status::Ready);
        assert!(
            row.report_error
                .as_deref()
                .is_some_and(|e| e.contains("422")),
            "{:?}",
            row.report_error
        );
        let sent = |w: &World| {
            w.sandbox
                .requests()
                .iter()
                .filter(|r| {
                    r.method == http::Method::POST && r.path_and_query.starts_with(&statuses)
                })
                .count()
        };
        let before = sent(&w);
        w.pass(&previews).await;
        w.pass(&previews).await;
        assert_eq!(sent(&w), before, "the refused report was sent again");

        // A push is a new report: sent (and refused again here, so recorded for the new head).
        let sha = w.sandbox.push(
            &w.repo,
            number,
            vec![("www/index.html".into(), b"<p>two</p>".to_vec())],
        );
        w.pass(&previews).await;
        let row = previews.get(&w.repo, number).await.unwrap().unwrap();
        assert_eq!(row.head_sha, sha);
        assert!(sent(&w) > before, "the new head's report was not sent");
    })
    .await;
}

/// Each deploy attempt downloads into its own directory (a cancelled attempt's extraction can
/// only write into its own); once a newer head runs, the older attempts' directories are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_has_its_own_checkout_and_older_ones_are_removed() {
    let w = World::new("attempts").await;
    let previews = w.previews(5, Duration::from_secs(3600), TenantRules::default());
    w.guarded(&previews, async {
        let number = w.sandbox.open_pr(&w.repo, app("one"));
        w.pass(&previews).await;
        let row = previews.get(&w.repo, number).await.unwrap().unwrap();
        let heads = w
            .dir
            .path()
            .join("state/previews")
            .join(&row.project)
            .join("heads");
        let attempts = |heads: &std::path::Path| -> Vec<String> {
            std::fs::read_dir(heads)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        let first = attempts(&heads);
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(first[0].starts_with(&row.head_sha[..12]), "{first:?}");

        let sha = w.sandbox.push(
            &w.repo,
            number,
            vec![("www/index.html".into(), b"<p>two</p>".to_vec())],
        );
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, number).await.0, Status::Ready);
        let second = attempts(&heads);
        assert_eq!(second.len(), 1, "{second:?}");
        assert!(second[0].starts_with(&sha[..12]), "{second:?}");
    })
    .await;
}

/// A failure of the host (here the workspace cannot be created: a file stands where its directory
/// goes, as a full disk or a wrong permission would refuse it) does not stick to the commit: the
/// preview is not marked failed, and once the host is fine again the next pass deploys it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_failure_is_retried_and_does_not_fail_the_commit() {
    let w = World::new("host").await;
    let previews = w.previews(5, Duration::from_secs(3600), TenantRules::default());
    w.guarded(&previews, async {
        let number = w.sandbox.open_pr(&w.repo, app("one"));
        let project = project_name(&w.repo, number);
        let workspace = w.dir.path().join("state/previews").join(&project);
        std::fs::create_dir_all(workspace.parent().unwrap()).unwrap();
        std::fs::write(&workspace, "not a directory").unwrap();

        w.pass(&previews).await;
        let row = previews.get(&w.repo, number).await.unwrap().unwrap();
        assert_ne!(row.status, Status::Failed, "{row:?}");
        assert_eq!(row.error, None, "{row:?}");
        assert!(w.containers(number).is_empty());

        std::fs::remove_file(&workspace).unwrap();
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, number).await.0, Status::Ready);
    })
    .await;
}
