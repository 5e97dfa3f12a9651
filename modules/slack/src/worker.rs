//! `worker:slack:{owner}/{name}`: one pass over a tenant's whole state. It finishes what a crash
//! left half done (an intent without ts is looked up in Slack by its metadata key), records the
//! first pass (the items that predate it get no thread unless `backfill` covers them), then
//! applies [`decide`]'s steps, each recorded before and after its post.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use productbuilder_scheduler::{ErrorKind, UnitError};
use productbuilder_store::Store;

use crate::api::{SlackApi, SlackError};
use crate::db;
use crate::debounce::StatusDebounce;
use crate::decide::{self, State, Step, backfilled};

/// The part of every GitHub marker comment the daemon writes (`<!-- productbuilder:preview -->`).
pub const MARKER_PREFIX: &str = "<!-- productbuilder:";

/// What a pass needs besides the database and the client.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub repo: String,
    pub channel: String,
    /// GitHub's web origin (`https://github.com`), for links.
    pub web: String,
    pub backfill: Option<Duration>,
    /// The daemon's own GitHub login, when known: its comments are never mirrored.
    pub own_login: Option<String>,
    /// Held by the module across passes.
    pub debounce: Arc<StatusDebounce>,
}

/// Unix seconds.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn store_err(e: productbuilder_store::StoreError) -> UnitError {
    UnitError::new(ErrorKind::Internal, e.to_string())
}

fn slack_err(e: SlackError) -> UnitError {
    e.into_unit_error()
}

/// The key a message carries in its metadata: unique in the channel, so a parent can be found in
/// the channel's history and anything else in its thread.
fn metadata_key(repo: &str, number: u64, key: &str) -> String {
    format!("{repo}#{number}:{key}")
}

/// One pass for `tenant`. When it would edit a status message written less than the debounce
/// window ago, it waits out the window and decides again from a fresh read, so a burst of
/// transitions is one edit with the latest state.
pub async fn pass(api: &SlackApi, store: &Store, tenant: &Tenant) -> Result<(), UnitError> {
    recover(api, store, tenant).await?;
    let mut steps = decided(store, tenant).await?;
    let edits = steps.iter().filter_map(|step| match step {
        Step::Status { number, .. } => Some(*number),
        _ => None,
    });
    if let Some(rest) = tenant.debounce.wait_before(&tenant.repo, edits) {
        tenant.debounce.wait(rest).await;
        steps = decided(store, tenant).await?;
    }
    for step in steps {
        apply(api, store, tenant, step).await?;
    }
    Ok(())
}

async fn decided(store: &Store, tenant: &Tenant) -> Result<Vec<Step>, UnitError> {
    let state = gather(store, tenant).await?;
    Ok(decide::decide(
        &state,
        tenant.own_login.as_deref(),
        MARKER_PREFIX,
    ))
}

/// Intents without a ts (a crash between recording and posting, or between posting and
/// recording the ts): found in Slack by their key, or forgotten so that they are posted again.
async fn recover(api: &SlackApi, store: &Store, tenant: &Tenant) -> Result<(), UnitError> {
    let repo = tenant.repo.clone();
    let (events, threads) = store
        .read(move |c| Ok((db::events(c, &repo)?, db::threads(c, &repo)?)))
        .await
        .map_err(store_err)?;
    for e in events.into_iter().filter(|e| e.ts.is_none()) {
        let wanted = metadata_key(&tenant.repo, e.number, &e.key);
        let oldest = format!("{}.000000", e.intended_at - 60);
        let thread = threads.get(&e.number).map(|t| t.parent_ts.as_str());
        let found = match (e.key == "parent", thread) {
            (true, _) => {
                api.find_by_key(&tenant.channel, None, &oldest, &wanted)
                    .await
            }
            (false, Some(parent)) => {
                api.find_by_key(&tenant.channel, Some(parent), &oldest, &wanted)
                    .await
            }
            // No thread to look in: the intent is forgotten and the post made again.
            (false, None) => Ok(None),
        }
        .map_err(slack_err)?;
        let (repo, channel, key, number) = (
            tenant.repo.clone(),
            tenant.channel.clone(),
            e.key.clone(),
            e.number,
        );
        let status_number = threads.contains_key(&number);
        let was_found = found.is_some();
        store
            .write(move |c| {
                let tx = c.transaction()?;
                match found {
                    Some(ts) => {
                        db::mark_sent(&tx, &repo, number, &key, &ts)?;
                        if key == "parent" {
                            // The text is unknown: an empty one makes the next pass edit it.
                            db::insert_thread(&tx, &repo, number, &channel, &ts, "")?;
                        } else if key == "status" && status_number {
                            db::set_status(&tx, &repo, number, &ts, None)?;
                        }
                    }
                    None => db::forget_intent(&tx, &repo, number, &key)?,
                }
                tx.commit()
            })
            .await
            .map_err(store_err)?;
        tracing::info!(repo = %tenant.repo, number, key = %e.key, found = was_found,
            "Slack: finished an interrupted post");
    }
    Ok(())
}

