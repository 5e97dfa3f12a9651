//! Every scheduling rule, each on tokio's paused clock: time only moves when every task waits, so
//! the instants recorded below are exact and no test sleeps for real.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use productbuilder_scheduler::{
    Backoff, ErrorKind, PreflightFailed, RestartPolicy, RetryPolicy, RetryRule, RunCtx, Schedule,
    Scheduler, SchedulerOptions, StartupFailed, StatusBoard, TenantState, UnitError, UnitSpec,
    work,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

const SECOND: Duration = Duration::from_secs(1);

fn unit<F, Fut>(name: &str, schedule: Schedule, f: F) -> UnitSpec
where
    F: Fn(RunCtx) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), UnitError>> + Send + 'static,
{
    UnitSpec {
        name: name.to_owned(),
        tenant: None,
        schedule,
        timeout: Duration::from_secs(60),
        retry: RetryPolicy::remote_api(),
        work: work(f),
    }
}

fn preflight(stage: u8) -> Schedule {
    Schedule::Preflight { stage }
}

fn every(interval: Duration) -> Schedule {
    Schedule::Worker { interval }
}

fn options() -> SchedulerOptions {
    SchedulerOptions {
        preflight_concurrency: 4,
        shutdown_grace: Duration::from_secs(30),
        seed: Some(42),
        // Exact instants below; one test covers the production tick.
        tick: Duration::ZERO,
        tenant_retry: Backoff {
            base: Duration::from_secs(5),
            max: Duration::from_secs(300),
        },
    }
}

fn server_rule(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(vec![RetryRule {
        name: "server",
        kinds: vec![ErrorKind::Server],
        base: SECOND,
        max: Duration::from_secs(4),
        attempts,
    }])
}

struct Running {
    board: StatusBoard,
    cancel: CancellationToken,
    handle: JoinHandle<Result<(), StartupFailed>>,
}

fn start(units: Vec<UnitSpec>, options: SchedulerOptions) -> Running {
    let scheduler = Scheduler::new(units, options).expect("unique names");
    let board = scheduler.board();
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(scheduler.run(cancel.clone()));
    Running {
        board,
        cancel,
        handle,
    }
}

impl Running {
    async fn stop(self) -> Result<(), StartupFailed> {
        self.cancel.cancel();
        self.handle.await.expect("scheduler task")
    }
}

/// The failed global preflight that stopped start-up.
fn global(outcome: Result<(), StartupFailed>) -> PreflightFailed {
    match outcome {
        Err(StartupFailed::Global(failed)) => failed,
        other => panic!("expected a failed global preflight, got {other:?}"),
    }
}

/// Sends the instant of every call of a unit to the test.
fn stamps() -> (
    mpsc::UnboundedSender<Instant>,
    mpsc::UnboundedReceiver<Instant>,
) {
    mpsc::unbounded_channel()
}

