//! What the narrator says and which follow-up builds it starts, from the whole state of one
//! repository (pure, table-tested below).
//!
//! Each event has a key `loop:{build}:{event}` (with the preview's head commit for preview
//! events); a key already said is never said again. Every new event of one thread in one pass
//! is one message (at most [`MAX_EVENTS_PER_MESSAGE`]; the rest wait for the next pass).
//!
//! A preview belongs to the delegated build whose commit it runs. When it runs none of theirs
//! (a person pushed, or the build recorded no commit), it belongs to the pull request's newest
//! completed delegated build, unless a delegated build on that pull request is still active:
//! then the preview is about to change and nothing is said of it yet.
//!
//! A failed preview gets a follow-up build on the same pull request when the chain of its
//! request (the first build and every fix that followed) has had fewer than `max_fix_attempts`
//! fixes, and no fix was started for that head commit yet. The fixes counted are the recorded
//! intents, written before a build is enqueued, so a crash never starts two.

use std::collections::{BTreeMap, BTreeSet};

use productbuilder_builds::Status;
use productbuilder_preview::state::{Stage, Status as PreviewStatus};

/// The most events one message carries.
pub const MAX_EVENTS_PER_MESSAGE: usize = 6;

/// A build the agent delegated, as recorded by [`crate::narrate::record_delegated`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegated {
    pub build: u64,
    pub issue: u64,
    pub channel: String,
    pub thread_ts: String,
    /// 0 for the first build of a request, n for its n-th fix.
    pub attempt: u32,
    /// The build whose failed preview this one fixes.
    pub follows: Option<u64>,
}

/// What the queue says of a delegated build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildView {
    pub status: Status,
    pub error: Option<String>,
    pub pr_number: Option<u64>,
    pub pr_url: Option<String>,
    pub commit_sha: Option<String>,
    /// The pull request it adds commits to (a fix), from its spec.
    pub continues: Option<u64>,
}

/// A delegated build and its row (`None`: the row is gone; nothing is said of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub delegated: Delegated,
    pub build: Option<BuildView>,
}

/// The preview of one pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewView {
    pub number: u64,
    pub head_sha: String,
    pub status: PreviewStatus,
    pub url: String,
    pub stage: Option<Stage>,
    pub error: Option<String>,
    /// The end of the failed step's output, as the preview recorded it.
    pub log_tail: Option<String>,
}

/// A follow-up build meant (and maybe started) for a failed preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixRecord {
    pub failed_build: u64,
    pub head_sha: String,
}

/// Everything one pass knows of one repository.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub builds: Vec<Tracked>,
    pub previews: Vec<PreviewView>,
    /// Narration keys already said, or meant to be.
    pub said: BTreeSet<String>,
    pub fixes: Vec<FixRecord>,
    pub max_fix_attempts: u32,
}

/// Something worth a line in the thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    BuildFailed {
        build: u64,
        error: Option<String>,
    },
    BuildCancelled {
        build: u64,
        error: Option<String>,
    },
    /// Completed; `pr` with its URL when the build opened or added to one.
    BuildFinished {
        build: u64,
        pr: Option<(u64, Option<String>)>,
        /// More commits on an existing pull request, not a new one.
        continued: bool,
    },
    /// A fix of `fixing`'s failed preview was started.
    FixStarted {
        build: u64,
        fixing: u64,
        attempt: u32,
        max: u32,
    },
    PreviewReady {
        build: u64,
        pr: u64,
        url: String,
        head_sha: String,
    },
    PreviewFailed {
        build: u64,
        pr: u64,
        stage: Option<Stage>,
        error: Option<String>,
        log_tail: Option<String>,
    },
    /// A preview failed and no fix is started: `max` fixes were spent (or `max` is 0).
    NoFixesLeft {
        build: u64,
        max: u32,
    },
}

/// An event with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    pub key: String,
    pub event: Event,
}

/// One message into one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub channel: String,
    pub thread_ts: String,
    /// In order; never empty.
    pub said: Vec<Said>,
}

impl Message {
    /// The key the message carries as Slack metadata: its first event's.
    pub fn key(&self) -> &str {
        &self.said[0].key
    }
}

/// A follow-up build to start on `pr`'s branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFix {
    pub failed_build: u64,
    pub head_sha: String,
    pub issue: u64,
    pub pr: u64,
    pub channel: String,
    pub thread_ts: String,
    /// The fix's `attempt` (1 for the first fix of the request).
    pub attempt: u32,
    pub stage: Option<Stage>,
    pub error: Option<String>,
    pub log_tail: Option<String>,
}

/// What one pass does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub messages: Vec<Message>,
    pub fixes: Vec<StartFix>,
}

fn key(build: u64, event: &str) -> String {
    format!("loop:{build}:{event}")
}

/// The first 12 characters of a commit, enough to tell them apart in a key.
fn short(sha: &str) -> &str {
    match sha.char_indices().nth(12) {
        Some((i, _)) => &sha[..i],
        None => sha,
    }
}

/// The first build of `build`'s request (following `follows`, at most once per build, so a
/// cycle in the rows cannot hang the pass).
fn root(by_id: &BTreeMap<u64, &Tracked>, build: u64) -> u64 {
    let mut at = build;
    for _ in 0..=by_id.len() {
        match by_id.get(&at).and_then(|t| t.delegated.follows) {
            Some(previous) if by_id.contains_key(&previous) => at = previous,
            _ => break,
        }
    }
    at
}

