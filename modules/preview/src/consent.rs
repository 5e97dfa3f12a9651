//! Consent is given to a commit, not to a pull request.
//!
//! A fork's pull request (and, with `require_label`, every pull request) runs code that no writer
//! of the repository wrote. A writer consents to one head commit at a time, in one of two ways:
//! - the tenant's label (`fork_label`), when the daemon first sees it, approves the head of that
//!   moment if the one who added it (the issue events say who) has write access;
//! - a comment whose first line is `/preview approve`, by a writer, approves the head the daemon
//!   had seen when the comment was written (`pull_heads.seen_at` against the comment's
//!   `created_at`).
//!
//! A push to a fork after that is not approved: the preview stays at the approved commit (the new
//! head is neither downloaded nor built) and the comment names the commit that waits. "Writer"
//! means write, maintain or admin as `GET /repos/{o}/{r}/collaborators/{user}/permission` answers;
//! `author_association` is not enough (COLLABORATOR includes read-only collaborators).
//!
//! Pushes to a branch of the repository itself can only come from writers, so with
//! `require_label` a same-repository pull request needs one writer's consent, not one per commit.
//!
//! Each consent (a label event, a comment) is considered once and recorded in `consents`, granted
//! or not, with the commit it approves: a later push cannot inherit an earlier consent.

use productbuilder_github::{GithubState, Pull};
use productbuilder_store::Store;
use productbuilder_store::rusqlite::{self, OptionalExtension, params};

use crate::reconcile::TenantRules;

/// The command a writer comments to approve the head commit.
pub const APPROVE_COMMAND: &str = "/preview approve";

/// How a consent was given (as stored in `consents.how`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum How {
    Label,
    Comment,
}

impl How {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A writer's approval of one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub sha: String,
    pub by: String,
    /// When it was given (GitHub's time).
    pub at: String,
}

/// What to preview of one wanted pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The commit to deploy; `None` while nothing is approved.
    pub deploy: Option<String>,
    /// The head commit waiting for a writer's approval.
    pub waiting: Option<String>,
}

/// Whether `pull` needs a writer's consent under `rules`.
pub fn gated(rules: &TenantRules, pull: &Pull) -> bool {
    (pull.fork && !rules.allow_forks) || rules.require_label
}

/// The commit to preview for a pull request the tenant wants, given its granted approvals
/// (oldest first). Pure.
pub fn decide(rules: &TenantRules, pull: &Pull, approvals: &[Approval]) -> Decision {
    let head = &pull.head_sha;
    let waiting = || Decision {
        deploy: None,
        waiting: Some(head.clone()),
    };
    if !gated(rules, pull) {
        return Decision {
            deploy: Some(head.clone()),
            waiting: None,
        };
    }
    if !pull.fork {
        // Only writers push to the repository's own branches: one consent covers the pull request.
        return if approvals.is_empty() {
            waiting()
        } else {
            Decision {
                deploy: Some(head.clone()),
                waiting: None,
            }
        };
    }
    if approvals.iter().any(|a| &a.sha == head) {
        return Decision {
            deploy: Some(head.clone()),
            waiting: None,
        };
    }
    match approvals.last() {
        Some(latest) => Decision {
            deploy: Some(latest.sha.clone()),
            waiting: Some(head.clone()),
        },
        None => waiting(),
    }
}

/// Whether a comment is the approval command: its first non-empty line, exactly (a quote, a
/// mention in a sentence or the daemon's own hint do not count).
pub fn is_approve_command(body: &str) -> bool {
    body.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.eq_ignore_ascii_case(APPROVE_COMMAND))
}

/// Considers the consents of `pull` not seen yet (the label's latest `labeled` event, new
/// `/preview approve` comments), records each once, and returns the granted approvals, oldest
/// first. A GitHub failure leaves the new consents for the next pass; what is recorded still
/// counts.
pub async fn approvals(
    github: &GithubState,
    store: &Store,
    repo: &str,
    pull: &Pull,
    rules: &TenantRules,
) -> Result<Vec<Approval>, ConsentError> {
    if let Err(e) = consider_new(github, store, repo, pull, rules).await {
        tracing::warn!(repo, number = pull.number, error = %e, "previews: cannot check new approvals; retrying on the next pass");
    }
    let (r, n) = (repo.to_owned(), pull.number);
    store
        .read(move |c| granted(c, &r, n))
        .await
        .map_err(ConsentError::Store)
}

