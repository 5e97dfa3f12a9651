//! The Slack module's rows (`migrations/0008_slack.sql`) and its reads of what the GitHub poller
//! and the previews stored. Every function takes a connection: the worker decides which run in
//! one transaction.

use std::collections::{BTreeMap, BTreeSet};

use productbuilder_store::rusqlite::{self, Connection, OptionalExtension, params};

use crate::decide::{Adoption, Comment, Thread};
use crate::text::{BuildView, Item, ItemState, Kind, PreviewView};

/// An item and when it last changed (unix seconds), as the GitHub poller stored it.
#[derive(Debug, Clone)]
pub struct StoredItem {
    pub item: Item,
    pub updated_at: Option<u64>,
}

fn unix(rfc3339: Option<String>) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(rfc3339?.trim_end_matches('Z')).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// The repository's pull requests (open, and closed since) and issues, as polled.
pub fn items(c: &Connection, repo: &str, web: &str) -> rusqlite::Result<Vec<StoredItem>> {
    let mut out = Vec::new();
    let mut pulls = c.prepare(
        "SELECT number, state, title, author, updated_at, merged_at FROM pulls WHERE repo = ?1 ORDER BY number",
    )?;
    let rows = pulls.query_map([repo], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    let mut numbers = BTreeSet::new();
    for row in rows {
        let (number, state, title, author, updated_at, merged_at) = row?;
        numbers.insert(number);
        out.push(StoredItem {
            item: Item {
                repo: repo.to_owned(),
                number: number as u64,
                kind: Kind::Pull,
                title,
                author,
                state: match (state.as_str(), merged_at) {
                    ("open", _) => ItemState::Open,
                    (_, Some(_)) => ItemState::Merged,
                    (_, None) => ItemState::Closed,
                },
                url: format!("{web}/{repo}/pull/{number}"),
            },
            updated_at: unix(updated_at),
        });
    }
    let mut issues = c.prepare(
        "SELECT number, state, title, author, updated_at FROM issues WHERE repo = ?1 AND is_pull = 0 ORDER BY number",
    )?;
    let rows = issues.query_map([repo], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    for row in rows {
        let (number, state, title, author, updated_at) = row?;
        if numbers.contains(&number) {
            continue;
        }
        out.push(StoredItem {
            item: Item {
                repo: repo.to_owned(),
                number: number as u64,
                kind: Kind::Issue,
                title,
                author,
                state: if state == "open" {
                    ItemState::Open
                } else {
                    ItemState::Closed
                },
                url: format!("{web}/{repo}/issues/{number}"),
            },
            updated_at: unix(updated_at),
        });
    }
    out.sort_by_key(|i| i.item.number);
    Ok(out)
}

/// The comments on the repository's items, oldest first.
pub fn comments(c: &Connection, repo: &str, web: &str) -> rusqlite::Result<Vec<Comment>> {
    let mut stmt = c.prepare(
        "SELECT id, issue_number, author, body FROM comments WHERE repo = ?1 ORDER BY created_at, id",
    )?;
    let rows = stmt.query_map([repo], |r| {
        let id: i64 = r.get(0)?;
        let number: i64 = r.get(1)?;
        Ok(Comment {
            id,
            number: number as u64,
            author: r.get(2)?,
            body: r.get(3)?,
            url: format!("{web}/{repo}/issues/{number}#issuecomment-{id}"),
        })
    })?;
    rows.collect()
}

/// Each pull request's preview, as the preview module's rows say.
pub fn previews(c: &Connection, repo: &str) -> rusqlite::Result<BTreeMap<u64, PreviewView>> {
    Ok(productbuilder_preview::db::rows(c, Some(repo))?
        .into_iter()
        .map(|row| {
            (
                row.number,
                PreviewView {
                    status: row.status.as_str().to_owned(),
                    url: row.url,
                    stage: row.stage.map(|s| s.as_str().to_owned()),
                    error: row.error,
                },
            )
        })
        .collect())
}

/// Each item's latest build (the builds module's rows; empty before any build).
pub fn builds(c: &Connection, repo: &str) -> rusqlite::Result<BTreeMap<u64, BuildView>> {
    let mut stmt = c.prepare(
        "SELECT id, number, status, result, error FROM builds
         WHERE repo = ?1 AND number IS NOT NULL ORDER BY id",
    )?;
    let rows = stmt.query_map([repo], |r| {
        let result: Option<String> = r.get(3)?;
        let result: serde_json::Value = result
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let text = |field: &str| {
            result
                .get(field)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Ok((
            r.get::<_, i64>(1)? as u64,
            BuildView {
                id: r.get(0)?,
                status: r.get(2)?,
                pr_number: result.get("pr_number").and_then(|v| v.as_u64()),
                pr_url: text("pr_url"),
                preview_url: text("preview_url"),
                error: r.get::<_, Option<String>>(4)?.or_else(|| text("error")),
            },
        ))
    })?;
    // Oldest first: the latest build of each item wins.
    rows.collect()
}

pub fn first_pass(c: &Connection, repo: &str) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT first_pass_at FROM slack_tenants WHERE repo = ?1",
        [repo],
        |r| r.get(0),
    )
    .optional()
}

/// Records the tenant's first pass and the items that will never get a thread.
pub fn begin(c: &Connection, repo: &str, now: &str, skipped: &[u64]) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO slack_tenants (repo, first_pass_at) VALUES (?1, ?2)",
        params![repo, now],
    )?;
    for n in skipped {
        c.execute(
            "INSERT OR IGNORE INTO slack_skipped (repo, number) VALUES (?1, ?2)",
            params![repo, *n as i64],
        )?;
    }
    Ok(())
}

