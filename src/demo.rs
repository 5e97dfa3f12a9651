//! `productbuilder demo`: the whole pipeline on this machine with no token and no GitHub. The
//! sandbox GitHub runs in-process with one repository and one open pull request holding
//! `examples/hello-preview`; the daemon polls it, deploys the preview for real on the Docker engine
//! behind Traefik (when its image is built), and serves the dashboard on 127.0.0.1:8091. Ctrl-C
//! removes everything the demo created.

use std::path::{Path, PathBuf};
use std::time::Duration;

use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};
use productbuilder_preview::router::Traefik;
use productbuilder_preview::state::Status;
use productbuilder_slack_sandbox::Sandbox as SlackSandbox;
use tokio_util::sync::CancellationToken;

use crate::Failure;

const TOKEN: &str = "demo-token";
const REPO: (&str, &str) = ("demo", "hello");
const NETWORK: &str = "productbuilder-demo";
/// Where the demo serves by default: the dashboard and API, and the router.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8091";
pub const DEFAULT_ROUTER_PORT: u16 = 8092;
const TRAEFIK_NAME: &str = "productbuilder-demo-traefik";

/// The example repository, compiled in so that the demo runs from any directory.
const EXAMPLE: [(&str, &[u8]); 5] = [
    (
        "Dockerfile",
        include_bytes!("../examples/hello-preview/Dockerfile"),
    ),
    (
        ".productbuilding/preview/config.yml",
        include_bytes!("../examples/hello-preview/.productbuilding/preview/config.yml"),
    ),
    (
        ".productbuilding/preview/docker-compose.yml",
        include_bytes!("../examples/hello-preview/.productbuilding/preview/docker-compose.yml"),
    ),
    (
        "www/index.html",
        include_bytes!("../examples/hello-preview/www/index.html"),
    ),
    (
        "README.md",
        include_bytes!("../examples/hello-preview/README.md"),
    ),
];

/// Debian's busybox-static: the example's image is `FROM scratch` around it.
const BUSYBOX: &str = "/bin/busybox";

/// Where the demo listens: its dashboard and API, and the router's published port (on loopback).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub listen: std::net::SocketAddr,
    pub router_port: u16,
}

pub fn run(ports: Ports) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(demo(ports))
}

async fn demo(ports: Ports) -> Result<(), Failure> {
    let busybox = std::fs::read(BUSYBOX).map_err(|e| {
        Failure::Failed(format!(
            "{BUSYBOX}: {e}; the example app needs Debian's static busybox (apt-get install busybox-static)"
        ))
    })?;
    let dir = std::env::temp_dir().join(format!("productbuilder-demo-{}", std::process::id()));
    let outcome = demo_in(&dir, busybox, ports).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn demo_in(dir: &Path, busybox: Vec<u8>, ports: Ports) -> Result<(), Failure> {
    let failed = |what: &str, e: &dyn std::fmt::Display| Failure::Failed(format!("{what}: {e}"));
    let github = Sandbox::start()
        .await
        .map_err(|e| failed("cannot start the sandbox GitHub", &e))?;
    let repo = format!("{}/{}", REPO.0, REPO.1);
    github.add_token(TOKEN, "productbuilder-demo");
    github.create_repo(REPO.0, REPO.1);
    github.grant("productbuilder-demo", &repo, Permission::Push);
    let pr = EXAMPLE.iter().fold(
        NewPr::new("Add a hello page", "octocat", "hello-page")
            .with_body("The example app of productbuilder."),
        |pr, (path, content)| pr.with_file(path, content.to_vec()),
    );
    let number = github.open_pr(&repo, pr.with_file("busybox", busybox));
    // The sandbox Slack: a channel for the repository, read and written on its page.
    let slack = SlackSandbox::start()
        .await
        .map_err(|e| failed("cannot start the sandbox Slack", &e))?;
    let channel = slack.create_channel("hello");

    // Traefik routes the preview's host name; without its image the preview still deploys and
    // the loopback address is printed instead.
    let _ = tokio::process::Command::new("docker")
        .args(["network", "create", NETWORK])
        .output()
        .await;
    let traefik = match Traefik::start(TRAEFIK_NAME, NETWORK, ports.router_port).await {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("demo: no Traefik ({e}); previews are reachable on their loopback port only");
            None
        }
    };

    let demo_slack = DemoSlack {
        api_url: slack.api_url(),
        channel: channel.clone(),
    };
    let config_file = write_config(dir, &github.url(), &demo_slack, traefik.is_some(), ports)
        .map_err(|e| {
            failed(
                &format!("cannot write the demo configuration in {}", dir.display()),
                &e,
            )
        })?;
    let config = crate::config::load(&config_file).map_err(Failure::from)?;
    crate::init_logging(&config);
    println!(
        "demo: GitHub sandbox at {} with {repo}#{number} open",
        github.url()
    );
    println!(
        "demo: Slack sandbox at {}/ (the channel #hello and its threads; write \"@productbuilder status\" there)",
        slack.url()
    );
    println!(
        "demo: dashboard at http://{}/  (Ctrl-C stops the demo and removes its preview)",
        config.http.listen
    );

    let cancel = CancellationToken::new();
    // The daemon stops on SIGINT/SIGTERM by itself; `cancel` is for errors of the demo's own.
    let result = crate::daemon(config, cancel, true, |previews| {
        let previews = previews.clone();
        let repo = repo.clone();
        tokio::spawn(announce(previews, repo, number, traefik.is_some()));
    })
    .await;

    if let Some(t) = traefik {
        t.stop().await;
    }
    let _ = tokio::process::Command::new("docker")
        .args(["network", "rm", NETWORK])
        .output()
        .await;
    github.shutdown().await;
    slack.shutdown().await;
    result
}

