//! The Web API against the fixtures' shapes, its errors, pagination, rate limits and faults.

mod common;

use common::{assert_same_shape, fixture, form, get, json};
use productbuilder_slack_sandbox::{APP_TOKEN, BOT_TOKEN, Options, Sandbox};
use serde_json::{Value, json};

#[tokio::test]
async fn auth_test_names_the_bot_and_rejects_bad_tokens() {
    let slack = Sandbox::start().await.unwrap();
    let base = slack.url();
    let ok = form(&base, "auth.test", BOT_TOKEN, &[]).await;
    assert_eq!(ok.status, 200);
    assert_same_shape(&ok.body, &fixture("auth.test.json"), &[], "auth.test");
    assert_eq!(ok.body["user_id"], slack.bot_user_id());
    assert_eq!(ok.body["bot_id"], slack.bot_id());
    assert_eq!(ok.body["team_id"], slack.team_id());

    let missing = get(&base, "auth.test", None, "").await;
    assert_eq!(
        (missing.status, &missing.body["error"]),
        (200, &json!("not_authed"))
    );
    let wrong = form(&base, "auth.test", "xoxb-nope", &[]).await;
    assert_eq!(wrong.status, 200);
    assert_same_shape(
        &wrong.body,
        &fixture("auth.test.error.json"),
        &[],
        "auth.test error",
    );
    assert_eq!(wrong.body, fixture("auth.test.error.json"));

    slack.revoke_token(BOT_TOKEN);
    let revoked = form(&base, "auth.test", BOT_TOKEN, &[]).await;
    assert_eq!(revoked.body["error"], "invalid_auth");

    let app_elsewhere = form(&base, "auth.test", APP_TOKEN, &[]).await;
    assert_eq!(app_elsewhere.body["error"], "not_allowed_token_type");
    // A second bot token (a rotation) still works.
    slack.add_bot_token("xoxb-rotated");
    let empty_json = common::request(
        &base,
        "POST",
        "/api/auth.test",
        Some("xoxb-rotated"),
        Some("application/json"),
        "",
    )
    .await;
    assert_eq!(
        empty_json.body["ok"], true,
        "an empty JSON body is no error"
    );
    let broken_json = common::request(
        &base,
        "POST",
        "/api/auth.test",
        Some("xoxb-rotated"),
        Some("application/json"),
        "{",
    )
    .await;
    assert_eq!(broken_json.body["error"], "invalid_json");
    let token_param = get(&base, "auth.test", None, &format!("token={APP_TOKEN}")).await;
    assert_eq!(token_param.body["error"], "not_allowed_token_type");
}

#[tokio::test]
async fn post_message_returns_increasing_timestamps_in_the_fixture_shape() {
    let logical = Options {
        logical_clock: true,
        ..Options::default()
    };
    let slack = Sandbox::start_with(logical).await.unwrap();
    let base = slack.url();
    let channel = slack.create_channel("deploys");
    let first = form(
        &base,
        "chat.postMessage",
        BOT_TOKEN,
        &[("channel", &channel), ("text", "one")],
    )
    .await;
    assert_eq!(first.status, 200);
    assert_same_shape(
        &first.body,
        &fixture("chat.postMessage.json"),
        // Legacy bot-message fields Slack no longer sends for bot-token posts.
        &["attachments", "subtype", "username"],
        "chat.postMessage",
    );
    assert_eq!(first.body["ts"], "1700000000.000100");
    assert_eq!(first.body["message"]["ts"], first.body["ts"]);
    assert_eq!(first.body["message"]["bot_id"], slack.bot_id());
    // By name, with JSON blocks and metadata in a JSON body.
    let second = json(
        &base,
        "chat.postMessage",
        BOT_TOKEN,
        &json!({
            "channel": "#deploys",
            "text": "two",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "two"}}],
            "metadata": {"event_type": "preview", "event_payload": {"pr": 7}},
        }),
    )
    .await;
    assert_eq!(second.body["ok"], true, "{}", second.body);
    assert_eq!(second.body["channel"], channel);
    let (a, b) = (
        first.body["ts"].as_str().unwrap(),
        second.body["ts"].as_str().unwrap(),
    );
    assert!(b > a, "{b} after {a}");
    assert_eq!(second.body["message"]["blocks"][0]["type"], "section");

    let messages = slack.messages(&channel);
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[1].metadata.as_ref().unwrap()["event_payload"]["pr"],
        7
    );

    let nowhere = form(
        &base,
        "chat.postMessage",
        BOT_TOKEN,
        &[("channel", "C404"), ("text", "x")],
    )
    .await;
    assert_eq!(
        nowhere.body,
        json!({"ok": false, "error": "channel_not_found"})
    );
    let empty = form(
        &base,
        "chat.postMessage",
        BOT_TOKEN,
        &[("channel", &channel)],
    )
    .await;
    assert_eq!(empty.body["error"], "no_text");
    let bad_thread = form(
        &base,
        "chat.postMessage",
        BOT_TOKEN,
        &[
            ("channel", &channel),
            ("text", "x"),
            ("thread_ts", "1.000001"),
        ],
    )
    .await;
    assert_eq!(bad_thread.body["error"], "thread_not_found");
}

