//! What a message read in a channel leads to, whichever way it was read (polling or Socket
//! Mode): it is stored as part of its thread's conversation; a mention of the bot is answered
//! exactly once ([`crate::answers`]): a bare `status` or `help` by [`crate::mentions`] as the
//! contract says, anything else by the [`Responder`] (the agent) when one is configured and the
//! channel is a tenant's (by the help otherwise).
//!
//! The Slack module knows nothing of models or tools: the responder gets the stored thread and
//! who asked, and gives back plain text (escaped here: a reply can never ping `@channel`) and
//! links to what it wrote.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use productbuilder_scheduler::{ErrorKind, UnitError};
use productbuilder_store::Store;
use tokio_util::sync::CancellationToken;

use crate::answers::{Place, answer_with};
use crate::api::SlackApi;
use crate::conversation::{self, StoredMessage};
use crate::mentions::{self, Channel, Command, Mention};
use crate::text::{escape, link};

/// The most of a reply's own text posted, in characters.
const MAX_REPLY_CHARS: usize = 3000;

/// A mention to answer, with its thread as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// `owner/name`: the channel's tenant.
    pub repo: String,
    pub channel: String,
    pub thread_ts: String,
    /// The message to answer (the last of `messages`).
    pub mention_ts: String,
    /// The issue or pull request whose thread this is, if any.
    pub item: Option<u64>,
    /// The thread up to the mention, oldest first (its newest [`conversation::MAX_MESSAGES`]).
    pub messages: Vec<StoredMessage>,
    /// What the agent did in this thread before.
    pub summary: Option<String>,
    /// The mention's author.
    pub author: String,
    /// Whether the author is one of the tenant's `[slack] writers`.
    pub author_is_writer: bool,
    /// An earlier attempt to answer was interrupted (a crash, a restart): it may have written
    /// already, so nothing may be written again for this mention.
    pub resumed: bool,
}

/// A link the reply carries: a write the responder made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub label: String,
    pub url: Option<String>,
}

/// What the responder answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// Plain text (the module escapes it).
    pub text: String,
    /// Each write made, linked under the text.
    pub links: Vec<Link>,
    /// One line for the thread's summary, when something worth remembering happened.
    pub summary: Option<String>,
}

/// The future a responder returns.
pub type ReplyFuture<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

/// Answers a conversation (the agent; tests bring their own).
pub trait Responder: Send + Sync {
    /// Never fails: a failure is a reply saying so.
    fn respond<'a>(
        &'a self,
        conversation: &'a Conversation,
        cancel: &'a CancellationToken,
    ) -> ReplyFuture<'a>;
}

/// The channel's tenant, as an answer needs it.
#[derive(Clone, Copy)]
pub struct TenantView<'a> {
    pub repo: &'a str,
    /// GitHub's web origin, for links.
    pub web: &'a str,
    /// `[slack] writers` of the tenant.
    pub writers: &'a [String],
}

/// A message as read from Slack.
#[derive(Debug, Clone, Copy)]
pub struct Heard<'a> {
    pub channel: &'a str,
    /// The thread it belongs to (its own ts when top-level).
    pub thread: &'a str,
    pub ts: &'a str,
    pub user: Option<&'a str>,
    pub bot_id: Option<&'a str>,
    pub text: &'a str,
}

/// Who hears, and with what.
pub struct Hearing<'a> {
    pub api: &'a SlackApi,
    pub store: &'a Store,
    pub bot_user: &'a str,
    pub responder: Option<&'a Arc<dyn Responder>>,
    pub cancel: &'a CancellationToken,
}

fn store_err(e: productbuilder_store::StoreError) -> UnitError {
    UnitError::new(ErrorKind::Internal, e.to_string())
}

/// The text posted for `reply`: its text escaped and bounded, then one line per link. A mention
/// of one of `people` (`<@U…>`, the people of the thread) stays a mention, so that a question
/// can address the person who must answer it; any other `<…>` (`<!channel>`, a stranger, a
/// link) is shown as text.
pub fn render(reply: &Reply, people: &[&str]) -> String {
    let text: String = reply.text.trim().chars().take(MAX_REPLY_CHARS).collect();
    let mut out = escape(&text);
    for person in people {
        let escaped = format!("&lt;@{person}&gt;");
        if person.chars().all(|c| c.is_ascii_alphanumeric()) && out.contains(&escaped) {
            out = out.replace(&escaped, &format!("<@{person}>"));
        }
    }
    for l in &reply.links {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("• ");
        out.push_str(&match &l.url {
            Some(url) => link(url, &l.label),
            None => escape(&l.label),
        });
    }
    if out.is_empty() {
        out.push_str("(no answer)");
    }
    out
}

