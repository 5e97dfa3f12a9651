//! End to end: the real binary against the sandbox GitHub, the real Docker engine, the real
//! Compose CLI and a real Traefik. A pull request opens and its preview answers through Traefik;
//! a push redeploys it under the same comment; a compose file that mounts the Docker socket fails
//! at `policy` with no container ever created; the daemon killed with SIGKILL during a build
//! converges after a restart; closed pull requests leave nothing behind.
//!
//! Needs the engine, a Compose CLI, Debian's busybox-static and the Traefik image
//! (`.ci/run` provides all of them; `scripts/traefik-image` builds the image).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};
use productbuilder_preview::compose::project_name;
use productbuilder_preview::router::Traefik;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_productbuilder");
const TOKEN: &str = "ghp_e2e_token_never_printed";
const MARKER: &str = "<!-- productbuilder:preview -->";

mod support;
use support::{app_files, docker, free_port, http_get, unix_now, wait_for};

struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    listen: SocketAddr,
    repo: String,
    domain: String,
    network: String,
}

impl Site {
    fn previews(&self) -> Result<Vec<Value>, String> {
        let (status, body) =
            http_get(self.listen, "localhost", "/previews").ok_or("no answer from the daemon")?;
        if status != 200 {
            return Err(format!("GET /previews answered {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// Waits until preview `number` satisfies `done`; returns its row.
    fn wait_preview(&self, number: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_for(
            &format!("preview #{number} {what}"),
            Duration::from_secs(180),
            || {
                let rows = self.previews()?;
                let row = rows
                    .iter()
                    .find(|r| r["repo"] == self.repo.as_str() && r["number"] == number)
                    .cloned()
                    .ok_or_else(|| format!("no row yet: {rows:?}"))?;
                if done(&row) {
                    Ok(row)
                } else {
                    Err(row.to_string())
                }
            },
        )
    }

    fn start_daemon(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn host(&self, number: u64) -> String {
        let name = self.repo.split('/').nth(1).unwrap();
        format!("{name}-pr-{number}.{}", self.domain)
    }

    /// Everything the engine holds of a preview's compose project, as `kind: ids` lines.
    fn leftovers(&self, number: u64) -> Vec<String> {
        let project = project_name(&self.repo, number);
        let label = format!("label=com.docker.compose.project={project}");
        let mut found = Vec::new();
        for (kind, out) in [
            ("containers", docker(&["ps", "-aq", "--filter", &label])),
            (
                "volumes",
                docker(&["volume", "ls", "-q", "--filter", &label]),
            ),
            (
                "networks",
                docker(&["network", "ls", "-q", "--filter", &label]),
            ),
            (
                "images",
                docker(&["images", "-q", "--filter", &format!("reference={project}*")]),
            ),
            (
                "images built for it (by label, untagged ones too)",
                docker(&[
                    "images",
                    "-q",
                    "--filter",
                    &format!("label=productbuilder.project={project}"),
                ]),
            ),
        ] {
            if !out.is_empty() {
                found.push(format!("{kind}: {out}"));
            }
        }
        found
    }
}

fn sigterm(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
}

/// The sandbox GitHub with repository `acme/{name}{pid}`, a configuration directory for the daemon
/// (its tenant file included), and Traefik on the previews' shared network; `tag` keeps the
/// networks, domains and containers of concurrent tests apart.
fn setup(runtime: &tokio::runtime::Runtime, name: &str, tag: &str) -> (Sandbox, Site, Traefik) {
    let github = runtime.block_on(Sandbox::start()).unwrap();
    let unique = format!("{}", std::process::id());
    let repo = format!("acme/{name}{unique}");
    github.add_token(TOKEN, "productbuilder-bot");
    github.create_repo("acme", &format!("{name}{unique}"));
    github.grant("productbuilder-bot", &repo, Permission::Push);

    let dir = tempfile::tempdir().unwrap();
    let network = format!("pb-{tag}-{unique}");
    let domain = format!("{tag}{unique}.localhost");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::create_dir(dir.path().join("tenants")).unwrap();
    let config = dir.path().join("productbuilder.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\n\
             [http]\nlisten = \"{listen}\"\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n\
             [github]\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\npoll_interval = \"1s\"\n\
             [preview]\ndomain = \"{domain}\"\nurl_template = \"http://{{repo}}-pr-{{number}}.{{domain}}\"\nnetwork = \"{network}\"\n",
            github.url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(format!("tenants/{name}.toml")),
        format!("repo = \"{repo}\"\n[preview]\ncpus = 0.5\nmemory = \"64m\"\n"),
    )
    .unwrap();
    let site = Site {
        dir,
        config,
        listen,
        repo,
        domain,
        network: network.clone(),
    };
    let _ = Command::new("docker")
        .args(["network", "create", &network])
        .output();
    let traefik = runtime
        .block_on(Traefik::start(
            &format!("pb-{tag}-traefik-{unique}"),
            &network,
            0,
        ))
        .expect("Traefik starts (scripts/traefik-image builds its image)");
    (github, site, traefik)
}

#[test]
fn previews_follow_their_pull_requests_through_traefik() {
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: apt-get install busybox-static (.ci/run does)"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (github, site, traefik) = setup(&runtime, "hello", "e2e");
    let repo = site.repo.clone();
    let started_at = unix_now();

    let one = github.open_pr(
        &repo,
        app_files("version one", false, false).into_iter().fold(
            NewPr::new("A page", "octocat", "feature-one"),
            |pr, (p, c)| pr.with_file(&p, c),
        ),
    );
    let socket = github.open_pr(
        &repo,
        app_files("socket", true, false).into_iter().fold(
            NewPr::new("Mount the socket", "mallory", "feature-socket"),
            |pr, (p, c)| pr.with_file(&p, c),
        ),
    );

    let mut daemon = site.start_daemon();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Opened → ready, and Traefik routes the preview's host to the page of that commit.
        let sha_one = github.head_sha(&repo, one);
        let row = site.wait_preview(one, "ready", |r| r["status"] == "ready");
        assert_eq!(row["head_sha"], sha_one.as_str());
        assert_eq!(row["url"], format!("http://{}", site.host(one)).as_str());
        let page = |number: u64, expect: &str| {
            wait_for(
                &format!("Traefik to serve {expect:?} for #{number}"),
                Duration::from_secs(30),
                || match http_get(traefik.addr, &site.host(number), "/") {
                    Some((200, body)) if body.contains(expect) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            )
        };
        page(one, "version one");

        // The dashboard lists it, and its logs (busybox httpd -v: a line per request) are served.
        let (status, dashboard) = http_get(site.listen, "localhost", "/").unwrap();
        assert_eq!(status, 200);
        assert!(
            dashboard.contains(&format!("http://{}", site.host(one))),
            "{dashboard}"
        );
        assert!(
            dashboard.contains(&format!("/previews/{repo}/{one}/logs")),
            "{dashboard}"
        );
        let logs_path = format!("/previews/{repo}/{one}/logs?tail=50");
        let logs = wait_for(
            "a request in the preview's logs",
            Duration::from_secs(30),
            || match http_get(site.listen, "localhost", &logs_path) {
                Some((200, body)) if body.contains("response:200") => Ok(body),
                other => Err(format!("{other:?}")),
            },
        );
        assert!(!logs.contains(TOKEN));

        // follow=true streams what comes next: nothing old (tail=0), then the next request's line.
        let mut follow = TcpStream::connect(site.listen).unwrap();
        follow
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        write!(
            follow,
            "GET /previews/{repo}/{one}/logs?tail=0&follow=true HTTP/1.0\r\nHost: localhost\r\n\r\n"
        )
        .unwrap();
        let mut streamed = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&streamed).contains("\r\n\r\n") {
            let n = follow.read(&mut buf).unwrap();
            assert!(n > 0, "the logs stream closed before its headers");
            streamed.extend_from_slice(&buf[..n]);
        }
        assert!(streamed.starts_with(b"HTTP/1.0 200") || streamed.starts_with(b"HTTP/1.1 200"));
        http_get(traefik.addr, &site.host(one), "/followed").unwrap();
        while !String::from_utf8_lossy(&streamed).contains("response:404") {
            let n = follow
                .read(&mut buf)
                .expect("a line for the request while following");
            assert!(n > 0, "the logs stream closed while following");
            streamed.extend_from_slice(&buf[..n]);
        }
        drop(follow);
        // The socket mount is refused before anything runs.
        let row = site.wait_preview(socket, "failed", |r| r["status"] == "failed");
        assert_eq!(row["stage"], "policy", "{row}");
        assert!(
            row["error"].as_str().unwrap().contains("docker.sock"),
            "{row}"
        );
        let created = docker(&[
            "events",
            "--since",
            &started_at,
            "--until",
            &unix_now(),
            "--filter",
            "event=create",
            "--filter",
            &format!(
                "label=com.docker.compose.project={}",
                project_name(&repo, socket)
            ),
            "--format",
            "{{.ID}}",
        ]);
        assert_eq!(
            created, "",
            "a container of the refused compose file was created"
        );
        for (path, why) in [
            (format!("/previews/{repo}/{socket}/logs"), "never started"),
            (format!("/previews/{repo}/99/logs"), "no such preview"),
            (
                "/previews/someone/else/1/logs".to_owned(),
                "not a configured repository",
            ),
        ] {
            let (status, body) = http_get(site.listen, "localhost", &path).unwrap();
            assert_eq!(status, 404, "{why}: {body}");
        }
        let (_, metrics) = http_get(site.listen, "localhost", "/metrics").unwrap();
        assert!(
            metrics.contains("productbuilder_previews{status=\"ready\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("productbuilder_previews{status=\"failed\"} 1"),
            "{metrics}"
        );

        // One comment, saying ready, and a successful deployment with the URL.
        let comment_says = |number: u64, what: &str| {
            wait_for(
                &format!("the comment of #{number} to say {what:?}"),
                Duration::from_secs(60),
                || {
                    let mine: Vec<_> = github
                        .comments(&repo, number)
                        .into_iter()
                        .filter(|c| c.body.starts_with(MARKER))
                        .collect();
                    match mine.as_slice() {
                        [c] if c.body.contains(what) => Ok(c.body.clone()),
                        other => Err(format!("{} marker comments: {other:?}", other.len())),
                    }
                },
            )
        };
        comment_says(one, "Preview ready");
        let failed = comment_says(socket, "Failed at `policy`");
        assert!(failed.contains("docker.sock"), "{failed}");

        // A push redeploys under the same comment.
        let sha_two = github.push(&repo, one, app_files("version two", false, false));
        let row = site.wait_preview(one, "ready at the new head", |r| {
            r["status"] == "ready" && r["head_sha"] == sha_two.as_str()
        });
        assert_eq!(row["head_sha"], sha_two.as_str());
        page(one, "version two");
        // The first head's image went with its containers: one image per preview, not per push.
        let images = docker(&[
            "images",
            "-q",
            "--filter",
            &format!("label=productbuilder.project={}", project_name(&repo, one)),
        ]);
        assert_eq!(images.lines().count(), 1, "images: {images}");
        comment_says(one, &sha_two[..8]);

        // SIGKILL in the middle of a build, then a restart: the preview ends ready, once.
        let slow = github.open_pr(
            &repo,
            app_files("slow build", false, true).into_iter().fold(
                NewPr::new("Slow", "octocat", "feature-slow"),
                |pr, (p, c)| pr.with_file(&p, c),
            ),
        );
        site.wait_preview(slow, "building its images", |r| r["stage"] == "build");
        daemon.kill().unwrap(); // SIGKILL
        daemon.wait().unwrap();
        daemon = site.start_daemon();
        let sha_slow = github.head_sha(&repo, slow);
        site.wait_preview(slow, "ready after the restart", |r| r["status"] == "ready");
        page(slow, "slow build");
        comment_says(slow, "Preview ready");
        let deployments: Vec<_> = github
            .deployments(&repo)
            .into_iter()
            .filter(|d| d.sha == sha_slow)
            .collect();
        assert_eq!(deployments.len(), 1, "{deployments:?}");
        let containers = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!(
                "label=com.docker.compose.project={}",
                project_name(&repo, slow)
            ),
        ]);
        assert_eq!(containers.lines().count(), 1, "containers: {containers}");

        // Closed → deleted, with nothing of them left on the engine.
        github.close_pr(&repo, one, false);
        github.close_pr(&repo, slow, true);
        for number in [one, slow] {
            site.wait_preview(number, "deleted", |r| r["status"] == "deleted");
            assert_eq!(site.leftovers(number), Vec::<String>::new(), "#{number}");
            comment_says(number, "Preview removed");
        }
        assert!(
            !site
                .dir
                .path()
                .join("state/previews")
                .join(project_name(&repo, one))
                .exists(),
            "the workspace is left"
        );
        // Secrets never reach the logs; the start-up noticed the router.
        let log = site.log();
        assert!(!log.contains(TOKEN));
        assert!(log.contains("previews: routed by Traefik"), "{log}");
    }));
    sigterm(&mut daemon);
    runtime.block_on(traefik.stop());
    // Whatever failed, leave the engine clean for the next run: containers, networks, volumes and
    // images of every project this test could have created.
    let engine = runtime
        .block_on(productbuilder_preview::engine::Engine::connect())
        .expect("the engine");
    for number in 1..=3 {
        let project = project_name(&repo, number);
        if let Err(e) = runtime.block_on(engine.remove_project(&project)) {
            eprintln!("cleaning up {project}: {e}");
        }
    }
    let _ = Command::new("docker")
        .args(["network", "rm", &site.network])
        .output();
    if std::env::var_os("PB_E2E_LOG").is_some() {
        eprintln!("--- daemon log ---\n{}", site.log());
    }
    if let Err(panic) = outcome {
        eprintln!("--- daemon log ---\n{}", site.log());
        std::panic::resume_unwind(panic);
    }
}

/// `productbuilder demo`, the README's first command: the example is deployed and served through
/// Traefik, the API answers; a writer's label on the demo's issue runs a build (the scripted
/// agent) that pushes a branch and opens a pull request whose preview serves the agent's change,
/// and the build's result carries that preview; a mention written on the sandbox Slack's page is
/// filed as an issue by the agent with no API key; Ctrl-C leaves nothing behind.
#[test]
fn the_demo_deploys_the_example_and_cleans_up_on_ctrl_c() {
    use std::io::BufRead;
    // Not the default ports, which a developer's own demo may hold.
    let (listen_port, router_port) = (free_port(), free_port());
    let mut demo = Command::new(BIN)
        .arg("demo")
        .args(["--listen", &format!("127.0.0.1:{listen_port}")])
        .args(["--router-port", &router_port.to_string()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut seen = Vec::new();
        let ready = loop {
            match lines.recv_timeout(Duration::from_secs(180)) {
                Ok(line) if line.starts_with("demo: preview ready at ") => break line,
                Ok(line) if line.starts_with("demo: preview failed") => panic!("{line}"),
                Ok(line) => seen.push(line),
                Err(e) => panic!("no ready line ({e}); printed: {seen:?}"),
            }
        };
        assert_eq!(
            ready,
            format!("demo: preview ready at http://hello-pr-1.preview.localhost:{router_port}")
        );
        let traefik = SocketAddr::from(([127, 0, 0, 1], router_port));
        wait_for(
            "the demo's page through Traefik",
            Duration::from_secs(30),
            || match http_get(traefik, "hello-pr-1.preview.localhost", "/") {
                Some((200, body)) if body.contains("Hello from a productbuilder preview") => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        let api = SocketAddr::from(([127, 0, 0, 1], listen_port));

        // The build loop: the labelled issue (#2) is built by the scripted agent, whose pull
        // request (#3) is previewed with its change.
        let token_line = seen
            .iter()
            .find(|l| l.starts_with("demo: the API token (for /builds): "))
            .cloned()
            .unwrap_or_else(|| panic!("no API token printed: {seen:?}"));
        let token = token_line.rsplit(' ').next().unwrap().to_owned();
        let built = loop {
            match lines.recv_timeout(Duration::from_secs(180)) {
                Ok(line) if line.starts_with("demo: build's preview ready at ") => break line,
                Ok(line)
                    if line.starts_with("demo: build's preview failed")
                        || line.starts_with("demo: no build")
                        || line.contains(" failed: ")
                        || line.contains(" cancelled: ") =>
                {
                    panic!("{line}; printed: {seen:?}")
                }
                Ok(line) => seen.push(line),
                Err(e) => panic!("no build's preview ({e}); printed: {seen:?}"),
            }
        };
        assert_eq!(
            built,
            format!(
                "demo: build's preview ready at http://hello-pr-3.preview.localhost:{router_port}"
            )
        );
        assert!(
            seen.iter().any(|l| l.starts_with(
                "demo: build 1 completed: pushed productbuilder/issue-2 and opened pull request #3 "
            )),
            "{seen:?}"
        );
        wait_for(
            "the build's page through Traefik",
            Duration::from_secs(30),
            || match http_get(traefik, "hello-pr-3.preview.localhost", "/") {
                Some((200, body)) if body.contains("Changed by the scripted agent.") => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        // The builds API needs the printed token, and the build's result closes the loop with
        // its preview's address.
        assert_eq!(
            http_get(api, "localhost", "/builds/1").map(|(s, _)| s),
            Some(401)
        );
        wait_for(
            "the build's result to carry its preview",
            Duration::from_secs(30),
            || {
                let (status, body) =
                    http_get_bearer(api, "/builds/1", &token).ok_or("no answer from the daemon")?;
                let build: Value =
                    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
                match (status, &build["result"]["preview_url"]) {
                    (200, Value::String(url))
                        if url.as_str()
                            == format!("http://hello-pr-3.preview.localhost:{router_port}") =>
                    {
                        Ok(())
                    }
                    _ => Err(format!("{status}: {body}")),
                }
            },
        );

        // The agent on the Slack page, with no API key (the sandbox LLM's rule-based model): a
        // mention filed as an issue, answered in its thread with the new issue's number.
        let slack_line = seen
            .iter()
            .find(|l| l.starts_with("demo: Slack sandbox at "))
            .cloned()
            .unwrap_or_else(|| panic!("no Slack sandbox printed: {seen:?}"));
        let slack_url = slack_line
            .trim_start_matches("demo: Slack sandbox at ")
            .split("/ (")
            .next()
            .unwrap()
            .to_owned();
        let slack: SocketAddr = slack_url
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("{slack_url}: {e}"));
        let said = http_post_form(
            slack,
            "/say",
            "channel=hello&user=&text=%40productbuilder+file+a+bug%3A+the+page+has+no+title",
        );
        assert_eq!(said, Some(303), "the page takes the message");
        wait_for(
            "the agent's answer on the Slack page",
            Duration::from_secs(60),
            || match http_get(slack, "localhost", "/") {
                Some((200, body)) if body.contains("Filed #") && body.contains("created") => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );

        let (status, body) = http_get(api, "localhost", "/previews").unwrap();
        assert_eq!(status, 200);
        let rows: Vec<Value> = serde_json::from_str(&body).unwrap();
        let keys: Vec<&str> = rows[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "repo",
            "number",
            "status",
            "head_sha",
            "url",
            "stage",
            "error",
            "updated_at",
        ] {
            assert!(keys.contains(&key), "GET /previews lacks {key}: {body}");
        }
    }));
    let _ = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status();
    let code = demo.wait().unwrap().code();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(code, Some(0));
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=productbuilder.tenant=demo/hello",
    ]);
    assert_eq!(left, "", "the demo's preview is left");
    assert_eq!(
        docker(&["ps", "-aq", "--filter", "name=productbuilder-demo-traefik"]),
        "",
        "the demo's Traefik is left"
    );
    assert_eq!(
        docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            "name=^productbuilder-demo$"
        ]),
        "",
        "the demo's network is left"
    );
}