#[tokio::test]
async fn timestamps_follow_the_wall_clock_by_default() {
    let slack = Sandbox::start().await.unwrap();
    let channel = slack.create_channel("deploys");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let first = slack.post_user_message(&channel, "U0ALICE", "a", None);
    let second = slack.post_user_message(&channel, "U0ALICE", "b", None);
    let secs: f64 = first.parse().unwrap();
    assert!(
        (secs - before).abs() < 60.0,
        "{first} is not now ({before})"
    );
    assert_eq!(first.split_once('.').unwrap().1.len(), 6);
    assert!(
        second.parse::<f64>().unwrap() > secs,
        "{second} after {first}"
    );
}

#[tokio::test]
async fn update_edits_only_the_bots_own_messages_and_keeps_every_text() {
    let slack = Sandbox::start().await.unwrap();
    let base = slack.url();
    let channel = slack.create_channel("deploys");
    let posted = form(
        &base,
        "chat.postMessage",
        BOT_TOKEN,
        &[("channel", &channel), ("text", "building")],
    )
    .await;
    let ts = posted.body["ts"].as_str().unwrap().to_owned();
    for text in ["deploying", "live"] {
        let updated = form(
            &base,
            "chat.update",
            BOT_TOKEN,
            &[("channel", &channel), ("ts", &ts), ("text", text)],
        )
        .await;
        assert_same_shape(
            &updated.body,
            &fixture("chat.update.json"),
            &[],
            "chat.update",
        );
        assert_eq!(updated.body["text"], text);
        assert_eq!(updated.body["ts"], ts.as_str());
    }
    assert_eq!(slack.edits_of(&ts), ["building", "deploying", "live"]);
    assert_eq!(slack.messages(&channel)[0].text, "live");

    let theirs = slack.post_user_message(&channel, "U0ALICE", "hello", None);
    let refused = form(
        &base,
        "chat.update",
        BOT_TOKEN,
        &[("channel", &channel), ("ts", &theirs), ("text", "hijack")],
    )
    .await;
    assert_eq!(refused.body, fixture("chat.update.error.json"));
    assert_eq!(slack.edits_of(&theirs), ["hello"]);
    let gone = form(
        &base,
        "chat.update",
        BOT_TOKEN,
        &[("channel", &channel), ("ts", "1.000001"), ("text", "x")],
    )
    .await;
    assert_eq!(gone.body["error"], "message_not_found");
}

/// Posts `n` top-level messages by a person; returns their ts, oldest first.
fn fill(slack: &Sandbox, channel: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| slack.post_user_message(channel, "U0ALICE", &format!("m{i}"), None))
        .collect()
}

