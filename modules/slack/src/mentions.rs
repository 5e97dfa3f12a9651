//! What a mention of the bot gets as an answer (until the agent exists, and whenever `[llm]` is
//! absent): pure, from the message and what the daemon knows. The answer goes into the thread of
//! the message that mentioned it.

use crate::text::{escape, link};

/// A Slack message, as far as deciding on it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention<'a> {
    pub text: &'a str,
    /// The sender's user id; `None` for bots and integrations.
    pub user: Option<&'a str>,
    /// Set when a bot (this one included) posted it.
    pub bot_id: Option<&'a str>,
}

/// An open pull request and its preview, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPull {
    pub number: u64,
    pub title: String,
    pub url: String,
    /// The preview's status and URL, if it has one.
    pub preview: Option<(String, String)>,
}

/// What the channel a mention came from is to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel<'a> {
    /// A tenant's channel: its repository and open pull requests.
    Tenant {
        repo: &'a str,
        pulls: &'a [OpenPull],
    },
    /// A channel no tenant uses.
    Unknown { id: &'a str },
}

/// What the bot was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Status,
    Help,
}

/// The command in a message that mentions `bot_user` (`<@U…> status`: the first word after it); `None` when the message
/// does not mention it, or a bot sent it (never answer bots: this one would answer itself).
pub fn command(message: &Mention<'_>, bot_user: &str) -> Option<Command> {
    if message.bot_id.is_some() || message.user.is_none() || message.user == Some(bot_user) {
        return None;
    }
    let tag = format!("<@{bot_user}>");
    // The command is the first word after the mention ("hey <@U…> status").
    let (_, rest) = message.text.split_once(&tag)?;
    let word = rest
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    Some(
        match word.trim_matches(|c: char| !c.is_ascii_alphanumeric()) {
            "status" => Command::Status,
            _ => Command::Help,
        },
    )
}

/// The command when the message is nothing but the mention and `status` or `help` (the
/// contract's commands, answered without a model also when the agent answers everything else).
pub fn bare_command(message: &Mention<'_>, bot_user: &str) -> Option<Command> {
    let command = command(message, bot_user)?;
    let tag = format!("<@{bot_user}>");
    let (before, rest) = message.text.split_once(&tag)?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let bare = before.trim().is_empty()
        && words.len() == 1
        && matches!(
            words[0]
                .trim_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_ascii_lowercase()
                .as_str(),
            "status" | "help"
        );
    bare.then_some(command)
}

/// The answer to `command` in `channel`.
pub fn answer(command: Command, channel: &Channel<'_>) -> String {
    match (channel, command) {
        (Channel::Unknown { id }, _) => format!(
            "This channel is not connected to a repository. To connect it, add `slack_channel = \"{}\"` to the repository's tenant file and restart productbuilder.",
            escape(id)
        ),
        (Channel::Tenant { repo, .. }, Command::Help) => format!(
            "I follow {} here: one thread per issue and pull request. Mention me with:\n• `status`: the open pull requests and their previews\n• `help`: this message",
            escape(repo)
        ),
        (Channel::Tenant { repo, pulls: [] }, Command::Status) => {
            format!("No open pull requests in {}.", escape(repo))
        }
        (Channel::Tenant { repo, pulls }, Command::Status) => {
            let mut text = format!("Open pull requests in {}:", escape(repo));
            for p in *pulls {
                let preview = match &p.preview {
                    None => "no preview".to_owned(),
                    Some((status, url)) if status == "ready" => {
                        format!("preview ready: {}", link(url, url))
                    }
                    Some((status, _)) => format!("preview {}", escape(status)),
                };
                text.push_str(&format!(
                    "\n• {} {} · {preview}",
                    link(&p.url, &format!("#{}", p.number)),
                    escape(&p.title)
                ));
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: &str = "UBOT";

    fn from(user: &str, text: &'static str) -> Mention<'static> {
        Mention {
            text,
            user: Some(Box::leak(user.to_owned().into_boxed_str())),
            bot_id: None,
        }
    }

    #[test]
    fn status_help_and_anything_else() {
        assert_eq!(
            command(&from("U1", "<@UBOT> status"), BOT),
            Some(Command::Status)
        );
        assert_eq!(
            command(&from("U1", "hey <@UBOT>  STATUS?"), BOT),
            Some(Command::Status)
        );
        assert_eq!(
            command(&from("U1", "<@UBOT> help"), BOT),
            Some(Command::Help)
        );
        assert_eq!(
            command(&from("U1", "<@UBOT> deploy all"), BOT),
            Some(Command::Help)
        );
        assert_eq!(command(&from("U1", "<@UBOT>"), BOT), Some(Command::Help));
    }

    #[test]
    fn only_a_bare_status_or_help_is_a_command_beside_the_agent() {
        for (text, bare) in [
            ("<@UBOT> status", Some(Command::Status)),
            ("<@UBOT>  Status?", Some(Command::Status)),
            ("<@UBOT> help", Some(Command::Help)),
            ("<@UBOT> status of #12", None),
            ("<@UBOT> what's the status of #12", None),
            ("hey <@UBOT> status", None),
            ("<@UBOT>", None),
            ("<@UBOT> file a bug", None),
        ] {
            assert_eq!(bare_command(&from("U1", text), BOT), bare, "{text}");
        }
    }

    #[test]
    fn no_mention_a_bot_or_itself_gets_no_answer() {
        assert_eq!(command(&from("U1", "status"), BOT), None);
        assert_eq!(command(&from("U1", "<@UOTHER> status"), BOT), None);
        assert_eq!(
            command(&from("U1", "@UBOT status"), BOT),
            None,
            "plain text is no mention"
        );
        assert_eq!(command(&from(BOT, "<@UBOT> status"), BOT), None);
        let bot = Mention {
            text: "<@UBOT> status",
            user: Some("U2"),
            bot_id: Some("B2"),
        };
        assert_eq!(command(&bot, BOT), None);
    }

    #[test]
    fn status_lists_open_pulls_with_their_previews_escaped() {
        let pulls = [
            OpenPull {
                number: 7,
                title: "<!channel> cart".into(),
                url: "https://github.com/acme/shop/pull/7".into(),
                preview: Some(("ready".into(), "https://pr-7.example".into())),
            },
            OpenPull {
                number: 8,
                title: "docs".into(),
                url: "https://github.com/acme/shop/pull/8".into(),
                preview: None,
            },
        ];
        let text = answer(
            Command::Status,
            &Channel::Tenant {
                repo: "acme/shop",
                pulls: &pulls,
            },
        );
        assert_eq!(
            text,
            "Open pull requests in acme/shop:\n• <https://github.com/acme/shop/pull/7|#7> &lt;!channel&gt; cart · preview ready: <https://pr-7.example|https://pr-7.example>\n• <https://github.com/acme/shop/pull/8|#8> docs · no preview"
        );
        assert_eq!(
            answer(
                Command::Status,
                &Channel::Tenant {
                    repo: "acme/shop",
                    pulls: &[]
                }
            ),
            "No open pull requests in acme/shop."
        );
    }

    #[test]
    fn a_channel_no_tenant_uses_is_told_how_to_connect_it_and_nothing_else() {
        for command in [Command::Status, Command::Help] {
            let text = answer(command, &Channel::Unknown { id: "C999" });
            assert!(text.contains("slack_channel = \"C999\""), "{text}");
            assert!(!text.contains("acme"), "no tenant's data leaks: {text}");
        }
    }
}
