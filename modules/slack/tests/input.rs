//! Polling input against the sandbox Slack with 15-message pages: a mention among more messages
//! than a page holds is answered, once, in its thread; a mention in one of the module's threads is
//! answered there; bots, the bot itself and messages before the first pass are not answered; a
//! 429 on history is waited out.

use productbuilder_slack::api::SlackApi;
use productbuilder_slack::input::Poll;
use productbuilder_slack_sandbox::{BOT_TOKEN, Options, Sandbox};
use productbuilder_store::Store;
use productbuilder_store::rusqlite::params;

#[tokio::test]
async fn mentions_beyond_a_page_and_in_threads_are_answered_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = Sandbox::start_with(Options {
        max_page_size: Some(15),
        ..Options::default()
    })
    .await
    .unwrap();
    let channel = slack.create_channel("shop");
    let store = Store::in_memory().unwrap();
    store.migrate().unwrap();
    let api = SlackApi::new(&slack.api_url(), BOT_TOKEN, 1000).unwrap();
    let bot = slack.bot_user_id();
    // The open pull request #7 as the poller stored it, and its ready preview.
    store
        .write(|c| {
            c.execute(
                "INSERT INTO pulls (repo, number, state, title, head_sha, head_ref, head_repo, fork, author,
                   author_association, draft, labels, seen_at)
                 VALUES ('acme/shop', 7, 'open', '<!here> cart', 'abc', 'cart', 'acme/shop', 0, 'alice',
                   'MEMBER', 0, '[]', '2026-01-01T00:00:00Z')",
                [],
            )?;
            productbuilder_preview::db::begin(c, "acme/shop", 7, "abc", "https://pr-7.example", "p7")?;
            c.execute("UPDATE previews SET status = 'ready' WHERE number = 7", [])
        })
        .await
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let poll = Poll {
        api: &api,
        store: &store,
        channel: &channel,
        repo: "acme/shop",
        bot_user: &bot,
        page_size: 100,
        thread_checks: 50,
        web: "https://github.com",
        writers: &[],
        responder: None,
        cancel: &cancel,
    };
    let before = slack.post_user_message(&channel, "U0ALICE", &format!("<@{bot}> status"), None);
    poll.run().await.unwrap(); // the first pass only sets the cursor

    // The module's own thread for #7 (as the thread worker records it).
    let parent = api
        .post(&channel, None, "Pull request #7", None)
        .await
        .unwrap();
    let (c2, p2) = (channel.clone(), parent.clone());
    store
        .write(move |c| {
            c.execute(
                "INSERT INTO slack_threads (repo, number, channel, parent_ts, parent_text) VALUES ('acme/shop', 7, ?1, ?2, 'x')",
                params![c2, p2],
            )
        })
        .await
        .unwrap();

    let asked = slack.post_user_message(&channel, "U0ALICE", &format!("<@{bot}> status"), None);
    for i in 0..20 {
        slack.post_user_message(&channel, "U0BOB", &format!("chatter {i}"), None);
    }
    let helped = slack.post_user_message(&channel, "U0BOB", &format!("<@{bot}> deploy"), None);
    let in_thread = slack.post_user_message(
        &channel,
        "U0CAROL",
        &format!("<@{bot}> status"),
        Some(&parent),
    );

    // Slack limits the first history call: the poll waits out Retry-After and goes on.
    slack.fail_next("conversations.history", 429, Some(1));
    poll.run().await.unwrap();
    poll.run().await.unwrap();
    assert_eq!(
        api.counters
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let answers = |ts: &str| -> Vec<String> {
        slack
            .thread(&channel, ts)
            .into_iter()
            .filter(|m| m.bot_id.is_some() && m.ts != ts)
            .map(|m| m.text)
            .collect()
    };
    let status = answers(&asked);
    assert_eq!(status.len(), 1, "{status:?}");
    assert!(
        status[0].contains("&lt;!here&gt; cart · preview ready"),
        "{}",
        status[0]
    );
    let help = answers(&helped);
    assert_eq!(help.len(), 1);
    assert!(help[0].contains("`status`"), "{}", help[0]);
    assert!(
        answers(&before).is_empty(),
        "mentions before the first pass are not answered"
    );
    let thread: Vec<_> = slack.thread(&channel, &parent);
    let after_mention: Vec<_> = thread
        .iter()
        .skip_while(|m| m.ts != in_thread)
        .skip(1)
        .collect();
    assert_eq!(after_mention.len(), 1, "{thread:?}");
    assert!(
        after_mention[0]
            .text
            .starts_with("Open pull requests in acme/shop")
    );
}