fn texts(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn history_pages_newest_first_with_cursors_and_time_bounds() {
    let slack = Sandbox::start().await.unwrap();
    let base = slack.url();
    let channel = slack.create_channel("deploys");
    let ts = fill(&slack, &channel, 5);
    slack.post_user_message(&channel, "U0BOB", "a reply", Some(&ts[1]));

    let first = get(
        &base,
        "conversations.history",
        Some(BOT_TOKEN),
        &format!("channel={channel}&limit=2"),
    )
    .await;
    assert_same_shape(
        &first.body,
        &fixture("conversations.history.json"),
        &[],
        "history",
    );
    assert_eq!(texts(&first.body), ["m4", "m3"]);
    assert_eq!(first.body["has_more"], true);
    let cursor = first.body["response_metadata"]["next_cursor"]
        .as_str()
        .unwrap();
    let second = get(
        &base,
        "conversations.history",
        Some(BOT_TOKEN),
        &format!("channel={channel}&limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(texts(&second.body), ["m2", "m1"]);
    let threaded = &second.body["messages"][1];
    assert_eq!(threaded["reply_count"], 1);
    assert_eq!(threaded["thread_ts"], ts[1].as_str());
    assert!(threaded["latest_reply"].is_string());
    let cursor = second.body["response_metadata"]["next_cursor"]
        .as_str()
        .unwrap();
    let last = get(
        &base,
        "conversations.history",
        Some(BOT_TOKEN),
        &format!("channel={channel}&limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(texts(&last.body), ["m0"]);
    assert_eq!(last.body["has_more"], false);
    assert!(last.body.get("response_metadata").is_none());

    let after = get(
        &base,
        "conversations.history",
        Some(BOT_TOKEN),
        &format!("channel={channel}&oldest={}", ts[2]),
    )
    .await;
    assert_eq!(texts(&after.body), ["m4", "m3"]);
    let inclusive = get(
        &base,
        "conversations.history",
        Some(BOT_TOKEN),
        &format!(
            "channel={channel}&oldest={}&latest={}&inclusive=true",
            ts[1], ts[2]
        ),
    )
    .await;
    assert_eq!(texts(&inclusive.body), ["m2", "m1"]);

    let missing = get(
        &base,
        "conversations.history",
        Some(BOT_TOKEN),
        "channel=C404",
    )
    .await;
    assert_eq!(missing.body, fixture("conversations.history.error.json"));
    let bad_cursor = get(
        &base,
        "conversations.history",
        Some(BOT_TOKEN),
        &format!("channel={channel}&cursor=zzz"),
    )
    .await;
    assert_eq!(bad_cursor.body["error"], "invalid_cursor");
}

#[tokio::test]
async fn replies_give_the_parent_first_then_replies_in_pages() {
    let slack = Sandbox::start().await.unwrap();
    let base = slack.url();
    let channel = slack.create_channel("deploys");
    let parent = slack.post_user_message(&channel, "U0ALICE", "island", None);
    for text in ["one island", "two island", "three for the land"] {
        form(
            &base,
            "chat.postMessage",
            BOT_TOKEN,
            &[
                ("channel", &channel),
                ("text", text),
                ("thread_ts", &parent),
            ],
        )
        .await;
    }
    let page = get(
        &base,
        "conversations.replies",
        Some(BOT_TOKEN),
        &format!("channel={channel}&ts={parent}&limit=3"),
    )
    .await;
    assert_same_shape(
        &page.body,
        &fixture("conversations.replies.json"),
        // Per-user read state, which a bot token does not get.
        &["last_read", "subscribed", "unread_count"],
        "replies",
    );
    assert_eq!(texts(&page.body), ["island", "one island", "two island"]);
    assert_eq!(page.body["messages"][1]["parent_user_id"], "U0ALICE");
    let cursor = page.body["response_metadata"]["next_cursor"]
        .as_str()
        .unwrap();
    let rest = get(
        &base,
        "conversations.replies",
        Some(BOT_TOKEN),
        &format!("channel={channel}&ts={parent}&limit=3&cursor={cursor}"),
    )
    .await;
    assert_eq!(texts(&rest.body), ["island", "three for the land"]);
    assert_eq!(rest.body["has_more"], false);

    let thread = slack.thread(&channel, &parent);
    assert_eq!(thread.len(), 4);
    assert_eq!(thread[3].bot_id.as_deref(), Some(slack.bot_id().as_str()));
    let none = get(
        &base,
        "conversations.replies",
        Some(BOT_TOKEN),
        &format!("channel={channel}&ts=1.000001"),
    )
    .await;
    assert_eq!(none.body, fixture("conversations.replies.error.json"));
}

#[tokio::test]
async fn history_is_limited_per_minute_and_capped_per_page() {
    let options = Options {
        history_per_minute: Some(1),
        max_page_size: Some(15),
        ..Options::default()
    };
    let slack = Sandbox::start_with(options).await.unwrap();
    let base = slack.url();
    let channel = slack.create_channel("deploys");
    fill(&slack, &channel, 20);
    let first = get(
        &base,
        "conversations.history",
        Some(BOT_TOKEN),
        &format!("channel={channel}&limit=100"),
    )
    .await;
    assert_eq!(first.body["messages"].as_array().unwrap().len(), 15);
    assert_eq!(first.body["has_more"], true);
    let throttled = get(
        &base,
        "conversations.history",
        Some(BOT_TOKEN),
        &format!("channel={channel}"),
    )
    .await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.body, json!({"ok": false, "error": "ratelimited"}));
    let retry_after: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let stats = slack.method_stats("conversations.history");
    assert_eq!((stats.calls, stats.rate_limited), (2, 1));

    slack.reset_rate_limits();
    let again = get(
        &base,
        "conversations.history",
        Some(BOT_TOKEN),
        &format!("channel={channel}"),
    )
    .await;
    assert_eq!(again.status, 200);
    // Other methods are not limited.
    for _ in 0..3 {
        assert_eq!(form(&base, "auth.test", BOT_TOKEN, &[]).await.status, 200);
    }
}

#[tokio::test]
async fn injected_faults_answer_once_with_their_status() {
    let slack = Sandbox::start().await.unwrap();
    let base = slack.url();
    let channel = slack.create_channel("deploys");
    slack.fail_next("chat.postMessage", 429, Some(7));
    slack.fail_next("chat.postMessage", 503, None);
    let limited = form(
        &base,
        "chat.postMessage",
        BOT_TOKEN,
        &[("channel", &channel), ("text", "x")],
    )
    .await;
    assert_eq!(
        (limited.status, limited.header("retry-after")),
        (429, Some("7"))
    );
    let unavailable = form(
        &base,
        "chat.postMessage",
        BOT_TOKEN,
        &[("channel", &channel), ("text", "x")],
    )
    .await;
    assert_eq!(unavailable.status, 503);
    let posted = form(
        &base,
        "chat.postMessage",
        BOT_TOKEN,
        &[("channel", &channel), ("text", "x")],
    )
    .await;
    assert_eq!(posted.body["ok"], true);
    assert_eq!(
        slack.messages(&channel).len(),
        1,
        "faulted calls post nothing"
    );
    let stats = slack.method_stats("chat.postMessage");
    assert_eq!((stats.calls, stats.rate_limited), (3, 1));
    let log = slack.requests();
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 503, 200]
    );
    assert_eq!(log[2].params["text"], "x");
}

#[tokio::test]
async fn connections_open_hands_out_a_websocket_url_for_the_app_token_only() {
    let slack = Sandbox::start().await.unwrap();
    let base = slack.url();
    let opened = form(&base, "apps.connections.open", APP_TOKEN, &[]).await;
    assert_same_shape(
        &opened.body,
        &fixture("apps.connections.open.json"),
        &[],
        "apps.connections.open",
    );
    let url = opened.body["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/socket/", base.replacen("http", "ws", 1))),
        "{url}"
    );
    let bot = form(&base, "apps.connections.open", BOT_TOKEN, &[]).await;
    assert_eq!(bot.body["error"], "not_allowed_token_type");
    let unknown = form(&base, "no.such.method", BOT_TOKEN, &[]).await;
    assert_eq!(unknown.body["error"], "unknown_method");
}

