//! Previews of pull requests.
//!
//! # Brief overview
//! - [`spec`]: the target repository's contract, `.productbuilding/preview/config.yml` version 1,
//!   validated with line numbers.
//! - [`resolve`]: the compose model as Compose itself resolves it (interpolation, `include`,
//!   `extends`, profiles), without letting resolution read anything outside the checkout.
//! - [`policy`]: an allowlist over that model: what a pull request's project may not do on this
//!   host (privileged containers, host namespaces, capabilities, devices, the Docker socket, host
//!   paths, foreign networks, the router's labels...), checked before anything runs.
//! - [`archive`]: extraction of the pull request's source tarball, which is hostile input.
//! - [`reconcile`]: [`Previews`], the level-triggered reconciler (desired pull requests against
//!   the `previews` table and the engine's labelled containers) and its deploy and removal tasks;
//!   [`PreviewModule`] makes it the units `preflight:previews` and `worker:previews`.
//! - [`config`]: `[preview]` of the main file and the tenants' `previews` and `[preview]`, as
//!   typed and resolved.
//! - `routes`: the module's HTTP routes (`/previews`, logs, redeploy), mounted by the binary
//!   behind its one auth layer.
//! - [`compose`] and [`runner`]: the rewritten compose file and the Compose CLI; [`engine`]: the
//!   Docker Engine API (labelled containers, the shared network, logs); [`db`]: the table.
//!
//! # Why the checks come first
//! Everything in a pull request is controlled by its author, fork or not. Nothing of it is run,
//! built or mounted until the contract and the compose file have passed these checks; they are the
//! same offline (`productbuilder preview validate`) as in the daemon.

pub mod archive;
mod backoff;
pub mod capacity;
pub mod comment;
pub mod compose;
pub mod config;
pub mod consent;
pub mod db;
pub mod decide;
mod deploy;
pub mod engine;
pub mod feeds;
pub mod logs;
mod module;
pub mod policy;
pub mod probe;
pub mod reconcile;
pub mod report;
pub mod resolve;
pub mod router;
mod routes;
pub mod runner;
pub mod source;
pub mod spec;
pub mod state;
pub mod teardown;

pub use module::PreviewModule;
pub use reconcile::{Egress, LogsError, MARKER, Previews, ReconcileError, Settings, TenantRules};

use std::path::Path;

use policy::{Policy, Violation};
use runner::ComposeCli;
use spec::{Finding, PreviewSpec};

/// Everything found about a checkout.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Set when there is no error and no violation: the preview may be built.
    pub spec: Option<PreviewSpec>,
    /// The model Compose resolved, when it could be resolved.
    pub resolved: Option<resolve::Resolved>,
    pub errors: Vec<Finding>,
    pub violations: Vec<Violation>,
    pub warnings: Vec<Finding>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.spec.is_some()
    }
}

/// The contract and the compose policy of a checkout: the `config` and `policy` stages, the same
/// for `productbuilder preview validate` and for the daemon. Every problem found is reported, not
/// only the first. `project` is the Compose project name the model is resolved under.
pub async fn validate_checkout(
    checkout: &Path,
    policy: &Policy,
    cli: &ComposeCli,
    project: &str,
) -> Report {
    let validated = {
        let checkout = checkout.to_path_buf();
        tokio::task::spawn_blocking(move || spec::load(&checkout))
            .await
            .unwrap_or_else(|e| spec::Validated {
                spec: None,
                errors: vec![Finding {
                    file: spec::CONFIG_PATH.to_owned(),
                    line: None,
                    message: format!("validation stopped: {e}"),
                }],
                warnings: Vec::new(),
            })
    };
    let mut report = Report {
        errors: validated.errors,
        warnings: validated.warnings,
        ..Report::default()
    };
    let Some(spec) = validated.spec else {
        return report;
    };
    let resolved = match resolve::resolve(cli, checkout, &spec.compose_file, project, policy).await
    {
        Ok(resolved) => resolved,
        Err(refusal) => {
            report.errors.extend(refusal.errors);
            report.violations.extend(refusal.violations);
            return report;
        }
    };
    report.violations = policy::check(&resolved, project, &spec.compose_file, policy);
    let services = policy::services(&resolved.model);
    let mut named = vec![("compose.service", spec.service.as_str())];
    named.push(("logging.service", spec.log_service.as_str()));
    for p in &spec.post_deploy {
        named.push(("post_deploy_commands[].service", p.service.as_str()));
    }
    for (key, name) in named {
        if !services.iter().any(|s| s == name) {
            report.errors.push(Finding {
                file: spec::CONFIG_PATH.to_owned(),
                line: None,
                message: format!(
                    "`{key}` names service `{name}`, which {} does not define (it has: {})",
                    spec.compose_file,
                    services.join(", ")
                ),
            });
        }
    }
    // (A refused `network_mode` says so already.)
    if report.violations.is_empty()
        && compose::routed_network(&resolved.model, &spec.service).is_none()
        && services.contains(&spec.service)
    {
        report.errors.push(Finding {
            file: spec.compose_file.clone(),
            line: None,
            message: format!(
                "service `{}` is on no network the router can join (it sets `network_mode`)",
                spec.service
            ),
        });
    }
    if report.errors.is_empty() && report.violations.is_empty() {
        report.spec = Some(spec);
    }
    report.resolved = Some(resolved);
    report
}
