//! The sandbox's state: the workspace (team, bot, tokens), channels and their messages, rate
//! limits and faults per Web API method, call counters and the request log. Socket Mode's
//! state lives in [`crate::socket::SocketState`], inside the same lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::Options;
use crate::socket::SocketState;
use crate::ts::Ts;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// `xoxb-…`: the bot; every Web API method except `apps.connections.open`.
    Bot,
    /// `xapp-…`: the app-level token; only `apps.connections.open`.
    App,
}

/// One message as the sandbox keeps it: top-level or a thread reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Its timestamp, `"1700000000.000100"`: the message's id within its channel.
    pub ts: String,
    /// The author's user id (the bot's user id for messages the bot posted).
    pub user: String,
    /// `Some(bot id)` for messages posted with the bot token.
    pub bot_id: Option<String>,
    /// The current text.
    pub text: String,
    /// For a reply, its parent's ts; for a parent with replies, its own ts (as Slack shows
    /// it); `None` for a message outside any thread.
    pub thread_ts: Option<String>,
    /// `blocks` as posted (JSON), if any.
    pub blocks: Option<Value>,
    /// `metadata` as posted (JSON), if any.
    pub metadata: Option<Value>,
    /// Every text the message had, oldest first; the last is [`text`](Self::text). One more
    /// than the number of `chat.update` calls that changed it.
    pub history: Vec<String>,
    pub(crate) key: Ts,
    pub(crate) edited: Option<Ts>,
}

impl Message {
    /// A reply in a thread (not the thread's parent).
    pub fn is_reply(&self) -> bool {
        self.thread_ts.as_deref().is_some_and(|t| t != self.ts)
    }
}

#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) id: String,
    pub(crate) name: String,
    /// Every message of the channel, top-level and replies, in ts order.
    pub(crate) messages: Vec<Message>,
}

impl Channel {
    pub(crate) fn find(&self, ts: Ts) -> Option<&Message> {
        self.messages.iter().find(|m| m.key == ts)
    }

    pub(crate) fn replies(&self, parent: Ts) -> impl Iterator<Item = &Message> {
        let parent = parent.to_string();
        self.messages
            .iter()
            .filter(move |m| m.is_reply() && m.thread_ts.as_deref() == Some(parent.as_str()))
    }
}

/// How often one Web API method was called, and how often it answered 429.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MethodStats {
    /// Every call, whatever the answer.
    pub calls: u64,
    /// Calls answered `429 Too Many Requests` (rate limit or injected fault).
    pub rate_limited: u64,
}

/// One Web API call, as answered.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The Web API method, e.g. `"chat.postMessage"`.
    pub method: String,
    /// The HTTP status (200 for every answer with `ok`, including `ok: false`).
    pub status: u16,
    /// Slack's `error` string for `ok: false` answers.
    pub error: Option<String>,
    /// The parameters as received (query, form or JSON body merged; the token left out).
    pub params: Map<String, Value>,
    /// When the call arrived, to check a client's pacing.
    pub at: Instant,
}

/// An injected failure for the next call of one method.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fault {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<u64>,
}

/// A rejection before the method runs: an HTTP status other than 200.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rejection {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<u64>,
}

pub(crate) struct World {
    pub(crate) team_id: String,
    pub(crate) team_name: String,
    pub(crate) bot_user_id: String,
    pub(crate) bot_id: String,
    pub(crate) bot_name: String,
    pub(crate) app_id: String,
    pub(crate) tokens: HashMap<String, TokenKind>,
    pub(crate) channels: BTreeMap<String, Channel>,
    /// The next timestamp at the earliest.
    clock: Ts,
    /// Timestamps follow the wall clock (as Slack's do) instead of counting from
    /// `1700000000.000100`.
    wall_clock: bool,
    next_channel: u64,
    per_minute: HashMap<String, u32>,
    windows: HashMap<String, VecDeque<Instant>>,
    pub(crate) max_page_size: Option<usize>,
    faults: HashMap<String, VecDeque<Fault>>,
    pub(crate) stats: BTreeMap<String, MethodStats>,
    pub(crate) requests: Vec<RequestRecord>,
    pub(crate) socket: SocketState,
}

