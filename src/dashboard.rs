//! `GET /`: a read-only page for operators, rendered on the server, refreshing itself, with no
//! JavaScript. Everything shown that came from GitHub (titles, logins, labels) is escaped.

use std::fmt::Write as _;

use productbuilder_github::{GithubState, Pull};
use productbuilder_preview::Previews;
use productbuilder_preview::state::Status;
use productbuilder_scheduler::StatusBoard;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}\
th{background:#f5f5f5}.bad{color:#b00020}.ok{color:#1b7f3b}.muted{color:#777}code{font-size:12px}";

/// Renders the page.
pub async fn render(
    board: &StatusBoard,
    github: &GithubState,
    previews: &Previews,
    tenants: &[String],
) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"10\">\
         <title>productbuilder</title><style>{STYLE}</style></head><body><h1>productbuilder <span class=\"muted\">{}</span></h1>",
        env!("CARGO_PKG_VERSION")
    );
    let degraded: Vec<String> = board.degraded().map(|u| u.name().to_owned()).collect();
    if board.preflights_passed() {
        html.push_str("<p class=\"ok\">Ready: every preflight passed.</p>");
    } else {
        html.push_str("<p class=\"bad\">Starting: preflights are still running.</p>");
    }
    if !degraded.is_empty() {
        let _ = write!(html, "<p class=\"bad\">Degraded units: ");
        for (i, name) in degraded.iter().enumerate() {
            let sep = if i > 0 { ", " } else { "" };
            let error = board
                .unit(name)
                .and_then(|u| u.last_error())
                .unwrap_or_default();
            let _ = write!(
                html,
                "{sep}<code title=\"{}\">{}</code>",
                escape(&error),
                escape(name)
            );
        }
        html.push_str("</p>");
    }

    let waiting = board.degraded_tenants();
    if !waiting.is_empty() {
        html.push_str(
            "<p class=\"bad\">Repositories waiting (a preflight fails; retried with backoff while the others run): ",
        );
        for (i, t) in waiting.iter().enumerate() {
            let sep = if i > 0 { "; " } else { "" };
            let _ = write!(
                html,
                "{sep}<code>{}</code>: {}",
                escape(t.tenant.as_str()),
                escape(&t.reason)
            );
        }
        html.push_str("</p>");
    }

    let polls = github.poll_states().await.unwrap_or_default();
    html.push_str(
        "<h2>Repositories</h2><table><tr><th>repository</th><th>last poll</th><th>last change</th>\
         <th>open pull requests</th><th>GitHub quota left</th><th>units degraded</th></tr>",
    );
    let mut open_by_repo = Vec::new();
    for repo in tenants {
        let poll = polls.iter().find(|p| &p.repo == repo);
        let pulls = github.open_pulls(repo).await.unwrap_or_default();
        let quota = match github.client.budget_for(repo) {
            Some(b) => match (b.remaining, b.limit) {
                (Some(r), Some(l)) => format!("{r} / {l}"),
                _ => "unknown".to_owned(),
            },
            None => "not used yet".to_owned(),
        };
        let bad = board.group(repo).filter(|u| u.is_degraded()).count();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{bad}</td></tr>",
            escape(repo),
            escape(
                poll.and_then(|p| p.last_poll_at.as_deref())
                    .unwrap_or("never")
            ),
            escape(
                poll.and_then(|p| p.last_change_at.as_deref())
                    .unwrap_or("never")
            ),
            pulls.len(),
            escape(&quota),
            if bad > 0 { "bad" } else { "ok" },
        );
        open_by_repo.push((repo, pulls));
    }
    html.push_str("</table>");

    previews_table(&mut html, previews).await;

    html.push_str(
        "<h2>Open pull requests</h2><table><tr><th>repository</th><th>#</th><th>title</th><th>author</th>\
         <th>head</th><th>head seen</th><th>flags</th></tr>",
    );
    for (repo, pulls) in &open_by_repo {
        for p in pulls {
            pull_row(&mut html, repo, p);
        }
    }
    html.push_str("</table></body></html>");
    html
}