async fn consider_new(
    github: &GithubState,
    store: &Store,
    repo: &str,
    pull: &Pull,
    rules: &TenantRules,
) -> Result<(), ConsentError> {
    let client = &github.client;
    let number = pull.number;
    if pull.labels.contains(&rules.fork_label) {
        let events = client
            .label_events(repo, number)
            .await
            .map_err(ConsentError::Github)?;
        if let Some(event) = events
            .iter()
            .rev()
            .find(|e| e.event == "labeled" && e.label == rules.fork_label)
        {
            let source = format!("label:{}", event.id);
            if !known(store, repo, number, &source).await? {
                let writer = client
                    .can_write(repo, &event.actor)
                    .await
                    .map_err(ConsentError::Github)?;
                // The head of the moment the daemon first sees the label.
                record(
                    store,
                    Consent {
                        repo: repo.to_owned(),
                        number,
                        source,
                        how: How::Label,
                        sha: Some(pull.head_sha.clone()),
                        by: event.actor.clone(),
                        at: event.created_at.clone(),
                        granted: writer,
                    },
                )
                .await?;
                log_consent(repo, number, How::Label, &event.actor, writer);
            }
        }
    }
    let (r, n) = (repo.to_owned(), number);
    let comments = store
        .read(move |c| unseen_commands(c, &r, n))
        .await
        .map_err(ConsentError::Store)?;
    for (id, author, created_at) in comments {
        let writer = client
            .can_write(repo, &author)
            .await
            .map_err(ConsentError::Github)?;
        let (r, at) = (repo.to_owned(), created_at.clone());
        let sha = store
            .read(move |c| head_seen_at(c, &r, number, &at))
            .await
            .map_err(ConsentError::Store)?;
        record(
            store,
            Consent {
                repo: repo.to_owned(),
                number,
                source: format!("comment:{id}"),
                how: How::Comment,
                sha,
                by: author.clone(),
                at: created_at,
                granted: writer,
            },
        )
        .await?;
        log_consent(repo, number, How::Comment, &author, writer);
    }
    Ok(())
}

fn log_consent(repo: &str, number: u64, how: How, by: &str, writer: bool) {
    if writer {
        tracing::info!(
            repo,
            number,
            how = how.as_str(),
            by,
            "previews: a writer approved a commit"
        );
    } else {
        tracing::info!(
            repo,
            number,
            how = how.as_str(),
            by,
            "previews: an approval by someone without write access was ignored"
        );
    }
}