async fn gather(store: &Store, tenant: &Tenant) -> Result<State, UnitError> {
    let (repo, web, backfill) = (tenant.repo.clone(), tenant.web.clone(), tenant.backfill);
    let r = repo.clone();
    let started = store
        .read(move |c| db::first_pass(c, &r))
        .await
        .map_err(store_err)?;
    if started.is_none() {
        // The first pass marks what predates Slack, in one transaction: a kill halfway must not
        // leave the mark without the items it skips (they would all get threads).
        let (r, w) = (repo.clone(), web.clone());
        store
            .write(move |c| {
                let tx = c.transaction()?;
                if db::first_pass(&tx, &r)?.is_none() {
                    let now = now();
                    let skipped: Vec<u64> = db::items(&tx, &r, &w)?
                        .iter()
                        .filter(|i| {
                            let age = i
                                .updated_at
                                .map_or(u64::MAX, |at| (now as u64).saturating_sub(at));
                            !backfilled(Duration::from_secs(age), backfill)
                        })
                        .map(|i| i.item.number)
                        .collect();
                    db::begin(&tx, &r, &now.to_string(), &skipped)?;
                    tracing::info!(repo = %r, skipped = skipped.len(),
                        "first Slack pass: items that predate it get no thread unless backfill covers them");
                }
                tx.commit()
            })
            .await
            .map_err(store_err)?;
    }
    // Every other pass only reads, on the store's readers.
    store
        .read(move |c| {
            let mut events: BTreeMap<u64, _> = BTreeMap::new();
            for e in db::events(c, &repo)? {
                events
                    .entry(e.number)
                    .or_insert_with(std::collections::BTreeSet::new)
                    .insert(e.key);
            }
            Ok(State {
                items: db::items(c, &repo, &web)?
                    .into_iter()
                    .map(|i| i.item)
                    .collect(),
                previews: db::previews(c, &repo)?,
                builds: db::builds(c, &repo)?,
                comments: db::comments(c, &repo, &web)?,
                threads: db::threads(c, &repo)?,
                skipped: db::skipped(c, &repo)?,
                events,
                adoptions: db::adoptions(c, &repo, now())?,
            })
        })
        .await
        .map_err(store_err)
}

/// Records the intent, posts with the key as metadata, records the ts.
async fn post_once(
    api: &SlackApi,
    store: &Store,
    tenant: &Tenant,
    number: u64,
    key: &str,
    thread_ts: Option<&str>,
    text: &str,
) -> Result<String, UnitError> {
    let (repo, k) = (tenant.repo.clone(), key.to_owned());
    store
        .write(move |c| db::intend(c, &repo, number, &k, now()))
        .await
        .map_err(store_err)?;
    let meta = metadata_key(&tenant.repo, number, key);
    let ts = api
        .post(&tenant.channel, thread_ts, text, Some(&meta))
        .await
        .map_err(slack_err)?;
    Ok(ts)
}

