//! The real binary, driven as an operator would: commands, exit codes, environment overrides, the
//! HTTP endpoints and signals.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use productbuilder_github_sandbox::{Permission, Sandbox};

const BIN: &str = env!("CARGO_BIN_EXE_productbuilder");

mod support;
use support::{Daemon, free_port};
const TOKEN: &str = "ghp_test_token_never_printed";

/// A configuration directory, and the sandbox GitHub it points at.
struct Site {
    dir: tempfile::TempDir,
    github: Sandbox,
    // Hosts the sandbox's server; dropped last.
    _runtime: tokio::runtime::Runtime,
}

const REPOS: [&str; 3] = ["acme/shop", "acme/blog", "Codertocat/Hello-World"];

impl Site {
    fn new(extra_main: &str) -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let github = runtime.block_on(Sandbox::start()).unwrap();
        github.add_token(TOKEN, "productbuilder-bot");
        for repo in REPOS {
            let (owner, name) = repo.split_once('/').unwrap();
            github.create_repo(owner, name);
            github.grant("productbuilder-bot", repo, Permission::Push);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tenants")).unwrap();
        std::fs::write(
            dir.path().join("productbuilder.toml"),
            format!(
                "state_dir = \"state\"\n[log]\nformat = \"json\"\n{extra_main}\n[github]\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\n",
                github.url()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tenants/shop.toml"),
            "repo = \"acme/shop\"\npoll_interval = \"15s\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tenants/blog.toml"),
            "repo = \"acme/blog\"\n",
        )
        .unwrap();
        Site {
            dir,
            github,
            _runtime: runtime,
        }
    }

    /// Adds the repository the fixture webhook payloads are about.
    fn with_hello_world(self, poll_interval: &str) -> Self {
        std::fs::write(
            self.dir.path().join("tenants/hello.toml"),
            format!("repo = \"Codertocat/Hello-World\"\npoll_interval = \"{poll_interval}\"\n"),
        )
        .unwrap();
        self
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("productbuilder.toml")
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("state/productbuilder.db")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("PRODUCTBUILDER_CONFIG", self.config())
            .env_remove("RUST_LOG");
        cmd
    }

