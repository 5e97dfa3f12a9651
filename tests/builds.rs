//! Builds end to end: the real binary, the sandbox GitHub backed by real git (clone, push and
//! pull requests over HTTP), the real Docker engine and Compose for the preview, and the scripted
//! agent of `examples/scripted-agent` as the coding agent.
//!
//! - A writer labels an issue (and comments `/productbuilder implement` in the same breath): one
//!   build, a branch with the agent's change, one pull request that closes the issue, its preview
//!   ready, the build `completed` with `commit_sha`, `files_changed`, `pr_url` and, once the
//!   preview is up, `preview_url` in its result and its comment.
//! - A build started over the API with a `callback_url`: the callback arrives signed.
//! - The daemon killed with SIGKILL while a build's agent works: after a restart that build ends
//!   once, with one branch, one pull request and one build comment.
//! - The token is in no file under the state directory and in no log line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use productbuilder_github_sandbox::{Permission, Sandbox};
use serde_json::Value;

mod support;
use support::{app_files, free_port, http_get, remove_previews_of, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_productbuilder");
const TOKEN: &str = "ghp_builds_e2e_token_never_printed";
const API_TOKEN: &str = "api-token-for-the-builds-test";
const CALLBACK_SECRET: &str = "callback-secret-for-the-test";
const BRANCH_PREFIX: &str = "productbuilder/";

/// One HTTP/1.0 request to the daemon with the api token; status and body.
fn api(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{e}: {text}"))
}

struct Site {
    runtime: tokio::runtime::Runtime,
    github: Sandbox,
    repo: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    listen: SocketAddr,
    network: String,
}

impl Site {
    /// The scripted agent works `agent_seconds` (one progress line a second), killed after
    /// `max_duration`.
    fn new(name: &str, agent_seconds: u32, max_duration: &str) -> Site {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let github = runtime.block_on(Sandbox::start()).unwrap();
        let unique = format!("{name}{}", std::process::id());
        let repo = format!("acme/{unique}");
        github.add_token(TOKEN, "productbuilder-bot");
        let files = app_files("v1", false, false);
        let files: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_slice()))
            .collect();
        github.create_git_repo("acme", &unique, &files);
        github.grant("productbuilder-bot", &repo, Permission::Push);
        github.grant("alice", &repo, Permission::Push);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tenants")).unwrap();
        let agent =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/scripted-agent/agent.sh");
        let network = format!("pb-{unique}");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.path().join("productbuilder.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"state\"\n\
                 [http]\nlisten = \"{listen}\"\napi_token = \"{API_TOKEN}\"\n\
                 [log]\nformat = \"json\"\nlevel = \"info\"\n\
                 [github]\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\npoll_interval = \"1s\"\n\
                 [preview]\ndomain = \"{unique}.localhost\"\nurl_template = \"http://{{repo}}-pr-{{number}}.{{domain}}\"\nnetwork = \"{network}\"\n\
                 [builds]\nagent_command = [\"{}\", \"{{prompt}}\", \"{agent_seconds}\"]\nagent_format = \"claude-stream-json\"\nmax_duration = \"{max_duration}\"\ncallback_secret = \"{CALLBACK_SECRET}\"\n",
                github.url(),
                agent.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tenants/app.toml"),
            format!("repo = \"{repo}\"\n[preview]\ncpus = 0.5\nmemory = \"64m\"\n"),
        )
        .unwrap();
        Site {
            runtime,
            github,
            repo,
            dir,
            config,
            listen,
            network,
        }
    }

    fn start(&self) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Daemon { child }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn wait_log(&self, what: &str, needle: &str, times: usize) {
        wait_for(what, Duration::from_secs(60), || {
            let n = self.log().matches(needle).count();
            if n >= times {
                Ok(())
            } else {
                Err(format!("{n} of {times} lines with {needle:?}"))
            }
        })
    }

    /// The builds of an issue or pull request, over the API.
    fn builds_of(&self, number: u64) -> Result<Vec<Value>, String> {
        let (status, body) = api(
            self.listen,
            "GET",
            &format!("/projects/{}/builds", self.repo),
            "",
        )?;
        if status != 200 {
            return Err(format!("{status}: {body}"));
        }
        Ok(json(&body)?
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|b| b["number"] == number)
            .collect())
    }

    /// Waits until build `id` satisfies `done`; returns it.
    fn wait_build(&self, id: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_for(
            &format!("build {id} {what}"),
            Duration::from_secs(240),
            || {
                let (status, body) = api(self.listen, "GET", &format!("/builds/{id}"), "")?;
                let build = json(&body)?;
                if status == 200 && done(&build) {
                    Ok(build)
                } else {
                    Err(body)
                }
            },
        )
    }

    fn build_comments(&self, issue: u64) -> Vec<String> {
        self.github
            .comments(&self.repo, issue)
            .into_iter()
            .filter(|c| c.body.starts_with("<!-- productbuilder:build -->"))
            .map(|c| c.body)
            .collect()
    }

    /// Every file under the state directory that holds `needle`.
    fn files_holding(&self, needle: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, needle: &[u8], found: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, needle, found);
                } else if std::fs::read(&path)
                    .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                {
                    found.push(path);
                }
            }
        }
        let mut found = Vec::new();
        walk(
            &self.dir.path().join("state"),
            needle.as_bytes(),
            &mut found,
        );
        found
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(80);
            eprintln!("the daemon's last log lines:\n{}", lines[from..].join("\n"));
        }
        remove_previews_of(&self.repo, &self.network);
    }
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request as the receiver saw it: headers (names lowercased) and body.
type Received = (Vec<(String, String)>, Vec<u8>);

