//! The build comment while the agent runs: its latest progress lines (already redacted in the
//! runner's events), at most every `progress_comment_every` and only when there is something new.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{BuildEvent, EventKind};
use crate::comment;
use crate::forge::Forge;
use crate::records::BuildId;
use crate::status::Step;

/// What [`live_progress`] needs: everything owned, so it runs beside the agent's borrow of the
/// build.
pub(super) struct LiveProgress {
    pub forge: Arc<dyn Forge>,
    pub events: broadcast::Receiver<BuildEvent>,
    pub repo: String,
    /// The issue or pull request the comment is on; `None`: no comment.
    pub number: Option<u64>,
    pub id: BuildId,
    pub branch: String,
    pub every: Duration,
    pub until: CancellationToken,
}

/// While the agent runs (until `until`), edits the build comment with the agent's latest
/// progress lines (already redacted in the events) at most every `every`, and only when there is
/// something new. A failed edit is logged; the next one, or the end's, writes it again.
pub(super) async fn live_progress(mut p: LiveProgress) {
    use tokio::sync::broadcast::error::RecvError;
    let Some(number) = p.number else {
        return;
    };
    let mut lines: Vec<String> = Vec::new();
    let (mut seen, mut shown) = (0usize, 0usize);
    let mut tick = tokio::time::interval(p.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: the comment was just written
    loop {
        tokio::select! {
            _ = p.until.cancelled() => return,
            event = p.events.recv() => match event {
                Ok(BuildEvent { id, kind: EventKind::Progress(text), .. }) if id == p.id => {
                    lines.push(text);
                    if lines.len() > comment::MAX_PROGRESS_LINES {
                        lines.remove(0);
                    }
                    seen += 1;
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick(), if seen != shown => {
                let body = comment::body(comment::View {
                    id: p.id,
                    status: "running",
                    step: Some(Step::Agent.as_str()),
                    branch: Some(&p.branch),
                    pr: None,
                    progress: &lines,
                    detail: None,
                    preview: None,
                });
                if let Err(e) = p.forge.upsert_build_comment(&p.repo, number, &body).await {
                    tracing::warn!(build = %p.id, error = %e, "builds: the build comment was not written");
                }
                shown = seen;
            }
        }
    }
}