pub fn skipped(c: &Connection, repo: &str) -> rusqlite::Result<BTreeSet<u64>> {
    let mut stmt = c.prepare("SELECT number FROM slack_skipped WHERE repo = ?1")?;
    let rows = stmt.query_map([repo], |r| r.get::<_, i64>(0))?;
    rows.map(|n| n.map(|n| n as u64)).collect()
}

pub fn threads(c: &Connection, repo: &str) -> rusqlite::Result<BTreeMap<u64, Thread>> {
    let mut stmt = c.prepare(
        "SELECT number, parent_ts, parent_text, status_ts, status_text, adopted FROM slack_threads WHERE repo = ?1",
    )?;
    let rows = stmt.query_map([repo], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            Thread {
                parent_ts: r.get(1)?,
                parent_text: r.get(2)?,
                status_ts: r.get(3)?,
                status_text: r.get(4)?,
                adopted: r.get::<_, i64>(5)? != 0,
            },
        ))
    })?;
    rows.collect()
}

/// One recorded message key of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub number: u64,
    pub key: String,
    pub ts: Option<String>,
    /// Unix seconds.
    pub intended_at: i64,
}

pub fn events(c: &Connection, repo: &str) -> rusqlite::Result<Vec<Recorded>> {
    let mut stmt = c.prepare(
        "SELECT number, key, CASE state WHEN 'sent' THEN ts END, intended_at FROM slack_events WHERE repo = ?1",
    )?;
    let rows = stmt.query_map([repo], |r| {
        Ok(Recorded {
            number: r.get::<_, i64>(0)? as u64,
            key: r.get(1)?,
            ts: r.get(2)?,
            intended_at: r.get::<_, String>(3)?.parse().unwrap_or(0),
        })
    })?;
    rows.collect()
}

pub fn intend(
    c: &Connection,
    repo: &str,
    number: u64,
    key: &str,
    now: i64,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO slack_events (repo, number, key, state, intended_at) VALUES (?1, ?2, ?3, 'intended', ?4)
         ON CONFLICT (repo, number, key) DO UPDATE SET intended_at = excluded.intended_at WHERE state = 'intended'",
        params![repo, number as i64, key, now.to_string()],
    )?;
    Ok(())
}

pub fn mark_sent(
    c: &Connection,
    repo: &str,
    number: u64,
    key: &str,
    ts: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE slack_events SET state = 'sent', ts = ?4 WHERE repo = ?1 AND number = ?2 AND key = ?3",
        params![repo, number as i64, key, ts],
    )?;
    Ok(())
}

