//! Slack: one thread per issue and pull request in a tenant's `slack_channel`, kept current, and
//! the mentions of the bot answered.
//!
//! # Brief overview
//! - [`config`]: `[slack]` and a tenant's `slack_channel`.
//! - [`api`]: the Web API client (slack-morphism on our connector) and [`budget`], the one
//!   workspace budget every call goes through.
//! - [`SlackModule`]: its units, only for tenants with a channel (and none without `[slack]`).

pub mod api;
pub mod budget;
pub mod config;
pub mod db;
pub mod decide;
pub mod input;
pub mod mentions;
pub mod metrics;
mod module;
pub mod socket;
pub mod text;
pub mod worker;

pub use module::SlackModule;
