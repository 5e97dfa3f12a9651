//! `productbuilder demo`: the whole pipeline on this machine with no token and no GitHub. The
//! sandbox GitHub runs in-process with one git-backed repository holding `examples/hello-preview`
//! and one open pull request holding it too; the daemon polls it, deploys the preview for real on
//! the Docker engine behind Traefik (when its image is built), and serves the dashboard on
//! 127.0.0.1:8091. Then the build loop: an issue is labelled `productbuilder` by a writer, the
//! daemon runs a coding agent on it (`examples/scripted-agent`, a stand-in that edits the page),
//! commits, pushes over real git, opens the pull request, and that pull request's preview comes
//! up. Ctrl-C removes everything the demo created.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use productbuilder_builds::{BuildId, Queue, QueueConfig};
use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};
use productbuilder_llm_sandbox::Sandbox as LlmSandbox;
use productbuilder_preview::router::Traefik;
use productbuilder_preview::state::Status;
use productbuilder_slack_sandbox::Sandbox as SlackSandbox;
use productbuilder_store::Store;
use tokio::sync::oneshot;
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

/// The stand-in coding agent, compiled in like the example; written into the demo's directory.
const SCRIPTED_AGENT: &[u8] = include_bytes!("../examples/scripted-agent/agent.sh");
/// How long the scripted agent works (one progress line a second), so the build can be watched.
const AGENT_SECONDS: &str = "3";
/// The issue the demo has built, and who labels it (a writer: only writers start builds).
const ISSUE_TITLE: &str = "Say hello from a build";
const ISSUE_BODY: &str = "The page should say that a build changed it.";
const WRITER: &str = "octocat";
/// The Slack user the sandbox's page writes as by default, a writer of the demo's tenant: the
/// agent files issues and starts builds for them.
const DEMO_WRITER: &str = "U0DEMO";
/// The label that starts a build (`[builds] label`, its default).
const BUILD_LABEL: &str = productbuilder_builds::config::DEFAULT_LABEL;
/// How long the demo waits for each stage of the build story before saying so and giving up
/// on it (the daemon and the first preview go on).
const FIRST_PASS_WITHIN: Duration = Duration::from_secs(120);
const BUILD_WITHIN: Duration = Duration::from_secs(300);
/// How often the demo looks at the daemon's database for the story's next stage.
const LOOK_EVERY: Duration = Duration::from_millis(250);

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
    // A real git repository (builds clone and push it over HTTP) whose `main` is the example app.
    let files: Vec<(&str, &[u8])> = EXAMPLE
        .iter()
        .copied()
        .chain([("busybox", busybox.as_slice())])
        .collect();
    // busybox is an ELF file: the sandbox commits it executable (100755).
    github.create_git_repo(REPO.0, REPO.1, &files);
    github.grant("productbuilder-demo", &repo, Permission::Push);
    let pr = EXAMPLE.iter().fold(
        NewPr::new("Add a hello page", WRITER, "hello-page")
            .with_body("The example app of productbuilder."),
        |pr, (path, content)| pr.with_file(path, content.to_vec()),
    );
    let number = github.open_pr(&repo, pr.with_file("busybox", busybox.clone()));
    // The issue a build implements; its author may write, so their label starts the build.
    let issue = github.create_issue(&repo, ISSUE_TITLE, ISSUE_BODY, WRITER);
    github.grant(WRITER, &repo, Permission::Push);
    let agent = write_agent(dir).map_err(|e| {
        failed(
            &format!("cannot write the scripted agent into {}", dir.display()),
            &e,
        )
    })?;
    let api_token = api_token().map_err(|e| failed("cannot draw an API token", &e))?;
    // The sandbox Slack: a channel for the repository, read and written on its page.
    let slack = SlackSandbox::start()
        .await
        .map_err(|e| failed("cannot start the sandbox Slack", &e))?;
    let channel = slack.create_channel("hello");
    // The sandbox LLM with its rule-based model: the agent answers mentions with no API key.
    let llm = LlmSandbox::start_demo()
        .await
        .map_err(|e| failed("cannot start the sandbox LLM", &e))?;

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
        llm_url: llm.base_url(),
    };
    let setup = DemoSetup {
        api_url: github.url(),
        slack: demo_slack,
        routed: traefik.is_some(),
        ports,
        agent,
        api_token: api_token.clone(),
    };
    let config_file = write_config(dir, &setup).map_err(|e| {
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
        "demo: Slack sandbox at {}/ (the channel #hello and its threads; as {DEMO_WRITER}, a writer, write \"@productbuilder file a bug: the page has no title\", \"@productbuilder what's the status of #2\" or, in an issue's thread, \"@productbuilder implement this\")",
        slack.url()
    );
    println!(
        "demo: dashboard at http://{}/  (Ctrl-C stops the demo and removes its previews)",
        config.http.listen
    );
    println!(
        "demo: {repo}#{issue} \"{ISSUE_TITLE}\" is open; {WRITER} labels it `{BUILD_LABEL}` once the daemon has looked at the repository, and a build starts"
    );
    println!("demo: the API token (for /builds): {api_token}");

    let routed = traefik.is_some();
    let story = Story {
        database: config.database_path(),
        listen: config.http.listen,
        repo: repo.clone(),
        issue,
        routed,
        api_token,
    };
    let cancel = CancellationToken::new();
    let (wired, previews) = oneshot::channel();
    let announced = repo.clone();
    // The daemon stops on SIGINT/SIGTERM by itself; `cancel` is for errors of the demo's own.
    let daemon = crate::daemon(config, cancel, true, move |previews| {
        let _ = wired.send(previews.clone());
        tokio::spawn(announce(
            previews.clone(),
            announced,
            number,
            routed,
            "preview",
        ));
    });
    // The build story runs beside the daemon and ends with it at the latest.
    let result = {
        tokio::pin!(daemon);
        tokio::select! {
            result = &mut daemon => result,
            () = story.tell(&github, previews) => daemon.await,
        }
    };

    if let Some(t) = traefik {
        t.stop().await;
    }
    let _ = tokio::process::Command::new("docker")
        .args(["network", "rm", NETWORK])
        .output()
        .await;
    github.shutdown().await;
    slack.shutdown().await;
    drop(llm);
    result
}

