//! Benchmark: the daemon's own overhead per preview deploy, image build excluded.
//!
//! ```sh
//! cargo bench -p productbuilder-preview --bench overhead
//! ```
//!
//! A pull request whose head is `examples/hello-preview` plus ~10 MiB of incompressible filler
//! (so the gzip tarball is ~10 MiB) is opened on the sandbox GitHub. Each iteration then runs
//! the deploy path up to `compose up`, into a fresh workspace: download over loopback (through
//! the tarball redirect), hostile-input extraction, config.yml and compose policy checks, then
//! parse, rewrite, render and write the compose file. Goal: p50 < 200 ms.
//!
//! The sandbox builds each commit's archive once, as codeload does (the probe download before the
//! loop builds it), so the iterations time the daemon's work: receiving 10 MiB over loopback and
//! everything after.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use productbuilder_github::{BudgetLimits, ClientConfig, Credentials, GithubClient, Token};
use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};
use productbuilder_preview::archive::Limits;
use productbuilder_preview::compose::{Rewrite, project_name, render, rewrite, routed_network};
use productbuilder_preview::policy::Policy;
use productbuilder_preview::runner::{ComposeCli, write_project};
use productbuilder_preview::source::{Checks, fetch_and_check};
use productbuilder_store::Store;

const REPO: &str = "acme/shop";
const TOKEN: &str = "ghp_bench";
const HEAD_REF: &str = "feature/bench";
const WARMUP: usize = 2;
const ITERATIONS: usize = 30;
/// Filler: random bytes do not compress, so this is also about the tarball's size.
const FILLER_BYTES: usize = 10 * 1024 * 1024;
const FILLER_FILES: usize = 200;
const FILLER_DIRS: [&str; 5] = [
    "assets/images",
    "assets/fonts",
    "vendor/js",
    "docs/media",
    "src/generated",
];
const SEED: u64 = 0x5eed_be4c;

/// One deploy's timings: the three checked stages, then the compose rewrite.
struct Sample {
    fetch: Duration,
    rewrite: Duration,
}

/// The example repository's files, with paths relative to it.
fn example_files() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-preview");
    productbuilder_github_sandbox::files_below(&root)
}

/// `FILLER_FILES` files of pseudo-random bytes, of varied sizes averaging
/// `FILLER_BYTES / FILLER_FILES`, spread over a few directories like a real repository's assets.
fn filler_files() -> Vec<(String, Vec<u8>)> {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let average = FILLER_BYTES / FILLER_FILES;
    (0..FILLER_FILES)
        .map(|i| {
            let dir = FILLER_DIRS[i % FILLER_DIRS.len()];
            let mut bytes = vec![0u8; rng.usize(average / 4..=average * 7 / 4)];
            rng.fill(&mut bytes);
            (format!("{dir}/blob-{i:03}.bin"), bytes)
        })
        .collect()
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

/// Peak resident set size of this process (VmHWM), in MiB. This process also hosts the sandbox,
/// which holds the repository in memory and builds each tarball in memory.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// One deploy, up to the compose file written into `workspace`.
async fn deploy(client: &GithubClient, sha: &str, number: u64, workspace: &Path) -> Sample {
    let start = Instant::now();
    let project = project_name(REPO, number);
    let cli = ComposeCli::detect(&["docker".into(), "compose".into()])
        .await
        .expect("Compose v2");
    let checkout = fetch_and_check(
        client,
        REPO,
        sha,
        workspace,
        &Limits::default(),
        &Checks {
            policy: &Policy::default(),
            cli: &cli,
            project: &project,
        },
    )
    .await
    .expect("the head passes its checks");
    let fetched = Instant::now();

    let spec = &checkout.spec;
    let doc = &checkout.resolved.model;
    let network = routed_network(doc, &spec.service).expect("a routed network");
    let host = format!("shop-pr-{number}.preview.example.com");
    let base_url = format!("https://{host}");
    let rewritten = rewrite(
        doc,
        &Rewrite {
            repo: REPO,
            number,
            sha,
            project: &project,
            service: &spec.service,
            internal_port: spec.internal_port,
            host: &host,
            base_url: &base_url,
            entrypoint: "websecure",
            cert_resolver: Some("letsencrypt"),
            cpus: Some(1.0),
            memory: Some("512m"),
            pids_limit: 1024,
            internal: false,
            env: &[],
        },
        &network,
    );
    let rendered = render(&rewritten).expect("a renderable compose file");
    write_project(workspace, &project, &rendered, Vec::new()).expect("the project file");
    let done = Instant::now();

    Sample {
        fetch: fetched - start,
        rewrite: done - fetched,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let files: Vec<(String, Vec<u8>)> = example_files().into_iter().chain(filler_files()).collect();

    let sandbox = Sandbox::start().await.expect("the sandbox");
    sandbox.add_token(TOKEN, "bot");
    let (owner, name) = REPO.split_once('/').expect("owner/name");
    sandbox.create_repo(owner, name);
    sandbox.grant("bot", REPO, Permission::Push);
    let pr = files.iter().fold(
        NewPr::new("Preview me", "alice", HEAD_REF),
        |pr, (path, bytes)| pr.with_file(path, bytes.clone()),
    );
    let number = sandbox.open_pr(REPO, pr);
    let sha = sandbox.head_sha(REPO, number);

    let store = Store::in_memory().expect("an in-memory store");
    store.migrate().expect("the store's schema");
    let client = GithubClient::new(
        ClientConfig {
            api_url: sandbox.url(),
            credentials: Credentials::Token(Token::new(TOKEN)),
            limits: BudgetLimits::default(),
            request_timeout: Duration::from_secs(30),
        },
        store,
    )
    .expect("the GitHub client");
    let dir = tempfile::tempdir().expect("a temporary directory");

    // The tarball's real size: one plain download, as the daemon does it.
    let identity = client.identity(REPO).await.expect("an identity");
    let url = client.url(&format!("/repos/{REPO}/tarball/{sha}"));
    let tarball_bytes = client
        .download_to(
            &identity,
            &url,
            &dir.path().join("probe.tar.gz"),
            Limits::default().max_compressed_bytes,
            Duration::from_secs(60),
        )
        .await
        .expect("the tarball");

    let mut samples = Vec::with_capacity(ITERATIONS);
    for i in 0..WARMUP + ITERATIONS {
        let workspace = dir.path().join(format!("ws-{i}"));
        let sample = deploy(&client, &sha, number, &workspace).await;
        // Not timed: only keeps the disk use to one checkout at a time.
        std::fs::remove_dir_all(&workspace).expect("removing the workspace");
        if i >= WARMUP {
            samples.push(sample);
        }
    }

    let total = sorted(samples.iter().map(|s| s.fetch + s.rewrite).collect());
    let fetch = sorted(samples.iter().map(|s| s.fetch).collect());
    let rewrites = sorted(samples.iter().map(|s| s.rewrite).collect());
    println!("iterations: {ITERATIONS} (after {WARMUP} warm-up)");
    println!(
        "tarball: {tarball_bytes} bytes = {:.2} MiB compressed",
        tarball_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "total: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(percentile(&total, 50.0)),
        ms(percentile(&total, 90.0)),
        ms(*total.last().expect("samples"))
    );
    println!(
        "  download+extract+validate p50: {:.1} ms",
        ms(percentile(&fetch, 50.0))
    );
    println!(
        "  parse+rewrite+render+write p50: {:.3} ms",
        ms(percentile(&rewrites, 50.0))
    );
    println!(
        "peak RSS (VmHWM, sandbox included): {:.1} MiB",
        peak_rss_mib()
    );
}
