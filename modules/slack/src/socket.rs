//! `service:slack-socket:global`: Socket Mode (with `[slack] app_token`). `apps.connections.open`,
//! then the WebSocket; every envelope is acknowledged at once (Slack wants it within 3 s), then
//! handled apart from the read loop, so an answer waiting for the budget never delays an ack.
//! A redelivery (same `event_id`, also across reconnects) is handled once: the ids of handled
//! events are in SQLite, recorded after their answer (which is itself exactly once), so a crash
//! between the two loses nothing.
//! A `disconnect` frame or a close ends the run; the scheduler restarts the service with backoff,
//! and the service is degraded from the loss of the connection until the next `hello`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use productbuilder_scheduler::{ErrorKind, RunCtx, UnitError};
use productbuilder_store::Store;
use productbuilder_store::rusqlite::{OptionalExtension, params};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::api::SlackApi;
use crate::respond::{Heard, Hearing, Responder, TenantView};

/// A tenant as an answer needs it.
#[derive(Debug, Clone)]
pub struct ChannelTenant {
    pub repo: String,
    pub web: String,
    /// Its `[slack] writers`.
    pub writers: Vec<String>,
}

/// What the service needs.
#[derive(Clone)]
pub struct Socket {
    pub api: SlackApi,
    pub app_token: String,
    pub store: Store,
    /// Each tenant's channel id → the tenant.
    pub channels: Arc<BTreeMap<String, ChannelTenant>>,
    pub in_flight: InFlightEvents,
    /// The agent, when `[llm]` is configured.
    pub responder: Option<Arc<dyn Responder>>,
}

/// How long handling one event may take (answers wait for the budget; an agent's run is
/// bounded by `[llm] run_timeout`, 120 s by default, and its reply waits for the budget too).
const HANDLE_DEADLINE: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    envelope_id: Option<String>,
    payload: Option<Payload>,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Payload {
    event_id: Option<String>,
    event: Option<Event>,
}

#[derive(Debug, Clone, Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    user: Option<String>,
    bot_id: Option<String>,
    #[serde(default)]
    text: String,
    ts: Option<String>,
    thread_ts: Option<String>,
    /// `message_changed`, `message_deleted`, `bot_message`…; none for a person's new message.
    subtype: Option<String>,
}

fn network(message: impl Into<String>) -> UnitError {
    UnitError::new(ErrorKind::Network, message)
}

/// `check --online`: opens a Socket Mode connection and waits for its `hello`, then closes it.
pub async fn probe(api: &SlackApi, app_token: &str) -> Result<(), String> {
    let url = api.open_socket(app_token).await.map_err(|e| {
        format!("{e}; check [slack] app_token (an app-level token xapp-… with connections:write)")
    })?;
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .map_err(|e| format!("Socket Mode connect: {e}"))?;
    let hello = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = ws.next().await {
            if let Ok(Frame::Text(text)) = frame
                && serde_json::from_str::<Envelope>(&text).is_ok_and(|e| e.kind == "hello")
            {
                return true;
            }
        }
        false
    })
    .await;
    let _ = ws.close(None).await;
    match hello {
        Ok(true) => Ok(()),
        Ok(false) => Err("Socket Mode closed before its hello".into()),
        Err(_) => Err("Socket Mode sent no hello within 10 s".into()),
    }
}

impl Socket {
    /// One connection's life: returns when it ends (an error: the scheduler reconnects).
    pub async fn run(&self, ctx: RunCtx) -> Result<(), UnitError> {
        let counters = self.api.counters.clone();
        ctx.health.degraded("connecting to Slack Socket Mode");
        let url = self
            .api
            .open_socket(&self.app_token)
            .await
            .map_err(|e| e.into_unit_error())?;
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| network(format!("Socket Mode connect: {e}")))?;
        let handlers = tokio_util::task::TaskTracker::new();
        let ended = loop {
            let frame = tokio::select! {
                () = ctx.cancel.cancelled() => {
                    let _ = ws.close(None).await;
                    break Ok(());
                }
                frame = ws.next() => frame,
            };
            let text = match frame {
                Some(Ok(Frame::Text(text))) => text,
                Some(Ok(Frame::Ping(p))) => {
                    let _ = ws.send(Frame::Pong(p)).await;
                    continue;
                }
                Some(Ok(Frame::Close(_))) | None => {
                    break Err(network("Socket Mode connection closed"));
                }
                Some(Err(e)) => break Err(network(format!("Socket Mode connection lost: {e}"))),
                Some(Ok(_)) => continue,
            };
            let Ok(envelope) = serde_json::from_str::<Envelope>(&text) else {
                tracing::warn!("Socket Mode: a frame that is not an envelope");
                continue;
            };
            match envelope.kind.as_str() {
                "hello" => {
                    counters.socket_connected.store(1, Ordering::Relaxed);
                    ctx.health.healthy();
                    tracing::info!("Slack Socket Mode connected");
                }
                "disconnect" => {
                    break Err(network(format!(
                        "Slack asked to reconnect ({})",
                        envelope.reason.as_deref().unwrap_or("no reason")
                    )));
                }
                _ => {
                    counters.events_received.fetch_add(1, Ordering::Relaxed);
                    if let Some(id) = &envelope.envelope_id {
                        let ack = serde_json::json!({ "envelope_id": id }).to_string();
                        if let Err(e) = ws.send(Frame::Text(ack.into())).await {
                            break Err(network(format!("Socket Mode ack: {e}")));
                        }
                        counters.events_acked.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(payload) = envelope.payload {
                        let (this, cancel) = (self.clone(), ctx.cancel.clone());
                        let span = tracing::info_span!("slack event", event_id = ?payload.event_id);
                        handlers.spawn(tracing::Instrument::instrument(
                            async move {
                                let handled = tokio::time::timeout(HANDLE_DEADLINE, this.handle(payload, &cancel));
                                tokio::select! {
                                    // At shutdown an answer still waiting for the budget is dropped.
                                    () = cancel.cancelled() => {}
                                    outcome = handled => match outcome {
                                        Ok(Err(e)) => tracing::warn!(error = %e.message(), "Slack event not handled"),
                                        Err(_) => tracing::warn!("Slack event not handled in time"),
                                        Ok(Ok(())) => {}
                                    },
                                }
                            },
                            span,
                        ));
                    }
                }
            }
        };
        counters.socket_connected.store(0, Ordering::Relaxed);
        if ended.is_err() {
            ctx.health.degraded("Slack Socket Mode disconnected");
        }
        handlers.close();
        handlers.wait().await;
        ended
    }

