//! The `download` step: the head's tarball into this attempt's own directory, retried when the
//! failure looks transient (a network error, GitHub's 5xx or rate limit).

use std::path::PathBuf;
use std::time::Duration;

use super::{Attempt, Stop};
use crate::source;
use crate::state::Stage;

/// Attempts at a download whose failure looks transient, and the first wait between them
/// (then four times longer each time).
const DOWNLOAD_ATTEMPTS: u32 = 3;
const DOWNLOAD_BACKOFF: Duration = Duration::from_secs(2);

/// The extracted checkout's directory.
pub(super) async fn run(a: &Attempt<'_>) -> Result<PathBuf, Stop> {
    a.step(Stage::Download).await?;
    let client = &a.previews.inner.github.client;
    let limits = &a.previews.inner.settings.limits;
    let mut attempt = 1;
    loop {
        match a
            .or_cancel(source::download(client, a.repo, a.sha, &a.dir, limits))
            .await?
        {
            Ok(dir) => return Ok(dir),
            Err(e) if e.transient && attempt < DOWNLOAD_ATTEMPTS => {
                let wait = DOWNLOAD_BACKOFF * 4u32.pow(attempt - 1);
                tracing::info!(repo = a.repo, number = a.number, sha = a.sha, attempt, error = %e.message, ?wait, "previews: download failed; retrying");
                a.or_cancel(tokio::time::sleep(wait)).await?;
                attempt += 1;
            }
            Err(e) if e.host => return Err(Stop::host(e.stage, e.message)),
            Err(e) => return Err(Stop::failed(e.stage, e.message)),
        }
    }
}
