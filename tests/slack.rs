//! The daemon against the sandbox GitHub, the sandbox Slack and the real Docker engine, in both
//! input modes: a new pull request gets one parent and one status message, which goes from
//! building to ready with the preview's URL by edits; a hostile title arrives escaped; a person's
//! GitHub comment appears in the thread once, also after a SIGKILL and a restart, the daemon's
//! own comments never; `@bot status` in the thread is answered there. Socket Mode on its own:
//! acks, redeliveries, disconnects; `check --online`.

use std::process::Command;
use std::time::Duration;

use productbuilder_github_sandbox::{NewPr, Permission, Sandbox as GithubSandbox};
use productbuilder_preview::compose::project_name;
use productbuilder_slack_sandbox::{APP_TOKEN, BOT_TOKEN, Sandbox as SlackSandbox};

mod support;
use support::{BIN, Daemon, app_files, docker, remove_previews_of, wait_for};

const TOKEN: &str = "ghp_test_token_never_printed";

impl Daemon {
    fn metrics(&self) -> String {
        self.get("/metrics")
    }

    fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }
}

/// The sandbox GitHub with one repository, the sandbox Slack with its channel, and a
/// configuration directory whose tenant file points the repository at that channel. With
/// previews, a Docker network and domain of its own; whatever the engine still holds of the
/// repository's previews is removed when the site is dropped (also when a test failed).
struct Site {
    runtime: tokio::runtime::Runtime,
    github: GithubSandbox,
    slack: SlackSandbox,
    channel: String,
    repo: String,
    /// The `[preview]` section of the main file; empty without previews.
    preview: String,
    network: Option<String>,
    /// Holds the configuration directory (removed when the site is dropped).
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Site {
    fn new(name: &str, previews: bool) -> Site {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let github = runtime.block_on(GithubSandbox::start()).unwrap();
        let unique = format!("{name}{}", std::process::id());
        let repo = format!("acme/{unique}");
        github.add_token(TOKEN, "productbuilder-bot");
        github.create_repo("acme", &unique);
        github.grant("productbuilder-bot", &repo, Permission::Push);
        let slack = runtime.block_on(SlackSandbox::start()).unwrap();
        let channel = slack.create_channel("shop");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tenants")).unwrap();
        std::fs::write(
            dir.path().join("tenants/shop.toml"),
            format!(
                "repo = \"{repo}\"\npoll_interval = \"1s\"\npreviews = {previews}\nslack_channel = \"{channel}\"\n"
            ),
        )
        .unwrap();
        let network = previews.then(|| format!("pb-{unique}"));
        let preview = match &network {
            Some(network) => format!(
                "[preview]\ndomain = \"{unique}.localhost\"\nurl_template = \"http://{{repo}}-pr-{{number}}.{{domain}}\"\nnetwork = \"{network}\"\n"
            ),
            None => String::new(),
        };
        let config = dir.path().join("productbuilder.toml");
        Site {
            runtime,
            github,
            slack,
            channel,
            repo,
            preview,
            network,
            _dir: dir,
            config,
        }
    }

    /// Writes the main file; `slack_extra` goes into `[slack]` (an `app_token` line, say).
    fn write_config(&self, log: &str, slack_extra: &str) {
        std::fs::write(
            &self.config,
            format!(
                "state_dir = \"state\"\n{log}[github]\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\n{}[slack]\nbot_token = \"{BOT_TOKEN}\"\n{slack_extra}api_url = \"{}\"\n",
                self.github.url(),
                self.preview,
                self.slack.api_url()
            ),
        )
        .unwrap();
    }

    /// Waits until `done` holds in the sandbox Slack, or fails naming `what`.
    fn wait_slack(&self, what: &str, done: &dyn Fn(&SlackSandbox) -> bool) {
        assert!(
            self.runtime
                .block_on(self.slack.wait_until(Duration::from_secs(180), |s| done(s))),
            "timed out waiting for {what}: {:?}",
            self.slack.messages(&self.channel)
        );
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let Some(network) = &self.network else {
            return;
        };
        remove_previews_of(&self.repo, network);
    }
}

#[derive(Clone, Copy, Debug)]
enum Input {
    Polling,
    SocketMode,
}

#[test]
fn a_thread_follows_its_pull_request_and_preview_with_mentions_read_by_polling() {
    a_thread_follows_its_pull_request_and_preview(Input::Polling);
}

#[test]
fn a_thread_follows_its_pull_request_and_preview_with_mentions_over_socket_mode() {
    a_thread_follows_its_pull_request_and_preview(Input::SocketMode);
}

/// One pull request's life in its thread, with a real preview on the engine.
fn a_thread_follows_its_pull_request_and_preview(input: Input) {
    assert!(
        std::path::Path::new("/bin/busybox").exists(),
        "the example app needs Debian's busybox-static (.ci/run installs it)"
    );
    let site = Site::new(
        match input {
            Input::Polling => "slackpoll",
            Input::SocketMode => "slacksock",
        },
        true,
    );
    let slack_extra = match input {
        Input::Polling => String::new(),
        Input::SocketMode => format!("app_token = \"{APP_TOKEN}\"\n"),
    };
    site.write_config("[log]\nformat = \"json\"\n", &slack_extra);
    let Site {
        github,
        slack,
        channel,
        repo,
        config,
        ..
    } = &site;
    let daemon = Daemon::run(config);
    daemon.wait_for("first Slack pass");
    let mut pr = NewPr::new(
        "<!channel> <https://evil.example|click>",
        "alice",
        "feature",
    );
    // A build that takes a few seconds, longer than the status lane's debounce, so that the
    // thread shows "building" before "ready" (a faster deploy is one edit, by design).
    for (path, content) in app_files("v1", false, true) {
        pr = pr.with_file(&path, content);
    }
    let number = github.open_pr(repo, pr);
    site.wait_slack("the parent and its status", &|s| {
        s.messages(channel)
            .first()
            .is_some_and(|p| s.thread(channel, &p.ts).len() >= 2)
    });
    let top = slack.messages(channel);
    assert_eq!(top.len(), 1, "one parent: {top:?}");
    let parent = top[0].ts.clone();
    assert!(top[0].text.contains(&format!("#{number}")));
    assert!(
        top[0]
            .text
            .contains("&lt;!channel&gt; &lt;https://evil.example|click&gt;"),
        "{}",
        top[0].text
    );
    let name = repo.split('/').nth(1).unwrap();
    let url = format!("http://{name}-pr-{number}.{name}.localhost");
    let status_ts = slack.thread(channel, &parent)[1].ts.clone();
    site.wait_slack("the preview ready in the status message", &|s| {
        s.thread(channel, &parent)
            .iter()
            .any(|m| m.ts == status_ts && m.text.contains("preview ready"))
    });
    // One status message, edited from building to ready with the URL; never a second one.
    let edits = slack.edits_of(&status_ts);
    assert!(
        edits.iter().any(|t| t.contains("preview building")),
        "{edits:?}"
    );
    assert!(
        edits
            .last()
            .unwrap()
            .contains(&format!("preview ready: <{url}|{url}>")),
        "{edits:?}"
    );
    assert!(
        edits.windows(2).all(|w| w[0] != w[1]),
        "an edit only on a change: {edits:?}"
    );

    github.add_comment(repo, number, "bob", "Looks <b>good</b>");
    github.add_comment(
        repo,
        number,
        "productbuilder-bot",
        "<!-- productbuilder:other -->\nbot text",
    );
    site.wait_slack("bob's comment", &|s| {
        s.thread(channel, &parent)
            .iter()
            .any(|m| m.text.contains("Looks &lt;b&gt;good&lt;/b&gt;"))
    });
    daemon.kill9();

    let daemon = Daemon::run(config);
    if matches!(input, Input::SocketMode) {
        site.wait_slack("a Socket Mode connection", &|s| s.open_connections() >= 1);
    }
    let asked = slack.post_user_message(
        channel,
        "U0ALICE",
        &format!("<@{}> status", slack.bot_user_id()),
        Some(&parent),
    );
    site.wait_slack("the answer to status", &|s| {
        s.thread(channel, &parent)
            .iter()
            .any(|m| m.ts > asked && m.text.starts_with(&format!("Open pull requests in {repo}")))
    });
    let thread = slack.thread(channel, &parent);
    let texts: Vec<&str> = thread.iter().map(|m| m.text.as_str()).collect();
    let answer = texts
        .iter()
        .find(|t| t.starts_with("Open pull requests"))
        .unwrap();
    assert!(
        answer.contains(&url),
        "the answer lists the preview: {answer}"
    );
    assert_eq!(
        texts.iter().filter(|t| t.contains("Looks")).count(),
        1,
        "{texts:?}"
    );
    assert!(!texts.iter().any(|t| t.contains("bot text")), "{texts:?}");
    assert_eq!(
        texts.iter().filter(|t| t.starts_with("Status:")).count(),
        1,
        "{texts:?}"
    );
    assert_eq!(slack.messages(channel).len(), 1, "still one parent");
    let metrics = daemon.metrics();
    for series in [
        "productbuilder_slack_messages_posted_total",
        "productbuilder_slack_rate_limited_total 0",
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }
    // The dashboard links the pull request to its thread.
    let link = format!("/archives/{channel}/p{}", parent.replace('.', ""));
    let page = daemon.get("/");
    assert!(page.contains(&link), "no {link} in\n{page}");

    // Closed: the parent says so, a last line goes to the thread, the preview is removed.
    github.close_pr(repo, number, false);
    site.wait_slack("the parent marked closed", &|s| {
        s.messages(channel)
            .first()
            .is_some_and(|p| p.text.starts_with("[closed]"))
    });
    let project = project_name(repo, number);
    wait_for("the preview removed", Duration::from_secs(120), || {
        let left = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
        ]);
        if left.is_empty() { Ok(()) } else { Err(left) }
    });
    daemon.kill9();
}

