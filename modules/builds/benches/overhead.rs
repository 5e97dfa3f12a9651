//! Benchmark: the daemon's own overhead per build (issue 11: under 1 s), the agent's time excluded.
//!
//! ```sh
//! cargo bench -p productbuilder-builds --bench overhead
//! BENCH_BUILDS=50 cargo bench -p productbuilder-builds --bench overhead
//! ```
//!
//! The sandbox GitHub serves a git-backed repository holding the example app
//! (`examples/hello-preview`, plus Debian's static busybox when `/bin/busybox` exists, as in
//! `productbuilder demo`) over real smart HTTP (`git http-backend`). A [`Runner`] with the daemon's
//! own [`GithubForge`] over a [`GithubClient`] pointed at the sandbox runs `BENCH_BUILDS` builds
//! (default 20, after one warm-up build), each for its own issue so each opens its own pull
//! request: claim, build comment, clone over HTTP, branch, issue text, agent, commit, push over
//! HTTP, pull request looked up and opened, comment edited, finish. The agent is a no-op: a shell
//! script that appends one line to `www/index.html` and prints a Claude Code result line.
//!
//! The agent's own time is measured apart: the same script run alone, as many times, in a copy of
//! the example app. The overhead reported is each build's wall time minus the agent's median time
//! alone; the runner's step events give a per-step breakdown (and the agent's time inside the
//! build, a cross-check).
//!
//! The GitHub client paces content writes as the daemon's does (`BudgetLimits::default()`: at
//! least `write_gap` = 1 s between two, as GitHub asks of integrations), and a build writes several
//! times (its comment at each step, the pull request), so that pacing is most of a build's time.
//! `BENCH_PACING=off` takes the pacing away (no gap, no per-minute or per-hour cap): the daemon's
//! own work alone. The bench prints the requests per build and the pacing's floor (writes × gap).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use productbuilder_builds::github_forge::GithubForge;
use productbuilder_builds::{
    BuildId, BuildSpec, BuildsConfig, EventKind, Queue, Ran, Runner, Status, Step,
};
use productbuilder_github::{BudgetLimits, ClientConfig, Credentials, GithubClient, Token};
use productbuilder_github_sandbox::{Method, Permission, Sandbox};
use productbuilder_store::Store;
use tokio_util::sync::CancellationToken;

const OWNER: &str = "acme";
const NAME: &str = "hello";
const REPO: &str = "acme/hello";
const TOKEN: &str = "ghp_bench_builds";
const WARMUP: usize = 1;
const DEFAULT_BUILDS: usize = 20;
const GOAL: Duration = Duration::from_secs(1);
const BUSYBOX: &str = "/bin/busybox";

/// The no-op agent: touches one file, says it succeeded. The prompt (`$1`) is ignored.
const NOOP_AGENT: &str = r#"#!/bin/sh
printf '<p>built</p>\n' >> www/index.html
printf '%s\n' '{"type":"result","subtype":"success","is_error":false,"num_turns":1,"total_cost_usd":0,"result":"Touched www/index.html."}'
"#;

/// The example repository's files, with paths relative to it.
fn example_files() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-preview");
    let mut files = productbuilder_github_sandbox::files_below(&root);
    if let Ok(busybox) = std::fs::read(BUSYBOX) {
        files.push(("busybox".into(), busybox));
    }
    files
}

/// The nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sorted(mut durations: Vec<Duration>) -> Vec<Duration> {
    durations.sort();
    durations
}

fn line(what: &str, sorted: &[Duration]) {
    println!(
        "{what}: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(percentile(sorted, 50.0)),
        ms(percentile(sorted, 90.0)),
        ms(*sorted.last().expect("samples"))
    );
}

/// The step events of the runner, timed as they arrive.
type Timeline = Arc<Mutex<HashMap<BuildId, Vec<(Instant, EventKind)>>>>;

