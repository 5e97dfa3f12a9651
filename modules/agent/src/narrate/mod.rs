//! The agent's narrator and closed loop (issue 12): what happens to the builds the agent
//! delegated from a Slack thread is told in that thread, and a failed preview gets a follow-up
//! build, within `[builds] max_fix_attempts`.
//!
//! - [`record_delegated`]: the integrator's call when `delegate_build` succeeded in a thread.
//! - [`decide`] (pure): from one repository's whole state, the messages and the fixes.
//! - [`text`] (pure): the messages' words, the fixes' prompts.
//! - [`check`]: what a ready preview answers, and the first lines of its logs.
//! - [`Narrator::pass`]: `worker:agent-loop:{owner}/{name}`: gathers, decides, applies.
//!
//! # Exactly once, across a kill
//! A message's events are recorded (`agent_narrations`, `posted_ts` NULL) before it is posted
//! with its key as Slack metadata, and completed after. A pass first settles what a kill left
//! behind: an intended message found in its thread by its key is completed, one not found is
//! forgotten and decided again. A fix is recorded (`agent_fixes`, keyed by the failed build and
//! the preview's head commit) before it is enqueued, and completed with the build's id after; an
//! intent without an id is settled by looking in the queue for a build on that pull request
//! enqueued since, and forgotten (decided again) when there is none.
//!
//! Why not `productbuilder_slack::answers::answer_once`: it looks a lost post up with the
//! mention's ts as `oldest`, and these keys are no ts (Slack answers `invalid_ts_oldest`); and
//! one message here settles several events at once.

pub mod check;
pub mod decide;
pub mod text;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use productbuilder_builds::{BuildId, BuildSpec, Queue, QueueError};
use productbuilder_scheduler::{ErrorKind, UnitError};
use productbuilder_slack::api::SlackApi;
use productbuilder_store::rusqlite::{self, Connection, OptionalExtension, params};
use productbuilder_store::{Store, StoreError};

use self::check::Checker;
use self::decide::{
    BuildView, Delegated, FixRecord, Message, PreviewView, StartFix, State, Tracked,
};

/// The most delegated builds of one repository a pass looks at (the newest).
pub const MAX_TRACKED: u32 = 200;
/// The most builds of a repository searched for a fix a kill left unrecorded.
const RECOVERY_LOOKBACK: u32 = 200;

/// Records that the agent delegated `build` for `repo`'s `issue` from the Slack thread
/// `thread_ts` in `channel`: from now on the thread hears of it. Idempotent: a second call for
/// the same build changes nothing.
pub async fn record_delegated(
    store: &Store,
    build: u64,
    repo: &str,
    issue: u64,
    channel: &str,
    thread_ts: &str,
) -> Result<(), StoreError> {
    let d = Delegated {
        build,
        issue,
        channel: channel.to_owned(),
        thread_ts: thread_ts.to_owned(),
        attempt: 0,
        follows: None,
    };
    let repo = repo.to_owned();
    store
        .write(move |c| insert_delegated(c, &repo, &d, Utc::now()))
        .await
}

fn sat(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn insert_delegated(
    c: &Connection,
    repo: &str,
    d: &Delegated,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO agent_builds \
         (build_id, repo, issue, channel, thread_ts, attempt, follows, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            sat(d.build),
            repo,
            sat(d.issue),
            d.channel,
            d.thread_ts,
            d.attempt,
            d.follows.map(sat),
            now.timestamp_millis()
        ],
    )
    .map(drop)
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    /// The messages posted (their keys).
    pub posted: Vec<String>,
    /// The follow-up builds started.
    pub fixes: Vec<u64>,
}

/// The narrator of one daemon. Cheap to clone.
#[derive(Clone)]
pub struct Narrator {
    pub store: Store,
    pub slack: SlackApi,
    pub queue: Queue,
    pub checker: Checker,
    /// `[builds] max_fix_attempts`.
    pub max_fix_attempts: u32,
}

fn queue_error(e: QueueError) -> UnitError {
    match e {
        QueueError::Store(e) => e.into(),
        e => UnitError::new(
            ErrorKind::Internal,
            format!("agent loop: the follow-up build was not queued: {e}"),
        ),
    }
}

