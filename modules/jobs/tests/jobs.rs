//! The rules of keyed jobs, each as a test on a paused clock where time matters. Jobs report what
//! they do on a channel, so the tests await events instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use productbuilder_jobs::{JobSpec, Jobs, Metrics, Outcome, Policy};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

type Events = mpsc::UnboundedSender<String>;

fn events() -> (Events, mpsc::UnboundedReceiver<String>) {
    mpsc::unbounded_channel()
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    rx.recv().await.expect("a job sends an event")
}

/// A job that says it started, runs until cancelled, then takes a while to clean up.
fn until_cancelled(
    name: &'static str,
    tx: Events,
) -> impl FnOnce(CancellationToken) -> futures_util::future::BoxFuture<'static, Result<(), String>>
{
    move |cancel| {
        async move {
            let _ = tx.send(format!("{name} started"));
            cancel.cancelled().await;
            let _ = tx.send(format!("{name} saw cancel"));
            // Cleanup that takes time: the next job must not start before it is over.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = tx.send(format!("{name} returned"));
            Ok(())
        }
        .boxed()
    }
}

/// A job that says it ran and succeeds.
fn quick(
    name: &'static str,
    tx: Events,
) -> impl FnOnce(CancellationToken) -> futures_util::future::BoxFuture<'static, Result<(), String>>
{
    move |_| {
        async move {
            let _ = tx.send(format!("{name} ran"));
            Ok(())
        }
        .boxed()
    }
}

fn jobs() -> Jobs {
    Jobs::builder(&CancellationToken::new()).build()
}

