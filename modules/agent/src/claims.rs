//! No claimed action without its tool call (the predecessor's agent said "I created #41" when it
//! had not). Pure.
//!
//! [`claims`] reads the actions a reply says were done (created, commented, closed, a build
//! started), [`check`] compares them with the successful writes of the run; a reply claiming
//! what was not done is replaced by [`statement`], a plain account of what was.
//!
//! A claim is an action verb the agent says of itself: in the first person ("I created #5"),
//! opening the sentence ("Created #5", "Done: closed #4"), "has been closed", or a report
//! ("Issue #5 created", "Build started for #8"). A verb describing the world ("#12 was closed
//! last week", "PR #7 opened by alice", "build 3 started at 10:02") is not, nor a denied one
//! ("I have not created anything"), so that the researcher's answers are not replaced.

use crate::tools::Action;

/// What kind of write a reply claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    Commented,
    Closed,
    BuildStarted,
}

/// One claimed action, with the number it names if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub kind: Kind,
    pub number: Option<u64>,
}

const VERBS: &[(&str, Kind)] = &[
    ("created", Kind::Created),
    ("filed", Kind::Created),
    ("opened", Kind::Created),
    ("raised", Kind::Created),
    ("logged", Kind::Created),
    ("commented", Kind::Commented),
    ("posted", Kind::Commented),
    ("replied", Kind::Commented),
    ("closed", Kind::Closed),
    ("started", Kind::BuildStarted),
    ("queued", Kind::BuildStarted),
    ("delegated", Kind::BuildStarted),
    ("triggered", Kind::BuildStarted),
    ("kicked", Kind::BuildStarted),
    ("launched", Kind::BuildStarted),
];

/// Words before a verb that deny it ("I have not created", "nothing was posted").
const NEGATIONS: &[&str] = &[
    "not", "never", "no", "nothing", "haven't", "hasn't", "didn't", "couldn't", "cannot", "can't",
    "wasn't", "weren't", "won't", "unable", "failed",
];

/// The agent speaking of itself.
const FIRST_PERSON: &[&str] = &["i", "i've", "ive", "we", "we've", "i'm", "me"];

/// Words that open a report without changing it ("Done: created #5").
const OPENERS: &[&str] = &[
    "done",
    "ok",
    "okay",
    "sure",
    "great",
    "all",
    "set",
    "✅",
    "-",
    "just",
    "successfully",
];

/// What a report-style sentence may start with ("Issue #5 created", "Build started for #8").
const SUBJECTS: &[&str] = &["issue", "comment", "build", "it", "#"];

/// Words after a verb that make it someone else's act or a past event ("opened by alice",
/// "started at 10:02", "closed last week").
const DESCRIBED_AFTER: &[&str] = &["by", "at", "on", "in", "last", "yesterday", "ago", "since"];

/// Whether the verb at `i` is the agent saying it did something.
fn is_claim(words: &[String], i: usize) -> bool {
    let before = &words[i.saturating_sub(3)..i];
    if before.iter().any(|w| NEGATIONS.contains(&w.as_str())) {
        return false;
    }
    let first_person = before.iter().any(|w| FIRST_PERSON.contains(&w.as_str()));
    let been = i >= 2 && words[i - 1] == "been" && matches!(words[i - 2].as_str(), "has" | "have");
    // The verb opens the sentence, after words that open a report.
    let opens = words[..i].iter().all(|w| OPENERS.contains(&w.as_str()));
    // "Issue #5 created", "Build started", "Comment posted": a subject, maybe a number.
    let reported = (i == 1 || i == 2)
        && SUBJECTS.iter().any(|s| words[0].starts_with(s))
        && (i == 1 || words[1].starts_with('#') || words[1].parse::<u64>().is_ok())
        && !words
            .get(i + 1)
            .is_some_and(|w| DESCRIBED_AFTER.contains(&w.as_str()));
    first_person || been || opens || reported
}

