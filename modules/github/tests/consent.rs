//! Who the daemon is, who may approve, and who labelled: the marker comment is only ever the
//! daemon's own, permissions come from the collaborator-permission endpoint (cached), and the
//! label's actor from the issue events.

use std::time::Duration;

use productbuilder_github::{
    BudgetLimits, ClientConfig, Credentials, GithubClient, MarkerComments, Token,
};
use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};
use productbuilder_store::Store;

const TOKEN: &str = "ghp_consent_test";
const MARKER: &str = "<!-- productbuilder:preview -->";

async fn setup() -> (Sandbox, tempfile::TempDir) {
    let sandbox = Sandbox::start().await.unwrap();
    sandbox.add_token(TOKEN, "productbuilder-bot");
    sandbox.create_repo("acme", "shop");
    sandbox.grant("productbuilder-bot", "acme/shop", Permission::Push);
    (sandbox, tempfile::tempdir().unwrap())
}

fn client(sandbox: &Sandbox, dir: &tempfile::TempDir, credentials: Credentials) -> GithubClient {
    let store = Store::open(dir.path().join("productbuilder.db")).unwrap();
    store.migrate().unwrap();
    GithubClient::new(
        ClientConfig {
            api_url: sandbox.url(),
            credentials,
            limits: BudgetLimits::default(),
            request_timeout: Duration::from_secs(10),
        },
        store,
    )
    .unwrap()
}

fn pr() -> NewPr {
    NewPr::new("Change", "mallory", "feature")
        .with_file("index.html", "<h1>x</h1>")
        .from_fork()
}

#[tokio::test]
async fn a_marker_planted_by_someone_else_is_never_edited() {
    let (sandbox, dir) = setup().await;
    let number = sandbox.open_pr("acme/shop", pr());
    let planted = format!("{MARKER}\nI am the preview bot, trust me");
    let planted_id = sandbox.add_comment("acme/shop", number, "mallory", &planted);
    let client = client(&sandbox, &dir, Credentials::Token(Token::new(TOKEN)));
    assert_eq!(
        client.own_login("acme/shop").await.unwrap(),
        "productbuilder-bot"
    );
    let comments = MarkerComments::new(client.clone(), MARKER);
    comments.publish("acme/shop", number, "one").await.unwrap();
    // A process that lost its memory finds its own comment again, not the planted one.
    let amnesiac = MarkerComments::new(client, MARKER);
    amnesiac.publish("acme/shop", number, "two").await.unwrap();
    let all = sandbox.comments("acme/shop", number);
    let planted_now = all.iter().find(|c| c.id == planted_id).unwrap();
    assert_eq!(planted_now.body, planted);
    assert_eq!(planted_now.updated_at, planted_now.created_at);
    let ours: Vec<_> = all
        .iter()
        .filter(|c| c.author == "productbuilder-bot")
        .collect();
    assert_eq!(ours.len(), 1, "{all:?}");
    assert_eq!(ours[0].body, format!("{MARKER}\ntwo"));
}

#[tokio::test]
async fn an_app_writes_as_its_bot_and_finds_only_that_bot_s_comment() {
    let (sandbox, dir) = setup().await;
    sandbox.add_app(7);
    sandbox.install(7, 4242, &["acme/shop"]);
    let number = sandbox.open_pr("acme/shop", pr());
    // A marker from the token user (another identity) is not the App's.
    sandbox.add_comment(
        "acme/shop",
        number,
        "productbuilder-bot",
        &format!("{MARKER}\nold"),
    );
    let pem = include_str!("data/test-app-key.pem");
    let client = client(&sandbox, &dir, Credentials::app(7, pem, None).unwrap());
    assert_eq!(
        client.own_login("acme/shop").await.unwrap(),
        "sandbox-app-7[bot]"
    );
    MarkerComments::new(client, MARKER)
        .publish("acme/shop", number, "new")
        .await
        .unwrap();
    let all = sandbox.comments("acme/shop", number);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0].body, format!("{MARKER}\nold"));
    assert_eq!(all[1].author, "sandbox-app-7[bot]");
}

#[tokio::test]
async fn writers_are_asked_once_and_labels_name_their_actor() {
    let (sandbox, dir) = setup().await;
    let number = sandbox.open_pr("acme/shop", pr());
    sandbox.create_repo("someone", "else"); // creates the user
    sandbox.grant("carol", "acme/shop", Permission::Push);
    sandbox.grant("rita", "acme/shop", Permission::Pull);
    sandbox.add_label("acme/shop", number, "preview", "rita");
    let client = client(&sandbox, &dir, Credentials::Token(Token::new(TOKEN)));
    for (user, writer) in [
        ("acme", true),
        ("carol", true),
        ("rita", false),
        ("mallory", false),
        ("nobody-at-all", false),
        ("../../evil", false),
    ] {
        assert_eq!(
            client.can_write("acme/shop", user).await.unwrap(),
            writer,
            "{user}"
        );
    }
    sandbox.clear_requests();
    assert!(client.can_write("acme/shop", "carol").await.unwrap());
    assert!(
        sandbox.requests().is_empty(),
        "a cached permission is not asked again"
    );

    let events = client.label_events("acme/shop", number).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            events[0].event.as_str(),
            events[0].label.as_str(),
            events[0].actor.as_str()
        ),
        ("labeled", "preview", "rita")
    );
    // Unchanged: a conditional request.
    sandbox.clear_requests();
    client.label_events("acme/shop", number).await.unwrap();
    let r = sandbox.requests();
    assert!(r.iter().all(|r| r.status == 304 && !r.counted), "{r:?}");
}
