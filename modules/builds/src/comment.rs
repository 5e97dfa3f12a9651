//! The build comment on the issue (pure): one per issue, found by its marker and edited in place
//! at the start, at each step and at the end.
//!
//! What the agent printed (progress, its summary, an error quoting it) is hostile text: it goes
//! between fences it cannot close (no mention, link or markup of it is rendered), cut to a bound.
//! The caller redacts it first.

use crate::forge::BUILD_COMMENT_MARKER;
use crate::prompt::{cut, fenced};
use crate::records::BuildId;

/// Progress lines shown: the last ones.
pub const MAX_PROGRESS_LINES: usize = 10;
/// The error or summary shown is cut at this many bytes.
pub const MAX_DETAIL_BYTES: usize = 2000;

/// What the comment shows.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub id: BuildId,
    /// `running`, `completed`, `failed`, `cancelled`.
    pub status: &'a str,
    /// The step in progress, while running.
    pub step: Option<&'a str>,
    pub branch: Option<&'a str>,
    /// The pull request: number, address, draft.
    pub pr: Option<(u64, &'a str, bool)>,
    /// The newest last (redacted).
    pub progress: &'a [String],
    /// Why it failed, or what is missing (redacted).
    pub detail: Option<&'a str>,
    /// The preview of its pull request, once ready.
    pub preview: Option<&'a str>,
}

/// The comment's body, starting with the marker.
pub fn body(v: View<'_>) -> String {
    let mut out = format!(
        "{BUILD_COMMENT_MARKER}\n**productbuilder build {}**: {}",
        v.id, v.status
    );
    if let Some(step) = v.step {
        out.push_str(&format!(" (step: {step})"));
    }
    out.push('\n');
    if let Some(branch) = v.branch {
        out.push_str(&format!("\nBranch: `{branch}`\n"));
    }
    if let Some((number, url, draft)) = v.pr {
        let kind = if draft {
            "Draft pull request"
        } else {
            "Pull request"
        };
        out.push_str(&format!("\n{kind}: #{number} ({url})\n"));
    }
    if let Some(preview) = v.preview {
        out.push_str(&format!("\nPreview: {preview}\n"));
    }
    if let Some(detail) = v.detail {
        out.push('\n');
        out.push_str(&fenced(&cut(detail, MAX_DETAIL_BYTES)));
    }
    if !v.progress.is_empty() {
        let from = v.progress.len().saturating_sub(MAX_PROGRESS_LINES);
        out.push_str("\nLatest steps of the agent:\n");
        out.push_str(&fenced(&v.progress[from..].join("\n")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_progress_stays_inside_its_fence_and_is_bounded() {
        let progress: Vec<String> = (0..30)
            .map(|i| format!("line {i} ``` @admin [x](https://evil)"))
            .collect();
        let detail = "d".repeat(10_000);
        let text = body(View {
            id: BuildId(4),
            status: "failed",
            step: None,
            branch: Some("productbuilder/issue-7"),
            pr: Some((12, "https://github.com/o/r/pull/12", true)),
            progress: &progress,
            detail: Some(&detail),
            preview: None,
        });
        assert!(text.starts_with(BUILD_COMMENT_MARKER));
        assert!(text.contains("**productbuilder build 4**: failed"));
        assert!(text.contains("Draft pull request: #12 (https://github.com/o/r/pull/12)"));
        assert!(!text.contains("line 19 "), "only the last lines");
        assert!(text.contains("````text\nline 20"), "{text}");
        assert!(text.len() < 5000, "{}", text.len());
    }
}