/// Where the demo's Slack is.
struct DemoSlack {
    api_url: String,
    channel: String,
}

/// Prints the preview's address once it is ready (or why it failed).
async fn announce(
    previews: productbuilder_preview::Previews,
    repo: String,
    number: u64,
    routed: bool,
) {
    loop {
        if let Ok(Some(row)) = previews.get(&repo, number).await {
            match row.status {
                Status::Ready => {
                    if routed {
                        println!("demo: preview ready at {}", row.url);
                    } else {
                        println!(
                            "demo: preview ready ({}): build the Traefik image with scripts/traefik-image to route it",
                            row.url
                        );
                    }
                    return;
                }
                Status::Failed => {
                    println!(
                        "demo: preview failed at {}: {}",
                        row.stage.map(|s| s.as_str()).unwrap_or("?"),
                        row.error.unwrap_or_default()
                    );
                    return;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn write_config(
    dir: &Path,
    api_url: &str,
    slack: &DemoSlack,
    routed: bool,
    ports: Ports,
) -> std::io::Result<PathBuf> {
    let (listen, router_port) = (ports.listen, ports.router_port);
    std::fs::create_dir_all(dir.join("tenants"))?;
    let file = dir.join("productbuilder.toml");
    // `*.localhost` resolves to loopback in browsers and curl, so the URL works as printed.
    let url_template = if routed {
        format!("http://{{repo}}-pr-{{number}}.{{domain}}:{router_port}")
    } else {
        "http://{repo}-pr-{number}.{domain}".to_owned()
    };
    std::fs::write(
        &file,
        format!(
            "state_dir = \"state\"\n\
             [http]\nlisten = \"{listen}\"\npublic_url = \"http://{listen}\"\n\
             [log]\nformat = \"pretty\"\nlevel = \"warn,productbuilder=info,productbuilder_preview=info\"\n\
             [github]\napi_url = \"{api_url}\"\ntoken = \"{TOKEN}\"\npoll_interval = \"2s\"\n\
             [preview]\ndomain = \"preview.localhost\"\nurl_template = \"{url_template}\"\nnetwork = \"{NETWORK}\"\n\
             [slack]\nbot_token = \"{}\"\napp_token = \"{}\"\napi_url = \"{}\"\nbackfill = \"1h\"\n",
            productbuilder_slack_sandbox::BOT_TOKEN,
            productbuilder_slack_sandbox::APP_TOKEN,
            slack.api_url,
        ),
    )?;
    std::fs::write(
        dir.join("tenants/hello.toml"),
        format!(
            "repo = \"{}/{}\"\nslack_channel = \"{}\"\n",
            REPO.0, REPO.1, slack.channel
        ),
    )?;
    Ok(file)
}
