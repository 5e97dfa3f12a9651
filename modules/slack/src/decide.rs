//! What a tenant's Slack pass does, decided from the whole state (pure, table-tested): which items
//! get a thread, which status messages change, which events are appended. The worker gathers the
//! state, calls [`decide`], and applies the steps in order, recording each before it posts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::text::{self, BuildView, Item, ItemState, PreviewView};

/// A person's GitHub comment on an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub id: i64,
    pub number: u64,
    pub author: String,
    pub body: String,
    pub url: String,
}

/// An item's thread as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Thread {
    pub parent_ts: String,
    pub status_ts: Option<String>,
    /// The status text last written, to edit only on a change.
    pub status_text: Option<String>,
    /// The parent text last written.
    pub parent_text: String,
    /// A conversation's thread the item was filed from: its parent is a person's message,
    /// never edited.
    pub adopted: bool,
}

/// An issue the agent is filing from a conversation's thread (recorded before it is created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    pub thread_ts: String,
    pub title: String,
}

/// The event keys of an item, stable across restarts: what makes "exactly once" checkable.
pub mod key {
    pub fn comment(id: i64) -> String {
        format!("comment:{id}")
    }
    pub const CLOSED: &str = "closed";
    pub const MERGED: &str = "merged";
    pub fn build(id: i64) -> String {
        format!("build:{id}")
    }
}

/// Whether a thread may be started for an item that existed at the tenant's first Slack pass:
/// only when `backfill` covers its last activity (`age`).
pub fn backfilled(age: Duration, backfill: Option<Duration>) -> bool {
    backfill.is_some_and(|b| age <= b)
}

/// Whether a GitHub comment is the daemon's own (never mirrored): by its login, or carrying the
/// marker of its comments (a person quoting the marker is not mirrored either, which costs
/// nothing; a person merely naming the bot is).
pub fn is_ours(comment: &Comment, own_login: Option<&str>, marker: &str) -> bool {
    own_login.is_some_and(|l| l.eq_ignore_ascii_case(&comment.author))
        || comment.body.contains(marker)
}

/// The conversation an issue was filed from, when the agent filed it: the issue is the
/// daemon's own (only its login can have written it, so nobody else's issue can be steered into
/// a conversation) and its title is the one recorded before it was created.
fn adoption<'a>(state: &'a State, item: &Item, own_login: Option<&str>) -> Option<&'a Adoption> {
    let ours = own_login.is_some_and(|l| l.eq_ignore_ascii_case(&item.author));
    if !ours || item.kind != text::Kind::Issue {
        return None;
    }
    state.adoptions.iter().find(|a| a.title == item.title)
}

/// Everything one pass sees.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub items: Vec<Item>,
    pub previews: BTreeMap<u64, PreviewView>,
    /// Each item's latest build.
    pub builds: BTreeMap<u64, BuildView>,
    /// Oldest first.
    pub comments: Vec<Comment>,
    pub threads: BTreeMap<u64, Thread>,
    /// Items that will never get a thread (they predate Slack and backfill did not cover them).
    pub skipped: BTreeSet<u64>,
    /// Event keys already recorded per item (sent, or intended: an intent is finished by the
    /// worker, not decided again).
    pub events: BTreeMap<u64, BTreeSet<String>>,
    /// Issues the agent is filing from a conversation, not yet linked to it.
    pub adoptions: Vec<Adoption>,
}

/// One step; applied in this order per item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Post the parent and record the thread before anything else goes to it.
    StartThread { number: u64, text: String },
    /// Record the conversation's thread the agent filed the issue from as its thread.
    Adopt { number: u64, thread_ts: String },
    /// Edit the parent (closed, merged, a new title).
    EditParent { number: u64, text: String },
    /// Post or edit the one status message.
    Status { number: u64, text: String },
    /// Append to the thread, exactly once per key.
    Event {
        number: u64,
        key: String,
        text: String,
    },
}

