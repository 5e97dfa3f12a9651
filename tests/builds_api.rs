//! The builds API of the real binary over real HTTP, against the sandbox GitHub: who may call each
//! route (the api token, always), what a new build, a second trigger of the same issue, a bad
//! spec and an unknown repository get, cancelling a pending and a running build, and the builds
//! on the dashboard and in `/metrics`.
//!
//! The runner is live, so nothing here may depend on it being slow by chance: the first build's
//! agent (`sleep`, on a real clone of a sandbox repository) holds the one slot
//! (`max_concurrent = 1`) until it is cancelled, and the builds the test looks at stay pending
//! behind it for as long as the test needs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use productbuilder_github_sandbox::{Permission, Sandbox};
use serde_json::{Value, json};

mod support;
use support::{Daemon, wait_for};

const TOKEN: &str = "ghp_test_token_never_printed";
const API: &str = "api-token-for-the-builds-test";

/// Every build route, with its parameters filled in.
const ROUTES: [(&str, &str); 5] = [
    ("POST", "/projects/acme/shop/builds"),
    ("GET", "/projects/acme/shop/builds"),
    ("GET", "/builds/1"),
    ("GET", "/builds/1/log"),
    ("POST", "/builds/1/cancel"),
];

/// The sandbox GitHub with `acme/shop` (a real git repository) and its issues 1 and 2, and a
/// configuration directory with builds on.
struct Site {
    dir: tempfile::TempDir,
    // Serves the repository; dropped with the site.
    _github: Sandbox,
    // Hosts the sandbox's server; dropped last.
    _runtime: tokio::runtime::Runtime,
}

impl Site {
    /// `http` goes into `[http]` (an `api_token` line, or nothing).
    fn new(http: &str) -> Site {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let github = runtime.block_on(Sandbox::start()).unwrap();
        github.add_token(TOKEN, "productbuilder-bot");
        github.create_git_repo("acme", "shop", &[("README.md", b"# shop\n")]);
        github.grant("productbuilder-bot", "acme/shop", Permission::Push);
        github.create_issue("acme/shop", "Hold the runner", "", "octocat");
        github.create_issue("acme/shop", "Add search", "", "octocat");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tenants")).unwrap();
        std::fs::write(
            dir.path().join("tenants/shop.toml"),
            "repo = \"acme/shop\"\npreviews = false\n",
        )
        .unwrap();
        // `sh -c SCRIPT {prompt}`: the prompt is `$0`, never read; the agent only waits, until
        // it is cancelled (its process group is killed then, or when the daemon dies).
        std::fs::write(
            dir.path().join("productbuilder.toml"),
            format!(
                "state_dir = \"state\"\n[github]\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\n[http]\n{http}\n\
                 [builds]\nagent_command = [\"/bin/sh\", \"-c\", \"exec sleep 600\", \"{{prompt}}\"]\n\
                 agent_format = \"text\"\nmax_concurrent = 1\n",
                github.url()
            ),
        )
        .unwrap();
        Site {
            dir,
            _github: github,
            _runtime: runtime,
        }
    }
}

impl Daemon {
    fn start(site: &Site) -> Daemon {
        let daemon = Daemon::run(&site.dir.path().join("productbuilder.toml"));
        daemon.wait_for("productbuilder started");
        // The routes answer once the server listens, the database's tables once its preflight
        // (the migrations) passed: /readyz says when.
        wait_for(
            "/readyz to answer 200",
            Duration::from_secs(60),
            || match daemon.call("GET", "/readyz", None, "") {
                (200, _, _) => Ok(()),
                (status, _, body) => Err(format!("{status} {body}")),
            },
        );
        daemon
    }

    /// `method path` with an optional bearer token and JSON body: the status, the head and the
    /// body.
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {answer:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        (status, head.to_owned(), body.to_owned())
    }

    /// [`Daemon::call`] with the api token, the body read as JSON.
    fn api(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, _, answer) = self.call(method, path, Some(API), &body);
        let json = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("{method} {path}: {status} {answer:?} is not JSON: {e}"));
        (status, json)
    }

    fn status_of(&self, id: i64) -> String {
        let (status, build) = self.api("GET", &format!("/builds/{id}"), Value::Null);
        assert_eq!(status, 200, "{build}");
        build["status"].as_str().unwrap_or_default().to_owned()
    }
}

/// Every build route refuses a request without the api token or with a wrong one (401, with
/// `WWW-Authenticate`), before any handler runs: nothing is enqueued by a refused POST.
#[test]
fn every_build_route_needs_the_api_token() {
    let site = Site::new(&format!("api_token = \"{API}\""));
    let daemon = Daemon::start(&site);
    let spec = json!({ "prompt": "refused", "issue": 2 }).to_string();
    // A token that only starts like the right one is as wrong as any other.
    let longer = format!("{API}x");
    for (method, path) in ROUTES {
        for token in [None, Some("not-the-token"), Some(longer.as_str())] {
            let (status, head, _) = daemon.call(method, path, token, &spec);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{method} {path}: {head}"
            );
            assert!(!head.contains(API), "{method} {path}: {head}");
        }
    }
    let (status, history) = daemon.api("GET", "/projects/acme/shop/builds", Value::Null);
    assert_eq!(
        (status, history),
        (200, json!([])),
        "a refused POST enqueued"
    );
}

