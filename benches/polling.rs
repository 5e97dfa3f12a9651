//! Benchmark: the real daemon polling 1,000 repositories of the sandbox GitHub.
//!
//! ```sh
//! cargo bench -p productbuilder --bench polling
//! ```
//! Knobs: `BENCH_TENANTS` (1000), `BENCH_PRS` (3 per tenant), `BENCH_INTERVAL` (60 s),
//! `BENCH_IDLE_SECONDS` (120), `BENCH_PUSHES` (40 per latency series).
//!
//! It measures, after the first round: quota-counted requests per idle hour, the share of 304s,
//! the latency from a push to the poll that sees it (p50/p99, without and with a webhook nudge),
//! the peak number of requests in flight, and the daemon's CPU share and peak RSS.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};

#[path = "support/mod.rs"]
mod support;
use support::{cpu_and_peak, env_u64};

const TOKEN: &str = "ghp_bench";
const SECRET: &str = "bench-webhook-secret";

fn http(port: u16, request: &[u8]) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    if stream.write_all(request).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

fn nudge(port: u16, repo: &str, delivery: usize) -> u16 {
    let body = format!(r#"{{"action":"synchronize","repository":{{"full_name":"{repo}"}}}}"#);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let request = format!(
        "POST /webhook HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-GitHub-Event: pull_request\r\nX-GitHub-Delivery: bench-{delivery}\r\nX-Hub-Signature-256: sha256={signature}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http(port, request.as_bytes()).0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Pushes to `count` repositories one after another, optionally nudging by webhook, and returns
/// the latency from each push to the first poll that answered 200 for that repository.
fn latency_series(
    sandbox: &Sandbox,
    port: u16,
    repos: &[String],
    count: usize,
    webhook: bool,
    spacing: Duration,
) -> Vec<Duration> {
    let mut rng = fastrand::Rng::with_seed(if webhook { 2 } else { 1 });
    let mut pending = Vec::new();
    for i in 0..count {
        let repo = &repos[rng.usize(..repos.len())];
        let pushed_at = Instant::now();
        sandbox.push(
            repo,
            1,
            vec![("index.html".into(), format!("push {i}").into_bytes())],
        );
        if webhook {
            nudge(port, repo, i);
        }
        pending.push((repo.clone(), pushed_at));
        std::thread::sleep(spacing);
    }
    let deadline = Instant::now() + Duration::from_secs(env_u64("BENCH_INTERVAL", 60) * 3);
    let mut latencies = Vec::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let requests = sandbox.requests();
        pending.retain(|(repo, pushed_at)| {
            let prefix = format!("/repos/{repo}/pulls?");
            match requests.iter().find(|r| {
                r.at >= *pushed_at && r.status == 200 && r.path_and_query.starts_with(&prefix)
            }) {
                Some(r) => {
                    latencies.push(r.at - *pushed_at);
                    false
                }
                None => true,
            }
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        pending.is_empty(),
        "{} pushes never detected",
        pending.len()
    );
    latencies.sort();
    latencies
}

fn main() {
    let tenants = env_u64("BENCH_TENANTS", 1000) as usize;
    let prs = env_u64("BENCH_PRS", 3) as usize;
    let interval = env_u64("BENCH_INTERVAL", 60);
    let idle = env_u64("BENCH_IDLE_SECONDS", 120);
    let pushes = env_u64("BENCH_PUSHES", 40) as usize;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sandbox = runtime.block_on(Sandbox::start()).unwrap();
    sandbox.add_token(TOKEN, "bench-bot");
    // One identity for all tenants, as with one token. A real PAT has 5,000/h; the first round
    // alone costs about 4 requests per tenant, so the sandbox grants more to measure the steady state.
    sandbox.set_rate_limit(TOKEN, 1_000_000, 1_000_000, Duration::from_secs(3600));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tenants")).unwrap();
    let mut repos = Vec::new();
    for t in 0..tenants {
        let repo = format!("bench/repo-{t:04}");
        sandbox.create_repo("bench", &format!("repo-{t:04}"));
        sandbox.grant("bench-bot", &repo, Permission::Push);
        for p in 0..prs {
            sandbox.open_pr(
                &repo,
                NewPr::new(&format!("PR {p}"), "alice", &format!("b{p}"))
                    .with_file("index.html", "x"),
            );
        }
        std::fs::write(
            dir.path().join(format!("tenants/repo-{t:04}.toml")),
            format!("repo = \"{repo}\"\n"),
        )
        .unwrap();
        repos.push(repo);
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("productbuilder.toml"),
        format!(
            "state_dir = \"state\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n[github]\napi_url = \"{}\"\ntoken = \"{TOKEN}\"\npoll_interval = \"{interval}s\"\nwebhook_secret = \"{SECRET}\"\n",
            sandbox.url()
        ),
    )
    .unwrap();

    let started = Instant::now();
    let mut daemon: Child = Command::new(env!("CARGO_BIN_EXE_productbuilder"))
        .args(["run", "--config"])
        .arg(dir.path().join("productbuilder.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = daemon.id();
    while http(port, b"GET /readyz HTTP/1.0\r\n\r\n").0 != 200 {
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready_after = started.elapsed();
    // The first round: every tenant's pulls polled once.
    let first_round = Instant::now();
    loop {
        let polled: std::collections::HashSet<String> = sandbox
            .requests()
            .iter()
            .filter_map(|r| {
                let rest = r.path_and_query.strip_prefix("/repos/")?;
                let (repo, tail) = rest.split_at(rest.find("/pulls?")?);
                tail.starts_with("/pulls?").then(|| repo.to_owned())
            })
            .collect();
        if polled.len() >= tenants {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let first_round_took = first_round.elapsed();
    // Let the issues and comments pollers finish their first round too.
    std::thread::sleep(Duration::from_secs(interval));

    // Idle window.
    sandbox.clear_requests();
    let (cpu0, _) = cpu_and_peak(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle));
    let window = t0.elapsed().as_secs_f64();
    let (cpu1, _) = cpu_and_peak(pid);
    let requests = sandbox.requests();
    let counted = requests.iter().filter(|r| r.counted).count();
    let not_modified = requests.iter().filter(|r| r.status == 304).count();
    let peak_in_flight = sandbox.in_flight_peak();
    let per_hour = counted as f64 * 3600.0 / window;

    // Push latency, polling alone, then with a webhook nudge.
    let spacing = Duration::from_millis(interval * 1000 / pushes.max(1) as u64);
    let polled = latency_series(&sandbox, port, &repos, pushes, false, spacing);
    let nudged = latency_series(
        &sandbox,
        port,
        &repos,
        pushes,
        true,
        Duration::from_millis(250),
    );
    let (_, peak_rss) = cpu_and_peak(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = daemon.wait();

    println!(
        "tenants={tenants} prs_per_tenant={prs} interval={interval}s units={}",
        tenants * 3
    );
    println!(
        "ready_after={:.1}s first_pull_round={:.1}s",
        ready_after.as_secs_f64(),
        first_round_took.as_secs_f64()
    );
    println!(
        "idle window={window:.0}s requests={} not_modified={} share_304={:.1}% quota_counted={counted} quota_per_idle_hour={per_hour:.0} peak_in_flight={peak_in_flight}",
        requests.len(),
        not_modified,
        100.0 * not_modified as f64 / requests.len().max(1) as f64
    );
    println!(
        "daemon cpu={:.2}% of one core (idle window) peak_rss={peak_rss:.1} MB",
        100.0 * (cpu1 - cpu0) / window
    );
    println!(
        "push->poll latency (polling only, n={}): p50={:.2}s p99={:.2}s max={:.2}s (goal p99 <= {}s)",
        polled.len(),
        percentile(&polled, 50.0).as_secs_f64(),
        percentile(&polled, 99.0).as_secs_f64(),
        polled.last().copied().unwrap_or_default().as_secs_f64(),
        interval + 1
    );
    println!(
        "push->poll latency (webhook nudge, n={}): p50={:.3}s p99={:.3}s max={:.3}s (goal p99 <= 1s)",
        nudged.len(),
        percentile(&nudged, 50.0).as_secs_f64(),
        percentile(&nudged, 99.0).as_secs_f64(),
        nudged.last().copied().unwrap_or_default().as_secs_f64(),
    );
    runtime.block_on(sandbox.shutdown());
}