/// Where the demo's Slack (and the model its agent asks) is.
struct DemoSlack {
    api_url: String,
    channel: String,
    /// The sandbox LLM's Anthropic `base_url`.
    llm_url: String,
}

/// What the demo's configuration is written from.
struct DemoSetup {
    api_url: String,
    slack: DemoSlack,
    routed: bool,
    ports: Ports,
    /// The scripted agent's path.
    agent: PathBuf,
    api_token: String,
}

/// The build loop, told as it happens: the writer's label once the daemon's first triggers pass
/// has recorded what was already there (a label added before it would start nothing), the build,
/// its pull request, and that pull request's preview.
struct Story {
    database: PathBuf,
    listen: std::net::SocketAddr,
    repo: String,
    issue: u64,
    routed: bool,
    api_token: String,
}

impl Story {
    async fn tell(
        self,
        github: &Sandbox,
        previews: oneshot::Receiver<productbuilder_preview::Previews>,
    ) {
        // The daemon has opened (and will migrate) its database once it is wired.
        let Ok(previews) = previews.await else {
            return;
        };
        let store = match Store::open(&self.database) {
            Ok(store) => store,
            Err(e) => {
                println!("demo: cannot read the daemon's database, so no build: {e}");
                return;
            }
        };
        if !self.first_pass_done(&store).await {
            println!(
                "demo: the daemon's first builds pass did not happen within {FIRST_PASS_WITHIN:?}; no build (see its log)"
            );
            return;
        }
        github.add_label(&self.repo, self.issue, BUILD_LABEL, WRITER);
        println!(
            "demo: {WRITER} labelled #{} `{BUILD_LABEL}`; the daemon's next pass starts a build",
            self.issue
        );
        let queue = Queue::new(store, QueueConfig::default());
        let Some(id) = self.build_started(&queue).await else {
            println!(
                "demo: no build started for #{} within {BUILD_WITHIN:?} (see the daemon's log)",
                self.issue
            );
            return;
        };
        println!(
            "demo: build {id} for #{} runs; watch it: curl -H 'Authorization: Bearer {}' http://{}/builds/{id}  (its transcript: /builds/{id}/log)",
            self.issue, self.api_token, self.listen
        );
        let Some(pull) = self.build_ended(&queue, id).await else {
            return;
        };
        announce(previews, self.repo, pull, self.routed, "build's preview").await;
    }

