//! Which labels and comments may start a build: pure, from the poller's rows and what the
//! triggers worker recorded. Who gave them (a writer or not) is asked of GitHub afterwards.

use std::collections::{BTreeMap, BTreeSet};

/// The word every command starts with.
pub const PREFIX: &str = "/productbuilder";

/// A command in a comment's first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/productbuilder implement [what]`: on an issue, a new branch and pull request; on a pull
    /// request, more commits on its branch.
    Implement { note: String },
    /// `/productbuilder continue [what]`: on a build's pull request, go on from where it stopped.
    Continue { note: String },
}

/// The command of a comment: its first line, `/productbuilder implement` or `continue`, then
/// anything (the note, at most one line). Anything else, including the words further down the
/// comment or a quoted command (`> /productbuilder …`), is no command.
pub fn command(body: &str) -> Option<Command> {
    let first = body.lines().next()?.trim();
    let rest = first.strip_prefix(PREFIX)?;
    // `/productbuilderx` is not the command.
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    let mut words = rest.trim_start().splitn(2, char::is_whitespace);
    let verb = words.next().unwrap_or("");
    let note = words.next().unwrap_or("").trim().to_owned();
    match verb {
        "implement" => Some(Command::Implement { note }),
        "continue" => Some(Command::Continue { note }),
        _ => None,
    }
}

/// An issue or pull request as the poller stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub number: u64,
    pub is_pull: bool,
    pub open: bool,
    pub labels: Vec<String>,
    /// RFC 3339, UTC (GitHub's `updated_at`; a label added moves it).
    pub updated_at: String,
}

/// A comment as the poller stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub id: u64,
    pub number: u64,
    pub author: String,
    pub body: String,
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// What the worker knows already.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The sources recorded in `build_triggers` (`label:{id}`, `comment:{id}`).
    pub sources: BTreeSet<String>,
    /// Labelled issues whose events were read at this `updated_at` (kept in memory): read again
    /// only when the issue changed, so a label that stays costs no call per pass.
    pub events_read: BTreeMap<u64, String>,
}

/// What may start a build, before asking who gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    /// An open issue carries the builds label: its events say who added it, and which event.
    Labelled { number: u64, updated_at: String },
    /// A comment with a command, not recorded yet.
    Commented {
        number: u64,
        id: u64,
        author: String,
        created_at: String,
        command: Command,
        on_pull: bool,
    },
}

