//! The call policy against the sandbox LLM over real HTTP: every `[llm]` key has a test here (or
//! in `config.rs`) that fails when the key is ignored. Waits are measured from the times the
//! sandbox recorded the requests, never slept for.

use std::time::Duration;

use productbuilder_llm::budget::estimate_text;
use productbuilder_llm::{
    Backoff, Endpoint, LlmClient, LlmConfig, LlmError, Message, Provider, Request, Stop, Tool,
    Which,
};
use productbuilder_llm_sandbox::{Format, Reply, Sandbox};
use productbuilder_settings::Secret;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const KEY: &str = "sk-test-7d1c0ffee";

fn endpoint(provider: Provider, base_url: &str) -> Endpoint {
    let mut e = Endpoint::new(provider, "model-under-test", base_url);
    e.api_key = Some(Secret::new(KEY));
    e.request_timeout = Duration::from_secs(5);
    e
}

fn client(config: LlmConfig) -> LlmClient {
    LlmClient::new(config).unwrap().with_backoff(Backoff {
        base: Duration::from_millis(5),
        cap: Duration::from_millis(20),
    })
}

fn ask(text: &str) -> Request {
    Request {
        system: "You are the test.".into(),
        messages: vec![Message::user(text)],
        tools: vec![Tool {
            name: "get_issue".into(),
            description: "Reads an issue".into(),
            schema: json!({"type": "object", "properties": {"number": {"type": "integer"}}}),
        }],
        max_tokens: None,
    }
}

fn no_cancel() -> CancellationToken {
    CancellationToken::new()
}

