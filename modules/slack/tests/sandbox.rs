//! The client against the sandbox Slack (`modules/slack-sandbox`): the real payload shapes, the
//! threads, metadata read back, pages of 15 followed to the end, and an injected 429.

use productbuilder_scheduler::ErrorKind;
use productbuilder_slack::api::SlackApi;
use productbuilder_slack_sandbox::{BOT_TOKEN, Options, Sandbox};

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn auth_test_names_the_bot_and_a_revoked_token_is_permanent() {
    provider();
    let slack = Sandbox::start().await.unwrap();
    let api = SlackApi::new(&slack.api_url(), BOT_TOKEN, 50).unwrap();
    let me = api.auth_test().await.unwrap();
    assert_eq!(me.user_id, slack.bot_user_id());
    assert_eq!(me.bot_id, Some(slack.bot_id()));
    slack.revoke_token(BOT_TOKEN);
    let e = api.auth_test().await.unwrap_err().into_unit_error();
    assert_eq!(e.kind(), ErrorKind::BadCredentials, "{}", e.message());
}

#[tokio::test]
async fn a_thread_with_an_edited_status_and_an_event_found_again_by_its_key() {
    provider();
    let slack = Sandbox::start().await.unwrap();
    let channel = slack.create_channel("shop");
    let api = SlackApi::new(&slack.api_url(), BOT_TOKEN, 50).unwrap();
    let parent = api
        .post(&channel, None, "*Pull request* #1: &lt;!channel&gt;", None)
        .await
        .unwrap();
    let status = api
        .post(&channel, Some(&parent), "Status: open", None)
        .await
        .unwrap();
    api.update(&channel, &status, "Status: open · preview ready")
        .await
        .unwrap();
    slack.fail_next("chat.postMessage", 429, Some(1));
    api.post(&channel, Some(&parent), "bob commented", Some("comment:10"))
        .await
        .unwrap();

    let top = slack.messages(&channel);
    assert_eq!(top.len(), 1, "one parent");
    // Escaped text reaches Slack as typed: nothing turned it into a live <!channel>.
    assert_eq!(top[0].text, "*Pull request* #1: &lt;!channel&gt;");
    let thread = slack.thread(&channel, &parent);
    assert_eq!(thread.len(), 3, "{thread:?}");
    assert_eq!(slack.edits_of(&status).len(), 2);
    assert_eq!(
        api.counters
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // After a crash between the post and its record, the key is found in the thread.
    let page = api
        .replies(&channel, &parent, None, None, 100)
        .await
        .unwrap();
    let keys: Vec<_> = page
        .messages
        .iter()
        .filter_map(|m| m.event_key.as_deref())
        .collect();
    assert_eq!(keys, ["comment:10"]);
    assert!(page.messages.iter().all(|m| m.bot_id.is_some()));
}

#[tokio::test]
async fn pages_of_fifteen_followed_by_cursor_miss_no_message() {
    provider();
    let slack = Sandbox::start_with(Options {
        max_page_size: Some(15),
        ..Options::default()
    })
    .await
    .unwrap();
    let channel = slack.create_channel("shop");
    for i in 0..40 {
        slack.post_user_message(&channel, "U0ALICE", &format!("m{i}"), None);
    }
    let api = SlackApi::new(&slack.api_url(), BOT_TOKEN, 1000).unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = api
            .history(&channel, None, cursor.as_deref(), 100)
            .await
            .unwrap();
        assert!(page.messages.len() <= 15);
        seen.extend(page.messages.into_iter().map(|m| m.text));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    seen.sort();
    let mut want: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(seen, want);
}
