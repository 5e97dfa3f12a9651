//! The reconciler's decision, pure: what one tenant's previews need (deploy, remove, repair,
//! report...) given plain data gathered beforehand: the open pull requests with the tenant rules'
//! verdict and consent, the `previews` rows, the labelled containers on the engine, the jobs in
//! flight, the host-failure backoffs, the time and the TTL. Nothing here reads a clock, a
//! database or the engine, so every rule is a row of the table in the tests below.
//!
//! [`room`] is the capacity rule (`max_previews` across tenants): whether a deploy may take a
//! place, and which previews make room for it. It runs inside the SQLite transaction that writes
//! the row ([`crate::capacity`]), so two passes deciding at once cannot both take the last place.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::db::{DeletedReason, PreviewRow};
use crate::engine::Labelled;
use crate::state::Status;

/// What a deploy or removal job of a pull request is doing: the tag of its keyed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Deploy { sha: String },
    Remove,
}

impl Job {
    /// The job's name in `productbuilder_jobs`: its span and logs (never parsed back).
    pub fn name(&self) -> String {
        match self {
            Job::Deploy { sha } => format!("deploy {sha}"),
            Job::Remove => "remove".to_owned(),
        }
    }
}

/// An open pull request, as the tenant's rules and the consents judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPull {
    pub number: u64,
    /// The rules want a preview (not a draft, labelled when required, a fork allowed...).
    pub wanted: bool,
    /// The commit the consents allow to deploy (the head, or an earlier approved one); none
    /// while nothing of it is approved.
    pub deploy_sha: Option<String>,
    /// A newer head that waits for a writer's approval.
    pub waiting_sha: Option<String>,
}

/// Everything [`decide`] looks at, for one tenant.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Every open pull request (`polled` already checked: an empty list means none open).
    pub open: &'a [OpenPull],
    /// The tenant's rows, deleted ones too.
    pub rows: &'a [PreviewRow],
    /// The containers labelled for the tenant, running or not.
    pub containers: &'a [Labelled],
    /// The newest deploy or removal job of each pull request that has one in flight.
    pub jobs: &'a HashMap<u64, Job>,
    /// Pull requests whose last deploy the host failed, still within their backoff.
    pub host_backoff: &'a HashSet<u64>,
    pub now: SystemTime,
    /// Previews not updated (no new commit) for this long are removed.
    pub ttl: Duration,
}

/// One thing to do; [`decide`] returns them in this order of kinds per pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deploy `sha` (a new pull request, a push, a repair, a restart mid-deploy); needs a place
    /// under `max_previews` unless the pull request has a live preview already.
    Deploy { number: u64, sha: String },
    /// Tear the preview down and mark it deleted for `reason`.
    Remove { number: u64, reason: DeletedReason },
    /// Containers of `project` that no live row accounts for (a crash, a lost database).
    RemoveOrphan { number: u64, project: String },
    /// A ready preview with nothing in flight: attach the router to its networks again (a router
    /// recreated since the deploy is on none of them).
    AttachRouter { number: u64, project: String },
    /// Record which newer head waits for approval (none: none), and report it when it changed.
    SetWaiting { number: u64, sha: Option<String> },
    /// The row says something its last report did not, and GitHub did not refuse it for good.
    Report { number: u64 },
}

