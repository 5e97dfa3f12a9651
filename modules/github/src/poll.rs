//! The GitHub units: `preflight:repository`, and the `pulls`, `issues` and `comments` workers.
//!
//! Every worker is level-triggered: it fetches the whole current state (open pull requests), or
//! everything since a persisted cursor (issues, comments), and stores it. A missed cycle, a nudge
//! or a restart changes nothing about what the next run does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use productbuilder_planner::{
    Every, Module, Scope, Spec, Tenant, TenantCtx, When, every_tenant, spec_work, stage,
};
use productbuilder_scheduler::{ErrorKind, RetryPolicy, UnitError};
use productbuilder_store::Store;
use productbuilder_store::rusqlite::{self, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::watch;

use crate::cache::CacheLimits;
use crate::client::{GithubClient, GithubError};
use crate::client::{Listing, MAX_PAGES, Page};
use crate::model::{Pull, PullSet};

/// How much longer a cold tenant waits between polls while the quota is low.
const COLD_STRETCH: u32 = 4;
/// A tenant with no open pull request and no change for this long is cold.
const COLD_AFTER: Duration = Duration::from_secs(3600);
/// How often a poll that changed nothing writes its time to `poll_state`; in between the time
/// is kept in memory (and [`GithubState::poll_states`] reads it from there).
const POLL_STATE_WRITE_EVERY: Duration = Duration::from_secs(60);

/// What the pollers publish, read by the HTTP API and by later modules (previews).
#[derive(Clone)]
pub struct GithubState {
    pub client: GithubClient,
    pub store: Store,
    feeds: Arc<Mutex<HashMap<String, watch::Sender<Arc<PullSet>>>>>,
    skips: Arc<Mutex<HashMap<String, u32>>>,
    /// Per repository, what its last complete poll of pull requests saw and stored.
    pulls_seen: Arc<Mutex<HashMap<String, Arc<PullsSeen>>>>,
    /// Per `{stream}:{repo}`, the ETag of the newest-first page whose items are all stored.
    streams_seen: Arc<Mutex<HashMap<String, String>>>,
    /// Per repository, the last poll's time and when `poll_state` was last written.
    polled: Arc<Mutex<HashMap<String, PollMark>>>,
}

/// A complete poll of a repository's pull requests: each page's ETag, and the open set stored
/// after it. A later poll whose pages all come back 304 with these ETags has nothing to store.
#[derive(Debug)]
struct PullsSeen {
    etags: Vec<String>,
    /// The set published after that poll, handed on again as is.
    published: Arc<PullSet>,
}

#[derive(Debug)]
struct PollMark {
    /// RFC 3339 with milliseconds, as SQLite's `strftime('%Y-%m-%dT%H:%M:%fZ')` writes it.
    at: String,
    written: Option<Instant>,
}

/// One row of `GET /api/tenants`.
#[derive(Debug, Clone, Serialize)]
pub struct TenantPollState {
    pub repo: String,
    pub last_poll_at: Option<String>,
    pub last_change_at: Option<String>,
}

impl GithubState {
    pub fn new(client: GithubClient, store: Store) -> Self {
        GithubState {
            client,
            store,
            feeds: Arc::default(),
            skips: Arc::default(),
            pulls_seen: Arc::default(),
            streams_seen: Arc::default(),
            polled: Arc::default(),
        }
    }

    fn feed(&self, repo: &str) -> watch::Sender<Arc<PullSet>> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        feeds
            .entry(repo.to_owned())
            .or_insert_with(|| {
                watch::channel(Arc::new(PullSet {
                    repo: repo.to_owned(),
                    pulls: Vec::new(),
                    polled: false,
                }))
                .0
            })
            .clone()
    }

    /// The open pull requests of `repo`, replaced after every poll (changed or not).
    pub fn subscribe(&self, repo: &str) -> watch::Receiver<Arc<PullSet>> {
        self.feed(repo).subscribe()
    }

    /// When each tenant was last polled and last saw a change.
    pub async fn poll_states(&self) -> Result<Vec<TenantPollState>, GithubError> {
        let mut states = self.stored_poll_states().await?;
        // Polls that changed nothing are written at most once a minute; the latest is here.
        let polled = self.polled.lock().unwrap_or_else(|p| p.into_inner());
        for state in &mut states {
            if let Some(mark) = polled.get(&state.repo)
                && state.last_poll_at.as_ref().is_none_or(|at| *at < mark.at)
            {
                state.last_poll_at = Some(mark.at.clone());
            }
        }
        Ok(states)
    }

    async fn stored_poll_states(&self) -> Result<Vec<TenantPollState>, GithubError> {
        Ok(self
            .store
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT repo, last_poll_at, last_change_at FROM poll_state ORDER BY repo",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(TenantPollState {
                        repo: r.get(0)?,
                        last_poll_at: r.get(1)?,
                        last_change_at: r.get(2)?,
                    })
                })?;
                rows.collect()
            })
            .await?)
    }

    /// The open pull requests of `repo` as last polled.
    pub async fn open_pulls(&self, repo: &str) -> Result<Vec<Pull>, GithubError> {
        let repo = repo.to_owned();
        Ok(self.store.read(move |c| load_open(c, &repo)).await?)
    }
}