#[tokio::test]
async fn anthropic_round_trip_with_tools_headers_and_prompt_caching() {
    let llm = Sandbox::start().await.unwrap();
    llm.push(Reply::tool_call("get_issue", json!({"number": 12})));
    let c = client(LlmConfig::new(endpoint(
        Provider::Anthropic,
        &llm.base_url(),
    )));

    let done = c
        .complete(&ask("status of #12?"), &no_cancel())
        .await
        .unwrap();
    assert_eq!(done.answered_by, Which::Primary);
    assert!(!done.fallback_used);
    assert_eq!(done.response.provider, Provider::Anthropic);
    assert_eq!(done.response.stop, Stop::ToolUse);
    assert_eq!(done.response.tool_calls[0].name, "get_issue");
    assert_eq!(done.response.tool_calls[0].input, json!({"number": 12}));
    assert!(done.response.usage.input > 0 && done.response.usage.output > 0);
    assert!(
        done.response.usage.cache_write > 0,
        "the first call writes the cache"
    );

    let r = &llm.requests()[0];
    assert_eq!(r.format, Format::Anthropic);
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some(KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.body["model"], "model-under-test");
    assert_eq!(r.body["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(r.body["tools"][0]["cache_control"]["type"], "ephemeral");
    assert!(!r.raw.contains(KEY), "the key only as a header");

    // The same prefix again: read from the cache.
    let again = c.complete(&ask("and #13?"), &no_cancel()).await.unwrap();
    assert!(again.response.usage.cache_read > 0);
    assert_eq!(again.response.usage.cache_write, 0);
}

#[tokio::test]
async fn openaicompat_base_url_with_a_path_and_a_bearer_key() {
    let llm = Sandbox::start().await.unwrap();
    llm.push(Reply::text("hello"));
    let base = format!("{}/custom/prefix/v1", llm.base_url());
    let c = client(LlmConfig::new(endpoint(Provider::Openaicompat, &base)));
    let done = c.complete(&ask("hi"), &no_cancel()).await.unwrap();
    assert_eq!(done.response.content, "hello");
    assert_eq!(done.response.provider, Provider::Openaicompat);
    let r = &llm.requests()[0];
    assert_eq!(r.path, "/custom/prefix/v1/chat/completions");
    assert_eq!(r.query, None);
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(r.header("x-api-key"), None);
    assert!(!r.raw.contains(KEY));
    assert_eq!(r.body["messages"][0]["role"], "system");
    assert_eq!(r.body["tools"][0]["function"]["name"], "get_issue");
}

#[tokio::test]
async fn max_tokens_is_sent_and_caps_the_request() {
    let llm = Sandbox::start().await.unwrap();
    for (provider, base, field) in [
        (Provider::Anthropic, llm.base_url(), "max_tokens"),
        (
            Provider::Openaicompat,
            llm.openai_base_url(),
            "max_completion_tokens",
        ),
    ] {
        let mut e = endpoint(provider, &base);
        e.max_tokens = 123;
        let c = client(LlmConfig::new(e));
        for (asked, sent) in [(None, 123), (Some(50), 50), (Some(1000), 123)] {
            let request = Request {
                max_tokens: asked,
                ..ask("hi")
            };
            c.complete(&request, &no_cancel()).await.unwrap();
            assert_eq!(
                llm.requests().last().unwrap().body[field],
                sent,
                "{provider} {asked:?}"
            );
        }
    }
}

#[tokio::test]
async fn request_timeout_ends_an_attempt_which_is_retried() {
    let llm = Sandbox::start().await.unwrap();
    llm.push(Reply::delayed(
        Duration::from_secs(30),
        Reply::text("too late"),
    ));
    llm.push(Reply::text("second"));
    let mut e = endpoint(Provider::Openaicompat, &llm.openai_base_url());
    e.request_timeout = Duration::from_millis(300);
    let c = client(LlmConfig::new(e));
    let done = c.complete(&ask("hi"), &no_cancel()).await.unwrap();
    assert_eq!(done.response.content, "second");
    assert_eq!(done.attempts.len(), 2);
    assert!(
        matches!(done.attempts[0].error, Some(LlmError::Timeout { .. })),
        "{:?}",
        done.attempts[0]
    );
    let r = llm.requests();
    let gap = r[1].at - r[0].at;
    assert!(
        gap >= Duration::from_millis(300) && gap < Duration::from_secs(3),
        "{gap:?}"
    );
}

#[tokio::test]
async fn max_retries_faults_then_success_stays_on_the_primary() {
    let primary = Sandbox::start().await.unwrap();
    let fallback = Sandbox::start().await.unwrap();
    for _ in 0..2 {
        primary.push(Reply::status(503));
    }
    primary.push(Reply::text("third time"));
    let mut e = endpoint(Provider::Openaicompat, &primary.openai_base_url());
    e.max_retries = 2;
    let mut config = LlmConfig::new(e);
    config.fallback = Some(endpoint(Provider::Anthropic, &fallback.base_url()));
    let done = client(config)
        .complete(&ask("hi"), &no_cancel())
        .await
        .unwrap();
    assert_eq!(done.response.content, "third time");
    assert_eq!(done.answered_by, Which::Primary);
    assert_eq!(primary.requests().len(), 3);
    assert!(fallback.requests().is_empty());
}

#[tokio::test]
async fn max_retries_spent_goes_to_the_fallback() {
    let primary = Sandbox::start().await.unwrap();
    let fallback = Sandbox::start().await.unwrap();
    for _ in 0..3 {
        primary.push(Reply::status(503));
    }
    fallback.push(Reply::text("from the fallback"));
    let mut e = endpoint(Provider::Openaicompat, &primary.openai_base_url());
    e.max_retries = 2;
    let mut config = LlmConfig::new(e);
    config.fallback = Some(endpoint(Provider::Anthropic, &fallback.base_url()));
    let done = client(config)
        .complete(&ask("hi"), &no_cancel())
        .await
        .unwrap();
    assert_eq!(done.response.content, "from the fallback");
    assert_eq!(done.answered_by, Which::Fallback);
    assert!(done.fallback_used);
    assert_eq!(done.response.provider, Provider::Anthropic);
    assert_eq!(primary.requests().len(), 3, "1 + max_retries");
    assert_eq!(fallback.requests().len(), 1);
    let whos: Vec<Which> = done.attempts.iter().map(|a| a.which).collect();
    assert_eq!(
        whos,
        [
            Which::Primary,
            Which::Primary,
            Which::Primary,
            Which::Fallback
        ]
    );
}

#[tokio::test]
async fn fallback_on_529_then_the_primary_again_on_the_next_call() {
    let primary = Sandbox::start().await.unwrap();
    let fallback = Sandbox::start().await.unwrap();
    primary.push(Reply::status(529));
    primary.push(Reply::status(529));
    primary.push(Reply::text("primary is back"));
    fallback.set_default(Reply::text("fallback"));
    let mut e = endpoint(Provider::Anthropic, &primary.base_url());
    e.max_retries = 1;
    let mut config = LlmConfig::new(e);
    config.fallback = Some(endpoint(
        Provider::Openaicompat,
        &fallback.openai_base_url(),
    ));
    let c = client(config);

    let first = c.complete(&ask("one"), &no_cancel()).await.unwrap();
    assert_eq!(first.answered_by, Which::Fallback);
    assert_eq!(first.response.content, "fallback");
    match &first.attempts[1].error {
        Some(LlmError::Status {
            status, message, ..
        }) => {
            assert_eq!(*status, 529);
            assert_eq!(message, "overloaded_error: Overloaded");
        }
        other => panic!("{other:?}"),
    }

    let second = c.complete(&ask("two"), &no_cancel()).await.unwrap();
    assert_eq!(second.answered_by, Which::Primary);
    assert!(!second.fallback_used);
    assert_eq!(second.response.content, "primary is back");
    assert_eq!(primary.requests().len(), 3);
    assert_eq!(fallback.requests().len(), 1);
}

#[tokio::test]
async fn an_error_that_is_not_unavailability_neither_retries_nor_falls_back() {
    let primary = Sandbox::start().await.unwrap();
    let fallback = Sandbox::start().await.unwrap();
    primary.push(Reply::status(400));
    let mut config = LlmConfig::new(endpoint(Provider::Anthropic, &primary.base_url()));
    config.fallback = Some(endpoint(Provider::Anthropic, &fallback.base_url()));
    let c = client(config);
    let failure = c.complete(&ask("hi"), &no_cancel()).await.unwrap_err();
    assert!(
        matches!(failure.error, LlmError::Status { status: 400, .. }),
        "{failure}"
    );
    assert_eq!(primary.requests().len(), 1);
    assert!(fallback.requests().is_empty());

    // 500 is retried, but is no reason for the fallback.
    for _ in 0..4 {
        primary.push(Reply::status(500));
    }
    let failure = c.complete(&ask("hi"), &no_cancel()).await.unwrap_err();
    assert!(matches!(
        failure.error,
        LlmError::Status { status: 500, .. }
    ));
    assert_eq!(failure.attempts.len(), 4);
    assert!(!failure.fallback_used);
    assert!(fallback.requests().is_empty());
}

#[tokio::test]
async fn retry_after_in_seconds_is_waited() {
    let llm = Sandbox::start().await.unwrap();
    llm.push(Reply::status_retry_after(429, "1"));
    llm.push(Reply::text("after the wait"));
    let c = client(LlmConfig::new(endpoint(
        Provider::Anthropic,
        &llm.base_url(),
    )));
    let done = c.complete(&ask("hi"), &no_cancel()).await.unwrap();
    assert_eq!(done.response.content, "after the wait");
    let r = llm.requests();
    let gap = r[1].at - r[0].at;
    // The backoff alone is at most 20 ms here.
    assert!(gap >= Duration::from_secs(1), "{gap:?}");
    assert!(gap < Duration::from_secs(3), "{gap:?}");
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_waited() {
    let llm = Sandbox::start().await.unwrap();
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    llm.push(Reply::status_retry_after(
        503,
        at.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
    ));
    llm.push(Reply::text("after the date"));
    let c = client(LlmConfig::new(endpoint(
        Provider::Openaicompat,
        &llm.openai_base_url(),
    )));
    let done = c.complete(&ask("hi"), &no_cancel()).await.unwrap();
    assert_eq!(done.response.content, "after the date");
    let r = llm.requests();
    let gap = r[1].at - r[0].at;
    // The date has whole seconds: more than two of the three are left.
    assert!(gap >= Duration::from_millis(1500), "{gap:?}");
    assert!(gap < Duration::from_secs(5), "{gap:?}");
}

#[tokio::test]
async fn a_retry_after_longer_than_the_run_goes_to_the_fallback_at_once() {
    let primary = Sandbox::start().await.unwrap();
    let fallback = Sandbox::start().await.unwrap();
    primary.push(Reply::status_retry_after(529, "3600"));
    let mut config = LlmConfig::new(endpoint(Provider::Anthropic, &primary.base_url()));
    config.fallback = Some(endpoint(Provider::Anthropic, &fallback.base_url()));
    let done = client(config)
        .complete(&ask("hi"), &no_cancel())
        .await
        .unwrap();
    assert_eq!(done.answered_by, Which::Fallback);
    assert_eq!(primary.requests().len(), 1);
    assert!(done.latency < Duration::from_secs(3), "{:?}", done.latency);
}

#[tokio::test]
async fn a_timing_out_primary_leaves_the_fallback_its_time() {
    let primary = Sandbox::start().await.unwrap();
    let fallback = Sandbox::start().await.unwrap();
    primary.set_default(Reply::delayed(Duration::from_secs(30), Reply::text("late")));
    let mut e = endpoint(Provider::Anthropic, &primary.base_url());
    e.request_timeout = Duration::from_millis(400);
    e.max_retries = 10;
    let mut config = LlmConfig::new(e);
    let mut f = endpoint(Provider::Openaicompat, &fallback.openai_base_url());
    f.request_timeout = Duration::from_millis(600);
    config.fallback = Some(f);
    config.run_timeout = Duration::from_secs(2);
    let done = client(config)
        .complete(&ask("hi"), &no_cancel())
        .await
        .unwrap();
    assert_eq!(done.answered_by, Which::Fallback);
    assert!(primary.requests().len() < 11, "the primary stopped early");
    assert!(done.latency < Duration::from_secs(2));
}

#[tokio::test]
async fn run_timeout_bounds_the_whole_call() {
    let llm = Sandbox::start().await.unwrap();
    llm.set_default(Reply::delayed(Duration::from_secs(30), Reply::text("late")));
    let mut e = endpoint(Provider::Anthropic, &llm.base_url());
    e.request_timeout = Duration::from_millis(300);
    e.max_retries = 10;
    let mut config = LlmConfig::new(e);
    config.run_timeout = Duration::from_millis(800);
    let started = std::time::Instant::now();
    let failure = client(config)
        .complete(&ask("hi"), &no_cancel())
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(failure.error, LlmError::RunTimeout { .. }),
        "{failure}"
    );
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    assert!(failure.attempts.len() >= 2 && failure.attempts.len() <= 4);
}

#[tokio::test]
async fn token_budget_trims_what_the_provider_receives() {
    let llm = Sandbox::start().await.unwrap();
    let mut messages = Vec::new();
    for i in 0..30 {
        messages.push(Message::user(format!("question {i} {}", "q".repeat(400))));
        messages.push(Message::assistant(format!(
            "answer {i} {}",
            "a".repeat(400)
        )));
    }
    messages.push(Message::user("NEWEST: what is the status?"));
    let request = Request {
        messages,
        ..ask("")
    };
    let budget = 1500;
    let mut config = LlmConfig::new(endpoint(Provider::Anthropic, &llm.base_url()));
    config.token_budget = budget;
    let done = client(config)
        .complete(&request, &no_cancel())
        .await
        .unwrap();
    assert!(done.trimmed.dropped_messages > 0);

    let body = &llm.requests()[0].body;
    let sent = body["messages"].as_array().unwrap();
    assert!(sent.len() < 61, "{}", sent.len());
    let texts: Vec<&str> = sent
        .iter()
        .flat_map(|m| m["content"].as_array().unwrap())
        .filter_map(|b| b["text"].as_str())
        .collect();
    assert_eq!(*texts.last().unwrap(), "NEWEST: what is the status?");
    assert!(
        texts[0].starts_with("[Earlier conversation left out"),
        "{}",
        texts[0]
    );
    assert_eq!(sent[0]["role"], "user");
    let estimated: u32 = texts.iter().map(|t| estimate_text(t)).sum::<u32>()
        + estimate_text(body["system"][0]["text"].as_str().unwrap())
        + estimate_text(&body["tools"].to_string());
    assert!(estimated <= budget, "{estimated}");

    // The same conversation within a large budget is sent whole.
    let mut config = LlmConfig::new(endpoint(Provider::Anthropic, &llm.base_url()));
    config.token_budget = 100_000;
    client(config)
        .complete(&request, &no_cancel())
        .await
        .unwrap();
    assert_eq!(
        llm.requests()[1].body["messages"].as_array().unwrap().len(),
        61
    );
}

#[tokio::test]
async fn malformed_and_oversized_answers_are_errors_not_retried() {
    let llm = Sandbox::start().await.unwrap();
    llm.push(Reply::Malformed);
    let c = client(LlmConfig::new(endpoint(
        Provider::Anthropic,
        &llm.base_url(),
    )));
    let failure = c.complete(&ask("hi"), &no_cancel()).await.unwrap_err();
    assert!(
        matches!(failure.error, LlmError::Malformed { .. }),
        "{failure}"
    );
    assert_eq!(llm.requests().len(), 1);

    llm.push(Reply::Oversized {
        bytes: productbuilder_llm::MAX_BODY_BYTES + 1024 * 1024,
    });
    let failure = c.complete(&ask("hi"), &no_cancel()).await.unwrap_err();
    assert!(
        matches!(failure.error, LlmError::TooLarge { .. }),
        "{failure}"
    );
    assert_eq!(llm.requests().len(), 2);
}

#[tokio::test]
async fn hostile_tool_arguments_are_an_error_of_that_call() {
    let llm = Sandbox::start().await.unwrap();
    llm.push(Reply::RawToolCall {
        name: "close_issue".into(),
        arguments: "{\"number\": 1, ".into(),
    });
    llm.push(Reply::RawToolCall {
        name: "close_issue".into(),
        arguments: "\"all\"".into(),
    });
    let c = client(LlmConfig::new(endpoint(
        Provider::Openaicompat,
        &llm.openai_base_url(),
    )));
    for _ in 0..2 {
        let done = c.complete(&ask("hi"), &no_cancel()).await.unwrap();
        let call = &done.response.tool_calls[0];
        assert_eq!(call.name, "close_issue");
        assert!(call.input_error.is_some());
        assert_eq!(call.input, json!({}));
    }
    // Anthropic with an input that is not an object: the same.
    let llm = Sandbox::start().await.unwrap();
    llm.push(Reply::RawToolCall {
        name: "close_issue".into(),
        arguments: "all of them".into(),
    });
    let c = client(LlmConfig::new(endpoint(
        Provider::Anthropic,
        &llm.base_url(),
    )));
    let done = c.complete(&ask("hi"), &no_cancel()).await.unwrap();
    assert!(done.response.tool_calls[0].input_error.is_some());
}

#[tokio::test]
async fn the_key_is_in_no_error_and_no_debug_output() {
    let llm = Sandbox::start().await.unwrap();
    llm.require_key("the-right-key");
    let c = client(LlmConfig::new(endpoint(
        Provider::Anthropic,
        &llm.base_url(),
    )));
    let failure = c.complete(&ask("hi"), &no_cancel()).await.unwrap_err();
    assert!(matches!(
        failure.error,
        LlmError::Status { status: 401, .. }
    ));
    for text in [
        failure.to_string(),
        format!("{failure:?}"),
        format!("{c:?}"),
    ] {
        assert!(!text.contains(KEY), "{text}");
    }
}

#[tokio::test]
async fn network_errors_are_retried() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut e = endpoint(
        Provider::Openaicompat,
        &format!("http://127.0.0.1:{port}/v1"),
    );
    e.max_retries = 2;
    let failure = client(LlmConfig::new(e))
        .complete(&ask("hi"), &no_cancel())
        .await
        .unwrap_err();
    assert!(
        matches!(failure.error, LlmError::Network { .. }),
        "{failure}"
    );
    assert_eq!(failure.attempts.len(), 3);
    assert!(!failure.to_string().contains(KEY));
}

#[tokio::test]
async fn cancel_ends_the_call() {
    let llm = Sandbox::start().await.unwrap();
    llm.set_default(Reply::delayed(Duration::from_secs(30), Reply::text("late")));
    let c = client(LlmConfig::new(endpoint(
        Provider::Anthropic,
        &llm.base_url(),
    )));
    let cancel = CancellationToken::new();
    // Cancel once the request has reached the sandbox.
    let request = ask("hi");
    let (outcome, ()) = tokio::join!(c.complete(&request, &cancel), async {
        llm.wait_for_requests(1).await;
        cancel.cancel();
    });
    let failure = outcome.unwrap_err();
    assert_eq!(failure.error, LlmError::Cancelled);
    assert!(failure.latency < Duration::from_secs(5));
}

#[tokio::test]
async fn the_key_is_in_no_log_line() {
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests of this binary run on other threads without a subscriber: a log call site they
    // reach first is cached as uninteresting, and this test's lines would be lost. Ask again.
    tracing::callsite::rebuild_interest_cache();

    let primary = Sandbox::start().await.unwrap();
    let fallback = Sandbox::start().await.unwrap();
    primary.set_default(Reply::status(429));
    let mut e = endpoint(Provider::Anthropic, &primary.base_url());
    e.max_retries = 1;
    let mut config = LlmConfig::new(e);
    config.fallback = Some(endpoint(
        Provider::Openaicompat,
        &fallback.openai_base_url(),
    ));
    config.token_budget = 500;
    let request = Request {
        messages: vec![
            Message::user("x".repeat(4000)),
            Message::assistant("y"),
            Message::user("z"),
        ],
        ..ask("")
    };
    let done = client(config)
        .complete(&request, &no_cancel())
        .await
        .unwrap();
    assert!(done.fallback_used);

    let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("retrying the model call"), "{logged}");
    assert!(logged.contains("asking the fallback"), "{logged}");
    assert!(logged.contains("trimmed to the token budget"), "{logged}");
    assert!(!logged.contains(KEY), "{logged}");
}

