//! The agent's conversations (`migrations/0013_slack_conversations.sql`): every message the
//! module reads in a tenant's channel, and its own answers, stored by thread, so that a run reads
//! the thread from SQLite instead of asking Slack again; per thread a short summary of what the
//! agent did; and the link between a conversation and the issue the agent filed from it.

use productbuilder_store::rusqlite::{self, Connection, OptionalExtension, params};
use productbuilder_store::{Store, StoreError};

use crate::db;
use crate::worker::now;

/// The most messages of a thread a run is given (the newest).
pub const MAX_MESSAGES: usize = 50;
/// The most of a stored message, in characters (Slack allows 40 000).
const MAX_TEXT_CHARS: usize = 4000;
/// The most of a summary, in characters (the oldest part goes first).
const MAX_SUMMARY_CHARS: usize = 1000;

/// One message of a thread, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub ts: String,
    /// The author's user id (the bot's own for its answers; a bot id for other integrations).
    pub user: String,
    /// This bot wrote it (not another integration).
    pub from_bot: bool,
    pub text: String,
}

/// Slack timestamps compare as numbers ("1700000000.000100").
pub fn ts_key(ts: &str) -> (u64, u64) {
    let (s, f) = ts.split_once('.').unwrap_or((ts, "0"));
    (s.parse().unwrap_or(0), f.parse().unwrap_or(0))
}

fn bounded(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Stores a message of `thread_ts` (its own ts for a top-level message); a message stored before
/// is kept as it was.
pub fn remember(
    c: &Connection,
    channel: &str,
    thread_ts: &str,
    message: &StoredMessage,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO slack_messages (channel, ts, thread_ts, user, from_bot, text)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            channel,
            message.ts,
            thread_ts,
            message.user,
            message.from_bot as i64,
            bounded(&message.text, MAX_TEXT_CHARS)
        ],
    )?;
    Ok(())
}

/// The thread up to and including `until` (its newest [`MAX_MESSAGES`]), oldest first.
pub fn messages(
    c: &Connection,
    channel: &str,
    thread_ts: &str,
    until: &str,
) -> rusqlite::Result<Vec<StoredMessage>> {
    let mut stmt = c.prepare(
        "SELECT ts, user, from_bot, text FROM slack_messages WHERE channel = ?1 AND thread_ts = ?2",
    )?;
    let rows = stmt.query_map(params![channel, thread_ts], |r| {
        Ok(StoredMessage {
            ts: r.get(0)?,
            user: r.get(1)?,
            from_bot: r.get::<_, i64>(2)? != 0,
            text: r.get(3)?,
        })
    })?;
    let mut out: Vec<StoredMessage> = rows
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter(|m| ts_key(&m.ts) <= ts_key(until))
        .collect();
    out.sort_by_key(|m| ts_key(&m.ts));
    let skip = out.len().saturating_sub(MAX_MESSAGES);
    Ok(out.split_off(skip))
}

/// What the agent did in the thread so far, if anything.
pub fn summary(c: &Connection, channel: &str, thread_ts: &str) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT summary FROM slack_conversations WHERE channel = ?1 AND thread_ts = ?2",
        params![channel, thread_ts],
        |r| r.get(0),
    )
    .optional()
}

/// Appends `line` to the thread's summary (keeping its newest [`MAX_SUMMARY_CHARS`]).
pub fn add_to_summary(
    c: &Connection,
    channel: &str,
    thread_ts: &str,
    line: &str,
) -> rusqlite::Result<()> {
    let mut text = summary(c, channel, thread_ts)?.unwrap_or_default();
    if !text.is_empty() {
        text.push_str("; ");
    }
    text.push_str(line.trim());
    let skip = text.chars().count().saturating_sub(MAX_SUMMARY_CHARS);
    let text: String = text.chars().skip(skip).collect();
    c.execute(
        "INSERT INTO slack_conversations (channel, thread_ts, summary) VALUES (?1, ?2, ?3)
         ON CONFLICT (channel, thread_ts) DO UPDATE SET summary = excluded.summary",
        params![channel, thread_ts, text],
    )?;
    Ok(())
}