/// The GitHub module: its specs, and the state they share.
pub struct GithubModule {
    pub state: GithubState,
    /// Timeout of one unit run.
    pub run_timeout: Duration,
}

impl Module for GithubModule {
    fn name(&self) -> &'static str {
        "github"
    }

    fn feeds(&self) -> Vec<productbuilder_planner::Feed> {
        vec![crate::feeds::pulls(self.state.clone())]
    }

    fn preflights(&self) -> Vec<Spec> {
        let state = self.state.clone();
        vec![Spec {
            resource: "repository",
            scope: Scope::PerTenant,
            when: When::Preflight {
                stage: stage::REPOSITORY,
            },
            timeout: self.run_timeout,
            retry: RetryPolicy::remote_api(),
            applies_to: every_tenant(),
            work: spec_work(move |ctx: TenantCtx| {
                let state = state.clone();
                async move { check_repository(&state, ctx.tenant()).await }
            }),
        }]
    }

    fn workers(&self) -> Vec<Spec> {
        let make = |resource: &'static str, job: Job| {
            let state = self.state.clone();
            Spec {
                resource,
                scope: Scope::PerTenant,
                when: When::Worker(Every::PollInterval),
                timeout: self.run_timeout,
                retry: RetryPolicy::remote_api(),
                applies_to: every_tenant(),
                work: spec_work(move |ctx: TenantCtx| {
                    let state = state.clone();
                    async move {
                        let tenant = ctx.tenant();
                        match job {
                            Job::Pulls => poll_pulls(&state, tenant).await,
                            Job::Issues => sync_stream(&state, tenant, &ISSUES).await,
                            Job::Comments => sync_stream(&state, tenant, &COMMENTS).await,
                        }
                    }
                }),
            }
        };
        let store = self.state.store.clone();
        vec![
            make("pulls", Job::Pulls),
            make("issues", Job::Issues),
            make("comments", Job::Comments),
            // `worker:http-cache:global`: the conditional-request cache would only grow.
            Spec {
                resource: "http-cache",
                scope: Scope::Global,
                when: When::Worker(Every::Fixed(Duration::from_secs(3600))),
                timeout: self.run_timeout,
                retry: RetryPolicy::remote_api(),
                applies_to: every_tenant(),
                work: spec_work(move |_ctx: TenantCtx| {
                    let store = store.clone();
                    async move {
                        let pruned = crate::cache::prune(&store, CacheLimits::default()).await?;
                        if pruned.removed > 0 {
                            tracing::info!(
                                removed = pruned.removed,
                                bytes_left = pruned.bytes_left,
                                "github: pruned the conditional-request cache"
                            );
                        }
                        Ok(())
                    }
                }),
            },
        ]
    }
}

#[derive(Clone, Copy)]
enum Job {
    Pulls,
    Issues,
    Comments,
}

