//! An answer to a mention, posted exactly once whichever way the mention was read (polling or
//! Socket Mode), also across a crash: the intent is recorded (`slack_answers`, keyed by the
//! channel and the mention's ts) before the answer is posted with the metadata key
//! `answer:{mention ts}`, and its ts after. A mention read again finds the recorded answer and
//! stops; an intent without a ts may have been posted and is looked up in the thread by its key.

use productbuilder_scheduler::{ErrorKind, UnitError};
use productbuilder_store::Store;
use productbuilder_store::rusqlite::{self, Connection, OptionalExtension, params};

use crate::api::SlackApi;

/// Where the answer goes.
pub struct Answer<'a> {
    pub channel: &'a str,
    /// The thread it goes into (the mention's own ts for a top-level mention).
    pub thread: &'a str,
    /// The ts of the message that mentioned the bot: the answer's identity.
    pub mention: &'a str,
    pub text: &'a str,
}

fn store_err(e: productbuilder_store::StoreError) -> UnitError {
    UnitError::new(ErrorKind::Internal, e.to_string())
}

/// Posts `answer` unless it was posted before; the ts of the answer either way.
pub async fn answer_once(
    api: &SlackApi,
    store: &Store,
    answer: &Answer<'_>,
) -> Result<String, UnitError> {
    let key = format!("answer:{}", answer.mention);
    let (channel, mention) = (answer.channel.to_owned(), answer.mention.to_owned());
    let recorded = store
        .read(move |c| answer_of(c, &channel, &mention))
        .await
        .map_err(store_err)?;
    let posted = match recorded {
        Some(Some(ts)) => return Ok(ts),
        Some(None) => api
            .find_by_key(answer.channel, Some(answer.thread), answer.mention, &key)
            .await
            .map_err(|e| e.into_unit_error())?,
        None => None,
    };
    let ts = match posted {
        Some(ts) => ts,
        None => {
            let (channel, mention) = (answer.channel.to_owned(), answer.mention.to_owned());
            store
                .write(move |c| intend_answer(c, &channel, &mention))
                .await
                .map_err(store_err)?;
            api.post(answer.channel, Some(answer.thread), answer.text, Some(&key))
                .await
                .map_err(|e| e.into_unit_error())?
        }
    };
    let (channel, mention, recorded_ts) = (
        answer.channel.to_owned(),
        answer.mention.to_owned(),
        ts.clone(),
    );
    store
        .write(move |c| answered(c, &channel, &mention, &recorded_ts))
        .await
        .map_err(store_err)?;
    Ok(ts)
}

/// `None`: never answered; `Some(None)`: an answer was intended, maybe posted; `Some(Some(ts))`:
/// answered.
fn answer_of(
    c: &Connection,
    channel: &str,
    mention: &str,
) -> rusqlite::Result<Option<Option<String>>> {
    c.query_row(
        "SELECT answer_ts FROM slack_answers WHERE channel = ?1 AND mention_ts = ?2",
        params![channel, mention],
        |r| r.get(0),
    )
    .optional()
}

fn intend_answer(c: &Connection, channel: &str, mention: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO slack_answers (channel, mention_ts) VALUES (?1, ?2)",
        params![channel, mention],
    )
    .map(drop)
}

fn answered(c: &Connection, channel: &str, mention: &str, ts: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO slack_answers (channel, mention_ts, answer_ts) VALUES (?1, ?2, ?3)
         ON CONFLICT (channel, mention_ts) DO UPDATE SET answer_ts = excluded.answer_ts",
        params![channel, mention, ts],
    )
    .map(drop)
}
