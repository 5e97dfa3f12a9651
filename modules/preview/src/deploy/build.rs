//! The `build` step: the images, at most `max_builds` at once on this host; then the images'
//! own labels are checked before anything starts (a Dockerfile's `LABEL traefik...`, or a pulled
//! image's, reaches the container, where the router would read it).

use std::time::Duration;

use super::checkout::Checked;
use super::project::Written;
use super::{Attempt, Stop};
use crate::compose;
use crate::policy::Rule;
use crate::state::Stage;

/// How long an image build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub(super) async fn run(a: &Attempt<'_>, checked: &Checked, written: &Written) -> Result<(), Stop> {
    let cli = &checked.cli;
    let project = &written.project;
    // Builds are the expensive part: at most `max_builds` at once on this host.
    let permit = a.or_cancel(a.previews.inner.builds.acquire()).await?;
    a.step(Stage::Build).await?;
    a.or_cancel(cli.build(project, BUILD_TIMEOUT))
        .await?
        .map_err(Stop::command(Stage::Build))?;
    drop(permit);
    if a.rules.policy.allowed.contains(&Rule::ReservedLabel) {
        return Ok(());
    }
    let engine = a
        .previews
        .engine()
        .await
        .map_err(|e| Stop::failed(Stage::Build, e.to_string()))?;
    let images = compose::service_images(&written.model, a.project);
    let mut pulled = false;
    for (service, image) in &images {
        let mut labels = engine
            .image_labels(image)
            .await
            .map_err(|e| Stop::failed(Stage::Build, e.to_string()))?;
        if labels.is_none() && !pulled {
            a.or_cancel(cli.pull(project, BUILD_TIMEOUT))
                .await?
                .map_err(Stop::command(Stage::Build))?;
            pulled = true;
            labels = engine
                .image_labels(image)
                .await
                .map_err(|e| Stop::failed(Stage::Build, e.to_string()))?;
        }
        let refused = labels
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .find(|k| compose::image_label_refused(k));
        if let Some(label) = refused {
            return Err(Stop::failed(
                Stage::Build,
                format!(
                    "service `{service}`: its image carries the label `{label}`; only the daemon configures the router (rule `reserved_label`; a tenant can waive it with `[preview] allow = [\"reserved_label\"]`)"
                ),
            ));
        }
    }
    Ok(())
}
