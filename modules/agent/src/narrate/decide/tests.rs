use super::*;

const C: &str = "C1";
const T1: &str = "100.1";
const T2: &str = "200.2";

fn delegated(build: u64, thread: &str, attempt: u32, follows: Option<u64>) -> Delegated {
    Delegated {
        build,
        issue: 12,
        channel: C.into(),
        thread_ts: thread.into(),
        attempt,
        follows,
    }
}

fn view(status: Status) -> BuildView {
    BuildView {
        status,
        error: None,
        pr_number: None,
        pr_url: None,
        commit_sha: None,
        continues: None,
    }
}

/// A completed build that opened (or, with `continues`, added to) pull request #7 at `sha`.
fn done(sha: &str, continues: bool) -> BuildView {
    BuildView {
        pr_number: Some(7),
        pr_url: Some("https://github.com/acme/shop/pull/7".into()),
        commit_sha: Some(sha.into()),
        continues: continues.then_some(7),
        ..view(Status::Completed)
    }
}

fn tracked(d: Delegated, b: Option<BuildView>) -> Tracked {
    Tracked {
        delegated: d,
        build: b,
    }
}

fn preview(sha: &str, status: PreviewStatus) -> PreviewView {
    PreviewView {
        number: 7,
        head_sha: sha.into(),
        status,
        url: "https://pr-7.shop.example".into(),
        stage: (status == PreviewStatus::Failed).then_some(Stage::Build),
        error: (status == PreviewStatus::Failed).then(|| "npm ci failed".into()),
        log_tail: None,
    }
}

fn state(builds: Vec<Tracked>, previews: Vec<PreviewView>) -> State {
    State {
        builds,
        previews,
        said: BTreeSet::new(),
        fixes: Vec::new(),
        max_fix_attempts: 1,
    }
}