fn words(sentence: &str) -> Vec<String> {
    sentence
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '(' | ')' | '*' | '_'))
        .map(|w| w.trim_matches(|c: char| matches!(c, '.' | '!' | '?' | '"' | '`')))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// The number a word names: `#12`, `…/issues/12`, `…/pull/12`.
fn number_of(word: &str) -> Option<u64> {
    let digits_after = |rest: &str| -> Option<u64> {
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    if let Some(rest) = word.strip_prefix('#') {
        return digits_after(rest);
    }
    ["/issues/", "/pull/"].iter().find_map(|p| {
        word.find(p)
            .and_then(|i| digits_after(&word[i + p.len()..]))
    })
}

/// The actions `reply` says were done.
pub fn claims(reply: &str) -> Vec<Claim> {
    let mut out = Vec::new();
    // A sentence ends at ". " (not at the dots of a URL), "!", "?" or a line's end.
    let reply = reply.replace(". ", "\n");
    for sentence in reply.split(['!', '?', '\n']) {
        let words = words(sentence);
        let mut claimed = false;
        for (i, word) in words.iter().enumerate() {
            let Some(kind) = VERBS.iter().find(|(v, _)| word == v).map(|(_, k)| *k) else {
                continue;
            };
            // "started" and friends are about a build only when the sentence says so.
            if kind == Kind::BuildStarted
                && !words
                    .iter()
                    .any(|w| w.starts_with("build") || w == "implementation")
            {
                continue;
            }
            // "Created #99 and closed #3": the second verb goes with the first.
            let continues =
                claimed && i > 0 && matches!(words[i - 1].as_str(), "and" | "then" | "also" | "&");
            if !continues && !is_claim(&words, i) {
                continue;
            }
            claimed = true;
            // The number after the verb ("created #5"), else the one before ("issue #5 created").
            let number = words[i + 1..]
                .iter()
                .find_map(|w| number_of(w))
                .or_else(|| words[..i].iter().rev().find_map(|w| number_of(w)));
            let claim = Claim { kind, number };
            if !out.contains(&claim) {
                out.push(claim);
            }
        }
    }
    out
}

fn backs(action: &Action, claim: &Claim) -> bool {
    let (kind, numbers): (Kind, &[u64]) = match action {
        Action::Created { number, .. } => (Kind::Created, std::slice::from_ref(number)),
        Action::Commented { number, .. } => (Kind::Commented, std::slice::from_ref(number)),
        Action::Closed { number } => (Kind::Closed, std::slice::from_ref(number)),
        // A build is named by its issue or its id.
        Action::BuildStarted { issue, build } => {
            return claim.kind == Kind::BuildStarted
                && claim.number.is_none_or(|n| n == *issue || n == *build);
        }
    };
    kind == claim.kind && claim.number.is_none_or(|n| numbers.contains(&n))
}

/// The claims of `reply` that no action backs.
pub fn unbacked(reply: &str, actions: &[Action]) -> Vec<Claim> {
    claims(reply)
        .into_iter()
        .filter(|c| !actions.iter().any(|a| backs(a, c)))
        .collect()
}

/// What was really done, in plain words.
pub fn statement(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "I made no changes.".to_owned();
    }
    let done: Vec<String> = actions.iter().map(Action::describe).collect();
    format!("What I did: {}.", done.join("; "))
}

/// The result of checking a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Every claim is backed: post the reply as it is.
    Honest(String),
    /// It claimed what was not done: this is posted instead.
    Replaced { reply: String, unbacked: Vec<Claim> },
}