/// `preflight:repository:{owner}/{name}`: the repository exists, these credentials may comment
/// and post statuses on it, and its id is cached.
async fn check_repository(state: &GithubState, tenant: &Tenant) -> Result<(), UnitError> {
    let repo = tenant.repo();
    let identity = state.client.identity(&repo).await.map_err(|e| match e.status() {
        Some(404) => UnitError::new(
            ErrorKind::NotFound,
            format!("the GitHub App is not installed on {repo} (configured in {}); install it on that repository", tenant.source),
        ),
        _ => e.into(),
    })?;
    let url = state.client.url(&format!("/repos/{repo}"));
    let found: octocrab::models::Repository =
        state.client.get(&identity, &url).await.map_err(|e| match e.status() {
            Some(404) => UnitError::new(
                ErrorKind::NotFound,
                format!(
                    "repository {repo} (configured in {}) was not found, or these credentials cannot see it; check the name and the token's access",
                    tenant.source
                ),
            ),
            Some(401) => UnitError::new(
                ErrorKind::BadCredentials,
                format!("GitHub rejected the credentials while reading {repo}: {e}; check [github] token or app settings"),
            ),
            _ => e.into(),
        })?;
    if let Some(permissions) = &found.permissions
        && !permissions.push
    {
        return Err(UnitError::new(
            ErrorKind::Forbidden,
            format!(
                "these credentials can read {repo} but cannot comment or post commit statuses on it; they need write (push) access"
            ),
        ));
    }
    let id = found.id.0;
    tenant.repo_id.set(id);
    state
        .store
        .set_tenant_repo_id(&repo, id)
        .await
        .map_err(UnitError::from)?;
    tracing::info!(repo = %repo, repo_id = id, "repository checked");
    Ok(())
}

fn load_open(c: &rusqlite::Connection, repo: &str) -> rusqlite::Result<Vec<Pull>> {
    let mut stmt = c.prepare(
        "SELECT number, title, head_sha, head_ref, head_repo, fork, author, author_association, draft, labels, updated_at, seen_at
         FROM pulls WHERE repo = ?1 AND state = 'open' ORDER BY number",
    )?;
    let rows = stmt.query_map([repo], |r| {
        let labels: String = r.get(9)?;
        Ok(Pull {
            number: r.get::<_, i64>(0)? as u64,
            title: r.get(1)?,
            head_sha: r.get(2)?,
            head_ref: r.get(3)?,
            head_repo: r.get(4)?,
            fork: r.get(5)?,
            author: r.get(6)?,
            author_association: r.get(7)?,
            draft: r.get(8)?,
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            updated_at: r.get(10)?,
            seen_at: r.get(11)?,
        })
    })?;
    rows.collect()
}

