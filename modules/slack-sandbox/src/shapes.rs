//! The JSON the sandbox answers with, field for field like Slack's (see
//! `shared/fixtures/slack/`).

use serde_json::{Value, json};

use crate::world::{Channel, Message, World};

/// A message as `conversations.history` / `conversations.replies` / `chat.*` show it: `type`,
/// `user`, `text`, `ts`, `team`; `bot_id`/`app_id` for the bot's; `thread_ts` and
/// `parent_user_id` for replies; `thread_ts`, `reply_count`, `reply_users`,
/// `reply_users_count` and `latest_reply` for a thread's parent; `edited` once updated.
pub(crate) fn message(world: &World, channel: &Channel, m: &Message, with_metadata: bool) -> Value {
    let mut out = json!({
        "type": "message",
        "user": m.user,
        "text": m.text,
        "ts": m.ts,
        "team": world.team_id,
    });
    let map = out.as_object_mut().expect("a JSON object");
    if let Some(bot_id) = &m.bot_id {
        map.insert("bot_id".into(), json!(bot_id));
        map.insert("app_id".into(), json!(world.app_id));
        map.insert(
            "bot_profile".into(),
            json!({
                "id": bot_id,
                "app_id": world.app_id,
                "name": world.bot_name,
                "deleted": false,
                "team_id": world.team_id,
            }),
        );
    }
    if let Some(blocks) = &m.blocks {
        map.insert("blocks".into(), blocks.clone());
    }
    if with_metadata && let Some(metadata) = &m.metadata {
        map.insert("metadata".into(), metadata.clone());
    }
    if let Some(edited) = m.edited {
        map.insert(
            "edited".into(),
            json!({"user": m.user, "ts": edited.to_string()}),
        );
    }
    if m.is_reply() {
        map.insert("thread_ts".into(), json!(m.thread_ts));
        let parent_user = m
            .thread_ts
            .as_deref()
            .and_then(crate::ts::Ts::parse)
            .and_then(|t| channel.find(t))
            .map(|p| p.user.clone());
        if let Some(parent_user) = parent_user {
            map.insert("parent_user_id".into(), json!(parent_user));
        }
    } else {
        let replies: Vec<&Message> = channel.replies(m.key).collect();
        if let Some(latest) = replies.last() {
            let mut users: Vec<&str> = Vec::new();
            for r in &replies {
                if !users.contains(&r.user.as_str()) {
                    users.push(&r.user);
                }
            }
            map.insert("thread_ts".into(), json!(m.ts));
            map.insert("reply_count".into(), json!(replies.len()));
            map.insert("reply_users_count".into(), json!(users.len()));
            map.insert("reply_users".into(), json!(users));
            map.insert("latest_reply".into(), json!(latest.ts));
        }
    }
    out
}

/// `{"ok": false, "error": …}`, which Slack sends with HTTP 200.
pub(crate) fn error(code: &str) -> Value {
    json!({"ok": false, "error": code})
}

/// The `hello` frame a Socket Mode connection starts with.
pub(crate) fn hello(app_id: &str, num_connections: usize) -> Value {
    json!({
        "type": "hello",
        "num_connections": num_connections,
        "debug_info": {
            "host": "applink-sandbox",
            "build_number": 1,
            "approximate_connection_time": 18060,
        },
        "connection_info": {"app_id": app_id},
    })
}

/// A `disconnect` frame.
pub(crate) fn disconnect(reason: &str) -> Value {
    json!({
        "type": "disconnect",
        "reason": reason,
        "debug_info": {"host": "wss-sandbox"},
    })
}

/// The `event_callback` payload of an `app_mention` or a `message` (`kind`); a `message` event
/// also says its `channel_type`.
pub(crate) fn event_payload(
    world: &World,
    channel: &str,
    m: &Message,
    event_id: &str,
    client_msg_id: &str,
    kind: &str,
) -> Value {
    let mut event = json!({
        "client_msg_id": client_msg_id,
        "type": kind,
        "text": m.text,
        "user": m.user,
        "ts": m.ts,
        "team": world.team_id,
        "blocks": mention_blocks(&m.text),
        "channel": channel,
        "event_ts": m.ts,
    });
    if let Some(map) = event.as_object_mut() {
        if m.is_reply() {
            map.insert("thread_ts".into(), json!(m.thread_ts));
        }
        if kind == "message" {
            map.insert("channel_type".into(), json!("channel"));
        }
    }
    json!({
        "token": "sandbox-verification-token",
        "team_id": world.team_id,
        "api_app_id": world.app_id,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": m.key.secs(),
        "authorizations": [{
            "enterprise_id": null,
            "team_id": world.team_id,
            "user_id": world.bot_user_id,
            "is_bot": true,
            "is_enterprise_install": false,
        }],
        "is_ext_shared_channel": false,
        "event_context": format!("1-{kind}-{}-{}", world.team_id, channel),
    })
}

/// A `rich_text` block for a text with `<@U…>` mentions: user elements for the mentions, text
/// elements between them.
fn mention_blocks(text: &str) -> Value {
    let mut elements = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<@") {
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        if start > 0 {
            elements.push(json!({"type": "text", "text": &rest[..start]}));
        }
        let user = &rest[start + 2..start + len];
        elements.push(json!({"type": "user", "user_id": user}));
        rest = &rest[start + len + 1..];
    }
    if !rest.is_empty() {
        elements.push(json!({"type": "text", "text": rest}));
    }
    json!([{
        "type": "rich_text",
        "block_id": "sbx0",
        "elements": [{"type": "rich_text_section", "elements": elements}],
    }])
}
