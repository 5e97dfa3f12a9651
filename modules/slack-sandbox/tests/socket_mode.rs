//! Socket Mode: hello, app_mention envelopes in the fixture's shape, acks, redelivery,
//! disconnect frames and abrupt closes, over a real WebSocket client.

mod common;

use std::time::Duration;

use common::{assert_same_shape, fixture, form};
use futures_util::{SinkExt, StreamExt};
use productbuilder_slack_sandbox::{APP_TOKEN, DisconnectReason, Options, Sandbox};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);

/// `apps.connections.open`'s URL, as a client gets it.
async fn socket_url(slack: &Sandbox) -> String {
    let opened = form(&slack.url(), "apps.connections.open", APP_TOKEN, &[]).await;
    opened.body["url"].as_str().expect("a url").to_owned()
}

/// Opens a connection the way slack-morphism does (appending `&debug_reconnects=true`) and
/// reads its `hello`.
async fn connect(slack: &Sandbox) -> (Socket, Value) {
    let url = format!("{}&debug_reconnects=true", socket_url(slack).await);
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let hello = next_frame(&mut socket).await;
    (socket, hello)
}

/// The next text frame as JSON; panics on a close, an error or a timeout.
async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("the connection still open")
            .expect("a readable frame");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON"),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

async fn ack(socket: &mut Socket, envelope: &Value) {
    let ack = json!({"envelope_id": envelope["envelope_id"]});
    socket
        .send(Message::Text(ack.to_string().into()))
        .await
        .unwrap();
}

fn quick(ack_timeout_ms: u64) -> Options {
    Options {
        ack_timeout: Duration::from_millis(ack_timeout_ms),
        disconnect_grace: Duration::from_millis(50),
        ..Options::default()
    }
}

#[tokio::test]
async fn a_mention_arrives_as_an_events_api_envelope_and_its_ack_is_recorded() {
    // Long enough for a loaded machine to ack in time, short enough to see a redelivery.
    let slack = Sandbox::start_with(quick(500)).await.unwrap();
    let channel = slack.create_channel("deploys");
    let (mut socket, hello) = connect(&slack).await;
    assert_same_shape(&hello, &fixture("socket-mode-hello.json"), &[], "hello");
    assert_eq!(hello["num_connections"], 1);
    assert_eq!(slack.connections(), 1);

    // Neither a plain message nor the bot's own mention makes an event.
    slack.post_user_message(&channel, "U0ALICE", "just talking", None);
    let text = format!("<@{}> status", slack.bot_user_id());
    let own = form(
        &slack.url(),
        "chat.postMessage",
        productbuilder_slack_sandbox::BOT_TOKEN,
        &[("channel", &channel), ("text", &text)],
    )
    .await;
    assert_eq!(own.body["ok"], true);
    let ts = slack.post_user_message(&channel, "U0ALICE", &text, None);
    let envelope = next_frame(&mut socket).await;
    assert_same_shape(
        &envelope,
        &fixture("socket-mode-app_mention.json"),
        &[],
        "envelope",
    );
    let event = &envelope["payload"]["event"];
    assert_eq!(envelope["type"], "events_api");
    assert_eq!(envelope["retry_attempt"], 0);
    assert_eq!(event["type"], "app_mention");
    assert_eq!(event["text"], text.as_str());
    assert_eq!(event["user"], "U0ALICE");
    assert_eq!(event["channel"], channel.as_str());
    assert_eq!(event["ts"], ts.as_str());
    assert!(event.get("thread_ts").is_none());
    assert_eq!(
        event["blocks"][0]["elements"][0]["elements"][0]["user_id"],
        slack.bot_user_id()
    );

    ack(&mut socket, &envelope).await;
    assert!(slack.wait_until(WAIT, |s| s.acks().len() == 1).await);
    let acks = slack.acks();
    assert_eq!(
        acks[0].envelope_id,
        envelope["envelope_id"].as_str().unwrap()
    );
    assert_eq!(
        acks[0].event_id.as_deref(),
        envelope["payload"]["event_id"].as_str()
    );
    assert!(acks[0].delay < WAIT);
    // Acked in time: never sent again.
    let redelivered = slack
        .wait_until(Duration::from_millis(1000), |s| s.envelopes().len() > 1)
        .await;
    assert!(!redelivered, "{:?}", slack.envelopes());
}

#[tokio::test]
async fn a_mention_in_a_thread_carries_its_thread_ts() {
    let slack = Sandbox::start_with(quick(1000)).await.unwrap();
    let channel = slack.create_channel("deploys");
    let (mut socket, _) = connect(&slack).await;
    let parent = slack.post_user_message(&channel, "U0ALICE", "PR #7", None);
    let text = format!("<@{}> help", slack.bot_user_id());
    slack.post_user_message(&channel, "U0BOB", &text, Some(&parent));
    let envelope = next_frame(&mut socket).await;
    assert_eq!(envelope["payload"]["event"]["thread_ts"], parent.as_str());
}

