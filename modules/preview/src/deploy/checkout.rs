//! The `config` and `policy` steps: the checkout's contract and its compose file as Compose
//! resolves it, against the tenant's policy; then what the contract says about notes and logs
//! is recorded with the row (the log routes read it).

use std::path::Path;

use super::{Attempt, Stop};
use crate::db;
use crate::runner::ComposeCli;
use crate::source::{self, Checkout};
use crate::spec::LogSource;
use crate::state::Stage;

/// A checkout that passed, and the Compose CLI that resolved it.
pub(super) struct Checked {
    pub checkout: Checkout,
    pub cli: ComposeCli,
}

pub(super) async fn run(a: &Attempt<'_>, dir: &Path) -> Result<Checked, Stop> {
    a.step(Stage::Config).await?;
    let cli = a
        .previews
        .compose()
        .await
        .map_err(|e| Stop::host(Stage::Config, e.to_string()))?
        .clone();
    let checkout = a
        .or_cancel(source::check(
            dir,
            &source::Checks {
                policy: &a.rules.policy,
                cli: &cli,
                project: a.project,
            },
        ))
        .await?
        .map_err(|e| Stop::failed(e.stage, e.message))?;
    let spec = &checkout.spec;
    let (r, number, note, service) = (
        a.repo.to_owned(),
        a.number,
        spec.user_facing_note.clone(),
        spec.log_service.clone(),
    );
    let file = match &spec.log_source {
        LogSource::Docker => None,
        LogSource::File { path } => Some(path.clone()),
    };
    if let Err(e) = a
        .previews
        .inner
        .store
        .write(move |c| db::set_contract(c, &r, number, note.as_deref(), &service, file.as_deref()))
        .await
    {
        tracing::warn!(repo = a.repo, number, error = %e, "previews: cannot record where the logs are");
    }
    a.step(Stage::Policy).await?;
    Ok(Checked { checkout, cli })
}
