//! A stateful fake of Slack, served over real HTTP and WebSocket on `127.0.0.1`.
//!
//! It stands in for `slack.com` in the daemon's tests: point the Slack client's API base at
//! [`Sandbox::api_url`] (`{base}/api`, methods are `{base}/api/{method}`), give it
//! [`BOT_TOKEN`] and [`APP_TOKEN`], let people write with [`Sandbox::post_user_message`], and
//! look at what the bot did with [`Sandbox::messages`], [`Sandbox::thread`],
//! [`Sandbox::edits_of`], [`Sandbox::acks`] and the counters.
//!
//! # What it models
//!
//! - Web API methods `auth.test`, `chat.postMessage`, `chat.update`, `conversations.history`,
//!   `conversations.replies`, `apps.connections.open`; GET or POST, parameters in the query,
//!   a form body or a JSON body; the token in `Authorization: Bearer` or a `token` parameter.
//!   Errors as Slack sends them: HTTP 200 with `{"ok": false, "error": …}` (`not_authed`,
//!   `invalid_auth` for unknown or revoked tokens, `not_allowed_token_type` for a bot token on
//!   `apps.connections.open` or an app token elsewhere, `channel_not_found`,
//!   `thread_not_found`, `message_not_found`, `cant_update_message` for other people's
//!   messages, `no_text`, `invalid_cursor`, `invalid_ts_oldest`/`invalid_ts_latest`,
//!   `unknown_method`).
//! - Messages with the fixtures' fields (`shared/fixtures/slack`), timestamps from the wall
//!   clock like Slack's, unique and increasing (or, with [`Options::logical_clock`],
//!   `1700000000.000100`, `…000200`, … for tests that compare them),
//!   threads (`thread_ts`, `reply_count`, `reply_users`, `latest_reply`, `parent_user_id`),
//!   `edited` after `chat.update`, `blocks`, and `metadata` (shown with
//!   `include_all_metadata=true`).
//! - Pagination: `limit` (default 100, at most 999, capped by [`Options::max_page_size`]),
//!   `oldest`/`latest`/`inclusive`, `has_more` and an opaque `response_metadata.next_cursor`.
//!   History is newest first and top-level only; replies are the parent (on every page,
//!   counting towards `limit`) then replies oldest first.
//! - Rate limits per method per minute (a sliding window; [`Options`],
//!   [`Sandbox::set_rate_limit`]), answered `429` with `Retry-After` (whole seconds) and
//!   `{"ok": false, "error": "ratelimited"}`; injected faults ([`Sandbox::fail_next`]);
//!   counters per method ([`Sandbox::stats`]); the request log ([`Sandbox::requests`]).
//! - Socket Mode: one-use tickets, `hello` on connect, `events_api` envelopes for
//!   `app_mention`s sent to one open connection (the newest), held while none is open, acks
//!   recorded with their delay, unacked envelopes sent again after [`Options::ack_timeout`]
//!   (fresh `envelope_id`, same `event_id`, `retry_attempt` + 1, `retry_reason: "timeout"`) up
//!   to [`Options::max_retries`] times, `disconnect` frames followed by a close after
//!   [`Options::disconnect_grace`], and TCP drops without a close frame.
//!
//! - A page for people (`GET /`, for `productbuilder demo`): every channel and its threads, and
//!   a form to write a message (`@productbuilder` in it becomes a mention of the bot).
//!
//! # What it does not model
//!
//! Other methods and events (`message` events, reactions, DMs, users, `chat.delete`),
//! `attachments`, `reply_broadcast`, `unfurl_*`, channel membership (`not_in_channel`),
//! per-workspace or per-channel limits (limits are per method only), Slack's
//! `invalid_arg_name`-style argument checks, WebSocket pings from the server, `link_disabled`
//! turning Socket Mode off, and `accepts_response_payload` responses. Tokens never expire.
//!
//! # Example
//!
//! ```no_run
//! use productbuilder_slack_sandbox::{BOT_TOKEN, Sandbox};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let slack = Sandbox::start().await?;
//! let channel = slack.create_channel("deploys");
//! let mention = format!("<@{}> status", slack.bot_user_id());
//! let asked = slack.post_user_message(&channel, "U0ALICE", &mention, None);
//! // ... point the daemon at slack.api_url() with BOT_TOKEN, let it answer ...
//! for reply in slack.thread(&channel, &asked) {
//!     println!("{}: {}", reply.user, reply.text);
//! }
//! # let _ = BOT_TOKEN;
//! # Ok(())
//! # }
//! ```

