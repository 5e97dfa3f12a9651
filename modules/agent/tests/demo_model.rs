//! The sandbox's demo model (what `productbuilder demo` answers with, no API key) driving whole
//! runs of the agent over real HTTP, in both wire formats, with the recording fake tools and a
//! real SQLite file for the traces: no reply is scripted.

use std::sync::Arc;
use std::time::Duration;

use productbuilder_agent::run::REFUSAL;
use productbuilder_agent::{
    Action, Agent, Call, FakeTools, Outcome, RunInput, RunOutcome, ThreadMessage, Traces,
};
use productbuilder_llm::{Endpoint, LlmClient, LlmConfig, Provider};
use productbuilder_llm_sandbox::Sandbox;
use productbuilder_store::Store;
use tokio_util::sync::CancellationToken;

const WRITER: &str = "UWRITER";
const OTHER: &str = "UOTHER";

struct World {
    llm: Sandbox,
    tools: Arc<FakeTools>,
    traces: Traces,
    agent: Agent,
    _dir: tempfile::TempDir,
}

async fn world(provider: Provider) -> World {
    let llm = Sandbox::start_demo().await.unwrap();
    let base_url = match provider {
        Provider::Anthropic => llm.base_url(),
        _ => llm.openai_base_url(),
    };
    let mut endpoint = Endpoint::new(provider, "demo-model", &base_url);
    endpoint.request_timeout = Duration::from_secs(5);
    endpoint.max_retries = 0;
    let client = LlmClient::new(LlmConfig::new(endpoint)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db.sqlite")).unwrap();
    store.migrate().unwrap();
    let traces = Traces::new(store);
    let tools = Arc::new(FakeTools::new());
    tools.add_issue(1, "Checkout is slow", "It takes 10 seconds.");
    let agent = Agent::new(Arc::new(client), tools.clone(), traces.clone());
    World {
        llm,
        tools,
        traces,
        agent,
        _dir: dir,
    }
}

fn input(user: &str, text: &str, issue: Option<u64>, writer: bool) -> RunInput {
    RunInput {
        repo: "o/r".into(),
        channel: "C1".into(),
        thread_ts: "1700000000.000100".into(),
        issue,
        messages: vec![ThreadMessage {
            user: user.into(),
            from_bot: false,
            text: text.into(),
        }],
        author_is_writer: writer,
        summary: None,
    }
}

async fn run(w: &World, input: &RunInput) -> RunOutcome {
    w.agent.run(input, &CancellationToken::new()).await
}

/// The sandbox's usage rule (a quarter of the characters, rounded up).
fn estimate(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The trace's input tokens are the requests' estimated sizes (the demo model's answers carry
/// the same usage as scripted ones), and something was output.
async fn assert_usage_is_realistic(w: &World, done: &RunOutcome, provider: Provider) {
    let trace = w.traces.get(done.run_id.unwrap().0).await.unwrap().unwrap();
    let sent: u64 = w.llm.requests().iter().map(|r| estimate(&r.raw)).sum();
    assert_eq!(
        trace.run.tokens_in + trace.run.tokens_cache,
        sent,
        "{provider:?}"
    );
    assert!(trace.run.tokens_out > 0, "{provider:?}");
    assert_eq!(trace.run.llm_calls as usize, w.llm.requests().len());
    assert_eq!(trace.run.model.as_deref(), Some("demo-model"));
}

const PROVIDERS: [Provider; 2] = [Provider::Anthropic, Provider::Openaicompat];

#[tokio::test]
async fn a_writer_files_a_bug_and_the_reply_names_the_new_issue() {
    for provider in PROVIDERS {
        let w = world(provider).await;
        let done = run(
            &w,
            &input(
                WRITER,
                "<@UBOT> file a bug: the cart total is wrong",
                None,
                true,
            ),
        )
        .await;
        assert_eq!(
            done.outcome,
            Outcome::Answered,
            "{provider:?}: {}",
            done.reply
        );
        assert_eq!(
            done.actions,
            [Action::Created {
                number: 2,
                url: "https://github.com/o/r/issues/2".into()
            }],
            "{provider:?}"
        );
        assert_eq!(
            done.reply, "Filed #2: https://github.com/o/r/issues/2",
            "{provider:?}"
        );
        match &w.tools.calls()[..] {
            [(repo, Call::CreateIssue { title, body })] => {
                assert_eq!(repo, "o/r");
                assert_eq!(title, "The cart total is wrong", "{provider:?}");
                assert!(body.contains("the cart total is wrong"), "{body}");
                assert!(!body.contains("<@UBOT>"), "{body}");
            }
            calls => panic!("{provider:?}: {calls:?}"),
        }
        assert_eq!(w.tools.issue(2).unwrap().title, "The cart total is wrong");
        assert_usage_is_realistic(&w, &done, provider).await;
    }
}

#[tokio::test]
async fn a_status_question_only_reads() {
    for provider in PROVIDERS {
        let w = world(provider).await;
        // Not a writer: a question needs no write access.
        let done = run(
            &w,
            &input(OTHER, "<@UBOT> what's the status of #1", None, false),
        )
        .await;
        assert_eq!(
            done.outcome,
            Outcome::Answered,
            "{provider:?}: {}",
            done.reply
        );
        assert_eq!(done.specialist.map(|s| s.as_str()), Some("researcher"));
        assert!(done.actions.is_empty(), "{provider:?}");
        assert_eq!(
            w.tools.calls(),
            [("o/r".to_owned(), Call::GetIssue { number: 1 })],
            "{provider:?}"
        );
        assert_eq!(done.reply, "#1 (open): Checkout is slow", "{provider:?}");
        assert!(w.tools.issue(1).unwrap().open);
        assert_usage_is_realistic(&w, &done, provider).await;
    }
}

#[tokio::test]
async fn implement_this_in_an_issues_thread_delegates_that_issue() {
    for provider in PROVIDERS {
        let w = world(provider).await;
        let done = run(&w, &input(WRITER, "<@UBOT> implement this", Some(1), true)).await;
        assert_eq!(
            done.outcome,
            Outcome::Answered,
            "{provider:?}: {}",
            done.reply
        );
        assert_eq!(
            w.tools.calls(),
            [(
                "o/r".to_owned(),
                Call::DelegateBuild {
                    issue: 1,
                    prompt: "implement this".into()
                }
            )],
            "{provider:?}"
        );
        assert_eq!(done.actions, [Action::BuildStarted { issue: 1, build: 1 }]);
        assert_eq!(done.reply, "Build 1 queued for #1", "{provider:?}");
        assert_usage_is_realistic(&w, &done, provider).await;
    }
}

#[tokio::test]
async fn a_non_writer_asking_to_file_a_bug_is_refused_and_nothing_is_written() {
    for provider in PROVIDERS {
        let w = world(provider).await;
        let done = run(
            &w,
            &input(
                OTHER,
                "<@UBOT> file a bug: the cart total is wrong",
                None,
                false,
            ),
        )
        .await;
        assert_eq!(done.outcome, Outcome::Refused, "{provider:?}");
        assert_eq!(done.reply, REFUSAL);
        assert!(w.tools.calls().is_empty(), "{provider:?}");
        assert!(done.actions.is_empty());
        assert!(w.tools.issue(2).is_none());
        // Only the router was asked.
        assert_eq!(w.llm.requests().len(), 1, "{provider:?}");
    }
}