/// Forgets the stored messages older than `cutoff` (unix seconds; a message's ts is its time),
/// and the summaries of conversations with no message left; how many messages went.
pub async fn forget_before(store: &Store, cutoff: i64) -> Result<usize, StoreError> {
    store
        .write(move |c| {
            let gone = c.execute(
                "DELETE FROM slack_messages
                 WHERE CAST(substr(ts, 1, instr(ts || '.', '.') - 1) AS INTEGER) < ?1",
                params![cutoff],
            )?;
            c.execute(
                "DELETE FROM slack_conversations WHERE NOT EXISTS (
                   SELECT 1 FROM slack_messages m
                   WHERE m.channel = slack_conversations.channel
                     AND m.thread_ts = slack_conversations.thread_ts)",
                [],
            )?;
            Ok(gone)
        })
        .await
}

/// Before the agent files `title` from the conversation `thread_ts`: a Slack pass that sees the
/// new issue before [`adopt`] ran gives it this thread instead of a second one.
pub async fn intend_adoption(
    store: &Store,
    repo: &str,
    channel: &str,
    thread_ts: &str,
    title: &str,
) -> Result<(), StoreError> {
    let (repo, channel, thread, title) = (
        repo.to_owned(),
        channel.to_owned(),
        thread_ts.to_owned(),
        title.to_owned(),
    );
    store
        .write(move |c| db::intend_adoption(c, &repo, &channel, &thread, &title, now()))
        .await
}

/// After the agent filed issue `number` from the conversation `thread_ts`: the conversation is
/// the thread from now on.
pub async fn adopt(
    store: &Store,
    repo: &str,
    number: u64,
    channel: &str,
    thread_ts: &str,
) -> Result<(), StoreError> {
    let (repo, channel, thread) = (repo.to_owned(), channel.to_owned(), thread_ts.to_owned());
    store
        .write(move |c| db::adopt(c, &repo, number, &channel, &thread))
        .await
}

/// The item whose thread `thread_ts` is (an issue's or pull request's, or a conversation the
/// agent filed an issue from).
pub async fn item_of_thread(
    store: &Store,
    channel: &str,
    thread_ts: &str,
) -> Result<Option<u64>, StoreError> {
    let (channel, thread) = (channel.to_owned(), thread_ts.to_owned());
    store
        .read(move |c| db::item_of_thread(c, &channel, &thread))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(ts: &str, text: &str) -> StoredMessage {
        StoredMessage {
            ts: ts.into(),
            user: "U1".into(),
            from_bot: false,
            text: text.into(),
        }
    }

    #[tokio::test]
    async fn a_thread_is_read_oldest_first_up_to_the_mention_and_forgotten_when_old() {
        let store = Store::in_memory().unwrap();
        store.migrate().unwrap();
        store
            .write(|c| {
                // Stored out of order, with a later message the mention must not see.
                remember(c, "C1", "100.000001", &message("100.000010", "b"))?;
                remember(c, "C1", "100.000001", &message("100.000001", "a"))?;
                remember(c, "C1", "100.000001", &message("200.000000", "later"))?;
                remember(
                    c,
                    "C1",
                    "300.000000",
                    &message("300.000000", "other thread"),
                )?;
                // A message stored again is kept as it was.
                remember(c, "C1", "100.000001", &message("100.000001", "changed"))?;
                add_to_summary(c, "C1", "100.000001", "created #1")?;
                add_to_summary(c, "C1", "100.000001", "started build 2 for #1")
            })
            .await
            .unwrap();
        let (thread, said) = store
            .read(|c| {
                Ok((
                    messages(c, "C1", "100.000001", "100.000010")?,
                    summary(c, "C1", "100.000001")?,
                ))
            })
            .await
            .unwrap();
        let texts: Vec<&str> = thread.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["a", "b"]);
        assert_eq!(said.as_deref(), Some("created #1; started build 2 for #1"));
        assert_eq!(forget_before(&store, 250).await.unwrap(), 3);
        let (left, said) = store
            .read(|c| {
                Ok((
                    messages(c, "C1", "300.000000", "999.0")?,
                    summary(c, "C1", "100.000001")?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(said, None, "a forgotten conversation's summary goes too");
    }
}
