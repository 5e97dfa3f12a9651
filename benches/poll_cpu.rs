//! Benchmark: the daemon's CPU per conditional request, against an independent fake GitHub.
//!
//! ```sh
//! cargo bench -p productbuilder --bench poll_cpu
//! ```
//! Knobs: `BENCH_REPOS` (200), `BENCH_INTERVAL` (10 s), `BENCH_ROUNDS` (6 poll rounds per
//! window), `BENCH_WINDOWS` (3 windows, to show the figure is stable), `BENCH_DELAY_MS` (10 ms per
//! answer), `BENCH_LOG` (the daemon's log level, `info` as in the example configuration),
//! `BENCH_DAEMON` (another `productbuilder` binary to measure, e.g. one built from main).
//!
//! The fake (`scripts/fake-github.py`) is a separate Python process, so its CPU is not counted,
//! and it shares no code with the daemon or the sandbox: 200 repositories with three open pull
//! requests each (GitHub's own example payloads, about 22 KB per pull request), their issues and
//! comments, ETags, 304 on a matching `If-None-Match` (not counted against the quota), rate-limit
//! headers, every answer after 10 ms. The real daemon runs `run` on a generated configuration
//! (one tenant file per repository, `poll_interval` 10 s, previews off): 200 × 3 listings every
//! 10 s = 60 conditional requests a second. After the warm-up (until one whole interval passes
//! without a request that counts), each window of `BENCH_ROUNDS` intervals reports the daemon's
//! utime + stime from `/proc/PID/stat` per second and per request. Then one issue and one comment
//! of one repository change, and the requests that count against the quota over the next three
//! intervals are reported per listing: the cost of one change.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::{cpu_and_peak, env_u64};

const TOKEN: &str = "ghp_bench";

/// One HTTP/1.0 exchange: (status, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let request =
        format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The fake's counters: (requests, not modified, counted), in total or for one listing.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    requests: u64,
    not_modified: u64,
    counted: u64,
}

fn counts(v: &serde_json::Value) -> Counts {
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    Counts {
        requests: n("requests"),
        not_modified: n("not_modified"),
        counted: n("counted"),
    }
}

fn stats(fake: u16) -> serde_json::Value {
    let (status, body) = http(fake, "GET", "/_fake/stats");
    assert_eq!(status, 200, "the fake GitHub's stats: {body}");
    serde_json::from_str(&body).expect("the fake's stats are JSON")
}

/// Kills a child when dropped, so a failed assertion leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let repos = env_u64("BENCH_REPOS", 200) as usize;
    let interval = env_u64("BENCH_INTERVAL", 10);
    let rounds = env_u64("BENCH_ROUNDS", 6);
    let windows = env_u64("BENCH_WINDOWS", 3);
    let delay_ms = env_u64("BENCH_DELAY_MS", 10);
    let log = std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into());
    let daemon_bin = std::env::var("BENCH_DAEMON")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_productbuilder").to_owned());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));

    let mut fake = Command::new("python3")
        .arg(root.join("scripts/fake-github.py"))
        .args(["--repos", &repos.to_string()])
        .args(["--delay-ms", &delay_ms.to_string()])
        .arg("--fixtures")
        .arg(root.join("../shared/fixtures/github-rest"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs scripts/fake-github.py");
    let mut first_line = String::new();
    BufReader::new(fake.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let fake = Reaped(fake);
    let fake_port: u16 = first_line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the fake GitHub did not start: {first_line:?}"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tenants")).unwrap();
    for r in 0..repos {
        std::fs::write(
            dir.path().join(format!("tenants/repo-{r:04}.toml")),
            format!("repo = \"bench/repo-{r:04}\"\npreviews = false\n"),
        )
        .unwrap();
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("productbuilder.toml"),
        format!(
            "state_dir = \"state\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"{log}\"\n[github]\napi_url = \"http://127.0.0.1:{fake_port}\"\ntoken = \"{TOKEN}\"\npoll_interval = \"{interval}s\"\n"
        ),
    )
    .unwrap();

    let log_file = dir.path().join("daemon.log");
    let daemon = Command::new(&daemon_bin)
        .args(["run", "--config"])
        .arg(dir.path().join("productbuilder.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {daemon_bin}: {e}"));
    let mut daemon = Reaped(daemon);
    let pid = daemon.0.id();
    let started = Instant::now();
    while http(port, "GET", "/readyz").0 != 200 {
        if daemon.0.try_wait().unwrap().is_some() {
            panic!(
                "the daemon exited; its log:\n{}",
                std::fs::read_to_string(&log_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready_after = started.elapsed();

    // Warm-up: until one whole interval passes in which no request counted (every listing's
    // first answer, and before the fix the first poll of each new `since` URL).
    let period = Duration::from_secs(interval);
    let mut warm_intervals = 0;
    loop {
        http(fake_port, "POST", "/_fake/clear");
        std::thread::sleep(period);
        warm_intervals += 1;
        let c = counts(&stats(fake_port));
        if (c.counted == 0 && c.requests > 0) || warm_intervals >= 10 {
            break;
        }
    }

    println!(
        "poll_cpu: repos={repos} listings=3 interval={interval}s answer_delay={delay_ms}ms log={log} daemon={daemon_bin}"
    );
    println!(
        "ready_after={:.1}s warm_up={warm_intervals} intervals",
        ready_after.as_secs_f64()
    );
    for w in 1..=windows {
        http(fake_port, "POST", "/_fake/clear");
        let (cpu0, _) = cpu_and_peak(pid);
        let t0 = Instant::now();
        std::thread::sleep(period * rounds as u32);
        let (cpu1, _) = cpu_and_peak(pid);
        let seconds = t0.elapsed().as_secs_f64();
        let c = counts(&stats(fake_port));
        let cpu = cpu1 - cpu0;
        println!(
            "window {w}: {seconds:.0}s requests={} ({:.1}/s) not_modified={} counted={} daemon_cpu={cpu:.2}s = {:.2}% of one core, {:.3} ms per request",
            c.requests,
            c.requests as f64 / seconds,
            c.not_modified,
            c.counted,
            100.0 * cpu / seconds,
            1000.0 * cpu / c.requests.max(1) as f64,
        );
    }

    // One change of each since-listing, then three intervals: what counted against the quota.
    http(fake_port, "POST", "/_fake/clear");
    http(
        fake_port,
        "POST",
        "/_fake/touch?repo=bench/repo-0000&what=issue",
    );
    http(
        fake_port,
        "POST",
        "/_fake/touch?repo=bench/repo-0001&what=comment",
    );
    std::thread::sleep(period * 3);
    let s = stats(fake_port);
    let per = |listing: &str| counts(&s["by_listing"][listing]);
    println!(
        "one change each, next 3 intervals: issues counted={} comments counted={} pulls counted={} (goal: 1, 1, 0)",
        per("issues").counted,
        per("comments").counted,
        per("pulls").counted,
    );
    let (_, peak_rss) = cpu_and_peak(pid);
    println!("daemon peak_rss={peak_rss:.1} MB");
    drop(daemon);
    drop(fake);
}