/// The bot token every sandbox starts with.
pub const BOT_TOKEN: &str = "xoxb-sandbox-bot-token";
/// The app-level token (Socket Mode) every sandbox starts with.
pub const APP_TOKEN: &str = "xapp-1-sandbox-app-token";

impl World {
    pub(crate) fn new(options: &Options) -> World {
        let mut per_minute = HashMap::new();
        for (method, limit) in [
            ("conversations.history", options.history_per_minute),
            ("conversations.replies", options.replies_per_minute),
            ("chat.postMessage", options.post_message_per_minute),
            ("chat.update", options.update_per_minute),
        ] {
            if let Some(limit) = limit {
                per_minute.insert(method.to_owned(), limit);
            }
        }
        World {
            team_id: "T0SANDBOX".into(),
            team_name: "Sandbox Workspace".into(),
            bot_user_id: "U0SBXBOT1".into(),
            bot_id: "B0SBXBOT1".into(),
            bot_name: "productbuilder".into(),
            app_id: "A0SBXAPP1".into(),
            tokens: HashMap::from([
                (BOT_TOKEN.to_owned(), TokenKind::Bot),
                (APP_TOKEN.to_owned(), TokenKind::App),
            ]),
            channels: BTreeMap::new(),
            clock: Ts::FIRST,
            wall_clock: !options.logical_clock,
            next_channel: 1,
            per_minute,
            windows: HashMap::new(),
            max_page_size: options.max_page_size,
            faults: HashMap::new(),
            stats: BTreeMap::new(),
            requests: Vec::new(),
            socket: SocketState::new(options),
        }
    }

    // -- channels and messages ---------------------------------------------------------------

    pub(crate) fn create_channel(&mut self, name: &str) -> String {
        let name = name.trim_start_matches('#');
        if let Some(existing) = self.channels.values().find(|c| c.name == name) {
            return existing.id.clone();
        }
        let id = format!("C0SBX{:04}", self.next_channel);
        self.next_channel += 1;
        self.channels.insert(
            id.clone(),
            Channel {
                id: id.clone(),
                name: name.to_owned(),
                messages: Vec::new(),
            },
        );
        id
    }

    /// A channel by id, or by name (`deploys` or `#deploys`), as `chat.postMessage` accepts.
    pub(crate) fn channel_id(&self, id_or_name: &str) -> Option<String> {
        if self.channels.contains_key(id_or_name) {
            return Some(id_or_name.to_owned());
        }
        let name = id_or_name.trim_start_matches('#');
        self.channels
            .values()
            .find(|c| c.name == name)
            .map(|c| c.id.clone())
    }

    pub(crate) fn channel(&self, id: &str) -> Option<&Channel> {
        self.channels.get(id)
    }

    /// Appends a message; `thread_ts` naming a reply threads under that reply's parent, as
    /// Slack does. Returns the new message, or `None` when `thread_ts` names no message.
    pub(crate) fn append(
        &mut self,
        channel: &str,
        author: Author,
        text: &str,
        thread_ts: Option<&str>,
        blocks: Option<Value>,
        metadata: Option<Value>,
    ) -> Option<Message> {
        let parent = match thread_ts {
            None => None,
            Some(raw) => {
                let key = Ts::parse(raw)?;
                let found = self.channels.get(channel)?.find(key)?;
                Some(found.thread_ts.clone().unwrap_or_else(|| found.ts.clone()))
            }
        };
        let key = self.tick();
        let (user, bot_id) = match author {
            Author::Bot => (self.bot_user_id.clone(), Some(self.bot_id.clone())),
            Author::User(user) => (user, None),
        };
        let message = Message {
            ts: key.to_string(),
            user,
            bot_id,
            text: text.to_owned(),
            thread_ts: parent.clone(),
            blocks,
            metadata,
            history: vec![text.to_owned()],
            key,
            edited: None,
        };
        let channel = self.channels.get_mut(channel)?;
        if let Some(parent) = parent
            && let Some(parent) = channel.messages.iter_mut().find(|m| m.ts == parent)
        {
            // The parent of a thread carries `thread_ts` = its own ts once it has replies.
            parent.thread_ts = Some(parent.ts.clone());
        }
        channel.messages.push(message.clone());
        Some(message)
    }

