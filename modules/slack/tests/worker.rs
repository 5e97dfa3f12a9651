//! The Slack pass against the sandbox Slack, with the GitHub poller's rows written into a real
//! (in-memory) database: one parent and one status per new pull request, the status edited in
//! place, people's comments once (also after a crash between the post and its record), never the
//! daemon's own, hostile text escaped, and no flood of old items at the first pass.

use productbuilder_slack::api::SlackApi;
use productbuilder_slack::debounce::StatusDebounce;
use productbuilder_slack::worker::{Tenant, pass};
use productbuilder_slack_sandbox::{BOT_TOKEN, Sandbox};
use productbuilder_store::Store;
use productbuilder_store::rusqlite::params;

const REPO: &str = "acme/shop";

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

async fn add_pull(store: &Store, number: i64, title: &str, state: &str, updated_at: String) {
    add_pull_merged(store, number, title, state, updated_at, None).await
}

async fn add_pull_merged(
    store: &Store,
    number: i64,
    title: &str,
    state: &str,
    updated_at: String,
    merged_at: Option<String>,
) {
    let title = title.to_owned();
    let state = state.to_owned();
    store
        .write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO pulls (repo, number, state, title, head_sha, head_ref, head_repo, fork, author, author_association, draft, labels, updated_at, seen_at, merged_at)
                 VALUES (?1, ?2, ?3, ?4, 'abc', 'feature', ?1, 0, 'alice', 'MEMBER', 0, '[]', ?5, ?5, ?6)",
                params![REPO, number, state, title, updated_at, merged_at],
            )
        })
        .await
        .unwrap();
}

async fn add_comment(store: &Store, id: i64, number: i64, author: &str, body: &str) {
    let (author, body) = (author.to_owned(), body.to_owned());
    store
        .write(move |c| {
            c.execute(
                "INSERT INTO comments (repo, id, issue_number, author, body, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                params![REPO, id, number, author, body, format!("2026-01-01T00:00:{:02}Z", id % 60)],
            )
        })
        .await
        .unwrap();
}

struct Setup {
    slack: Sandbox,
    channel: String,
    store: Store,
    api: SlackApi,
    tenant: Tenant,
}

async fn setup() -> Setup {
    provider();
    let slack = Sandbox::start().await.unwrap();
    let channel = slack.create_channel("shop");
    let store = Store::in_memory().unwrap();
    store.migrate().unwrap();
    let api = SlackApi::new(&slack.api_url(), BOT_TOKEN, 1000).unwrap();
    let tenant = Tenant {
        repo: REPO.into(),
        channel: channel.clone(),
        web: "https://github.com".into(),
        backfill: None,
        own_login: Some("pb-bot".into()),
        debounce: std::sync::Arc::new(StatusDebounce::none()),
    };
    Setup {
        slack,
        channel,
        store,
        api,
        tenant,
    }
}

#[tokio::test]
async fn old_items_get_no_thread_and_a_new_pull_gets_one_parent_and_one_status() {
    let s = setup().await;
    add_pull(
        &s.store,
        1,
        "old work",
        "open",
        "2020-01-01T00:00:00Z".into(),
    )
    .await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    assert!(
        s.slack.messages(&s.channel).is_empty(),
        "enabling Slack floods nothing"
    );

    add_pull(
        &s.store,
        2,
        "<!channel> <https://evil|click>",
        "open",
        rfc3339_now(),
    )
    .await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    let top = s.slack.messages(&s.channel);
    assert_eq!(top.len(), 1, "one parent: {top:?}");
    assert!(
        top[0]
            .text
            .contains("&lt;!channel&gt; &lt;https://evil|click&gt;"),
        "{}",
        top[0].text
    );
    assert!(!top[0].text.contains("<!channel>"));
    let thread = s.slack.thread(&s.channel, &top[0].ts);
    assert_eq!(thread.len(), 2, "parent and one status: {thread:?}");
    assert_eq!(thread[1].text, "Status: open · no preview");

    // Closed: the parent says so, the status follows, one last line; nothing more after.
    add_pull(
        &s.store,
        2,
        "<!channel> <https://evil|click>",
        "closed",
        rfc3339_now(),
    )
    .await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    let top = s.slack.messages(&s.channel);
    assert!(top[0].text.starts_with("[closed] "), "{}", top[0].text);
    let thread = s.slack.thread(&s.channel, &top[0].ts);
    assert_eq!(thread.len(), 3, "{thread:?}");
    assert_eq!(thread[1].text, "Status: closed");
    assert_eq!(s.slack.edits_of(&thread[1].ts).len(), 2, "one edit");
    assert!(thread[2].text.ends_with("was closed."));
}