/// The candidates among `items` and `comments`, oldest comment first. `own_login` (the daemon's
/// GitHub identity, when known) never triggers anything: its own comments quote the commands.
pub fn candidates(
    items: &[Item],
    comments: &[Comment],
    seen: &Seen,
    label: &str,
    own_login: Option<&str>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for item in items {
        let labelled = item.labels.iter().any(|l| l.eq_ignore_ascii_case(label));
        let fresh = seen.events_read.get(&item.number) != Some(&item.updated_at);
        if item.open && !item.is_pull && labelled && fresh {
            out.push(Candidate::Labelled {
                number: item.number,
                updated_at: item.updated_at.clone(),
            });
        }
    }
    let pulls: BTreeSet<u64> = items
        .iter()
        .filter(|i| i.is_pull)
        .map(|i| i.number)
        .collect();
    let open: BTreeSet<u64> = items.iter().filter(|i| i.open).map(|i| i.number).collect();
    let mut commented: Vec<&Comment> = comments
        .iter()
        .filter(|c| !seen.sources.contains(&format!("comment:{}", c.id)))
        .filter(|c| own_login.is_none_or(|me| !c.author.eq_ignore_ascii_case(me)))
        .filter(|c| open.contains(&c.number))
        .collect();
    commented.sort_by(|a, b| (&a.created_at, a.id).cmp(&(&b.created_at, b.id)));
    for c in commented {
        if let Some(command) = command(&c.body) {
            out.push(Candidate::Commented {
                number: c.number,
                id: c.id,
                author: c.author.clone(),
                created_at: c.created_at.clone(),
                command,
                on_pull: pulls.contains(&c.number),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_from_the_first_line_only() {
        let implement = |note: &str| {
            Some(Command::Implement {
                note: note.to_owned(),
            })
        };
        let cases: &[(&str, Option<Command>)] = &[
            ("/productbuilder implement", implement("")),
            (
                "  /productbuilder   implement   the cart page  ",
                implement("the cart page"),
            ),
            ("/productbuilder implement\nmore words", implement("")),
            (
                "/productbuilder continue add tests",
                Some(Command::Continue {
                    note: "add tests".into(),
                }),
            ),
            ("/productbuilder", None),
            ("/productbuilder deploy", None),
            ("/productbuilderimplement", None),
            ("/productbuilderx implement", None),
            ("please /productbuilder implement", None),
            ("> /productbuilder implement", None),
            ("Thanks!\n/productbuilder implement", None),
            ("", None),
        ];
        for (body, expected) in cases {
            assert_eq!(&command(body), expected, "{body:?}");
        }
    }

    fn item(number: u64, is_pull: bool, labels: &[&str], updated_at: &str) -> Item {
        Item {
            number,
            is_pull,
            open: true,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            updated_at: updated_at.into(),
        }
    }

    fn comment(id: u64, number: u64, author: &str, body: &str, at: &str) -> Comment {
        Comment {
            id,
            number,
            author: author.into(),
            body: body.into(),
            created_at: at.into(),
        }
    }

    #[test]
    fn labelled_open_issues_whose_events_were_not_read_at_this_update() {
        let seen = Seen {
            events_read: [(4, "2026-01-03T00:00:00Z".to_owned())].into(),
            ..Seen::default()
        };
        let mut closed = item(6, false, &["productbuilder"], "2026-01-03T00:00:00Z");
        closed.open = false;
        let items = [
            item(1, false, &["ProductBuilder"], "2026-01-03T00:00:00Z"),
            item(2, false, &["bug"], "2026-01-03T00:00:00Z"),
            item(4, false, &["productbuilder"], "2026-01-03T00:00:00Z"),
            item(5, true, &["productbuilder"], "2026-01-03T00:00:00Z"),
            closed,
        ];
        let found = candidates(&items, &[], &seen, "productbuilder", None);
        assert_eq!(
            found,
            [Candidate::Labelled {
                number: 1,
                updated_at: "2026-01-03T00:00:00Z".into()
            }],
            "#2 has no label, #4 was read at this update, #5 is a pull request, #6 is closed"
        );
    }

    #[test]
    fn comments_with_a_command_once_oldest_first_never_the_daemon_s_own() {
        let seen = Seen {
            sources: ["comment:13".to_owned()].into(),
            ..Seen::default()
        };
        let items = [
            item(1, false, &[], "2026-01-03T00:00:00Z"),
            item(2, true, &[], "2026-01-03T00:00:00Z"),
        ];
        let at = "2026-01-03T00:00:00Z";
        let comments = [
            comment(
                15,
                2,
                "carol",
                "/productbuilder continue",
                "2026-01-03T00:00:05Z",
            ),
            comment(11, 1, "alice", "/productbuilder implement now", at),
            comment(12, 1, "bob", "nice work", at),
            comment(13, 1, "alice", "/productbuilder implement", at),
            comment(14, 1, "PB-Bot", "/productbuilder implement", at),
            comment(16, 9, "alice", "/productbuilder implement", at),
        ];
        let found = candidates(&items, &comments, &seen, "productbuilder", Some("pb-bot"));
        assert_eq!(
            found,
            [
                Candidate::Commented {
                    number: 1,
                    id: 11,
                    author: "alice".into(),
                    created_at: at.into(),
                    command: Command::Implement { note: "now".into() },
                    on_pull: false,
                },
                Candidate::Commented {
                    number: 2,
                    id: 15,
                    author: "carol".into(),
                    created_at: "2026-01-03T00:00:05Z".into(),
                    command: Command::Continue { note: "".into() },
                    on_pull: true,
                },
            ],
            "#12 has no command, #13 is recorded, #14 is the daemon's, #16 is on an item not \
             open (or unknown)"
        );
    }
}