/// Whether a cold tenant skips this cycle to save quota. Cold: no open pull request and no change
/// for an hour (the first poll counts as a change: what we had not seen is new). While the quota is low, a cold tenant polls once every `COLD_STRETCH` cycles.
///
/// `unit` keys the skip counter (one per worker), `repo` names the tenant.
async fn skip_cold(
    state: &GithubState,
    unit: &str,
    repo: &str,
    low: bool,
) -> Result<bool, UnitError> {
    if !low {
        state
            .skips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(unit);
        return Ok(false);
    }
    let key = repo.to_owned();
    let cold_after = COLD_AFTER.as_secs() as i64;
    let cold: bool = state
        .store
        .read(move |c| {
            let open: i64 = c.query_row(
                "SELECT count(*) FROM pulls WHERE repo = ?1 AND state = 'open'",
                [&key],
                |r| r.get(0),
            )?;
            // A tenant never polled is not cold: it is unknown.
            let quiet: Option<i64> = c
                .query_row(
                    "SELECT 1 FROM poll_state WHERE repo = ?1 AND last_change_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2)",
                    params![key, format!("-{cold_after} seconds")],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(open == 0 && quiet.is_some())
        })
        .await
        .map_err(UnitError::from)?;
    if !cold {
        return Ok(false);
    }
    let mut skips = state.skips.lock().unwrap_or_else(|p| p.into_inner());
    let count = skips.entry(unit.to_owned()).or_insert(0);
    *count += 1;
    if *count < COLD_STRETCH {
        return Ok(true);
    }
    *count = 0;
    Ok(false)
}

/// Records a poll in `poll_state`: a change at once, a poll that changed nothing at most once a
/// [`POLL_STATE_WRITE_EVERY`] (in between it is kept in memory), so an idle poll writes nothing.
async fn record_poll(state: &GithubState, repo: &str, changed: bool) -> Result<(), UnitError> {
    let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let write = {
        let mut polled = state.polled.lock().unwrap_or_else(|p| p.into_inner());
        let mark = polled.entry(repo.to_owned()).or_insert(PollMark {
            at: String::new(),
            written: None,
        });
        mark.at = at;
        changed
            || mark
                .written
                .is_none_or(|w| w.elapsed() >= POLL_STATE_WRITE_EVERY)
    };
    if !write {
        return Ok(());
    }
    let key = repo.to_owned();
    state
        .store
        .write(move |c| {
            c.execute(
                "INSERT INTO poll_state (repo, last_poll_at, last_change_at)
                 VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                 ON CONFLICT (repo) DO UPDATE SET last_poll_at = excluded.last_poll_at,
                   last_change_at = CASE WHEN ?2 THEN excluded.last_change_at ELSE poll_state.last_change_at END",
                params![key, changed],
            )
        })
        .await
        .map_err(UnitError::from)?;
    if let Some(mark) = state
        .polled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(repo)
    {
        mark.written = Some(Instant::now());
    }
    Ok(())
}

/// `worker:pulls:{owner}/{name}`: every open pull request (all pages, conditional), stored and
/// handed on as the full set. A pull request that vanished from the list is confirmed closed with
/// one GET before it is marked so.
pub async fn poll_pulls(state: &GithubState, tenant: &Tenant) -> Result<(), UnitError> {
    let repo = tenant.repo();
    let identity = state.client.identity(&repo).await?;
    if skip_cold(
        state,
        &format!("pulls:{repo}"),
        &repo,
        identity.budget.is_low(),
    )
    .await?
    {
        tracing::debug!(repo = %repo, "quota low and tenant cold: skipping this poll");
        return Ok(());
    }
    let url = state
        .client
        .url(&format!("/repos/{repo}/pulls?state=open&per_page=100"));
    let seen = state
        .pulls_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&repo)
        .cloned();
    let listing = state
        .client
        .poll_all_unless_seen::<octocrab::models::pulls::PullRequest>(
            &identity,
            &url,
            seen.as_ref().map_or(&[][..], |s| &s.etags[..]),
        )
        .await?;
    let Some(listing) = listing else {
        // Every page answered 304 for what the last complete poll stored: nothing to decode,
        // compare or store. The set is still handed on, as after every poll.
        record_poll(state, &repo, false).await?;
        if let Some(seen) = seen {
            state.feed(&repo).send_replace(seen.published.clone());
        }
        return Ok(());
    };
    let Listing {
        items: listed,
        etags,
        ..
    } = listing;
    let mut open: Vec<Pull> = listed
        .iter()
        .filter_map(|pr| Pull::from_model(pr, &repo))
        .collect();
    drop(listed);

    let key = repo.clone();
    let known = state
        .store
        .read(move |c| load_open(c, &key))
        .await
        .map_err(UnitError::from)?;
    let listed_numbers: HashSet<u64> = open.iter().map(|p| p.number).collect();
    let mut closed = Vec::new();
    for gone in known.iter().filter(|k| !listed_numbers.contains(&k.number)) {
        let one = state
            .client
            .url(&format!("/repos/{repo}/pulls/{}", gone.number));
        let current: octocrab::models::pulls::PullRequest =
            match state.client.get(&identity, &one).await {
                Ok(pr) => pr,
                // Deleted (or hidden from us): it is not open any more.
                Err(e) if e.status() == Some(404) => {
                    closed.push((gone.number, None));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
        let still_open = matches!(current.state, Some(octocrab::models::IssueState::Open));
        if still_open {
            // The list lagged behind: keep it, with what the GET says now.
            if let Some(pull) = Pull::from_model(&current, &repo) {
                open.push(pull);
            }
        } else {
            // Merged or only closed: Slack threads and reports say which.
            closed.push((gone.number, current.merged_at.map(|at| at.to_rfc3339())));
        }
    }

    // A pull request the listing lacks but a GET found open: the next poll must look again even
    // if the listing is unchanged.
    let lagging = open.len() > listed_numbers.len();
    let known_by_number: HashMap<u64, &Pull> = known.iter().map(|p| (p.number, p)).collect();
    let changed_pulls: Vec<Pull> = open
        .iter()
        .filter(|p| {
            known_by_number.get(&p.number).is_none_or(|k| {
                k.head_sha != p.head_sha
                    || k.title != p.title
                    || k.labels != p.labels
                    || k.draft != p.draft
                    || k.head_repo != p.head_repo
                    || k.updated_at != p.updated_at
            })
        })
        .cloned()
        .collect();
    let changed = !changed_pulls.is_empty() || !closed.is_empty();
    if changed {
        let key = repo.clone();
        let closed_now = closed.clone();
        // Heads that are new for their pull request (or head again): remembered with the time,
        // so that an approval can be tied to the head seen when it was given.
        let new_heads: Vec<(u64, String)> = changed_pulls
            .iter()
            .filter(|p| {
                known_by_number
                    .get(&p.number)
                    .is_none_or(|k| k.head_sha != p.head_sha)
            })
            .map(|p| (p.number, p.head_sha.clone()))
            .collect();
        state
            .store
            .write(move |c| {
                let tx = c.transaction()?;
                for p in &changed_pulls {
                    tx.execute(
                        "INSERT INTO pulls (repo, number, state, title, head_sha, head_ref, head_repo, fork, author,
                           author_association, draft, labels, updated_at, seen_at, closed_at)
                         VALUES (?1, ?2, 'open', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), NULL)
                         ON CONFLICT (repo, number) DO UPDATE SET
                           seen_at = CASE WHEN pulls.head_sha = excluded.head_sha AND pulls.state = 'open'
                                          THEN pulls.seen_at ELSE excluded.seen_at END,
                           state = 'open', title = excluded.title, head_sha = excluded.head_sha,
                           head_ref = excluded.head_ref, head_repo = excluded.head_repo, fork = excluded.fork,
                           author = excluded.author, author_association = excluded.author_association,
                           draft = excluded.draft, labels = excluded.labels, updated_at = excluded.updated_at,
                           closed_at = NULL, merged_at = NULL",
                        params![
                            key,
                            p.number as i64,
                            p.title,
                            p.head_sha,
                            p.head_ref,
                            p.head_repo,
                            p.fork,
                            p.author,
                            p.author_association,
                            p.draft,
                            serde_json::to_string(&p.labels).unwrap_or_else(|_| "[]".into()),
                            p.updated_at,
                        ],
                    )?;
                }
                for (number, sha) in &new_heads {
                    tx.execute(
                        "INSERT INTO pull_heads (repo, number, sha, seen_at)
                         VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                         ON CONFLICT (repo, number, sha) DO UPDATE SET seen_at = excluded.seen_at",
                        params![key, *number as i64, sha],
                    )?;
                }
                for (number, merged_at) in &closed_now {
                    tx.execute(
                        "UPDATE pulls SET state = 'closed', closed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                                          merged_at = ?3
                         WHERE repo = ?1 AND number = ?2",
                        params![key, *number as i64, merged_at],
                    )?;
                }
                tx.commit()
            })
            .await
            .map_err(UnitError::from)?;
    }
    record_poll(state, &repo, changed).await?;
    let new_heads = changed_pulls_len(&open, &known_by_number);
    drop(known_by_number);
    // Unchanged: what was read at the start is what is stored; no second read.
    let stored = if changed {
        let key = repo.clone();
        state
            .store
            .read(move |c| load_open(c, &key))
            .await
            .map_err(UnitError::from)?
    } else {
        known
    };
    let published = Arc::new(PullSet {
        repo: repo.clone(),
        pulls: stored,
        polled: true,
    });
    {
        let mut pulls_seen = state.pulls_seen.lock().unwrap_or_else(|p| p.into_inner());
        match etags {
            Some(etags) if !lagging => {
                pulls_seen.insert(
                    repo.clone(),
                    Arc::new(PullsSeen {
                        etags,
                        published: published.clone(),
                    }),
                );
            }
            _ => {
                pulls_seen.remove(&repo);
            }
        }
    }
    state.feed(&repo).send_replace(published);
    // Logged once everything is stored and published, so the line means "visible everywhere".
    if changed {
        tracing::info!(
            repo = %repo,
            open = open.len(),
            new_heads,
            closed = closed.len(),
            "pull requests changed"
        );
    }
    Ok(())
}

