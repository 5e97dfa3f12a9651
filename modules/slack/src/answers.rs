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
    let text = answer.text.to_owned();
    answer_with(api, store, &answer.place(), |_| async move { Ok(text) })
        .await
        .map(|(ts, _)| ts)
}

/// Where an answer goes and what identifies it.
pub struct Place<'a> {
    pub channel: &'a str,
    pub thread: &'a str,
    pub mention: &'a str,
}

impl Answer<'_> {
    fn place(&self) -> Place<'_> {
        Place {
            channel: self.channel,
            thread: self.thread,
            mention: self.mention,
        }
    }
}

/// Like [`answer_once`], with the text made by `make` only when no answer was posted yet; the
/// intent is recorded before `make` runs, so work `make` does (an agent's run, which may write
/// to GitHub) is never done twice. The text `make` gave is recorded before it is posted: when the
/// post fails (Slack down) or the daemon dies, the next attempt posts that same text. Only when
/// the daemon died while `make` ran is it called again, with `resumed = true`, and must not redo
/// what it may have done. The answer's ts, and the text when this call posted it.
pub async fn answer_with<F, Fut>(
    api: &SlackApi,
    store: &Store,
    place: &Place<'_>,
    make: F,
) -> Result<(String, Option<String>), UnitError>
where
    F: FnOnce(bool) -> Fut,
    Fut: std::future::Future<Output = Result<String, UnitError>>,
{
    let key = format!("answer:{}", place.mention);
    let (channel, mention) = (place.channel.to_owned(), place.mention.to_owned());
    let recorded = store
        .read(move |c| answer_of(c, &channel, &mention))
        .await
        .map_err(store_err)?;
    let (posted, made, resumed) = match recorded {
        Some(Recorded { ts: Some(ts), .. }) => return Ok((ts, None)),
        Some(Recorded { ts: None, text }) => (
            api.find_by_key(place.channel, Some(place.thread), place.mention, &key)
                .await
                .map_err(|e| e.into_unit_error())?,
            text,
            true,
        ),
        None => {
            let (channel, mention) = (place.channel.to_owned(), place.mention.to_owned());
            store
                .write(move |c| intend_answer(c, &channel, &mention))
                .await
                .map_err(store_err)?;
            (None, None, false)
        }
    };
    let (ts, text) = match (posted, made) {
        (Some(ts), _) => (ts, None),
        (None, made) => {
            let text = match made {
                Some(text) => text,
                None => {
                    let text = make(resumed).await?;
                    let (channel, mention, t) = (
                        place.channel.to_owned(),
                        place.mention.to_owned(),
                        text.clone(),
                    );
                    store
                        .write(move |c| made_answer(c, &channel, &mention, &t))
                        .await
                        .map_err(store_err)?;
                    text
                }
            };
            let ts = api
                .post(place.channel, Some(place.thread), &text, Some(&key))
                .await
                .map_err(|e| e.into_unit_error())?;
            (ts, Some(text))
        }
    };
    let (channel, mention, recorded_ts) = (
        place.channel.to_owned(),
        place.mention.to_owned(),
        ts.clone(),
    );
    store
        .write(move |c| answered(c, &channel, &mention, &recorded_ts))
        .await
        .map_err(store_err)?;
    Ok((ts, text))
}

/// An answer as recorded.
struct Recorded {
    /// Posted, with this ts.
    ts: Option<String>,
    /// The text made, before it was posted.
    text: Option<String>,
}

fn made_answer(c: &Connection, channel: &str, mention: &str, text: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE slack_answers SET text = ?3 WHERE channel = ?1 AND mention_ts = ?2",
        params![channel, mention, text],
    )
    .map(drop)
}

/// `None`: never answered; otherwise what was recorded: an intent (maybe its text, maybe posted),
/// or the answer's ts.
fn answer_of(c: &Connection, channel: &str, mention: &str) -> rusqlite::Result<Option<Recorded>> {
    c.query_row(
        "SELECT answer_ts, text FROM slack_answers WHERE channel = ?1 AND mention_ts = ?2",
        params![channel, mention],
        |r| {
            Ok(Recorded {
                ts: r.get(0)?,
                text: r.get(1)?,
            })
        },
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
