//! The loop closes: a completed build's pull request gets its preview like any other, and when
//! that preview is ready, the build's result and its comment on the issue carry `preview_url`.
//! Read from the previews' rows (the preview module's table) on each pass of the builds worker;
//! idempotent (a build with a `preview_url` is not looked at again).

use chrono::{DateTime, Utc};
use productbuilder_store::Store;
use productbuilder_store::rusqlite::{self, Connection};

use crate::comment;
use crate::forge::Forge;
use crate::queue::{Queue, QueueError};
use crate::records::BuildId;

/// A completed build whose pull request's preview is ready and not yet in its result.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ready {
    build: BuildId,
    url: String,
}

fn ready(c: &Connection, repo: &str) -> rusqlite::Result<Vec<Ready>> {
    let mut stmt = c.prepare(
        "SELECT b.id, p.url FROM builds b
         JOIN previews p ON p.repo = b.repo AND p.number = json_extract(b.result, '$.pr_number')
         WHERE b.repo = ?1 AND b.status = 'completed' AND p.status = 'ready'
           AND json_extract(b.result, '$.preview_url') IS NULL
         ORDER BY b.id",
    )?;
    let rows = stmt.query_map([repo], |r| {
        Ok(Ready {
            build: BuildId(r.get(0)?),
            url: r.get(1)?,
        })
    })?;
    rows.collect()
}

/// Links every ready preview of `repo`'s completed builds; how many were linked.
pub async fn link_previews(
    store: &Store,
    queue: &Queue,
    forge: &dyn Forge,
    repo: &str,
    now: DateTime<Utc>,
) -> Result<usize, QueueError> {
    let r = repo.to_owned();
    let found = store.read(move |c| ready(c, &r)).await?;
    let mut linked = 0;
    for Ready { build, url } in found {
        let Some(build) = queue.set_preview_url(build, &url, now).await? else {
            continue;
        };
        linked += 1;
        tracing::info!(repo, build = build.id.0, preview = %url, "builds: the build's preview is ready");
        let (Some(result), Some(number)) = (&build.result, build.number) else {
            continue;
        };
        let pr = match (result.pr_number, result.pr_url.as_deref()) {
            (Some(n), Some(u)) => Some((n, u, false)),
            _ => None,
        };
        let body = comment::body(comment::View {
            id: build.id,
            status: build.status.as_str(),
            step: None,
            branch: result.branch.as_deref(),
            pr,
            progress: &[],
            detail: None,
            preview: Some(&url),
        });
        // The comment is a report: a failure is logged, and the next change writes it again.
        if let Err(e) = forge.upsert_build_comment(repo, number, &body).await {
            tracing::warn!(repo, build = build.id.0, error = %e, "builds: the build comment was not written");
        }
    }
    Ok(linked)
}