fn changed_pulls_len(open: &[Pull], known: &HashMap<u64, &Pull>) -> usize {
    open.iter()
        .filter(|p| {
            known
                .get(&p.number)
                .is_none_or(|k| k.head_sha != p.head_sha)
        })
        .count()
}

/// A listing synchronised through a `since` cursor.
struct Stream {
    name: &'static str,
    /// The listing path after `/repos/{repo}`, oldest first, without `since`: the first sync,
    /// and the catch-up after more changes than one newest-first page holds.
    path: &'static str,
    /// The same listing newest first, one page, without `since`: once a cursor exists, each poll
    /// asks this URL. It never changes, so its ETag always applies: a change costs the one
    /// request that brings it, and no first poll of a new `since` URL follows.
    newest: &'static str,
    store: fn(&rusqlite::Transaction<'_>, &str, &serde_json::Value) -> rusqlite::Result<()>,
}

const ISSUES: Stream = Stream {
    name: "issues",
    path: "/issues?state=all&sort=updated&direction=asc&per_page=100",
    newest: "/issues?state=all&sort=updated&direction=desc&per_page=30",
    store: store_issue,
};

const COMMENTS: Stream = Stream {
    name: "comments",
    path: "/issues/comments?sort=updated&direction=asc&per_page=100",
    newest: "/issues/comments?sort=updated&direction=desc&per_page=30",
    store: store_comment,
};

fn text(v: &serde_json::Value, key: &str) -> String {
    v.get(key)
        .and_then(|x| x.as_str())
        .unwrap_or_default()
        .to_owned()
}

fn store_issue(
    tx: &rusqlite::Transaction<'_>,
    repo: &str,
    item: &serde_json::Value,
) -> rusqlite::Result<()> {
    let issue: octocrab::models::issues::Issue = match serde_json::from_value(item.clone()) {
        Ok(issue) => issue,
        Err(e) => {
            tracing::warn!(repo, error = %e, "skipping an issue the models cannot read");
            return Ok(());
        }
    };
    let labels: Vec<&str> = issue.labels.iter().map(|l| l.name.as_str()).collect();
    tx.execute(
        "INSERT INTO issues (repo, number, title, state, author, is_pull, labels, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (repo, number) DO UPDATE SET title = excluded.title, state = excluded.state,
           author = excluded.author, is_pull = excluded.is_pull, labels = excluded.labels, updated_at = excluded.updated_at",
        params![
            repo,
            issue.number as i64,
            issue.title,
            text(item, "state"),
            issue.user.login,
            issue.pull_request.is_some(),
            serde_json::to_string(&labels).unwrap_or_else(|_| "[]".into()),
            text(item, "updated_at"),
        ],
    )?;
    Ok(())
}

fn store_comment(
    tx: &rusqlite::Transaction<'_>,
    repo: &str,
    item: &serde_json::Value,
) -> rusqlite::Result<()> {
    // The issue number is the last segment of issue_url.
    let issue_number = text(item, "issue_url")
        .rsplit('/')
        .next()
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(0);
    let author = item
        .pointer("/user/login")
        .and_then(|v| v.as_str())
        .unwrap_or("ghost");
    tx.execute(
        "INSERT INTO comments (repo, id, issue_number, author, body, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (repo, id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
        params![
            repo,
            item.get("id").and_then(|v| v.as_i64()).unwrap_or(0),
            issue_number,
            author,
            text(item, "body"),
            text(item, "created_at"),
            text(item, "updated_at"),
        ],
    )?;
    Ok(())
}

/// A cursor: the newest `updated_at` processed and the ids processed at exactly that second.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub updated_at: String,
    pub ids: Vec<i64>,
}

