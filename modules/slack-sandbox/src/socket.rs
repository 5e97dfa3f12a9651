//! Socket Mode: `apps.connections.open` hands out a one-use ticket URL,
//! `GET {base}/socket/{ticket}` upgrades to a WebSocket that starts with `hello`; a person's
//! message mentioning the bot becomes an `events_api` envelope sent to one open connection;
//! acks are recorded with their delay; unacked envelopes are sent again after the ack timeout
//! with `retry_attempt` + 1 and the same `event_id`, up to `max_retries` times.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::world::{Message, World};
use crate::{Options, Shared, shapes};

/// Why Slack is about to drop a Socket Mode connection (the `disconnect` frame's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The connection is being refreshed; open a new one.
    RefreshRequested,
    /// The connection will be dropped soon.
    Warning,
    /// Socket Mode was turned off for the app.
    LinkDisabled,
}

impl DisconnectReason {
    /// The `reason` string Slack sends.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::RefreshRequested => "refresh_requested",
            DisconnectReason::Warning => "warning",
            DisconnectReason::LinkDisabled => "link_disabled",
        }
    }
}

/// An acknowledgement a client sent (`{"envelope_id": …}`).
#[derive(Debug, Clone)]
pub struct Ack {
    /// The envelope it names.
    pub envelope_id: String,
    /// The event that envelope carried; `None` for an envelope id the sandbox never sent.
    pub event_id: Option<String>,
    /// The acknowledged delivery's `retry_attempt`.
    pub retry_attempt: u32,
    /// From sending the envelope to receiving the ack.
    pub delay: Duration,
    /// The ack's `payload`, if it had one.
    pub payload: Option<Value>,
}

/// What a connection's task is told to do.
pub(crate) enum Outbound {
    Frame(String),
    /// Send a close frame after this long.
    CloseAfter(Duration),
    /// Drop the TCP connection without a close frame.
    Drop,
}

struct EventState {
    event_id: String,
    payload: Value,
    /// The `retry_attempt` of the last delivery; `None` before the first.
    attempt: Option<u32>,
    acked: bool,
    /// When an unacked delivery is sent again.
    due: Option<Instant>,
    /// No connection was open when it had to go out: sent when one opens.
    waiting: bool,
}

struct Sent {
    event: usize,
    retry_attempt: u32,
    at: Instant,
}

pub(crate) struct SocketState {
    ack_timeout: Duration,
    max_retries: u32,
    pub(crate) disconnect_grace: Duration,
    tickets: HashSet<String>,
    next_id: u64,
    pub(crate) opened: usize,
    pub(crate) live: BTreeMap<u64, mpsc::UnboundedSender<Outbound>>,
    events: Vec<EventState>,
    envelopes: HashMap<String, Sent>,
    pub(crate) acks: Vec<Ack>,
    pub(crate) sent: Vec<Value>,
    /// Every person's message is a `message` event too.
    message_events: bool,
}

impl SocketState {
    pub(crate) fn new(options: &Options) -> SocketState {
        SocketState {
            ack_timeout: options.ack_timeout,
            max_retries: options.max_retries,
            disconnect_grace: options.disconnect_grace,
            tickets: HashSet::new(),
            next_id: 1,
            opened: 0,
            live: BTreeMap::new(),
            events: Vec::new(),
            envelopes: HashMap::new(),
            acks: Vec::new(),
            sent: Vec::new(),
            message_events: options.message_events,
        }
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The earliest redelivery deadline.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.events
            .iter()
            .filter(|e| !e.acked)
            .filter_map(|e| e.due)
            .min()
    }
}

/// `apps.connections.open`: a fresh one-use ticket on this server's WebSocket endpoint.
pub(crate) fn open(world: &mut World, shared: &Shared) -> Value {
    let ticket = format!("sbx-ticket-{}", world.socket.id());
    world.socket.tickets.insert(ticket.clone());
    let ws_base = shared.base_url.replacen("http://", "ws://", 1);
    // A query string like Slack's (`?ticket=…&app_id=…`): clients append
    // `&debug_reconnects=true` to the URL as is (slack-morphism does).
    let app_id = &world.app_id;
    json!({"ok": true, "url": format!("{ws_base}/socket/{ticket}?app_id={app_id}")})
}

