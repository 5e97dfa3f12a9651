//! The durable queue on a real SQLite file: the clock is passed in, so leases run out without
//! sleeping; "a daemon" is a `Store` opened on the file, and dropping it is the kill.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use productbuilder_builds::recovery::Action;
use productbuilder_builds::{
    BuildResult, BuildSpec, Cancel, Finish, Queue, QueueConfig, QueueError, Retry, Status, Step,
};
use productbuilder_store::Store;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 6, 6, 0, 0).unwrap()
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

struct Db {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Store::open(&path).unwrap().migrate().unwrap();
        Db { _dir: dir, path }
    }

    /// A daemon's view of the file: its own store (its own writer connection).
    fn queue(&self, config: QueueConfig) -> Queue {
        Queue::new(Store::open(&self.path).unwrap(), config)
    }
}

fn statuses(audit: &[productbuilder_builds::AuditEntry]) -> Vec<(Option<Status>, Status)> {
    audit.iter().map(|a| (a.from, a.to)).collect()
}

#[tokio::test]
async fn a_second_enqueue_for_the_same_issue_returns_the_first_build() {
    let db = Db::new();
    let q = db.queue(QueueConfig::default());
    let first = q
        .enqueue("acme/web", Some(7), BuildSpec::new("add a footer"), t0())
        .await
        .unwrap();
    assert!(first.created);
    let second = q
        .enqueue("acme/web", Some(7), BuildSpec::new("again"), t0() + secs(1))
        .await
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.build.id, first.build.id);
    assert_eq!(second.build.spec.prompt, "add a footer");
    // Still while it runs.
    let claim = q.claim("host-a", t0()).await.unwrap().unwrap();
    let third = q
        .enqueue("acme/web", Some(7), BuildSpec::new("again"), t0())
        .await
        .unwrap();
    assert_eq!((third.created, third.build.id), (false, first.build.id));
    // Another issue, another repository, or no issue at all: new builds.
    for (repo, number) in [
        ("acme/web", Some(8)),
        ("acme/api", Some(7)),
        ("acme/web", None),
        ("acme/web", None),
    ] {
        let other = q
            .enqueue(repo, number, BuildSpec::new("p"), t0())
            .await
            .unwrap();
        assert!(other.created, "{repo} {number:?}");
    }
    // A REST build naming the issue in its spec is the same issue's build.
    let mut spec = BuildSpec::new("from the API");
    spec.issue = Some(7);
    let rest = q.enqueue("acme/web", None, spec, t0()).await.unwrap();
    assert_eq!((rest.created, rest.build.id), (false, first.build.id));
    // Once it has ended, the issue may have a new one.
    q.finish(
        claim.build.id,
        "host-a",
        Finish::Completed(BuildResult {
            success: true,
            ..Default::default()
        }),
        t0() + secs(5),
    )
    .await
    .unwrap();
    let fresh = q
        .enqueue("acme/web", Some(7), BuildSpec::new("more"), t0() + secs(6))
        .await
        .unwrap();
    assert!(fresh.created);
    assert_ne!(fresh.build.id, first.build.id);
}

#[tokio::test]
async fn an_invalid_spec_is_refused_before_anything_is_written() {
    let db = Db::new();
    let q = db.queue(QueueConfig::default());
    let err = q
        .enqueue(
            "acme/web",
            Some(1),
            BuildSpec::new("x".repeat(1 << 20)),
            t0(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, QueueError::Spec(e) if e.field() == Some("prompt")),
        "{err}"
    );
    assert!(q.list("acme/web", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn two_claimers_at_once_never_exceed_max_concurrent() {
    for max_concurrent in [1u32, 2] {
        let db = Db::new();
        let config = QueueConfig {
            max_concurrent,
            ..QueueConfig::default()
        };
        let setup = db.queue(config.clone());
        for n in 1..=6 {
            setup
                .enqueue("acme/web", Some(n), BuildSpec::new("p"), t0())
                .await
                .unwrap();
        }
        // Two daemons on one file, each with its own writer connection, claiming in a loop at
        // the same time.
        let (a, b) = (db.queue(config.clone()), db.queue(config.clone()));
        let claimer = |q: Queue, owner: &'static str| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..20 {
                    if let Some(c) = q.claim(owner, t0()).await.unwrap() {
                        got.push(c.build.id);
                    }
                    tokio::task::yield_now().await;
                }
                got
            })
        };
        let (ga, gb) = tokio::join!(claimer(a, "host-a"), claimer(b, "host-b"));
        let (ga, gb) = (ga.unwrap(), gb.unwrap());
        assert_eq!(
            ga.len() + gb.len(),
            max_concurrent as usize,
            "{ga:?} {gb:?}"
        );
        assert!(
            ga.iter().all(|id| !gb.contains(id)),
            "a build claimed twice: {ga:?} {gb:?}"
        );
        let running = setup
            .list("acme/web", 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|b| b.status == Status::Running)
            .count();
        assert_eq!(running, max_concurrent as usize);
    }
}