impl Cursor {
    /// Whether an item was already processed. RFC 3339 strings of one format order like time.
    pub fn covers(&self, updated_at: &str, id: i64) -> bool {
        match updated_at.cmp(self.updated_at.as_str()) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => self.ids.contains(&id),
            std::cmp::Ordering::Greater => false,
        }
    }

    /// The cursor after processing `items` ((updated_at, id), any order).
    pub fn advance(&self, items: &[(String, i64)]) -> Cursor {
        let mut next = self.clone();
        for (updated_at, id) in items {
            match updated_at.as_str().cmp(next.updated_at.as_str()) {
                std::cmp::Ordering::Greater => {
                    next.updated_at = updated_at.clone();
                    next.ids = vec![*id];
                }
                std::cmp::Ordering::Equal if !next.ids.contains(id) => next.ids.push(*id),
                _ => {}
            }
        }
        next
    }
}

/// `worker:issues` and `worker:comments`: everything changed since the cursor, deduplicated by
/// the cursor, stored together with the new cursor in one transaction.
///
/// The first sync reads the listing oldest first, page by page. After it, each poll asks the
/// newest-first page (one stable URL, so 304 while nothing changed). When that page reaches
/// back past the cursor, it holds every change; otherwise (more changes than one page) the
/// oldest-first listing `since` the cursor catches up.
async fn sync_stream(
    state: &GithubState,
    tenant: &Tenant,
    stream: &'static Stream,
) -> Result<(), UnitError> {
    let repo = tenant.repo();
    let identity = state.client.identity(&repo).await?;
    let seen_key = format!("{}:{repo}", stream.name);
    if skip_cold(state, &seen_key, &repo, identity.budget.is_low()).await? {
        return Ok(());
    }
    let newest_url = state.client.url(&format!("/repos/{repo}{}", stream.newest));
    let seen = state
        .streams_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&seen_key)
        .cloned();
    let count = match seen {
        // Nothing changed since the stored page: no cursor to read, nothing to decode.
        Some(etag) => match state
            .client
            .poll_page_unless_seen::<serde_json::Value>(&identity, &newest_url, Some(&etag))
            .await?
        {
            None => 0,
            Some(page) => {
                let cursor = load_cursor(state, &repo, stream).await?;
                sync_newest(state, &identity, &repo, stream, cursor, page).await?
            }
        },
        None => {
            let cursor = load_cursor(state, &repo, stream).await?;
            if cursor.updated_at.is_empty() {
                sync_since(state, &identity, &repo, stream, cursor).await?
            } else {
                let page = state
                    .client
                    .poll_page::<serde_json::Value>(&identity, &newest_url)
                    .await?;
                sync_newest(state, &identity, &repo, stream, cursor, page).await?
            }
        }
    };
    if count == 0 {
        record_poll(state, &repo, false).await?;
        return Ok(());
    }
    tracing::info!(repo = %repo, stream = stream.name, count, "new or changed items");
    record_poll(state, &repo, true).await?;
    Ok(())
}