#[tokio::test]
async fn an_unacked_envelope_comes_again_with_the_same_event_id() {
    let slack = Sandbox::start_with(quick(100)).await.unwrap();
    let channel = slack.create_channel("deploys");
    let (mut socket, _) = connect(&slack).await;
    let text = format!("<@{}> status", slack.bot_user_id());
    slack.post_user_message(&channel, "U0ALICE", &text, None);
    let first = next_frame(&mut socket).await;
    let second = next_frame(&mut socket).await;
    assert_eq!(second["payload"]["event_id"], first["payload"]["event_id"]);
    assert_ne!(second["envelope_id"], first["envelope_id"]);
    assert_eq!(second["retry_attempt"], 1);
    assert_eq!(second["retry_reason"], "timeout");
    ack(&mut socket, &second).await;
    assert!(slack.wait_until(WAIT, |s| s.acks().len() == 1).await);
    assert_eq!(slack.acks()[0].retry_attempt, 1);

    // A forced redelivery, acked or not.
    let event_id = first["payload"]["event_id"].as_str().unwrap();
    assert!(slack.redeliver(event_id));
    let third = next_frame(&mut socket).await;
    assert_eq!(third["payload"]["event_id"], event_id);
    assert_eq!(third["retry_attempt"], 2);
    assert!(!slack.redeliver("Ev-never"));
}

#[tokio::test]
async fn redelivery_gives_up_after_max_retries() {
    let options = Options {
        max_retries: 1,
        ..quick(50)
    };
    let slack = Sandbox::start_with(options).await.unwrap();
    let channel = slack.create_channel("deploys");
    let (mut socket, _) = connect(&slack).await;
    slack.post_user_message(
        &channel,
        "U0ALICE",
        &format!("<@{}>", slack.bot_user_id()),
        None,
    );
    assert_eq!(next_frame(&mut socket).await["retry_attempt"], 0);
    assert_eq!(next_frame(&mut socket).await["retry_attempt"], 1);
    let more = slack
        .wait_until(Duration::from_millis(400), |s| s.envelopes().len() > 2)
        .await;
    assert!(!more, "{:?}", slack.envelopes());
}

#[tokio::test]
async fn events_wait_for_a_connection() {
    let slack = Sandbox::start_with(quick(1000)).await.unwrap();
    let channel = slack.create_channel("deploys");
    let text = format!("<@{}> status", slack.bot_user_id());
    slack.post_user_message(&channel, "U0ALICE", &text, None);
    assert!(slack.envelopes().is_empty());
    let (mut socket, _) = connect(&slack).await;
    let envelope = next_frame(&mut socket).await;
    assert_eq!(envelope["payload"]["event"]["text"], text.as_str());
    assert_eq!(envelope["retry_attempt"], 0);
}

#[tokio::test]
async fn disconnect_frames_have_the_fixture_shapes_and_are_followed_by_a_close() {
    let slack = Sandbox::start_with(quick(1000)).await.unwrap();
    for (reason, file) in [
        (
            DisconnectReason::RefreshRequested,
            "socket-mode-disconnect.refresh_requested.json",
        ),
        (
            DisconnectReason::Warning,
            "socket-mode-disconnect.warning.json",
        ),
        (
            DisconnectReason::LinkDisabled,
            "socket-mode-disconnect.link_disabled.json",
        ),
    ] {
        let (mut socket, _) = connect(&slack).await;
        assert!(slack.wait_until(WAIT, |s| s.open_connections() == 1).await);
        slack.send_disconnect(reason);
        let frame = next_frame(&mut socket).await;
        assert_same_shape(&frame, &fixture(file), &[], file);
        assert_eq!(frame["reason"], fixture(file)["reason"]);
        let closed = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("closed in time");
        assert!(matches!(closed, Some(Ok(Message::Close(_)))), "{closed:?}");
        assert!(slack.wait_until(WAIT, |s| s.open_connections() == 0).await);
    }
    assert_eq!(slack.connections(), 3);
}

#[tokio::test]
async fn close_abruptly_drops_the_stream_without_a_close_frame() {
    let slack = Sandbox::start_with(quick(1000)).await.unwrap();
    let (mut socket, _) = connect(&slack).await;
    slack.close_abruptly();
    let end = tokio::time::timeout(WAIT, socket.next())
        .await
        .expect("dropped in time");
    assert!(
        matches!(end, None | Some(Err(_))),
        "no close frame expected, got {end:?}"
    );
    assert!(slack.wait_until(WAIT, |s| s.open_connections() == 0).await);
    // A new connection works.
    let (_socket, hello) = connect(&slack).await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(slack.connections(), 2);
}

#[tokio::test]
async fn a_ticket_opens_one_connection_only() {
    let slack = Sandbox::start().await.unwrap();
    let url = socket_url(&slack).await;
    let (_first, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("first use");
    let second = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(second.is_err(), "a used ticket is refused");
    let forged = url.replace("sbx-ticket", "forged");
    assert!(tokio_tungstenite::connect_async(forged).await.is_err());
}

#[tokio::test]
async fn an_event_goes_to_one_connection_only() {
    let slack = Sandbox::start_with(quick(1000)).await.unwrap();
    let channel = slack.create_channel("deploys");
    let (mut older, _) = connect(&slack).await;
    let (mut newer, hello) = connect(&slack).await;
    assert_eq!(hello["num_connections"], 2);
    slack.post_user_message(
        &channel,
        "U0ALICE",
        &format!("<@{}>", slack.bot_user_id()),
        None,
    );
    let envelope = next_frame(&mut newer).await;
    ack(&mut newer, &envelope).await;
    assert!(slack.wait_until(WAIT, |s| s.acks().len() == 1).await);
    let on_older = tokio::time::timeout(Duration::from_millis(200), older.next()).await;
    assert!(on_older.is_err(), "the older connection got {on_older:?}");
}
