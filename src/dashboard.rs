//! `GET /`: a read-only page for operators, rendered on the server, refreshing itself, with no
//! JavaScript. Written with maud, so everything shown that came from GitHub (titles, logins,
//! labels) or from a repository (errors) is escaped by construction: only [`STYLE`] is inserted
//! unescaped.
//!
//! [`View::read`] gathers what the page shows (the database, the status board, the budgets);
//! [`page`] is pure, so the page is tested without a daemon.
//!
//! With `[builds]`, a section lists each repository's latest builds. A build's prompt and error
//! come from whoever started it and from the agent's output, so they are shown as bounded text;
//! its pull request and preview are links only when they are `http(s)` URLs (an `href` of
//! `javascript:` would run, escaped or not).
//!
//! When the agent has answered anyone, a section lists its newest runs across repositories
//! (from `agent_runs`), each linking to its trace (`/agent/runs/{id}`). A model's name is what
//! the provider answered, so it is shown as text like everything else.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use productbuilder_agent::{RunSummary, Traces};
use productbuilder_builds::{Build, Queue};
use productbuilder_github::{GithubState, Pull};
use productbuilder_preview::Previews;
use productbuilder_preview::db::PreviewRow;
use productbuilder_preview::state::Status;
use productbuilder_scheduler::StatusBoard;
use productbuilder_slack::api::SlackApi;
use std::collections::BTreeMap;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}\
th{background:#f5f5f5}.bad{color:#b00020}.ok{color:#1b7f3b}.muted{color:#777}code{font-size:12px}";

/// Builds shown per repository: the newest.
pub const LATEST_BUILDS: u32 = 10;
/// The agent's runs shown, the newest of every repository together.
pub const LATEST_AGENT_RUNS: u32 = 20;
/// At most this many characters of a model's or provider's name are shown.
const MODEL_CHARS: usize = 60;
/// At most this many characters of a build's prompt (its first line) are shown.
const PROMPT_CHARS: usize = 80;
/// At most this many characters of a build's error (its first line) are shown; the whole text is
/// in `GET /builds/{id}` and the build comment.
const ERROR_CHARS: usize = 200;

/// Everything the page shows, read at one request.
pub struct View {
    pub preflights_passed: bool,
    /// Degraded units, each with its last error.
    pub degraded: Vec<(String, String)>,
    /// Repositories whose preflight fails (they wait, retried with backoff), each with why.
    pub waiting: Vec<(String, String)>,
    pub repositories: Vec<Repository>,
    /// The preview rows, or why they could not be read.
    pub previews: Result<Vec<PreviewRow>, String>,
    /// Each repository's latest builds; `None` when builds are off (no `[builds]`).
    pub builds: Option<Vec<RepositoryBuilds>>,
    /// The agent's newest runs (at most [`LATEST_AGENT_RUNS`]), or why they could not be read;
    /// no section when there are none.
    pub agent_runs: Result<Vec<RunSummary>, String>,
}

/// One repository's newest builds (at most [`LATEST_BUILDS`]), or why they could not be read.
pub struct RepositoryBuilds {
    pub repo: String,
    pub builds: Result<Vec<Build>, String>,
}

/// One configured repository's line, and its open pull requests.
pub struct Repository {
    pub repo: String,
    pub last_poll_at: Option<String>,
    pub last_change_at: Option<String>,
    /// "remaining / limit", "unknown" or "not used yet".
    pub quota: String,
    pub units_degraded: usize,
    pub pulls: Vec<Pull>,
    /// Each pull request's Slack thread, by number.
    pub slack_threads: BTreeMap<u64, String>,
}

impl View {
    pub async fn read(
        board: &StatusBoard,
        github: &GithubState,
        previews: &Previews,
        tenants: &[String],
        slack: Option<&SlackApi>,
        builds: Option<&Queue>,
    ) -> View {
        let degraded = board
            .degraded()
            .map(|u| (u.name().to_owned(), u.last_error().unwrap_or_default()))
            .collect();
        let waiting = board
            .degraded_tenants()
            .into_iter()
            .map(|t| (t.tenant.as_str().to_owned(), t.reason))
            .collect();
        let polls = github.poll_states().await.unwrap_or_default();
        let mut repositories = Vec::with_capacity(tenants.len());
        for repo in tenants {
            let poll = polls.iter().find(|p| &p.repo == repo);
            let quota = match github.client.budget_for(repo) {
                Some(b) => match (b.remaining, b.limit) {
                    (Some(r), Some(l)) => format!("{r} / {l}"),
                    _ => "unknown".to_owned(),
                },
                None => "not used yet".to_owned(),
            };
            repositories.push(Repository {
                repo: repo.clone(),
                last_poll_at: poll.and_then(|p| p.last_poll_at.clone()),
                last_change_at: poll.and_then(|p| p.last_change_at.clone()),
                quota,
                units_degraded: board.group(repo).filter(|u| u.is_degraded()).count(),
                pulls: github.open_pulls(repo).await.unwrap_or_default(),
                slack_threads: match slack {
                    Some(api) => productbuilder_slack::thread_links(api, &github.store, repo).await,
                    None => BTreeMap::new(),
                },
            });
        }
        let builds = match builds {
            Some(queue) => {
                let mut per_repo = Vec::with_capacity(tenants.len());
                for repo in tenants {
                    per_repo.push(RepositoryBuilds {
                        repo: repo.clone(),
                        builds: queue
                            .list(repo, LATEST_BUILDS)
                            .await
                            .map_err(|e| e.to_string()),
                    });
                }
                Some(per_repo)
            }
            None => None,
        };
        // The traces are in the daemon's one database, which the GitHub state holds.
        let agent_runs = Traces::new(github.store.clone())
            .recent(LATEST_AGENT_RUNS)
            .await
            .map_err(|e| e.to_string());
        View {
            preflights_passed: board.preflights_passed(),
            degraded,
            waiting,
            repositories,
            previews: previews.list().await.map_err(|e| e.to_string()),
            builds,
            agent_runs,
        }
    }
}

/// Renders the page.
pub async fn render(
    board: &StatusBoard,
    github: &GithubState,
    previews: &Previews,
    tenants: &[String],
    slack: Option<&SlackApi>,
    builds: Option<&Queue>,
) -> String {
    page(&View::read(board, github, previews, tenants, slack, builds).await).into_string()
}

/// The page for `view`.
pub fn page(view: &View) -> Markup {
    html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="10";
                title { "productbuilder" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "productbuilder " span.muted { (env!("CARGO_PKG_VERSION")) } }
                @if view.preflights_passed {
                    p.ok { "Ready: every preflight passed." }
                } @else {
                    p.bad { "Starting: preflights are still running." }
                }
                @if !view.degraded.is_empty() {
                    p.bad {
                        "Degraded units: "
                        @for (i, (name, error)) in view.degraded.iter().enumerate() {
                            @if i > 0 { ", " }
                            code title=(error) { (name) }
                        }
                    }
                }
                @if !view.waiting.is_empty() {
                    p.bad {
                        "Repositories waiting (a preflight fails; retried with backoff while the others run): "
                        @for (i, (repo, reason)) in view.waiting.iter().enumerate() {
                            @if i > 0 { "; " }
                            code { (repo) } ": " (reason)
                        }
                    }
                }
                (repositories(&view.repositories))
                (previews_table(&view.previews))
                @if let Some(builds) = &view.builds { (builds_table(builds)) }
                (agent_runs_table(&view.agent_runs))
                h2 { "Open pull requests" }
                table {
                    tr {
                        th { "repository" } th { "#" } th { "title" } th { "author" }
                        th { "head" } th { "head seen" } th { "flags" } th { "Slack" }
                    }
                    @for r in &view.repositories {
                        @for p in &r.pulls { (pull_row(&r.repo, p, r.slack_threads.get(&p.number))) }
                    }
                }
            }
        }
    }
}