async fn load_cursor(
    state: &GithubState,
    repo: &str,
    stream: &'static Stream,
) -> Result<Cursor, UnitError> {
    let (key, name) = (repo.to_owned(), stream.name);
    Ok(state
        .store
        .read(move |c| {
            c.query_row(
                "SELECT updated_at, ids FROM cursors WHERE repo = ?1 AND stream = ?2",
                [&key, name],
                |r| {
                    let ids: String = r.get(1)?;
                    Ok(Cursor {
                        updated_at: r.get(0)?,
                        ids: serde_json::from_str(&ids).unwrap_or_default(),
                    })
                },
            )
            .optional()
        })
        .await
        .map_err(UnitError::from)?
        .unwrap_or_default())
}

/// Stores what the newest-first `page` holds past the cursor; when the page does not reach back
/// to the cursor, catches up oldest first from it. Remembers the page's ETag once everything up
/// to it is stored. Returns how many items were new.
async fn sync_newest(
    state: &GithubState,
    identity: &crate::client::Identity,
    repo: &str,
    stream: &'static Stream,
    cursor: Cursor,
    page: Page<serde_json::Value>,
) -> Result<usize, UnitError> {
    // Newest first: the page holds every item changed since the cursor when it ends (no next
    // page) or reaches an item older than the cursor's second (items of that very second may
    // continue on the next page).
    let complete = page.next.is_none()
        || page.items.iter().any(|item| {
            let updated_at = text(item, "updated_at");
            !updated_at.is_empty() && updated_at < cursor.updated_at
        });
    let count = if complete {
        let mut items = page.items;
        items.reverse();
        store_fresh(state, repo, stream, &cursor, items).await?.0
    } else {
        sync_since(state, identity, repo, stream, cursor).await?
    };
    if let Some(etag) = page.etag {
        state
            .streams_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(format!("{}:{repo}", stream.name), etag);
    }
    Ok(count)
}

/// The listing oldest first from the cursor (`since` it, or everything without one), page by
/// page: each page is stored with the cursor it advances to in one transaction, so a first sync
/// of a large repository that fails halfway keeps what it read and resumes from there, and never
/// holds every page in memory. Returns how many items were new.
async fn sync_since(
    state: &GithubState,
    identity: &crate::client::Identity,
    repo: &str,
    stream: &'static Stream,
    cursor: Cursor,
) -> Result<usize, UnitError> {
    let mut url = state.client.url(&format!("/repos/{repo}{}", stream.path));
    if !cursor.updated_at.is_empty() {
        url.push_str("&since=");
        url.push_str(&cursor.updated_at);
    }
    let mut cursor = cursor;
    let mut count = 0;
    let mut page_url = Some(url.clone());
    let mut pages = 0;
    while let Some(page) = page_url.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(state.client.too_many_pages(&url).into());
        }
        let Page { items, next, .. } = state
            .client
            .poll_page::<serde_json::Value>(identity, &page)
            .await?;
        page_url = next;
        let (fresh, next_cursor) = store_fresh(state, repo, stream, &cursor, items).await?;
        count += fresh;
        cursor = next_cursor;
    }
    Ok(count)
}