pub fn forget_intent(c: &Connection, repo: &str, number: u64, key: &str) -> rusqlite::Result<()> {
    c.execute(
        "DELETE FROM slack_events WHERE repo = ?1 AND number = ?2 AND key = ?3 AND state = 'intended'",
        params![repo, number as i64, key],
    )?;
    Ok(())
}

pub fn insert_thread(
    c: &Connection,
    repo: &str,
    number: u64,
    channel: &str,
    parent_ts: &str,
    parent_text: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR REPLACE INTO slack_threads (repo, number, channel, parent_ts, parent_text) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![repo, number as i64, channel, parent_ts, parent_text],
    )?;
    Ok(())
}

pub fn set_parent_text(
    c: &Connection,
    repo: &str,
    number: u64,
    text: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE slack_threads SET parent_text = ?3 WHERE repo = ?1 AND number = ?2",
        params![repo, number as i64, text],
    )?;
    Ok(())
}

pub fn set_status(
    c: &Connection,
    repo: &str,
    number: u64,
    ts: &str,
    text: Option<&str>,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE slack_threads SET status_ts = ?3, status_text = ?4 WHERE repo = ?1 AND number = ?2",
        params![repo, number as i64, ts, text],
    )?;
    Ok(())
}

/// Each item's thread: number → (channel, parent ts), for links to it.
pub fn thread_places(
    c: &Connection,
    repo: &str,
) -> rusqlite::Result<BTreeMap<u64, (String, String)>> {
    let mut stmt =
        c.prepare("SELECT number, channel, parent_ts FROM slack_threads WHERE repo = ?1")?;
    let rows = stmt.query_map([repo], |r| {
        Ok((r.get::<_, i64>(0)? as u64, (r.get(1)?, r.get(2)?)))
    })?;
    rows.collect()
}

/// How long an issue the agent is filing may wait to be adopted by its conversation.
const ADOPTION_WINDOW_SECS: i64 = 24 * 3600;

/// The issues the agent is filing from conversations of `repo`, newer than a day.
pub fn adoptions(c: &Connection, repo: &str, now: i64) -> rusqlite::Result<Vec<Adoption>> {
    let mut stmt = c.prepare(
        "SELECT thread_ts, title FROM slack_adoptions WHERE repo = ?1 AND intended_at > ?2 ORDER BY intended_at",
    )?;
    let rows = stmt.query_map(params![repo, now - ADOPTION_WINDOW_SECS], |r| {
        Ok(Adoption {
            thread_ts: r.get(0)?,
            title: r.get(1)?,
        })
    })?;
    rows.collect()
}

/// Records that the agent is about to file `title` from the conversation `thread_ts`.
pub fn intend_adoption(
    c: &Connection,
    repo: &str,
    channel: &str,
    thread_ts: &str,
    title: &str,
    now: i64,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO slack_adoptions (repo, channel, thread_ts, title, intended_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (repo, title) DO UPDATE SET channel = excluded.channel,
           thread_ts = excluded.thread_ts, intended_at = excluded.intended_at",
        params![repo, channel, thread_ts, title, now],
    )?;
    Ok(())
}

/// Makes the conversation `thread_ts` the thread of issue `number` (unless the issue has one
/// already) and forgets the conversation's pending adoption.
pub fn adopt(
    c: &Connection,
    repo: &str,
    number: u64,
    channel: &str,
    thread_ts: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO slack_threads (repo, number, channel, parent_ts, parent_text, adopted)
         VALUES (?1, ?2, ?3, ?4, '', 1)",
        params![repo, number as i64, channel, thread_ts],
    )?;
    c.execute(
        "DELETE FROM slack_adoptions WHERE repo = ?1 AND thread_ts = ?2",
        params![repo, thread_ts],
    )?;
    Ok(())
}

/// The item whose thread `thread_ts` is, if any.
pub fn item_of_thread(
    c: &Connection,
    channel: &str,
    thread_ts: &str,
) -> rusqlite::Result<Option<u64>> {
    c.query_row(
        "SELECT number FROM slack_threads WHERE channel = ?1 AND parent_ts = ?2 ORDER BY number LIMIT 1",
        params![channel, thread_ts],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|n| n.map(|n| n as u64))
}
