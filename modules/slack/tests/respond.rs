//! Mentions handed to a [`Responder`] (the agent's seam), read by polling against the sandbox
//! Slack: the responder gets the thread as stored (people's messages and the bot's own answers,
//! oldest first, ending with the mention), whether the author is a writer, the thread's item and
//! summary; its reply is posted once, escaped, with its links. A post Slack refused is posted
//! again with the same text, never made again; a crash after the intent was recorded but before
//! the answer was made (the run may have written) gives the responder `resumed`, never a silent
//! second run.

use std::sync::{Arc, Mutex};

use productbuilder_slack::api::SlackApi;
use productbuilder_slack::input::Poll;
use productbuilder_slack::respond::ReplyFuture;
use productbuilder_slack::{Conversation, Link, Reply, Responder};
use productbuilder_slack_sandbox::{BOT_TOKEN, Sandbox};
use productbuilder_store::Store;
use productbuilder_store::rusqlite::params;
use tokio_util::sync::CancellationToken;

/// Records every conversation; answers with hostile text, one link and a summary line.
#[derive(Default)]
struct Recording {
    seen: Mutex<Vec<Conversation>>,
}

impl Responder for Recording {
    fn respond<'a>(
        &'a self,
        conversation: &'a Conversation,
        _cancel: &'a CancellationToken,
    ) -> ReplyFuture<'a> {
        Box::pin(async move {
            let n = {
                let mut seen = self.seen.lock().unwrap();
                seen.push(conversation.clone());
                seen.len()
            };
            Reply {
                text: format!("<!channel> answer {n}"),
                links: vec![Link {
                    label: format!("#{n} created"),
                    url: Some(format!("https://github.com/acme/shop/issues/{n}")),
                }],
                summary: Some(format!("created #{n}")),
            }
        })
    }
}

/// The bot's answers to `mention` in the thread `top` (by the key they carry).
fn answers_to(slack: &Sandbox, channel: &str, top: &str, mention: &str) -> Vec<String> {
    let key = format!("answer:{mention}");
    slack
        .thread(channel, top)
        .into_iter()
        .filter(|m| {
            m.metadata
                .as_ref()
                .is_some_and(|v| v.to_string().contains(&key))
        })
        .map(|m| m.text)
        .collect()
}

#[tokio::test]
async fn a_mention_reaches_the_responder_with_its_stored_thread_and_is_answered_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = Sandbox::start().await.unwrap();
    let channel = slack.create_channel("shop");
    let store = Store::in_memory().unwrap();
    store.migrate().unwrap();
    let api = SlackApi::new(&slack.api_url(), BOT_TOKEN, 1000).unwrap();
    let bot = slack.bot_user_id();
    let recording = Arc::new(Recording::default());
    let responder: Arc<dyn Responder> = recording.clone();
    let cancel = CancellationToken::new();
    let writers = vec!["U0ALICE".to_owned()];
    let poll = Poll {
        api: &api,
        store: &store,
        channel: &channel,
        repo: "acme/shop",
        bot_user: &bot,
        page_size: 100,
        thread_checks: 50,
        web: "https://github.com",
        writers: &writers,
        responder: Some(&responder),
        cancel: &cancel,
    };
    poll.run().await.unwrap(); // the first pass only sets the cursor

    // A writer's mention starts a conversation (its own thread).
    let top = slack.post_user_message(
        &channel,
        "U0ALICE",
        &format!("<@{bot}> the cart total looks wrong, file it"),
        None,
    );
    let first = top.clone();
    poll.run().await.unwrap();
    {
        let seen = recording.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let c = &seen[0];
        assert_eq!(
            (c.repo.as_str(), c.thread_ts.as_str()),
            ("acme/shop", top.as_str())
        );
        assert_eq!(c.mention_ts, first);
        assert!(c.author_is_writer && !c.resumed);
        assert_eq!(c.item, None);
        assert_eq!(c.summary, None);
        let texts: Vec<(&str, &str)> = c
            .messages
            .iter()
            .map(|m| (m.user.as_str(), m.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [(
                "U0ALICE",
                format!("<@{bot}> the cart total looks wrong, file it").as_str()
            )]
        );
    }
    let answers: Vec<String> = slack
        .thread(&channel, &top)
        .into_iter()
        .filter(|m| m.bot_id.is_some())
        .map(|m| m.text)
        .collect();
    assert_eq!(
        answers,
        ["&lt;!channel&gt; answer 1\n• <https://github.com/acme/shop/issues/1|#1 created>"]
    );

    // Someone talks in the conversation's thread, then a non-writer mentions the bot there (no
    // top-level message moves: the thread is polled because the bot answered in it). The thread
    // so far includes the bot's answer; the summary is kept.
    slack.post_user_message(&channel, "U0BOB", "same here", Some(&top));
    let second = slack.post_user_message(
        &channel,
        "U0MALLORY",
        &format!("<@{bot}> and this"),
        Some(&top),
    );
    poll.run().await.unwrap();
    {
        let seen = recording.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        let c = &seen[1];
        assert!(!c.author_is_writer);
        assert_eq!(c.summary.as_deref(), Some("created #1"));
        assert_eq!(c.messages.len(), 4, "{:?}", c.messages);
        assert!(c.messages[1].from_bot && c.messages[1].user == bot);
        assert_eq!(c.messages[2].text, "same here");
        assert_eq!(c.messages[3].ts, second);
    }

    // Slack refuses the answer's post: the pass fails, and the next one posts the same answer,
    // made once (the responder is not asked again).
    let refused =
        slack.post_user_message(&channel, "U0ALICE", &format!("<@{bot}> again"), Some(&top));
    slack.fail_next("chat.postMessage", 500, None);
    assert!(poll.run().await.is_err(), "the refused post fails the pass");
    poll.run().await.unwrap();
    {
        let seen = recording.seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "made once");
        assert_eq!(seen[2].mention_ts, refused);
    }
    let answers_to_refused = answers_to(&slack, &channel, &top, &refused);
    assert_eq!(answers_to_refused.len(), 1);
    assert!(
        answers_to_refused[0].contains("answer 3"),
        "{answers_to_refused:?}"
    );

    // The daemon died after recording its intent to answer a mention, before the answer was
    // made: the next pass gives the responder `resumed` (and posts once).
    let third = slack.post_user_message(
        &channel,
        "U0ALICE",
        &format!("<@{bot}> once more"),
        Some(&top),
    );
    let (c, t) = (channel.clone(), third.clone());
    store
        .write(move |conn| {
            conn.execute(
                "INSERT INTO slack_answers (channel, mention_ts) VALUES (?1, ?2)",
                params![c, t],
            )
        })
        .await
        .unwrap();
    poll.run().await.unwrap();
    poll.run().await.unwrap();
    let seen = recording.seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(
        seen[3].resumed,
        "an interrupted answer is resumed, not rerun"
    );
    let answers_to_third = answers_to(&slack, &channel, &top, &third).len();
    assert_eq!(answers_to_third, 1);
}