/// Without `[http].api_token` every build route is off (403), whatever the request carries.
#[test]
fn without_an_api_token_every_build_route_is_403() {
    let site = Site::new("");
    let daemon = Daemon::start(&site);
    let spec = json!({ "prompt": "refused" }).to_string();
    for (method, path) in ROUTES {
        for token in [None, Some(API)] {
            let (status, head, _) = daemon.call(method, path, token, &spec);
            assert_eq!(status, 403, "{method} {path} with {token:?}: {head}");
        }
    }
}

#[test]
fn the_builds_api_starts_joins_shows_and_cancels_builds() {
    let site = Site::new(&format!("api_token = \"{API}\""));
    let daemon = Daemon::start(&site);

    // A spec without a prompt: 422 naming the field; an unknown repository: 404.
    let (status, refused) = daemon.api("POST", "/projects/acme/shop/builds", json!({}));
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["field"], "prompt", "{refused}");
    let (status, refused) = daemon.api(
        "POST",
        "/projects/acme/other/builds",
        json!({ "prompt": "x" }),
    );
    assert_eq!(status, 404, "{refused}");
    let (status, _) = daemon.api("GET", "/builds/999", Value::Null);
    assert_eq!(status, 404);

    // The first build takes the runner's one slot: its agent waits until it is cancelled.
    let (status, holder) = daemon.api(
        "POST",
        "/projects/acme/shop/builds",
        json!({ "prompt": "hold the runner", "issue": 1 }),
    );
    assert_eq!(status, 202, "{holder}");
    let holder = holder["id"].as_i64().unwrap();
    wait_for(
        "the first build's agent to run",
        Duration::from_secs(90),
        || {
            let (_, _, log) = daemon.call("GET", &format!("/builds/{holder}/log"), Some(API), "");
            let status = daemon.status_of(holder);
            if status == "running" && log.contains("step agent") {
                Ok(())
            } else {
                Err(format!("{status}: {log}"))
            }
        },
    );

    // A new build: 202 with its id, pending, and its URL.
    let hostile = "<script>alert(1)</script> <!channel>";
    let (status, started) = daemon.api(
        "POST",
        "/projects/acme/shop/builds",
        json!({ "prompt": hostile, "issue": 2 }),
    );
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_i64().unwrap();
    assert_eq!(started["status"], "pending", "{started}");
    assert_eq!(started["url"], format!("/builds/{id}"), "{started}");

    // The same issue again while it is active: 200 and the same build, nothing new.
    let (status, joined) = daemon.api(
        "POST",
        "/projects/acme/shop/builds",
        json!({ "prompt": "again", "issue": 2 }),
    );
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["id"], id, "{joined}");

    // It shows as the contract says, and in the history (newest first).
    let (status, build) = daemon.api("GET", &format!("/builds/{id}"), Value::Null);
    assert_eq!(status, 200, "{build}");
    assert_eq!(build["id"], id);
    assert_eq!(build["repo"], "acme/shop");
    assert_eq!(build["status"], "pending");
    assert_eq!(build["spec"]["prompt"], hostile);
    assert_eq!(build["spec"]["issue"], 2);
    assert!(build["created_at"].is_string(), "{build}");
    assert!(build["started_at"].is_null(), "{build}");
    let (status, history) = daemon.api("GET", "/projects/acme/shop/builds", Value::Null);
    assert_eq!(status, 200, "{history}");
    let ids: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [id, holder], "{history}");

    // The dashboard lists both, the prompt as text; /metrics counts them.
    let (status, _, page) = daemon.call("GET", "/", None, "");
    assert_eq!(status, 200);
    assert!(page.contains("<h2>Builds</h2>"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &lt;!channel&gt;"),
        "{page}"
    );
    assert!(!page.contains(hostile), "{page}");
    assert!(
        page.contains(&format!("<a href=\"/builds/{id}/log\">log</a>")),
        "{page}"
    );
    let (_, _, metrics) = daemon.call("GET", "/metrics", None, "");
    for line in [
        "productbuilder_builds{status=\"pending\"} 1",
        "productbuilder_builds{status=\"running\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }

    // Cancelling the pending build: 200 cancelled at once; again: 409.
    let (status, cancelled) = daemon.api("POST", &format!("/builds/{id}/cancel"), Value::Null);
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(daemon.status_of(id), "cancelled");
    let (status, again) = daemon.api("POST", &format!("/builds/{id}/cancel"), Value::Null);
    assert_eq!(status, 409, "{again}");

    // Cancelling the running one: 202, and its runner stops it at its next heartbeat.
    let (status, requested) = daemon.api("POST", &format!("/builds/{holder}/cancel"), Value::Null);
    assert_eq!(status, 202, "{requested}");
    assert_eq!(requested["cancel_requested"], true, "{requested}");
    wait_for(
        "the running build to stop",
        Duration::from_secs(90),
        || match daemon.status_of(holder).as_str() {
            "cancelled" => Ok(()),
            other => Err(other.to_owned()),
        },
    );
    let (_, _, metrics) = daemon.call("GET", "/metrics", None, "");
    assert!(
        metrics
            .lines()
            .any(|l| l == "productbuilder_builds{status=\"cancelled\"} 2"),
        "{metrics}"
    );
}
