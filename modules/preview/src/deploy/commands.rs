//! The `migrate` and `post_deploy` steps: the repository's commands, each run with `sh -c` inside
//! its own service's container (never on the host), each with a deadline.

use super::checkout::Checked;
use super::project::Written;
use super::up::STEP_TIMEOUT;
use super::{Attempt, Stop};
use crate::state::Stage;

/// The contract's `migrate_command`, after `start` and before the health probe.
pub(super) async fn migrate(
    a: &Attempt<'_>,
    checked: &Checked,
    written: &Written,
) -> Result<(), Stop> {
    let spec = &checked.checkout.spec;
    let Some(migrate) = &spec.migrate_command else {
        return Ok(());
    };
    a.step(Stage::Migrate).await?;
    a.or_cancel(
        checked
            .cli
            .exec(&written.project, &spec.service, migrate, STEP_TIMEOUT),
    )
    .await?
    .map_err(Stop::command(Stage::Migrate))?;
    Ok(())
}

/// The contract's `post_deploy_commands`, in order, once the preview is healthy.
pub(super) async fn post_deploy(
    a: &Attempt<'_>,
    checked: &Checked,
    written: &Written,
) -> Result<(), Stop> {
    let spec = &checked.checkout.spec;
    if spec.post_deploy.is_empty() {
        return Ok(());
    }
    a.step(Stage::PostDeploy).await?;
    for command in &spec.post_deploy {
        let what = command
            .description
            .clone()
            .unwrap_or_else(|| command.command.clone());
        a.or_cancel(checked.cli.exec(
            &written.project,
            &command.service,
            &command.command,
            STEP_TIMEOUT,
        ))
        .await?
        .map_err(|e| Stop::failed_with_tail(Stage::PostDeploy, format!("{what}: {e}"), &e.tail))?;
    }
    Ok(())
}
