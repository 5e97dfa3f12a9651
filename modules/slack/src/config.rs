//! `[slack]` of the main file and a tenant file's `slack_channel`: the keys as typed
//! ([`RawSlack`]) and their resolution into [`SlackConfig`] and each tenant's channel. Problems
//! name the file (or environment variable) and the key.

use std::path::PathBuf;
use std::time::Duration;

use productbuilder_settings::raw::{duration_text, lenient_u64};
use productbuilder_settings::{Origins, Problems, Secret, check_url, parse_duration, secret};
use serde::Deserialize;

/// `[slack]` as typed; unknown keys are refused by figment (with the nearest known key).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlack {
    pub bot_token: Option<String>,
    pub bot_token_file: Option<PathBuf>,
    pub app_token: Option<String>,
    pub app_token_file: Option<PathBuf>,
    pub api_url: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub history_requests_per_minute: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub history_page_size: Option<u64>,
    #[serde(default, deserialize_with = "duration_text")]
    pub backfill: Option<String>,
}

/// The resolved `[slack]` section.
#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub bot_token: Secret,
    /// Socket Mode when set; polling the channels' history otherwise.
    pub app_token: Option<Secret>,
    /// Web API methods are called at `{api_url}/{method}`.
    pub api_url: String,
    /// Polling mode: `conversations.history` and `conversations.replies` calls a minute, each.
    pub history_requests_per_minute: u32,
    /// Polling mode: the `limit` of each history page.
    pub history_page_size: u32,
    /// How old an issue or pull request may be, at a tenant's first Slack pass, and still get a
    /// thread; `None`: only those opened after Slack was enabled.
    pub backfill: Option<Duration>,
}

/// Slack's Tier 3 (internal and Marketplace apps); non-Marketplace apps since 2025 get 1.
pub const DEFAULT_HISTORY_REQUESTS_PER_MINUTE: u32 = 50;
/// Slack's usual page; non-Marketplace apps since 2025 get at most 15.
pub const DEFAULT_HISTORY_PAGE_SIZE: u32 = 100;

/// Resolves `[slack]` (optional: `None` without the section, or when something is wrong, each
/// problem recorded in `p`).
pub fn resolve(p: &mut Problems, at: &Origins<'_>, raw: Option<RawSlack>) -> Option<SlackConfig> {
    let s = raw?;
    let before = p.len();
    let bot = secret(p, at, "slack.bot_token", s.bot_token, s.bot_token_file);
    let app_token = secret(p, at, "slack.app_token", s.app_token, s.app_token_file);
    let api_url = s
        .api_url
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| "https://slack.com/api".to_owned());
    check_url(p, at.of("slack.api_url"), "slack.api_url", &api_url);
    let history_requests_per_minute = bounded(
        p,
        at,
        "slack.history_requests_per_minute",
        s.history_requests_per_minute,
        DEFAULT_HISTORY_REQUESTS_PER_MINUTE,
        1..=1000,
        "Slack allows 1 (non-Marketplace apps since 2025) to about 100 (Tier 4)",
    );
    let history_page_size = bounded(
        p,
        at,
        "slack.history_page_size",
        s.history_page_size,
        DEFAULT_HISTORY_PAGE_SIZE,
        1..=1000,
        "Slack's pages hold 1 to 1000 messages (15 for non-Marketplace apps since 2025)",
    );
    let backfill = match s.backfill.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(message)) => {
            p.push(at.of("slack.backfill"), Some("slack.backfill"), message);
            None
        }
    };
    let Some(bot_token) = bot else {
        if !p.reported("slack.bot_token") {
            p.push(
                at.of("slack"),
                Some("slack.bot_token"),
                "missing; [slack] needs bot_token (or bot_token_file)",
            );
        }
        return None;
    };
    (p.len() == before).then_some(SlackConfig {
        bot_token,
        app_token,
        api_url,
        history_requests_per_minute,
        history_page_size,
        backfill,
    })
}

fn bounded(
    p: &mut Problems,
    at: &Origins<'_>,
    key: &str,
    value: Option<u64>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
    why: &str,
) -> u32 {
    match value {
        None => default,
        Some(n) if u32::try_from(n).is_ok_and(|n| range.contains(&n)) => n as u32,
        Some(n) => {
            p.push(
                at.of(key),
                Some(key),
                format!(
                    "{n} is out of range; use {} to {} ({why})",
                    range.start(),
                    range.end()
                ),
            );
            default
        }
    }
}

/// A tenant file's `[slack]` table, as typed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantSlack {
    /// Slack user ids whose messages may lead the agent to write (read by the agent, later).
    pub writers: Option<Vec<String>>,
}

/// Resolves a tenant file's `[slack] writers`: Slack user ids (`U…`, `W…`), not names.
pub fn resolve_writers(p: &mut Problems, origin: &str, raw: Option<RawTenantSlack>) -> Vec<String> {
    let writers = raw.and_then(|r| r.writers).unwrap_or_default();
    for w in &writers {
        let valid = w.len() >= 3
            && matches!(w.as_bytes()[0], b'U' | b'W')
            && w.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !valid {
            p.push(
                origin,
                Some("slack.writers"),
                format!("{w:?} is not a Slack user id; copy it from the person's profile (\"Copy member ID\"), for example \"U0123ABCD\""),
            );
        }
    }
    writers
}

/// Resolves a tenant file's `slack_channel`: a channel id as Slack shows it (`C0123ABCD`,
/// private channels `G…`), not a `#name`, which Slack's methods do not take. `None` when unset or
/// wrong (recorded in `p`).
pub fn resolve_tenant(p: &mut Problems, origin: &str, channel: Option<String>) -> Option<String> {
    let channel = channel?;
    if valid_channel_id(&channel) {
        Some(channel)
    } else {
        p.push(
            origin,
            Some("slack_channel"),
            format!(
                "{channel:?} is not a channel id; copy it from the channel's details in Slack, for example slack_channel = \"C0123ABCD\""
            ),
        );
        None
    }
}

/// `C`, `G` or `D` followed by uppercase letters and digits.
pub fn valid_channel_id(id: &str) -> bool {
    id.len() >= 3
        && id.len() <= 40
        && matches!(id.as_bytes()[0], b'C' | b'G' | b'D')
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_ids_are_what_slack_shows_never_names() {
        for good in ["C0123", "C0123ABCD", "G01ABC"] {
            assert!(valid_channel_id(good), "{good}");
        }
        for bad in ["#general", "general", "c0123", "C", "C01 23", "U0123", ""] {
            assert!(!valid_channel_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_bad_channel_is_named_with_its_file() {
        let mut p = Problems::new();
        assert_eq!(resolve_tenant(&mut p, "t.toml", Some("#shop".into())), None);
        let text = p.into_vec()[0].to_string();
        assert!(
            text.starts_with("t.toml: key `slack_channel`: \"#shop\" is not a channel id"),
            "{text}"
        );
    }
}
