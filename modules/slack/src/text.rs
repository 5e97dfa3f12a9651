//! Everything this module writes into Slack, as pure functions of what it knows: GitHub's text is
//! hostile (a title `<!channel>` must ping nobody, `<https://evil|click>` must link nowhere), so
//! every piece of it goes through [`escape`], and only links we build ourselves are live.

/// Slack's mrkdwn control characters, escaped as Slack asks: `&`, `<`, `>`. With these escaped no
/// `<!channel>`, `<@U…>`, `<#C…>` or `<url|label>` can be formed by the text.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// A live link `<url|label>`: the label escaped, and the URL only if it is a plain http(s) URL
/// (no `|`, `<`, `>` or whitespace that could end the link early); anything else is shown as text.
pub fn link(url: &str, label: &str) -> String {
    let plain = (url.starts_with("https://") || url.starts_with("http://"))
        && !url
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '|' | '<' | '>'));
    if plain {
        format!("<{url}|{}>", escape(label).replace('|', "¦"))
    } else {
        escape(label)
    }
}

/// How much of a GitHub body goes into one message before it is cut with a link to the rest.
pub const BODY_LIMIT: usize = 1500;

/// `body`, escaped, cut after [`BODY_LIMIT`] characters (never inside an escape) with a link to
/// the rest at `url`.
pub fn excerpt(body: &str, url: &str) -> String {
    let body = body.trim();
    if body.chars().count() <= BODY_LIMIT {
        return escape(body);
    }
    let cut: String = body.chars().take(BODY_LIMIT).collect();
    format!(
        "{}… ({})",
        escape(cut.trim_end()),
        link(url, "read the rest on GitHub")
    )
}

/// Whether an item is an issue or a pull request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Issue,
    Pull,
}

/// An issue's or pull request's state as far as Slack shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemState {
    Open,
    Closed,
    Merged,
}

/// What a thread is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub repo: String,
    pub number: u64,
    pub kind: Kind,
    pub title: String,
    pub author: String,
    pub state: ItemState,
    /// The item on GitHub's web pages.
    pub url: String,
}

impl Item {
    fn noun(&self) -> &'static str {
        match self.kind {
            Kind::Issue => "Issue",
            Kind::Pull => "Pull request",
        }
    }
}

/// The parent message: number, title, author, link; closed or merged said first once it is.
pub fn parent(item: &Item) -> String {
    let state = match item.state {
        ItemState::Open => "",
        ItemState::Closed => "[closed] ",
        ItemState::Merged => "[merged] ",
    };
    format!(
        "{state}*{} {}* {}: {} by {}",
        item.noun(),
        escape(&item.repo),
        link(&item.url, &format!("#{}", item.number)),
        escape(&item.title),
        escape(&item.author),
    )
}

/// A preview as the status line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewView {
    /// `building`, `ready`, `failed`, ... as the preview's row says.
    pub status: String,
    pub url: String,
    /// The failed stage and its error, when failed.
    pub stage: Option<String>,
    pub error: Option<String>,
}

/// An item's latest build (issue 11) as the thread shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildView {
    pub id: i64,
    /// `pending`, `running`, `completed`, `failed`, `cancelled`.
    pub status: String,
    pub pr_number: Option<u64>,
    pub pr_url: Option<String>,
    pub preview_url: Option<String>,
    pub error: Option<String>,
}

