//! The conditional-request cache: the last ETag, body and next-page link of every polled URL, per
//! stable identity, in the `http_cache` table.
//!
//! Every `since=` (issues, comments) and `sha=` URL the pollers ever asked for gets a row, and a
//! body can be large, so the table would only grow: [`prune`] removes what nobody used for a week
//! and, past a size cap, the least recently used. Reads mark a row used at most once a day, so a
//! poll answered 304 stays a read. The client keeps each row's ETag in memory too
//! (`client::Validator`), so most 304s read nothing here at all.

use std::time::Duration;

use productbuilder_store::Store;
use productbuilder_store::rusqlite::{self, OptionalExtension, params};

use crate::client::GithubError;

/// One cached answer.
#[derive(Debug)]
pub(crate) struct CacheEntry {
    pub etag: String,
    pub body: Vec<u8>,
    pub next: Option<String>,
}

/// SQLite's "now" in the table's timestamp format.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

pub(crate) async fn get(
    store: &Store,
    identity: &str,
    url: &str,
) -> Result<Option<CacheEntry>, GithubError> {
    let (identity, url) = (identity.to_owned(), url.to_owned());
    // Every poll looks its URL up here: on a reader, so it never waits behind a cache write.
    let key = (identity.clone(), url.clone());
    let found = store
        .read(move |c| {
            c.query_row(
                "SELECT etag, body, next_url,
                        used_at IS NULL OR used_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')
                 FROM http_cache WHERE identity = ?1 AND url = ?2",
                [&key.0, &key.1],
                |r| {
                    Ok((
                        CacheEntry {
                            etag: r.get(0)?,
                            body: r.get(1)?,
                            next: r.get(2)?,
                        },
                        r.get::<_, bool>(3)?,
                    ))
                },
            )
            .optional()
        })
        .await?;
    let Some((entry, stale)) = found else {
        return Ok(None);
    };
    // `used_at` is kept to the day (what pruning needs), so an entry costs a write at most
    // once a day, not once a poll.
    if stale {
        store
            .write(move |c| {
                c.execute(
                    &format!(
                        "UPDATE http_cache SET used_at = {NOW} WHERE identity = ?1 AND url = ?2"
                    ),
                    [&identity, &url],
                )
            })
            .await?;
    }
    Ok(Some(entry))
}

/// The body of the row for `url` if it still holds the version `etag` (a row may have been
/// pruned or replaced since the caller learnt the ETag).
pub(crate) async fn body(
    store: &Store,
    identity: &str,
    url: &str,
    etag: &str,
) -> Result<Option<Vec<u8>>, GithubError> {
    let (identity, url, etag) = (identity.to_owned(), url.to_owned(), etag.to_owned());
    Ok(store
        .read(move |c| {
            c.query_row(
                "SELECT body FROM http_cache WHERE identity = ?1 AND url = ?2 AND etag = ?3",
                [&identity, &url, &etag],
                |r| r.get(0),
            )
            .optional()
        })
        .await?)
}

/// Marks a row used now, for a reader that answers its polls from the row's ETag alone.
pub(crate) async fn mark_used(store: &Store, identity: &str, url: &str) -> Result<(), GithubError> {
    let (identity, url) = (identity.to_owned(), url.to_owned());
    store
        .write(move |c| {
            c.execute(
                &format!("UPDATE http_cache SET used_at = {NOW} WHERE identity = ?1 AND url = ?2"),
                [&identity, &url],
            )
        })
        .await?;
    Ok(())
}

pub(crate) async fn put(
    store: &Store,
    identity: &str,
    url: &str,
    etag: &str,
    body: &[u8],
    next: Option<&str>,
) -> Result<(), GithubError> {
    let (identity, url, etag, body, next) = (
        identity.to_owned(),
        url.to_owned(),
        etag.to_owned(),
        body.to_vec(),
        next.map(str::to_owned),
    );
    store
        .write(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO http_cache (identity, url, etag, body, next_url, stored_at, used_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, {NOW}, {NOW})
                     ON CONFLICT (identity, url) DO UPDATE SET etag = excluded.etag,
                       body = excluded.body, next_url = excluded.next_url,
                       stored_at = excluded.stored_at, used_at = excluded.used_at"
                ),
                params![identity, url, etag, body, next],
            )
            .map(|_| ())
        })
        .await?;
    Ok(())
}