/// `GET path` on the daemon with `Authorization: Bearer token`; the status and the body.
fn http_get_bearer(addr: SocketAddr, path: &str, token: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Consent per commit, end to end: a fork's pull request carrying the label is ready at A; the
/// fork pushes B, which is never downloaded and waits for approval while the preview stays at A;
/// a `/preview approve` by someone without write access changes nothing, the owner's deploys B.
/// A marker comment planted by the fork's author before the daemon's first report stays untouched,
/// and the daemon edits its own.
#[test]
fn a_fork_s_new_commit_waits_for_a_writer_s_approval() {
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: apt-get install busybox-static (.ci/run does)"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (github, site, traefik) = setup(&runtime, "consent", "e2c");
    let repo = site.repo.clone();

    // Labelled at opening (the sandbox records the owner as the one who labelled).
    let fork = github.open_pr(
        &repo,
        app_files("commit A", false, false).into_iter().fold(
            NewPr::new("From a fork", "mallory", "feature-fork")
                .from_fork()
                .with_label("preview"),
            |pr, (p, c)| pr.with_file(&p, c),
        ),
    );
    let sha_a = github.head_sha(&repo, fork);
    let planted_body = format!("{MARKER}\n### Preview ready\n\nhttp://evil.example");
    let planted = github.add_comment(&repo, fork, "mallory", &planted_body);

    let mut daemon = site.start_daemon();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let page = |expect: &str| {
            wait_for(
                &format!("Traefik to serve {expect:?}"),
                Duration::from_secs(30),
                || match http_get(traefik.addr, &site.host(fork), "/") {
                    Some((200, body)) if body.contains(expect) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            )
        };
        let ours = |what: &str| {
            wait_for(
                &format!("the daemon's comment to say {what:?}"),
                Duration::from_secs(60),
                || {
                    let mine: Vec<_> = github
                        .comments(&repo, fork)
                        .into_iter()
                        .filter(|c| c.author == "productbuilder-bot" && c.body.starts_with(MARKER))
                        .collect();
                    match mine.as_slice() {
                        [c] if c.body.contains(what) => Ok(c.body.clone()),
                        other => Err(format!("{} comments of the daemon: {other:?}", other.len())),
                    }
                },
            )
        };

        let row = site.wait_preview(fork, "ready at A", |r| r["status"] == "ready");
        assert_eq!(row["head_sha"], sha_a.as_str());
        assert_eq!(row["approved_sha"], sha_a.as_str(), "{row}");
        assert_eq!(row["approved_by"], "acme", "{row}");
        assert_eq!(row["approved_how"], "label", "{row}");
        assert_eq!(row["waiting_sha"], Value::Null, "{row}");
        page("commit A");
        ours("Preview ready");

        // B: never downloaded or built; the preview stays at A; the comment names B.
        let sha_b = github.push(&repo, fork, app_files("commit B", false, false));
        let said = ours(&format!("Commit `{}` waits for approval", &sha_b[..8]));
        assert!(said.contains("`/preview approve`"), "{said}");
        assert!(said.contains("write access"), "{said}");
        let row = site.wait_preview(fork, "naming B as waiting", |r| {
            r["waiting_sha"] == sha_b.as_str()
        });
        assert_eq!(
            (row["status"].as_str(), row["head_sha"].as_str()),
            (Some("ready"), Some(sha_a.as_str())),
            "{row}"
        );
        page("commit A");
        let (_, dashboard) = http_get(site.listen, "localhost", "/").unwrap();
        assert!(
            dashboard.contains(&format!("<code>{}</code> waits for approval", &sha_b[..8])),
            "{dashboard}"
        );

        // The fork's author cannot approve their own commit.
        github.add_comment(&repo, fork, "mallory", "/preview approve");
        wait_for(
            "the daemon to ignore mallory's approval",
            Duration::from_secs(60),
            || {
                let log = site.log();
                if log.contains("an approval by someone without write access was ignored") {
                    Ok(())
                } else {
                    Err("no such log line yet".to_owned())
                }
            },
        );
        let row = site.wait_preview(fork, "still at A", |r| r["status"] == "ready");
        assert_eq!(row["head_sha"], sha_a.as_str(), "{row}");
        // Not downloaded, so never built either.
        assert_eq!(
            github.tarball_requests(&repo, &sha_b),
            0,
            "B was downloaded"
        );

        // The owner approves: ready at B.
        github.add_comment(&repo, fork, "acme", "/preview approve");
        let row = site.wait_preview(fork, "ready at B", |r| {
            r["status"] == "ready" && r["head_sha"] == sha_b.as_str()
        });
        assert_eq!(row["approved_sha"], sha_b.as_str(), "{row}");
        assert_eq!(row["approved_by"], "acme", "{row}");
        assert_eq!(row["approved_how"], "comment", "{row}");
        assert_eq!(row["waiting_sha"], Value::Null, "{row}");
        assert!(github.tarball_requests(&repo, &sha_b) >= 1);
        page("commit B");
        let (_, dashboard) = http_get(site.listen, "localhost", "/").unwrap();
        assert!(
            dashboard.contains(&format!("<code>{}</code> by acme (comment, ", &sha_b[..8])),
            "{dashboard}"
        );
        // The comment says B is ready now (the waiting line named B before); it is sent after the
        // row moves, so it is awaited.
        let said = ours("Preview ready");
        assert!(
            said.contains(&format!("Commit `{}`\n", &sha_b[..8])),
            "{said}"
        );
        assert!(!said.contains("waits for approval"), "{said}");

        // The planted marker is untouched; the daemon wrote and edited one comment of its own.
        let all = github.comments(&repo, fork);
        let p = all.iter().find(|c| c.id == planted).unwrap();
        assert_eq!(p.body, planted_body);
        assert_eq!(p.updated_at, p.created_at, "the planted comment was edited");
        let edits = github
            .requests()
            .into_iter()
            .filter(|r| {
                r.method != productbuilder_github_sandbox::Method::GET
                    && r.path_and_query
                        .contains(&format!("/issues/comments/{planted}"))
            })
            .count();
        assert_eq!(edits, 0, "a write to the planted comment");
        assert!(!site.log().contains(TOKEN));
    }));
    sigterm(&mut daemon);
    runtime.block_on(traefik.stop());
    let engine = runtime
        .block_on(productbuilder_preview::engine::Engine::connect())
        .expect("the engine");
    let project = project_name(&repo, fork);
    if let Err(e) = runtime.block_on(engine.remove_project(&project)) {
        eprintln!("cleaning up {project}: {e}");
    }
    let _ = Command::new("docker")
        .args(["network", "rm", &site.network])
        .output();
    if let Err(panic) = outcome {
        eprintln!("--- daemon log ---\n{}", site.log());
        std::panic::resume_unwind(panic);
    }
}

/// A form POST (HTTP/1.0); the status.
fn http_post_form(addr: SocketAddr, path: &str, form: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}