async fn apply(
    api: &SlackApi,
    store: &Store,
    tenant: &Tenant,
    step: Step,
) -> Result<(), UnitError> {
    let repo = tenant.repo.clone();
    match step {
        Step::StartThread { number, text } => {
            let ts = post_once(api, store, tenant, number, "parent", None, &text).await?;
            let channel = tenant.channel.clone();
            store
                .write(move |c| {
                    let tx = c.transaction()?;
                    db::insert_thread(&tx, &repo, number, &channel, &ts, &text)?;
                    db::mark_sent(&tx, &repo, number, "parent", &ts)?;
                    tx.commit()
                })
                .await
                .map_err(store_err)?;
        }
        Step::Adopt { number, thread_ts } => {
            let channel = tenant.channel.clone();
            store
                .write(move |c| db::adopt(c, &repo, number, &channel, &thread_ts))
                .await
                .map_err(store_err)?;
        }
        Step::EditParent { number, text } => {
            let parent_ts = thread_ts(store, tenant, number).await?;
            api.update(&tenant.channel, &parent_ts, &text)
                .await
                .map_err(slack_err)?;
            store
                .write(move |c| db::set_parent_text(c, &repo, number, &text))
                .await
                .map_err(store_err)?;
        }
        Step::Status { number, text } => {
            let (parent_ts, status_ts) = {
                let repo = repo.clone();
                store
                    .read(move |c| Ok(db::threads(c, &repo)?.remove(&number)))
                    .await
                    .map_err(store_err)?
                    .map(|t| (t.parent_ts, t.status_ts))
                    .ok_or_else(|| {
                        UnitError::new(ErrorKind::Internal, "status before its thread")
                    })?
            };
            let ts = match status_ts {
                Some(ts) => {
                    api.update(&tenant.channel, &ts, &text)
                        .await
                        .map_err(slack_err)?;
                    ts
                }
                None => {
                    post_once(
                        api,
                        store,
                        tenant,
                        number,
                        "status",
                        Some(&parent_ts),
                        &text,
                    )
                    .await?
                }
            };
            store
                .write(move |c| {
                    let tx = c.transaction()?;
                    db::set_status(&tx, &repo, number, &ts, Some(&text))?;
                    db::mark_sent(&tx, &repo, number, "status", &ts)?;
                    tx.commit()
                })
                .await
                .map_err(store_err)?;
            tenant.debounce.written(&tenant.repo, number);
        }
        Step::Event { number, key, text } => {
            let parent_ts = thread_ts(store, tenant, number).await?;
            let ts = post_once(api, store, tenant, number, &key, Some(&parent_ts), &text).await?;
            store
                .write(move |c| db::mark_sent(c, &repo, number, &key, &ts))
                .await
                .map_err(store_err)?;
        }
    }
    Ok(())
}

/// The open pull requests and their previews, for `status` answers.
pub async fn open_pulls(
    store: &Store,
    repo: &str,
    web: &str,
) -> Result<Vec<crate::mentions::OpenPull>, UnitError> {
    let (repo, web) = (repo.to_owned(), web.to_owned());
    store
        .read(move |c| {
            let previews = db::previews(c, &repo)?;
            Ok(db::items(c, &repo, &web)?
                .into_iter()
                .map(|i| i.item)
                .filter(|i| {
                    i.kind == crate::text::Kind::Pull && i.state == crate::text::ItemState::Open
                })
                .map(|i| crate::mentions::OpenPull {
                    preview: previews
                        .get(&i.number)
                        .map(|p| (p.status.clone(), p.url.clone())),
                    number: i.number,
                    title: i.title,
                    url: i.url,
                })
                .collect())
        })
        .await
        .map_err(store_err)
}

async fn thread_ts(store: &Store, tenant: &Tenant, number: u64) -> Result<String, UnitError> {
    let repo = tenant.repo.clone();
    store
        .read(move |c| Ok(db::threads(c, &repo)?.remove(&number)))
        .await
        .map_err(store_err)?
        .map(|t| t.parent_ts)
        .ok_or_else(|| UnitError::new(ErrorKind::Internal, "no thread recorded"))
}