#[tokio::test]
async fn heartbeats_extend_the_lease_and_carry_a_cancel_request() {
    let db = Db::new();
    let config = QueueConfig::default();
    let q = db.queue(config.clone());
    let id = q
        .enqueue("acme/web", Some(1), BuildSpec::new("p"), t0())
        .await
        .unwrap()
        .build
        .id;
    let claim = q.claim("host-a", t0()).await.unwrap().unwrap();
    assert_eq!(claim.build.lease_until, Some(t0() + secs(60)));
    assert_eq!(claim.build.attempts, 1);
    let beat = q.heartbeat(id, "host-a", t0() + secs(50)).await.unwrap();
    assert_eq!(beat.lease_until, t0() + secs(110));
    assert!(!beat.cancel_requested);
    // Past the first lease, but heartbeats kept it: nothing to recover.
    assert!(q.recover(t0() + secs(100)).await.unwrap().is_empty());
    // Someone else's heartbeat is refused.
    assert!(matches!(
        q.heartbeat(id, "host-b", t0()).await,
        Err(QueueError::LeaseLost { .. })
    ));
    assert_eq!(
        q.cancel(id, "cancelled by api", t0() + secs(60))
            .await
            .unwrap(),
        Cancel::Requested
    );
    assert_eq!(q.get(id).await.unwrap().unwrap().status, Status::Running);
    let beat = q.heartbeat(id, "host-a", t0() + secs(70)).await.unwrap();
    assert!(beat.cancel_requested);
    let build = q
        .finish(
            id,
            "host-a",
            Finish::Cancelled(BuildResult::default()),
            t0() + secs(71),
        )
        .await
        .unwrap();
    assert_eq!(build.status, Status::Cancelled);
    assert_eq!(
        q.cancel(id, "again", t0() + secs(72)).await.unwrap(),
        Cancel::AlreadyFinal(Status::Cancelled)
    );
    // A finished build's lease is gone.
    assert!(matches!(
        q.heartbeat(id, "host-a", t0() + secs(73)).await,
        Err(QueueError::LeaseLost { .. })
    ));
}