    /// Handles one event once: a redelivery of an event being handled, or handled before (its id
    /// is recorded once its answer is), is counted and dropped. The id is recorded after the
    /// answer, not before, so a crash in between leaves the redelivery to answer; the answer
    /// itself is exactly once by the mention's ts ([`crate::answers`]).
    async fn handle(
        &self,
        payload: Payload,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), UnitError> {
        let (Some(event_id), Some(event)) = (payload.event_id, payload.event) else {
            return Ok(());
        };
        let Some(_handling) = InFlight::enter(&self.in_flight, &event_id) else {
            self.count_duplicate();
            return Ok(());
        };
        let id = event_id.clone();
        let seen = self
            .store
            .read(move |c| {
                c.query_row(
                    "SELECT 1 FROM slack_socket_events WHERE event_id = ?1",
                    params![id],
                    |_| Ok(()),
                )
                .optional()
            })
            .await
            .map_err(|e| UnitError::new(ErrorKind::Internal, e.to_string()))?;
        if seen.is_some() {
            self.count_duplicate();
            return Ok(());
        }
        self.answer(event, cancel).await?;
        self.store
            .write(move |c| {
                c.execute(
                    "INSERT OR IGNORE INTO slack_socket_events (event_id, received_at) VALUES (?1, strftime('%Y-%m-%dT%H:%M:%SZ','now'))",
                    params![event_id],
                )
            })
            .await
            .map_err(|e| UnitError::new(ErrorKind::Internal, e.to_string()))?;
        Ok(())
    }

    fn count_duplicate(&self) {
        self.api
            .counters
            .events_deduplicated
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn answer(
        &self,
        event: Event,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), UnitError> {
        // `app_mention` is answered; `message` (with the app subscribed to `message.channels`)
        // is only stored, so that the agent reads the whole thread: a mention arrives as both,
        // and only one of them may lead to an answer. Edits, deletions and other subtypes are
        // not messages of the conversation.
        let mention = match (event.kind.as_str(), event.subtype.as_deref()) {
            ("app_mention", _) => true,
            ("message", None) => false,
            _ => return Ok(()),
        };
        let (Some(channel), Some(ts)) = (event.channel.as_deref(), event.ts.as_deref()) else {
            return Ok(());
        };
        let me = self.api.me().await.map_err(|e| e.into_unit_error())?;
        let tenant = self.channels.get(channel).map(|t| TenantView {
            repo: &t.repo,
            web: &t.web,
            writers: &t.writers,
        });
        let hearing = Hearing {
            api: &self.api,
            store: &self.store,
            bot_user: &me.user_id,
            responder: self.responder.as_ref(),
            cancel,
        };
        let heard = Heard {
            channel,
            thread: event.thread_ts.as_deref().unwrap_or(ts),
            ts,
            user: event.user.as_deref(),
            bot_id: event.bot_id.as_deref(),
            text: &event.text,
        };
        match (mention, tenant) {
            (true, _) => hearing.hear(tenant, &heard).await,
            (false, Some(_)) => hearing.remember(&heard).await,
            (false, None) => Ok(()),
        }
    }
}

/// The ids of the events being handled now: a redelivery that arrives while the first delivery
/// is still answering waits for nothing and posts nothing.
#[derive(Clone, Default)]
pub struct InFlightEvents(Arc<Mutex<HashSet<String>>>);

/// One event id held in [`InFlightEvents`] until dropped.
struct InFlight<'a> {
    set: &'a InFlightEvents,
    id: String,
}

impl<'a> InFlight<'a> {
    fn enter(set: &'a InFlightEvents, id: &str) -> Option<InFlight<'a>> {
        let mut ids = set.0.lock().unwrap_or_else(|e| e.into_inner());
        ids.insert(id.to_owned()).then(|| InFlight {
            set,
            id: id.to_owned(),
        })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut ids = self.set.0.lock().unwrap_or_else(|e| e.into_inner());
        ids.remove(&self.id);
    }
}