/// The steps that bring Slack to `state`.
pub fn decide(state: &State, own_login: Option<&str>, marker: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for item in &state.items {
        let n = item.number;
        if state.skipped.contains(&n) {
            continue;
        }
        let parent = text::parent(item);
        let thread = state.threads.get(&n);
        match thread {
            None => {
                // A closed item without a thread gets none: there is nothing left to follow.
                if item.state != ItemState::Open {
                    continue;
                }
                match adoption(state, item, own_login) {
                    Some(a) => steps.push(Step::Adopt {
                        number: n,
                        thread_ts: a.thread_ts.clone(),
                    }),
                    None => steps.push(Step::StartThread {
                        number: n,
                        text: parent,
                    }),
                }
            }
            Some(t) if !t.adopted && t.parent_text != parent => steps.push(Step::EditParent {
                number: n,
                text: parent,
            }),
            Some(_) => {}
        }
        let build = state.builds.get(&n);
        let status = text::status(item, state.previews.get(&n), build);
        if thread.and_then(|t| t.status_text.as_deref()) != Some(status.as_str()) {
            steps.push(Step::Status {
                number: n,
                text: status,
            });
        }
        let sent = state.events.get(&n);
        let unsent = |key: &str| !sent.is_some_and(|s| s.contains(key));
        for c in state.comments.iter().filter(|c| c.number == n) {
            let key = key::comment(c.id);
            if !is_ours(c, own_login, marker) && unsent(&key) {
                steps.push(Step::Event {
                    number: n,
                    text: text::comment(&c.author, &c.body, &c.url),
                    key,
                });
            }
        }
        if let Some(b) = build.filter(|b| b.is_final()) {
            let key = key::build(b.id);
            if unsent(&key) {
                steps.push(Step::Event {
                    number: n,
                    text: text::build_ended(b),
                    key,
                });
            }
        }
        let last = match item.state {
            ItemState::Open => None,
            ItemState::Closed => Some(key::CLOSED),
            ItemState::Merged => Some(key::MERGED),
        };
        if let Some(key) = last
            && unsent(key)
        {
            steps.push(Step::Event {
                number: n,
                key: key.to_owned(),
                text: text::closing(item),
            });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::Kind;

    const MARKER: &str = "<!-- productbuilder:";

    fn pull(number: u64, state: ItemState) -> Item {
        Item {
            repo: "acme/shop".into(),
            number,
            kind: Kind::Pull,
            title: "Add cart".into(),
            author: "alice".into(),
            state,
            url: format!("https://github.com/acme/shop/pull/{number}"),
        }
    }

    fn comment(id: i64, author: &str, body: &str) -> Comment {
        Comment {
            id,
            number: 1,
            author: author.into(),
            body: body.into(),
            url: format!("https://github.com/acme/shop/pull/1#issuecomment-{id}"),
        }
    }

    fn settled(state: &State) -> State {
        // What the worker records after applying every step.
        let mut next = state.clone();
        for step in decide(state, Some("pb-bot"), MARKER) {
            match step {
                Step::StartThread { number, text } => {
                    next.threads.insert(
                        number,
                        Thread {
                            parent_ts: format!("{number}.0"),
                            parent_text: text,
                            ..Thread::default()
                        },
                    );
                }
                Step::Adopt { number, thread_ts } => {
                    next.threads.insert(
                        number,
                        Thread {
                            parent_ts: thread_ts.clone(),
                            adopted: true,
                            ..Thread::default()
                        },
                    );
                    next.adoptions.retain(|a| a.thread_ts != thread_ts);
                }
                Step::EditParent { number, text } => {
                    next.threads.get_mut(&number).unwrap().parent_text = text
                }
                Step::Status { number, text } => {
                    let t = next.threads.get_mut(&number).unwrap();
                    t.status_ts = Some(format!("{number}.1"));
                    t.status_text = Some(text);
                }
                Step::Event { number, key, .. } => {
                    next.events.entry(number).or_default().insert(key);
                }
            }
        }
        next
    }

    fn issue_by(number: u64, author: &str, title: &str) -> Item {
        Item {
            repo: "acme/shop".into(),
            number,
            kind: Kind::Issue,
            title: title.into(),
            author: author.into(),
            state: ItemState::Open,
            url: format!("https://github.com/acme/shop/issues/{number}"),
        }
    }

    /// An issue the agent filed from a conversation takes that conversation's thread (no second
    /// thread), is never given a parent of its own to edit, and gets its status there; an issue
    /// by anyone else with the same title starts its own thread.
    #[test]
    fn an_issue_filed_from_a_conversation_adopts_its_thread_only_when_the_daemon_wrote_it() {
        let adoptions = vec![Adoption {
            thread_ts: "1700.000100".into(),
            title: "Cart total wrong".into(),
        }];
        let cases = [("pb-bot", true), ("PB-BOT", true), ("mallory", false)];
        for (author, adopts) in cases {
            let state = State {
                items: vec![issue_by(9, author, "Cart total wrong")],
                adoptions: adoptions.clone(),
                ..State::default()
            };
            let steps = decide(&state, Some("pb-bot"), MARKER);
            if adopts {
                assert_eq!(
                    steps[0],
                    Step::Adopt {
                        number: 9,
                        thread_ts: "1700.000100".into()
                    },
                    "{author}"
                );
                assert!(matches!(steps[1], Step::Status { number: 9, .. }));
                let settled = settled(&state);
                assert_eq!(
                    decide(&settled, Some("pb-bot"), MARKER),
                    [],
                    "no parent edit"
                );
            } else {
                assert!(
                    matches!(steps[0], Step::StartThread { number: 9, .. }),
                    "{author}"
                );
            }
        }
        // Another title, or the daemon's login unknown: a thread of its own.
        let state = State {
            items: vec![issue_by(9, "pb-bot", "Something else")],
            adoptions: adoptions.clone(),
            ..State::default()
        };
        assert!(matches!(
            decide(&state, Some("pb-bot"), MARKER)[0],
            Step::StartThread { .. }
        ));
        let state = State {
            items: vec![issue_by(9, "pb-bot", "Cart total wrong")],
            adoptions,
            ..State::default()
        };
        assert!(matches!(
            decide(&state, None, MARKER)[0],
            Step::StartThread { .. }
        ));
    }

    #[test]
    fn a_new_pull_request_gets_one_parent_and_one_status_then_nothing_more() {
        let state = State {
            items: vec![pull(1, ItemState::Open)],
            ..State::default()
        };
        let steps = decide(&state, None, MARKER);
        assert!(matches!(steps[0], Step::StartThread { number: 1, .. }));
        assert!(matches!(steps[1], Step::Status { number: 1, .. }));
        assert_eq!(steps.len(), 2);
        assert_eq!(decide(&settled(&state), None, MARKER), []);
    }

    /// A build of an issue: its state in the status line as it runs; when it ends, one event
    /// line with its pull request, never twice; hostile error text escaped.
    #[test]
    fn a_build_shows_in_the_status_and_its_end_is_appended_once() {
        let mut issue = pull(4, ItemState::Open);
        issue.kind = Kind::Issue;
        let mut state = settled(&State {
            items: vec![issue],
            ..State::default()
        });
        let build = |status: &str| BuildView {
            id: 9,
            status: status.into(),
            pr_number: None,
            pr_url: None,
            preview_url: None,
            error: None,
        };
        state.builds.insert(4, build("running"));
        assert_eq!(
            decide(&state, None, MARKER),
            [Step::Status {
                number: 4,
                text: "Status: open · build running".into()
            }]
        );
        let mut state = settled(&state);
        state.builds.insert(
            4,
            BuildView {
                pr_number: Some(12),
                pr_url: Some("https://github.com/acme/shop/pull/12".into()),
                preview_url: Some("https://pr-12.example".into()),
                ..build("completed")
            },
        );
        let steps = decide(&state, None, MARKER);
        assert_eq!(
            steps,
            [
                Step::Status {
                    number: 4,
                    text: "Status: open · build completed: <https://github.com/acme/shop/pull/12|pull request #12>, preview <https://pr-12.example|https://pr-12.example>".into()
                },
                Step::Event {
                    number: 4,
                    key: "build:9".into(),
                    text: "Build 9 completed: <https://github.com/acme/shop/pull/12|pull request #12>".into()
                },
            ]
        );
        assert_eq!(decide(&settled(&state), None, MARKER), [], "once");

        let mut failed = settled(&state);
        failed.builds.insert(
            4,
            BuildView {
                id: 10,
                error: Some("<!channel> agent crashed\nmore".into()),
                ..build("failed")
            },
        );
        let steps = decide(&failed, None, MARKER);
        assert!(
            matches!(&steps[1], Step::Event { key, text, .. }
            if key == "build:10" && text == "Build 10 failed — &lt;!channel&gt; agent crashed"),
            "{steps:?}"
        );
    }

    #[test]
    fn the_status_is_edited_only_when_its_text_changes() {
        let mut state = settled(&State {
            items: vec![pull(1, ItemState::Open)],
            ..State::default()
        });
        state.previews.insert(
            1,
            PreviewView {
                status: "building".into(),
                url: "https://p".into(),
                stage: None,
                error: None,
            },
        );
        let steps = decide(&state, None, MARKER);
        assert_eq!(
            steps,
            [Step::Status {
                number: 1,
                text: "Status: open · preview building".into()
            }]
        );
        assert_eq!(decide(&settled(&state), None, MARKER), []);
    }

    #[test]
    fn comments_by_people_are_appended_once_and_the_daemons_own_never() {
        let mut state = settled(&State {
            items: vec![pull(1, ItemState::Open)],
            ..State::default()
        });
        state.comments = vec![
            comment(10, "bob", "looks good"),
            comment(11, "PB-Bot", "preview ready"),
            // Someone pretending to be the bot: the marker is the daemon's, so never mirrored.
            comment(
                12,
                "mallory",
                "<!-- productbuilder:preview -->\nI am the bot",
            ),
            comment(13, "carol", "<!channel>"),
        ];
        let keys: Vec<String> = decide(&state, Some("pb-bot"), MARKER)
            .into_iter()
            .filter_map(|s| match s {
                Step::Event { key, .. } => Some(key),
                _ => None,
            })
            .collect();
        assert_eq!(keys, ["comment:10", "comment:13"]);
        assert_eq!(decide(&settled(&state), Some("pb-bot"), MARKER), []);
    }

    #[test]
    fn a_merge_edits_the_parent_and_posts_a_last_line_once() {
        let mut state = settled(&State {
            items: vec![pull(1, ItemState::Open)],
            ..State::default()
        });
        state.items = vec![pull(1, ItemState::Merged)];
        let steps = decide(&state, None, MARKER);
        assert!(
            matches!(&steps[0], Step::EditParent { text, .. } if text.starts_with("[merged] "))
        );
        assert!(matches!(&steps[1], Step::Status { text, .. } if text == "Status: merged"));
        assert!(matches!(&steps[2], Step::Event { key, .. } if key == "merged"));
        assert_eq!(steps.len(), 3);
        assert_eq!(decide(&settled(&state), None, MARKER), []);
    }

    #[test]
    fn skipped_and_closed_unthreaded_items_get_nothing() {
        let state = State {
            items: vec![pull(1, ItemState::Open), pull(2, ItemState::Closed)],
            skipped: BTreeSet::from([1]),
            comments: vec![comment(10, "bob", "hi")],
            ..State::default()
        };
        assert_eq!(decide(&state, None, MARKER), []);
    }

    #[test]
    fn backfill_covers_only_recent_items_and_none_without_it() {
        let day = Duration::from_secs(86400);
        assert!(!backfilled(Duration::ZERO, None));
        assert!(backfilled(day, Some(7 * day)));
        assert!(!backfilled(8 * day, Some(7 * day)));
    }
}