/// Called for every new message: a person's mention of the bot becomes an `app_mention`, and
/// with [`Options::message_events`](crate::Options::message_events) every person's message a
/// `message` event.
pub(crate) fn on_message(world: &mut World, shared: &Shared, channel: &str, message: &Message) {
    if message.bot_id.is_some() {
        return;
    }
    if world.socket.message_events {
        send_event(world, shared, channel, message, "message");
    }
    let mention = format!("<@{}>", world.bot_user_id);
    if message.text.contains(&mention) {
        send_event(world, shared, channel, message, "app_mention");
    }
}

/// One event of `kind` (`app_mention`, `message`) for `message`, delivered.
fn send_event(world: &mut World, shared: &Shared, channel: &str, message: &Message, kind: &str) {
    let n = world.socket.id();
    let event_id = format!("Ev0SBX{n:06}");
    let client_msg_id = uuid_like(n);
    let payload = shapes::event_payload(world, channel, message, &event_id, &client_msg_id, kind);
    world.socket.events.push(EventState {
        event_id,
        payload,
        attempt: None,
        acked: false,
        due: None,
        waiting: false,
    });
    let index = world.socket.events.len() - 1;
    deliver(world, shared, index, "");
}

/// Sends event `index` to one open connection (the newest), or marks it waiting.
fn deliver(world: &mut World, shared: &Shared, index: usize, retry_reason: &str) {
    let socket = &mut world.socket;
    let retry_attempt = socket.events[index].attempt.map_or(0, |a| a + 1);
    let envelope_id = uuid_like(socket.next_id);
    socket.next_id += 1;
    let envelope = json!({
        "envelope_id": envelope_id,
        "payload": socket.events[index].payload,
        "type": "events_api",
        "accepts_response_payload": false,
        "retry_attempt": retry_attempt,
        "retry_reason": retry_reason,
    });
    let frame = envelope.to_string();
    // Newest connection first; a connection whose task is gone is forgotten.
    let sent_on = loop {
        let Some((&id, tx)) = socket.live.iter().next_back() else {
            break None;
        };
        if tx.send(Outbound::Frame(frame.clone())).is_ok() {
            break Some(id);
        }
        socket.live.remove(&id);
    };
    let event = &mut socket.events[index];
    if sent_on.is_none() {
        event.waiting = true;
        return;
    }
    let now = Instant::now();
    event.waiting = false;
    event.attempt = Some(retry_attempt);
    event.due = Some(now + socket.ack_timeout);
    socket.envelopes.insert(
        envelope_id,
        Sent {
            event: index,
            retry_attempt,
            at: now,
        },
    );
    socket.sent.push(envelope);
    shared.wake_redelivery();
}

/// Sends every due, unacked event again; gives up after `max_retries` redeliveries.
pub(crate) fn redeliver_due(world: &mut World, shared: &Shared, now: Instant) {
    let due: Vec<usize> = world
        .socket
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.acked && e.due.is_some_and(|d| d <= now))
        .map(|(i, _)| i)
        .collect();
    for index in due {
        let event = &mut world.socket.events[index];
        event.due = None;
        if event.attempt.unwrap_or(0) >= world.socket.max_retries {
            tracing::debug!(event_id = %event.event_id, "slack sandbox gives up redelivering");
            continue;
        }
        deliver(world, shared, index, "timeout");
    }
}

/// Sends `event_id` again now, acked or not (`retry_attempt` + 1, reason `timeout`).
pub(crate) fn redeliver(world: &mut World, shared: &Shared, event_id: &str) -> bool {
    let Some(index) = world
        .socket
        .events
        .iter()
        .position(|e| e.event_id == event_id)
    else {
        return false;
    };
    deliver(world, shared, index, "timeout");
    true
}

