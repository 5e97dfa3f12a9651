//! The text of the one pull request comment a preview owns (the marker line is added by
//! `MarkerComments`). Everything in it that came from the pull request (the error output of its
//! build, its `user_facing_note`) is fenced or neutralised, so it cannot ping people, inject HTML or
//! break out of its block.

use crate::state::{Stage, Status};

/// What the comment says.
#[derive(Debug, Clone)]
pub struct CommentView<'a> {
    pub status: Status,
    pub head_sha: &'a str,
    /// The commit's page, e.g. `https://github.com/acme/shop/commit/{sha}`.
    pub commit_url: Option<&'a str>,
    pub preview_url: Option<&'a str>,
    pub logs_url: Option<&'a str>,
    pub stage: Option<Stage>,
    pub error: Option<&'a str>,
    pub log_tail: Option<&'a str>,
    pub note: Option<&'a str>,
    /// Extra lines from productbuilder itself (eviction, policy warnings).
    pub notices: &'a [String],
    /// A newer head commit that waits for a writer's approval (the preview stays at `head_sha`).
    pub waiting_sha: Option<&'a str>,
}

/// Text from the pull request, made inert for one markdown line: no mentions, no HTML, no links.
pub fn inline(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('@', "@\u{200b}")
        .replace('[', "\\[")
        .replace(']', "\\]")
}

/// A fenced block that the text cannot close: the fence is longer than any backtick run inside.
pub fn fenced(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    let body: String = lines[start..]
        .iter()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n");
    let longest = body.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}text\n{body}\n{fence}")
}

/// Renders the comment body (without the marker line).
pub fn render(v: &CommentView<'_>) -> String {
    let short = v.head_sha.get(..8).unwrap_or(v.head_sha);
    let title = match v.status {
        Status::Pending => "Preview queued",
        Status::Building => "Preview building",
        Status::Deploying => "Preview deploying",
        Status::Ready => "Preview ready",
        Status::Failed => "Preview failed",
        Status::Deleted => "Preview removed",
    };
    let mut out = format!("### {title}\n\n");
    match v.commit_url {
        Some(url) => out.push_str(&format!("Commit [`{short}`]({url})\n")),
        None => out.push_str(&format!("Commit `{short}`\n")),
    }
    if let Some(stage) = v.stage
        && matches!(v.status, Status::Building | Status::Deploying)
    {
        out.push_str(&format!("\nNow: `{stage}`\n"));
    }
    if v.status == Status::Ready
        && let Some(url) = v.preview_url
    {
        out.push_str(&format!("\n**[{url}]({url})**"));
        if let Some(logs) = v.logs_url {
            out.push_str(&format!(" · [logs]({logs})"));
        }
        out.push('\n');
    }
    if v.status == Status::Failed {
        let stage = v.stage.map_or("unknown".to_owned(), |s| s.to_string());
        out.push_str(&format!("\nFailed at `{stage}`:\n\n"));
        out.push_str(&fenced(v.error.unwrap_or("no error message"), 40));
        out.push('\n');
        if let Some(tail) = v.log_tail.filter(|t| !t.trim().is_empty()) {
            out.push_str("\n<details><summary>Last lines of output</summary>\n\n");
            out.push_str(&fenced(tail, 60));
            out.push_str("\n\n</details>\n");
        }
        out.push_str("\nPush a commit to try again.\n");
    }
    if let Some(note) = v.note.filter(|n| !n.trim().is_empty())
        && v.status != Status::Deleted
    {
        out.push_str(&format!("\n> **Note:** {}\n", inline(note)));
    }
    if let Some(waiting) = v.waiting_sha
        && v.status != Status::Deleted
    {
        let short = waiting.get(..8).unwrap_or(waiting);
        // The sha is hex from GitHub's API; `inline` keeps it inert anyway.
        out.push_str(&format!(
            "\n**Commit `{}` waits for approval.** This preview stays at `{}` until someone with write access to the repository comments `{}` on this pull request.\n",
            inline(short),
            inline(v.head_sha.get(..8).unwrap_or(v.head_sha)),
            crate::consent::APPROVE_COMMAND,
        ));
    }
    for notice in v.notices {
        out.push_str(&format!("\n{}\n", inline(notice)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(status: Status) -> CommentView<'static> {
        CommentView {
            status,
            head_sha: "0123456789abcdef0123456789abcdef01234567",
            commit_url: Some(
                "https://github.com/acme/shop/commit/0123456789abcdef0123456789abcdef01234567",
            ),
            preview_url: Some("https://shop-pr-4.preview.example.com"),
            logs_url: Some("https://pb.example.com/previews/acme/shop/4/logs"),
            stage: None,
            error: None,
            log_tail: None,
            note: None,
            notices: &[],
            waiting_sha: None,
        }
    }

    #[test]
    fn a_waiting_commit_is_named_with_how_to_approve_it() {
        let mut v = view(Status::Ready);
        assert!(!render(&v).contains("waits for approval"));
        v.waiting_sha = Some("fedcba9876543210fedcba9876543210fedcba98");
        let text = render(&v);
        assert!(
            text.contains("**Commit `fedcba98` waits for approval.** This preview stays at `01234567` until someone with write access to the repository comments `/preview approve` on this pull request."),
            "{text}"
        );
        // The command is never the first line: the daemon's own comment cannot approve.
        assert!(!crate::consent::is_approve_command(&text));
    }

    #[test]
    fn ready_shows_the_link_and_the_sha() {
        let text = render(&view(Status::Ready));
        assert!(text.starts_with("### Preview ready\n"));
        assert!(text.contains("Commit [`01234567`](https://github.com/acme/shop/commit/"));
        assert!(text.contains("**[https://shop-pr-4.preview.example.com](https://shop-pr-4.preview.example.com)** · [logs]("));
    }

    #[test]
    fn a_failure_names_the_stage_and_fences_hostile_output() {
        let tail = "line\n".repeat(200);
        let mut v = view(Status::Failed);
        v.stage = Some(Stage::Build);
        v.error = Some("step 3 failed\n```\n@everyone <img src=x onerror=alert(1)>");
        v.log_tail = Some(&tail);
        let text = render(&v);
        assert!(text.contains("Failed at `build`:"));
        // The fence is longer than the backticks inside, so the output cannot close it.
        assert!(
            text.contains("````text\nstep 3 failed\n```\n@everyone"),
            "{text}"
        );
        assert_eq!(text.matches("line\n").count(), 60, "only the tail");
        assert!(
            !text.contains("https://shop-pr-4"),
            "no link to a failed preview"
        );
        assert!(text.ends_with("Push a commit to try again.\n"), "{text}");
    }

    #[test]
    fn the_note_cannot_mention_link_or_inject_html() {
        let mut v = view(Status::Ready);
        v.note = Some("Login admin/secret @team <script>x</script> [click](https://evil)");
        let text = render(&v);
        assert!(text.contains("> **Note:** Login admin/secret @\u{200b}team &lt;script&gt;x&lt;/script&gt; \\[click\\](https://evil)"), "{text}");
        v.status = Status::Deleted;
        assert!(!render(&v).contains("Note"));
    }
}
