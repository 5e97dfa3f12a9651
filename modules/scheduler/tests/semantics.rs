//! Every scheduling rule, each on tokio's paused clock: time only moves when every task waits, so
//! the instants recorded below are exact and no test sleeps for real.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use productbuilder_scheduler::{
    ErrorKind, PreflightFailed, RetryPolicy, RetryRule, RunCtx, Schedule, Scheduler,
    SchedulerOptions, StatusBoard, UnitError, UnitSpec, work,
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
        group: None,
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
    handle: JoinHandle<Result<(), PreflightFailed>>,
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
    async fn stop(self) -> Result<(), PreflightFailed> {
        self.cancel.cancel();
        self.handle.await.expect("scheduler task")
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
    let err = scheduler.run(CancellationToken::new()).await.unwrap_err();
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
    let err = scheduler.run(CancellationToken::new()).await.unwrap_err();
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
                spec.group = Some(repo.to_owned());
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