fn said(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

fn fix(failed_build: u64, sha: &str) -> FixRecord {
    FixRecord {
        failed_build,
        head_sha: sha.into(),
    }
}

/// The plan as (thread, keys) per message, and (failed build, sha, attempt) per fix.
type Shape = (Vec<(String, Vec<String>)>, Vec<(u64, String, u32)>);

fn shape(plan: &Plan) -> Shape {
    (
        plan.messages
            .iter()
            .map(|m| {
                (
                    m.thread_ts.clone(),
                    m.said.iter().map(|s| s.key.clone()).collect(),
                )
            })
            .collect(),
        plan.fixes
            .iter()
            .map(|f| (f.failed_build, f.head_sha.clone(), f.attempt))
            .collect(),
    )
}

fn msgs(items: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    items
        .iter()
        .map(|(t, keys)| (t.to_string(), keys.iter().map(|k| k.to_string()).collect()))
        .collect()
}

fn fixes(items: &[(u64, &str, u32)]) -> Vec<(u64, String, u32)> {
    items
        .iter()
        .map(|(b, s, a)| (*b, s.to_string(), *a))
        .collect()
}

#[test]
fn the_table() {
    let failed_with = |error: &str| BuildView {
        error: Some(error.into()),
        ..view(Status::Failed)
    };
    let cases: Vec<(&str, State, Shape)> = vec![
        (
            "a build still running says nothing",
            state(
                vec![tracked(
                    delegated(3, T1, 0, None),
                    Some(view(Status::Running)),
                )],
                vec![],
            ),
            (vec![], vec![]),
        ),
        (
            "a build whose row is gone says nothing",
            state(vec![tracked(delegated(3, T1, 0, None), None)], vec![]),
            (vec![], vec![]),
        ),
        (
            "a failed build",
            state(
                vec![tracked(
                    delegated(3, T1, 0, None),
                    Some(failed_with("the agent timed out")),
                )],
                vec![],
            ),
            (msgs(&[(T1, &["loop:3:failed"])]), vec![]),
        ),
        (
            "a cancelled build",
            state(
                vec![tracked(
                    delegated(3, T1, 0, None),
                    Some(view(Status::Cancelled)),
                )],
                vec![],
            ),
            (msgs(&[(T1, &["loop:3:cancelled"])]), vec![]),
        ),
        (
            "finished, the preview not up yet",
            state(
                vec![tracked(delegated(3, T1, 0, None), Some(done("s1", false)))],
                vec![preview("s1", PreviewStatus::Building)],
            ),
            (msgs(&[(T1, &["loop:3:finished"])]), vec![]),
        ),
        (
            "finished and the preview ready: one message",
            state(
                vec![tracked(delegated(3, T1, 0, None), Some(done("s1", false)))],
                vec![preview("s1", PreviewStatus::Ready)],
            ),
            (
                msgs(&[(T1, &["loop:3:finished", "loop:3:ready:s1"])]),
                vec![],
            ),
        ),
        (
            "said before: nothing twice",
            State {
                said: said(&["loop:3:finished", "loop:3:ready:s1"]),
                ..state(
                    vec![tracked(delegated(3, T1, 0, None), Some(done("s1", false)))],
                    vec![preview("s1", PreviewStatus::Ready)],
                )
            },
            (vec![], vec![]),
        ),
        (
            "only the new event of a thread",
            State {
                said: said(&["loop:3:finished"]),
                ..state(
                    vec![tracked(delegated(3, T1, 0, None), Some(done("s1", false)))],
                    vec![preview("s1", PreviewStatus::Ready)],
                )
            },
            (msgs(&[(T1, &["loop:3:ready:s1"])]), vec![]),
        ),
        (
            "two threads, two messages; two builds in one thread, one",
            state(
                vec![
                    tracked(delegated(3, T1, 0, None), Some(view(Status::Cancelled))),
                    tracked(delegated(4, T2, 0, None), Some(failed_with("x"))),
                    tracked(delegated(5, T1, 0, None), Some(failed_with("y"))),
                ],
                vec![],
            ),
            (
                msgs(&[
                    (T1, &["loop:3:cancelled", "loop:5:failed"]),
                    (T2, &["loop:4:failed"]),
                ]),
                vec![],
            ),
        ),
        (
            "a failed preview: said, and a fix started",
            state(
                vec![tracked(delegated(3, T1, 0, None), Some(done("s1", false)))],
                vec![preview("s1", PreviewStatus::Failed)],
            ),
            (
                msgs(&[(T1, &["loop:3:finished", "loop:3:preview-failed:s1"])]),
                fixes(&[(3, "s1", 1)]),
            ),
        ),
        (
            "the fix recorded: its start is said with the failure, no second fix",
            State {
                said: said(&["loop:3:finished"]),
                fixes: vec![fix(3, "s1")],
                ..state(
                    vec![
                        tracked(delegated(3, T1, 0, None), Some(done("s1", false))),
                        tracked(delegated(4, T1, 1, Some(3)), Some(view(Status::Pending))),
                    ],
                    vec![preview("s1", PreviewStatus::Failed)],
                )
            },
            (
                msgs(&[(T1, &["loop:3:preview-failed:s1", "loop:4:started"])]),
                vec![],
            ),
        ),
        (
            "the fix finished, the preview still at the failed commit: nothing new",
            State {
                said: said(&[
                    "loop:3:finished",
                    "loop:3:preview-failed:s1",
                    "loop:4:started",
                ]),
                fixes: vec![fix(3, "s1")],
                ..state(
                    vec![
                        tracked(delegated(3, T1, 0, None), Some(done("s1", false))),
                        tracked(delegated(4, T1, 1, Some(3)), Some(done("s2", true))),
                    ],
                    vec![preview("s1", PreviewStatus::Failed)],
                )
            },
            (msgs(&[(T1, &["loop:4:finished"])]), vec![]),
        ),
        (
            "the fix's preview failed too: over to you at max_fix_attempts = 1",
            State {
                said: said(&[
                    "loop:3:finished",
                    "loop:3:preview-failed:s1",
                    "loop:4:started",
                    "loop:4:finished",
                ]),
                fixes: vec![fix(3, "s1")],
                ..state(
                    vec![
                        tracked(delegated(3, T1, 0, None), Some(done("s1", false))),
                        tracked(delegated(4, T1, 1, Some(3)), Some(done("s2", true))),
                    ],
                    vec![preview("s2", PreviewStatus::Failed)],
                )
            },
            (
                msgs(&[(T1, &["loop:4:preview-failed:s2", "loop:4:no-fix:s2"])]),
                vec![],
            ),
        ),
        (
            "with max_fix_attempts = 2 the second fix starts, attempt 2",
            State {
                said: said(&["loop:4:finished"]),
                fixes: vec![fix(3, "s1")],
                max_fix_attempts: 2,
                ..state(
                    vec![
                        tracked(delegated(3, T1, 0, None), Some(done("s1", false))),
                        tracked(delegated(4, T1, 1, Some(3)), Some(done("s2", true))),
                    ],
                    vec![preview("s2", PreviewStatus::Failed)],
                )
            },
            (
                msgs(&[(
                    T1,
                    &[
                        "loop:3:finished",
                        "loop:4:started",
                        "loop:4:preview-failed:s2",
                    ],
                )]),
                fixes(&[(4, "s2", 2)]),
            ),
        ),
        (
            "max_fix_attempts = 0: the failure is said, no fix",
            State {
                max_fix_attempts: 0,
                ..state(
                    vec![tracked(delegated(3, T1, 0, None), Some(done("s1", false)))],
                    vec![preview("s1", PreviewStatus::Failed)],
                )
            },
            (
                msgs(&[(
                    T1,
                    &[
                        "loop:3:finished",
                        "loop:3:preview-failed:s1",
                        "loop:3:no-fix:s1",
                    ],
                )]),
                vec![],
            ),
        ),
        (
            "a commit already fixed gets no second fix, whichever build it is attributed to",
            State {
                said: said(&["loop:4:finished", "loop:4:started", "loop:3:finished"]),
                fixes: vec![fix(3, "s1")],
                max_fix_attempts: 5,
                ..state(
                    vec![
                        tracked(delegated(3, T1, 0, None), Some(done("s0", false))),
                        // The fix recorded no commit (the agent changed nothing).
                        tracked(
                            delegated(4, T1, 1, Some(3)),
                            Some(BuildView {
                                commit_sha: None,
                                ..done("", true)
                            }),
                        ),
                    ],
                    vec![preview("s1", PreviewStatus::Failed)],
                )
            },
            (msgs(&[(T1, &["loop:4:preview-failed:s1"])]), vec![]),
        ),
        (
            "while a fix runs the preview is about to change: nothing said of it",
            State {
                said: said(&["loop:3:finished", "loop:4:started"]),
                fixes: vec![fix(3, "s0")],
                ..state(
                    vec![
                        tracked(delegated(3, T1, 0, None), Some(done("s0", false))),
                        tracked(
                            delegated(4, T1, 1, Some(3)),
                            Some(BuildView {
                                continues: Some(7),
                                ..view(Status::Running)
                            }),
                        ),
                    ],
                    vec![preview("s-human", PreviewStatus::Failed)],
                )
            },
            (vec![], vec![]),
        ),
        (
            "a person pushed: the preview of the current head is the newest build's",
            State {
                said: said(&["loop:3:finished"]),
                ..state(
                    vec![tracked(delegated(3, T1, 0, None), Some(done("s1", false)))],
                    vec![preview("s-human", PreviewStatus::Ready)],
                )
            },
            (msgs(&[(T1, &["loop:3:ready:s-human"])]), vec![]),
        ),
        (
            "a deleted preview (the pull request closed) says nothing",
            State {
                said: said(&["loop:3:finished"]),
                ..state(
                    vec![tracked(delegated(3, T1, 0, None), Some(done("s1", false)))],
                    vec![preview("s1", PreviewStatus::Deleted)],
                )
            },
            (vec![], vec![]),
        ),
        (
            "a failed fix build is said; a build failure starts no fix",
            State {
                said: said(&["loop:3:finished", "loop:3:preview-failed:s1"]),
                fixes: vec![fix(3, "s1")],
                ..state(
                    vec![
                        tracked(delegated(3, T1, 0, None), Some(done("s1", false))),
                        tracked(
                            delegated(4, T1, 1, Some(3)),
                            Some(BuildView {
                                continues: Some(7),
                                ..failed_with("push rejected")
                            }),
                        ),
                    ],
                    vec![preview("s1", PreviewStatus::Failed)],
                )
            },
            (msgs(&[(T1, &["loop:4:started", "loop:4:failed"])]), vec![]),
        ),
    ];
    for (name, state, want) in cases {
        assert_eq!(shape(&decide(&state)), want, "{name}");
    }
}

#[test]
fn a_fix_carries_the_failure_and_the_thread() {
    let mut s = state(
        vec![tracked(delegated(3, T2, 0, None), Some(done("s1", false)))],
        vec![PreviewView {
            log_tail: Some("npm ERR! missing script".into()),
            ..preview("s1", PreviewStatus::Failed)
        }],
    );
    s.said = said(&["loop:3:finished"]);
    let plan = decide(&s);
    assert_eq!(
        plan.fixes,
        [StartFix {
            failed_build: 3,
            head_sha: "s1".into(),
            issue: 12,
            pr: 7,
            channel: C.into(),
            thread_ts: T2.into(),
            attempt: 1,
            stage: Some(Stage::Build),
            error: Some("npm ci failed".into()),
            log_tail: Some("npm ERR! missing script".into()),
        }]
    );
}

#[test]
fn a_long_backlog_is_told_a_bounded_message_at_a_time() {
    let builds = (1..=10)
        .map(|b| tracked(delegated(b, T1, 0, None), Some(view(Status::Cancelled))))
        .collect();
    let plan = decide(&state(builds, vec![]));
    assert_eq!(plan.messages.len(), 1);
    assert_eq!(plan.messages[0].said.len(), MAX_EVENTS_PER_MESSAGE);
    assert_eq!(plan.messages[0].key(), "loop:1:cancelled");
}

#[test]
fn a_cycle_in_the_rows_does_not_hang_the_chain() {
    let mut s = state(
        vec![
            tracked(delegated(3, T1, 1, Some(4)), Some(done("s1", false))),
            tracked(delegated(4, T1, 1, Some(3)), Some(view(Status::Failed))),
        ],
        vec![preview("s1", PreviewStatus::Failed)],
    );
    s.max_fix_attempts = 3;
    let plan = decide(&s);
    assert_eq!(plan.fixes.len(), 1);
}

#[test]
fn long_commits_are_shortened_in_keys() {
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let plan = decide(&state(
        vec![tracked(delegated(3, T1, 0, None), Some(done(sha, false)))],
        vec![preview(sha, PreviewStatus::Ready)],
    ));
    assert_eq!(plan.messages[0].said[1].key, "loop:3:ready:0123456789ab");
}