/// Why the consents could not be read or brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// Who labelled, or whether they may write, could not be asked now: the next pass asks again.
    #[error("GitHub: {0}")]
    Github(#[source] productbuilder_github::GithubError),
    #[error("previews database: {0}")]
    Store(#[source] productbuilder_store::StoreError),
}

struct Consent {
    repo: String,
    number: u64,
    source: String,
    how: How,
    sha: Option<String>,
    by: String,
    at: String,
    granted: bool,
}

async fn known(store: &Store, repo: &str, number: u64, source: &str) -> Result<bool, ConsentError> {
    let (r, s) = (repo.to_owned(), source.to_owned());
    store
        .write(move |c| {
            c.query_row(
                "SELECT 1 FROM consents WHERE repo = ?1 AND number = ?2 AND source = ?3",
                params![r, number as i64, s],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
        })
        .await
        .map_err(ConsentError::Store)
}

async fn record(store: &Store, consent: Consent) -> Result<(), ConsentError> {
    store
        .write(move |c| {
            c.execute(
                "INSERT INTO consents (repo, number, source, how, sha, given_by, given_at, granted, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                 ON CONFLICT (repo, number, source) DO NOTHING",
                params![
                    consent.repo,
                    consent.number as i64,
                    consent.source,
                    consent.how.as_str(),
                    consent.sha,
                    consent.by,
                    consent.at,
                    consent.granted,
                ],
            )
            .map(|_| ())
        })
        .await
        .map_err(ConsentError::Store)
}

/// `/preview approve` comments on `repo#number` not considered yet: (id, author, created_at).
fn unseen_commands(
    c: &rusqlite::Connection,
    repo: &str,
    number: u64,
) -> rusqlite::Result<Vec<(i64, String, String)>> {
    let mut stmt = c.prepare(
        "SELECT m.id, m.author, m.created_at, m.body FROM comments m
         WHERE m.repo = ?1 AND m.issue_number = ?2
           AND NOT EXISTS (SELECT 1 FROM consents k WHERE k.repo = m.repo AND k.number = ?2
                             AND k.source = 'comment:' || m.id)
         ORDER BY m.created_at, m.id",
    )?;
    let rows = stmt.query_map(params![repo, number as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, author, created_at, body) = row?;
        if is_approve_command(&body) {
            out.push((id, author, created_at));
        }
    }
    Ok(out)
}

/// The head of `repo#number` the daemon had seen at `at` (the latest to become the head at or
/// before it); `None` when it had seen none yet.
fn head_seen_at(
    c: &rusqlite::Connection,
    repo: &str,
    number: u64,
    at: &str,
) -> rusqlite::Result<Option<String>> {
    // julianday reads both our milliseconds and GitHub's whole seconds.
    c.query_row(
        "SELECT sha FROM pull_heads WHERE repo = ?1 AND number = ?2
           AND julianday(seen_at) <= julianday(?3)
         ORDER BY julianday(seen_at) DESC LIMIT 1",
        params![repo, number as i64, at],
        |r| r.get(0),
    )
    .optional()
}

/// The granted approvals of `repo#number`, oldest first.
fn granted(c: &rusqlite::Connection, repo: &str, number: u64) -> rusqlite::Result<Vec<Approval>> {
    let mut stmt = c.prepare(
        "SELECT sha, given_by, given_at FROM consents
         WHERE repo = ?1 AND number = ?2 AND granted = 1 AND sha IS NOT NULL
         ORDER BY julianday(given_at), recorded_at, source",
    )?;
    let rows = stmt.query_map(params![repo, number as i64], |r| {
        Ok(Approval {
            sha: r.get(0)?,
            by: r.get(1)?,
            at: r.get(2)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";

    fn pull(fork: bool, head: &str) -> Pull {
        Pull {
            number: 7,
            title: "t".into(),
            head_sha: head.into(),
            head_ref: "b".into(),
            head_repo: Some(if fork { "mallory/shop" } else { "acme/shop" }.into()),
            fork,
            author: "mallory".into(),
            author_association: "COLLABORATOR".into(),
            draft: false,
            labels: vec!["preview".into()],
            updated_at: None,
            seen_at: "2026-11-25T00:00:00Z".into(),
        }
    }

    fn approved(shas: &[&str]) -> Vec<Approval> {
        shas.iter()
            .enumerate()
            .map(|(i, s)| Approval {
                sha: (*s).into(),
                by: "owner".into(),
                at: format!("2026-11-25T00:00:0{i}Z"),
            })
            .collect()
    }

    fn go(sha: Option<&str>, waiting: Option<&str>) -> Decision {
        Decision {
            deploy: sha.map(str::to_owned),
            waiting: waiting.map(str::to_owned),
        }
    }

    #[test]
    fn a_fork_s_preview_stays_at_the_approved_commit() {
        let default = TenantRules::default();
        let forks_ok = TenantRules {
            allow_forks: true,
            ..TenantRules::default()
        };
        let opt_in = TenantRules {
            require_label: true,
            ..TenantRules::default()
        };
        let opt_in_forks_ok = TenantRules {
            require_label: true,
            allow_forks: true,
            ..TenantRules::default()
        };
        #[rustfmt::skip]
        let table: &[(&TenantRules, Pull, Vec<Approval>, Decision, &str)] = &[
            (&default, pull(false, A), vec![], go(Some(A), None), "a branch of the repository needs no consent"),
            (&forks_ok, pull(true, A), vec![], go(Some(A), None), "allow_forks waives consent"),
            (&default, pull(true, A), vec![], go(None, Some(A)), "a fork without approval waits"),
            (&default, pull(true, A), approved(&[A]), go(Some(A), None), "the head approved"),
            (&default, pull(true, B), approved(&[A]), go(Some(A), Some(B)), "a push after the approval stays at it"),
            (&default, pull(true, B), approved(&[A, B]), go(Some(B), None), "the new head approved too"),
            (&default, pull(true, C), approved(&[A, B]), go(Some(B), Some(C)), "the latest approval wins"),
            (&default, pull(true, A), approved(&[A, B]), go(Some(A), None), "back to an approved head (force-push)"),
            (&default, pull(true, C), approved(&[B, A]), go(Some(A), Some(C)), "latest by time, not by sha"),
            (&opt_in, pull(false, A), vec![], go(None, Some(A)), "require_label: no writer's label yet"),
            (&opt_in, pull(false, B), approved(&[A]), go(Some(B), None), "require_label: a writer's branch push needs no new consent"),
            (&opt_in, pull(true, B), approved(&[A]), go(Some(A), Some(B)), "require_label: a fork still consents per commit"),
            (&opt_in_forks_ok, pull(true, B), approved(&[A]), go(Some(A), Some(B)), "require_label gates forks even when allowed"),
        ];
        for (rules, pr, approvals, want, case) in table {
            assert_eq!(&decide(rules, pr, approvals), want, "{case}");
        }
    }

    #[test]
    fn only_the_command_line_itself_approves() {
        for (body, yes) in [
            ("/preview approve", true),
            ("  /preview approve  \n", true),
            ("\n/Preview Approve\nthanks!", true),
            ("/preview approved", false),
            ("please /preview approve", false),
            ("> /preview approve", false),
            (
                "<!-- productbuilder:preview -->\nComment `/preview approve` to approve",
                false,
            ),
            ("`/preview approve`", false),
            ("", false),
        ] {
            assert_eq!(is_approve_command(body), yes, "{body:?}");
        }
    }
}