mod page;
mod shapes;
mod socket;
mod ts;
mod web;
mod world;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

pub use socket::{Ack, DisconnectReason};
pub use world::{APP_TOKEN, BOT_TOKEN, Message, MethodStats, RequestRecord};

use world::{Author, Fault, TokenKind, World};

/// How the sandbox behaves; [`Options::default`] is an unthrottled workspace with Slack's
/// Socket Mode timings.
#[derive(Debug, Clone)]
pub struct Options {
    /// `conversations.history` calls allowed per minute (`Some(1)` for non-Marketplace apps
    /// since 2025).
    pub history_per_minute: Option<u32>,
    /// `conversations.replies` calls allowed per minute.
    pub replies_per_minute: Option<u32>,
    /// `chat.postMessage` calls allowed per minute.
    pub post_message_per_minute: Option<u32>,
    /// `chat.update` calls allowed per minute.
    pub update_per_minute: Option<u32>,
    /// The largest page `conversations.history`/`replies` return (`Some(15)` for
    /// non-Marketplace apps since 2025), whatever `limit` asks.
    pub max_page_size: Option<usize>,
    /// How long an envelope waits for its ack before it is sent again (Slack: 3 s).
    pub ack_timeout: Duration,
    /// How many times an unacked event is sent again before the sandbox gives up (Slack: 3).
    pub max_retries: u32,
    /// How long after a `disconnect` frame the sandbox closes the connection.
    pub disconnect_grace: Duration,
    /// Timestamps count from `1700000000.000100` in steps of 100 µs instead of following the
    /// wall clock. Off by default: a client that starts reading at "now" must see what is
    /// written after it started.
    pub logical_clock: bool,
    /// The app is subscribed to `message.channels`: every person's message also arrives over
    /// Socket Mode as a `message` event (a mention as both, `message` first, as Slack sends
    /// them).
    pub message_events: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            history_per_minute: None,
            replies_per_minute: None,
            post_message_per_minute: None,
            update_per_minute: None,
            max_page_size: None,
            ack_timeout: Duration::from_secs(3),
            max_retries: 3,
            disconnect_grace: Duration::from_secs(10),
            logical_clock: false,
            message_events: false,
        }
    }
}

impl Options {
    /// The limits Slack applies to apps not in the Marketplace since 2025:
    /// `conversations.history` and `conversations.replies` once a minute, 15 messages a page.
    pub fn non_marketplace() -> Options {
        Options {
            history_per_minute: Some(1),
            replies_per_minute: Some(1),
            max_page_size: Some(15),
            ..Options::default()
        }
    }
}

/// State shared by the control API, the HTTP server and the connection tasks.
pub(crate) struct Shared {
    world: Mutex<World>,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base_url: String,
    /// Bumped after every change a test may wait for.
    changes: watch::Sender<u64>,
    /// Wakes the redelivery task when a new deadline exists.
    redelivery: Notify,
}

impl Shared {
    /// The world, even if a panicking test thread poisoned the lock.
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    pub(crate) fn wake_redelivery(&self) {
        self.redelivery.notify_one();
    }
}

/// A running fake Slack. Dropping it stops the server and closes every connection.
///
/// Control-API methods panic with a clear message when misused (an unknown channel or
/// message): they are test set-up, and a panic there is a bug in the test. Nothing a client
/// sends can panic the server.
pub struct Sandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    redelivery: JoinHandle<()>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("url", &self.url()).finish()
    }
}

impl Sandbox {
    /// Starts with [`Options::default`] on a free port of `127.0.0.1`.
    pub async fn start() -> io::Result<Sandbox> {
        Sandbox::start_with(Options::default()).await
    }

