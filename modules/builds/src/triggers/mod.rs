//! Builds started on GitHub: the builds label added to an issue, or a comment whose first line is
//! `/productbuilder implement` (on an issue: a new branch and pull request; on a pull request:
//! more commits on its branch) or `/productbuilder continue`, each only from a writer (write,
//! maintain or admin, as the collaborator permission endpoint says; for a label, the issue events
//! say who added it).
//!
//! `worker:build-triggers:{owner}/{name}` reads what the GitHub pollers stored, asks [`decide`]
//! which labels and comments are new, asks GitHub who gave them, and enqueues a build for each
//! one a writer gave. Every trigger is recorded once (`build_triggers`) with its outcome; the
//! queue keeps one active build per issue or pull request, so a second trigger while one runs
//! joins it. The first pass records what is already there as `predates`: enabling builds on a
//! busy repository starts nothing for old labels and comments (by ids, not by comparing GitHub's
//! clock with ours).

pub mod decide;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use productbuilder_github::{GithubError, GithubState};
use productbuilder_store::StoreError;
use productbuilder_store::rusqlite::{self, Connection, OptionalExtension, params};

use crate::queue::{Queue, QueueError};
use crate::records::BuildId;
use crate::spec::BuildSpec;
use decide::{Candidate, Command, Comment, Item, Seen};

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("reading GitHub: {0}")]
    Github(#[from] GithubError),
    #[error("the build queue: {0}")]
    Queue(#[from] QueueError),
    #[error("the database: {0}")]
    Store(#[from] StoreError),
}

/// What became of a trigger (`build_triggers.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::AsRefStr)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    /// A new build.
    Started,
    /// The issue or pull request had an active build: this trigger joined it.
    Joined,
    /// Its author may not write to the repository.
    Refused,
    /// It was there at the repository's first pass.
    Predates,
}

/// A trigger the pass considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Considered {
    pub number: u64,
    /// `label:{event id}` or `comment:{comment id}`.
    pub source: String,
    pub given_by: String,
    pub outcome: Outcome,
    /// The build it started or joined.
    pub build: Option<BuildId>,
}