/// A crash after an answer was posted but before the cursor moved past its mention: the next pass
/// reads the mention again and answers it once, whether the daemon had recorded the answer's ts
/// or only its intent (then the answer is found in the thread by its metadata).
#[tokio::test]
async fn a_mention_read_again_after_a_crash_is_answered_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = Sandbox::start().await.unwrap();
    let channel = slack.create_channel("shop");
    let store = Store::in_memory().unwrap();
    store.migrate().unwrap();
    let api = SlackApi::new(&slack.api_url(), BOT_TOKEN, 1000).unwrap();
    let bot = slack.bot_user_id();
    let cancel = tokio_util::sync::CancellationToken::new();
    let poll = Poll {
        api: &api,
        store: &store,
        channel: &channel,
        repo: "acme/shop",
        bot_user: &bot,
        page_size: 100,
        thread_checks: 50,
        web: "https://github.com",
        writers: &[],
        responder: None,
        cancel: &cancel,
    };
    poll.run().await.unwrap(); // the first pass only sets the cursor
    let asked = slack.post_user_message(&channel, "U0ALICE", &format!("<@{bot}> status"), None);
    poll.run().await.unwrap();
    let answers = || {
        slack
            .thread(&channel, &asked)
            .into_iter()
            .filter(|m| m.ts != asked)
            .count()
    };
    assert_eq!(answers(), 1);

    // The cursor back before the mention, as if the daemon died right after posting.
    let rewind = |forget_ts: bool| {
        let (c, a) = (channel.clone(), asked.clone());
        store.write(move |conn| {
            conn.execute(
                "UPDATE slack_cursors SET seen_ts = '0.000000' WHERE channel = ?1 AND thread_ts = ''",
                params![c],
            )?;
            if forget_ts {
                conn.execute(
                    "UPDATE slack_answers SET answer_ts = NULL WHERE channel = ?1 AND mention_ts = ?2",
                    params![c, a],
                )?;
            }
            Ok(())
        })
    };
    rewind(false).await.unwrap();
    poll.run().await.unwrap();
    assert_eq!(answers(), 1, "a recorded answer is not posted again");
    rewind(true).await.unwrap();
    poll.run().await.unwrap();
    assert_eq!(answers(), 1, "an intent is looked up before posting again");
}

/// Slack's own limits, enforced by the sandbox in real time (history and replies N calls a minute
/// each, 15-message pages), and the daemon's budget set to the same N: more messages arrive than
/// a page holds, and every mention is answered with no call refused. (N is 20 rather than
/// Slack's 1 so that the test takes seconds; the pacing is the same arithmetic, `60 s / N`.)
#[tokio::test]
async fn paced_at_slack_s_limit_no_call_is_refused_and_no_mention_missed() {
    const PER_MINUTE: u32 = 20;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = Sandbox::start_with(Options {
        history_per_minute: Some(PER_MINUTE),
        replies_per_minute: Some(PER_MINUTE),
        max_page_size: Some(15),
        ..Options::default()
    })
    .await
    .unwrap();
    let channel = slack.create_channel("shop");
    let store = Store::in_memory().unwrap();
    store.migrate().unwrap();
    let api = SlackApi::new(&slack.api_url(), BOT_TOKEN, PER_MINUTE).unwrap();
    let bot = slack.bot_user_id();
    let cancel = tokio_util::sync::CancellationToken::new();
    let poll = Poll {
        api: &api,
        store: &store,
        channel: &channel,
        repo: "acme/shop",
        bot_user: &bot,
        page_size: 15,
        thread_checks: PER_MINUTE as usize,
        web: "https://github.com",
        writers: &[],
        responder: None,
        cancel: &cancel,
    };
    poll.run().await.unwrap(); // the first pass only sets the cursor
    let mut asked = Vec::new();
    for i in 0..40 {
        if i % 13 == 5 {
            asked.push(slack.post_user_message(
                &channel,
                "U0ALICE",
                &format!("<@{bot}> help"),
                None,
            ));
        } else {
            slack.post_user_message(&channel, "U0BOB", &format!("chatter {i}"), None);
        }
    }
    poll.run().await.unwrap();
    poll.run().await.unwrap();
    for ts in &asked {
        let answers = slack
            .thread(&channel, ts)
            .into_iter()
            .filter(|m| m.bot_id.is_some())
            .count();
        assert_eq!(answers, 1, "mention {ts}");
    }
    let refused = api
        .counters
        .rate_limited
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 0, "the budget kept within Slack's limit");
    // The pacing itself, from the times the sandbox received the calls: a window of a minute
    // allows a burst, so a client that bursts would pass the check above; this one would not.
    let every = std::time::Duration::from_secs(60) / PER_MINUTE;
    for method in ["conversations.history", "conversations.replies"] {
        let at: Vec<_> = slack
            .requests()
            .into_iter()
            .filter(|r| r.method == method)
            .map(|r| r.at)
            .collect();
        for pair in at.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap + std::time::Duration::from_millis(50) >= every,
                "{method} calls {gap:?} apart (at most one every {every:?})"
            );
        }
        if method == "conversations.history" {
            assert!(
                at.len() >= 4,
                "40 messages need three 15-message pages, after the first pass"
            );
        }
    }
}