/// Stores the items (oldest first) the cursor does not cover, with the cursor they advance it
/// to, in one transaction. Returns how many were stored and the cursor now.
async fn store_fresh(
    state: &GithubState,
    repo: &str,
    stream: &'static Stream,
    cursor: &Cursor,
    items: Vec<serde_json::Value>,
) -> Result<(usize, Cursor), UnitError> {
    let fresh: Vec<(String, i64, serde_json::Value)> = items
        .into_iter()
        .filter_map(|item| {
            let updated_at = text(&item, "updated_at");
            let id = item.get("id").and_then(|v| v.as_i64())?;
            (!updated_at.is_empty() && !cursor.covers(&updated_at, id))
                .then_some((updated_at, id, item))
        })
        .collect();
    if fresh.is_empty() {
        return Ok((0, cursor.clone()));
    }
    let next = cursor.advance(
        &fresh
            .iter()
            .map(|(u, id, _)| (u.clone(), *id))
            .collect::<Vec<_>>(),
    );
    let count = fresh.len();
    let (key, name, store_item, saved) = (repo.to_owned(), stream.name, stream.store, next.clone());
    state
        .store
        .write(move |c| {
            let tx = c.transaction()?;
            for (_, _, item) in &fresh {
                store_item(&tx, &key, item)?;
            }
            tx.execute(
                "INSERT INTO cursors (repo, stream, updated_at, ids) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (repo, stream) DO UPDATE SET updated_at = excluded.updated_at, ids = excluded.ids",
                params![key, name, saved.updated_at, serde_json::to_string(&saved.ids).unwrap_or_else(|_| "[]".into())],
            )?;
            tx.commit()
        })
        .await
        .map_err(UnitError::from)?;
    Ok((count, next))
}

/// Reads back what the comments worker stored, oldest first (for tests and later command parsing).
pub async fn stored_comments(
    store: &Store,
    repo: &str,
) -> Result<Vec<(i64, i64, String, String)>, GithubError> {
    let repo = repo.to_owned();
    Ok(store
        .read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, issue_number, author, body FROM comments WHERE repo = ?1 ORDER BY updated_at, id",
            )?;
            let rows = stmt.query_map([&repo], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect()
        })
        .await?)
}

/// Numbers of the stored issues (and pull requests), for tests.
pub async fn stored_issue_numbers(store: &Store, repo: &str) -> Result<Vec<i64>, GithubError> {
    let repo = repo.to_owned();
    Ok(store
        .read(move |c| {
            let mut stmt =
                c.prepare("SELECT number FROM issues WHERE repo = ?1 ORDER BY number")?;
            let rows = stmt.query_map([&repo], |r| r.get(0))?;
            rows.collect()
        })
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> String {
        s.to_owned()
    }

    #[test]
    fn the_cursor_neither_skips_nor_repeats_within_one_second() {
        let empty = Cursor::default();
        assert!(!empty.covers("2026-01-01T00:00:00Z", 1));
        let c = empty.advance(&[
            (at("2026-01-01T00:00:05Z"), 7),
            (at("2026-01-01T00:00:05Z"), 3),
            (at("2026-01-01T00:00:01Z"), 9),
        ]);
        assert_eq!(c.updated_at, "2026-01-01T00:00:05Z");
        assert_eq!(c.ids, [7, 3]);
        // `since` is inclusive: the items at 00:05 come back and are recognised...
        assert!(c.covers("2026-01-01T00:00:05Z", 7));
        assert!(c.covers("2026-01-01T00:00:05Z", 3));
        assert!(c.covers("2026-01-01T00:00:01Z", 9));
        // ...but another item updated in that same second is new, and so is anything later.
        assert!(!c.covers("2026-01-01T00:00:05Z", 4));
        assert!(!c.covers("2026-01-01T00:00:06Z", 7));
        let c2 = c.advance(&[(at("2026-01-01T00:00:05Z"), 4)]);
        assert_eq!(c2.ids, [7, 3, 4]);
    }
}