    /// Whether the repository's first triggers pass was recorded (`build_trigger_start`), within
    /// [`FIRST_PASS_WITHIN`].
    async fn first_pass_done(&self, store: &Store) -> bool {
        let deadline = Instant::now() + FIRST_PASS_WITHIN;
        while Instant::now() < deadline {
            let repo = self.repo.clone();
            // Before the migrations ran the table is missing: not yet.
            let done = store
                .read(move |c| {
                    c.query_row(
                        "SELECT count(*) FROM build_trigger_start WHERE repo = ?1",
                        [repo],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .await;
            if matches!(done, Ok(n) if n > 0) {
                return true;
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
        false
    }

    /// The build the label started, within [`BUILD_WITHIN`].
    async fn build_started(&self, queue: &Queue) -> Option<BuildId> {
        let deadline = Instant::now() + BUILD_WITHIN;
        while Instant::now() < deadline {
            if let Ok(builds) = queue.list(&self.repo, 10).await
                && let Some(build) = builds.iter().find(|b| b.number == Some(self.issue))
            {
                return Some(build.id);
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
        None
    }

    /// Waits for build `id` to end and says how; its pull request's number when it opened one.
    async fn build_ended(&self, queue: &Queue, id: BuildId) -> Option<u64> {
        let deadline = Instant::now() + BUILD_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(build)) = queue.get(id).await
                && build.status.is_final()
            {
                let result = build.result.unwrap_or_default();
                let error = build.error.or(result.error).unwrap_or_default();
                match (build.status, result.pr_number) {
                    (productbuilder_builds::Status::Completed, Some(pull)) => println!(
                        "demo: build {id} {}: pushed {} and opened pull request #{pull} {}",
                        build.status.as_str(),
                        result.branch.unwrap_or_default(),
                        result.pr_url.unwrap_or_default()
                    ),
                    (status, pull) => println!(
                        "demo: build {id} {}: {error}{}",
                        status.as_str(),
                        pull.map_or(String::new(), |n| format!(
                            " (its work is draft pull request #{n})"
                        ))
                    ),
                }
                return result.pr_number;
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
        println!("demo: build {id} did not end within {BUILD_WITHIN:?}");
        None
    }
}

/// Writes the scripted agent into the demo's directory; its path.
fn write_agent(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("scripted-agent/agent.sh");
    std::fs::create_dir_all(dir.join("scripted-agent"))?;
    std::fs::write(&path, SCRIPTED_AGENT)?;
    Ok(path)
}

/// A fresh API token: 128 random bits in hex, from the kernel.
fn api_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Prints the preview's address once it is ready (or why it failed); `what` names it
/// ("preview", "build's preview").
async fn announce(
    previews: productbuilder_preview::Previews,
    repo: String,
    number: u64,
    routed: bool,
    what: &str,
) {
    loop {
        if let Ok(Some(row)) = previews.get(&repo, number).await {
            match row.status {
                Status::Ready => {
                    if routed {
                        println!("demo: {what} ready at {}", row.url);
                    } else {
                        println!(
                            "demo: {what} ready ({}): build the Traefik image with scripts/traefik-image to route it",
                            row.url
                        );
                    }
                    return;
                }
                Status::Failed => {
                    println!(
                        "demo: {what} failed at {}: {}",
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

fn write_config(dir: &Path, setup: &DemoSetup) -> std::io::Result<PathBuf> {
    let DemoSetup {
        api_url,
        slack,
        routed,
        ports,
        agent,
        api_token,
    } = setup;
    let (listen, router_port) = (ports.listen, ports.router_port);
    std::fs::create_dir_all(dir.join("tenants"))?;
    let file = dir.join("productbuilder.toml");
    // `*.localhost` resolves to loopback in browsers and curl, so the URL works as printed.
    let url_template = if *routed {
        format!("http://{{repo}}-pr-{{number}}.{{domain}}:{router_port}")
    } else {
        "http://{repo}-pr-{number}.{domain}".to_owned()
    };
    std::fs::write(
        &file,
        format!(
            "state_dir = \"state\"\n\
             [http]\nlisten = \"{listen}\"\npublic_url = \"http://{listen}\"\napi_token = \"{api_token}\"\n\
             [log]\nformat = \"pretty\"\nlevel = \"warn,productbuilder=info,productbuilder_preview=info,productbuilder_builds=info\"\n\
             [github]\napi_url = \"{api_url}\"\ntoken = \"{TOKEN}\"\npoll_interval = \"2s\"\n\
             [preview]\ndomain = \"preview.localhost\"\nurl_template = \"{url_template}\"\nnetwork = \"{NETWORK}\"\n\
             [slack]\nbot_token = \"{}\"\napp_token = \"{}\"\napi_url = \"{}\"\nbackfill = \"1h\"\n\
             [builds]\nagent_command = [\"/bin/sh\", {}, \"{{prompt}}\", \"{AGENT_SECONDS}\"]\n\
             agent_format = \"claude-stream-json\"\nmax_duration = \"2m\"\n\
             [llm]\nprovider = \"anthropic\"\nmodel = \"demo-rules\"\napi_key = \"demo\"\nbase_url = \"{}\"\n",
            productbuilder_slack_sandbox::BOT_TOKEN,
            productbuilder_slack_sandbox::APP_TOKEN,
            slack.api_url,
            // A JSON string is a TOML basic string: the path, whatever it holds, stays one value.
            serde_json::Value::from(agent.to_string_lossy()),
            slack.llm_url,
        ),
    )?;
    std::fs::write(
        dir.join("tenants/hello.toml"),
        format!(
            "repo = \"{}/{}\"\nslack_channel = \"{}\"\n[slack]\nwriters = [\"{DEMO_WRITER}\"]\n",
            REPO.0, REPO.1, slack.channel
        ),
    )?;
    Ok(file)
}