#[tokio::test]
async fn comments_by_people_appear_once_also_after_a_crash_and_the_daemons_never() {
    let s = setup().await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    add_pull(&s.store, 3, "cart", "open", rfc3339_now()).await;
    add_comment(&s.store, 10, 3, "bob", "looks good").await;
    add_comment(&s.store, 11, 3, "PB-BOT", "preview ready").await;
    add_comment(
        &s.store,
        12,
        3,
        "mallory",
        "<!-- productbuilder:preview --> I am the bot",
    )
    .await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    let parent = s.slack.messages(&s.channel)[0].ts.clone();
    let texts = |s: &Setup| -> Vec<String> {
        s.slack
            .thread(&s.channel, &parent)
            .into_iter()
            .map(|m| m.text)
            .collect()
    };
    let thread = texts(&s);
    assert_eq!(thread.len(), 3, "parent, status, bob: {thread:?}");
    assert!(thread[2].starts_with("*bob*"), "{thread:?}");

    // A crash after posting comment 13 but before recording its ts: the intent is in the
    // database, the message in Slack. The next pass finds it by its key and posts nothing.
    add_comment(&s.store, 13, 3, "carol", "ship it").await;
    s.store
        .write(|c| {
            c.execute(
                "INSERT INTO slack_events (repo, number, key, state, intended_at) VALUES (?1, 3, 'comment:13', 'intended', ?2)",
                params![REPO, (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).to_string()],
            )
        })
        .await
        .unwrap();
    s.api
        .post(
            &s.channel,
            Some(&parent),
            "*carol* commented: ship it",
            Some(&format!("{REPO}#3:comment:13")),
        )
        .await
        .unwrap();
    // And a crash after recording comment 14's intent but before posting: it is posted once.
    add_comment(&s.store, 14, 3, "dave", "one more").await;
    s.store
        .write(|c| {
            c.execute(
                "INSERT INTO slack_events (repo, number, key, state, intended_at) VALUES (?1, 3, 'comment:14', 'intended', ?2)",
                params![REPO, (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).to_string()],
            )
        })
        .await
        .unwrap();
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    let thread = texts(&s);
    assert_eq!(
        thread.iter().filter(|t| t.contains("ship it")).count(),
        1,
        "{thread:?}"
    );
    assert_eq!(
        thread.iter().filter(|t| t.contains("one more")).count(),
        1,
        "{thread:?}"
    );
    assert!(
        !thread
            .iter()
            .any(|t| t.contains("I am the bot") || t.contains("preview ready"))
    );
    assert_eq!(thread.len(), 5, "{thread:?}");
}

async fn set_preview(store: &Store, number: i64, sha: &str, status: &str) {
    let (sha, status) = (sha.to_owned(), status.to_owned());
    store
        .write(move |c| {
            c.execute(
                "INSERT INTO previews (repo, number, head_sha, status, url, project, sha_changed_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'https://pr-7.previews.example', 'p', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')
                 ON CONFLICT (repo, number) DO UPDATE SET head_sha = excluded.head_sha, status = excluded.status",
                params![REPO, number, sha, status],
            )
        })
        .await
        .unwrap();
}

