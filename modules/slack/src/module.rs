//! The Slack module as the planner sees it: which units exist, for which tenants.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use productbuilder_planner::{AppliesTo, Module, Tenant};

use crate::config::SlackConfig;

/// Slack for the tenants with a `slack_channel`; without `[slack]` it has no units at all.
pub struct SlackModule {
    /// `None` without `[slack]`.
    pub config: Option<SlackConfig>,
    /// Each tenant's channel, by `owner/name` as configured; tenants without one are absent.
    pub channels: Arc<BTreeMap<String, String>>,
    pub run_timeout: Duration,
}

impl SlackModule {
    /// Per-tenant units exist only for tenants with a channel, and only with `[slack]`.
    pub fn with_channel(&self) -> AppliesTo {
        let channels = self.channels.clone();
        let on = self.config.is_some();
        Arc::new(move |t: &Tenant| on && channels.contains_key(&t.repo()))
    }
}

impl Module for SlackModule {
    fn name(&self) -> &'static str {
        "slack"
    }
}

impl productbuilder_routes::Module for SlackModule {}