impl Narrator {
    /// `worker:agent-loop:{owner}/{name}`: settles what a kill left, starts the fixes due, then
    /// posts one message per thread with what is new.
    pub async fn pass(&self, repo: &str) -> Result<Done, UnitError> {
        self.settle_posts(repo).await?;
        self.settle_fixes(repo).await?;
        let mut done = Done::default();
        // Fixes first, then the messages decided again: a failure and the fix it started are
        // one message. The second decision starts none (the first ones are recorded).
        let mut plan = decide::decide(&self.gather(repo).await?);
        if !plan.fixes.is_empty() {
            for fix in &plan.fixes {
                done.fixes.push(self.start_fix(repo, fix).await?);
            }
            plan = decide::decide(&self.gather(repo).await?);
        }
        // One thread Slack refuses (an archived channel) must not silence the others.
        let mut first_error = None;
        for message in &plan.messages {
            match self.post(repo, message).await {
                Ok(()) => done.posted.push(message.key().to_owned()),
                Err(e) => {
                    tracing::warn!(repo, channel = %message.channel, thread = %message.thread_ts,
                        error = %e, "agent loop: a message was not posted; tried again next pass");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// One repository's state, read in one transaction.
    pub async fn gather(&self, repo: &str) -> Result<State, UnitError> {
        let repo = repo.to_owned();
        let max_fix_attempts = self.max_fix_attempts;
        let state = self
            .store
            .read(move |c| {
                let tx = c.transaction()?;
                let mut state = read_state(&tx, &repo)?;
                state.max_fix_attempts = max_fix_attempts;
                Ok(state)
            })
            .await?;
        Ok(state)
    }

    /// Messages a kill left intended: found in their thread, they are completed; not found,
    /// forgotten, so that this pass decides them again.
    async fn settle_posts(&self, repo: &str) -> Result<(), UnitError> {
        let r = repo.to_owned();
        let pending: Vec<(String, String, String)> = self
            .store
            .read(move |c| {
                let mut stmt = c.prepare(
                    "SELECT DISTINCT message_key, channel, thread_ts FROM agent_narrations \
                     WHERE repo = ?1 AND posted_ts IS NULL",
                )?;
                let rows = stmt.query_map([r], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await?;
        for (message_key, channel, thread_ts) in pending {
            let found = self
                .slack
                .find_by_key(&channel, Some(&thread_ts), &thread_ts, &message_key)
                .await
                .map_err(|e| e.into_unit_error())?;
            tracing::info!(repo, %message_key, posted = found.is_some(),
                "agent loop: settled a message a stop left intended");
            self.store
                .write(move |c| match found {
                    Some(ts) => c.execute(
                        "UPDATE agent_narrations SET posted_ts = ?2 WHERE message_key = ?1",
                        params![message_key, ts],
                    ),
                    None => c.execute(
                        "DELETE FROM agent_narrations WHERE message_key = ?1 AND posted_ts IS NULL",
                        params![message_key],
                    ),
                })
                .await?;
        }
        Ok(())
    }

    /// Fixes a kill left intended: a build on the pull request enqueued since the intent is
    /// taken as the fix; without one, the intent is forgotten, so that this pass decides again.
    async fn settle_fixes(&self, repo: &str) -> Result<(), UnitError> {
        let r = repo.to_owned();
        let pending: Vec<(u64, String, u64, i64)> = self
            .store
            .read(move |c| {
                let mut stmt = c.prepare(
                    "SELECT failed_build, head_sha, pull_request, created_at FROM agent_fixes \
                     WHERE repo = ?1 AND fix_build IS NULL",
                )?;
                let rows = stmt.query_map([r], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get(1)?,
                        r.get::<_, i64>(2)? as u64,
                        r.get(3)?,
                    ))
                })?;
                rows.collect()
            })
            .await?;
        if pending.is_empty() {
            return Ok(());
        }
        let builds = self
            .queue
            .list(repo, RECOVERY_LOOKBACK)
            .await
            .map_err(queue_error)?;
        for (failed_build, head_sha, pr, since) in pending {
            let found = builds
                .iter()
                .filter(|b| {
                    b.spec.pull_request == Some(pr) && b.created_at.timestamp_millis() >= since
                })
                .min_by_key(|b| b.id.0)
                .map(|b| b.id.0 as u64);
            tracing::info!(repo, failed_build, pr, fix = ?found,
                "agent loop: settled a follow-up build a stop left intended");
            let r = repo.to_owned();
            self.store
                .write(move |c| {
                    let tx = c.transaction()?;
                    match found {
                        Some(fix) => {
                            let d = follow_up_of(&tx, failed_build, fix)?;
                            complete_fix(&tx, &r, failed_build, &head_sha, fix, d.as_ref())?;
                        }
                        None => {
                            tx.execute(
                                "DELETE FROM agent_fixes WHERE failed_build = ?1 AND head_sha = ?2 \
                                 AND fix_build IS NULL",
                                params![sat(failed_build), head_sha],
                            )?;
                        }
                    }
                    tx.commit()
                })
                .await?;
        }
        Ok(())
    }

    /// Records the intent, enqueues the follow-up build on the pull request, records it.
    async fn start_fix(&self, repo: &str, fix: &StartFix) -> Result<u64, UnitError> {
        let (r, failed, sha, pr) = (
            repo.to_owned(),
            sat(fix.failed_build),
            fix.head_sha.clone(),
            sat(fix.pr),
        );
        let now = Utc::now();
        self.store
            .write(move |c| {
                c.execute(
                    "INSERT OR IGNORE INTO agent_fixes \
                     (failed_build, head_sha, repo, pull_request, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![failed, sha, r, pr, now.timestamp_millis()],
                )
            })
            .await?;
        let mut spec = BuildSpec::new(text::fix_prompt(fix));
        spec.issue = Some(fix.issue);
        spec.pull_request = Some(fix.pr);
        let queued = self
            .queue
            .enqueue(repo, Some(fix.pr), spec, now)
            .await
            .map_err(queue_error)?;
        let id = queued.build.id.0 as u64;
        if !queued.created {
            tracing::info!(
                repo,
                pr = fix.pr,
                build = id,
                "agent loop: a build already runs on the pull request; it is taken as the fix"
            );
        }
        let d = Delegated {
            build: id,
            issue: fix.issue,
            channel: fix.channel.clone(),
            thread_ts: fix.thread_ts.clone(),
            attempt: fix.attempt,
            follows: Some(fix.failed_build),
        };
        let (r, failed, sha) = (repo.to_owned(), fix.failed_build, fix.head_sha.clone());
        self.store
            .write(move |c| {
                let tx = c.transaction()?;
                complete_fix(&tx, &r, failed, &sha, id, Some(&d))?;
                tx.commit()
            })
            .await?;
        tracing::info!(
            repo,
            pr = fix.pr,
            failed_build = fix.failed_build,
            build = id,
            attempt = fix.attempt,
            "agent loop: a follow-up build was started for a failed preview"
        );
        Ok(id)
    }

    /// Checks the ready previews the message tells of, then posts it once.
    async fn post(&self, repo: &str, message: &Message) -> Result<(), UnitError> {
        let mut seen = BTreeMap::new();
        for said in &message.said {
            if let decide::Event::PreviewReady { pr, url, .. } = &said.event {
                seen.insert(said.key.clone(), self.checker.check(repo, *pr, url).await);
            }
        }
        let text = text::render(message, &seen);
        let message_key = message.key().to_owned();
        let (r, m, now) = (repo.to_owned(), message.clone(), Utc::now());
        let mk = message_key.clone();
        self.store
            .write(move |c| {
                let tx = c.transaction()?;
                for said in &m.said {
                    tx.execute(
                        "INSERT OR IGNORE INTO agent_narrations \
                         (key, repo, channel, thread_ts, message_key, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![
                            said.key,
                            r,
                            m.channel,
                            m.thread_ts,
                            mk,
                            now.timestamp_millis()
                        ],
                    )?;
                }
                tx.commit()
            })
            .await?;
        let ts = self
            .slack
            .post(
                &message.channel,
                Some(&message.thread_ts),
                &text,
                Some(&message_key),
            )
            .await
            .map_err(|e| e.into_unit_error())?;
        self.store
            .write(move |c| {
                c.execute(
                    "UPDATE agent_narrations SET posted_ts = ?2 WHERE message_key = ?1",
                    params![message_key, ts],
                )
            })
            .await?;
        Ok(())
    }
}

/// The fix build `fix` as a delegated build following `failed_build` (in its thread, the
/// chain's next attempt); `None` when `failed_build` is not a delegated build.
fn follow_up_of(
    c: &Connection,
    failed_build: u64,
    fix: u64,
) -> rusqlite::Result<Option<Delegated>> {
    c.query_row(
        "SELECT issue, channel, thread_ts, attempt FROM agent_builds WHERE build_id = ?1",
        [sat(failed_build)],
        |r| {
            Ok(Delegated {
                build: fix,
                issue: r.get::<_, i64>(0)? as u64,
                channel: r.get(1)?,
                thread_ts: r.get(2)?,
                attempt: r.get::<_, u32>(3)? + 1,
                follows: Some(failed_build),
            })
        },
    )
    .optional()
}

fn complete_fix(
    c: &Connection,
    repo: &str,
    failed_build: u64,
    head_sha: &str,
    fix: u64,
    delegated: Option<&Delegated>,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE agent_fixes SET fix_build = ?3 WHERE failed_build = ?1 AND head_sha = ?2",
        params![sat(failed_build), head_sha, sat(fix)],
    )?;
    if let Some(d) = delegated {
        insert_delegated(c, repo, d, Utc::now())?;
    }
    Ok(())
}

/// The state of `repo` as [`decide::decide`] takes it (without `max_fix_attempts`).
fn read_state(c: &Connection, repo: &str) -> rusqlite::Result<State> {
    let mut stmt = c.prepare(
        "SELECT build_id, issue, channel, thread_ts, attempt, follows FROM agent_builds \
         WHERE repo = ?1 ORDER BY build_id DESC LIMIT ?2",
    )?;
    let delegated: Vec<Delegated> = stmt
        .query_map(params![repo, MAX_TRACKED], |r| {
            Ok(Delegated {
                build: r.get::<_, i64>(0)? as u64,
                issue: r.get::<_, i64>(1)? as u64,
                channel: r.get(2)?,
                thread_ts: r.get(3)?,
                attempt: r.get(4)?,
                follows: r.get::<_, Option<i64>>(5)?.map(|b| b as u64),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut builds = Vec::with_capacity(delegated.len());
    let mut pulls = BTreeSet::new();
    for d in delegated {
        let row = productbuilder_builds::records::get(c, BuildId(sat(d.build)))?
            .filter(|b| b.repo == repo);
        let build = row.map(|b| {
            let result = b.result.as_ref();
            BuildView {
                status: b.status,
                error: b.error.clone(),
                pr_number: result.and_then(|r| r.pr_number),
                pr_url: result.and_then(|r| r.pr_url.clone()),
                commit_sha: result.and_then(|r| r.commit_sha.clone()),
                continues: b.spec.pull_request,
            }
        });
        if let Some(b) = &build {
            pulls.extend(b.pr_number);
            pulls.extend(b.continues);
        }
        builds.push(Tracked {
            delegated: d,
            build,
        });
    }
    let mut previews = Vec::new();
    for number in pulls {
        if let Some(p) = productbuilder_preview::db::row(c, repo, number)? {
            previews.push(PreviewView {
                number,
                head_sha: p.head_sha,
                status: p.status,
                url: p.url,
                stage: p.stage,
                error: p.error,
                log_tail: p.log_tail,
            });
        }
    }
    let mut stmt = c.prepare("SELECT key FROM agent_narrations WHERE repo = ?1")?;
    let said = stmt
        .query_map([repo], |r| r.get(0))?
        .collect::<rusqlite::Result<BTreeSet<String>>>()?;
    let mut stmt = c.prepare("SELECT failed_build, head_sha FROM agent_fixes WHERE repo = ?1")?;
    let fixes = stmt
        .query_map([repo], |r| {
            Ok(FixRecord {
                failed_build: r.get::<_, i64>(0)? as u64,
                head_sha: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(State {
        builds,
        previews,
        said,
        fixes,
        max_fix_attempts: 0,
    })
}