/// The triggers worker's parts.
#[derive(Clone)]
pub struct Triggers {
    pub github: GithubState,
    pub queue: Queue,
    /// `[builds] label`.
    pub label: String,
    /// Per repository, the labelled issues whose events were read, at which `updated_at`.
    events_read: Arc<Mutex<HashMap<String, BTreeMap<u64, String>>>>,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Triggers {
    pub fn new(github: GithubState, queue: Queue, label: impl Into<String>) -> Triggers {
        Triggers {
            github,
            queue,
            label: label.into(),
            events_read: Arc::default(),
        }
    }

    /// One pass for `repo`: every new trigger considered once, in order.
    pub async fn pass(
        &self,
        repo: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Considered>, TriggerError> {
        let r = repo.to_owned();
        let (first, items, comments, sources) = self
            .github
            .store
            .read(move |c| {
                Ok((
                    !started(c, &r)?,
                    items(c, &r)?,
                    comments(c, &r)?,
                    sources(c, &r)?,
                ))
            })
            .await?;
        let seen = Seen {
            sources,
            events_read: self.events_read_of(repo),
        };
        let own_login = self.github.client.own_login(repo).await.ok();
        let found = decide::candidates(&items, &comments, &seen, &self.label, own_login.as_deref());
        let mut considered = Vec::new();
        for candidate in found {
            match self
                .consider(repo, &seen, candidate.clone(), first, now)
                .await
            {
                Ok(Some(c)) => considered.push(c),
                Ok(None) => {}
                // GitHub refused this one for good (its issue gone, no access to its events):
                // the others go on; it is looked at again only when its item changes.
                Err(TriggerError::Github(e)) if is_permanent(&e) => {
                    tracing::warn!(repo, ?candidate, error = %e, "builds: a trigger could not be read; skipped");
                    if let Candidate::Labelled { number, updated_at } = candidate {
                        self.mark_events_read(repo, number, updated_at);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if first {
            let (r, at) = (repo.to_owned(), rfc3339(now));
            self.github
                .store
                .write(move |c| {
                    c.execute(
                        "INSERT OR IGNORE INTO build_trigger_start (repo, started_at) VALUES (?1, ?2)",
                        params![r, at],
                    )
                })
                .await?;
            tracing::info!(
                repo,
                predates = considered.len(),
                "builds: first triggers pass; the labels and commands already there start nothing"
            );
        }
        Ok(considered)
    }

    fn events_read_of(&self, repo: &str) -> BTreeMap<u64, String> {
        let all = self.events_read.lock().unwrap_or_else(|e| e.into_inner());
        all.get(repo).cloned().unwrap_or_default()
    }

    fn mark_events_read(&self, repo: &str, number: u64, updated_at: String) {
        let mut all = self.events_read.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(repo.to_owned())
            .or_default()
            .insert(number, updated_at);
    }

    /// Whether `login` may start builds; a permission GitHub will not tell (a permanent error)
    /// counts as no, so the trigger is recorded as refused rather than asked about every pass.
    async fn writer(&self, repo: &str, login: &str) -> Result<bool, TriggerError> {
        match self.github.client.can_write(repo, login).await {
            Ok(writer) => Ok(writer),
            Err(e) if is_permanent(&e) => {
                tracing::warn!(repo, login, error = %e, "builds: could not read a permission; counted as no write access");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn consider(
        &self,
        repo: &str,
        seen: &Seen,
        candidate: Candidate,
        first: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<Considered>, TriggerError> {
        let (number, source, given_by, given_at, spec) = match candidate {
            Candidate::Labelled { number, updated_at } => {
                let events = self.github.client.label_events(repo, number).await?;
                let added = events
                    .into_iter()
                    .filter(|e| e.event == "labeled" && e.label.eq_ignore_ascii_case(&self.label))
                    .max_by_key(|e| e.id);
                self.mark_events_read(repo, number, updated_at);
                let Some(added) = added else {
                    return Ok(None);
                };
                let source = format!("label:{}", added.id);
                if seen.sources.contains(&source) {
                    return Ok(None);
                }
                (
                    number,
                    source,
                    added.actor,
                    added.created_at,
                    for_issue(number, ""),
                )
            }
            Candidate::Commented {
                number,
                id,
                author,
                created_at,
                command,
                on_pull,
            } => {
                let note = match &command {
                    Command::Implement { note } | Command::Continue { note } => note.as_str(),
                };
                let spec = if on_pull {
                    for_pull(number, note)
                } else {
                    for_issue(number, note)
                };
                (number, format!("comment:{id}"), author, created_at, spec)
            }
        };
        let (outcome, build) = if first {
            (Outcome::Predates, None)
        } else if !self.writer(repo, &given_by).await? {
            tracing::info!(repo, number, %source, by = %given_by,
                "builds: ignored, its author may not write to the repository");
            (Outcome::Refused, None)
        } else {
            let enqueued = self.queue.enqueue(repo, Some(number), spec, now).await?;
            let id = enqueued.build.id;
            if enqueued.created {
                tracing::info!(repo, number, %source, by = %given_by, build = id.0,
                    "builds: a writer started a build");
                (Outcome::Started, Some(id))
            } else {
                tracing::info!(repo, number, %source, by = %given_by, build = id.0,
                    "builds: a build already runs for this item; the trigger joins it");
                (Outcome::Joined, Some(id))
            }
        };
        let considered = Considered {
            number,
            source,
            given_by,
            outcome,
            build,
        };
        let (r, c, at) = (repo.to_owned(), considered.clone(), rfc3339(now));
        self.github
            .store
            .write(move |conn| record(conn, &r, &c, &given_at, &at))
            .await?;
        Ok(Some(considered))
    }
}

/// A 4xx other than a rate limit: asking again will not help.
fn is_permanent(e: &GithubError) -> bool {
    e.status().is_some_and(|s| (400..500).contains(&s)) && !e.is_transient()
}

/// A build for issue `number`: its text reaches the agent through the prompt the runner writes.
fn for_issue(number: u64, note: &str) -> BuildSpec {
    let mut spec = BuildSpec::new(if note.is_empty() {
        format!("Implement issue #{number}.")
    } else {
        format!("Implement issue #{number}: {note}")
    });
    spec.issue = Some(number);
    spec
}

/// More commits on pull request `number`'s branch, with its review comments in the prompt.
fn for_pull(number: u64, note: &str) -> BuildSpec {
    let mut spec = BuildSpec::new(if note.is_empty() {
        format!("Go on with pull request #{number}: address its review comments.")
    } else {
        format!("Go on with pull request #{number}: {note}")
    });
    spec.pull_request = Some(number);
    spec
}

/// Whether the repository's first pass is done.
fn started(c: &Connection, repo: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT 1 FROM build_trigger_start WHERE repo = ?1",
        [repo],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

fn items(c: &Connection, repo: &str) -> rusqlite::Result<Vec<Item>> {
    let mut stmt = c.prepare(
        "SELECT number, is_pull, state, labels, updated_at FROM issues WHERE repo = ?1 ORDER BY number",
    )?;
    let rows = stmt.query_map([repo], |r| {
        let labels: String = r.get(3)?;
        Ok(Item {
            number: r.get::<_, i64>(0)? as u64,
            is_pull: r.get::<_, i64>(1)? != 0,
            open: r.get::<_, String>(2)? == "open",
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            updated_at: r.get(4)?,
        })
    })?;
    rows.collect()
}

fn comments(c: &Connection, repo: &str) -> rusqlite::Result<Vec<Comment>> {
    // Only comments that may hold a command: a body is read only when it starts like one.
    let mut stmt = c.prepare(
        "SELECT id, issue_number, author, body, created_at FROM comments
         WHERE repo = ?1 AND ltrim(body) LIKE '/productbuilder%'",
    )?;
    let rows = stmt.query_map([repo], |r| {
        Ok(Comment {
            id: r.get::<_, i64>(0)? as u64,
            number: r.get::<_, i64>(1)? as u64,
            author: r.get(2)?,
            body: r.get(3)?,
            created_at: r.get(4)?,
        })
    })?;
    rows.collect()
}

fn sources(c: &Connection, repo: &str) -> rusqlite::Result<std::collections::BTreeSet<String>> {
    let mut stmt = c.prepare("SELECT source FROM build_triggers WHERE repo = ?1")?;
    let rows = stmt.query_map([repo], |r| r.get(0))?;
    rows.collect()
}

fn record(
    c: &Connection,
    repo: &str,
    t: &Considered,
    given_at: &str,
    now: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO build_triggers
         (repo, source, number, given_by, given_at, outcome, build_id, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            repo,
            t.source,
            t.number as i64,
            t.given_by,
            given_at,
            t.outcome.as_ref(),
            t.build.map(|b| b.0),
            now
        ],
    )
    .map(drop)
}
