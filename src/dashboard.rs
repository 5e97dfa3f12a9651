//! `GET /`: a read-only page for operators, rendered on the server, refreshing itself, with no
//! JavaScript. Written with maud, so everything shown that came from GitHub (titles, logins,
//! labels) or from a repository (errors) is escaped by construction: only [`STYLE`] is inserted
//! unescaped.
//!
//! [`View::read`] gathers what the page shows (the database, the status board, the budgets);
//! [`page`] is pure, so the page is tested without a daemon.

use maud::{DOCTYPE, Markup, PreEscaped, html};
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
        View {
            preflights_passed: board.preflights_passed(),
            degraded,
            waiting,
            repositories,
            previews: previews.list().await.map_err(|e| e.to_string()),
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
) -> String {
    page(&View::read(board, github, previews, tenants, slack).await).into_string()
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
}