async fn previews_table(html: &mut String, previews: &Previews) {
    html.push_str(
        "<h2>Previews</h2><table><tr><th>repository</th><th>#</th><th>status</th><th>link</th>\
         <th>head</th><th>approval</th><th>failed at</th><th>error</th><th>updated</th><th>logs</th></tr>",
    );
    let rows = match previews.list().await {
        Ok(rows) => rows,
        Err(e) => {
            let _ = write!(
                html,
                "</table><p class=\"bad\">{}</p>",
                escape(&e.to_string())
            );
            return;
        }
    };
    for r in rows.iter().filter(|r| r.status != Status::Deleted) {
        let class = match r.status {
            Status::Ready => "ok",
            Status::Failed => "bad",
            _ => "muted",
        };
        let link = if r.status == Status::Ready {
            format!("<a href=\"{0}\">{0}</a>", escape(&r.url))
        } else {
            escape(&r.url)
        };
        // The first line of the error: the whole text is in the pull request comment.
        let mut error = escape(
            r.error
                .as_deref()
                .and_then(|e| e.lines().next())
                .unwrap_or(""),
        );
        // A report GitHub refused for good: the operator has to act (a token, a permission).
        if let Some(refused) = &r.report_error {
            let _ = write!(
                error,
                "<span class=\"bad\">not reported: {}</span>",
                escape(refused)
            );
        }
        let _ = write!(
            html,
            "<tr><td>{repo}</td><td>{n}</td><td class=\"{class}\">{status}</td><td>{link}</td><td><code>{sha}</code></td>\
             <td>{approval}</td><td>{stage}</td><td>{error}</td><td>{updated}</td><td><a href=\"/previews/{repo}/{n}/logs?tail=200\">logs</a></td></tr>",
            repo = escape(&r.repo),
            n = r.number,
            status = r.status,
            sha = escape(r.head_sha.get(..8).unwrap_or(&r.head_sha)),
            approval = approval(r),
            stage = r.stage.map(|s| s.as_str()).unwrap_or(""),
            updated = escape(&r.updated_at),
        );
    }
    let removed = rows.iter().filter(|r| r.status == Status::Deleted).count();
    let _ = write!(
        html,
        "</table><p class=\"muted\">{removed} removed previews are listed by <a href=\"/previews\">/previews</a>.</p>"
    );
}

/// Who approved which commit (forks, and `require_label`), and the commit waiting, if any.
fn approval(r: &productbuilder_preview::db::PreviewRow) -> String {
    let short = |s: &str| escape(s.get(..8).unwrap_or(s));
    let mut out = String::new();
    if let (Some(sha), Some(by)) = (&r.approved_sha, &r.approved_by) {
        let _ = write!(
            out,
            "<code>{}</code> by {} ({}, {})",
            short(sha),
            escape(by),
            escape(r.approved_how.as_deref().unwrap_or("")),
            escape(r.approved_at.as_deref().unwrap_or("")),
        );
    }
    if let Some(waiting) = &r.waiting_sha {
        let _ = write!(
            out,
            "{}<span class=\"bad\"><code>{}</code> waits for approval</span>",
            if out.is_empty() { "" } else { "<br>" },
            short(waiting)
        );
    }
    out
}

fn pull_row(html: &mut String, repo: &str, p: &Pull) {
    let mut flags = Vec::new();
    if p.fork {
        flags.push("fork".to_owned());
    }
    if p.draft {
        flags.push("draft".to_owned());
    }
    flags.extend(p.labels.iter().map(|l| format!("label:{l}")));
    let short = p.head_sha.get(..8).unwrap_or(&p.head_sha);
    let _ = write!(
        html,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
        escape(repo),
        p.number,
        escape(&p.title),
        escape(&p.author),
        escape(short),
        escape(&p.seen_at),
        escape(&flags.join(", ")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\"\u{7}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