#[tokio::test]
async fn a_person_can_mention_the_bot_from_the_page() {
    let slack = Sandbox::start().await.unwrap();
    let base = slack.url();
    let channel = slack.create_channel("deploys");
    slack.post_user_message(&channel, "U0ALICE", "<b>bold</b> & co", None);
    let page = common::request(&base, "GET", "/", None, None, "").await;
    assert_eq!(page.status, 200);
    let said = common::request(
        &base,
        "POST",
        "/say",
        None,
        Some("application/x-www-form-urlencoded"),
        &format!("channel={channel}&user=U0BOB&text=%40productbuilder+status&thread_ts="),
    )
    .await;
    assert_eq!(said.status, 303);
    let messages = slack.messages(&channel);
    assert_eq!(
        messages[1].text,
        format!("<@{}> status", slack.bot_user_id())
    );
    assert_eq!(messages[1].user, "U0BOB");
}

#[tokio::test]
async fn the_page_escapes_what_people_wrote() {
    let slack = Sandbox::start().await.unwrap();
    let channel = slack.create_channel("deploys");
    slack.post_user_message(&channel, "U0ALICE", "<script>x</script>", None);
    let html = raw_get(&slack.url(), "/").await;
    assert!(html.contains("#deploys"), "{html}");
    assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"), "{html}");
    assert!(!html.contains("<script>"), "{html}");
}

/// The raw body of a GET (the page is HTML, not JSON).
async fn raw_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    raw
}

#[tokio::test]
async fn the_request_log_and_counters_can_be_cleared_between_phases() {
    let slack = Sandbox::start().await.unwrap();
    let base = slack.url();
    form(&base, "auth.test", BOT_TOKEN, &[]).await;
    form(&base, "auth.test", BOT_TOKEN, &[]).await;
    let log = slack.requests();
    assert_eq!(log.len(), 2);
    assert!(log[0].at <= log[1].at);
    assert_eq!(slack.stats()["auth.test"].calls, 2);
    slack.clear_requests();
    assert!(slack.requests().is_empty());
    assert!(slack.stats().is_empty());
    form(&base, "auth.test", BOT_TOKEN, &[]).await;
    assert_eq!(slack.method_stats("auth.test").calls, 1);
}