/// The delegated build a preview belongs to, if any (see the module's doc).
fn owner<'a>(tracked: &[&'a Tracked], preview: &PreviewView) -> Option<&'a Tracked> {
    let on_pr =
        |b: &BuildView| b.pr_number == Some(preview.number) || b.continues == Some(preview.number);
    let completed: Vec<(&'a Tracked, &'a BuildView)> = tracked
        .iter()
        .filter_map(|t| t.build.as_ref().map(|b| (*t, b)))
        .filter(|(_, b)| b.status == Status::Completed && b.pr_number == Some(preview.number))
        .collect();
    if let Some((t, _)) = completed
        .iter()
        .find(|(_, b)| b.commit_sha.as_deref() == Some(preview.head_sha.as_str()))
    {
        return Some(t);
    }
    let active = tracked
        .iter()
        .filter_map(|t| t.build.as_ref())
        .any(|b| b.status.is_active() && on_pr(b));
    if active {
        return None;
    }
    // The head is none of their commits: the newest completed build's, as the pull request's
    // current head.
    completed
        .iter()
        .max_by_key(|(t, _)| t.delegated.build)
        .map(|(t, _)| *t)
}

/// The messages to post and the fixes to start.
pub fn decide(state: &State) -> Plan {
    let mut tracked: Vec<&Tracked> = state.builds.iter().collect();
    tracked.sort_by_key(|t| t.delegated.build);
    let by_id: BTreeMap<u64, &Tracked> = tracked.iter().map(|t| (t.delegated.build, *t)).collect();
    // Every event, by build: the build's own first, its preview's after.
    let mut events: BTreeMap<u64, Vec<Said>> = BTreeMap::new();
    let mut fixes = Vec::new();
    let mut push = |build: u64, key: String, event: Event| {
        events.entry(build).or_default().push(Said { key, event });
    };

    for t in &tracked {
        let d = &t.delegated;
        let Some(b) = &t.build else { continue };
        if let Some(fixing) = d.follows {
            push(
                d.build,
                key(d.build, "started"),
                Event::FixStarted {
                    build: d.build,
                    fixing,
                    attempt: d.attempt,
                    max: state.max_fix_attempts,
                },
            );
        }
        match b.status {
            Status::Pending | Status::Running => {}
            Status::Failed => push(
                d.build,
                key(d.build, "failed"),
                Event::BuildFailed {
                    build: d.build,
                    error: b.error.clone(),
                },
            ),
            Status::Cancelled => push(
                d.build,
                key(d.build, "cancelled"),
                Event::BuildCancelled {
                    build: d.build,
                    error: b.error.clone(),
                },
            ),
            Status::Completed => push(
                d.build,
                key(d.build, "finished"),
                Event::BuildFinished {
                    build: d.build,
                    pr: b.pr_number.map(|n| (n, b.pr_url.clone())),
                    continued: b.continues.is_some() && b.continues == b.pr_number,
                },
            ),
        }
    }

    for preview in &state.previews {
        let Some(t) = owner(&tracked, preview) else {
            continue;
        };
        let d = &t.delegated;
        let sha = short(&preview.head_sha);
        match preview.status {
            PreviewStatus::Ready => push(
                d.build,
                key(d.build, &format!("ready:{sha}")),
                Event::PreviewReady {
                    build: d.build,
                    pr: preview.number,
                    url: preview.url.clone(),
                    head_sha: preview.head_sha.clone(),
                },
            ),
            PreviewStatus::Failed => {
                push(
                    d.build,
                    key(d.build, &format!("preview-failed:{sha}")),
                    Event::PreviewFailed {
                        build: d.build,
                        pr: preview.number,
                        stage: preview.stage,
                        error: preview.error.clone(),
                        log_tail: preview.log_tail.clone(),
                    },
                );
                let chain_root = root(&by_id, d.build);
                let in_chain =
                    |build: u64| by_id.contains_key(&build) && root(&by_id, build) == chain_root;
                let chain_fixes: Vec<&FixRecord> = state
                    .fixes
                    .iter()
                    .filter(|f| in_chain(f.failed_build))
                    .collect();
                if chain_fixes.iter().any(|f| f.head_sha == preview.head_sha) {
                    // Already fixed (or being fixed) at this commit: its start is narrated.
                    continue;
                }
                let used = chain_fixes.len() as u32;
                if used >= state.max_fix_attempts {
                    push(
                        d.build,
                        key(d.build, &format!("no-fix:{sha}")),
                        Event::NoFixesLeft {
                            build: d.build,
                            max: state.max_fix_attempts,
                        },
                    );
                    continue;
                }
                fixes.push(StartFix {
                    failed_build: d.build,
                    head_sha: preview.head_sha.clone(),
                    issue: d.issue,
                    pr: preview.number,
                    channel: d.channel.clone(),
                    thread_ts: d.thread_ts.clone(),
                    attempt: used + 1,
                    stage: preview.stage,
                    error: preview.error.clone(),
                    log_tail: preview.log_tail.clone(),
                });
            }
            PreviewStatus::Pending
            | PreviewStatus::Building
            | PreviewStatus::Deploying
            | PreviewStatus::Deleted => {}
        }
    }

    // Coalesced per thread, in the order of the builds, unsaid only.
    let mut threads: BTreeMap<(String, String), Vec<Said>> = BTreeMap::new();
    for (build, said) in events {
        let d = &by_id[&build].delegated;
        let thread = threads
            .entry((d.channel.clone(), d.thread_ts.clone()))
            .or_default();
        thread.extend(said.into_iter().filter(|s| !state.said.contains(&s.key)));
    }
    let messages = threads
        .into_iter()
        .filter(|(_, said)| !said.is_empty())
        .map(|((channel, thread_ts), mut said)| {
            said.truncate(MAX_EVENTS_PER_MESSAGE);
            Message {
                channel,
                thread_ts,
                said,
            }
        })
        .collect();
    Plan { messages, fixes }
}

#[cfg(test)]
mod tests;