/// Records an ack frame; anything else a client sends is ignored.
fn on_frame(world: &mut World, text: &str) {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let Some(envelope_id) = frame.get("envelope_id").and_then(Value::as_str) else {
        return;
    };
    let now = Instant::now();
    let socket = &mut world.socket;
    let sent = socket.envelopes.get(envelope_id);
    let (event_id, retry_attempt, delay) = match sent {
        Some(sent) => {
            let event = &mut socket.events[sent.event];
            event.acked = true;
            event.due = None;
            (
                Some(event.event_id.clone()),
                sent.retry_attempt,
                now.duration_since(sent.at),
            )
        }
        None => (None, 0, Duration::ZERO),
    };
    socket.acks.push(Ack {
        envelope_id: envelope_id.to_owned(),
        event_id,
        retry_attempt,
        delay,
        payload: frame.get("payload").cloned(),
    });
}

/// `GET /socket/{ticket}`: a one-use ticket from `apps.connections.open`, else `401`.
pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Path(ticket): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    if !shared.world().socket.tickets.remove(&ticket) {
        return (StatusCode::UNAUTHORIZED, "invalid or used ticket").into_response();
    }
    ws.on_upgrade(move |socket| serve(shared, socket))
}

/// One connection: `hello`, the events waiting for a connection, then frames both ways until
/// either side closes.
async fn serve(shared: Arc<Shared>, socket: WebSocket) {
    let (tx, mut outbound) = mpsc::unbounded_channel();
    let id = {
        let mut world = shared.world();
        let id = world.socket.id();
        world.socket.opened += 1;
        world.socket.live.insert(id, tx.clone());
        let hello = shapes::hello(&world.app_id, world.socket.live.len());
        let _ = tx.send(Outbound::Frame(hello.to_string()));
        let waiting: Vec<usize> = (0..world.socket.events.len())
            .filter(|&i| world.socket.events[i].waiting)
            .collect();
        for index in waiting {
            let reason = if world.socket.events[index].attempt.is_some() {
                "timeout"
            } else {
                ""
            };
            deliver(&mut world, &shared, index, reason);
        }
        id
    };
    shared.changed();
    let (mut sink, mut stream) = socket.split();
    let mut close_at: Option<tokio::time::Instant> = None;
    loop {
        let closing = async {
            match close_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            out = outbound.recv() => match out {
                Some(Outbound::Frame(text)) => {
                    if sink.send(WsMessage::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Outbound::CloseAfter(grace)) => {
                    close_at = Some(tokio::time::Instant::now() + grace);
                }
                Some(Outbound::Drop) | None => {
                    // Dropping both halves drops the TCP stream: no close frame.
                    break;
                }
            },
            () = closing => {
                let _ = sink.send(WsMessage::Close(None)).await;
                break;
            }
            incoming = stream.next() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    on_frame(&mut shared.world(), text.as_str());
                    shared.changed();
                }
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    shared.world().socket.live.remove(&id);
    shared.changed();
}

/// Sends `disconnect` to every open connection and closes each after the grace period.
pub(crate) fn disconnect_all(world: &mut World, reason: DisconnectReason) {
    let frame = shapes::disconnect(reason.as_str()).to_string();
    let grace = world.socket.disconnect_grace;
    for tx in world.socket.live.values() {
        let _ = tx.send(Outbound::Frame(frame.clone()));
        let _ = tx.send(Outbound::CloseAfter(grace));
    }
}

/// Drops every open connection's TCP stream without a close frame.
pub(crate) fn drop_all(world: &mut World) {
    for tx in world.socket.live.values() {
        let _ = tx.send(Outbound::Drop);
    }
}

/// A UUID-shaped id (8-4-4-4-12 hex) that never repeats within a sandbox.
fn uuid_like(n: u64) -> String {
    let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (mixed >> 32) as u32,
        (mixed >> 16) as u16,
        (mixed >> 4) as u16 & 0xfff,
        (mixed as u16) & 0xfff,
        n
    )
}
