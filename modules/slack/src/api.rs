//! The Slack Web API as this module uses it: slack-morphism's models and transport, on a
//! connector we build (its default is HTTPS-only; tests and the sandbox speak plain `http://`),
//! every call through the workspace's [`Budget`] and retried after a 429 as Slack asks.
//!
//! slack-morphism's own rate control is off: its retries are bounded and per call, while Slack's
//! `Retry-After` holds the whole workspace, which only a budget shared by every call can honour.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use productbuilder_scheduler::{ErrorKind, UnitError};
use serde::Deserialize;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

use crate::budget::{Budget, Lane};

type Connector = SlackClientHyperConnector<HttpsConnector<HttpConnector>>;

/// The `event_type` of the metadata on every event-lane message: how a lost post is found again.
pub const EVENT_TYPE: &str = "productbuilder_event";

/// A Slack call that failed, already safe to log (no token, no body).
#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    /// `ok: false` with Slack's error code (`invalid_auth`, `channel_not_found`, ...).
    #[error("Slack {method}: {code}")]
    Api { method: &'static str, code: String },
    #[error("Slack {method}: HTTP {status}")]
    Http { method: &'static str, status: u16 },
    #[error("Slack {method}: {message}")]
    Transport {
        method: &'static str,
        message: String,
    },
}

impl SlackError {
    /// The codes that mean the token itself is wrong: no retry will fix them.
    pub fn is_bad_token(&self) -> bool {
        matches!(self, SlackError::Api { code, .. } if matches!(code.as_str(),
            "invalid_auth" | "not_authed" | "account_inactive" | "token_revoked" | "token_expired"))
    }

    /// For the scheduler: a bad token is permanent and names the key to fix.
    pub fn into_unit_error(self) -> UnitError {
        match &self {
            e if e.is_bad_token() => UnitError::new(
                ErrorKind::BadCredentials,
                format!(
                    "{self}; check [slack] bot_token (a bot token xoxb-… of the installed app)"
                ),
            ),
            SlackError::Api { code, .. } if code == "missing_scope" => UnitError::new(
                ErrorKind::Forbidden,
                format!("{self}; add the scope to the Slack app and reinstall it"),
            ),
            SlackError::Api { code, .. }
                if matches!(code.as_str(), "channel_not_found" | "not_in_channel") =>
            {
                UnitError::new(
                    ErrorKind::NotFound,
                    format!("{self}; check the tenant's slack_channel and invite the app to it"),
                )
            }
            SlackError::Api { .. } => UnitError::new(ErrorKind::Validation, self.to_string()),
            SlackError::Http { status, .. } => {
                UnitError::from_http_status(*status, None, self.to_string())
            }
            SlackError::Transport { .. } => UnitError::new(ErrorKind::Network, self.to_string()),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct SlackCounters {
    pub posted: AtomicU64,
    pub updated: AtomicU64,
    pub rate_limited: AtomicU64,
    /// 1 while a Socket Mode connection is open (after its `hello`).
    pub socket_connected: AtomicU64,
    pub events_received: AtomicU64,
    pub events_acked: AtomicU64,
    pub events_deduplicated: AtomicU64,
}

/// Who the bot is, from `auth.test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub bot_id: Option<String>,
    pub team: String,
    /// The workspace's web address (`https://acme.slack.com/`), for links to threads.
    pub url: String,
}

/// One message as read back from history or a thread.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub ts: String,
    pub thread_ts: Option<String>,
    pub user: Option<String>,
    pub bot_id: Option<String>,
    pub text: String,
    pub latest_reply: Option<String>,
    /// The event key of a message this daemon posted with [`EVENT_TYPE`] metadata.
    pub event_key: Option<String>,
}

/// One page of history or replies, and the cursor of the next (none on the last page).
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub messages: Vec<Message>,
    pub next_cursor: Option<String>,
}

/// The Slack client of one workspace (one bot token): shared by every unit of the module.
#[derive(Clone)]
pub struct SlackApi {
    client: Arc<SlackClient<Connector>>,
    token: SlackApiToken,
    budget: Arc<Budget>,
    pub counters: Arc<SlackCounters>,
    /// `auth.test`'s answer, asked once: who "mentions of the bot" are addressed to.
    me: Arc<tokio::sync::OnceCell<Identity>>,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApi").finish_non_exhaustive()
    }
}

