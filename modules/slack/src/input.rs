//! Input by polling (no `app_token`): the mentions of the bot in a tenant's channel and in its
//! threads, answered in the thread of the message that mentioned it.
//!
//! Top-level messages come from `conversations.history` since a persisted cursor, every page
//! followed, so a page of 15 never hides a mention when more arrived. Replies come from
//! `conversations.replies` only for threads whose `latest_reply` moved past what was handled
//! (threads seen in history), and for the module's own threads and the conversations it answered
//! in, at most
//! `history_requests_per_minute` of those a pass, the least recently checked first: at one call a
//! minute a thread mention waits its turn, never lost (Socket Mode answers at once).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use productbuilder_scheduler::{ErrorKind, UnitError};
use productbuilder_store::Store;
use productbuilder_store::rusqlite::{self, Connection, OptionalExtension, params};

use tokio_util::sync::CancellationToken;

use crate::api::{Message, SlackApi};
use crate::conversation::ts_key;
use crate::respond::{Heard, Hearing, Responder, TenantView};

/// Who answers, where, with what it knows of the tenant.
pub struct Poll<'a> {
    pub api: &'a SlackApi,
    pub store: &'a Store,
    pub channel: &'a str,
    pub repo: &'a str,
    pub bot_user: &'a str,
    pub page_size: u32,
    /// `conversations.replies` calls this pass may spend on the module's own threads.
    pub thread_checks: usize,
    /// GitHub's web origin, for links.
    pub web: &'a str,
    /// The tenant's `[slack] writers`.
    pub writers: &'a [String],
    /// The agent, when `[llm]` is configured.
    pub responder: Option<&'a Arc<dyn Responder>>,
    pub cancel: &'a CancellationToken,
}

fn store_err(e: productbuilder_store::StoreError) -> UnitError {
    UnitError::new(ErrorKind::Internal, e.to_string())
}

fn cursor(c: &Connection, channel: &str, thread: &str) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT seen_ts FROM slack_cursors WHERE channel = ?1 AND thread_ts = ?2",
        [channel, thread],
        |r| r.get(0),
    )
    .optional()
}

fn set_cursor(c: &Connection, channel: &str, thread: &str, ts: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO slack_cursors (channel, thread_ts, seen_ts) VALUES (?1, ?2, ?3)
         ON CONFLICT (channel, thread_ts) DO UPDATE SET seen_ts = excluded.seen_ts",
        params![channel, thread, ts],
    )?;
    Ok(())
}

fn now_ts() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

impl Poll<'_> {
    /// One polling pass over the channel and its threads.
    pub async fn run(&self) -> Result<(), UnitError> {
        let channel = self.channel.to_owned();
        let since = self
            .store
            .read(move |c| cursor(c, &channel, ""))
            .await
            .map_err(store_err)?;
        let Some(since) = since else {
            // The first pass starts now: mentions from before Slack was enabled are not answered.
            let (channel, now) = (self.channel.to_owned(), now_ts());
            return self
                .store
                .write(move |c| set_cursor(c, &channel, "", &now))
                .await
                .map_err(store_err);
        };
        let mut top = Vec::new();
        let mut page_cursor: Option<String> = None;
        loop {
            let page = self
                .api
                .history(
                    self.channel,
                    Some(&since),
                    page_cursor.as_deref(),
                    self.page_size,
                )
                .await
                .map_err(|e| e.into_unit_error())?;
            top.extend(page.messages);
            match page.next_cursor {
                Some(next) => page_cursor = Some(next),
                None => break,
            }
        }
        top.retain(|m| ts_key(&m.ts) > ts_key(&since));
        top.sort_by_key(|m| ts_key(&m.ts));
        for m in &top {
            self.answer(m, &m.ts).await?;
            let (channel, ts) = (self.channel.to_owned(), m.ts.clone());
            self.store
                .write(move |c| set_cursor(c, &channel, "", &ts))
                .await
                .map_err(store_err)?;
        }
        // Threads: those seen in history whose latest_reply moved, then the module's own.
        let mut threads: Vec<(String, Option<String>)> = top
            .iter()
            .filter_map(|m| m.latest_reply.clone().map(|r| (m.ts.clone(), Some(r))))
            .collect();
        let (repo, channel, n, bot) = (
            self.repo.to_owned(),
            self.channel.to_owned(),
            self.thread_checks,
            self.bot_user.to_owned(),
        );
        let own: Vec<String> = self
            .store
            .read(move |c| {
                // The items' threads, and the conversations the bot answered in (a follow-up
                // there moves no top-level message, so history alone would never show it).
                let mut stmt = c.prepare(
                    "SELECT o.parent_ts FROM (
                       SELECT parent_ts FROM slack_threads WHERE repo = ?1 AND channel = ?2
                       UNION
                       SELECT thread_ts FROM slack_messages
                       WHERE channel = ?2 AND from_bot = 1 AND user = ?4 AND thread_ts != ts
                     ) o
                     LEFT JOIN slack_cursors k ON k.channel = ?2 AND k.thread_ts = o.parent_ts
                     ORDER BY k.seen_ts IS NOT NULL, k.seen_ts LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![repo, channel, n as i64, bot], |r| r.get(0))?;
                rows.collect()
            })
            .await
            .map_err(store_err)?;
        threads.extend(own.into_iter().map(|ts| (ts, None)));
        for (parent, latest) in threads {
            self.thread(&parent, latest.as_deref(), &since).await?;
        }
        Ok(())
    }

    async fn thread(
        &self,
        parent: &str,
        latest: Option<&str>,
        since: &str,
    ) -> Result<(), UnitError> {
        let (channel, p) = (self.channel.to_owned(), parent.to_owned());
        let seen = self
            .store
            .read(move |c| cursor(c, &channel, &p))
            .await
            .map_err(store_err)?
            .unwrap_or_else(|| since.to_owned());
        if latest.is_some_and(|l| ts_key(l) <= ts_key(&seen)) {
            return Ok(());
        }
        let mut replies = Vec::new();
        let mut page_cursor: Option<String> = None;
        loop {
            let page = self
                .api
                .replies(
                    self.channel,
                    parent,
                    Some(&seen),
                    page_cursor.as_deref(),
                    self.page_size,
                )
                .await
                .map_err(|e| e.into_unit_error())?;
            replies.extend(page.messages);
            match page.next_cursor {
                Some(next) => page_cursor = Some(next),
                None => break,
            }
        }
        // The parent comes on every page; only replies newer than the thread's cursor count.
        replies.retain(|m| m.ts != parent && ts_key(&m.ts) > ts_key(&seen));
        replies.sort_by_key(|m| ts_key(&m.ts));
        let mut last = seen;
        for m in &replies {
            self.answer(m, parent).await?;
            last = m.ts.clone();
        }
        let (channel, p) = (self.channel.to_owned(), parent.to_owned());
        self.store
            .write(move |c| set_cursor(c, &channel, &p, &last))
            .await
            .map_err(store_err)
    }

    /// Stores `m` in its thread and answers it when it mentions the bot.
    async fn answer(&self, m: &Message, thread: &str) -> Result<(), UnitError> {
        Hearing {
            api: self.api,
            store: self.store,
            bot_user: self.bot_user,
            responder: self.responder,
            cancel: self.cancel,
        }
        .hear(
            Some(TenantView {
                repo: self.repo,
                web: self.web,
                writers: self.writers,
            }),
            &Heard {
                channel: self.channel,
                thread,
                ts: &m.ts,
                user: m.user.as_deref(),
                bot_id: m.bot_id.as_deref(),
                text: &m.text,
            },
        )
        .await
    }
}