/// An HTTP server on loopback answering 200 to every request: its URL and what it received.
fn callback_receiver() -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut headers = Vec::new();
            let mut line = String::new();
            reader.read_line(&mut line).ok();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            let length: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).ok();
            let mut stream = reader.into_inner();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if tx.send((headers, body)).is_err() {
                break;
            }
        }
    });
    (url, rx)
}

#[test]
fn a_labelled_issue_becomes_a_pull_request_with_a_preview_and_survives_a_kill() {
    assert!(
        Path::new("/bin/busybox").exists(),
        "the example app needs Debian's busybox-static (.ci/run installs it)"
    );
    let site = Site::new("builds", 2, "2m");
    let Site { github, repo, .. } = &site;
    let daemon = site.start();
    site.wait_log("the first builds pass", "first triggers pass", 1);

    // A writer labels an issue and, in the same breath, asks again by comment: one build.
    let issue = github.create_issue(
        repo,
        "Say hello from a build",
        "Add a line to the page.",
        "bob",
    );
    github.add_label(repo, issue, "productbuilder", "alice");
    github.add_comment(repo, issue, "alice", "/productbuilder implement");
    let builds = wait_for("a build for the issue", Duration::from_secs(60), || {
        let b = site.builds_of(issue)?;
        if b.is_empty() {
            Err("none yet".into())
        } else {
            Ok(b)
        }
    });
    let id = builds[0]["id"].as_u64().unwrap();
    let done = site.wait_build(id, "completed with its preview", |b| {
        b["status"] == "completed" && b["result"]["preview_url"].is_string()
    });
    assert_eq!(
        site.builds_of(issue).unwrap().len(),
        1,
        "the comment joined the label's build"
    );
    let result = &done["result"];
    let branch = format!("{BRANCH_PREFIX}issue-{issue}");
    let head = github
        .branch_head(repo, &branch)
        .expect("the build's branch was pushed");
    assert_eq!(result["commit_sha"], head.as_str());
    assert_eq!(result["branch"], branch.as_str());
    assert!(
        result["files_changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "www/index.html"),
        "{result}"
    );
    let pulls = github.pulls_with_head(repo, &branch);
    assert_eq!(pulls.len(), 1, "one pull request for the branch");
    assert_eq!(result["pr_number"], pulls[0]);
    assert!(
        result["pr_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/pull/{}", pulls[0]))
    );
    let name = repo.split('/').nth(1).unwrap();
    let preview = format!("http://{name}-pr-{}.{name}.localhost", pulls[0]);
    assert_eq!(result["preview_url"], preview.as_str());
    let (status, pr) = http_get(
        github.addr(),
        "localhost",
        &format!("/repos/{repo}/pulls/{}", pulls[0]),
    )
    .unwrap();
    assert_eq!(status, 200, "{pr}");
    let pr = json(&pr).unwrap();
    assert!(
        pr["body"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("Closes #{issue}")),
        "{pr}"
    );
    // The comment follows the result (written right after it).
    wait_for(
        "the build comment with the preview",
        Duration::from_secs(30),
        || {
            let comments = site.build_comments(issue);
            match comments.as_slice() {
                [one] if one.contains(&preview) => Ok(()),
                _ => Err(format!("{comments:?}")),
            }
        },
    );

    // Over the API with a callback: it arrives signed.
    let (hook, received) = callback_receiver();
    let (status, body) = api(
        site.listen,
        "POST",
        &format!("/projects/{repo}/builds"),
        &serde_json::json!({
            "prompt": "Add a footer",
            "callback_url": hook,
            "open_pr": false,
        })
        .to_string(),
    )
    .unwrap();
    assert_eq!(status, 202, "{body}");
    let started = json(&body).unwrap();
    assert_eq!(started["status"], "pending");
    let (headers, body) = received
        .recv_timeout(Duration::from_secs(120))
        .expect("the callback arrives");
    let signature = headers
        .iter()
        .find(|(k, _)| k == "x-productbuilder-signature-256")
        .map(|(_, v)| v.clone())
        .expect("a signature header");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(CALLBACK_SECRET.as_bytes()).unwrap();
    mac.update(&body);
    assert_eq!(
        signature,
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );
    let sent = json(&String::from_utf8_lossy(&body)).unwrap();
    assert_eq!(sent["id"], started["id"]);
    assert_eq!(sent["status"], "completed", "{sent}");

    // SIGKILL while the next build's agent works; after a restart it ends once.
    let second = github.create_issue(repo, "Another line", "", "bob");
    github.add_label(repo, second, "productbuilder", "alice");
    let id = wait_for("the second build", Duration::from_secs(60), || {
        site.builds_of(second)?
            .first()
            .and_then(|b| b["id"].as_u64())
            .ok_or_else(|| "none yet".to_owned())
    });
    site.wait_build(id, "in its agent step", |b| b["status"] == "running");
    wait_for("the agent at work", Duration::from_secs(60), || {
        let (_, log) = api(site.listen, "GET", &format!("/builds/{id}/log"), "")?;
        if log.contains("working (1)") {
            Ok(())
        } else {
            Err(log)
        }
    });
    daemon.kill9();
    let daemon = site.start();
    let done = site.wait_build(id, "ended after the restart", |b| {
        matches!(b["status"].as_str(), Some("completed" | "failed"))
    });
    assert_eq!(done["status"], "completed", "{done}");
    let branch = format!("{BRANCH_PREFIX}issue-{second}");
    assert_eq!(
        github.pulls_with_head(repo, &branch).len(),
        1,
        "one pull request"
    );
    assert_eq!(site.build_comments(second).len(), 1, "one build comment");
    assert_eq!(site.builds_of(second).unwrap().len(), 1, "one build");

    // The token: in no file the daemon keeps and in no log line.
    drop(daemon);
    assert_eq!(site.files_holding(TOKEN), Vec::<PathBuf>::new());
    assert!(!site.log().contains(TOKEN), "the token is in the log");
    let _ = &site.runtime;
}