/// Socket Mode: every envelope acknowledged within Slack's 3 s, a redelivered event handled once,
/// a new connection after a `disconnect` frame and after an abrupt close, and a mention in a
/// channel no tenant uses answered only with how to connect it.
#[test]
fn socket_mode_acks_at_once_handles_each_event_once_and_reconnects() {
    use productbuilder_slack_sandbox::DisconnectReason;
    let site = Site::new("socket", false);
    site.write_config(
        "[log]\nformat = \"json\"\n",
        &format!("app_token = \"{APP_TOKEN}\"\n"),
    );
    let Site {
        runtime,
        slack,
        channel,
        config,
        ..
    } = &site;
    let elsewhere = slack.create_channel("random");
    let daemon = Daemon::run(config);
    let wait = |what: &str, done: &dyn Fn(&SlackSandbox) -> bool| {
        assert!(
            runtime.block_on(slack.wait_until(Duration::from_secs(60), |s| done(s))),
            "timed out waiting for {what}"
        );
    };
    let bot = slack.bot_user_id();
    let answered = |s: &SlackSandbox, ch: &str, ts: &str| {
        s.thread(ch, ts)
            .iter()
            .filter(|m| m.bot_id.is_some())
            .count()
    };
    wait("a connection", &|s| s.open_connections() == 1);

    let asked = slack.post_user_message(channel, "U0ALICE", &format!("<@{bot}> status"), None);
    wait("the answer", &|s| answered(s, channel, &asked) == 1);
    let event_id = slack.acks()[0].event_id.clone().unwrap();
    assert!(slack.redeliver(&event_id));
    wait("the redelivery's ack", &|s| s.acks().len() == 2);
    // The redelivery is deduplicated: wait for the counter, then check nothing was posted.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !daemon
        .metrics()
        .contains("productbuilder_slack_events_deduplicated_total 1")
    {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        answered(slack, channel, &asked),
        1,
        "one answer per event_id"
    );

    slack.send_disconnect(DisconnectReason::RefreshRequested);
    wait("a new connection after disconnect", &|s| {
        s.connections() >= 2 && s.open_connections() == 1
    });
    let again = slack.post_user_message(channel, "U0BOB", &format!("<@{bot}> help"), None);
    wait("the answer after reconnecting", &|s| {
        answered(s, channel, &again) == 1
    });

    slack.close_abruptly();
    wait("a new connection after a drop", &|s| {
        s.connections() >= 3 && s.open_connections() == 1
    });
    let stranger = slack.post_user_message(&elsewhere, "U0EVE", &format!("<@{bot}> status"), None);
    wait("the answer elsewhere", &|s| {
        answered(s, &elsewhere, &stranger) == 1
    });
    let reply = slack
        .thread(&elsewhere, &stranger)
        .into_iter()
        .find(|m| m.bot_id.is_some())
        .unwrap();
    assert!(reply.text.contains("slack_channel"), "{}", reply.text);
    assert!(
        !reply.text.contains(&site.repo),
        "no tenant's data: {}",
        reply.text
    );

    for ack in slack.acks() {
        assert!(ack.delay < Duration::from_secs(3), "{ack:?}");
    }
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("productbuilder_slack_socket_connected 1"),
        "{metrics}"
    );

    // While no connection can be opened, the service is degraded in /readyz and /metrics; it
    // recovers by itself once one can.
    slack.revoke_token(APP_TOKEN);
    slack.close_abruptly();
    let degraded = "\"service:slack-socket:global\"";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !daemon.get("/readyz").contains(degraded) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            daemon.get("/readyz")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("productbuilder_slack_socket_connected 0")
            && metrics
                .contains("productbuilder_unit_degraded{unit=\"service:slack-socket:global\"} 1"),
        "{metrics}"
    );
    slack.add_app_token(APP_TOKEN);
    wait("a connection again", &|s| s.open_connections() == 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while daemon.get("/readyz").contains(degraded) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            daemon.get("/readyz")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.kill9();
}

/// `check --online` checks the bot token (the same preflight `run` starts with) and says which
/// input mode will run, opening a Socket Mode connection when there is an app token.
#[test]
fn check_online_checks_the_token_and_says_which_mode_will_run() {
    let site = Site::new("check", false);
    let check = |app_token: &str| {
        site.write_config("", app_token);
        let out = Command::new(BIN)
            .args(["check", "--online", "--config"])
            .arg(&site.config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = check(&format!("app_token = \"{APP_TOKEN}\"\n"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("√ preflight:slack:global"), "{out}");
    assert!(out.contains("√ Slack Socket Mode: connected"), "{out}");
    assert_eq!(site.slack.connections(), 1);
    let (code, out) = check("");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("mentions will be read by polling"), "{out}");
    site.slack.revoke_token(BOT_TOKEN);
    let (code, out) = check("");
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("x preflight:slack:global") && out.contains("[slack] bot_token"),
        "{out}"
    );
    assert!(!out.contains(BOT_TOKEN), "the token is never printed");
}