fn repositories(repositories: &[Repository]) -> Markup {
    html! {
        h2 { "Repositories" }
        table {
            tr {
                th { "repository" } th { "last poll" } th { "last change" }
                th { "open pull requests" } th { "GitHub quota left" } th { "units degraded" }
            }
            @for r in repositories {
                tr {
                    td { (r.repo) }
                    td { (r.last_poll_at.as_deref().unwrap_or("never")) }
                    td { (r.last_change_at.as_deref().unwrap_or("never")) }
                    td { (r.pulls.len()) }
                    td { (r.quota) }
                    td class=(if r.units_degraded > 0 { "bad" } else { "ok" }) { (r.units_degraded) }
                }
            }
        }
    }
}

fn previews_table(rows: &Result<Vec<PreviewRow>, String>) -> Markup {
    let header = html! {
        tr {
            th { "repository" } th { "#" } th { "status" } th { "link" } th { "head" }
            th { "approval" } th { "failed at" } th { "error" } th { "updated" } th { "logs" }
        }
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            return html! {
                h2 { "Previews" }
                table { (header) }
                p.bad { (e) }
            };
        }
    };
    let removed = rows.iter().filter(|r| r.status == Status::Deleted).count();
    html! {
        h2 { "Previews" }
        table {
            (header)
            @for r in rows.iter().filter(|r| r.status != Status::Deleted) {
                (preview_row(r))
            }
        }
        p.muted {
            (removed) " removed previews are listed by " a href="/previews" { "/previews" } "."
        }
    }
}

