//! Every run traced in SQLite (`migrations/0012_agent_runs.sql`): who answered (model,
//! provider, fallback or not), the tokens, the latency, the outcome, and each step (the route
//! and every tool call with its bounded input and result). Kept `[llm] trace_retention`.
//!
//! A run is written once, when it ends, in one transaction: a run cut short by a kill leaves no
//! half-written trace (its writes are on GitHub, with the agent's marker).

use std::time::Duration;

use chrono::{DateTime, Utc};
use productbuilder_store::rusqlite::{OptionalExtension, params};
use productbuilder_store::{Store, StoreError};
use serde::Serialize;

use crate::sanitize::bound;

/// The most of a step's input or result kept, in characters.
pub const MAX_STEP_CHARS: usize = 4000;

/// A run's id, as in `/agent/runs/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RunId(pub i64);

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub n: u32,
    /// `route` or a tool's name (as the model sent it, bounded).
    pub tool: String,
    /// The arguments as JSON text, bounded.
    pub input: String,
    /// The result or the error, bounded.
    pub result: String,
    pub ok: bool,
}

/// A run, as traced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunTrace {
    pub repo: String,
    pub channel: String,
    pub thread_ts: String,
    pub specialist: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub fallback_used: bool,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Read from and written to the prompt cache.
    pub tokens_cache: u64,
    pub llm_calls: u32,
    pub latency_ms: u64,
    pub llm_latency_ms: u64,
    pub outcome: String,
    pub detail: Option<String>,
    pub steps: Vec<Step>,
}

impl RunTrace {
    /// Adds a step, bounding what it keeps.
    pub fn step(&mut self, tool: &str, input: &str, result: &str, ok: bool) {
        self.steps.push(Step {
            n: self.steps.len() as u32 + 1,
            tool: bound(tool, 64),
            input: bound(input, MAX_STEP_CHARS),
            result: bound(result, MAX_STEP_CHARS),
            ok,
        });
    }
}

/// A stored run with its id and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredRun {
    pub id: i64,
    pub created_at: String,
    #[serde(flatten)]
    pub run: RunTrace,
}

/// A run as a list shows it (the dashboard): who answered, how, at what cost; no steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    pub id: i64,
    /// RFC 3339, milliseconds, UTC.
    pub created_at: String,
    pub repo: String,
    pub specialist: Option<String>,
    pub outcome: String,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub llm_calls: u32,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub latency_ms: u64,
    pub fallback_used: bool,
}