/// A retry after 429 without `Retry-After`: Slack always sends it, so this is a guard only.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

impl SlackApi {
    /// A client for `api_url` (http or https). Needs a rustls crypto provider installed
    /// (`main` installs one).
    pub fn new(
        api_url: &str,
        bot_token: &str,
        history_requests_per_minute: u32,
    ) -> std::io::Result<SlackApi> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        let connector =
            SlackClientHyperConnector::with_connector(https).with_slack_api_url(api_url);
        Ok(SlackApi {
            client: Arc::new(SlackClient::new(connector)),
            token: SlackApiToken::new(bot_token.to_owned().into()),
            budget: Arc::new(Budget::new(history_requests_per_minute)),
            counters: Arc::default(),
            me: Arc::default(),
        })
    }

    /// Runs `call` when `lane` allows; after a 429 holds the workspace for `Retry-After` and
    /// tries again (the caller's deadline is the only limit: writes are never dropped).
    async fn paced<T, F, Fut>(
        &self,
        method: &'static str,
        lane: Lane,
        call: F,
    ) -> Result<T, SlackError>
    where
        F: Fn(Arc<SlackClient<Connector>>, SlackApiToken) -> Fut,
        Fut: std::future::Future<Output = ClientResult<T>>,
    {
        loop {
            self.budget.spend(&lane).await;
            match call(self.client.clone(), self.token.clone()).await {
                Ok(value) => return Ok(value),
                Err(SlackClientError::RateLimitError(e)) => {
                    self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let wait = e.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                    tracing::info!(
                        method,
                        wait_secs = wait.as_secs(),
                        "Slack rate limit; waiting"
                    );
                    self.budget.hold(wait);
                }
                Err(e) => return Err(map_error(method, e)),
            }
        }
    }

    /// `apps.connections.open` with the app-level token: the WebSocket URL of a new connection.
    pub async fn open_socket(&self, app_token: &str) -> Result<String, SlackError> {
        let app = SlackApiToken::new(app_token.to_owned().into());
        let r = self
            .paced("apps.connections.open", Lane::Other, |c, _bot| {
                let app = app.clone();
                async move {
                    c.open_session(&app)
                        .apps_connections_open(&SlackApiAppsConnectionOpenRequest::new())
                        .await
                }
            })
            .await?;
        Ok(r.url.0.to_string())
    }

    /// The identity if an `auth.test` already succeeded (the preflight's): never a network call,
    /// for pages that must not wait on Slack.
    pub fn known_me(&self) -> Option<Identity> {
        self.me.get().cloned()
    }

    /// The bot's identity, from the first successful `auth.test`.
    pub async fn me(&self) -> Result<Identity, SlackError> {
        self.me.get_or_try_init(|| self.auth_test()).await.cloned()
    }

    pub async fn auth_test(&self) -> Result<Identity, SlackError> {
        let r = self
            .paced("auth.test", Lane::Other, |c, t| async move {
                c.open_session(&t).auth_test().await
            })
            .await?;
        Ok(Identity {
            user_id: r.user_id.0,
            bot_id: r.bot_id.map(|b| b.0),
            team: r.team,
            url: r.url.0.to_string(),
        })
    }

    /// Posts `text` to `channel` (in the thread `thread_ts` if given), with the event `key` as
    /// metadata when given; returns the message's ts.
    pub async fn post(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        text: &str,
        event_key: Option<&str>,
    ) -> Result<String, SlackError> {
        let request = SlackApiChatPostMessageRequest {
            channel: channel.into(),
            content: SlackMessageContent::new()
                .with_text(text.to_owned())
                .opt_metadata(event_key.map(metadata)),
            as_user: None,
            icon_emoji: None,
            icon_url: None,
            // Slack must not turn `@here` or `#general` in GitHub text into live references.
            link_names: Some(false),
            parse: Some("none".to_owned()),
            thread_ts: thread_ts.map(SlackTs::from),
            username: None,
            reply_broadcast: None,
            unfurl_links: Some(false),
            unfurl_media: Some(false),
        };
        let r = self
            .paced(
                "chat.postMessage",
                Lane::Post(channel.to_owned()),
                |c, t| {
                    let request = request.clone();
                    async move { c.open_session(&t).chat_post_message(&request).await }
                },
            )
            .await?;
        self.counters.posted.fetch_add(1, Ordering::Relaxed);
        Ok(r.ts.0)
    }

    /// Replaces the text of the message `ts`.
    pub async fn update(&self, channel: &str, ts: &str, text: &str) -> Result<(), SlackError> {
        let request = SlackApiChatUpdateRequest {
            channel: channel.into(),
            content: SlackMessageContent::new().with_text(text.to_owned()),
            ts: ts.into(),
            as_user: None,
            link_names: Some(false),
            parse: Some("none".to_owned()),
            reply_broadcast: None,
        };
        self.paced("chat.update", Lane::Other, |c, t| {
            let request = request.clone();
            async move { c.open_session(&t).chat_update(&request).await }
        })
        .await?;
        self.counters.updated.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One page of `channel`'s top-level messages newer than `oldest`.
    pub async fn history(
        &self,
        channel: &str,
        oldest: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page, SlackError> {
        let mut params = vec![
            ("channel", Some(channel.to_owned())),
            ("limit", Some(limit.to_string())),
            ("include_all_metadata", Some("true".to_owned())),
        ];
        params.push(("oldest", oldest.map(str::to_owned)));
        params.push(("cursor", cursor.map(str::to_owned)));
        self.read_page("conversations.history", Lane::History, params)
            .await
    }

    /// The ts of the message this daemon posted with the metadata key `key` after `oldest`: in the
    /// thread `thread` when given, else among the channel's top-level messages; every page is read
    /// until it is found. How a post that a crash may have interrupted is found again.
    pub async fn find_by_key(
        &self,
        channel: &str,
        thread: Option<&str>,
        oldest: &str,
        key: &str,
    ) -> Result<Option<String>, SlackError> {
        let mut cursor: Option<String> = None;
        loop {
            let page = match thread {
                Some(ts) => {
                    self.replies(channel, ts, Some(oldest), cursor.as_deref(), 100)
                        .await?
                }
                None => {
                    self.history(channel, Some(oldest), cursor.as_deref(), 100)
                        .await?
                }
            };
            if let Some(m) = page
                .messages
                .iter()
                .find(|m| m.event_key.as_deref() == Some(key))
            {
                return Ok(Some(m.ts.clone()));
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(None),
            }
        }
    }

    /// One page of the thread `ts` in `channel` (the parent first), newer than `oldest`.
    pub async fn replies(
        &self,
        channel: &str,
        ts: &str,
        oldest: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page, SlackError> {
        let params = vec![
            ("channel", Some(channel.to_owned())),
            ("ts", Some(ts.to_owned())),
            ("limit", Some(limit.to_string())),
            // slack-morphism's request type lacks it, hence the generic call.
            ("include_all_metadata", Some("true".to_owned())),
            ("oldest", oldest.map(str::to_owned)),
            ("cursor", cursor.map(str::to_owned)),
        ];
        self.read_page("conversations.replies", Lane::Replies, params)
            .await
    }

    async fn read_page(
        &self,
        method: &'static str,
        lane: Lane,
        params: Vec<(&'static str, Option<String>)>,
    ) -> Result<Page, SlackError> {
        let r: RawPage = self
            .paced(method, lane, |c, t| {
                let params = params.clone();
                async move {
                    let pairs: Vec<(&str, Option<&String>)> =
                        params.iter().map(|(k, v)| (*k, v.as_ref())).collect();
                    let session = c.open_session(&t);
                    session
                        .http_session_api
                        .http_get(method, &pairs, None)
                        .await
                }
            })
            .await?;
        Ok(r.into_page())
    }
}

fn metadata(key: &str) -> SlackMessageMetadata {
    SlackMessageMetadata {
        event_type: EVENT_TYPE.to_owned(),
        event_payload: Some(HashMap::from([("key".to_owned(), key.to_owned())])),
    }
}

fn map_error(method: &'static str, e: SlackClientError) -> SlackError {
    match e {
        SlackClientError::ApiError(e) => SlackError::Api {
            method,
            code: e.code,
        },
        SlackClientError::HttpError(e) => SlackError::Http {
            method,
            status: e.status_code.as_u16(),
        },
        // The others carry no body or token: their text is safe to log.
        other => SlackError::Transport {
            method,
            message: other.to_string(),
        },
    }
}

/// A history or replies page as Slack sends it, only the fields used.
#[derive(Debug, Deserialize)]
struct RawPage {
    #[serde(default)]
    messages: Vec<RawMessage>,
    response_metadata: Option<RawCursor>,
}

#[derive(Debug, Deserialize)]
struct RawCursor {
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    ts: String,
    thread_ts: Option<String>,
    user: Option<String>,
    bot_id: Option<String>,
    #[serde(default)]
    text: String,
    latest_reply: Option<String>,
    metadata: Option<RawMetadata>,
}

#[derive(Debug, Deserialize)]
struct RawMetadata {
    event_type: String,
    event_payload: Option<HashMap<String, serde_json::Value>>,
}

impl RawPage {
    fn into_page(self) -> Page {
        Page {
            messages: self
                .messages
                .into_iter()
                .map(|m| Message {
                    event_key: m
                        .metadata
                        .filter(|md| md.event_type == EVENT_TYPE)
                        .and_then(|md| md.event_payload?.remove("key"))
                        .and_then(|v| v.as_str().map(str::to_owned)),
                    ts: m.ts,
                    thread_ts: m.thread_ts,
                    user: m.user,
                    bot_id: m.bot_id,
                    text: m.text,
                    latest_reply: m.latest_reply,
                })
                .collect(),
            next_cursor: self
                .response_metadata
                .and_then(|m| m.next_cursor)
                .filter(|c| !c.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_the_event_key_only_from_our_event_type() {
        let raw: RawPage = serde_json::from_str(
            r#"{"ok":true,"messages":[
                {"ts":"1.1","text":"parent","latest_reply":"1.3"},
                {"ts":"1.2","thread_ts":"1.1","bot_id":"B1","text":"x",
                 "metadata":{"event_type":"productbuilder_event","event_payload":{"key":"comment:7"}}},
                {"ts":"1.3","thread_ts":"1.1","user":"U1","text":"y",
                 "metadata":{"event_type":"someone_else","event_payload":{"key":"comment:8"}}}
            ],"has_more":true,"response_metadata":{"next_cursor":"abc"}}"#,
        )
        .unwrap();
        let page = raw.into_page();
        assert_eq!(page.next_cursor.as_deref(), Some("abc"));
        let keys: Vec<_> = page
            .messages
            .iter()
            .map(|m| m.event_key.as_deref())
            .collect();
        assert_eq!(keys, [None, Some("comment:7"), None]);
        assert_eq!(page.messages[0].latest_reply.as_deref(), Some("1.3"));
    }

    #[test]
    fn an_empty_cursor_is_the_last_page() {
        let raw: RawPage = serde_json::from_str(
            r#"{"ok":true,"messages":[],"response_metadata":{"next_cursor":""}}"#,
        )
        .unwrap();
        assert!(raw.into_page().next_cursor.is_none());
    }

    #[test]
    fn a_revoked_token_is_permanent_and_names_the_key() {
        let e = SlackError::Api {
            method: "auth.test",
            code: "token_revoked".into(),
        }
        .into_unit_error();
        assert_eq!(e.kind(), ErrorKind::BadCredentials);
        assert!(e.message().contains("[slack] bot_token"), "{}", e.message());
    }
}