fn preview_row(r: &PreviewRow) -> Markup {
    let class = match r.status {
        Status::Ready => "ok",
        Status::Failed => "bad",
        _ => "muted",
    };
    // The first line of the error: the whole text is in the pull request comment.
    let error = r
        .error
        .as_deref()
        .and_then(|e| e.lines().next())
        .unwrap_or("");
    html! {
        tr {
            td { (r.repo) }
            td { (r.number) }
            td class=(class) { (r.status) }
            td {
                @if r.status == Status::Ready {
                    a href=(r.url) { (r.url) }
                } @else {
                    (r.url)
                }
            }
            td { code { (short(&r.head_sha)) } }
            td { (approval(r)) }
            td { (r.stage.map(|s| s.as_str()).unwrap_or("")) }
            td {
                (error)
                // A report GitHub refused for good: the operator has to act (a token, a permission).
                @if let Some(refused) = &r.report_error {
                    span.bad { "not reported: " (refused) }
                }
            }
            td { (r.updated_at) }
            td { a href={ "/previews/" (r.repo) "/" (r.number) "/logs?tail=200" } { "logs" } }
        }
    }
}

/// Who approved which commit (forks, and `require_label`), and the commit waiting, if any.
fn approval(r: &PreviewRow) -> Markup {
    let approved = match (&r.approved_sha, &r.approved_by) {
        (Some(sha), Some(by)) => Some((sha, by)),
        _ => None,
    };
    html! {
        @if let Some((sha, by)) = approved {
            code { (short(sha)) } " by " (by) " ("
            (r.approved_how.as_deref().unwrap_or("")) ", "
            (r.approved_at.as_deref().unwrap_or("")) ")"
        }
        @if let Some(waiting) = &r.waiting_sha {
            @if approved.is_some() { br; }
            span.bad { code { (short(waiting)) } " waits for approval" }
        }
    }
}

fn builds_table(builds: &[RepositoryBuilds]) -> Markup {
    html! {
        h2 { "Builds" }
        p.muted {
            "The newest " (LATEST_BUILDS) " of each repository. The build routes ("
            code { "/builds/{id}" } ", its log) need the api token."
        }
        table {
            tr {
                th { "repository" } th { "build" } th { "for" } th { "prompt" } th { "status" }
                th { "duration" } th { "cost" } th { "turns" } th { "pull request" }
                th { "preview" } th { "log" } th { "error" }
            }
            @for r in builds {
                @match &r.builds {
                    Ok(list) => {
                        @for b in list { (build_row(&r.repo, b)) }
                    }
                    Err(e) => {
                        tr { td { (r.repo) } td.bad colspan="11" { (e) } }
                    }
                }
            }
        }
    }
}

