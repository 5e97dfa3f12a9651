//! The download, config and policy stages against the sandbox GitHub, over real HTTP.

use std::time::Duration;

use productbuilder_github::{BudgetLimits, ClientConfig, Credentials, GithubClient, Token};
use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};
use productbuilder_preview::archive::Limits;
use productbuilder_preview::policy::Policy;
use productbuilder_preview::source::{Checkout, StageError, fetch_and_check};
use productbuilder_preview::state::Stage;
use productbuilder_store::Store;

const CONFIG: &str = "version: 1\ncompose:\n  file: .productbuilding/preview/docker-compose.yml\n  service: app\nruntime:\n  internal_port: 8080\n  healthcheck_path: /\n";
const COMPOSE: &str = "services:\n  app:\n    build: ../..\n";

struct Setup {
    sandbox: Sandbox,
    client: GithubClient,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let sandbox = Sandbox::start().await.unwrap();
    sandbox.add_token("tok", "bot");
    sandbox.create_repo("acme", "shop");
    sandbox.grant("bot", "acme/shop", Permission::Push);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    store.migrate().unwrap();
    let client = GithubClient::new(
        ClientConfig {
            api_url: sandbox.url(),
            credentials: Credentials::Token(Token::new("tok")),
            limits: BudgetLimits::default(),
            request_timeout: Duration::from_secs(10),
        },
        store,
    )
    .unwrap();
    Setup {
        sandbox,
        client,
        dir,
    }
}

/// The three stages for `sha`, into the workspace `ws` under the setup's directory.
async fn stages(s: &Setup, sha: &str, ws: &str, limits: &Limits) -> Result<Checkout, StageError> {
    fetch_and_check(
        &s.client,
        "acme/shop",
        sha,
        &s.dir.path().join(ws),
        limits,
        &productbuilder_preview::source::Checks {
            policy: &Policy::default(),
            cli: &productbuilder_preview::runner::ComposeCli::detect(&[
                "docker".into(),
                "compose".into(),
            ])
            .await
            .expect("Compose v2"),
            project: "pb-source-test",
        },
    )
    .await
}

fn pr(compose: &str) -> NewPr {
    NewPr::new("Preview me", "alice", "feature")
        .with_file(".productbuilding/preview/config.yml", CONFIG)
        .with_file(".productbuilding/preview/docker-compose.yml", compose)
        .with_file("index.html", "<h1>hello</h1>")
}

#[tokio::test]
async fn a_valid_head_is_downloaded_extracted_and_checked() {
    let s = setup().await;
    let number = s.sandbox.open_pr("acme/shop", pr(COMPOSE));
    let sha = s.sandbox.head_sha("acme/shop", number);
    let workspace = s.dir.path().join("ws");
    let checkout = stages(&s, &sha, "ws", &Limits::default()).await.unwrap();
    assert_eq!(checkout.spec.service, "app");
    assert_eq!(checkout.spec.healthcheck_path, "/");
    assert_eq!(
        std::fs::read_to_string(checkout.dir.join("index.html")).unwrap(),
        "<h1>hello</h1>"
    );
    assert!(
        !workspace.join("source.tar.gz").exists(),
        "the archive is removed once extracted"
    );

    // A retry after a crash starts from a clean workspace.
    std::fs::write(checkout.dir.join("leftover"), "x").unwrap();
    let again = stages(&s, &sha, "ws", &Limits::default()).await.unwrap();
    assert!(!again.dir.join("leftover").exists());
}

#[tokio::test]
async fn a_socket_mount_fails_at_policy_and_a_missing_contract_at_config() {
    let s = setup().await;
    let bad = s.sandbox.open_pr(
        "acme/shop",
        pr("services:\n  app:\n    build: ../..\n    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n"),
    );
    let sha = s.sandbox.head_sha("acme/shop", bad);
    let err = stages(&s, &sha, "a", &Limits::default()).await.unwrap_err();
    assert_eq!(err.stage, Stage::Policy);
    assert!(err.message.contains("mentions the Docker socket"), "{err}");

    let bare = s.sandbox.open_pr(
        "acme/shop",
        NewPr::new("No preview", "bob", "x").with_file("README", "hi"),
    );
    let sha = s.sandbox.head_sha("acme/shop", bare);
    let err = stages(&s, &sha, "b", &Limits::default()).await.unwrap_err();
    assert_eq!(err.stage, Stage::Config);
    assert!(
        err.message
            .contains(".productbuilding/preview/config.yml: cannot be read"),
        "{err}"
    );
}

#[tokio::test]
async fn an_oversized_download_fails_at_download() {
    let s = setup().await;
    let number = s.sandbox.open_pr(
        "acme/shop",
        pr(COMPOSE).with_file("big.bin", vec![7u8; 256 * 1024]),
    );
    let sha = s.sandbox.head_sha("acme/shop", number);
    let tight = Limits {
        max_unpacked_bytes: 64 * 1024,
        ..Limits::default()
    };
    let err = stages(&s, &sha, "c", &tight).await.unwrap_err();
    assert_eq!(err.stage, Stage::Download);
    assert!(err.message.contains("big.bin"), "{err}");
    let err = stages(&s, "not-a-sha", "d", &Limits::default())
        .await
        .unwrap_err();
    assert_eq!(err.stage, Stage::Download);
}
