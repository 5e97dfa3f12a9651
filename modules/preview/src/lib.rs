//! Previews of pull requests.
//!
//! # Brief overview
//! - [`spec`]: the target repository's contract, `.productbuilding/preview/config.yml` version 1,
//!   validated with line numbers.
//! - [`policy`]: what a pull request's compose file may not do on this host (privileged
//!   containers, host namespaces, capabilities, devices, the Docker socket, bind mounts outside the
//!   checkout), checked before anything runs.
//! - [`archive`]: extraction of the pull request's source tarball, which is hostile input.
//! - [`reconcile`]: [`Previews`], the level-triggered reconciler (desired pull requests against
//!   the `previews` table and the engine's labelled containers) and its deploy and removal tasks;
//!   [`PreviewModule`] makes it the units `preflight:previews` and `worker:previews`.
//! - [`compose`] and [`runner`]: the rewritten compose file and the Compose CLI; [`engine`]: the
//!   Docker Engine API (labelled containers, the shared network, logs); [`db`]: the table.
//!
//! # Why the checks come first
//! Everything in a pull request is controlled by its author, fork or not. Nothing of it is run,
//! built or mounted until the contract and the compose file have passed these checks; they are the
//! same offline (`productbuilder preview validate`) as in the daemon.

pub mod archive;
pub mod comment;
pub mod compose;
pub mod db;
pub mod engine;
mod module;
pub mod policy;
pub mod reconcile;
pub mod router;
pub mod runner;
pub mod source;
pub mod spec;
pub mod state;

pub use module::PreviewModule;
pub use reconcile::{LogsError, MARKER, Previews, ReconcileError, Settings, TenantRules};

use std::path::Path;

use policy::{Policy, Violation};
use spec::{Finding, PreviewSpec};

/// Largest compose file read.
const MAX_COMPOSE_BYTES: u64 = 1024 * 1024;

/// Everything found about a checkout.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Set when there is no error and no violation: the preview may be built.
    pub spec: Option<PreviewSpec>,
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
/// for `productbuilder preview validate` and for the daemon.
pub fn validate_checkout(checkout: &Path, policy: &Policy) -> Report {
    let validated = spec::load(checkout);
    let mut report = Report {
        spec: None,
        errors: validated.errors,
        violations: Vec::new(),
        warnings: validated.warnings,
    };
    let Some(spec) = validated.spec else {
        return report;
    };
    let compose_path = checkout.join(&spec.compose_file);
    let finding = |message: String| Finding {
        file: spec.compose_file.clone(),
        line: None,
        message,
    };
    // The compose file must be a regular file inside the checkout, not a link out of it.
    let text = match std::fs::symlink_metadata(&compose_path) {
        Ok(meta) if meta.is_file() && meta.len() <= MAX_COMPOSE_BYTES => {
            match std::fs::read_to_string(&compose_path) {
                Ok(text) => text,
                Err(e) => {
                    report.errors.push(finding(format!("cannot be read: {e}")));
                    return report;
                }
            }
        }
        Ok(meta) if meta.is_file() => {
            report
                .errors
                .push(finding(format!("is larger than {MAX_COMPOSE_BYTES} bytes")));
            return report;
        }
        Ok(_) => {
            report.errors.push(finding(
                "is not a regular file (links are not followed)".to_owned(),
            ));
            return report;
        }
        Err(e) => {
            report.errors.push(finding(format!(
                "named by `compose.file` in {}, cannot be read: {e}",
                spec::CONFIG_PATH
            )));
            return report;
        }
    };
    match policy::check(&text, &spec.compose_file, policy) {
        Err(f) => report.errors.push(f),
        Ok((services, violations)) => {
            report.violations = violations;
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
        }
    }
    if report.errors.is_empty() && report.violations.is_empty() {
        report.spec = Some(spec);
    }
    report
}