    fn output(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        cmd.output().unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn plan_prints_units_without_touching_the_state_directory() {
    let site = Site::new("");
    let out = site.output(&["plan"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let plan: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let want: Vec<Vec<&str>> = [
        "preflight:database:global preflight stage 0",
        "preflight:repository:acme/blog preflight stage 1",
        "preflight:repository:acme/shop preflight stage 1",
        "preflight:previews:global preflight stage 2",
        "preflight:previews:acme/blog preflight stage 2",
        "preflight:previews:acme/shop preflight stage 2",
        "worker:pulls:acme/blog worker every 30s",
        "worker:pulls:acme/shop worker every 15s",
        "worker:issues:acme/blog worker every 30s",
        "worker:issues:acme/shop worker every 15s",
        "worker:comments:acme/blog worker every 30s",
        "worker:comments:acme/shop worker every 15s",
        "worker:http-cache:global worker every 1h",
        "worker:previews:acme/blog worker every 30s",
        "worker:previews:acme/shop worker every 15s",
    ]
    .iter()
    .map(|l| l.split_whitespace().collect())
    .collect();
    assert_eq!(plan, want);
    assert!(site.github.requests().is_empty(), "plan touches no network");
    assert!(!site.dir.path().join("state").exists());
}

#[test]
fn plan_with_a_bad_config_exits_2_naming_file_and_key() {
    let site = Site::new("");
    std::fs::write(
        site.dir.path().join("tenants/bad.toml"),
        "repo = \"acme/x\"\npoll_interval = \"often\"\n",
    )
    .unwrap();
    let out = site.output(&["plan"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("tenants/bad.toml: key `poll_interval`: \"often\" is not a duration"),
        "{stderr}"
    );
}

#[test]
fn tenants_whose_preview_hosts_collide_are_refused_naming_both() {
    // The default url_template has no {owner}: acme/shop and globex/shop would share a host.
    let site = Site::new("");
    site.github.create_repo("globex", "shop");
    std::fs::write(
        site.dir.path().join("tenants/globex-shop.toml"),
        "repo = \"globex/shop\"\n",
    )
    .unwrap();
    for command in [&["check"][..], &["plan"], &["run"]] {
        let out = site.output(command, &[]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command:?}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        for needle in [
            "acme/shop (",
            "tenants/shop.toml",
            "globex/shop (",
            "tenants/globex-shop.toml",
            "shop-pr-1.preview.localhost",
            "put {owner} in preview.url_template",
        ] {
            assert!(stderr.contains(needle), "{command:?}: {needle} in {stderr}");
        }
    }
    assert!(
        !site.dir.path().join("state").exists(),
        "refused before any state"
    );

    // With {owner} in the host they are apart.
    std::fs::write(
        site.config(),
        std::fs::read_to_string(site.config()).unwrap().replace(
            "[github]",
            "[preview]\nurl_template = \"http://{repo}-{owner}-pr-{number}.{domain}\"\n[github]",
        ),
    )
    .unwrap();
    let out = site.output(&["check"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let site = Site::new("");
    assert_eq!(site.output(&["frobnicate"], &[]).status.code(), Some(2));
    assert_eq!(site.output(&["--help"], &[]).status.code(), Some(0));
    let out = Command::new(BIN)
        .arg("plan")
        .env_remove("PRODUCTBUILDER_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--config"));
}

#[test]
fn environment_overrides_win_and_their_errors_name_the_variable() {
    let site = Site::new("");
    let out = site.output(
        &["check"],
        &[("PRODUCTBUILDER_GITHUB__POLL_INTERVAL", "45s")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("acme/blog (every 45s"), "{stdout}");
    assert!(stdout.contains("acme/shop (every 15s"), "{stdout}");

    let out = site.output(
        &["check"],
        &[("PRODUCTBUILDER_GITHUB__POLL_INTERVAL", "soonish")],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "environment variable PRODUCTBUILDER_GITHUB__POLL_INTERVAL: key `github.poll_interval`: \"soonish\" is not a duration"
        ),
        "{stderr}"
    );

    // A token made of digits stays a string.
    let out = site.output(&["check"], &[("PRODUCTBUILDER_GITHUB__TOKEN", "1234567")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("1234567"));
}

/// The documented systemd unit sets the token file by variable; the main file here sets `token`.
#[test]
fn a_secret_set_in_the_file_and_by_variable_names_the_variable_once() {
    let site = Site::new("");
    let token_file = site.dir.path().join("github-token");
    std::fs::write(&token_file, "ghp_from_the_file\n").unwrap();
    let out = site.output(
        &["check"],
        &[(
            "PRODUCTBUILDER_GITHUB__TOKEN_FILE",
            token_file.to_str().unwrap(),
        )],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let want = format!(
        "environment variable PRODUCTBUILDER_GITHUB__TOKEN_FILE: key `github.token_file`: set either `github.token` or `github.token_file`, not both; `github.token` is also set in {}: remove one of the two",
        site.config().display()
    );
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
    assert!(!stderr.contains("missing;"), "{stderr}");
    assert!(
        !stderr.contains(TOKEN) && !stderr.contains("ghp_from_the_file"),
        "{stderr}"
    );

    // An empty variable is not a token.
    for empty in ["", " "] {
        let out = site.output(&["check"], &[("PRODUCTBUILDER_GITHUB__TOKEN", empty)]);
        assert_eq!(out.status.code(), Some(2), "{empty:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(
                "environment variable PRODUCTBUILDER_GITHUB__TOKEN: key `github.token`: is empty"
            ),
            "{empty:?}: {stderr}"
        );
        assert!(!stderr.contains("missing;"), "{stderr}");
    }
}

#[test]
fn check_never_prints_secrets() {
    let site = Site::new("[http]\napi_token = \"api-secret-value\"\n");
    for args in [&["check"][..], &["check", "--online"][..]] {
        let out = site.output(args, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(
            !all.contains(TOKEN) && !all.contains("api-secret-value"),
            "{all}"
        );
        assert!(all.contains("token (set)"), "{all}");
        if args.len() == 2 {
            assert!(all.contains("√ preflight:repository:acme/shop"), "{all}");
            assert!(all.contains("√ Docker engine "), "{all}");
            assert!(all.contains("√ Compose: `"), "{all}");
        }
    }
}

#[test]
fn migrate_applies_once_then_reports_up_to_date() {
    let site = Site::new("");
    let first = site.output(&["migrate"], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert!(text(&first.stdout).contains("applied 0001_kernel"));
    assert!(site.db().exists());
    let second = site.output(&["migrate"], &[]);
    assert_eq!(second.status.code(), Some(0));
    assert!(text(&second.stdout).contains("is up to date"));
    let online = site.output(&["check", "--online"], &[]);
    assert!(
        text(&online.stdout).contains("up to date"),
        "{}",
        text(&online.stdout)
    );
}

#[test]
fn migrate_on_a_database_from_the_future_exits_1() {
    let site = Site::new("");
    future_database(&site.db());
    let out = site.output(&["migrate"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("newer than this binary"));
}

fn future_database(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT '');
         INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'future', 'x');",
    )
    .unwrap();
}

/// A minimal HTTP/1.0 GET: status code and body.
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

impl Daemon {
    fn start(site: &Site) -> Daemon {
        let port = free_port();
        let mut command = site.command(&["run"]);
        command.env("PRODUCTBUILDER_HTTP__LISTEN", format!("127.0.0.1:{port}"));
        Daemon::spawn(&mut command, port)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(mut self) -> (Option<i32>, Vec<String>) {
        let status = self.child.wait().unwrap();
        (status.code(), self.lines.iter().collect())
    }
}

#[test]
fn run_serves_health_readiness_and_metrics_then_stops_cleanly_on_sigterm() {
    let site = Site::new("");
    let daemon = Daemon::start(&site);
    daemon.wait_for("preflights passed");
    let (status, body) = get(daemon.port, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(daemon.port, "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["degraded"], serde_json::json!([]));
    let (status, metrics) = get(daemon.port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("productbuilder_unit_runs_total{unit=\"preflight:database:global\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("productbuilder_preflights_passed 1"));
    assert!(
        metrics.contains("productbuilder_preview_jobs_ended_total{outcome=\"panicked\"} 0"),
        "{metrics}"
    );
    daemon.signal("TERM");
    let (code, lines) = daemon.wait();
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    // Logs are JSON, one object per line, and never carry the token.
    for line in &lines {
        let _: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(!line.contains(TOKEN));
    }
}

#[test]
fn readyz_is_503_until_preflights_pass() {
    let site = Site::new("");
    // Hold the database's write lock so that the migration preflight has to wait and retry.
    std::fs::create_dir_all(site.db().parent().unwrap()).unwrap();
    let blocker = rusqlite::Connection::open(site.db()).unwrap();
    blocker
        .execute_batch("PRAGMA journal_mode=WAL; BEGIN EXCLUSIVE;")
        .unwrap();
    let daemon = Daemon::start(&site);
    daemon.wait_for("productbuilder started");
    let (status, body) = get(daemon.port, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["preflights_passed"], false);
    assert_eq!(get(daemon.port, "/healthz").unwrap().0, 200);
    // The busy database is retried, logged with unit, attempt, delay and cause.
    let retry = daemon.wait_for("transient failure; retrying");
    assert!(retry.contains("preflight:database:global"), "{retry}");
    assert!(
        retry.contains("\"attempt\":1") && retry.contains("\"delay\""),
        "{retry}"
    );
    blocker.execute_batch("COMMIT;").unwrap();
    drop(blocker);
    daemon.wait_for("preflights passed");
    assert_eq!(get(daemon.port, "/readyz").unwrap().0, 200);
    daemon.signal("INT");
    assert_eq!(daemon.wait().0, Some(0));
}

#[test]
fn a_failed_preflight_exits_1_with_one_line_naming_the_unit() {
    let site = Site::new("");
    future_database(&site.db());
    let out = site.output(&["run"], &[("PRODUCTBUILDER_HTTP__LISTEN", "127.0.0.1:0")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with(
            "productbuilder: preflight failed: preflight:database:global failed after 1 attempt: database "
        ),
        "{stderr}"
    );
    assert!(last.contains("schema version 999 is newer"), "{last}");
}

/// POSTs a webhook delivery; returns the status code.
fn deliver(port: u16, event: &str, delivery: &str, body: &[u8], signature: Option<String>) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "POST /webhook HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nX-GitHub-Event: {event}\r\nX-GitHub-Delivery: {delivery}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(sig) = signature {
        head.push_str(&format!("X-Hub-Signature-256: {sig}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading a large body; a broken pipe is then expected.
    let _ = stream.write_all(body);
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/github-webhooks")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Requests the sandbox saw for one repository's pull list since `from`.
fn pull_polls_since(site: &Site, repo: &str, from: Instant) -> usize {
    let prefix = format!("/repos/{repo}/pulls?");
    site.github
        .requests()
        .iter()
        .filter(|r| r.at >= from && r.path_and_query.starts_with(&prefix))
        .count()
}

#[test]
fn the_webhook_checks_signatures_ignores_duplicates_and_nudges_within_a_second() {
    let secret = "It's a Secret to Everybody";
    let site = Site::new("").with_hello_world("1h");
    std::fs::write(
        site.config(),
        std::fs::read_to_string(site.config()).unwrap().replace(
            "[github]\n",
            &format!("[github]\nwebhook_secret = {secret:?}\n"),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&site);
    daemon.wait_for("preflights passed");

    let body = fixture("pull_request.synchronize.json");
    // A wrong signature wakes nothing.
    let before = Instant::now();
    assert_eq!(
        deliver(
            daemon.port,
            "pull_request",
            "d-0",
            &body,
            Some(sign("wrong", &body))
        ),
        401
    );
    assert_eq!(
        deliver(daemon.port, "pull_request", "d-0", &body, None),
        401
    );
    let ping = fixture("ping.json");
    assert_eq!(
        deliver(
            daemon.port,
            "ping",
            "d-ping",
            &ping,
            Some(sign(secret, &ping))
        ),
        200
    );

    // A good one: the pulls poller of Codertocat/Hello-World runs at once, not in an hour.
    let sent = Instant::now();
    assert_eq!(
        deliver(
            daemon.port,
            "pull_request",
            "d-1",
            &body,
            Some(sign(secret, &body))
        ),
        202
    );
    let deadline = sent + Duration::from_secs(5);
    let polled_at = loop {
        let seen = site.github.requests().into_iter().find(|r| {
            r.at >= sent
                && r.path_and_query
                    .starts_with("/repos/Codertocat/Hello-World/pulls?")
        });
        if let Some(r) = seen {
            break r.at;
        }
        assert!(Instant::now() < deadline, "no poll after the webhook");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        polled_at - sent < Duration::from_secs(1),
        "{:?}",
        polled_at - sent
    );
    assert!(
        pull_polls_since(&site, "Codertocat/Hello-World", before) >= 1,
        "the bad deliveries woke nothing before the good one"
    );

    // The same delivery again is recognised and wakes nothing more.
    let settled = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let polls_before = pull_polls_since(&site, "Codertocat/Hello-World", settled);
    assert_eq!(
        deliver(
            daemon.port,
            "pull_request",
            "d-1",
            &body,
            Some(sign(secret, &body))
        ),
        200
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        pull_polls_since(&site, "Codertocat/Hello-World", settled),
        polls_before
    );

    // Every real payload in the fixtures is accepted.
    for (i, name) in [
        "issue_comment.created.json",
        "issues.opened.json",
        "push.json",
        "pull_request.closed.json",
    ]
    .iter()
    .enumerate()
    {
        let body = fixture(name);
        let event = name.split('.').next().unwrap();
        assert_eq!(
            deliver(
                daemon.port,
                event,
                &format!("f-{i}"),
                &body,
                Some(sign(secret, &body))
            ),
            202,
            "{name}"
        );
    }

    // Over GitHub's 25 MB cap: refused before anything else.
    let huge = vec![b' '; 26 * 1024 * 1024];
    assert_eq!(
        deliver(
            daemon.port,
            "push",
            "d-huge",
            &huge,
            Some(sign(secret, &huge))
        ),
        413
    );

    daemon.signal("TERM");
    let (code, lines) = daemon.wait();
    assert_eq!(code, Some(0));
    assert!(lines.iter().all(|l| !l.contains(secret)));
}

#[test]
fn without_a_secret_the_webhook_is_404() {
    let site = Site::new("");
    let daemon = Daemon::start(&site);
    daemon.wait_for("productbuilder started");
    let body = fixture("ping.json");
    assert_eq!(
        deliver(daemon.port, "ping", "x", &body, Some(sign("s", &body))),
        404
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait().0, Some(0));
}

#[test]
fn the_tenants_api_shows_polls_pulls_and_the_quota() {
    let site = Site::new("");
    let number = site.github.open_pr(
        "acme/shop",
        productbuilder_github_sandbox::NewPr::new("Add <search>", "alice", "search")
            .with_file("index.html", "<h1>search</h1>")
            .with_label("preview"),
    );
    let sha = site.github.head_sha("acme/shop", number);
    let daemon = Daemon::start(&site);
    daemon.wait_for("preflights passed");
    // The first poll of acme/shop happens within its 15 s interval (jittered); wait for its log.
    daemon.wait_for("pull requests changed");
    let (status, body) = get(daemon.port, "/api/tenants/acme/shop/pulls").unwrap();
    assert_eq!(status, 200, "{body}");
    let pulls: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pulls[0]["number"], number);
    assert_eq!(pulls[0]["head_sha"], sha.as_str());
    assert_eq!(pulls[0]["author"], "alice");
    assert_eq!(pulls[0]["fork"], false);
    assert_eq!(pulls[0]["draft"], false);
    assert_eq!(pulls[0]["labels"], serde_json::json!(["preview"]));
    assert!(
        pulls[0]["seen_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );

    let (status, body) = get(daemon.port, "/api/tenants").unwrap();
    assert_eq!(status, 200);
    let tenants: serde_json::Value = serde_json::from_str(&body).unwrap();
    let shop = tenants
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["repo"] == "acme/shop")
        .unwrap();
    assert!(
        shop["last_poll_at"].is_string() && shop["last_change_at"].is_string(),
        "{shop}"
    );
    assert_eq!(shop["degraded"], serde_json::json!([]));
    assert!(
        shop["rate"]["remaining"]
            .as_u64()
            .is_some_and(|r| r > 0 && r < 5000),
        "{shop}"
    );
    assert_eq!(
        get(daemon.port, "/api/tenants/nobody/here/pulls")
            .unwrap()
            .0,
        404
    );

    let (_, metrics) = get(daemon.port, "/metrics").unwrap();
    assert!(
        metrics.contains("productbuilder_github_rate_remaining{identity=\"token:"),
        "{metrics}"
    );

    // The dashboard shows the same, escaped.
    let (status, page) = get(daemon.port, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("<meta http-equiv=\"refresh\""), "{page}");
    assert!(page.contains("<td>acme/shop</td>"), "{page}");
    assert!(page.contains("Add &lt;search&gt;"), "{page}");
    assert!(!page.contains("Add <search>"), "{page}");
    daemon.signal("TERM");
    assert_eq!(daemon.wait().0, Some(0));
}

#[test]
fn preview_validate_reports_each_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let preview = dir.path().join(".productbuilding/preview");
    std::fs::create_dir_all(&preview).unwrap();
    std::fs::write(
        preview.join("config.yml"),
        "version: 1\ncompose:\n  file: .productbuilding/preview/docker-compose.yml\n  service: app\nruntime:\n  internal_port: 8080\n  healthcheck_path: /\n  startup_timeout_seconds: 30\n",
    )
    .unwrap();
    std::fs::write(
        preview.join("docker-compose.yml"),
        "services:\n  app:\n    build: ../..\n",
    )
    .unwrap();
    let validate = |dir: &Path| {
        Command::new(BIN)
            .args(["preview", "validate"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let ok = validate(dir.path());
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stdout));
    assert!(
        text(&ok.stdout).contains("valid: service `app` on port 8080, health check / within 30s")
    );

    // A privileged service hidden in an included file, behind interpolation, and the socket.
    std::fs::write(
        preview.join("docker-compose.yml"),
        "include: [other.yml]\nservices:\n  app:\n    build: ../..\n    privileged: ${PRIV:-true}\n",
    )
    .unwrap();
    std::fs::write(
        preview.join("other.yml"),
        "services:\n  worker:\n    image: busybox\n    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n",
    )
    .unwrap();
    let bad = validate(dir.path());
    assert_eq!(bad.status.code(), Some(2));
    let out = text(&bad.stdout);
    for want in [
        "refused: .productbuilding/preview/docker-compose.yml: service `app`: key `privileged` is true (rule `privileged`; a tenant can waive it with `[preview] allow = [\"privileged\"]`)",
        "mentions the Docker socket (\"/var/run/docker.sock\" (outside the checkout))",
        "refused: .productbuilding/preview/other.yml: service `worker`: key `volumes` mounts \"/var/run/docker.sock\" (outside the checkout) (rule `host_path`",
    ] {
        assert!(out.contains(want), "missing {want}\nin {out}");
    }
    assert!(
        text(&bad.stderr).contains("3 problem(s)"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn run_exits_1_naming_the_docker_socket_when_the_engine_cannot_be_reached() {
    let site = Site::new("");
    let missing = site.dir.path().join("no-docker.sock");
    let out = site.output(
        &["run"],
        &[
            ("PRODUCTBUILDER_HTTP__LISTEN", "127.0.0.1:0"),
            ("DOCKER_HOST", &format!("unix://{}", missing.display())),
        ],
    );
    // Every tenant has previews: none can start without the engine, so after the preflight's
    // retries (the engine may still be starting) the daemon says so and exits.
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with(
            "productbuilder: no tenant can start; the preflight of each failed: acme/"
        ),
        "{stderr}"
    );
    assert!(last.contains("preflight:previews:acme/"), "{last}");
    assert!(last.contains(&missing.display().to_string()), "{last}");
    // Retried before giving up (five retries after the first attempt, per tenant).
    let retries = stderr.matches("transient failure; retrying").count();
    assert!(retries >= 5, "{retries} retries: {stderr}");
}

#[test]
fn a_repository_that_does_not_exist_degrades_its_tenant_and_the_others_are_polled() {
    let site = Site::new("");
    // Previews off: this is about GitHub, not the engine.
    for (file, repo) in [
        ("shop", "acme/shop"),
        ("blog", "acme/blog"),
        ("gone", "acme/gone"),
    ] {
        std::fs::write(
            site.dir.path().join(format!("tenants/{file}.toml")),
            format!("repo = \"{repo}\"\npoll_interval = \"1s\"\npreviews = false\n"),
        )
        .unwrap();
    }
    let daemon = Daemon::start(&site);
    let degraded = daemon.wait_for("tenant degraded");
    assert!(degraded.contains("acme/gone"), "{degraded}");
    daemon.wait_for("preflights passed");
    let (status, body) = get(daemon.port, "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    let degraded = &ready["degraded_tenants"];
    assert_eq!(degraded.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(degraded[0]["tenant"], "acme/gone");
    assert_eq!(degraded[0]["unit"], "preflight:repository:acme/gone");
    assert_eq!(degraded[0]["kind"], "not_found");
    assert_eq!(degraded[0]["permanent"], true);
    assert!(
        degraded[0]["reason"]
            .as_str()
            .unwrap()
            .contains("was not found"),
        "{body}"
    );
    // The other two are polled, and keep being polled.
    let from = Instant::now();
    let deadline = from + Duration::from_secs(30);
    while pull_polls_since(&site, "acme/shop", from) < 2
        || pull_polls_since(&site, "acme/blog", from) < 2
    {
        assert!(
            Instant::now() < deadline,
            "the healthy tenants were not polled"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pull_polls_since(&site, "acme/gone", from), 0);
    let (_, metrics) = get(daemon.port, "/metrics").unwrap();
    for line in [
        "productbuilder_tenant_degraded{tenant=\"acme/gone\"} 1",
        "productbuilder_tenant_degraded{tenant=\"acme/shop\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
    let (_, page) = get(daemon.port, "/").unwrap();
    assert!(
        page.contains("Repositories waiting")
            && page.contains("<code>acme/gone</code>: repository acme/gone"),
        "{page}"
    );
    daemon.signal("TERM");
    let (code, lines) = daemon.wait();
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
}

#[test]
fn run_exits_1_when_no_repository_exists() {
    let site = Site::new("");
    for (file, repo) in [("shop", "acme/gone"), ("blog", "acme/left")] {
        std::fs::write(
            site.dir.path().join(format!("tenants/{file}.toml")),
            format!("repo = \"{repo}\"\npreviews = false\n"),
        )
        .unwrap();
    }
    let out = site.output(&["run"], &[("PRODUCTBUILDER_HTTP__LISTEN", "127.0.0.1:0")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with(
            "productbuilder: no tenant can start; the preflight of each failed: acme/gone: preflight:repository:acme/gone: "
        ),
        "{stderr}"
    );
    assert!(
        last.contains("acme/left: preflight:repository:acme/left: "),
        "{last}"
    );
}

#[test]
fn check_online_says_whether_previews_will_be_routed() {
    let network = format!("pb-check-{}", std::process::id());
    let site = Site::new(&format!("[preview]\nnetwork = \"{network}\"\n"));
    let online = || {
        let out = site.output(&["check", "--online"], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert!(
        online().contains(&format!("! network {network} does not exist yet")),
        "{}",
        online()
    );
    let docker = |args: &[&str]| Command::new("docker").args(args).output().unwrap();
    assert!(docker(&["network", "create", &network]).status.success());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let out = online();
        assert!(
            out.contains(&format!("! no Traefik container on network {network}")),
            "{out}"
        );
        let name = format!("{network}-traefik");
        let traefik = runtime
            .block_on(productbuilder_preview::router::Traefik::start(
                &name, &network, 0,
            ))
            .expect("Traefik starts (scripts/traefik-image builds its image)");
        let out = online();
        runtime.block_on(traefik.stop());
        assert!(
            out.contains(&format!("√ network {network} with Traefik: {name}")),
            "{out}"
        );
    }));
    docker(&["network", "rm", &network]);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn check_names_preview_variables_but_never_their_values() {
    let site = Site::new("");
    std::fs::write(
        site.dir.path().join("tenants/shop.toml"),
        "repo = \"acme/shop\"\n[preview.env.web]\nDATABASE_URL = \"postgres://plain-value\"\nAPI_KEY_file = \"api-key\"\n",
    )
    .unwrap();
    std::fs::write(site.dir.path().join("tenants/api-key"), "sk-secret-value\n").unwrap();
    let out = site.output(&["check"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains(
            "preview env: web.API_KEY (secret), web.DATABASE_URL; secrets withheld from forks"
        ),
        "{all}"
    );
    assert!(
        !all.contains("plain-value") && !all.contains("sk-secret-value"),
        "{all}"
    );

    // The host-wide registry credentials directory, from the environment, must exist.
    let out = site.output(
        &["check"],
        &[(
            "PRODUCTBUILDER_PREVIEW__DOCKER_CONFIG",
            "/nonexistent/docker",
        )],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "environment variable PRODUCTBUILDER_PREVIEW__DOCKER_CONFIG: key `preview.docker_config`: cannot read the directory /nonexistent/docker"
        ),
        "{stderr}"
    );
}
