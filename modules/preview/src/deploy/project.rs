//! The project Compose is given: the resolved model rewritten by [`crate::compose::rewrite`] (the
//! router's labels, limits, the daemon's networks, the tenant's variables by name), written into
//! the workspace; the variables' values go to Compose's environment, never a file.

use super::checkout::Checked;
use super::{Attempt, Stop};
use crate::compose::{self, Rewrite};
use crate::reconcile::{Egress, Secret};
use crate::runner::{self, Project};
use crate::state::Stage;

/// Most processes in one preview container.
const PIDS_LIMIT: u32 = 1024;

/// The project on disk, and what the later steps read of it.
pub(super) struct Written {
    pub project: Project,
    /// The rewritten model (the images it names are checked for the router's labels).
    pub model: serde_json::Value,
    /// The network the router reaches the service on.
    pub network: String,
    /// The preview's host name.
    pub host: String,
}

pub(super) async fn write(a: &Attempt<'_>, checked: &Checked) -> Result<Written, Stop> {
    let spec = &checked.checkout.spec;
    let settings = &a.previews.inner.settings;
    let host = productbuilder_planner::names::host(a.url).to_owned();
    let model = &checked.checkout.resolved.model;
    let network = compose::routed_network(model, &spec.service).ok_or_else(|| {
        Stop::failed(
            Stage::Config,
            format!(
                "service `{}` is on no network the router can join",
                spec.service
            ),
        )
    })?;
    // Unknown counts as a fork: secrets are withheld when in doubt.
    let fork = a
        .previews
        .inner
        .github
        .subscribe(a.repo)
        .borrow()
        .pulls
        .iter()
        .find(|p| p.number == a.number)
        .is_none_or(|p| p.fork);
    let env: Vec<(String, String, Secret)> = a
        .rules
        .env_for(fork)
        .map(|v| (v.service.clone(), v.name.clone(), v.value.clone()))
        .collect();
    let withheld: Vec<String> = a.rules.env_withheld(fork).map(|v| v.name.clone()).collect();
    if !withheld.is_empty() {
        tracing::info!(repo = a.repo, number = a.number, withheld = %withheld.join(", "), "previews: secrets withheld from a fork's pull request");
    }
    let env_names: Vec<(String, String)> = env
        .iter()
        .map(|(service, name, _)| (service.clone(), name.clone()))
        .collect();
    let rewritten = compose::rewrite(
        model,
        &Rewrite {
            repo: a.repo,
            number: a.number,
            sha: a.sha,
            project: a.project,
            service: &spec.service,
            internal_port: spec.internal_port,
            host: &host,
            base_url: a.url,
            entrypoint: &settings.entrypoint,
            cert_resolver: settings.cert_resolver.as_deref(),
            cpus: a.rules.cpus,
            memory: a.rules.memory.as_deref(),
            pids_limit: PIDS_LIMIT,
            internal: settings.egress == Egress::None,
            env: &env_names,
        },
        &network,
    );
    let text =
        compose::render(&rewritten).map_err(|e| Stop::failed(Stage::Config, e.to_string()))?;
    let values = env
        .into_iter()
        .map(|(_, name, value)| (name, value))
        .collect();
    let project = runner::write_project(&a.workspace, a.project, &text, values).map_err(|e| {
        Stop::host(
            Stage::Config,
            format!("cannot write the compose file into the workspace: {e}"),
        )
    })?;
    Ok(Written {
        project,
        model: rewritten,
        network,
        host,
    })
}
