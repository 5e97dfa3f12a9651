//! Slack: one thread per issue and pull request in a tenant's `slack_channel`, kept current, and
//! the mentions of the bot answered.
//!
//! # Brief overview
//! - [`config`]: `[slack]` and a tenant's `slack_channel`.
//! - [`SlackModule`]: its units, only for tenants with a channel (and none without `[slack]`).

pub mod config;
mod module;

pub use module::SlackModule;
