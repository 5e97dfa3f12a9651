//! Slack: one thread per issue and pull request in a tenant's `slack_channel`, kept current, and
//! the mentions of the bot answered.
//!
//! # Brief overview
//! - [`config`]: `[slack]` and a tenant's `slack_channel`.
//! - [`api`]: the Web API client (slack-morphism on our connector) and [`budget`], the one
//!   workspace budget every call goes through.
//! - [`SlackModule`]: its units, only for tenants with a channel (and none without `[slack]`).

pub mod answers;
pub mod api;
pub mod budget;
pub mod config;
pub mod conversation;
pub mod db;
pub mod debounce;
pub mod decide;
pub mod input;
pub mod mentions;
pub mod metrics;
mod module;
pub mod respond;
pub mod socket;
pub mod text;
pub mod worker;

pub use module::SlackModule;
pub use respond::{Conversation, Link, Reply, Responder};

/// The web link of every Slack thread of `repo`'s items, by number; empty until an `auth.test`
/// succeeded (the workspace's address comes from it) or when the database cannot be read.
pub async fn thread_links(
    api: &api::SlackApi,
    store: &productbuilder_store::Store,
    repo: &str,
) -> std::collections::BTreeMap<u64, String> {
    let Some(me) = api.known_me() else {
        return Default::default();
    };
    let repo = repo.to_owned();
    store
        .read(move |c| db::thread_places(c, &repo))
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(n, (channel, ts))| (n, text::permalink(&me.url, &channel, &ts)))
        .collect()
}