fn rfc3339(created: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(created)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The traces in the daemon's database.
#[derive(Clone)]
pub struct Traces {
    store: Store,
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn sat(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Traces {
    pub fn new(store: Store) -> Traces {
        Traces { store }
    }

    /// Writes a finished run and its steps.
    pub async fn record(&self, run: &RunTrace, now: DateTime<Utc>) -> Result<RunId, StoreError> {
        let run = run.clone();
        self.store
            .write(move |c| {
                let tx = c.transaction()?;
                tx.execute(
                    "INSERT INTO agent_runs (repo, channel, thread_ts, specialist, model, provider, \
                     fallback_used, tokens_in, tokens_out, tokens_cache, llm_calls, latency_ms, \
                     llm_latency_ms, outcome, detail, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                    params![
                        run.repo,
                        run.channel,
                        run.thread_ts,
                        run.specialist,
                        run.model,
                        run.provider,
                        run.fallback_used,
                        sat(run.tokens_in),
                        sat(run.tokens_out),
                        sat(run.tokens_cache),
                        run.llm_calls,
                        sat(run.latency_ms),
                        sat(run.llm_latency_ms),
                        run.outcome,
                        run.detail,
                        millis(now),
                    ],
                )?;
                let id = tx.last_insert_rowid();
                for s in &run.steps {
                    tx.execute(
                        "INSERT INTO agent_steps (run_id, n, tool, input, result, ok) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![id, s.n, s.tool, s.input, s.result, s.ok],
                    )?;
                }
                tx.commit()?;
                Ok(RunId(id))
            })
            .await
    }

    /// One run with its steps.
    pub async fn get(&self, id: i64) -> Result<Option<StoredRun>, StoreError> {
        self.store
            .read(move |c| {
                let row = c
                    .query_row(
                        "SELECT repo, channel, thread_ts, specialist, model, provider, \
                         fallback_used, tokens_in, tokens_out, tokens_cache, llm_calls, \
                         latency_ms, llm_latency_ms, outcome, detail, created_at \
                         FROM agent_runs WHERE id = ?1",
                        [id],
                        |r| {
                            let created: i64 = r.get(15)?;
                            Ok(StoredRun {
                                id,
                                created_at: rfc3339(created),
                                run: RunTrace {
                                    repo: r.get(0)?,
                                    channel: r.get(1)?,
                                    thread_ts: r.get(2)?,
                                    specialist: r.get(3)?,
                                    model: r.get(4)?,
                                    provider: r.get(5)?,
                                    fallback_used: r.get(6)?,
                                    tokens_in: r.get::<_, i64>(7)?.max(0) as u64,
                                    tokens_out: r.get::<_, i64>(8)?.max(0) as u64,
                                    tokens_cache: r.get::<_, i64>(9)?.max(0) as u64,
                                    llm_calls: r.get(10)?,
                                    latency_ms: r.get::<_, i64>(11)?.max(0) as u64,
                                    llm_latency_ms: r.get::<_, i64>(12)?.max(0) as u64,
                                    outcome: r.get(13)?,
                                    detail: r.get(14)?,
                                    steps: Vec::new(),
                                },
                            })
                        },
                    )
                    .optional()?;
                let Some(mut stored) = row else {
                    return Ok(None);
                };
                let mut stmt = c.prepare(
                    "SELECT n, tool, input, result, ok FROM agent_steps WHERE run_id = ?1 ORDER BY n",
                )?;
                stored.run.steps = stmt
                    .query_map([id], |r| {
                        Ok(Step {
                            n: r.get(0)?,
                            tool: r.get(1)?,
                            input: r.get(2)?,
                            result: r.get(3)?,
                            ok: r.get(4)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                Ok(Some(stored))
            })
            .await
    }

    /// The newest `limit` runs of every repository, newest first.
    pub async fn recent(&self, limit: u32) -> Result<Vec<RunSummary>, StoreError> {
        self.store
            .read(move |c| {
                let mut stmt = c.prepare(
                    "SELECT id, created_at, repo, specialist, outcome, model, provider, \
                     llm_calls, tokens_in, tokens_out, latency_ms, fallback_used \
                     FROM agent_runs ORDER BY created_at DESC, id DESC LIMIT ?1",
                )?;
                let runs = stmt
                    .query_map([limit], |r| {
                        Ok(RunSummary {
                            id: r.get(0)?,
                            created_at: rfc3339(r.get(1)?),
                            repo: r.get(2)?,
                            specialist: r.get(3)?,
                            outcome: r.get(4)?,
                            model: r.get(5)?,
                            provider: r.get(6)?,
                            llm_calls: r.get(7)?,
                            tokens_in: r.get::<_, i64>(8)?.max(0) as u64,
                            tokens_out: r.get::<_, i64>(9)?.max(0) as u64,
                            latency_ms: r.get::<_, i64>(10)?.max(0) as u64,
                            fallback_used: r.get(11)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(runs)
            })
            .await
    }

    /// Deletes the runs older than `retention` (and their steps); how many went.
    pub async fn prune(
        &self,
        now: DateTime<Utc>,
        retention: Duration,
    ) -> Result<usize, StoreError> {
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = now
            .checked_sub_signed(retention)
            .map(millis)
            .unwrap_or(i64::MIN);
        self.store
            .write(move |c| {
                let tx = c.transaction()?;
                tx.execute(
                    "DELETE FROM agent_steps WHERE run_id IN \
                     (SELECT id FROM agent_runs WHERE created_at < ?1)",
                    [cutoff],
                )?;
                let gone = tx.execute("DELETE FROM agent_runs WHERE created_at < ?1", [cutoff])?;
                tx.commit()?;
                Ok(gone)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db.sqlite")).unwrap();
        store.migrate().unwrap();
        (dir, store)
    }

    fn run() -> RunTrace {
        RunTrace {
            repo: "o/r".into(),
            channel: "C1".into(),
            thread_ts: "1.2".into(),
            specialist: Some("researcher".into()),
            model: Some("m".into()),
            provider: Some("anthropic".into()),
            fallback_used: false,
            tokens_in: 10,
            tokens_out: 5,
            tokens_cache: 0,
            llm_calls: 2,
            latency_ms: 30,
            llm_latency_ms: 20,
            outcome: "answered".into(),
            detail: None,
            steps: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_run_round_trips_with_bounded_steps() {
        let (_dir, store) = store();
        let traces = Traces::new(store);
        let mut r = run();
        r.step(
            "route",
            "{\"specialist\":\"researcher\"}",
            "researcher",
            true,
        );
        r.step("get_issue", &"x".repeat(MAX_STEP_CHARS * 2), "nope", false);
        let id = traces.record(&r, Utc::now()).await.unwrap();
        let got = traces.get(id.0).await.unwrap().unwrap();
        assert_eq!(got.run.steps.len(), 2);
        assert_eq!(got.run.steps[0].tool, "route");
        assert!(got.run.steps[1].input.chars().count() < MAX_STEP_CHARS + 50);
        assert!(!got.run.steps[1].ok);
        assert_eq!(got.run.tokens_in, 10);
        assert!(traces.get(id.0 + 100).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn pruning_keeps_the_retention_window() {
        let (_dir, store) = store();
        let traces = Traces::new(store);
        let now = Utc::now();
        let day = Duration::from_secs(24 * 3600);
        let mut old = run();
        old.step("route", "{}", "x", true);
        let old_id = traces
            .record(&old, now - chrono::Duration::days(15))
            .await
            .unwrap();
        let new_id = traces
            .record(&run(), now - chrono::Duration::days(13))
            .await
            .unwrap();
        assert_eq!(traces.prune(now, 14 * day).await.unwrap(), 1);
        assert!(traces.get(old_id.0).await.unwrap().is_none());
        assert!(traces.get(new_id.0).await.unwrap().is_some());
        // A retention too large for the clock keeps everything, and does not panic.
        assert_eq!(traces.prune(now, Duration::MAX).await.unwrap(), 0);
    }
}