#[tokio::test]
async fn a_pending_build_is_cancelled_at_once() {
    let db = Db::new();
    let q = db.queue(QueueConfig::default());
    let id = q
        .enqueue("acme/web", Some(1), BuildSpec::new("p"), t0())
        .await
        .unwrap()
        .build
        .id;
    assert_eq!(
        q.cancel(id, "cancelled by api", t0()).await.unwrap(),
        Cancel::Cancelled
    );
    assert!(q.claim("host-a", t0()).await.unwrap().is_none());
    let audit = q.audit(id).await.unwrap();
    assert_eq!(
        statuses(&audit),
        [
            (None, Status::Pending),
            (Some(Status::Pending), Status::Cancelled)
        ]
    );
    assert_eq!(audit[1].reason, "cancelled by api");
    assert!(matches!(
        q.cancel(productbuilder_builds::BuildId(999), "x", t0())
            .await,
        Err(QueueError::NotFound(_))
    ));
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_then_given_up() {
    let db = Db::new();
    let config = QueueConfig {
        max_attempts: 2,
        ..QueueConfig::default()
    };
    let q = db.queue(config);
    let id = q
        .enqueue("acme/web", Some(1), BuildSpec::new("p"), t0())
        .await
        .unwrap()
        .build
        .id;
    q.claim("host-a", t0()).await.unwrap().unwrap();
    q.record_step(id, "host-a", Step::Clone, t0())
        .await
        .unwrap();
    let retry = q
        .retry_later(id, "host-a", "clone: connection reset", t0() + secs(1))
        .await
        .unwrap();
    assert_eq!(
        retry,
        Retry::Scheduled {
            at: t0() + secs(31)
        }
    );
    let build = q.get(id).await.unwrap().unwrap();
    assert_eq!(
        (build.status, build.step, build.lease_owner),
        (Status::Pending, None, None)
    );
    // Not before its time.
    assert!(q.claim("host-a", t0() + secs(30)).await.unwrap().is_none());
    let claim = q.claim("host-a", t0() + secs(31)).await.unwrap().unwrap();
    assert_eq!((claim.build.attempts, claim.resume_from), (2, None));
    assert_eq!(
        q.retry_later(id, "host-a", "push: 502", t0() + secs(40))
            .await
            .unwrap(),
        Retry::GaveUp
    );
    let build = q.get(id).await.unwrap().unwrap();
    assert_eq!(build.status, Status::Failed);
    assert!(build.error.unwrap().contains("push: 502"));
    assert_eq!(
        statuses(&q.audit(id).await.unwrap()),
        [
            (None, Status::Pending),
            (Some(Status::Pending), Status::Running),
            (Some(Status::Running), Status::Pending),
            (Some(Status::Pending), Status::Running),
            (Some(Status::Running), Status::Failed),
        ]
    );
}

#[tokio::test]
async fn an_expired_lease_in_a_resumable_step_resumes_from_it() {
    let db = Db::new();
    let config = QueueConfig::default();
    let id = {
        let q = db.queue(config.clone());
        let id = q
            .enqueue("acme/web", Some(3), BuildSpec::new("p"), t0())
            .await
            .unwrap()
            .build
            .id;
        q.claim("host-a", t0()).await.unwrap().unwrap();
        for step in [Step::Clone, Step::Agent, Step::Commit, Step::Push] {
            q.record_step(id, "host-a", step, t0() + secs(5))
                .await
                .unwrap();
        }
        id
        // The daemon dies here.
    };
    let q = db.queue(config);
    // Within the lease nothing is taken back.
    assert!(q.recover(t0() + secs(60)).await.unwrap().is_empty());
    let recovered = q.recover(t0() + secs(61)).await.unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(
        recovered[0].action,
        Action::Resume {
            from: Some(Step::Push)
        }
    );
    // The old runner has lost its lease.
    assert!(matches!(
        q.record_step(id, "host-a", Step::PullRequest, t0() + secs(62))
            .await,
        Err(QueueError::LeaseLost { .. })
    ));
    let claim = q.claim("host-b", t0() + secs(62)).await.unwrap().unwrap();
    assert_eq!(claim.resume_from, Some(Step::Push));
    assert_eq!(claim.build.interruptions, 1);
    let audit = q.audit(id).await.unwrap();
    assert_eq!(audit[2].reason, "interrupted in step push; resumes from it");
}

#[tokio::test]
async fn an_expired_lease_during_the_agent_fails_as_interrupted_and_retries_once() {
    let db = Db::new();
    let config = QueueConfig::default();
    let q = db.queue(config.clone());
    let id = q
        .enqueue("acme/web", Some(4), BuildSpec::new("p"), t0())
        .await
        .unwrap()
        .build
        .id;
    let mut now = t0();
    for round in 0..2 {
        let claim = q
            .claim(&format!("host-{round}"), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claim.resume_from, None, "the agent is never resumed midway");
        q.record_step(id, &format!("host-{round}"), Step::Agent, now)
            .await
            .unwrap();
        now += secs(61);
        let recovered = q.recover(now).await.unwrap();
        let expected = if round == 0 {
            Action::RetryOnce
        } else {
            Action::Fail
        };
        assert_eq!(recovered[0].action, expected);
    }
    let build = q.get(id).await.unwrap().unwrap();
    assert_eq!(
        (build.status, build.error.as_deref()),
        (Status::Failed, Some("interrupted"))
    );
    assert_eq!(build.finished_at, Some(now));
    let audit = q.audit(id).await.unwrap();
    assert_eq!(
        statuses(&audit),
        [
            (None, Status::Pending),
            (Some(Status::Pending), Status::Running),
            (Some(Status::Running), Status::Pending),
            (Some(Status::Pending), Status::Running),
            (Some(Status::Running), Status::Failed),
        ]
    );
    assert!(
        audit[2]
            .reason
            .starts_with("interrupted in step agent; retried once"),
        "{}",
        audit[2].reason
    );
    assert_eq!(audit[4].reason, "interrupted");
    // Nothing more to recover, and nothing to claim.
    assert!(q.recover(now + secs(3600)).await.unwrap().is_empty());
    assert!(q.claim("host-z", now + secs(3600)).await.unwrap().is_none());
}

#[tokio::test]
async fn a_kill_between_claim_and_the_first_step_converges() {
    let db = Db::new();
    let config = QueueConfig::default();
    let id = {
        let q = db.queue(config.clone());
        let id = q
            .enqueue("acme/web", Some(5), BuildSpec::new("p"), t0())
            .await
            .unwrap()
            .build
            .id;
        let claim = q.claim("host-a", t0()).await.unwrap().unwrap();
        assert_eq!(claim.build.status, Status::Running);
        id
        // Dropped: the claimer (its store, its connection) is gone before any step.
    };
    let q = db.queue(config);
    // The restarted daemon has no room while the dead runner's build still counts.
    assert!(q.claim("host-b", t0() + secs(10)).await.unwrap().is_none());
    let restart = t0() + secs(120);
    let recovered = q.recover(restart).await.unwrap();
    assert_eq!(recovered[0].action, Action::Resume { from: None });
    let claim = q.claim("host-b", restart).await.unwrap().unwrap();
    assert_eq!(
        (claim.build.id, claim.resume_from, claim.build.interruptions),
        (id, None, 0)
    );
    for step in [
        Step::Clone,
        Step::Agent,
        Step::Commit,
        Step::Push,
        Step::PullRequest,
        Step::Callback,
    ] {
        q.record_step(id, "host-b", step, restart).await.unwrap();
    }
    let result = BuildResult {
        success: true,
        commit_sha: Some("abc123".into()),
        files_changed: vec!["src/footer.html".into()],
        ..Default::default()
    };
    let build = q
        .finish(
            id,
            "host-b",
            Finish::Completed(result.clone()),
            restart + secs(30),
        )
        .await
        .unwrap();
    assert_eq!(
        (build.status, build.result, build.lease_owner),
        (Status::Completed, Some(result), None)
    );
    // The audit lists every transition, in order, with when and why.
    let audit = q.audit(id).await.unwrap();
    assert_eq!(
        statuses(&audit),
        [
            (None, Status::Pending),
            (Some(Status::Pending), Status::Running),
            (Some(Status::Running), Status::Pending),
            (Some(Status::Pending), Status::Running),
            (Some(Status::Running), Status::Completed),
        ]
    );
    let reasons: Vec<&str> = audit.iter().map(|a| a.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "enqueued",
            "claimed by host-a",
            "interrupted before its first step; starts again",
            "claimed by host-b",
            "completed"
        ]
    );
    let at: Vec<DateTime<Utc>> = audit.iter().map(|a| a.at).collect();
    assert_eq!(at, [t0(), t0(), restart, restart, restart + secs(30)]);
    assert!(audit.iter().all(|a| a.build_id == id));
}

