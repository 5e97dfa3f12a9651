//! `[github]` of the main file: the keys as typed ([`RawGithub`]) and their resolution into a
//! [`GithubConfig`]. Problems name the file (or environment variable) and the key.

use std::path::PathBuf;
use std::time::Duration;

use productbuilder_settings::raw::{duration_text, lenient_u64};
use productbuilder_settings::{Origins, Problems, Secret, check_url, duration, secret};
use serde::Deserialize;

/// `[github]` as typed; unknown keys are refused by figment (with the nearest known key).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGithub {
    pub api_url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub app_id: Option<u64>,
    pub private_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub installation_id: Option<u64>,
    #[serde(default, deserialize_with = "duration_text")]
    pub poll_interval: Option<String>,
    pub webhook_secret: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_in_flight: Option<u64>,
    #[serde(default, deserialize_with = "duration_text")]
    pub request_timeout: Option<String>,
}

#[derive(Debug, Clone)]
pub enum GithubAuth {
    Token(Secret),
    App {
        app_id: u64,
        /// The PEM contents of the private key.
        private_key: Secret,
        installation_id: Option<u64>,
    },
}

#[derive(Debug, Clone)]
pub struct GithubConfig {
    pub api_url: String,
    pub auth: GithubAuth,
    pub poll_interval: Duration,
    pub webhook_secret: Option<Secret>,
    /// Requests in flight per GitHub identity.
    pub max_in_flight: usize,
    pub request_timeout: Duration,
}

/// The default `poll_interval`, also the tenants' default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Resolves `[github]` (the section is required); `None` when something is wrong, each problem
/// recorded in `p`.
pub fn resolve(p: &mut Problems, at: &Origins<'_>, raw: Option<RawGithub>) -> Option<GithubConfig> {
    let before = p.len();
    let raw = raw.unwrap_or_else(|| {
        p.push(
            at.file(),
            Some("github"),
            "missing; the [github] section with a token (or app_id and private_key_file) is required",
        );
        RawGithub::default()
    });
    let api_url = raw
        .api_url
        .unwrap_or_else(|| "https://api.github.com".to_owned());
    check_url(p, at.of("github.api_url"), "github.api_url", &api_url);
    let token = secret(p, at, "github.token", raw.token, raw.token_file);
    let auth = match (token, raw.app_id, raw.private_key_file) {
        (Some(token), None, None) => Some(GithubAuth::Token(token)),
        (None, Some(app_id), Some(key_file)) => {
            let path = at.relative(key_file);
            match std::fs::read_to_string(&path) {
                Ok(pem) if pem.contains("PRIVATE KEY") => Some(GithubAuth::App {
                    app_id,
                    private_key: Secret::new(pem),
                    installation_id: raw.installation_id,
                }),
                Ok(_) => {
                    p.push(
                        at.of("github.private_key_file"),
                        Some("github.private_key_file"),
                        format!("{} is not a PEM private key", path.display()),
                    );
                    None
                }
                Err(e) => {
                    p.push(
                        at.of("github.private_key_file"),
                        Some("github.private_key_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, Some(_), None) => {
            p.push(
                at.of("github.app_id"),
                Some("github.private_key_file"),
                "missing; app_id needs private_key_file",
            );
            None
        }
        (None, None, Some(_)) => {
            p.push(
                at.of("github.private_key_file"),
                Some("github.app_id"),
                "missing; private_key_file needs app_id",
            );
            None
        }
        (Some(_), _, _) => {
            p.push(
                at.of("github.token"),
                Some("github.token"),
                "set either a token or app_id with private_key_file, not both",
            );
            None
        }
        (None, None, None) => {
            // Only worth saying when the section exists (a missing section was reported above)
            // and no problem with the token was reported (it was set, but wrongly).
            if !p.has_key("github") && !p.reported("github.token") {
                p.push(
                    at.file(),
                    Some("github.token"),
                    "missing; set github.token (or github.token_file, or PRODUCTBUILDER_GITHUB__TOKEN), or app_id with private_key_file",
                );
            }
            None
        }
    };
    let poll_interval = duration(
        p,
        at,
        "github.poll_interval",
        raw.poll_interval.as_ref(),
        DEFAULT_POLL_INTERVAL,
    );
    let webhook_secret = secret(
        p,
        at,
        "github.webhook_secret",
        raw.webhook_secret,
        raw.webhook_secret_file,
    );
    let max_in_flight = match raw.max_in_flight {
        Some(n @ 1..=100) => n as usize,
        None => 4,
        Some(n) => {
            p.push(
                at.of("github.max_in_flight"),
                Some("github.max_in_flight"),
                format!("{n} is out of range; GitHub allows at most 100 concurrent requests, use 1 to 100"),
            );
            4
        }
    };
    let request_timeout = duration(
        p,
        at,
        "github.request_timeout",
        raw.request_timeout.as_ref(),
        Duration::from_secs(30),
    );
    let auth = auth?;
    (p.len() == before).then_some(GithubConfig {
        api_url,
        auth,
        poll_interval,
        webhook_secret,
        max_in_flight,
        request_timeout,
    })
}