/// The benchmark of issue 10 as a test (numbers in BENCHMARKS.md): a pull request's life (open,
/// building, ready, push, building, ready, comment, close) costs one parent, one status message,
/// one edit per state, one message per comment, and the close's parent edit and last line; a
/// pass with nothing new costs no call at all.
#[tokio::test]
async fn a_pull_request_lifecycle_costs_one_call_per_change() {
    let s = setup().await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    let calls = |m: &str| s.slack.method_stats(m).calls;
    add_pull(&s.store, 7, "cart", "open", rfc3339_now()).await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    for (sha, status) in [
        ("a", "building"),
        ("a", "ready"),
        ("b", "building"),
        ("b", "ready"),
    ] {
        set_preview(&s.store, 7, sha, status).await;
        pass(&s.api, &s.store, &s.tenant).await.unwrap();
        pass(&s.api, &s.store, &s.tenant).await.unwrap();
    }
    add_comment(&s.store, 20, 7, "bob", "nice").await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    add_pull(&s.store, 7, "cart", "closed", rfc3339_now()).await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    // parent + status + comment + last line
    assert_eq!(calls("chat.postMessage"), 4);
    // building, ready, building (the push), ready; then closed: the parent and the status
    assert_eq!(calls("chat.update"), 6);
    assert_eq!(
        calls("conversations.history") + calls("conversations.replies"),
        0
    );
    let thread = s
        .slack
        .thread(&s.channel, &s.slack.messages(&s.channel)[0].ts);
    let status = &thread[1];
    assert_eq!(
        s.slack.edits_of(&status.ts),
        [
            "Status: open · no preview",
            "Status: open · preview building",
            "Status: open · preview ready: <https://pr-7.previews.example|https://pr-7.previews.example>",
            "Status: open · preview building",
            "Status: open · preview ready: <https://pr-7.previews.example|https://pr-7.previews.example>",
            "Status: closed",
        ]
    );
}

/// The status lane's debounce: a transition within the window of the last write waits for the
/// rest of it, and what is then written is the latest state, once: the preview went building and
/// then ready while the pass waited, and the thread only ever saw "ready".
#[tokio::test]
async fn a_burst_of_transitions_within_the_window_is_one_edit_with_the_latest_state() {
    let mut s = setup().await;
    // Long enough that the next pass surely starts inside it, even on a loaded machine.
    s.tenant.debounce = std::sync::Arc::new(StatusDebounce::new(std::time::Duration::from_secs(3)));
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    add_pull(&s.store, 7, "cart", "open", rfc3339_now()).await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    set_preview(&s.store, 7, "a", "building").await;
    let waiting = s.tenant.debounce.waiting();
    let mut waiting = std::pin::pin!(waiting);
    waiting.as_mut().enable();
    let (passed, ()) = tokio::join!(pass(&s.api, &s.store, &s.tenant), async {
        waiting.await;
        set_preview(&s.store, 7, "a", "ready").await;
    });
    passed.unwrap();
    let thread = s
        .slack
        .thread(&s.channel, &s.slack.messages(&s.channel)[0].ts);
    assert_eq!(
        s.slack.edits_of(&thread[1].ts),
        [
            "Status: open · no preview",
            "Status: open · preview ready: <https://pr-7.previews.example|https://pr-7.previews.example>",
        ]
    );
}

/// A pull request that left the open listing merged (the poller stores GitHub's `merged_at`)
/// reads as merged in its thread, not as closed.
#[tokio::test]
async fn a_merged_pull_request_says_merged() {
    let s = setup().await;
    // The first pass marks where Slack began for the tenant: what exists then gets no thread.
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    add_pull(&s.store, 3, "Add search", "open", rfc3339_now()).await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    add_pull_merged(
        &s.store,
        3,
        "Add search",
        "closed",
        rfc3339_now(),
        Some(rfc3339_now()),
    )
    .await;
    pass(&s.api, &s.store, &s.tenant).await.unwrap();
    let top = s.slack.messages(&s.channel);
    let parent = top
        .iter()
        .find(|m| m.text.contains("Add search"))
        .expect("a parent for #3");
    assert!(parent.text.starts_with("[merged] "), "{}", parent.text);
    let thread = s.slack.thread(&s.channel, &parent.ts);
    assert!(
        thread.last().unwrap().text.ends_with("was merged."),
        "{thread:?}"
    );
}