    /// Replaces a message's text (and blocks when given) as `chat.update` does; the bot may
    /// only edit its own messages.
    pub(crate) fn update(
        &mut self,
        channel: &str,
        ts: Ts,
        text: Option<&str>,
        blocks: Option<Value>,
    ) -> Result<Message, &'static str> {
        let edit_ts = self.tick();
        let bot_user = self.bot_user_id.clone();
        let channel = self.channels.get_mut(channel).ok_or("channel_not_found")?;
        let message = channel
            .messages
            .iter_mut()
            .find(|m| m.key == ts)
            .ok_or("message_not_found")?;
        if message.user != bot_user {
            return Err("cant_update_message");
        }
        if let Some(text) = text {
            message.text = text.to_owned();
            message.history.push(text.to_owned());
        }
        if blocks.is_some() {
            message.blocks = blocks;
        }
        message.edited = Some(edit_ts);
        Ok(message.clone())
    }

    /// A fresh timestamp: the wall clock (or the logical clock), and always after the previous
    /// one, so that timestamps stay unique and increasing.
    fn tick(&mut self) -> Ts {
        let ts = if self.wall_clock {
            self.clock.max(Ts::now())
        } else {
            self.clock
        };
        self.clock = ts.next();
        ts
    }

    /// A message by ts in any channel.
    pub(crate) fn find_anywhere(&self, ts: &str) -> Option<&Message> {
        let key = Ts::parse(ts)?;
        self.channels.values().find_map(|c| c.find(key))
    }

    // -- rate limits, faults, counters -------------------------------------------------------

    pub(crate) fn set_rate_limit(&mut self, method: &str, per_minute: Option<u32>) {
        match per_minute {
            Some(limit) => self.per_minute.insert(method.to_owned(), limit),
            None => self.per_minute.remove(method),
        };
        self.windows.remove(method);
    }

    pub(crate) fn reset_rate_limits(&mut self) {
        self.windows.clear();
    }

    pub(crate) fn fail_next(&mut self, method: &str, fault: Fault) {
        self.faults
            .entry(method.to_owned())
            .or_default()
            .push_back(fault);
    }

    /// Counts the call, then applies an injected fault or the method's per-minute limit.
    pub(crate) fn admit(&mut self, method: &str, now: Instant) -> Result<(), Rejection> {
        let stats = self.stats.entry(method.to_owned()).or_default();
        stats.calls += 1;
        let rejection =
            if let Some(fault) = self.faults.get_mut(method).and_then(VecDeque::pop_front) {
                Some(Rejection {
                    status: fault.status,
                    retry_after: fault.retry_after,
                })
            } else if let Some(&limit) = self.per_minute.get(method) {
                let window = self.windows.entry(method.to_owned()).or_default();
                let minute = Duration::from_secs(60);
                while window
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= minute)
                {
                    window.pop_front();
                }
                if window.len() >= limit as usize {
                    // Whole seconds until the oldest call leaves the window, at least one.
                    let wait = window
                        .front()
                        .map(|t| minute.saturating_sub(now.duration_since(*t)))
                        .unwrap_or(minute);
                    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    Some(Rejection {
                        status: 429,
                        retry_after: Some(secs.max(1)),
                    })
                } else {
                    window.push_back(now);
                    None
                }
            } else {
                None
            };
        match rejection {
            Some(rejection) => {
                if rejection.status == 429 {
                    stats.rate_limited += 1;
                }
                Err(rejection)
            }
            None => Ok(()),
        }
    }
}

/// Who writes a message.
pub(crate) enum Author {
    Bot,
    User(String),
}
