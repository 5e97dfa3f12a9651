//! Tokens and model calls per typical request, and the daemon's own latency per run excluding
//! the model, measured against the sandbox LLM's rule-based model (the one `productbuilder demo`
//! uses) over real HTTP, with the recording fake tools and the traces in a real SQLite file.
//!
//! For each request (file an issue, ask a status, implement), `BENCH_RUNS` runs (default 20):
//! the model calls, tokens in and out as the sandbox reports them (a quarter of the characters
//! of each request and reply, as providers count roughly), and the run's wall time minus the
//! time spent waiting for the model (the trace's `llm_latency_ms`): the daemon's own work
//! (prompt building, sanitising, tool dispatch, the claims check, the trace write).
//!
//! `cargo bench -p productbuilder-agent --bench requests`

use std::sync::Arc;
use std::time::{Duration, Instant};

use productbuilder_agent::{Agent, FakeTools, RunInput, ThreadMessage, Traces};
use productbuilder_llm::{Endpoint, LlmClient, LlmConfig, Provider};
use productbuilder_llm_sandbox::Sandbox;
use productbuilder_store::Store;
use tokio_util::sync::CancellationToken;

struct Request {
    name: &'static str,
    text: &'static str,
    issue: Option<u64>,
}

const REQUESTS: [Request; 3] = [
    Request {
        name: "file an issue",
        text: "<@UBOT> there's a bug in the cart total, can you file it? It ignores the discount code.",
        issue: None,
    },
    Request {
        name: "status",
        text: "<@UBOT> what's the status of #1?",
        issue: None,
    },
    Request {
        name: "implement",
        text: "<@UBOT> implement this",
        issue: Some(1),
    },
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let llm = Sandbox::start_demo().await.expect("the sandbox LLM starts");
    let mut endpoint = Endpoint::new(Provider::Anthropic, "demo-model", &llm.base_url());
    endpoint.request_timeout = Duration::from_secs(10);
    endpoint.max_retries = 0;
    let client = Arc::new(LlmClient::new(LlmConfig::new(endpoint)).expect("a client"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(dir.path().join("bench.db")).expect("the database");
    store.migrate().expect("migrations");
    let traces = Traces::new(store);
    println!(
        "{:<14} {:>5} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "request", "runs", "llm calls", "tokens in", "tokens out", "own p50 ms", "own p90 ms"
    );
    for request in &REQUESTS {
        let mut own = Vec::with_capacity(runs);
        let (mut calls, mut tokens_in, mut tokens_out) = (0u64, 0u64, 0u64);
        for _ in 0..runs {
            // A fresh world per run: the same issue to read or build, nothing filed yet.
            let tools = Arc::new(FakeTools::new());
            tools.add_issue(
                1,
                "Cart total ignores discounts",
                "The total ignores the discount code.",
            );
            let agent = Agent::new(client.clone(), tools, traces.clone());
            let input = RunInput {
                repo: "acme/shop".into(),
                channel: "C1".into(),
                thread_ts: "1700000000.000100".into(),
                issue: request.issue,
                messages: vec![ThreadMessage {
                    user: "UALICE".into(),
                    from_bot: false,
                    text: request.text.into(),
                }],
                author_is_writer: true,
                summary: None,
            };
            let started = Instant::now();
            let done = agent.run(&input, &CancellationToken::new()).await;
            let wall = started.elapsed();
            assert!(
                !done.actions.is_empty() || request.name == "status",
                "{}: the run did its write: {done:?}",
                request.name
            );
            let id = done.run_id.expect("the run is traced");
            let trace = traces
                .get(id.0)
                .await
                .expect("the trace reads")
                .expect("the trace exists")
                .run;
            calls += u64::from(trace.llm_calls);
            tokens_in += trace.tokens_in + trace.tokens_cache;
            tokens_out += trace.tokens_out;
            let model = Duration::from_millis(trace.llm_latency_ms);
            own.push(wall.saturating_sub(model).as_secs_f64() * 1000.0);
        }
        own.sort_by(|a, b| a.total_cmp(b));
        let n = runs as u64;
        println!(
            "{:<14} {:>5} {:>10.1} {:>10} {:>10} {:>12.2} {:>12.2}",
            request.name,
            runs,
            calls as f64 / n as f64,
            tokens_in / n,
            tokens_out / n,
            percentile(&own, 0.5),
            percentile(&own, 0.9)
        );
    }
}