    /// Starts with `options` on a free port of `127.0.0.1`.
    pub async fn start_with(options: Options) -> io::Result<Sandbox> {
        Sandbox::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), options).await
    }

    /// Starts with `options` on `addr`. An unspecified address (`0.0.0.0`) listens everywhere
    /// but hands out loopback URLs.
    pub async fn start_on(addr: SocketAddr, options: Options) -> io::Result<Sandbox> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let host = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let shared = Arc::new(Shared {
            world: Mutex::new(World::new(&options)),
            base_url: format!("http://{}", SocketAddr::new(host, addr.port())),
            changes: watch::Sender::new(0),
            redelivery: Notify::new(),
        });
        let app = Router::new()
            .route("/api/{method}", any(web::call))
            .route("/socket/{ticket}", get(socket::upgrade))
            .route("/", get(page::show))
            .route("/say", axum::routing::post(page::say))
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(error) = server.await {
                tracing::warn!(%error, "slack sandbox server stopped");
            }
        });
        let redelivery = tokio::spawn(redeliver_forever(shared.clone()));
        tracing::debug!(url = %shared.base_url, "slack sandbox listening");
        Ok(Sandbox {
            shared,
            addr,
            shutdown: Some(tx),
            server: Some(server),
            redelivery,
        })
    }

    /// The server's base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The Web API base, `http://127.0.0.1:PORT/api` (methods are `{api_url}/{method}`), the
    /// sandbox's `https://slack.com/api`.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.shared.base_url)
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server: no new connections; open WebSocket connections are dropped.
    pub async fn shutdown(mut self) {
        socket::drop_all(&mut self.world());
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.shared.world()
    }

    /// Runs a change and tells waiting tests.
    fn change<T>(&self, f: impl FnOnce(&mut World, &Shared) -> T) -> T {
        let out = f(&mut self.world(), &self.shared);
        self.shared.changed();
        out
    }

    // -- the workspace ------------------------------------------------------------------------

    /// The bot's user id (what `<@…>` mentions name and `auth.test` returns as `user_id`).
    pub fn bot_user_id(&self) -> String {
        self.world().bot_user_id.clone()
    }

    /// The bot's bot id (`bot_id` on its messages and in `auth.test`).
    pub fn bot_id(&self) -> String {
        self.world().bot_id.clone()
    }

    /// The workspace's team id.
    pub fn team_id(&self) -> String {
        self.world().team_id.clone()
    }

    /// Makes `token` unusable: every call with it answers `invalid_auth`.
    pub fn revoke_token(&self, token: &str) {
        self.change(|w, _| w.tokens.remove(token));
    }

    /// Accepts another bot token (e.g. after a rotation).
    pub fn add_bot_token(&self, token: &str) {
        self.change(|w, _| w.tokens.insert(token.to_owned(), TokenKind::Bot));
    }

    /// Accepts another app-level token.
    pub fn add_app_token(&self, token: &str) {
        self.change(|w, _| w.tokens.insert(token.to_owned(), TokenKind::App));
    }

    /// Creates a channel (a name like `deploys` or `#deploys`) and returns its id (`C…`); an
    /// existing channel's id is returned as is. Methods accept the id or the name.
    pub fn create_channel(&self, name: &str) -> String {
        self.change(|w, _| w.create_channel(name))
    }

    // -- people and what the bot did --------------------------------------------------------

    /// A person writes `text` in `channel` (id or name), in a thread when `thread_ts` is given.
    /// Mentioning the bot (`<@BOTID> status`) sends an `app_mention` over Socket Mode.
    /// Returns the message's ts.
    pub fn post_user_message(
        &self,
        channel: &str,
        user: &str,
        text: &str,
        thread_ts: Option<&str>,
    ) -> String {
        self.change(|w, shared| {
            let id = w
                .channel_id(channel)
                .unwrap_or_else(|| panic!("no channel {channel}: create_channel first"));
            let message = w
                .append(
                    &id,
                    Author::User(user.to_owned()),
                    text,
                    thread_ts,
                    None,
                    None,
                )
                .unwrap_or_else(|| panic!("no message {thread_ts:?} in {channel} to reply to"));
            socket::on_message(w, shared, &id, &message);
            message.ts
        })
    }

    /// The top-level messages of a channel, oldest first.
    pub fn messages(&self, channel: &str) -> Vec<Message> {
        let world = self.world();
        let id = world
            .channel_id(channel)
            .unwrap_or_else(|| panic!("no channel {channel}"));
        world.channels[&id]
            .messages
            .iter()
            .filter(|m| !m.is_reply())
            .cloned()
            .collect()
    }

    /// A thread: its parent, then its replies oldest first; empty when `ts` is no message.
    pub fn thread(&self, channel: &str, ts: &str) -> Vec<Message> {
        let world = self.world();
        let id = world
            .channel_id(channel)
            .unwrap_or_else(|| panic!("no channel {channel}"));
        let channel = &world.channels[&id];
        let Some(parent) = ts::Ts::parse(ts).and_then(|t| channel.find(t)) else {
            return Vec::new();
        };
        std::iter::once(parent)
            .chain(channel.replies(parent.key))
            .cloned()
            .collect()
    }

    /// Every text the message `ts` (in any channel) had, oldest first: one more than the
    /// `chat.update` calls that changed its text. Empty when there is no such message.
    pub fn edits_of(&self, ts: &str) -> Vec<String> {
        self.world()
            .find_anywhere(ts)
            .map(|m| m.history.clone())
            .unwrap_or_default()
    }

    // -- rate limits, faults, counters ------------------------------------------------------

    /// Sets (or with `None` lifts) a method's per-minute limit, starting a fresh window.
    pub fn set_rate_limit(&self, method: &str, per_minute: Option<u32>) {
        self.change(|w, _| w.set_rate_limit(method, per_minute));
    }

    /// Forgets the calls counted towards every per-minute limit (a new minute begins).
    pub fn reset_rate_limits(&self) {
        self.change(|w, _| w.reset_rate_limits());
    }

    /// The next call of `method` answers HTTP `status` (with `Retry-After: retry_after` when
    /// given; a 429 also has Slack's `ratelimited` body). Faults queue up per method.
    pub fn fail_next(&self, method: &str, status: u16, retry_after: Option<u64>) {
        self.change(|w, _| {
            w.fail_next(
                method,
                Fault {
                    status,
                    retry_after,
                },
            )
        });
    }

    /// Calls and 429s of one method so far.
    pub fn method_stats(&self, method: &str) -> MethodStats {
        self.world().stats.get(method).copied().unwrap_or_default()
    }

    /// Calls and 429s of every method called so far.
    pub fn stats(&self) -> BTreeMap<String, MethodStats> {
        self.world().stats.clone()
    }

    /// Every Web API call answered so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.world().requests.clone()
    }

    /// Forgets the request log and the counters (not the rate-limit windows), so that a
    /// benchmark can count the calls of one phase.
    pub fn clear_requests(&self) {
        let mut world = self.world();
        world.requests.clear();
        world.stats.clear();
    }

    // -- Socket Mode ------------------------------------------------------------------------

    /// How many Socket Mode connections were opened so far (a reconnect counts again).
    pub fn connections(&self) -> usize {
        self.world().socket.opened
    }

    /// How many Socket Mode connections are open now.
    pub fn open_connections(&self) -> usize {
        self.world().socket.live.len()
    }

    /// Every ack received so far, in order.
    pub fn acks(&self) -> Vec<Ack> {
        self.world().socket.acks.clone()
    }

    /// Every envelope sent so far (first deliveries and redeliveries), in order.
    pub fn envelopes(&self) -> Vec<serde_json::Value> {
        self.world().socket.sent.clone()
    }

    /// Sends event `event_id` again now, acked or not: `retry_attempt` + 1, same `event_id`.
    /// `false` when the sandbox never produced that event.
    pub fn redeliver(&self, event_id: &str) -> bool {
        self.change(|w, shared| socket::redeliver(w, shared, event_id))
    }

    /// Sends a `disconnect` frame with `reason` to every open connection, and closes each
    /// (with a close frame) after [`Options::disconnect_grace`].
    pub fn send_disconnect(&self, reason: DisconnectReason) {
        self.change(|w, _| socket::disconnect_all(w, reason));
    }

    /// Drops every open connection's TCP stream without a WebSocket close frame.
    pub fn close_abruptly(&self) {
        self.change(|w, _| socket::drop_all(w));
    }

    // -- waiting ----------------------------------------------------------------------------

    /// Waits until `done` holds, re-checking after every change (a Web API call, a message, a
    /// connection opened or closed, an ack); `false` if it still does not after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Sandbox) -> bool,
    ) -> bool {
        let mut changes = self.shared.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return done(self);
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        socket::drop_all(&mut self.world());
        self.redelivery.abort();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Sends unacked envelopes again when their ack timeout passes.
async fn redeliver_forever(shared: Arc<Shared>) {
    loop {
        let due = shared.world().socket.next_due();
        let sleep = async {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.redelivery.notified() => {}
            () = sleep => {
                socket::redeliver_due(&mut shared.world(), &shared, std::time::Instant::now());
                shared.changed();
            }
        }
    }
}