#[tokio::test(start_paused = true)]
async fn preflights_run_concurrently_up_to_the_bound() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let units = (0..20)
        .map(|i| {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            unit(&format!("preflight:p:{i}"), preflight(0), move |_| {
                let (in_flight, peak) = (in_flight.clone(), peak.clone());
                async move {
                    let now = in_flight.fetch_add(1, SeqCst) + 1;
                    peak.fetch_max(now, SeqCst);
                    sleep(SECOND).await;
                    in_flight.fetch_sub(1, SeqCst);
                    Ok(())
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    let running = start(units, options());
    while !running.board.preflights_passed() {
        tokio::task::yield_now().await;
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(peak.load(SeqCst), 4, "bounded at 4 and actually concurrent");
    // 20 one-second preflights, four at a time: five rounds.
    assert!(t0.elapsed() >= Duration::from_secs(5) && t0.elapsed() < Duration::from_secs(6));
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stages_run_in_order() {
    let migrated = Arc::new(AtomicBool::new(false));
    let seen_migrated = Arc::new(AtomicBool::new(false));
    let m = migrated.clone();
    let first = unit("preflight:database:global", preflight(0), move |_| {
        let m = m.clone();
        async move {
            sleep(Duration::from_secs(3)).await;
            m.store(true, SeqCst);
            Ok(())
        }
    });
    let (m, s) = (migrated.clone(), seen_migrated.clone());
    let second = unit("preflight:repository:a/b", preflight(1), move |_| {
        let (m, s) = (m.clone(), s.clone());
        async move {
            s.store(m.load(SeqCst), SeqCst);
            Ok(())
        }
    });
    // Listed in reverse on purpose: the stage decides, not the order of the plan.
    let running = start(vec![second, first], options());
    while !running.board.preflights_passed() {
        sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_migrated.load(SeqCst));
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn transient_preflight_is_retried_then_passes_and_workers_start() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut flaky = unit("preflight:repository:acme/shop", preflight(0), move |_| {
        let c = c.clone();
        async move {
            match c.fetch_add(1, SeqCst) {
                0 | 1 => Err(UnitError::from_http_status(502, None, "bad gateway")),
                _ => Ok(()),
            }
        }
    });
    flaky.retry = server_rule(5);
    let (tx, mut rx) = stamps();
    let worker = unit("worker:pulls:acme/shop", every(SECOND), move |_| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Instant::now());
            Ok(())
        }
    });
    let running = start(vec![flaky, worker], options());
    rx.recv().await.expect("the worker ran");
    assert_eq!(calls.load(SeqCst), 3);
    let status = running
        .board
        .unit("preflight:repository:acme/shop")
        .unwrap();
    assert_eq!(status.retries(), 2);
    assert_eq!(status.failures(), 2);
    assert_eq!(status.runs(), 3);
    assert!(running.board.preflights_passed());
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn permanent_preflight_failure_stops_startup_before_any_worker() {
    let failing = unit("preflight:repository:acme/gone", preflight(0), |_| async {
        Err(UnitError::from_http_status(
            404,
            None,
            "repository acme/gone not found, or the token cannot see it",
        ))
    });
    let worker_runs = Arc::new(AtomicU32::new(0));
    let w = worker_runs.clone();
    let worker = unit("worker:pulls:acme/gone", every(SECOND), move |_| {
        w.fetch_add(1, SeqCst);
        async { Ok(()) }
    });
    let scheduler = Scheduler::new(vec![failing, worker], options()).unwrap();
    let board = scheduler.board();
    let err = global(scheduler.run(CancellationToken::new()).await);
    assert_eq!(err.unit, "preflight:repository:acme/gone");
    assert_eq!(err.attempts, 1);
    assert_eq!(
        err.to_string(),
        "preflight:repository:acme/gone failed after 1 attempt: repository acme/gone not found, or the token cannot see it (not_found)"
    );
    assert_eq!(worker_runs.load(SeqCst), 0);
    assert!(!board.preflights_passed());
}

#[tokio::test(start_paused = true)]
async fn exhausted_preflight_retries_stop_startup() {
    let mut failing = unit("preflight:repository:acme/down", preflight(0), |_| async {
        Err(UnitError::from_http_status(503, None, "unavailable"))
    });
    failing.retry = server_rule(3);
    let scheduler = Scheduler::new(vec![failing], options()).unwrap();
    let err = global(scheduler.run(CancellationToken::new()).await);
    assert_eq!(err.attempts, 4, "the first try and three retries");
    assert_eq!(err.error.kind(), ErrorKind::Server);
}

#[tokio::test(start_paused = true)]
async fn backoff_stays_within_the_full_jitter_ceilings() {
    let (tx, mut rx) = stamps();
    let mut failing = unit("preflight:x:global", preflight(0), move |_| {
        let _ = tx.send(Instant::now());
        async { Err(UnitError::new(ErrorKind::Server, "boom")) }
    });
    failing.retry = server_rule(4);
    let scheduler = Scheduler::new(vec![failing], options()).unwrap();
    scheduler.run(CancellationToken::new()).await.unwrap_err();
    let mut times = Vec::new();
    while let Ok(t) = rx.try_recv() {
        times.push(t);
    }
    assert_eq!(times.len(), 5);
    let ceilings = [1, 2, 4, 4].map(Duration::from_secs);
    for (gap, ceiling) in times.windows(2).map(|w| w[1] - w[0]).zip(ceilings) {
        assert!(gap <= ceiling, "gap {gap:?} over ceiling {ceiling:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn wait_hint_overrides_backoff_and_nothing_is_sent_before_it() {
    let (tx, mut rx) = stamps();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let limited = unit("preflight:repository:acme/shop", preflight(0), move |_| {
        let _ = tx.send(Instant::now());
        let first = c.fetch_add(1, SeqCst) == 0;
        async move {
            if first {
                // GitHub's secondary limit: a 403 with Retry-After.
                Err(UnitError::from_http_status(
                    403,
                    Some(Duration::from_secs(42)),
                    "secondary rate limit",
                ))
            } else {
                Ok(())
            }
        }
    });
    let scheduler = Scheduler::new(vec![limited], options()).unwrap();
    let board = scheduler.board();
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(scheduler.run(cancel.clone()));
    let first = rx.recv().await.unwrap();
    let second = rx.recv().await.unwrap();
    assert_eq!(second - first, Duration::from_secs(42));
    assert!(board.preflights_passed() || calls.load(SeqCst) == 2);
    cancel.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn workers_run_a_fixed_delay_after_the_previous_run_ends() {
    let (tx, mut rx) = stamps();
    let worker = unit(
        "worker:slow:global",
        every(Duration::from_secs(10)),
        move |_| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Instant::now());
                sleep(Duration::from_secs(3)).await;
                Ok(())
            }
        },
    );
    let running = start(vec![worker], options());
    let mut starts = Vec::new();
    for _ in 0..4 {
        starts.push(rx.recv().await.unwrap());
    }
    for gap in starts.windows(2).map(|w| w[1] - w[0]) {
        assert_eq!(gap, Duration::from_secs(13), "3 s run + 10 s delay");
    }
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_production_tick_rounds_wake_ups_up_by_at_most_one_tick() {
    let (tx, mut rx) = stamps();
    let worker = unit(
        "worker:slow:global",
        every(Duration::from_secs(10)),
        move |_| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Instant::now());
                sleep(Duration::from_millis(3_003)).await;
                Ok(())
            }
        },
    );
    let tick = Duration::from_millis(10);
    let t0 = Instant::now();
    let running = start(vec![worker], SchedulerOptions { tick, ..options() });
    let mut starts = Vec::new();
    for _ in 0..4 {
        starts.push(rx.recv().await.unwrap());
    }
    for start in &starts {
        assert_eq!(
            (*start - t0).as_nanos() % tick.as_nanos(),
            0,
            "on a tick boundary"
        );
    }
    for gap in starts.windows(2).map(|w| w[1] - w[0]) {
        let fixed = Duration::from_millis(13_003);
        assert!(gap >= fixed && gap < fixed + tick, "{gap:?}");
    }
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn first_runs_of_a_thousand_units_are_spread_over_one_interval() {
    let interval = Duration::from_secs(60);
    let (tx, mut rx) = stamps();
    let units = (0..1000)
        .map(|i| {
            let tx = tx.clone();
            unit(&format!("worker:w:{i}"), every(interval), move |_| {
                let _ = tx.send(Instant::now());
                async { Ok(()) }
            })
        })
        .collect();
    let t0 = Instant::now();
    let running = start(units, options());
    let mut per_second = [0usize; 60];
    for _ in 0..1000 {
        let offset = rx.recv().await.unwrap() - t0;
        assert!(offset < interval, "first run at {offset:?}");
        per_second[offset.as_secs() as usize] += 1;
    }
    // Uniform: about 17 a second. Lockstep would put all 1000 in one second.
    let busiest = per_second.iter().max().unwrap();
    let quietest = per_second.iter().min().unwrap();
    assert!(*busiest <= 40, "busiest second had {busiest} first runs");
    assert!(*quietest >= 3, "quietest second had {quietest} first runs");
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_hanging_run_times_out_and_is_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = stamps();
    let c = calls.clone();
    let mut hanging = unit(
        "worker:hang:global",
        every(Duration::from_secs(3600)),
        move |_| {
            let first = c.fetch_add(1, SeqCst) == 0;
            let tx = tx.clone();
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                let _ = tx.send(Instant::now());
                Ok(())
            }
        },
    );
    hanging.timeout = Duration::from_secs(5);
    let running = start(vec![hanging], options());
    rx.recv().await.unwrap();
    let status = running.board.unit("worker:hang:global").unwrap();
    assert_eq!(status.failures(), 1);
    assert_eq!(status.retries(), 1);
    assert!(status.last_error().unwrap().contains("timeout of 5s"));
    assert!(!status.is_degraded());
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_worker_is_degraded_keeps_its_schedule_and_recovers() {
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let c = calls.clone();
    let mut worker = unit(
        "worker:pulls:acme/shop",
        every(Duration::from_secs(30)),
        move |_| {
            // Three failures (the first try and two retries), then success.
            let n = c.fetch_add(1, SeqCst);
            let tx = tx.clone();
            async move {
                let _ = tx.send(n);
                if n < 3 {
                    Err(UnitError::from_http_status(500, None, "server error"))
                } else {
                    Ok(())
                }
            }
        },
    );
    worker.retry = server_rule(2);
    let running = start(vec![worker], options());
    let status = running
        .board
        .unit("worker:pulls:acme/shop")
        .unwrap()
        .clone();
    for want in 0..3 {
        assert_eq!(rx.recv().await, Some(want));
    }
    // The cycle ended in failure: degraded, and the next run waits for the interval.
    let failed_at = Instant::now();
    while !status.is_degraded() {
        tokio::task::yield_now().await;
    }
    assert_eq!(running.board.degraded().count(), 1);
    assert_eq!(rx.recv().await, Some(3));
    assert!(failed_at.elapsed() >= Duration::from_secs(30));
    // The fourth run succeeded: once it is recorded the unit is healthy again.
    while status.is_degraded() {
        tokio::task::yield_now().await;
    }
    assert_eq!(status.failures(), 3);
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_unit_stops_neither_itself_nor_others() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tx2 = tx.clone();
    let panicking = unit("worker:bad:global", every(SECOND), move |_| {
        let _ = tx.send("bad");
        async { panic!("unit bug") }
    });
    let healthy = unit("worker:good:global", every(SECOND), move |_| {
        let _ = tx2.send("good");
        async { Ok(()) }
    });
    let running = start(vec![panicking, healthy], options());
    let (mut bad, mut good) = (0, 0);
    while bad < 3 || good < 3 {
        match rx.recv().await.unwrap() {
            "bad" => bad += 1,
            _ => good += 1,
        }
    }
    let status = running.board.unit("worker:bad:global").unwrap();
    assert!(status.panics() >= 2);
    assert!(status.is_degraded());
    assert!(status.last_error().unwrap().contains("panicked: unit bug"));
    assert!(
        !running
            .board
            .unit("worker:good:global")
            .unwrap()
            .is_degraded()
    );
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_nudge_wakes_a_sleeping_worker_at_once() {
    let (tx, mut rx) = stamps();
    let worker = unit(
        "worker:pulls:acme/shop",
        every(Duration::from_secs(3600)),
        move |_| {
            let _ = tx.send(Instant::now());
            async { Ok(()) }
        },
    );
    let running = start(vec![worker], options());
    rx.recv().await.unwrap();
    sleep(Duration::from_secs(100)).await;
    let nudged_at = Instant::now();
    assert!(running.board.nudge_unit("worker:pulls:acme/shop"));
    assert!(!running.board.nudge_unit("worker:pulls:nobody/here"));
    let second = rx.recv().await.unwrap();
    assert_eq!(second, nudged_at);
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn nudges_during_a_run_coalesce_into_one_extra_run() {
    let (tx, mut rx) = stamps();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let worker = unit(
        "worker:pulls:acme/shop",
        every(Duration::from_secs(3600)),
        move |_| {
            let _ = started_tx.send(());
            let tx = tx.clone();
            async move {
                sleep(Duration::from_secs(10)).await;
                let _ = tx.send(Instant::now());
                Ok(())
            }
        },
    );
    let running = start(vec![worker], options());
    started_rx.recv().await.unwrap();
    for _ in 0..5 {
        running.board.nudge_unit("worker:pulls:acme/shop");
        sleep(SECOND).await;
    }
    let first_end = rx.recv().await.unwrap();
    let second_end = rx.recv().await.unwrap();
    assert_eq!(
        second_end - first_end,
        Duration::from_secs(10),
        "one extra run, at once"
    );
    let third_end = rx.recv().await.unwrap();
    assert_eq!(
        third_end - second_end,
        Duration::from_secs(3610),
        "then back on the interval"
    );
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_group_nudge_wakes_that_tenant_only() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let units = ["acme/shop", "acme/blog"]
        .into_iter()
        .flat_map(|repo| {
            ["pulls", "issues"].map(|resource| {
                let tx = tx.clone();
                let name = format!("worker:{resource}:{repo}");
                let mut spec = unit(&name, every(Duration::from_secs(3600)), move |ctx| {
                    let _ = tx.send(ctx.unit.to_string());
                    async { Ok(()) }
                });
                spec.tenant = Some(repo.into());
                spec
            })
        })
        .collect();
    let running = start(units, options());
    for _ in 0..4 {
        rx.recv().await.unwrap();
    }
    sleep(Duration::from_secs(60)).await;
    assert_eq!(running.board.nudge_group("acme/shop"), 2);
    let mut woken = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    woken.sort();
    assert_eq!(woken, ["worker:issues:acme/shop", "worker:pulls:acme/shop"]);
    sleep(Duration::from_secs(60)).await;
    assert!(rx.try_recv().is_err(), "acme/blog was not woken");
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_an_in_flight_run_finish_within_the_grace_period() {
    let finished = Arc::new(AtomicBool::new(false));
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let f = finished.clone();
    let worker = unit(
        "worker:deploy:global",
        every(Duration::from_secs(3600)),
        move |_| {
            let _ = started_tx.send(());
            let f = f.clone();
            async move {
                sleep(Duration::from_secs(5)).await;
                f.store(true, SeqCst);
                Ok(())
            }
        },
    );
    let running = start(vec![worker], options());
    started_rx.recv().await.unwrap();
    let t = Instant::now();
    running.stop().await.unwrap();
    assert!(finished.load(SeqCst));
    assert_eq!(t.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_runs_past_the_grace_period() {
    let finished = Arc::new(AtomicBool::new(false));
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let f = finished.clone();
    let mut worker = unit(
        "worker:stuck:global",
        every(Duration::from_secs(3600)),
        move |_| {
            let _ = started_tx.send(());
            let f = f.clone();
            async move {
                sleep(Duration::from_secs(600)).await;
                f.store(true, SeqCst);
                Ok(())
            }
        },
    );
    worker.timeout = Duration::from_secs(3600);
    let running = start(vec![worker], options());
    started_rx.recv().await.unwrap();
    let t = Instant::now();
    running.stop().await.unwrap();
    assert!(!finished.load(SeqCst));
    assert_eq!(t.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_preflight_retries_is_a_clean_stop() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let failing = unit("preflight:repository:acme/shop", preflight(0), move |_| {
        let _ = started_tx.send(());
        async {
            Err(UnitError::from_http_status(
                429,
                Some(Duration::from_secs(3600)),
                "rate limited",
            ))
        }
    });
    let running = start(vec![failing], options());
    started_rx.recv().await.unwrap();
    let t = Instant::now();
    running.stop().await.unwrap();
    assert!(t.elapsed() < SECOND);
}

#[test]
fn duplicate_unit_names_are_refused_before_anything_runs() {
    let make = || {
        unit("worker:pulls:acme/shop", every(SECOND), |_| async {
            Ok(())
        })
    };
    let err = Scheduler::new(vec![make(), make()], options())
        .err()
        .expect("refused");
    assert_eq!(err.0, vec!["worker:pulls:acme/shop".to_owned()]);
    assert!(err.to_string().contains("worker:pulls:acme/shop"));
}

// ---------------------------------------------------------------------------------------------
// Tenants: one tenant's failing preflight degrades that tenant alone.

/// A unit of `tenant`, named `{phase}:{resource}:{tenant}`.
fn tenant_unit<F, Fut>(tenant: &str, resource: &str, schedule: Schedule, f: F) -> UnitSpec
where
    F: Fn(RunCtx) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), UnitError>> + Send + 'static,
{
    let phase = match schedule {
        Schedule::Preflight { .. } => "preflight",
        Schedule::Worker { .. } => "worker",
        Schedule::Service { .. } => "service",
    };
    let mut spec = unit(&format!("{phase}:{resource}:{tenant}"), schedule, f);
    spec.tenant = Some(tenant.into());
    spec
}

/// A tenant's repository preflight (stage 1) answering with `answer` on each call, a stage-2
/// preflight and a worker, each reporting its calls as `"{unit}"` on `tx`.
fn tenant_units(
    tenant: &str,
    tx: &mpsc::UnboundedSender<String>,
    answer: impl Fn(u32) -> Result<(), UnitError> + Send + Sync + 'static,
) -> Vec<UnitSpec> {
    let answer = Arc::new(answer);
    let calls = Arc::new(AtomicU32::new(0));
    let report = |tx: &mpsc::UnboundedSender<String>| {
        let tx = tx.clone();
        move |ctx: RunCtx| {
            let _ = tx.send(ctx.unit.to_string());
            async { Ok(()) }
        }
    };
    let t = tx.clone();
    let mut repository = tenant_unit(tenant, "repository", preflight(1), move |ctx| {
        let _ = t.send(ctx.unit.to_string());
        let result = answer(calls.fetch_add(1, SeqCst));
        async move { result }
    });
    // One retry per cycle, so that a transient failure degrades the tenant quickly.
    repository.retry = server_rule(1);
    vec![
        repository,
        tenant_unit(tenant, "previews", preflight(2), report(tx)),
        tenant_unit(tenant, "pulls", every(Duration::from_secs(10)), report(tx)),
    ]
}

fn database() -> UnitSpec {
    unit("preflight:database:global", preflight(0), |_| async {
        Ok(())
    })
}

fn not_found(tenant: &str) -> UnitError {
    UnitError::from_http_status(404, None, format!("repository {tenant} not found"))
}

/// Every report received so far.
fn drain_reports(rx: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(name) = rx.try_recv() {
        seen.push(name);
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn one_tenant_failing_for_good_degrades_it_alone_and_the_others_run() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut units = vec![database()];
    units.extend(tenant_units("acme/shop", &tx, |_| Ok(())));
    units.extend(tenant_units("acme/gone", &tx, |_| {
        Err(not_found("acme/gone"))
    }));
    units.extend(tenant_units("acme/blog", &tx, |_| Ok(())));
    let running = start(units, options());
    // Twenty minutes on the paused clock: the healthy tenants' workers run every 10 s.
    sleep(Duration::from_secs(20 * 60)).await;
    assert!(!running.handle.is_finished(), "run() keeps going");
    let seen = drain_reports(&mut rx);
    let count = |name: &str| seen.iter().filter(|s| *s == name).count();
    for healthy in ["acme/shop", "acme/blog"] {
        assert!(count(&format!("worker:pulls:{healthy}")) > 100, "{seen:?}");
        assert_eq!(count(&format!("preflight:previews:{healthy}")), 1);
    }
    assert_eq!(count("worker:pulls:acme/gone"), 0, "its workers wait");
    assert_eq!(
        count("preflight:previews:acme/gone"),
        0,
        "its later preflights wait"
    );
    // Retried with a doubling backoff from 5 s capped at 5 min: a handful of times, not
    // hundreds, and more than once.
    let retries = count("preflight:repository:acme/gone");
    assert!((5..=12).contains(&retries), "{retries} attempts");

    assert!(running.board.preflights_passed());
    let degraded = running.board.degraded_tenants();
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    let gone = &degraded[0];
    assert_eq!(gone.tenant.as_str(), "acme/gone");
    assert_eq!(gone.unit, "preflight:repository:acme/gone");
    assert_eq!(gone.kind, ErrorKind::NotFound);
    assert!(gone.permanent);
    assert_eq!(gone.reason, "repository acme/gone not found (not_found)");
    assert_eq!(gone.failures as usize, retries);
    assert_eq!(
        running.board.tenant_state("acme/shop"),
        Some(TenantState::Running)
    );
    let mut metrics = String::new();
    running.board.render_prometheus(&mut metrics);
    for line in [
        "productbuilder_tenant_degraded{tenant=\"acme/gone\"} 1",
        "productbuilder_tenant_degraded{tenant=\"acme/shop\"} 0",
        "productbuilder_tenant_degraded_info{tenant=\"acme/gone\",unit=\"preflight:repository:acme/gone\",kind=\"not_found\",permanent=\"true\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_tenant_failing_transiently_starts_once_its_preflight_passes() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut units = vec![database()];
    units.extend(tenant_units("acme/shop", &tx, |_| Ok(())));
    // Down for the first four cycles (two attempts each), then up.
    units.extend(tenant_units("acme/flaky", &tx, |call| {
        if call < 8 {
            Err(UnitError::from_http_status(502, None, "bad gateway"))
        } else {
            Ok(())
        }
    }));
    let t = tx.clone();
    units.push(tenant_unit(
        "acme/flaky",
        "socket",
        Schedule::Service {
            restart: RestartPolicy::default(),
        },
        move |ctx| {
            let _ = t.send(ctx.unit.to_string());
            async move {
                ctx.cancel.cancelled().await;
                Ok(())
            }
        },
    ));
    let running = start(units, options());
    let board = running.board.clone();

    let mut order = Vec::new();
    let mut degraded_seen = false;
    while !order.contains(&"worker:pulls:acme/flaky".to_owned()) {
        let name = rx.recv().await.unwrap();
        if name == "preflight:repository:acme/flaky"
            && let Some(TenantState::Degraded(d)) = board.tenant_state("acme/flaky")
        {
            degraded_seen = true;
            assert!(!d.permanent, "a 502 is transient");
            assert_eq!(d.kind, ErrorKind::Server);
            assert!(
                order.contains(&"worker:pulls:acme/shop".to_owned()) || d.failures < 3,
                "the healthy tenant runs meanwhile: {order:?}"
            );
        }
        order.push(name);
    }
    assert!(degraded_seen);
    while !order.contains(&"service:socket:acme/flaky".to_owned()) {
        order.push(rx.recv().await.unwrap());
    }
    let at = |name: &str| order.iter().position(|s| s == name).unwrap();
    let attempts = order
        .iter()
        .filter(|s| *s == "preflight:repository:acme/flaky")
        .count();
    assert_eq!(attempts, 9);
    // After the last repository attempt: the later preflight, then the workers and services.
    let last_attempt = order
        .iter()
        .rposition(|s| s == "preflight:repository:acme/flaky")
        .unwrap();
    assert!(last_attempt < at("preflight:previews:acme/flaky"));
    assert!(at("preflight:previews:acme/flaky") < at("worker:pulls:acme/flaky"));
    assert!(at("worker:pulls:acme/shop") < last_attempt, "{order:?}");
    assert!(at("preflight:previews:acme/flaky") < at("service:socket:acme/flaky"));
    assert_eq!(board.tenant_state("acme/flaky"), Some(TenantState::Running));
    assert!(board.degraded_tenants().is_empty());
    assert!(
        !board
            .unit("preflight:repository:acme/flaky")
            .unwrap()
            .is_degraded()
    );
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_degraded_tenants_retries_back_off_doubling_to_the_cap() {
    let (tx, mut rx) = stamps();
    let mut preflight = tenant_unit("acme/gone", "repository", preflight(1), move |_| {
        let _ = tx.send(Instant::now());
        async { Err(not_found("acme/gone")) }
    });
    preflight.retry = RetryPolicy::never();
    let healthy = tenant_unit("acme/shop", "pulls", every(SECOND), |_| async { Ok(()) });
    let running = start(vec![preflight, healthy], options());
    let mut times = Vec::new();
    for _ in 0..9 {
        times.push(rx.recv().await.unwrap());
    }
    // Equal jitter: each delay lies in the upper half of its ceiling, 5 s doubling to 300 s.
    let ceilings = [5, 10, 20, 40, 80, 160, 300, 300].map(Duration::from_secs);
    for (gap, ceiling) in times.windows(2).map(|w| w[1] - w[0]).zip(ceilings) {
        assert!(
            gap >= ceiling / 2 && gap <= ceiling,
            "gap {gap:?} outside [{:?}, {ceiling:?}]",
            ceiling / 2
        );
    }
    // A nudge of the tenant retries at once.
    let nudged_at = Instant::now();
    assert_eq!(running.board.nudge_group("acme/gone"), 1);
    assert_eq!(rx.recv().await.unwrap(), nudged_at);
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn when_every_tenant_fails_for_good_run_returns_the_error() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut units = vec![database()];
    units.extend(tenant_units("acme/gone", &tx, |_| {
        Err(not_found("acme/gone"))
    }));
    units.extend(tenant_units("acme/left", &tx, |_| {
        Err(UnitError::from_http_status(401, None, "bad credentials"))
    }));
    let scheduler = Scheduler::new(units, options()).unwrap();
    let board = scheduler.board();
    let outcome = scheduler.run(CancellationToken::new()).await;
    let Err(StartupFailed::EveryTenant(tenants)) = &outcome else {
        panic!("expected every tenant to have failed: {outcome:?}");
    };
    let names: Vec<&str> = tenants.iter().map(|t| t.tenant.as_str()).collect();
    assert_eq!(names, ["acme/gone", "acme/left"]);
    assert_eq!(
        outcome.unwrap_err().to_string(),
        "no tenant can start; the preflight of each failed: \
         acme/gone: preflight:repository:acme/gone: repository acme/gone not found (not_found); \
         acme/left: preflight:repository:acme/left: bad credentials (bad_credentials)"
    );
    let seen = drain_reports(&mut rx);
    assert!(
        seen.iter().all(|s| s.starts_with("preflight:repository:")),
        "{seen:?}"
    );
    assert!(!board.preflights_passed());
}

#[tokio::test(start_paused = true)]
async fn when_no_tenant_can_start_a_transient_failure_after_its_retries_ends_start_up_too() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut units = vec![database()];
    units.extend(tenant_units("acme/gone", &tx, |_| {
        Err(not_found("acme/gone"))
    }));
    // The engine or DNS still down after every retry: with no tenant able to start, the host is
    // not ready, and the operator hears it at once instead of a daemon that serves nothing.
    units.extend(tenant_units("acme/later", &tx, |_| {
        Err(UnitError::new(ErrorKind::Server, "bad gateway"))
    }));
    let scheduler = Scheduler::new(units, options()).unwrap();
    let board = scheduler.board();
    let outcome = scheduler.run(CancellationToken::new()).await;
    let Err(StartupFailed::EveryTenant(tenants)) = &outcome else {
        panic!("expected no tenant to start: {outcome:?}");
    };
    let kinds: Vec<(&str, bool)> = tenants
        .iter()
        .map(|t| (t.tenant.as_str(), t.permanent))
        .collect();
    assert_eq!(kinds, [("acme/gone", true), ("acme/later", false)]);
    assert!(!board.preflights_passed());
    // The transient one had its retries before start-up gave up.
    let later = drain_reports(&mut rx)
        .into_iter()
        .filter(|s| s.contains("acme/later"))
        .count();
    assert!(later > 1, "{later} runs");
}

#[tokio::test(start_paused = true)]
async fn a_failing_global_preflight_still_stops_start_up() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let database = unit("preflight:database:global", preflight(0), |_| async {
        Err(UnitError::new(
            ErrorKind::Internal,
            "schema version 999 is newer",
        ))
    });
    let mut units = vec![database];
    units.extend(tenant_units("acme/shop", &tx, |_| Ok(())));
    let scheduler = Scheduler::new(units, options()).unwrap();
    let err = global(scheduler.run(CancellationToken::new()).await);
    assert_eq!(err.unit, "preflight:database:global");
    assert!(drain_reports(&mut rx).is_empty(), "no tenant unit ran");
}

// ---------------------------------------------------------------------------------------------
// Services: long-lived tasks, restarted with backoff, degraded while down or while they say so.

fn restart_policy() -> RestartPolicy {
    RestartPolicy {
        backoff: Backoff {
            base: SECOND,
            max: Duration::from_secs(60),
        },
        healthy_after: Duration::from_secs(60),
    }
}

#[tokio::test(start_paused = true)]
async fn a_service_that_fails_twice_is_restarted_with_growing_delays() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let starts = Arc::new(AtomicU32::new(0));
    let s = starts.clone();
    let service = unit(
        "service:socket:global",
        Schedule::Service {
            restart: restart_policy(),
        },
        move |ctx| {
            let n = s.fetch_add(1, SeqCst);
            let tx = tx.clone();
            let mut go = go_rx.clone();
            async move {
                let _ = tx.send((n, Instant::now()));
                if n < 2 {
                    return Err(UnitError::new(ErrorKind::Network, "socket closed"));
                }
                // Up for good now; it reports its own trouble, then its recovery.
                ctx.health.degraded("the server refuses new connections");
                let _ = tx.send((n, Instant::now()));
                go.wait_for(|go| *go).await.unwrap();
                ctx.health.healthy();
                let _ = tx.send((n, Instant::now()));
                ctx.cancel.cancelled().await;
                Ok(())
            }
        },
    );
    let running = start(vec![service], options());
    let status = running.board.unit("service:socket:global").unwrap().clone();

    let (_, first) = rx.recv().await.unwrap();
    // Down between the first and the second start.
    while !status.is_degraded() {
        tokio::task::yield_now().await;
    }
    let reason = status.degraded_reason().unwrap();
    assert!(
        reason.starts_with("stopped (it failed: socket closed (network)); restarting in "),
        "{reason}"
    );
    assert_eq!(running.board.degraded().count(), 1);
    let (_, second) = rx.recv().await.unwrap();
    let (_, third) = rx.recv().await.unwrap();
    let (first_delay, second_delay) = (second - first, third - second);
    assert!(
        first_delay >= SECOND / 2 && first_delay <= SECOND,
        "{first_delay:?}"
    );
    assert!(
        second_delay >= SECOND && second_delay <= 2 * SECOND,
        "{second_delay:?}"
    );
    assert_eq!(status.restarts(), 2);
    assert_eq!(status.failures(), 2);

    // Running, but it says it is degraded: the board shows its reason.
    rx.recv().await.unwrap();
    assert!(status.is_degraded());
    assert_eq!(
        status.degraded_reason().as_deref(),
        Some("the server refuses new connections")
    );
    go_tx.send(true).unwrap();
    rx.recv().await.unwrap();
    assert!(!status.is_degraded());
    assert_eq!(status.degraded_reason(), None);
    let mut metrics = String::new();
    running.board.render_prometheus(&mut metrics);
    assert!(
        metrics
            .lines()
            .any(|l| l == "productbuilder_service_restarts_total{unit=\"service:socket:global\"} 2"),
        "{metrics}"
    );
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_service_that_ran_healthy_a_while_restarts_from_the_base_delay() {
    let (tx, mut rx) = stamps();
    let starts = Arc::new(AtomicU32::new(0));
    let s = starts.clone();
    let service = unit(
        "service:socket:global",
        Schedule::Service {
            restart: restart_policy(),
        },
        move |_| {
            let n = s.fetch_add(1, SeqCst);
            let _ = tx.send(Instant::now());
            async move {
                // Three quick failures, then an hour up, then a failure.
                if n == 3 {
                    sleep(Duration::from_secs(3600)).await;
                }
                Err(UnitError::new(ErrorKind::Network, "socket closed"))
            }
        },
    );
    let running = start(vec![service], options());
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(rx.recv().await.unwrap());
    }
    let third_delay = times[3] - times[2];
    assert!(third_delay >= 2 * SECOND, "{third_delay:?}");
    let after_healthy = times[4] - times[3] - Duration::from_secs(3600);
    assert!(
        after_healthy <= SECOND,
        "the streak was reset: {after_healthy:?}"
    );
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_service_is_cancelled_at_shutdown_within_the_grace() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let stopped = Arc::new(AtomicBool::new(false));
    let s = stopped.clone();
    let service = unit(
        "service:socket:global",
        Schedule::Service {
            restart: restart_policy(),
        },
        move |ctx| {
            let _ = started_tx.send(());
            let s = s.clone();
            async move {
                ctx.cancel.cancelled().await;
                // Closing the socket politely takes a moment.
                sleep(Duration::from_secs(2)).await;
                s.store(true, SeqCst);
                Ok(())
            }
        },
    );
    let running = start(vec![service], options());
    started_rx.recv().await.unwrap();
    sleep(Duration::from_secs(3600)).await;
    let status = running.board.unit("service:socket:global").unwrap().clone();
    assert_eq!(status.restarts(), 0, "a running service is left alone");
    let t = Instant::now();
    running.stop().await.unwrap();
    assert!(stopped.load(SeqCst), "it saw the cancellation and finished");
    assert_eq!(t.elapsed(), Duration::from_secs(2));
    assert!(
        started_rx.try_recv().is_err(),
        "not restarted after shutdown"
    );
}
