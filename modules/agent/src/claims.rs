//! No claimed action without its tool call (the predecessor's agent said "I created #41" when it
//! had not). Pure.
//!
//! [`claims`] reads the actions a reply says were done (created, commented, closed, a build
//! started), [`check`] compares them with the successful writes of the run; a reply claiming
//! what was not done is replaced by [`statement`], a plain account of what was.
//!
//! The reading errs on the side of a claim: an action verb said by the agent of itself ("I
//! created", "Created #5", "issue #5 created", "has been closed") is a claim; one describing the
//! world ("#12 was closed last week", "is closed") is not. A false claim costs an honest but
//! plainer reply; a missed one would post a lie.

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

/// Words that make the verb describe the world rather than the agent's own act.
const DESCRIBING: &[&str] = &[
    "was", "is", "were", "are", "be", "not", "never", "haven't", "hasn't", "didn't", "couldn't",
    "cannot", "can't", "wasn't", "isn't", "if", "who", "someone", "they", "he", "she", "when",
];

fn words(sentence: &str) -> Vec<String> {
    sentence
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '(' | ')' | '*' | '_'))
        .map(|w| w.trim_matches(|c: char| matches!(c, '.' | '!' | '?' | '"' | '`')))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// `#12`, `…/issues/12`, `…/pull/12` in a sentence.
fn numbers(sentence: &str) -> Vec<u64> {
    let mut found = Vec::new();
    let bytes = sentence.as_bytes();
    let digits_at = |i: usize| -> Option<u64> {
        let end = bytes[i..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(bytes.len(), |p| i + p);
        sentence[i..end].parse().ok()
    };
    for (i, _) in sentence.match_indices('#') {
        if let Some(n) = digits_at(i + 1) {
            found.push(n);
        }
    }
    for prefix in ["/issues/", "/pull/"] {
        for (i, _) in sentence.match_indices(prefix) {
            if let Some(n) = digits_at(i + prefix.len())
                && !found.contains(&n)
            {
                found.push(n);
            }
        }
    }
    found
}

/// The actions `reply` says were done.
pub fn claims(reply: &str) -> Vec<Claim> {
    let mut out = Vec::new();
    // A sentence ends at ". " (not at the dots of a URL), "!", "?" or a line's end.
    let reply = reply.replace(". ", "\n");
    for sentence in reply.split(['!', '?', '\n']) {
        let words = words(sentence);
        let numbers = numbers(sentence);
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
            // "has been closed" is the agent's claim; "was closed" describes the past.
            let before: Vec<&str> = words[i.saturating_sub(2)..i]
                .iter()
                .map(String::as_str)
                .collect();
            let describes = before.iter().any(|w| DESCRIBING.contains(w))
                && !before.ends_with(&["has", "been"])
                && !before.ends_with(&["have", "been"]);
            if describes {
                continue;
            }
            let claim = Claim {
                kind,
                number: numbers.first().copied(),
            };
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
                "Done: https://github.com/o/r/issues/12 opened",
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