/// `reply` as it may be posted, given the successful writes of the run.
pub fn check(reply: &str, actions: &[Action]) -> Checked {
    let unbacked = unbacked(reply, actions);
    if unbacked.is_empty() {
        return Checked::Honest(reply.to_owned());
    }
    Checked::Replaced {
        reply: format!(
            "I could not do everything that was asked. {}",
            statement(actions)
        ),
        unbacked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(kind: Kind, number: Option<u64>) -> Claim {
        Claim { kind, number }
    }

    #[test]
    fn claims_are_read_from_replies() {
        let cases: &[(&str, &[Claim])] = &[
            ("I created #99 for you.", &[c(Kind::Created, Some(99))]),
            ("Created issue #5: Cart total", &[c(Kind::Created, Some(5))]),
            ("Issue #5 created.", &[c(Kind::Created, Some(5))]),
            ("I've filed it as #7", &[c(Kind::Created, Some(7))]),
            (
                "Done: opened https://github.com/o/r/issues/12",
                &[c(Kind::Created, Some(12))],
            ),
            ("I created the issue.", &[c(Kind::Created, None)]),
            ("I commented on #3.", &[c(Kind::Commented, Some(3))]),
            ("Posted a comment on #3", &[c(Kind::Commented, Some(3))]),
            ("#4 has been closed.", &[c(Kind::Closed, Some(4))]),
            ("I closed #4 as a duplicate", &[c(Kind::Closed, Some(4))]),
            ("Build started for #8.", &[c(Kind::BuildStarted, Some(8))]),
            (
                "I started a build for #8",
                &[c(Kind::BuildStarted, Some(8))],
            ),
            // Describing the world is not a claim.
            ("#12 was closed last week.", &[]),
            ("Issue #12 is closed.", &[]),
            ("I have not created anything.", &[]),
            ("I couldn't comment, so nothing was posted.", &[]),
            ("The preview started fine.", &[]),
            ("#12 is open, with 3 comments.", &[]),
            ("PR #7 opened by alice.", &[]),
            ("alice opened #7 yesterday.", &[]),
            ("Build 3 started at 10:02 and is running.", &[]),
            ("The build started 5 minutes ago.", &[]),
            ("It was filed last week as #3.", &[]),
            ("Done: created #5", &[c(Kind::Created, Some(5))]),
            ("✅ Created #5", &[c(Kind::Created, Some(5))]),
            (
                "We've queued build 4 for #8",
                &[c(Kind::BuildStarted, Some(8))],
            ),
            ("Should I close #4?", &[]),
            (
                "Created #5. Then I commented on #5",
                &[c(Kind::Created, Some(5)), c(Kind::Commented, Some(5))],
            ),
        ];
        for (reply, want) in cases {
            assert_eq!(claims(reply), *want, "{reply}");
        }
    }

    #[test]
    fn claims_are_checked_against_the_actions() {
        let created5 = Action::Created {
            number: 5,
            url: "https://github.com/o/r/issues/5".into(),
        };
        let build = Action::BuildStarted { issue: 8, build: 3 };
        let cases: &[(&str, &[Action], bool)] = &[
            ("Created #5.", &[], false),
            ("Created #5.", std::slice::from_ref(&created5), true),
            ("Created #99.", std::slice::from_ref(&created5), false),
            (
                "I created the issue.",
                std::slice::from_ref(&created5),
                true,
            ),
            ("I closed #5.", std::slice::from_ref(&created5), false),
            ("Build started for #8.", std::slice::from_ref(&build), true),
            ("Build 3 started.", std::slice::from_ref(&build), true),
            ("Build started for #9.", std::slice::from_ref(&build), false),
            ("#12 is open.", &[], true),
        ];
        for (reply, actions, honest) in cases {
            let got = check(reply, actions);
            assert_eq!(
                matches!(got, Checked::Honest(_)),
                *honest,
                "{reply}: {got:?}"
            );
        }
    }

    #[test]
    fn a_replaced_reply_says_what_was_really_done() {
        match check("Created #99 and closed #3.", &[]) {
            Checked::Replaced { reply, unbacked } => {
                assert_eq!(
                    reply,
                    "I could not do everything that was asked. I made no changes."
                );
                assert_eq!(unbacked.len(), 2);
            }
            honest => panic!("{honest:?}"),
        }
        let done = [Action::Created {
            number: 6,
            url: "https://github.com/o/r/issues/6".into(),
        }];
        match check("Created #6 and closed #3.", &done) {
            Checked::Replaced { reply, .. } => assert_eq!(
                reply,
                "I could not do everything that was asked. What I did: created issue #6 (https://github.com/o/r/issues/6)."
            ),
            honest => panic!("{honest:?}"),
        }
    }
}