/// Processes whose working directory is under `dir` (the agents of a daemon's builds run in
/// their checkouts there).
fn processes_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd"))
            && cwd.starts_with(dir)
        {
            found.push(format!(
                "{} in {}",
                entry.file_name().to_string_lossy(),
                cwd.display()
            ));
        }
    }
    found
}

/// An agent that works past `max_duration` is killed with its children (its `sleep`), and what
/// it changed so far is kept: committed, pushed, opened as a draft pull request that says what is
/// missing and how to go on; the build fails naming the budget.
#[test]
fn an_agent_past_max_duration_is_killed_and_its_work_kept_as_a_draft_pull_request() {
    let site = Site::new("budget", 600, "3s");
    let Site { github, repo, .. } = &site;
    let _daemon = site.start();
    site.wait_log("the first builds pass", "first triggers pass", 1);
    let issue = github.create_issue(repo, "A long job", "", "bob");
    github.add_label(repo, issue, "productbuilder", "alice");
    let id = wait_for("a build for the issue", Duration::from_secs(60), || {
        site.builds_of(issue)?
            .first()
            .and_then(|b| b["id"].as_u64())
            .ok_or_else(|| "none yet".to_owned())
    });
    let done = site.wait_build(id, "ended", |b| {
        matches!(
            b["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
    });
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap_or("")
            .contains("max_duration")
            || done["result"]["error"]
                .as_str()
                .unwrap_or("")
                .contains("max_duration"),
        "the error names the budget: {done}"
    );
    let branch = format!("{BRANCH_PREFIX}issue-{issue}");
    let pulls = github.pulls_with_head(repo, &branch);
    assert_eq!(pulls.len(), 1, "a draft pull request with the partial work");
    let (_, pr) = http_get(
        github.addr(),
        "localhost",
        &format!("/repos/{repo}/pulls/{}", pulls[0]),
    )
    .unwrap();
    let pr = json(&pr).unwrap();
    assert_eq!(pr["draft"], true, "{pr}");
    assert!(
        pr["body"]
            .as_str()
            .unwrap_or("")
            .contains("/productbuilder continue"),
        "{pr}"
    );
    let head = github.branch_head(repo, &branch).unwrap();
    assert_eq!(done["result"]["commit_sha"], head.as_str());
    assert!(
        processes_under(&site.dir.path().join("state")).is_empty(),
        "the agent and its children are gone: {:?}",
        processes_under(&site.dir.path().join("state"))
    );
}