impl Hearing<'_> {
    /// Stores `heard` in its thread (when the channel is a tenant's) and answers it once when it
    /// mentions the bot.
    pub async fn hear(
        &self,
        tenant: Option<TenantView<'_>>,
        heard: &Heard<'_>,
    ) -> Result<(), UnitError> {
        if tenant.is_some() {
            self.remember(heard).await?;
        }
        self.answer(tenant, heard).await
    }

    /// Stores `heard` in its thread's conversation (a message of a tenant's channel), once; only
    /// with a responder, the one reader of conversations (the agent's pruning bounds them).
    pub async fn remember(&self, heard: &Heard<'_>) -> Result<(), UnitError> {
        if self.responder.is_none() {
            return Ok(());
        }
        let message = StoredMessage {
            ts: heard.ts.to_owned(),
            user: heard.user.or(heard.bot_id).unwrap_or("unknown").to_owned(),
            // This bot's own messages only: another integration's message is anyone's text
            // (it must never pass for the agent's own question, say a confirmation).
            from_bot: heard.user == Some(self.bot_user),
            text: heard.text.to_owned(),
        };
        self.store_message(heard, message).await
    }

    /// Writes `message` into the thread of `heard`.
    async fn store_message(
        &self,
        heard: &Heard<'_>,
        message: StoredMessage,
    ) -> Result<(), UnitError> {
        let (channel, thread) = (heard.channel.to_owned(), heard.thread.to_owned());
        self.store
            .write(move |c| conversation::remember(c, &channel, &thread, &message))
            .await
            .map_err(store_err)
    }

    /// Answers `heard` once when it mentions the bot.
    async fn answer(
        &self,
        tenant: Option<TenantView<'_>>,
        heard: &Heard<'_>,
    ) -> Result<(), UnitError> {
        let mention = Mention {
            text: heard.text,
            user: heard.user,
            bot_id: heard.bot_id,
        };
        let Some(command) = mentions::command(&mention, self.bot_user) else {
            return Ok(());
        };
        let place = Place {
            channel: heard.channel,
            thread: heard.thread,
            mention: heard.ts,
        };
        // The contract's `status` and `help` stay commands; everything else is the agent's.
        let agent = self
            .responder
            .filter(|_| mentions::bare_command(&mention, self.bot_user).is_none());
        let (ts, posted) = match (tenant, agent, heard.user) {
            (Some(t), Some(responder), Some(user)) => {
                answer_with(self.api, self.store, &place, |resumed| {
                    self.converse(t, heard, user, responder, resumed)
                })
                .await?
            }
            // The open pull requests are read only when the answer is still to be made.
            (Some(t), _, _) => {
                answer_with(self.api, self.store, &place, |_| self.command(command, t)).await?
            }
            (None, _, _) => {
                let text = mentions::answer(command, &Channel::Unknown { id: heard.channel });
                answer_with(self.api, self.store, &place, |_| async move { Ok(text) }).await?
            }
        };
        // The bot's answer is part of the thread (a later "yes" confirms its question).
        if let (Some(text), Some(_), Some(_)) = (posted, tenant, self.responder) {
            let message = StoredMessage {
                ts,
                user: self.bot_user.to_owned(),
                from_bot: true,
                text,
            };
            self.store_message(heard, message).await?;
        }
        Ok(())
    }

    async fn command(&self, command: Command, t: TenantView<'_>) -> Result<String, UnitError> {
        let pulls = crate::worker::open_pulls(self.store, t.repo, t.web).await?;
        Ok(mentions::answer(
            command,
            &Channel::Tenant {
                repo: t.repo,
                pulls: &pulls,
            },
        ))
    }

    /// The responder's answer to the thread, its summary line recorded.
    async fn converse(
        &self,
        t: TenantView<'_>,
        heard: &Heard<'_>,
        user: &str,
        responder: &Arc<dyn Responder>,
        resumed: bool,
    ) -> Result<String, UnitError> {
        let (channel, thread, until) = (
            heard.channel.to_owned(),
            heard.thread.to_owned(),
            heard.ts.to_owned(),
        );
        let (messages, summary, item) = self
            .store
            .read(move |c| {
                Ok((
                    conversation::messages(c, &channel, &thread, &until)?,
                    conversation::summary(c, &channel, &thread)?,
                    crate::db::item_of_thread(c, &channel, &thread)?,
                ))
            })
            .await
            .map_err(store_err)?;
        let conversation = Conversation {
            repo: t.repo.to_owned(),
            channel: heard.channel.to_owned(),
            thread_ts: heard.thread.to_owned(),
            mention_ts: heard.ts.to_owned(),
            item,
            messages,
            summary,
            author: user.to_owned(),
            author_is_writer: t.writers.iter().any(|w| w == user),
            resumed,
        };
        let reply = responder.respond(&conversation, self.cancel).await;
        let people: Vec<&str> = conversation
            .messages
            .iter()
            .filter(|m| !m.from_bot)
            .map(|m| m.user.as_str())
            .collect();
        if let Some(line) = reply.summary.clone() {
            let (channel, thread) = (heard.channel.to_owned(), heard.thread.to_owned());
            self.store
                .write(move |c| conversation::add_to_summary(c, &channel, &thread, &line))
                .await
                .map_err(store_err)?;
        }
        Ok(render(&reply, &people))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_escaped_bounded_and_lists_its_links() {
        let reply = Reply {
            text: "<!channel> done & dusted".into(),
            links: vec![
                Link {
                    label: "#9 created".into(),
                    url: Some("https://github.com/acme/shop/issues/9".into()),
                },
                Link {
                    label: "build <3> started".into(),
                    url: None,
                },
            ],
            summary: None,
        };
        assert_eq!(
            render(&reply, &[]),
            "&lt;!channel&gt; done &amp; dusted\n• <https://github.com/acme/shop/issues/9|#9 created>\n• build &lt;3&gt; started"
        );
        // A person of the thread may be addressed; nobody else, and no broadcast.
        let question = Reply {
            text: "<@U1>: close #4? <@U2> <!here>".into(),
            ..Reply::default()
        };
        assert_eq!(
            render(&question, &["U1"]),
            "<@U1>: close #4? &lt;@U2&gt; &lt;!here&gt;"
        );
        let long = Reply {
            text: "x".repeat(10_000),
            ..Reply::default()
        };
        assert_eq!(render(&long, &[]).chars().count(), MAX_REPLY_CHARS);
        assert_eq!(render(&Reply::default(), &[]), "(no answer)");
    }
}