#[tokio::test]
async fn a_cancel_requested_before_the_runner_died_ends_cancelled() {
    let db = Db::new();
    let q = db.queue(QueueConfig::default());
    let id = q
        .enqueue("acme/web", Some(6), BuildSpec::new("p"), t0())
        .await
        .unwrap()
        .build
        .id;
    q.claim("host-a", t0()).await.unwrap().unwrap();
    q.record_step(id, "host-a", Step::Agent, t0())
        .await
        .unwrap();
    assert_eq!(
        q.cancel(id, "cancelled by api", t0()).await.unwrap(),
        Cancel::Requested
    );
    let recovered = q.recover(t0() + secs(61)).await.unwrap();
    assert_eq!(recovered[0].action, Action::Cancel);
    assert_eq!(q.get(id).await.unwrap().unwrap().status, Status::Cancelled);
}

#[tokio::test]
async fn the_output_stored_is_bounded() {
    let db = Db::new();
    let q = db.queue(QueueConfig::default());
    let id = q
        .enqueue("acme/web", None, BuildSpec::new("p"), t0())
        .await
        .unwrap()
        .build
        .id;
    q.claim("host-a", t0()).await.unwrap().unwrap();
    let result = BuildResult {
        output: "x".repeat(1 << 20),
        error: Some("agent: is_error".into()),
        ..Default::default()
    };
    let build = q
        .finish(
            id,
            "host-a",
            Finish::Failed {
                result,
                reason: "agent failed".into(),
            },
            t0(),
        )
        .await
        .unwrap();
    let stored = build.result.unwrap();
    assert_eq!(
        stored.output.len(),
        productbuilder_builds::spec::MAX_OUTPUT_BYTES
    );
    assert_eq!(build.error.as_deref(), Some("agent: is_error"));
}