#[tokio::test]
async fn the_sandbox_answers_by_rule_when_nothing_is_queued() {
    let llm = Sandbox::start().await.unwrap();
    llm.rule(
        "file an issue",
        Reply::tool_call("create_issue", json!({"title": "cart"})),
    );
    llm.rule("status", Reply::text("it is open"));
    llm.push(Reply::text("queued first"));
    let c = client(LlmConfig::new(endpoint(
        Provider::Anthropic,
        &llm.base_url(),
    )));
    let said = |r: &productbuilder_llm::Response| {
        r.tool_calls
            .first()
            .map_or(r.content.clone(), |c| c.name.clone())
    };
    let mut answers = Vec::new();
    for text in [
        "status?",
        "please file an issue",
        "status?",
        "anything else",
    ] {
        answers.push(said(
            &c.complete(&ask(text), &no_cancel()).await.unwrap().response,
        ));
    }
    assert_eq!(
        answers,
        ["queued first", "create_issue", "it is open", "ok"]
    );
    assert_eq!(llm.queued(), 0);
}

#[tokio::test]
async fn huge_durations_do_not_overflow_the_clock() {
    let llm = Sandbox::start().await.unwrap();
    llm.push(Reply::status_retry_after(429, u64::MAX.to_string()));
    let mut e = endpoint(Provider::Anthropic, &llm.base_url());
    e.request_timeout = Duration::MAX;
    let mut config = LlmConfig::new(e);
    config.run_timeout = Duration::MAX;
    let c = LlmClient::new(config).unwrap().with_backoff(Backoff {
        base: Duration::MAX,
        cap: Duration::MAX,
    });
    let done = c.complete(&ask("hi"), &no_cancel()).await.unwrap_err();
    // The server's wait is longer than any run: given up at once, not slept on.
    assert!(matches!(done.error, LlmError::Status { status: 429, .. }));
    llm.push(Reply::text("fine"));
    let done = c.complete(&ask("hi"), &no_cancel()).await.unwrap();
    assert_eq!(done.response.content, "fine");
}
