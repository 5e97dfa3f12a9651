//! The `start` step: `up` from the images built; then what the new containers replaced goes (the
//! earlier attempts' checkouts, the previous head's images), and the router joins the preview's
//! own network (it routes every preview, while no preview's container can reach another's).

use std::time::Duration;

use super::checkout::Checked;
use super::project::Written;
use super::workspace::{HEADS, remove_other_attempts};
use super::{Attempt, Stop};
use crate::state::Stage;

/// How long `up` may take.
pub(super) const STEP_TIMEOUT: Duration = Duration::from_secs(10 * 60);

pub(super) async fn run(a: &Attempt<'_>, checked: &Checked, written: &Written) -> Result<(), Stop> {
    a.step(Stage::Start).await?;
    a.or_cancel(checked.cli.start(&written.project, STEP_TIMEOUT))
        .await?
        .map_err(Stop::command(Stage::Start))?;
    // The containers of earlier attempts are replaced now: their checkouts can go (their bind
    // mounts pointed there). Best effort: a cancelled attempt may still be writing into its own.
    remove_other_attempts(&a.workspace.join(HEADS), &a.dir).await;
    let Ok(engine) = a.previews.engine().await else {
        return Ok(());
    };
    engine
        .attach_routers_to_project(&a.previews.inner.settings.network, a.project)
        .await
        .map_err(|e| Stop::failed(Stage::Start, format!("cannot attach the router: {e}")))?;
    // The previous head's images lost their tags to this build, and its containers were
    // replaced: remove them now, or every push would leave an image behind.
    if let Err(e) = engine.remove_images(a.project, true).await {
        tracing::warn!(repo = a.repo, number = a.number, error = %e, "previews: cannot remove old images");
    }
    Ok(())
}
