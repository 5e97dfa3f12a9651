//! The configuration as typed by the operator: exactly the TOML keys, unknown keys rejected, no I/O
//! beyond what figment does. [`super::resolve`] turns it into a [`super::Config`]. The sections of
//! existing modules are their own crates' raw types (`[github]`, `[preview]`, `[slack]`,
//! `[builds]`, `[llm]`, a tenant's `[preview]`); the rest is typed here.

use std::path::PathBuf;

use productbuilder_builds::config::RawBuilds;
use productbuilder_github::config::RawGithub;
use productbuilder_llm::config::RawLlm;
use productbuilder_preview::config::{RawPreview, RawTenantPreview};
use productbuilder_settings::raw::{duration_text, lenient_u64};
use productbuilder_slack::config::{RawSlack, RawTenantSlack};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<PathBuf>,
    pub tenants_dir: Option<PathBuf>,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub log: RawLog,
    pub github: Option<RawGithub>,
    #[serde(default)]
    pub preview: RawPreview,
    pub slack: Option<RawSlack>,
    pub llm: Option<RawLlm>,
    pub builds: Option<RawBuilds>,
    #[serde(default)]
    pub scheduler: RawScheduler,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub api_token: Option<String>,
    pub api_token_file: Option<PathBuf>,
    pub read_token: Option<String>,
    pub read_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<LogFormat>,
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScheduler {
    #[serde(default, deserialize_with = "lenient_u64")]
    pub preflight_concurrency: Option<u64>,
    #[serde(default, deserialize_with = "duration_text")]
    pub shutdown_grace: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub run_timeout: Option<String>,
}

/// A tenant file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub repo: String,
    #[serde(default, deserialize_with = "duration_text")]
    pub poll_interval: Option<String>,
    /// Read by the preview module, with `preview`.
    pub previews: Option<bool>,
    /// Read by the Slack module, with `slack`.
    pub slack_channel: Option<String>,
    /// `[slack] writers`, for the agent.
    pub slack: Option<RawTenantSlack>,
    pub preview: Option<RawTenantPreview>,
}