#[tokio::test(start_paused = true)]
async fn replace_cancels_the_running_job_and_waits_for_it_to_return() {
    let jobs = jobs();
    let (tx, mut rx) = events();
    let a = jobs.submit(
        JobSpec::new("o/r#1", "deploy a", Policy::Replace),
        until_cancelled("a", tx.clone()),
    );
    assert_eq!(next(&mut rx).await, "a started");
    assert_eq!(jobs.running("o/r#1").as_deref(), Some("deploy a"));

    let b = jobs.submit(
        JobSpec::new("o/r#1", "deploy b", Policy::Replace),
        quick("b", tx.clone()),
    );
    // While a cleans up, b is the latest but a is still the one running.
    assert_eq!(jobs.latest("o/r#1").as_deref(), Some("deploy b"));
    assert_eq!(next(&mut rx).await, "a saw cancel");
    assert_eq!(jobs.running("o/r#1").as_deref(), Some("deploy a"));
    assert_eq!(next(&mut rx).await, "a returned");
    assert_eq!(next(&mut rx).await, "b ran");
    assert_eq!(a.outcome().await, Outcome::Cancelled);
    assert_eq!(b.outcome().await, Outcome::Succeeded);
    jobs.idle().await;
    assert!(!jobs.is_busy("o/r#1"));
    let m = jobs.metrics();
    assert_eq!((m.started, m.cancelled, m.succeeded), (2, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn replace_skips_waiting_jobs_but_still_starts_after_the_running_one() {
    let jobs = jobs();
    let (tx, mut rx) = events();
    let a = jobs.submit(
        JobSpec::new("k", "a", Policy::Queue),
        until_cancelled("a", tx.clone()),
    );
    assert_eq!(next(&mut rx).await, "a started");
    // b waits behind a; c replaces both: b never runs, and c starts only after a returned.
    let b = jobs.submit(
        JobSpec::new("k", "b", Policy::Queue),
        quick("b", tx.clone()),
    );
    let c = jobs.submit(
        JobSpec::new("k", "c", Policy::Replace),
        quick("c", tx.clone()),
    );
    assert_eq!(next(&mut rx).await, "a saw cancel");
    assert_eq!(next(&mut rx).await, "a returned");
    assert_eq!(next(&mut rx).await, "c ran");
    assert_eq!(a.outcome().await, Outcome::Cancelled);
    assert_eq!(b.outcome().await, Outcome::Cancelled);
    assert_eq!(c.outcome().await, Outcome::Succeeded);
    jobs.idle().await;
    drop(tx);
    assert_eq!(rx.recv().await, None, "b never ran");
    assert_eq!(jobs.metrics().started, 2);
}

#[tokio::test]
async fn queued_jobs_run_one_at_a_time_in_order_without_coalescing() {
    let jobs = jobs();
    let (tx, mut rx) = events();
    let gate = Arc::new(Semaphore::new(0));
    let first = {
        let (tx, gate) = (tx.clone(), gate.clone());
        jobs.submit(
            JobSpec::new("k", "first", Policy::Queue),
            move |_| async move {
                let _ = tx.send("first started".to_owned());
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                let _ = tx.send("first returned".to_owned());
                Ok::<_, String>(())
            },
        )
    };
    assert_eq!(next(&mut rx).await, "first started");
    let queued: Vec<_> = ["second", "third", "third"]
        .into_iter()
        .map(|name| {
            jobs.submit(
                JobSpec::new("k", name, Policy::Queue),
                quick(name, tx.clone()),
            )
        })
        .collect();
    assert_eq!(jobs.running("k").as_deref(), Some("first"));
    assert_eq!(jobs.metrics().waiting, 3);
    gate.add_permits(1);
    for expected in ["first returned", "second ran", "third ran", "third ran"] {
        assert_eq!(next(&mut rx).await, expected);
    }
    assert_eq!(first.outcome().await, Outcome::Succeeded);
    for handle in queued {
        assert_eq!(handle.outcome().await, Outcome::Succeeded);
    }
    jobs.idle().await;
    assert_eq!(jobs.metrics().succeeded, 4);
}

#[tokio::test(start_paused = true)]
async fn global_and_group_limits_are_never_exceeded() {
    let jobs = Jobs::builder(&CancellationToken::new())
        .global_limit(3)
        .group_limit("builds", 1)
        .build();
    let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (builds_now, builds_max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut handles = Vec::new();
    for i in 0..12 {
        let build = i % 3 == 0;
        let mut spec = JobSpec::new(format!("key{i}"), format!("job {i}"), Policy::Queue);
        if build {
            spec = spec.group("builds");
        }
        let (now, max, builds_now, builds_max) = (
            now.clone(),
            max.clone(),
            builds_now.clone(),
            builds_max.clone(),
        );
        handles.push(jobs.submit(spec, move |_| async move {
            let running = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(running, Ordering::SeqCst);
            if build {
                let building = builds_now.fetch_add(1, Ordering::SeqCst) + 1;
                builds_max.fetch_max(building, Ordering::SeqCst);
            }
            // Work that takes time, so that the jobs overlap.
            tokio::time::sleep(Duration::from_millis(10 + i)).await;
            if build {
                builds_now.fetch_sub(1, Ordering::SeqCst);
            }
            now.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, String>(())
        }));
    }
    for handle in handles {
        assert_eq!(handle.outcome().await, Outcome::Succeeded);
    }
    assert_eq!(
        max.load(Ordering::SeqCst),
        3,
        "the global limit is reached, never passed"
    );
    assert_eq!(builds_max.load(Ordering::SeqCst), 1, "one build at a time");
    assert_eq!(jobs.metrics().succeeded, 12);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_cancels_the_job_and_records_a_timeout() {
    let jobs = Jobs::builder(&CancellationToken::new())
        .grace(Duration::from_secs(5))
        .build();
    let (tx, mut rx) = events();
    let started = tokio::time::Instant::now();
    let polite = jobs.submit(
        JobSpec::new("polite", "waits for cancel", Policy::Replace)
            .deadline(Duration::from_secs(60)),
        until_cancelled("polite", tx.clone()),
    );
    assert_eq!(next(&mut rx).await, "polite started");
    assert_eq!(next(&mut rx).await, "polite saw cancel");
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    assert_eq!(polite.outcome().await, Outcome::TimedOut);

    // One that ignores its token is dropped after the grace period, and its key is free again.
    let started = tokio::time::Instant::now();
    let stubborn = jobs.submit(
        JobSpec::new("stubborn", "ignores cancel", Policy::Replace)
            .deadline(Duration::from_secs(60)),
        |_| std::future::pending::<Result<(), String>>(),
    );
    assert_eq!(stubborn.outcome().await, Outcome::TimedOut);
    assert_eq!(started.elapsed(), Duration::from_secs(65));
    assert!(!jobs.is_busy("stubborn"));
    let m = jobs.metrics();
    assert_eq!((m.timed_out, m.running, m.cancelled), (2, 0, 0));
}

#[tokio::test]
async fn a_panic_fails_that_job_is_counted_and_frees_its_key() {
    let jobs = jobs();
    let (tx, mut rx) = events();
    let gate = Arc::new(Semaphore::new(0));
    async fn panics_once_let_through(gate: Arc<Semaphore>) -> Result<(), String> {
        let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
        panic!("the deploy step broke");
    }
    let panicking = {
        let gate = gate.clone();
        jobs.submit(
            JobSpec::new("o/r#7", "deploy", Policy::Replace),
            move |_| panics_once_let_through(gate),
        )
    };
    // Queued behind the one that will panic: it must still run.
    let queued = jobs.submit(
        JobSpec::new("o/r#7", "report", Policy::Queue),
        quick("report", tx.clone()),
    );
    gate.add_permits(1);
    assert_eq!(panicking.outcome().await, Outcome::Panicked);
    assert_eq!(next(&mut rx).await, "report ran");
    assert_eq!(queued.outcome().await, Outcome::Succeeded);
    jobs.idle().await;
    assert!(!jobs.is_busy("o/r#7"));

    // A panic while building the future (in the closure itself) is contained too.
    let eager = jobs.submit(
        JobSpec::new("o/r#7", "eager", Policy::Replace),
        |_| -> std::future::Ready<Result<(), String>> { panic!("before the first await") },
    );
    assert_eq!(eager.outcome().await, Outcome::Panicked);
    let after = jobs.submit(
        JobSpec::new("o/r#7", "deploy again", Policy::Replace),
        quick("again", tx.clone()),
    );
    assert_eq!(after.outcome().await, Outcome::Succeeded);
    assert_eq!(next(&mut rx).await, "again ran");
    let m = jobs.metrics();
    assert_eq!(
        (m.panicked, m.succeeded, m.running, m.waiting),
        (2, 2, 0, 0)
    );
}

#[tokio::test]
async fn an_error_is_counted_as_failed() {
    let jobs = jobs();
    let failed = jobs.submit(JobSpec::new("k", "fails", Policy::Queue), |_| async {
        Err::<(), _>("compose up: exit status 1")
    });
    assert_eq!(failed.outcome().await, Outcome::Failed);
    assert_eq!(jobs.metrics().failed, 1);
}

#[tokio::test]
async fn idle_resolves_once_nothing_runs_or_waits() {
    let jobs = Jobs::builder(&CancellationToken::new())
        .global_limit(1)
        .build();
    jobs.idle().await; // nothing submitted yet
    let gate = Arc::new(Semaphore::new(0));
    for i in 0..3 {
        let gate = gate.clone();
        jobs.submit(
            JobSpec::new(format!("k{i}"), "gated", Policy::Queue),
            move |_| async move {
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            },
        );
    }
    assert!(jobs.idle().now_or_never().is_none(), "three jobs are live");
    assert!(!jobs.is_idle());
    gate.add_permits(3);
    jobs.idle().await;
    assert!(jobs.is_idle());
    assert_eq!(
        jobs.metrics(),
        Metrics {
            started: 3,
            succeeded: 3,
            ..Metrics::default()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_running_and_waiting_jobs_and_waits_for_them() {
    let root = CancellationToken::new();
    let jobs = Jobs::builder(&root).group_limit("builds", 1).build();
    let (tx, mut rx) = events();
    let running = jobs.submit(
        JobSpec::new("a", "a", Policy::Queue).group("builds"),
        until_cancelled("a", tx.clone()),
    );
    assert_eq!(next(&mut rx).await, "a started");
    let waiting_for_slot = jobs.submit(
        JobSpec::new("b", "b", Policy::Queue).group("builds"),
        quick("b", tx.clone()),
    );
    let waiting_for_key = jobs.submit(
        JobSpec::new("a", "a2", Policy::Queue),
        quick("a2", tx.clone()),
    );
    jobs.shutdown().await;
    // shutdown returned only after a had cleaned up.
    assert_eq!(rx.try_recv().as_deref(), Ok("a saw cancel"));
    assert_eq!(rx.try_recv().as_deref(), Ok("a returned"));
    for handle in [running, waiting_for_slot, waiting_for_key] {
        assert_eq!(handle.outcome().await, Outcome::Cancelled);
    }
    let late = jobs.submit(
        JobSpec::new("c", "late", Policy::Queue),
        quick("late", tx.clone()),
    );
    assert_eq!(late.outcome().await, Outcome::Cancelled);
    drop(tx);
    assert_eq!(rx.recv().await, None, "nothing else ran");
    let m = jobs.metrics();
    assert_eq!((m.started, m.cancelled, m.running, m.waiting), (1, 4, 0, 0));
    assert!(
        !root.is_cancelled(),
        "shutdown cancels the jobs, not the caller's root"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_root_cancels_every_job() {
    let root = CancellationToken::new();
    let jobs = Jobs::builder(&root).build();
    let (tx, mut rx) = events();
    let a = jobs.submit(
        JobSpec::new("a", "a", Policy::Queue),
        until_cancelled("a", tx),
    );
    assert_eq!(next(&mut rx).await, "a started");
    root.cancel();
    assert_eq!(a.outcome().await, Outcome::Cancelled);
}

#[test]
fn metrics_render_as_prometheus_text() {
    let mut text = String::new();
    Metrics {
        started: 5,
        succeeded: 2,
        failed: 1,
        panicked: 1,
        cancelled: 1,
        timed_out: 0,
        running: 1,
        waiting: 2,
    }
    .render_prometheus("productbuilder_jobs", &mut text);
    for line in [
        "# TYPE productbuilder_jobs_started_total counter",
        "productbuilder_jobs_started_total 5",
        "productbuilder_jobs_ended_total{outcome=\"succeeded\"} 2",
        "productbuilder_jobs_ended_total{outcome=\"panicked\"} 1",
        "productbuilder_jobs_ended_total{outcome=\"timed_out\"} 0",
        "# TYPE productbuilder_jobs_running gauge",
        "productbuilder_jobs_running 1",
        "productbuilder_jobs_waiting 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

/// The outcome names logs and the `outcome` label have always shown.
#[test]
fn outcomes_keep_their_names_and_parse_back() {
    use std::str::FromStr;
    for (outcome, name) in [
        (Outcome::Succeeded, "succeeded"),
        (Outcome::Failed, "failed"),
        (Outcome::Panicked, "panicked"),
        (Outcome::Cancelled, "cancelled"),
        (Outcome::TimedOut, "timed_out"),
    ] {
        assert_eq!(outcome.as_str(), name);
        assert_eq!(outcome.to_string(), name);
        assert_eq!(Outcome::from_str(name), Ok(outcome));
    }
}

/// A caller reads back what kind of job is the latest of a key as the type it attached, not by
/// parsing a name; an untagged job, or another type, reads as none.
#[tokio::test(start_paused = true)]
async fn the_latest_job_s_tag_reads_back_typed() {
    #[derive(Debug, Clone, PartialEq)]
    enum Kind {
        Deploy { sha: String },
        Remove,
    }
    let jobs = jobs();
    let (tx, mut rx) = events();
    jobs.submit(
        JobSpec::new("k", "deploy a", Policy::Replace).tag(Kind::Deploy { sha: "a".into() }),
        until_cancelled("a", tx.clone()),
    );
    assert_eq!(next(&mut rx).await, "a started");
    assert_eq!(
        jobs.latest_tag::<Kind>("k"),
        Some(Kind::Deploy { sha: "a".into() })
    );
    assert_eq!(jobs.latest_tag::<String>("k"), None);
    jobs.submit(
        JobSpec::new("k", "remove", Policy::Replace).tag(Kind::Remove),
        quick("b", tx.clone()),
    );
    assert_eq!(jobs.latest_tag::<Kind>("k"), Some(Kind::Remove));
    jobs.idle().await;
    assert_eq!(jobs.latest_tag::<Kind>("k"), None);
    jobs.submit(JobSpec::new("u", "untagged", Policy::Queue), quick("c", tx));
    assert_eq!(jobs.latest_tag::<Kind>("u"), None);
    jobs.idle().await;
}
