//! Scheduler overhead at scale: many no-op worker units on a short interval.
//!
//! Measures, over a window after warm-up, the CPU time of the whole process (from
//! `/proc/self/stat`, user + system) as a share of one core, the peak RSS of the process
//! (`VmHWM` from `/proc/self/status`, so it includes building the unit specs) and the runs
//! completed, so the reader sees the work was real. The process runs a multi-thread tokio
//! runtime, as the daemon would; the bench itself only wakes twice in the window.
//!
//! Goal (from the issue): 10,000 units at a 1 s interval cost under 2% of one core and under
//! 50 MB.
//!
//! ```text
//! cargo bench -p productbuilder-scheduler --bench units
//! BENCH_TRACING=1 cargo bench -p productbuilder-scheduler --bench units
//! ```
//!
//! Environment:
//! - `BENCH_UNITS` (default 10000): how many worker units.
//! - `BENCH_INTERVAL_MS` (default 1000): their interval.
//! - `BENCH_SECONDS` (default 30): the measured window, after a warm-up of one interval + 1 s.
//! - `BENCH_TRACING=1`: install a JSON `fmt` subscriber at info level writing to
//!   `std::io::sink`, so the info span the scheduler creates per run is really built (with no
//!   subscriber it is disabled and nearly free).
//! - `BENCH_THREADS` (default: the runtime's default, one per core): worker threads.
//! - `BENCH_BARE=1`: no scheduler, just one bare tokio task per unit sleeping `interval` in a
//!   loop: the floor that tokio's timers and task wake-ups cost on their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use productbuilder_scheduler::{
    RetryPolicy, Schedule, Scheduler, SchedulerOptions, UnitSpec, work,
};
use tokio_util::sync::CancellationToken;

const GOAL_CPU_PERCENT: f64 = 2.0;
const GOAL_RSS_MB: f64 = 50.0;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// Clock ticks per second for `/proc/self/stat`; `getconf CLK_TCK`, else Linux's usual 100.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User and system CPU time of this process so far, in clock ticks.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    // Fields from there start at field 3 (state); utime is field 14, stime field 15.
    let rest = &stat[stat.rfind(')').expect("')' in /proc/self/stat") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    (utime, stime)
}

/// A `/proc/self/status` field in kB (e.g. `VmHWM`, `VmRSS`).
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// What one window measured.
struct Measured {
    /// Runs completed in the window.
    runs: u64,
    wall: Duration,
    /// User and system CPU time spent in the window, in clock ticks.
    user_ticks: u64,
    system_ticks: u64,
}

/// Sleeps through the warm-up, then measures over `window`; `total_runs` sums the run counters.
async fn measure(interval: Duration, window: Duration, total_runs: impl Fn() -> u64) -> Measured {
    // Warm-up: every first run happens within one interval (spread by jitter).
    tokio::time::sleep(interval + Duration::from_secs(1)).await;
    let runs_before = total_runs();
    let ticks_before = cpu_ticks();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let ticks_after = cpu_ticks();
    let wall = started.elapsed();
    Measured {
        runs: total_runs() - runs_before,
        wall,
        user_ticks: ticks_after.0 - ticks_before.0,
        system_ticks: ticks_after.1 - ticks_before.1,
    }
}

/// The scheduler under test: `units` no-op workers.
async fn measure_scheduler(units: usize, interval: Duration, window: Duration) -> Measured {
    let specs: Vec<UnitSpec> = (0..units)
        .map(|i| UnitSpec {
            name: format!("worker:noop:{i}"),
            tenant: None,
            schedule: Schedule::Worker { interval },
            timeout: Duration::from_secs(10),
            retry: RetryPolicy::remote_api(),
            work: work(|_ctx| async { Ok(()) }),
        })
        .collect();
    let scheduler = Scheduler::new(specs, SchedulerOptions::default()).expect("unique unit names");
    let board = scheduler.board();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(scheduler.run(cancel.clone()));

    let measured = measure(interval, window, || {
        board.units().iter().map(|u| u.runs()).sum::<u64>()
    })
    .await;
    let never_ran = board.units().iter().filter(|u| u.runs() == 0).count();
    assert_eq!(never_ran, 0, "units that never ran");

    cancel.cancel();
    running
        .await
        .expect("scheduler task")
        .expect("no preflights to fail");
    let failures: u64 = board.units().iter().map(|u| u.failures()).sum();
    assert_eq!(failures, 0, "no-op runs never fail");
    measured
}

