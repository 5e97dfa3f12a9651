//! The real binary, driven as an operator would: commands, exit codes, environment overrides, the
//! HTTP endpoints and signals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_productbuilder");
const TOKEN: &str = "ghp_test_token_never_printed";

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new(extra_main: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tenants")).unwrap();
        std::fs::write(
            dir.path().join("productbuilder.toml"),
            format!(
                "state_dir = \"state\"\n[log]\nformat = \"json\"\n{extra_main}\n[github]\ntoken = \"{TOKEN}\"\n"
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
        Site { dir }
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
    let first = stdout.lines().next().unwrap();
    let columns: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(
        columns,
        ["preflight:database:global", "preflight", "stage", "0"]
    );
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

/// A free loopback port. Another process could take it before the daemon binds it; the test then
/// fails loudly on the bind error, it does not pass by accident.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// The daemon with its log lines streamed to the test.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    port: u16,
}

impl Daemon {
    fn start(site: &Site) -> Daemon {
        let port = free_port();
        let mut child = site
            .command(&["run"])
            .env("PRODUCTBUILDER_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon { child, lines, port }
    }

    /// Waits for a log line containing `needle`; returns every line read so far on failure.
    fn wait_for(&self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no log line with {needle:?}; got:\n{}", seen.join("\n")),
            }
        }
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