/// The actions that bring one tenant's previews to the desired state.
pub fn decide(inputs: &Inputs<'_>) -> Vec<Action> {
    let rows: BTreeMap<u64, &PreviewRow> = inputs.rows.iter().map(|r| (r.number, r)).collect();
    let running: HashSet<(u64, &str)> = inputs
        .containers
        .iter()
        .filter(|c| c.running)
        .map(|c| (c.number, c.project.as_str()))
        .collect();
    let expired_before = humantime::format_rfc3339_millis(
        inputs
            .now
            .checked_sub(inputs.ttl)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
    .to_string();
    let mut actions = Vec::new();

    let desired: BTreeMap<u64, &str> = inputs
        .open
        .iter()
        .filter(|p| p.wanted)
        .filter_map(|p| Some((p.number, p.deploy_sha.as_deref()?)))
        .collect();
    for (&number, &sha) in &desired {
        let row = rows.get(&number).copied();
        let job = inputs.jobs.get(&number);
        match job {
            Some(Job::Deploy { sha: deploying }) if deploying == sha => continue,
            // A removal is finishing; the next pass redeploys if still wanted.
            Some(Job::Remove) if row.is_some_and(|r| !r.is_live()) => continue,
            _ => {}
        }
        let deploy = match row {
            None => true,
            Some(r) if r.head_sha != sha => true,
            Some(r) => match r.status {
                Status::Deleted => r.deleted_reason.is_none_or(DeletedReason::allows_same_sha),
                // A failure waits for a new push (or a reopen).
                Status::Failed => false,
                // Its containers vanished: repair.
                Status::Ready => !running.contains(&(number, r.project.as_str())),
                // Under way with no job: this process restarted mid-deploy, or the host failed
                // it (then after its backoff).
                Status::Pending | Status::Building | Status::Deploying => {
                    job.is_none() && !inputs.host_backoff.contains(&number)
                }
            },
        };
        if deploy {
            actions.push(Action::Deploy {
                number,
                sha: sha.to_owned(),
            });
        } else if let Some(r) = row
            && job.is_none()
            && matches!(r.status, Status::Ready | Status::Failed)
            && r.sha_changed_at < expired_before
        {
            actions.push(Action::Remove {
                number,
                reason: DeletedReason::Expired,
            });
        } else if let Some(r) = row
            && job.is_none()
            && r.status == Status::Ready
        {
            actions.push(Action::AttachRouter {
                number,
                project: r.project.clone(),
            });
        }
    }

    for pull in inputs.open.iter().filter(|p| p.wanted) {
        if rows.contains_key(&pull.number) {
            actions.push(Action::SetWaiting {
                number: pull.number,
                sha: pull.waiting_sha.clone(),
            });
        }
    }

    // Previews nobody wants any more: closed, or no longer allowed.
    for (&number, row) in &rows {
        if desired.contains_key(&number)
            || !row.is_live()
            || inputs.jobs.get(&number) == Some(&Job::Remove)
        {
            continue;
        }
        let reason = if inputs.open.iter().any(|p| p.number == number) {
            DeletedReason::Unwanted
        } else {
            DeletedReason::Closed
        };
        actions.push(Action::Remove { number, reason });
    }

    // Containers no live row accounts for: leftovers of a crash, or of a lost database.
    let mut orphans: BTreeMap<&str, u64> = BTreeMap::new();
    // A pull request deployed by this pass takes its project's leftovers over.
    let deploying: HashSet<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Deploy { number, .. } => Some(*number),
            _ => None,
        })
        .collect();
    for c in inputs.containers {
        let owned = rows
            .get(&c.number)
            .is_some_and(|r| r.is_live() && r.project == c.project);
        if !owned && !inputs.jobs.contains_key(&c.number) && !deploying.contains(&c.number) {
            orphans.entry(c.project.as_str()).or_insert(c.number);
        }
    }
    for (project, number) in orphans {
        actions.push(Action::RemoveOrphan {
            number,
            project: project.to_owned(),
        });
    }

    // Reports that did not reach GitHub (an outage, a restart); not those GitHub refused.
    for row in rows.values() {
        if report_due(row) {
            actions.push(Action::Report { number: row.number });
        }
    }
    actions
}

/// Whether `row` says something not yet reported, that GitHub has not refused for good.
pub fn report_due(row: &PreviewRow) -> bool {
    let key = row.report_key();
    row.reported.as_deref() != Some(key.as_str())
        && row.report_error_key.as_deref() != Some(key.as_str())
}

/// Whether a deploy may take a place under `max_previews`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Room {
    /// Yes, once these previews (repository, number, head sha) are removed to make room.
    Admit { evict: Vec<(String, u64, String)> },
    /// Not now: every other place is taken by a deploy or a removal in flight. The next pass
    /// asks again.
    Wait,
}

