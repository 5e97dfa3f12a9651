//! Push → ready for the example app (`examples/hello-preview`), on the real engine and Compose
//! CLI, against the sandbox GitHub: each push changes the page, then one pull-request poll and one
//! reconcile run, and the clock stops when the row says `ready` (the page answered its health
//! check). Detection is not included: it is one poll interval at most, or one webhook nudge (see
//! the polling benchmark).
//!
//! `cargo bench -p productbuilder-preview --bench push_to_ready`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use productbuilder_preview::TenantRules;
use productbuilder_preview::state::Status;
use support::{World, app};

const PUSHES: usize = 10;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let w = World::new("bench").await;
    let previews = w.previews(20, Duration::from_secs(3600), TenantRules::default());
    let number = w.sandbox.open_pr(&w.repo, app("first"));
    let first = Instant::now();
    w.pass(&previews).await;
    let first = first.elapsed();
    assert_eq!(w.status(&previews, number).await.0, Status::Ready);

    let mut times = Vec::with_capacity(PUSHES);
    for i in 0..PUSHES {
        w.sandbox.push(
            &w.repo,
            number,
            vec![(
                "www/index.html".into(),
                format!("<p>push {i}</p>\n").into_bytes(),
            )],
        );
        let started = Instant::now();
        w.pass(&previews).await;
        let row = previews.get(&w.repo, number).await.unwrap().unwrap();
        assert_eq!(row.status, Status::Ready, "{row:?}");
        times.push(started.elapsed());
    }
    w.clean_up(&previews).await;

    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("push_to_ready: example app, {PUSHES} pushes, one poll + reconcile each");
    println!("  first deploy (open → ready): {:.0} ms", ms(first));
    println!(
        "  push → ready: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        ms(times[PUSHES / 2]),
        ms(times[PUSHES * 9 / 10]),
        ms(times[PUSHES - 1])
    );
}
