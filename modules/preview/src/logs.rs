//! A preview's logs, as the repository's contract says to read them (the container's output, or
//! a file inside it), for the API and the dashboard. Follows are bounded: at most [`MAX_FOLLOWS`]
//! per preview (each holds an engine connection and maybe a process in the container), each at
//! most [`MAX_FOLLOW_DURATION`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::LogStream;
use crate::reconcile::Previews;

/// Log follows of one preview at once: each holds a connection to the engine (and, for a log file,
/// a process in the container), so an API client must not be able to open them without end.
pub const MAX_FOLLOWS: usize = 4;
/// How long one log follow lasts at most; the client reconnects for more.
pub const MAX_FOLLOW_DURATION: Duration = Duration::from_secs(30 * 60);

/// Why a preview's logs cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogsError {
    /// No such preview, removed, or not started: nothing to read.
    #[error("{0}")]
    NotFound(String),
    /// The preview exists but its logs cannot be read now (the engine, a missing container).
    #[error("{0}")]
    Unavailable(String),
    /// [`MAX_FOLLOWS`] follows of this preview are open already.
    #[error("{0}")]
    TooManyFollows(String),
}

/// Log follows open now, per preview.
#[derive(Clone, Default)]
pub(crate) struct Follows(Arc<Mutex<HashMap<(String, u64), usize>>>);

/// One open log follow of a preview; gives its place back when dropped.
struct FollowSlot {
    follows: Follows,
    key: (String, u64),
}

impl Follows {
    fn take(&self, key: (String, u64)) -> Option<FollowSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.clone()).or_default();
        if *n >= MAX_FOLLOWS {
            return None;
        }
        *n += 1;
        Some(FollowSlot {
            follows: self.clone(),
            key,
        })
    }
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        let mut open = self.follows.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// `stream`, ended after `limit` at the latest.
pub fn at_most(stream: LogStream, limit: Duration) -> LogStream {
    use futures_util::StreamExt;
    Box::pin(stream.take_until(tokio::time::sleep(limit)))
}

impl Previews {
    /// The preview's logs, as the repository's contract says to read them. A follow takes one of
    /// the preview's [`MAX_FOLLOWS`] places until its stream is dropped, and ends after
    /// [`MAX_FOLLOW_DURATION`].
    pub async fn logs(
        &self,
        repo: &str,
        number: u64,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, LogsError> {
        let missing =
            |what: &str| LogsError::NotFound(format!("the preview of {repo}#{number} {what}"));
        let unavailable = |e: &dyn std::fmt::Display| LogsError::Unavailable(e.to_string());
        let row = self
            .get(repo, number)
            .await
            .map_err(|e| unavailable(&e))?
            .ok_or_else(|| missing("does not exist"))?;
        if !row.is_live() {
            return Err(missing("was removed"));
        }
        let service = row
            .log_service
            .clone()
            .ok_or_else(|| missing("has not started yet"))?;
        let slot = if follow {
            let slot = self.inner.follows.take((repo.to_owned(), number));
            Some(slot.ok_or_else(|| {
                LogsError::TooManyFollows(format!(
                    "the preview of {repo}#{number} has {MAX_FOLLOWS} log follows open already; close one, or read without follow"
                ))
            })?)
        } else {
            None
        };
        let engine = self.engine().await.map_err(|e| unavailable(&e))?;
        let stream = match &row.log_file {
            None => {
                engine
                    .container_logs(&row.project, &service, tail, follow)
                    .await
            }
            Some(path) => {
                engine
                    .file_logs(&row.project, &service, path, tail, follow)
                    .await
            }
        };
        // The preview exists; its container may be gone (a failed start) or the engine away.
        let stream = stream.map_err(|e| unavailable(&e))?;
        Ok(match slot {
            None => stream,
            Some(slot) => {
                use futures_util::StreamExt;
                // The stream owns its place: dropped with it, however the follow ends.
                let stream = stream.map(move |item| {
                    let _owned = &slot;
                    item
                });
                at_most(Box::pin(stream), MAX_FOLLOW_DURATION)
            }
        })
    }
}