fn build_row(repo: &str, b: &Build) -> Markup {
    use productbuilder_builds::Status;
    let class = match b.status {
        Status::Completed => "ok",
        Status::Failed => "bad",
        _ => "muted",
    };
    let target = match (b.spec.pull_request, b.number) {
        (Some(n), _) => format!("pull request #{n}"),
        (None, Some(n)) => format!("issue #{n}"),
        (None, None) => String::new(),
    };
    let result = b.result.as_ref();
    let pr = result.and_then(|r| r.pr_url.as_deref().and_then(web_link));
    let preview = result.and_then(|r| r.preview_url.as_deref().and_then(web_link));
    html! {
        tr {
            td { (repo) }
            td { (b.id) }
            td { (target) }
            td { (first_line(&b.spec.prompt, PROMPT_CHARS)) }
            td class=(class) {
                (b.status)
                @if let (Status::Running, Some(step)) = (b.status, b.step) { " (" (step) ")" }
            }
            td { @if let Some(r) = result { (duration(r.duration_ms)) } }
            td { @if let Some(cost) = result.and_then(|r| r.cost_usd) { (format!("${cost:.2}")) } }
            td { @if let Some(turns) = result.and_then(|r| r.turns) { (turns) } }
            td {
                @if let Some(url) = pr {
                    a href=(url) {
                        @match result.and_then(|r| r.pr_number) {
                            Some(n) => { "#" (n) }
                            None => { "pull request" }
                        }
                    }
                }
            }
            td { @if let Some(url) = preview { a href=(url) { (url) } } }
            td { a href={ "/builds/" (b.id) "/log" } { "log" } }
            td.bad { @if let Some(e) = &b.error { (first_line(e, ERROR_CHARS)) } }
        }
    }
}

fn agent_runs_table(runs: &Result<Vec<RunSummary>, String>) -> Markup {
    let header = html! {
        tr {
            th { "when" } th { "repository" } th { "specialist" } th { "outcome" }
            th { "model (provider)" } th { "LLM calls" } th { "tokens in / out" }
            th { "latency" } th { "fallback" } th { "trace" }
        }
    };
    match runs {
        Ok(runs) if runs.is_empty() => html! {},
        Ok(runs) => html! {
            h2 { "Agent runs" }
            p.muted {
                "The newest " (LATEST_AGENT_RUNS) " answers of the agent in Slack. A trace ("
                code { "/agent/runs/{id}" } ") needs the read token."
            }
            table {
                (header)
                @for r in runs { (agent_run_row(r)) }
            }
        },
        Err(e) => html! {
            h2 { "Agent runs" }
            table { (header) }
            p.bad { (e) }
        },
    }
}

fn agent_run_row(r: &RunSummary) -> Markup {
    let class = match r.outcome.as_str() {
        "answered" | "confirmed" | "awaiting_confirmation" => "ok",
        "refused" => "muted",
        _ => "bad",
    };
    html! {
        tr {
            td { (r.created_at) }
            td { (r.repo) }
            td { (r.specialist.as_deref().unwrap_or("")) }
            td class=(class) { (r.outcome) }
            td {
                @if let Some(model) = &r.model { (first_line(model, MODEL_CHARS)) }
                @if let Some(provider) = &r.provider { " (" (first_line(provider, MODEL_CHARS)) ")" }
            }
            td { (r.llm_calls) }
            td { (r.tokens_in) " / " (r.tokens_out) }
            td { (latency(r.latency_ms)) }
            td class=(if r.fallback_used { "bad" } else { "muted" }) {
                (if r.fallback_used { "yes" } else { "no" })
            }
            td { a href={ "/agent/runs/" (r.id) } { "run " (r.id) } }
        }
    }
}

/// `ms` as `850ms` or `2.3s` under a minute, else as [`duration`].
fn latency(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => duration(ms),
    }
}

/// `url` when it is an `http(s)` URL, the only kind the page links to.
fn web_link(url: &str) -> Option<&str> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")).then_some(url)
}

/// The first line of `text`, at most `max` characters (`…` when cut).
fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// `ms` as `42s`, `3m 05s` or `1h 02m`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