impl BuildView {
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

/// What a build's pull request is, as a link.
fn build_pull(b: &BuildView) -> Option<String> {
    match (&b.pr_url, b.pr_number) {
        (Some(url), Some(n)) => Some(link(url, &format!("pull request #{n}"))),
        (Some(url), None) => Some(link(url, "pull request")),
        _ => None,
    }
}

/// The status message: the item's state, for pull requests their preview, and the latest build
/// of the item. Edited in place whenever this text changes, so it holds only the latest state.
pub fn status(item: &Item, preview: Option<&PreviewView>, build: Option<&BuildView>) -> String {
    let state = match item.state {
        ItemState::Open => "open",
        ItemState::Closed => "closed",
        ItemState::Merged => "merged",
    };
    let mut text = format!("Status: {state}");
    if item.kind == Kind::Pull && item.state == ItemState::Open {
        match preview {
            None => text.push_str(" · no preview"),
            Some(p) => {
                text.push_str(&format!(" · preview {}", escape(&p.status)));
                if p.status == "ready" {
                    text.push_str(&format!(": {}", link(&p.url, &p.url)));
                }
                if let Some(stage) = &p.stage {
                    text.push_str(&format!(" at {}", escape(stage)));
                }
                if let Some(error) = &p.error {
                    text.push_str(&format!(": {}", escape(&first_line(error))));
                }
            }
        }
    }
    if let Some(b) = build {
        text.push_str(&format!(" · build {}", escape(&b.status)));
        if let Some(pull) = build_pull(b) {
            text.push_str(&format!(": {pull}"));
        }
        if let Some(url) = &b.preview_url {
            text.push_str(&format!(", preview {}", link(url, url)));
        }
        if b.status != "completed"
            && let Some(error) = &b.error
        {
            text.push_str(&format!(" ({})", escape(&first_line(error))));
        }
    }
    text
}

/// The event line when a build ended (appended once: it must not be overwritten).
pub fn build_ended(b: &BuildView) -> String {
    let mut text = format!("Build {} {}", b.id, escape(&b.status));
    if let Some(pull) = build_pull(b) {
        text.push_str(&format!(": {pull}"));
    }
    if b.status != "completed"
        && let Some(error) = &b.error
    {
        text.push_str(&format!(" — {}", escape(&first_line(error))));
    }
    text
}

/// A person's GitHub comment, for the event lane.
pub fn comment(author: &str, body: &str, url: &str) -> String {
    format!(
        "*{}* {}:\n{}",
        escape(author),
        link(url, "commented"),
        excerpt(body, url)
    )
}

/// The last line of a thread whose item was closed or merged.
pub fn closing(item: &Item) -> String {
    match item.state {
        ItemState::Merged => format!(
            "{} was merged.",
            link(&item.url, &format!("#{}", item.number))
        ),
        _ => format!(
            "{} was closed.",
            link(&item.url, &format!("#{}", item.number))
        ),
    }
}

/// The web link of a message: `{workspace}archives/{channel}/p{ts without the dot}`, as Slack's
/// "copy link" gives it.
pub fn permalink(workspace_url: &str, channel: &str, ts: &str) -> String {
    format!(
        "{}/archives/{channel}/p{}",
        workspace_url.trim_end_matches('/'),
        ts.replace('.', "")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_permalink_is_what_slack_copies() {
        assert_eq!(
            super::permalink("https://acme.slack.com/", "C0123", "1700000000.000100"),
            "https://acme.slack.com/archives/C0123/p1700000000000100"
        );
    }

    use super::*;

    fn item(title: &str) -> Item {
        Item {
            repo: "acme/shop".into(),
            number: 7,
            kind: Kind::Pull,
            title: title.into(),
            author: "mallory".into(),
            state: ItemState::Open,
            url: "https://github.com/acme/shop/pull/7".into(),
        }
    }

    #[test]
    fn a_hostile_title_pings_nobody_and_links_nowhere() {
        let text = parent(&item("<!channel> <https://evil|click> & <@U123>"));
        assert_eq!(
            text,
            "*Pull request acme/shop* <https://github.com/acme/shop/pull/7|#7>: &lt;!channel&gt; &lt;https://evil|click&gt; &amp; &lt;@U123&gt; by mallory"
        );
        // The only `<` left is our own link.
        assert_eq!(text.matches('<').count(), 1);
    }

    #[test]
    fn a_link_with_a_hostile_url_is_shown_as_text() {
        assert_eq!(link("https://a|b", "x"), "x");
        assert_eq!(link("javascript:alert(1)", "x"), "x");
        assert_eq!(
            link("https://ok.example/a", "<b>|c"),
            "<https://ok.example/a|&lt;b&gt;¦c>"
        );
    }

    #[test]
    fn a_long_body_is_cut_with_a_link_and_never_inside_an_escape() {
        let body = format!("{}<<<<", "a".repeat(BODY_LIMIT - 2));
        let text = excerpt(&body, "https://github.com/acme/shop/pull/7#c1");
        assert!(text.starts_with(&"a".repeat(BODY_LIMIT - 2)));
        assert!(text.contains("&lt;&lt;…"), "{text}");
        assert!(
            text.ends_with("(<https://github.com/acme/shop/pull/7#c1|read the rest on GitHub>)")
        );
        assert_eq!(excerpt("short <b>", "https://x"), "short &lt;b&gt;");
    }

    #[test]
    fn the_status_shows_the_preview_url_when_ready_and_the_stage_when_failed() {
        let pull = item("t");
        let ready = PreviewView {
            status: "ready".into(),
            url: "https://pr-7.previews.example".into(),
            stage: None,
            error: None,
        };
        assert_eq!(
            status(&pull, Some(&ready), None),
            "Status: open · preview ready: <https://pr-7.previews.example|https://pr-7.previews.example>"
        );
        let failed = PreviewView {
            status: "failed".into(),
            url: String::new(),
            stage: Some("build".into()),
            error: Some("exit 1: <!here>\nmore".into()),
        };
        assert_eq!(
            status(&pull, Some(&failed), None),
            "Status: open · preview failed at build: exit 1: &lt;!here&gt;"
        );
        assert_eq!(status(&pull, None, None), "Status: open · no preview");
        let merged = Item {
            state: ItemState::Merged,
            ..pull
        };
        assert_eq!(status(&merged, Some(&ready), None), "Status: merged");
        assert!(parent(&merged).starts_with("[merged] "));
        assert_eq!(
            closing(&merged),
            "<https://github.com/acme/shop/pull/7|#7> was merged."
        );
    }

    #[test]
    fn a_comment_names_its_author_escaped() {
        assert_eq!(
            comment("eve<!channel>", "hi & bye", "https://github.com/c/1"),
            "*eve&lt;!channel&gt;* <https://github.com/c/1|commented>:\nhi &amp; bye"
        );
    }
}