/// How much the cache may keep.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Entries unused for longer are removed.
    pub max_unused: Duration,
    /// Past this many body bytes, the least recently used entries are removed.
    pub max_bytes: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_unused: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What one [`prune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub removed: usize,
    pub bytes_left: u64,
}

/// Removes entries unused for longer than `limits.max_unused`, then the least recently used
/// until the bodies fit in `limits.max_bytes`. One transaction.
pub async fn prune(store: &Store, limits: CacheLimits) -> Result<Pruned, GithubError> {
    let seconds = limits.max_unused.as_secs();
    let max_bytes = limits.max_bytes;
    Ok(store
        .write(move |c| {
            let tx = c.transaction()?;
            let mut removed = tx.execute(
                "DELETE FROM http_cache
                 WHERE used_at IS NULL
                    OR used_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)",
                [format!("-{seconds} seconds")],
            )?;
            let mut total: u64 = tx.query_row(
                "SELECT COALESCE(SUM(length(body)), 0) FROM http_cache",
                [],
                |r| r.get::<_, i64>(0).map(|n| n.max(0) as u64),
            )?;
            if total > max_bytes {
                let oldest: Vec<(i64, u64)> = {
                    let mut stmt = tx.prepare(
                        "SELECT rowid, length(body) FROM http_cache ORDER BY used_at, rowid",
                    )?;
                    stmt.query_map([], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
                    })?
                    .collect::<rusqlite::Result<_>>()?
                };
                for (rowid, bytes) in oldest {
                    if total <= max_bytes {
                        break;
                    }
                    tx.execute("DELETE FROM http_cache WHERE rowid = ?1", [rowid])?;
                    total -= bytes;
                    removed += 1;
                }
            }
            tx.commit()?;
            Ok(Pruned {
                removed,
                bytes_left: total,
            })
        })
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> Store {
        let store = Store::in_memory().unwrap();
        store.migrate().unwrap();
        store
    }

    /// Sets a row's `used_at` to `days` ago.
    async fn age(store: &Store, url: &str, days: u32) {
        let url = url.to_owned();
        store
            .write(move |c| {
                c.execute(
                    "UPDATE http_cache SET used_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) WHERE url = ?2",
                    params![format!("-{days} days"), url],
                )
            })
            .await
            .unwrap();
    }

    async fn urls(store: &Store) -> Vec<String> {
        store
            .read(|c| {
                let mut s = c.prepare("SELECT url FROM http_cache ORDER BY url")?;
                s.query_map([], |r| r.get(0))?.collect()
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn entries_unused_for_a_week_go_and_the_rest_stay() {
        let store = store().await;
        for url in ["a", "b", "c"] {
            put(&store, "token:x", url, "\"e\"", b"body", None)
                .await
                .unwrap();
        }
        age(&store, "a", 8).await;
        age(&store, "b", 6).await;
        let pruned = prune(&store, CacheLimits::default()).await.unwrap();
        assert_eq!(pruned.removed, 1);
        assert_eq!(urls(&store).await, ["b", "c"]);
    }

    #[tokio::test]
    async fn past_the_cap_the_least_recently_used_go_first() {
        let store = store().await;
        for (url, days) in [("old", 5), ("mid", 3), ("new", 0)] {
            put(&store, "token:x", url, "\"e\"", &[0u8; 100], None)
                .await
                .unwrap();
            age(&store, url, days).await;
        }
        let limits = CacheLimits {
            max_bytes: 150,
            ..CacheLimits::default()
        };
        let pruned = prune(&store, limits).await.unwrap();
        assert_eq!(
            pruned,
            Pruned {
                removed: 2,
                bytes_left: 100
            }
        );
        assert_eq!(urls(&store).await, ["new"]);
    }

    #[tokio::test]
    async fn a_read_marks_a_stale_entry_used_and_keeps_it() {
        let store = store().await;
        put(&store, "token:x", "polled", "\"e\"", b"body", None)
            .await
            .unwrap();
        age(&store, "polled", 8).await;
        let hit = get(&store, "token:x", "polled").await.unwrap().unwrap();
        assert_eq!(hit.etag, "\"e\"");
        assert_eq!(
            prune(&store, CacheLimits::default()).await.unwrap().removed,
            0
        );
        assert_eq!(urls(&store).await, ["polled"]);
    }
}