/// The floor, for comparison: one bare tokio task per unit, `loop { sleep(interval); count }`,
/// first runs spread the same way. No scheduler code at all.
async fn measure_bare(units: usize, interval: Duration, window: Duration) -> Measured {
    let runs: Arc<Vec<AtomicU64>> = Arc::new((0..units).map(|_| AtomicU64::new(0)).collect());
    let mut rng = fastrand::Rng::new();
    let interval_ms = interval.as_millis().max(1) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..units {
        let runs = runs.clone();
        let first = Duration::from_millis(rng.u64(0..interval_ms));
        tasks.spawn(async move {
            tokio::time::sleep(first).await;
            loop {
                runs[i].fetch_add(1, Relaxed);
                tokio::time::sleep(interval).await;
            }
        });
    }
    let measured = measure(interval, window, || {
        runs.iter().map(|r| r.load(Relaxed)).sum()
    })
    .await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    measured
}

fn main() {
    let units = env_u64("BENCH_UNITS", 10_000) as usize;
    let interval = Duration::from_millis(env_u64("BENCH_INTERVAL_MS", 1000).max(1));
    let window = Duration::from_secs(env_u64("BENCH_SECONDS", 30).max(1));
    let tracing_on = std::env::var("BENCH_TRACING").is_ok_and(|v| v == "1");
    let threads = env_u64("BENCH_THREADS", 0) as usize;
    let bare = std::env::var("BENCH_BARE").is_ok_and(|v| v == "1");

    if tracing_on {
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .init();
    }
    let ticks_per_second = clock_ticks_per_second();

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    let runtime = builder.build().expect("build the tokio runtime");

    let measured = if bare {
        runtime.block_on(measure_bare(units, interval, window))
    } else {
        runtime.block_on(measure_scheduler(units, interval, window))
    };
    drop(runtime);

    let wall_s = measured.wall.as_secs_f64();
    let user_s = measured.user_ticks as f64 / ticks_per_second;
    let system_s = measured.system_ticks as f64 / ticks_per_second;
    let cpu_s = user_s + system_s;
    let cpu_percent = cpu_s / wall_s * 100.0;
    let peak_rss_mb = status_kb("VmHWM") as f64 / 1024.0;
    let runs = measured.runs;
    let runs_per_s = runs as f64 / wall_s;
    let us_per_run = if runs > 0 {
        cpu_s * 1e6 / runs as f64
    } else {
        f64::NAN
    };
    let mode = if bare {
        "bare-tokio-tasks"
    } else {
        "scheduler"
    };
    let tracing = if tracing_on {
        "json-info-to-sink"
    } else {
        "off"
    };
    let threads = if threads > 0 {
        threads.to_string()
    } else {
        "default".to_owned()
    };
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };

    println!(
        "units={units} interval={interval:?} window={}s runs={runs} runs/s={runs_per_s:.0} \
         cpu={cpu_percent:.2}% of one core peak_rss={peak_rss_mb:.1} MB",
        window.as_secs()
    );
    println!(
        "  mode={mode} tracing={tracing} threads={threads} wall={wall_s:.2}s \
         cpu_time={cpu_s:.2}s (user {user_s:.2}s, system {system_s:.2}s) \
         cpu/run={us_per_run:.2}us clk_tck={ticks_per_second}"
    );
    println!(
        "  goal: cpu < {GOAL_CPU_PERCENT}% of one core: {}; peak RSS < {GOAL_RSS_MB} MB: {}",
        verdict(cpu_percent < GOAL_CPU_PERCENT),
        verdict(peak_rss_mb < GOAL_RSS_MB),
    );
}
