//! The configuration as typed by the operator: exactly the TOML keys, unknown keys rejected, no I/O
//! beyond what figment does. [`super::resolve`] turns it into a [`super::Config`].

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreview {
    /// "open" (default) or "none": whether preview containers may connect out of their networks.
    pub egress: Option<String>,
    pub domain: Option<String>,
    pub url_template: Option<String>,
    pub compose_command: Option<Vec<String>>,
    pub network: Option<String>,
    pub entrypoint: Option<String>,
    pub cert_resolver: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_previews: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_builds: Option<u64>,
    #[serde(default, deserialize_with = "duration_text")]
    pub ttl: Option<String>,
    pub docker_config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlack {
    pub bot_token: Option<String>,
    pub bot_token_file: Option<PathBuf>,
    pub app_token: Option<String>,
    pub app_token_file: Option<PathBuf>,
    pub api_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlm {
    pub provider: Option<LlmProvider>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub base_url: Option<String>,
    pub fallback: Option<RawLlmFallback>,
}

/// `[llm.fallback]`: the same keys as `[llm]`, without a further fallback.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlmFallback {
    pub provider: Option<LlmProvider>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmProvider {
    Anthropic,
    Openaicompat,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuilds {
    pub agent_command: Option<Vec<String>>,
    #[serde(default, deserialize_with = "duration_text")]
    pub max_duration: Option<String>,
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
    pub previews: Option<bool>,
    pub slack_channel: Option<String>,
    pub preview: Option<RawTenantPreview>,
}

/// A tenant's `[preview]` table: who gets a preview, what its compose file may do, its limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantPreview {
    pub allow_forks: Option<bool>,
    pub fork_label: Option<String>,
    pub require_label: Option<bool>,
    pub drafts: Option<bool>,
    pub allow: Option<Vec<String>>,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    /// `[preview.env.<service>]` tables, kept untyped here: serde's type errors quote the value
    /// they found, and these values may be secrets, so [`super::resolve`] checks them itself.
    pub env: Option<figment::value::Value>,
    pub secrets_for_forks: Option<bool>,
}

/// Environment overrides arrive as strings (we keep them raw so that a numeric-looking token
/// stays a string); numeric keys accept both forms.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(u64),
        Text(String),
    }
    match Option::<NumberOrText>::deserialize(d)? {
        None => Ok(None),
        Some(NumberOrText::Number(n)) => Ok(Some(n)),
        Some(NumberOrText::Text(s)) => {
            s.trim().parse().map(Some).map_err(|_| {
                serde::de::Error::custom(format!("expected a whole number, found {s:?}"))
            })
        }
    }
}

/// A duration is written as text (`"15s"`); a bare number has no unit, so instead of serde's
/// "expected a string" the operator is shown what to write.
fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Whole(i64),
        Fraction(f64),
        Other(serde::de::IgnoredAny),
    }
    let number = match Option::<TextOrNumber>::deserialize(d)? {
        None => return Ok(None),
        Some(TextOrNumber::Text(s)) => return Ok(Some(s)),
        Some(TextOrNumber::Whole(n)) => n.to_string(),
        Some(TextOrNumber::Fraction(x)) => x.to_string(),
        Some(TextOrNumber::Other(_)) => {
            return Err(serde::de::Error::custom(
                "expected a duration string like \"30s\", \"5m\" or \"2h\"",
            ));
        }
    };
    Err(serde::de::Error::custom(format!(
        "{number} has no unit; write it as a duration string like \"{number}s\""
    )))
}