fn pull_row(repo: &str, p: &Pull, slack_thread: Option<&String>) -> Markup {
    let mut flags = Vec::new();
    if p.fork {
        flags.push("fork".to_owned());
    }
    if p.draft {
        flags.push("draft".to_owned());
    }
    flags.extend(p.labels.iter().map(|l| format!("label:{l}")));
    html! {
        tr {
            td { (repo) }
            td { (p.number) }
            td { (p.title) }
            td { (p.author) }
            td { code { (short(&p.head_sha)) } }
            td { (p.seen_at) }
            td { (flags.join(", ")) }
            td { @if let Some(url) = slack_thread { a href=(url) { "thread" } } }
        }
    }
}

/// The first 8 characters of a commit sha.
fn short(sha: &str) -> &str {
    sha.get(..8).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use productbuilder_builds::{BuildId, BuildResult, BuildSpec, Status as BuildStatus, Step};

    const HOSTILE: &str = "<script>alert('x')</script> & \"q\"";
    const ESCAPED: &str = "&lt;script&gt;alert('x')&lt;/script&gt; &amp; &quot;q&quot;";

    fn pull(title: &str) -> Pull {
        Pull {
            number: 7,
            title: title.to_owned(),
            head_sha: "0123456789abcdef".to_owned(),
            head_ref: "feature".to_owned(),
            head_repo: Some("mallory/shop".to_owned()),
            fork: true,
            author: "mallory\"><b>".to_owned(),
            author_association: "NONE".to_owned(),
            draft: false,
            labels: vec!["<i>x</i>".to_owned()],
            updated_at: None,
            seen_at: "2026-01-02T03:04:05.000Z".to_owned(),
        }
    }

    fn view(pulls: Vec<Pull>, previews: Result<Vec<PreviewRow>, String>) -> View {
        View {
            preflights_passed: true,
            degraded: vec![("worker:pulls:acme/shop".to_owned(), HOSTILE.to_owned())],
            waiting: vec![("acme/gone".to_owned(), HOSTILE.to_owned())],
            repositories: vec![Repository {
                repo: "acme/shop".to_owned(),
                last_poll_at: None,
                last_change_at: Some("2026-01-02T03:04:05.000Z".to_owned()),
                quota: "4999 / 5000".to_owned(),
                units_degraded: 1,
                pulls,
                slack_threads: BTreeMap::from([(
                    7,
                    "https://acme.slack.com/archives/C0123/p1700000000000100".to_owned(),
                )]),
            }],
            previews,
            builds: None,
            agent_runs: Ok(Vec::new()),
        }
    }

    fn row(status: Status) -> PreviewRow {
        PreviewRow {
            repo: "acme/shop".to_owned(),
            number: 7,
            head_sha: "0123456789abcdef".to_owned(),
            status,
            stage: None,
            error: Some(format!("{HOSTILE}\nsecond line")),
            log_tail: None,
            url: "http://shop-pr-7.preview.localhost".to_owned(),
            project: "p".to_owned(),
            deleted_reason: None,
            note: None,
            log_service: None,
            log_file: None,
            deployment_id: None,
            reported: None,
            sha_changed_at: String::new(),
            updated_at: "2026-01-02T03:04:05.000Z".to_owned(),
            waiting_sha: Some("fedcba9876543210".to_owned()),
            approved_sha: Some("0123456789abcdef".to_owned()),
            approved_by: Some("<b>owner</b>".to_owned()),
            approved_at: Some("2026-01-02T03:04:05.000Z".to_owned()),
            approved_how: Some("label".to_owned()),
            report_error: Some(HOSTILE.to_owned()),
            report_error_key: None,
        }
    }

    /// A pull request title, a login, a label, an error and a unit's last error are shown as
    /// text, never as markup.
    #[test]
    fn hostile_text_is_escaped() {
        let html = page(&view(
            vec![pull(HOSTILE)],
            Ok(vec![row(Status::Ready), row(Status::Deleted)]),
        ))
        .into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.contains("<i>"), "{html}");
        assert!(
            html.contains(&format!(
                "<td>{ESCAPED}</td><td>mallory&quot;&gt;&lt;b&gt;</td>"
            )),
            "{html}"
        );
        assert!(
            html.contains("<td>fork, label:&lt;i&gt;x&lt;/i&gt;</td>"),
            "{html}"
        );
        assert!(
            html.contains(&format!(
                "<code title=\"{ESCAPED}\">worker:pulls:acme/shop</code>"
            )),
            "{html}"
        );
        assert!(
            html.contains(&format!(
                "<td>{ESCAPED}<span class=\"bad\">not reported: {ESCAPED}</span></td>"
            )),
            "{html}"
        );
    }

    /// The content and links the page has always had.
    #[test]
    fn the_page_shows_repositories_previews_and_pulls_with_their_links() {
        let html = page(&view(
            vec![pull("Add search")],
            Ok(vec![row(Status::Ready), row(Status::Deleted)]),
        ))
        .into_string();
        for part in [
            "<meta http-equiv=\"refresh\" content=\"10\">",
            "<p class=\"ok\">Ready: every preflight passed.</p>",
            "<p class=\"bad\">Degraded units: <code title=",
            "<tr><td>acme/shop</td><td>never</td><td>2026-01-02T03:04:05.000Z</td><td>1</td><td>4999 / 5000</td><td class=\"bad\">1</td></tr>",
            "<td class=\"ok\">ready</td><td><a href=\"http://shop-pr-7.preview.localhost\">http://shop-pr-7.preview.localhost</a></td><td><code>01234567</code></td>",
            "<td><code>01234567</code> by &lt;b&gt;owner&lt;/b&gt; (label, 2026-01-02T03:04:05.000Z)<br><span class=\"bad\"><code>fedcba98</code> waits for approval</span></td>",
            "<td><a href=\"/previews/acme/shop/7/logs?tail=200\">logs</a></td>",
            "<p class=\"muted\">1 removed previews are listed by <a href=\"/previews\">/previews</a>.</p>",
            "<tr><td>acme/shop</td><td>7</td><td>Add search</td>",
            "<td>fork, label:&lt;i&gt;x&lt;/i&gt;</td><td><a href=\"https://acme.slack.com/archives/C0123/p1700000000000100\">thread</a></td>",
        ] {
            assert!(html.contains(part), "no {part} in\n{html}");
        }
        assert_eq!(
            html.matches("<td>acme/shop</td><td>7</td>").count(),
            2,
            "{html}"
        );
    }

    #[test]
    fn previews_that_cannot_be_read_say_why() {
        let html = page(&view(vec![], Err("database locked".to_owned()))).into_string();
        assert!(
            html.contains("<th>logs</th></tr></table><p class=\"bad\">database locked</p>"),
            "{html}"
        );
    }

    fn build(id: i64, status: BuildStatus) -> Build {
        Build {
            id: BuildId(id),
            repo: "acme/shop".to_owned(),
            number: Some(12),
            spec: BuildSpec {
                issue: Some(12),
                ..BuildSpec::new("Add search\nand more")
            },
            status,
            attempts: 1,
            next_attempt_at: Default::default(),
            lease_owner: None,
            lease_until: None,
            cancel_requested: false,
            step: None,
            interruptions: 0,
            result: None,
            error: None,
            created_at: Default::default(),
            updated_at: Default::default(),
            finished_at: None,
        }
    }

    fn with_builds(builds: Result<Vec<Build>, String>) -> String {
        let mut view = view(vec![], Ok(vec![]));
        view.builds = Some(vec![RepositoryBuilds {
            repo: "acme/shop".to_owned(),
            builds,
        }]);
        page(&view).into_string()
    }

    /// Each kind of build as the section shows it: what must be there, and what must not. The
    /// prompt and the error are hostile (a page must not run them, a Slack-style `<!channel>`
    /// stays text), and so is a pull request URL that is not http(s).
    #[test]
    fn the_builds_section_shows_each_build_escaped_and_bounded() {
        let completed = Build {
            finished_at: Some(Default::default()),
            result: Some(BuildResult {
                success: true,
                duration_ms: 185_000,
                cost_usd: Some(0.4234),
                turns: Some(17),
                pr_number: Some(31),
                pr_url: Some("https://github.com/acme/shop/pull/31".to_owned()),
                preview_url: Some("http://shop-pr-31.preview.localhost".to_owned()),
                ..BuildResult::default()
            }),
            ..build(3, BuildStatus::Completed)
        };
        let hostile = Build {
            spec: BuildSpec {
                pull_request: Some(31),
                ..BuildSpec::new(format!("{HOSTILE} <!channel>\nsecond line"))
            },
            number: Some(31),
            error: Some(format!(
                "<!channel> {HOSTILE} {}\nsecond line",
                "x".repeat(400)
            )),
            result: Some(BuildResult {
                duration_ms: 4_000,
                pr_url: Some("javascript:alert(1)".to_owned()),
                preview_url: Some(" JavaScript:alert(2)".to_owned()),
                ..BuildResult::default()
            }),
            ..build(4, BuildStatus::Failed)
        };
        let running = Build {
            step: Some(Step::Agent),
            ..build(5, BuildStatus::Running)
        };
        let unnumbered = Build {
            number: None,
            spec: BuildSpec::new("From the API"),
            ..build(6, BuildStatus::Pending)
        };
        let cases: [(&str, Build, &[&str], &[&str]); 4] = [
            (
                "completed, with its links",
                completed,
                &[
                    "<tr><td>acme/shop</td><td>3</td><td>issue #12</td><td>Add search</td><td class=\"ok\">completed</td>",
                    "<td>3m 05s</td><td>$0.42</td><td>17</td><td><a href=\"https://github.com/acme/shop/pull/31\">#31</a></td>",
                    "<td><a href=\"http://shop-pr-31.preview.localhost\">http://shop-pr-31.preview.localhost</a></td>",
                    "<td><a href=\"/builds/3/log\">log</a></td><td class=\"bad\"></td></tr>",
                ],
                &["and more"],
            ),
            (
                "failed, hostile",
                hostile,
                &[
                    "<td>4</td><td>pull request #31</td><td>&lt;script&gt;alert('x')&lt;/script&gt; &amp; &quot;q&quot; &lt;!channel&gt;</td>",
                    "<td class=\"bad\">failed</td><td>4s</td><td></td><td></td><td></td><td></td>",
                    "<td class=\"bad\">&lt;!channel&gt; &lt;script&gt;alert('x')&lt;/script&gt; &amp; &quot;q&quot; xxx",
                    "xxx…</td></tr>",
                ],
                &[
                    "<script>",
                    "<!channel>",
                    "javascript:",
                    "JavaScript:",
                    "second line",
                    &"x".repeat(200),
                ],
            ),
            (
                "running, with its step",
                running,
                &[
                    "<td>5</td><td>issue #12</td><td>Add search</td><td class=\"muted\">running (agent)</td><td></td>",
                ],
                &[],
            ),
            (
                "pending, from the API without an issue",
                unnumbered,
                &["<td>6</td><td></td><td>From the API</td><td class=\"muted\">pending</td>"],
                &[],
            ),
        ];
        for (name, b, present, absent) in cases {
            let html = with_builds(Ok(vec![b]));
            assert!(html.contains("<h2>Builds</h2>"), "{name}: {html}");
            for part in present {
                assert!(html.contains(part), "{name}: no {part} in\n{html}");
            }
            for part in absent {
                assert!(!html.contains(part), "{name}: {part} in\n{html}");
            }
        }
    }

    #[test]
    fn builds_that_cannot_be_read_say_why_and_without_builds_there_is_no_section() {
        let html = with_builds(Err("database locked <b>".to_owned()));
        assert!(
            html.contains(
                "<tr><td>acme/shop</td><td class=\"bad\" colspan=\"11\">database locked &lt;b&gt;</td></tr>"
            ),
            "{html}"
        );
        let html = page(&view(vec![pull("Add search")], Ok(vec![]))).into_string();
        assert!(!html.contains("Builds"), "{html}");
        assert!(!html.contains("/builds/"), "{html}");
    }

    /// A traced run of the agent, written by `Traces` and read back as the dashboard reads it:
    /// its row, its trace link, newest first, the model's name as text; no section without runs.
    #[tokio::test]
    async fn the_agent_runs_section_lists_traced_runs_escaped_with_their_links() {
        use productbuilder_agent::RunTrace;
        let dir = tempfile::tempdir().unwrap();
        let store = productbuilder_store::Store::open(dir.path().join("db.sqlite")).unwrap();
        store.migrate().unwrap();
        let traces = Traces::new(store);
        let mut view = view(vec![], Ok(vec![]));

        view.agent_runs = Ok(traces.recent(LATEST_AGENT_RUNS).await.unwrap());
        let html = page(&view).into_string();
        assert!(!html.contains("Agent runs"), "{html}");
        assert!(!html.contains("/agent/runs/"), "{html}");

        let answered = RunTrace {
            repo: "acme/shop".to_owned(),
            channel: "C1".to_owned(),
            thread_ts: "1700000000.000100".to_owned(),
            specialist: Some("issue_creator".to_owned()),
            model: Some(HOSTILE.to_owned()),
            provider: Some("anthropic".to_owned()),
            fallback_used: false,
            tokens_in: 1200,
            tokens_out: 85,
            tokens_cache: 0,
            llm_calls: 3,
            latency_ms: 2_345,
            llm_latency_ms: 2_000,
            outcome: "answered".to_owned(),
            detail: None,
            steps: Vec::new(),
        };
        let failed = RunTrace {
            repo: "acme/<b>api</b>".to_owned(),
            specialist: None,
            model: None,
            provider: None,
            fallback_used: true,
            llm_calls: 1,
            tokens_in: 0,
            tokens_out: 0,
            latency_ms: 640,
            outcome: "failed".to_owned(),
            ..answered.clone()
        };
        // The same time for both (the epoch): the newer id comes first.
        let first = traces.record(&answered, Default::default()).await.unwrap();
        let second = traces.record(&failed, Default::default()).await.unwrap();
        view.agent_runs = Ok(traces.recent(LATEST_AGENT_RUNS).await.unwrap());
        let html = page(&view).into_string();

        assert!(html.contains("<h2>Agent runs</h2>"), "{html}");
        let first_row = format!(
            "<tr><td>1970-01-01T00:00:00.000Z</td><td>acme/shop</td><td>issue_creator</td>\
             <td class=\"ok\">answered</td><td>{ESCAPED} (anthropic)</td><td>3</td>\
             <td>1200 / 85</td><td>2.3s</td><td class=\"muted\">no</td>\
             <td><a href=\"/agent/runs/{0}\">run {0}</a></td></tr>",
            first.0
        );
        assert!(html.contains(&first_row), "no {first_row} in\n{html}");
        let second_row = format!(
            "<td>acme/&lt;b&gt;api&lt;/b&gt;</td><td></td><td class=\"bad\">failed</td><td></td>\
             <td>1</td><td>0 / 0</td><td>640ms</td><td class=\"bad\">yes</td>\
             <td><a href=\"/agent/runs/{0}\">run {0}</a></td></tr>",
            second.0
        );
        assert!(html.contains(&second_row), "no {second_row} in\n{html}");
        assert!(html.find(&second_row) < html.find(&first_row), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>"), "{html}");

        // The limit keeps the newest.
        let newest = traces.recent(1).await.unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].id, second.0);

        view.agent_runs = Err("database locked <b>".to_owned());
        let html = page(&view).into_string();
        assert!(
            html.contains(
                "<th>trace</th></tr></table><p class=\"bad\">database locked &lt;b&gt;</p>"
            ),
            "{html}"
        );
        assert_eq!(latency(999), "999ms");
        assert_eq!(latency(61_000), "1m 01s");
    }

    #[test]
    fn first_line_and_duration_are_bounded_and_readable() {
        assert_eq!(first_line("ab\ncd", 5), "ab");
        assert_eq!(first_line("héllo", 2), "hé…");
        assert_eq!(first_line("", 2), "");
        assert_eq!(duration(999), "0s");
        assert_eq!(duration(60_000), "1m 00s");
        assert_eq!(duration(3_725_000), "1h 02m");
        assert_eq!(web_link("HTTPS://x"), Some("HTTPS://x"));
        assert_eq!(web_link("javascript:x"), None);
        assert_eq!(web_link("//evil"), None);
    }
}