/// The time from one step's event to the next event (the next step's, or the end).
fn step_time(events: &[(Instant, EventKind)], step: Step) -> Option<Duration> {
    let at = events
        .iter()
        .position(|(_, kind)| *kind == EventKind::Step(step))?;
    let next = events[at + 1..]
        .iter()
        .find(|(_, kind)| !matches!(kind, EventKind::Progress(_)))?;
    Some(next.0 - events[at].0)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let builds: usize = std::env::var("BENCH_BUILDS")
        .ok()
        .map(|n| n.parse().expect("BENCH_BUILDS is a number"))
        .unwrap_or(DEFAULT_BUILDS)
        .max(1);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = example_files();
    let repo_bytes: usize = files.iter().map(|(_, b)| b.len()).sum();

    let sandbox = Sandbox::start().await.expect("the sandbox");
    sandbox.add_token(TOKEN, "productbuilder-bot");
    let seed: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    sandbox.create_git_repo(OWNER, NAME, &seed);
    sandbox.grant(TOKEN, REPO, Permission::Push);
    let issues: Vec<u64> = (0..WARMUP + builds)
        .map(|i| {
            sandbox.create_issue(
                REPO,
                &format!("Touch the page ({i})"),
                "Add a line to www/index.html.",
                "alice",
            )
        })
        .collect();

    let store = Store::open(dir.path().join("productbuilder.db")).expect("the database");
    store.migrate().expect("the store's schema");
    // The daemon's write pacing, or none (`BENCH_PACING=off`: no gap, no per-minute or per-hour
    // cap), to see the daemon's own work apart from the waits it imposes on itself.
    let paced = std::env::var("BENCH_PACING").map_or(true, |v| v != "off");
    let limits = if paced {
        BudgetLimits::default()
    } else {
        BudgetLimits {
            write_gap: Duration::ZERO,
            writes_per_minute: usize::MAX,
            writes_per_hour: usize::MAX,
            ..BudgetLimits::default()
        }
    };
    let write_gap = limits.write_gap;
    let client = GithubClient::new(
        ClientConfig {
            api_url: sandbox.url(),
            credentials: Credentials::Token(Token::new(TOKEN)),
            limits: limits.clone(),
            request_timeout: Duration::from_secs(30),
        },
        store.clone(),
    )
    .expect("the GitHub client");
    let agent = dir.path().join("noop-agent.sh");
    std::fs::write(&agent, NOOP_AGENT).expect("the agent script");
    let config = BuildsConfig::new(vec![
        "/bin/sh".into(),
        agent.to_string_lossy().into_owned(),
        "{prompt}".into(),
    ]);
    let queue = Queue::new(store.clone(), config.queue_config());
    let runner = Runner::new(
        queue.clone(),
        Arc::new(GithubForge::new(client)),
        config,
        dir.path().join("state"),
        "bench",
    )
    .expect("the runner");

    // The agent alone, in a copy of the example app, with a prompt like the builds'.
    let alone = dir.path().join("agent-alone");
    std::fs::create_dir_all(alone.join("www")).expect("the agent's directory");
    let page = files
        .iter()
        .find(|(p, _)| p == "www/index.html")
        .expect("the example's page");
    std::fs::write(alone.join("www/index.html"), &page.1).expect("the page");
    let prompt = "Implement issue #1.\n\nissue #1: Touch the page\n\nAdd a line to www/index.html.";
    let mut agent_times = Vec::with_capacity(builds);
    for i in 0..WARMUP + builds {
        let start = Instant::now();
        let out = tokio::process::Command::new("/bin/sh")
            .arg(&agent)
            .arg(prompt)
            .current_dir(&alone)
            .output()
            .await
            .expect("the agent runs");
        let took = start.elapsed();
        assert!(out.status.success(), "the agent alone failed");
        if i >= WARMUP {
            agent_times.push(took);
        }
    }

    // The builds, one at a time, each timed from claim to finish.
    let timeline: Timeline = Arc::default();
    let mut events = runner.subscribe();
    let recorder = {
        let timeline = timeline.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                let at = Instant::now();
                let mut all = timeline.lock().unwrap_or_else(|e| e.into_inner());
                all.entry(event.id).or_default().push((at, event.kind));
            }
        })
    };
    for number in &issues {
        let mut spec = BuildSpec::new(format!("Implement issue #{number}."));
        spec.issue = Some(*number);
        queue
            .enqueue(REPO, Some(*number), spec, Utc::now())
            .await
            .expect("enqueued");
    }
    let shutdown = CancellationToken::new();
    let mut walls = Vec::with_capacity(builds);
    let mut ids = Vec::with_capacity(builds);
    let mut starts = Vec::with_capacity(builds);
    let mut git_requests_before = 0;
    for i in 0..WARMUP + builds {
        let start = Instant::now();
        let (id, ran) = runner
            .run_once(&shutdown)
            .await
            .expect("the queue")
            .expect("a build was due");
        let took = start.elapsed();
        assert_eq!(
            ran,
            Ran::Finished {
                status: Status::Completed,
                reason: "completed".into()
            },
            "build {id}"
        );
        if i >= WARMUP {
            walls.push(took);
            ids.push(id);
            starts.push(start);
        }
        if i + 1 == WARMUP {
            // Only the measured builds' requests are counted.
            sandbox.clear_requests();
            git_requests_before = sandbox.git_requests().len();
        }
    }
    // The request log holds git's smart HTTP requests too (`/git/...`), counted apart.
    let requests: Vec<_> = sandbox
        .requests()
        .into_iter()
        .filter(|r| !r.path_and_query.starts_with("/git/"))
        .collect();
    let writes = requests.iter().filter(|r| r.method != Method::GET).count();
    let reads = requests.len() - writes;
    let git_requests = sandbox.git_requests().len() - git_requests_before;
    for number in &issues {
        let branch = format!("productbuilder/issue-{number}");
        assert_eq!(
            sandbox.pulls_with_head(REPO, &branch).len(),
            1,
            "one pull request for {branch}"
        );
    }
    // The last events (Finished) are sent before run_once returns; give the recorder its turn.
    tokio::task::yield_now().await;
    recorder.abort();

    let agent_p50 = percentile(&sorted(agent_times.clone()), 50.0);
    let overhead = sorted(walls.iter().map(|w| w.saturating_sub(agent_p50)).collect());
    let timeline = timeline.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let per_step = |step: Step| {
        sorted(
            ids.iter()
                .filter_map(|id| step_time(timeline.get(id)?, step))
                .collect(),
        )
    };
    let own_by_events = sorted(
        ids.iter()
            .zip(&walls)
            .filter_map(|(id, wall)| {
                Some(wall.saturating_sub(step_time(timeline.get(id)?, Step::Agent)?))
            })
            .collect(),
    );

    println!(
        "builds: {builds} (after {WARMUP} warm-up), one at a time; repository: {} files, {:.2} MiB",
        files.len(),
        repo_bytes as f64 / (1024.0 * 1024.0)
    );
    line("build (claim to finish)", &sorted(walls.clone()));
    line("agent alone", &sorted(agent_times));
    line("overhead = build - agent alone (p50)", &overhead);
    line("  cross-check: build - its agent step", &own_by_events);
    let before_clone = sorted(
        ids.iter()
            .zip(&starts)
            .filter_map(|(id, start)| {
                let events = timeline.get(id)?;
                let (at, _) = events
                    .iter()
                    .find(|(_, kind)| *kind == EventKind::Step(Step::Clone))?;
                Some(*at - *start)
            })
            .collect(),
    );
    line("  claim and the build comment created", &before_clone);
    // Each step's time includes the build comment's edit that announces it.
    for (what, step) in [
        (
            "  clone (repository, ls-remote, clone, branch, issue)",
            Step::Clone,
        ),
        ("  agent step (spawn, run, read its output)", Step::Agent),
        ("  commit (stage, commit, files changed)", Step::Commit),
        ("  push", Step::Push),
        (
            "  pull request (look up, open), finish, final comment",
            Step::PullRequest,
        ),
    ] {
        let times = per_step(step);
        if !times.is_empty() {
            line(what, &times);
        }
    }
    let after_end = sorted(
        ids.iter()
            .zip(starts.iter().zip(&walls))
            .filter_map(|(id, (start, wall))| {
                let events = timeline.get(id)?;
                let (at, _) = events
                    .iter()
                    .find(|(_, kind)| matches!(kind, EventKind::Finished(_)))?;
                Some(wall.saturating_sub(*at - *start))
            })
            .collect(),
    );
    line("  after the end (the workspace removed)", &after_end);
    let per_build = |n: usize| n as f64 / builds as f64;
    let writes_per_build = per_build(writes);
    println!(
        "requests per build: {:.1} API reads, {:.1} API writes, {:.1} git (smart HTTP)",
        per_build(reads),
        writes_per_build,
        per_build(git_requests)
    );
    if paced {
        println!(
            "write pacing: the daemon's (write_gap {} ms, {}/minute, {}/hour), so at least {:.0} ms per build waiting between writes",
            write_gap.as_millis(),
            limits.writes_per_minute,
            limits.writes_per_hour,
            writes_per_build * ms(write_gap)
        );
    } else {
        println!("write pacing: off (BENCH_PACING=off)");
    }
    let p90 = percentile(&overhead, 90.0);
    println!(
        "goal: overhead < {} ms per build: {} (p90 {:.1} ms)",
        GOAL.as_millis(),
        if p90 < GOAL { "met" } else { "MISSED" },
        ms(p90)
    );
    sandbox.shutdown().await;
}