/// Whether `repo#number` may deploy on a host that runs `live` (every tenant's live previews,
/// least recently updated first) with at most `max` previews. A pull request with a live preview
/// keeps its place; a new one evicts the least recently updated previews that are ready or failed
/// and have no job in flight (`busy`), or waits: a deploy under way (its row written in the same
/// transaction that granted its place) is never evicted for another.
pub fn room(
    live: &[PreviewRow],
    busy: &dyn Fn(&str, u64) -> bool,
    max: usize,
    repo: &str,
    number: u64,
) -> Room {
    if live.iter().any(|r| r.repo == repo && r.number == number) {
        return Room::Admit { evict: Vec::new() };
    }
    let excess = (live.len() + 1).saturating_sub(max.max(1));
    let evict: Vec<(String, u64, String)> = live
        .iter()
        .filter(|r| matches!(r.status, Status::Ready | Status::Failed) && !busy(&r.repo, r.number))
        .take(excess)
        .map(|r| (r.repo.clone(), r.number, r.head_sha.clone()))
        .collect();
    if evict.len() < excess {
        return Room::Wait;
    }
    Room::Admit { evict }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const REPO: &str = "acme/shop";

    fn project(number: u64) -> String {
        format!("pb--acme--shop--{number}")
    }

    fn pull(number: u64, sha: &str) -> OpenPull {
        OpenPull {
            number,
            wanted: true,
            deploy_sha: Some(sha.to_owned()),
            waiting_sha: None,
        }
    }

    fn row(number: u64, sha: &str, status: Status) -> PreviewRow {
        let mut r = PreviewRow {
            repo: REPO.into(),
            number,
            head_sha: sha.into(),
            status,
            stage: None,
            error: None,
            log_tail: None,
            url: format!("http://shop-pr-{number}.test"),
            project: project(number),
            deleted_reason: None,
            note: None,
            log_service: None,
            log_file: None,
            deployment_id: None,
            reported: None,
            sha_changed_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            waiting_sha: None,
            approved_sha: None,
            approved_by: None,
            approved_at: None,
            approved_how: None,
            report_error: None,
            report_error_key: None,
        };
        // Reported, unless a case says otherwise.
        r.reported = Some(r.report_key());
        r
    }

    fn container(number: u64, running: bool) -> Labelled {
        Labelled {
            id: format!("c{number}"),
            tenant: REPO.into(),
            number,
            sha: A.into(),
            project: project(number),
            service: "web".into(),
            running,
        }
    }

    /// One case: the world, then the actions expected.
    struct Case {
        name: &'static str,
        open: Vec<OpenPull>,
        rows: Vec<PreviewRow>,
        containers: Vec<Labelled>,
        jobs: Vec<(u64, Job)>,
        host_backoff: Vec<u64>,
        ttl: Duration,
        want: Vec<Action>,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                name: "",
                open: Vec::new(),
                rows: Vec::new(),
                containers: Vec::new(),
                jobs: Vec::new(),
                host_backoff: Vec::new(),
                ttl: Duration::from_secs(7 * 24 * 3600),
                want: Vec::new(),
            }
        }
    }

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-01-02T00:00:00Z").unwrap()
    }

    #[test]
    fn the_decision_table() {
        let ready = |n, sha| row(n, sha, Status::Ready);
        let deleted = |n, sha, reason| PreviewRow {
            deleted_reason: Some(reason),
            ..row(n, sha, Status::Deleted)
        };
        let deploy = |number, sha: &str| Action::Deploy {
            number,
            sha: sha.into(),
        };
        let attach = |number| Action::AttachRouter {
            number,
            project: project(number),
        };
        let waiting = |number, sha: Option<&str>| Action::SetWaiting {
            number,
            sha: sha.map(str::to_owned),
        };
        let cases = vec![
            Case {
                name: "a new pull request is deployed at its head",
                open: vec![pull(1, A)],
                want: vec![deploy(1, A)],
                ..Case::default()
            },
            Case {
                name: "a push deploys the new head",
                open: vec![pull(1, B)],
                rows: vec![ready(1, A)],
                containers: vec![container(1, true)],
                want: vec![deploy(1, B), waiting(1, None)],
                ..Case::default()
            },
            Case {
                name: "a push while the older head deploys replaces that deploy",
                open: vec![pull(1, B)],
                rows: vec![row(1, A, Status::Building)],
                jobs: vec![(1, Job::Deploy { sha: A.into() })],
                want: vec![deploy(1, B), waiting(1, None)],
                ..Case::default()
            },
            Case {
                name: "the head already deploying is left to finish",
                open: vec![pull(1, A)],
                rows: vec![row(1, A, Status::Building)],
                jobs: vec![(1, Job::Deploy { sha: A.into() })],
                want: vec![waiting(1, None)],
                ..Case::default()
            },
            Case {
                name: "a ready preview with its containers running: only the router is checked",
                open: vec![pull(1, A)],
                rows: vec![ready(1, A)],
                containers: vec![container(1, true)],
                want: vec![attach(1), waiting(1, None)],
                ..Case::default()
            },
            Case {
                name: "a closed pull request's preview is removed as closed",
                rows: vec![ready(1, A)],
                containers: vec![container(1, true)],
                want: vec![Action::Remove {
                    number: 1,
                    reason: DeletedReason::Closed,
                }],
                ..Case::default()
            },
            Case {
                name: "a closed pull request whose removal runs is left to it",
                rows: vec![ready(1, A)],
                containers: vec![container(1, true)],
                jobs: vec![(1, Job::Remove)],
                ..Case::default()
            },
            Case {
                name: "a pull request turned draft (or its label removed) is removed as unwanted",
                open: vec![OpenPull {
                    wanted: false,
                    ..pull(1, A)
                }],
                rows: vec![ready(1, A)],
                containers: vec![container(1, true)],
                want: vec![Action::Remove {
                    number: 1,
                    reason: DeletedReason::Unwanted,
                }],
                ..Case::default()
            },
            Case {
                name: "a draft or a fork without the label never gets a preview",
                open: vec![OpenPull {
                    wanted: false,
                    ..pull(1, A)
                }],
                ..Case::default()
            },
            Case {
                name: "a fork without consent: nothing deploys, the head waits",
                open: vec![OpenPull {
                    deploy_sha: None,
                    waiting_sha: Some(B.into()),
                    ..pull(1, B)
                }],
                ..Case::default()
            },
            Case {
                name: "a fork's new head without consent: the approved commit stays, the head waits",
                open: vec![OpenPull {
                    waiting_sha: Some(B.into()),
                    ..pull(1, A)
                }],
                rows: vec![ready(1, A)],
                containers: vec![container(1, true)],
                want: vec![attach(1), waiting(1, Some(B))],
                ..Case::default()
            },
            Case {
                name: "a container no row accounts for is an orphan",
                containers: vec![container(99, true)],
                want: vec![Action::RemoveOrphan {
                    number: 99,
                    project: project(99),
                }],
                ..Case::default()
            },
            Case {
                name: "a deleted row's leftover container is an orphan too",
                rows: vec![deleted(1, A, DeletedReason::Closed)],
                containers: vec![container(1, false)],
                want: vec![Action::RemoveOrphan {
                    number: 1,
                    project: project(1),
                }],
                ..Case::default()
            },
            Case {
                name: "a new pull request's leftover containers are taken over by its deploy",
                open: vec![pull(1, A)],
                containers: vec![container(1, false)],
                want: vec![deploy(1, A)],
                ..Case::default()
            },
            Case {
                name: "a container of a pull request with a job in flight is not an orphan",
                open: vec![pull(1, A)],
                containers: vec![container(1, true)],
                jobs: vec![(1, Job::Deploy { sha: A.into() })],
                ..Case::default()
            },
            Case {
                name: "a ready row whose container vanished is repaired",
                open: vec![pull(1, A)],
                rows: vec![ready(1, A)],
                want: vec![deploy(1, A), waiting(1, None)],
                ..Case::default()
            },
            Case {
                name: "a ready row whose container stopped is repaired",
                open: vec![pull(1, A)],
                rows: vec![ready(1, A)],
                containers: vec![container(1, false)],
                want: vec![deploy(1, A), waiting(1, None)],
                ..Case::default()
            },
            Case {
                name: "a failed row at the same head waits for a push",
                open: vec![pull(1, A)],
                rows: vec![row(1, A, Status::Failed)],
                want: vec![waiting(1, None)],
                ..Case::default()
            },
            Case {
                name: "a failed row and a push: the new head deploys",
                open: vec![pull(1, B)],
                rows: vec![row(1, A, Status::Failed)],
                want: vec![deploy(1, B), waiting(1, None)],
                ..Case::default()
            },
            Case {
                name: "a deploy under way without a job (a restart) is deployed again",
                open: vec![pull(1, A)],
                rows: vec![row(1, A, Status::Deploying)],
                want: vec![deploy(1, A), waiting(1, None)],
                ..Case::default()
            },
            Case {
                name: "a deploy the host failed waits for its backoff",
                open: vec![pull(1, A)],
                rows: vec![row(1, A, Status::Building)],
                host_backoff: vec![1],
                want: vec![waiting(1, None)],
                ..Case::default()
            },
            Case {
                name: "past the TTL a ready preview is removed as expired",
                open: vec![pull(1, A)],
                rows: vec![ready(1, A)],
                containers: vec![container(1, true)],
                ttl: Duration::from_secs(3600),
                want: vec![
                    Action::Remove {
                        number: 1,
                        reason: DeletedReason::Expired,
                    },
                    waiting(1, None),
                ],
                ..Case::default()
            },
            Case {
                name: "past the TTL a failed preview is removed as expired",
                open: vec![pull(1, A)],
                rows: vec![row(1, A, Status::Failed)],
                ttl: Duration::ZERO,
                want: vec![
                    Action::Remove {
                        number: 1,
                        reason: DeletedReason::Expired,
                    },
                    waiting(1, None),
                ],
                ..Case::default()
            },
            Case {
                name: "an expired or evicted preview comes back only with a push",
                open: vec![pull(1, A), pull(2, A)],
                rows: vec![
                    deleted(1, A, DeletedReason::Expired),
                    deleted(2, A, DeletedReason::Evicted),
                ],
                want: vec![waiting(1, None), waiting(2, None)],
                ..Case::default()
            },
            Case {
                name: "a reopened (or wanted again) pull request deploys its same head",
                open: vec![pull(1, A), pull(2, A)],
                rows: vec![
                    deleted(1, A, DeletedReason::Closed),
                    deleted(2, A, DeletedReason::Unwanted),
                ],
                want: vec![
                    deploy(1, A),
                    deploy(2, A),
                    waiting(1, None),
                    waiting(2, None),
                ],
                ..Case::default()
            },
            Case {
                name: "wanted again while its removal finishes: the next pass redeploys",
                open: vec![pull(1, A)],
                rows: vec![deleted(1, A, DeletedReason::Unwanted)],
                jobs: vec![(1, Job::Remove)],
                want: vec![waiting(1, None)],
                ..Case::default()
            },
            Case {
                name: "a row not reported yet is reported; one GitHub refused for good is not",
                rows: vec![
                    PreviewRow {
                        reported: None,
                        ..deleted(1, A, DeletedReason::Closed)
                    },
                    {
                        let mut r = deleted(2, A, DeletedReason::Closed);
                        r.reported = None;
                        r.report_error_key = Some(r.report_key());
                        r
                    },
                ],
                want: vec![Action::Report { number: 1 }],
                ..Case::default()
            },
        ];
        for case in cases {
            let jobs: HashMap<u64, Job> = case.jobs.into_iter().collect();
            let host_backoff: HashSet<u64> = case.host_backoff.into_iter().collect();
            let got = decide(&Inputs {
                open: &case.open,
                rows: &case.rows,
                containers: &case.containers,
                jobs: &jobs,
                host_backoff: &host_backoff,
                now: now(),
                ttl: case.ttl,
            });
            assert_eq!(got, case.want, "{}", case.name);
        }
    }

    #[test]
    fn the_capacity_table() {
        let live = |n: u64, repo: &str| PreviewRow {
            repo: repo.into(),
            ..row(n, A, Status::Ready)
        };
        let idle = |_: &str, _: u64| false;
        let removing_1 = |repo: &str, n: u64| repo == REPO && n == 1;
        let evict = |list: &[(&str, u64)]| Room::Admit {
            evict: list
                .iter()
                .map(|(r, n)| ((*r).to_owned(), *n, A.to_owned()))
                .collect(),
        };
        let three = [live(1, REPO), live(2, "acme/other"), live(3, REPO)];
        // (name, live oldest first, busy, max, the pull request asking, expected)
        type Busy<'a> = &'a dyn Fn(&str, u64) -> bool;
        type RoomCase<'a> = (
            &'a str,
            &'a [PreviewRow],
            Busy<'a>,
            usize,
            (&'a str, u64),
            Room,
        );
        let cases: &[RoomCase] = &[
            ("room left", &three[..2], &idle, 3, (REPO, 9), evict(&[])),
            (
                "a live preview keeps its place (a push), even on a full host",
                &three,
                &idle,
                3,
                (REPO, 3),
                evict(&[]),
            ),
            (
                "a full host evicts the least recently updated, of any tenant",
                &three,
                &idle,
                3,
                (REPO, 9),
                evict(&[(REPO, 1)]),
            ),
            (
                "a deploy under way (its row just written) is not evicted: the next ready one is",
                &[
                    row(1, A, Status::Pending),
                    live(2, "acme/other"),
                    live(3, REPO),
                ],
                &idle,
                3,
                (REPO, 9),
                evict(&[("acme/other", 2)]),
            ),
            (
                "a failed preview is evicted like a ready one",
                &[row(1, A, Status::Failed), live(2, REPO)],
                &idle,
                2,
                (REPO, 9),
                evict(&[(REPO, 1)]),
            ),
            (
                "one with a job in flight (a removal) is not evicted: the next one is",
                &three,
                &removing_1,
                3,
                (REPO, 9),
                evict(&[("acme/other", 2)]),
            ),
            (
                "over the limit (lowered since): as many as needed go",
                &three,
                &idle,
                2,
                (REPO, 9),
                evict(&[(REPO, 1), ("acme/other", 2)]),
            ),
            (
                "every place taken by a deploy under way: wait",
                &[
                    row(1, A, Status::Pending),
                    row(2, A, Status::Building),
                    row(3, A, Status::Deploying),
                ],
                &idle,
                3,
                (REPO, 9),
                Room::Wait,
            ),
            ("max 0 is read as 1", &[], &idle, 0, (REPO, 9), evict(&[])),
        ];
        for (name, live, busy, max, (repo, number), want) in cases {
            assert_eq!(&room(live, *busy, *max, repo, *number), want, "{name}");
        }
    }
}
