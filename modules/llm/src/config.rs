//! `[llm]` and `[llm.fallback]` of the main file: the keys as typed ([`RawLlm`]) and their
//! resolution into [`LlmConfig`]. Problems name the file (or environment variable) and the key;
//! unknown keys are refused by figment with the nearest known key.
//!
//! A provider's own keys (`provider`, `model`, `api_key`, `base_url`, `request_timeout`,
//! `max_retries`, `max_tokens`) exist in both tables; the fallback takes the primary's
//! `request_timeout`, `max_retries` and `max_tokens` when it does not set its own. The keys of a
//! whole call (`token_budget`, `run_timeout`, `trace_retention`) exist only in `[llm]`: there is
//! one budget and one deadline per call, whichever provider answers.

use std::path::PathBuf;
use std::time::Duration;

use productbuilder_settings::raw::{duration_text, lenient_u64};
use productbuilder_settings::{Origins, Problems, Secret, check_url, duration, secret};
use serde::Deserialize;

pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_RETRIES: u32 = 3;
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
pub const DEFAULT_TOKEN_BUDGET: u32 = 8000;
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_TRACE_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
/// Anthropic's API when `base_url` is unset (requests go to `{base_url}/v1/messages`).
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// More retries than this only delay the fallback.
const MAX_RETRIES_LIMIT: u64 = 10;

/// `[llm]` as typed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlm {
    pub provider: Option<Provider>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub base_url: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub request_timeout: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_retries: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub token_budget: Option<u64>,
    #[serde(default, deserialize_with = "duration_text")]
    pub run_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub trace_retention: Option<String>,
    pub fallback: Option<RawLlmFallback>,
}

/// `[llm.fallback]` as typed: a provider's keys, without a further fallback.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlmFallback {
    pub provider: Option<Provider>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub base_url: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub request_timeout: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_retries: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_tokens: Option<u64>,
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Anthropic Messages (`POST {base_url}/v1/messages`).
    Anthropic,
    /// Any OpenAI-compatible chat completions endpoint (`POST {base_url}/chat/completions`).
    Openaicompat,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::Openaicompat => "openaicompat",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One provider, resolved.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub provider: Provider,
    pub model: String,
    /// Sent only as a header (`x-api-key` or `Authorization: Bearer`); a local OpenAI-compatible
    /// server may need none.
    pub api_key: Option<Secret>,
    /// Without a trailing slash. Anthropic: the origin (default [`ANTHROPIC_BASE_URL`]);
    /// openaicompat: including the version path, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// One request's deadline, answer body included.
    pub request_timeout: Duration,
    /// Retries after the first attempt, on 429, 5xx, 529, network errors and timeouts.
    pub max_retries: u32,
    /// The most tokens a reply may have (sent as `max_tokens`).
    pub max_tokens: u32,
}

impl Endpoint {
    /// An endpoint with every default (for tests and the demo).
    pub fn new(provider: Provider, model: &str, base_url: &str) -> Endpoint {
        Endpoint {
            provider,
            model: model.to_owned(),
            api_key: None,
            base_url: base_url.trim_end_matches('/').to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            max_tokens: DEFAULT_MAX_TOKENS,
        }
    }
}

/// The resolved `[llm]` section.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    pub primary: Endpoint,
    /// Tried when the primary stays unavailable (429, 529, 503 or timeouts) after its retries;
    /// the primary is tried first again on the next call.
    pub fallback: Option<Endpoint>,
    /// The most tokens (estimated) a request's prompt may hold; older turns are trimmed to fit.
    pub token_budget: u32,
    /// The deadline of one whole call: every attempt, backoff and the fallback.
    pub run_timeout: Duration,
    /// How long agent run traces are kept.
    pub trace_retention: Duration,
}

impl LlmConfig {
    /// A configuration of `primary` with every default (for tests and the demo).
    pub fn new(primary: Endpoint) -> LlmConfig {
        LlmConfig {
            primary,
            fallback: None,
            token_budget: DEFAULT_TOKEN_BUDGET,
            run_timeout: DEFAULT_RUN_TIMEOUT,
            trace_retention: DEFAULT_TRACE_RETENTION,
        }
    }
}

/// A provider's keys, as typed, whichever table they came from.
struct RawEndpoint {
    provider: Option<Provider>,
    model: Option<String>,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    base_url: Option<String>,
    request_timeout: Option<String>,
    max_retries: Option<u64>,
    max_tokens: Option<u64>,
}

/// Resolves `[llm]` (optional: `None` without the section, or when something is wrong, each
/// problem recorded in `p`).
pub fn resolve(p: &mut Problems, at: &Origins<'_>, raw: Option<RawLlm>) -> Option<LlmConfig> {
    let l = raw?;
    let before = p.len();
    let defaults = Inherited {
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        max_retries: DEFAULT_MAX_RETRIES,
        max_tokens: DEFAULT_MAX_TOKENS,
    };
    let primary = endpoint(
        p,
        at,
        "llm",
        RawEndpoint {
            provider: l.provider,
            model: l.model,
            api_key: l.api_key,
            api_key_file: l.api_key_file,
            base_url: l.base_url,
            request_timeout: l.request_timeout,
            max_retries: l.max_retries,
            max_tokens: l.max_tokens,
        },
        &defaults,
    );
    let fallback = l.fallback.and_then(|f| {
        let inherited = primary.as_ref().map_or(defaults, |e| Inherited {
            request_timeout: e.request_timeout,
            max_retries: e.max_retries,
            max_tokens: e.max_tokens,
        });
        endpoint(
            p,
            at,
            "llm.fallback",
            RawEndpoint {
                provider: f.provider,
                model: f.model,
                api_key: f.api_key,
                api_key_file: f.api_key_file,
                base_url: f.base_url,
                request_timeout: f.request_timeout,
                max_retries: f.max_retries,
                max_tokens: f.max_tokens,
            },
            &inherited,
        )
    });
    let token_budget = match l.token_budget {
        None => DEFAULT_TOKEN_BUDGET,
        Some(n) if (500..=10_000_000).contains(&n) => n as u32,
        Some(n) => {
            p.push(
                at.of("llm.token_budget"),
                Some("llm.token_budget"),
                format!("{n} is out of range; use 500 to 10000000 tokens (default 8000)"),
            );
            DEFAULT_TOKEN_BUDGET
        }
    };
    let run_timeout = positive(
        p,
        at,
        "llm.run_timeout",
        l.run_timeout.as_ref(),
        DEFAULT_RUN_TIMEOUT,
    );
    let trace_retention = positive(
        p,
        at,
        "llm.trace_retention",
        l.trace_retention.as_ref(),
        DEFAULT_TRACE_RETENTION,
    );
    if p.len() > before {
        return None;
    }
    Some(LlmConfig {
        primary: primary?,
        fallback,
        token_budget,
        run_timeout,
        trace_retention,
    })
}

/// What a fallback takes from the primary when it does not say.
#[derive(Clone, Copy)]
struct Inherited {
    request_timeout: Duration,
    max_retries: u32,
    max_tokens: u32,
}

fn endpoint(
    p: &mut Problems,
    at: &Origins<'_>,
    section: &str,
    raw: RawEndpoint,
    inherited: &Inherited,
) -> Option<Endpoint> {
    let key = |name: &str| format!("{section}.{name}");
    let api_key = secret(p, at, &key("api_key"), raw.api_key, raw.api_key_file);
    let request_timeout = positive(
        p,
        at,
        &key("request_timeout"),
        raw.request_timeout.as_ref(),
        inherited.request_timeout,
    );
    let max_retries = match raw.max_retries {
        None => inherited.max_retries,
        Some(n) if n <= MAX_RETRIES_LIMIT => n as u32,
        Some(n) => {
            let k = key("max_retries");
            p.push(
                at.of(&k),
                Some(&k),
                format!("{n} is out of range; use 0 to {MAX_RETRIES_LIMIT}"),
            );
            inherited.max_retries
        }
    };
    let max_tokens = match raw.max_tokens {
        None => inherited.max_tokens,
        Some(n) if (1..=1_000_000).contains(&n) => n as u32,
        Some(n) => {
            let k = key("max_tokens");
            p.push(
                at.of(&k),
                Some(&k),
                format!("{n} is out of range; use 1 to 1000000"),
            );
            inherited.max_tokens
        }
    };
    let Some(provider) = raw.provider else {
        let k = key("provider");
        p.push(
            at.of(section),
            Some(&k),
            "missing; use \"anthropic\" or \"openaicompat\"",
        );
        return None;
    };
    let Some(model) = raw.model.filter(|m| !m.trim().is_empty()) else {
        let k = key("model");
        p.push(at.of(section), Some(&k), "missing; name the model to use");
        return None;
    };
    let base_url = match (raw.base_url, provider) {
        (Some(url), _) => {
            let k = key("base_url");
            let before = p.len();
            check_url(p, at.of(&k), &k, &url);
            if p.len() > before {
                return None;
            }
            url.trim_end_matches('/').to_owned()
        }
        (None, Provider::Anthropic) => ANTHROPIC_BASE_URL.to_owned(),
        (None, Provider::Openaicompat) => {
            let k = key("base_url");
            p.push(
                at.of(section),
                Some(&k),
                "missing; openaicompat needs the server's base URL with its version path, for example \"http://127.0.0.1:11434/v1\"",
            );
            return None;
        }
    };
    Some(Endpoint {
        provider,
        model,
        api_key,
        base_url,
        request_timeout,
        max_retries,
        max_tokens,
    })
}

/// A duration that must be more than zero (a zero deadline would fail every call).
fn positive(
    p: &mut Problems,
    at: &Origins<'_>,
    key: &str,
    value: Option<&String>,
    default: Duration,
) -> Duration {
    let d = duration(p, at, key, value, default);
    if d.is_zero() {
        p.push(at.of(key), Some(key), "must be more than zero");
        return default;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Figment;
    use figment::providers::{Format, Toml};
    use std::path::Path;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Main {
        llm: Option<RawLlm>,
    }

    fn resolve_toml(text: &str) -> Result<Option<LlmConfig>, String> {
        let figment = Figment::new().merge(Toml::string(text));
        let file = Path::new("/etc/pb/productbuilder.toml");
        let main: Main = figment.extract().map_err(|e| e.to_string())?;
        let at = Origins::new(&figment, file);
        let mut p = Problems::new();
        let config = resolve(&mut p, &at, main.llm);
        if p.is_empty() {
            Ok(config)
        } else {
            Err(p
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }

    #[test]
    fn defaults_apply_without_the_keys() {
        let c = resolve_toml("[llm]\nprovider = \"anthropic\"\nmodel = \"m\"\napi_key = \"k\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.primary.base_url, ANTHROPIC_BASE_URL);
        assert_eq!(c.primary.request_timeout, Duration::from_secs(60));
        assert_eq!(c.primary.max_retries, 3);
        assert_eq!(c.primary.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(c.token_budget, 8000);
        assert_eq!(c.run_timeout, Duration::from_secs(120));
        assert_eq!(c.trace_retention, Duration::from_secs(14 * 24 * 3600));
        assert!(c.fallback.is_none());
        assert_eq!(c.primary.api_key.unwrap().expose(), "k");
    }

    #[test]
    fn every_key_is_read() {
        let c = resolve_toml(
            "[llm]\nprovider = \"openaicompat\"\nmodel = \"m\"\nbase_url = \"http://h:1/x/v1/\"\n\
             request_timeout = \"7s\"\nmax_retries = 5\nmax_tokens = 99\ntoken_budget = 1234\n\
             run_timeout = \"33s\"\ntrace_retention = \"2d\"\n\
             [llm.fallback]\nprovider = \"anthropic\"\nmodel = \"f\"\nmax_retries = 0\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.primary.provider, Provider::Openaicompat);
        assert_eq!(c.primary.base_url, "http://h:1/x/v1");
        assert_eq!(c.primary.request_timeout, Duration::from_secs(7));
        assert_eq!(c.primary.max_retries, 5);
        assert_eq!(c.primary.max_tokens, 99);
        assert_eq!(c.token_budget, 1234);
        assert_eq!(c.run_timeout, Duration::from_secs(33));
        assert_eq!(c.trace_retention, Duration::from_secs(2 * 24 * 3600));
        let f = c.fallback.unwrap();
        assert_eq!(f.provider, Provider::Anthropic);
        assert_eq!(f.max_retries, 0, "its own value");
        assert_eq!(
            f.request_timeout,
            Duration::from_secs(7),
            "inherited from [llm]"
        );
        assert_eq!(f.max_tokens, 99, "inherited from [llm]");
    }

    #[test]
    fn problems_name_the_file_and_the_key() {
        let e = resolve_toml(
            "[llm]\nprovider = \"openaicompat\"\nmodel = \"m\"\nrequest_timeout = \"0s\"\nmax_retries = 99\n",
        )
        .unwrap_err();
        assert!(
            e.contains("/etc/pb/productbuilder.toml: key `llm.base_url`: missing"),
            "{e}"
        );
        assert!(
            e.contains("key `llm.request_timeout`: must be more than zero"),
            "{e}"
        );
        assert!(
            e.contains("key `llm.max_retries`: 99 is out of range"),
            "{e}"
        );
        let e = resolve_toml(
            "[llm]\nprovider = \"anthropic\"\nmodel = \"m\"\ntoken_budget = 3\n[llm.fallback]\nmodel = \"x\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("key `llm.token_budget`: 3 is out of range"),
            "{e}"
        );
        assert!(e.contains("key `llm.fallback.provider`: missing"), "{e}");
        let e = resolve_toml(
            "[llm]\nprovider = \"anthropic\"\nmodel = \"m\"\nbase_url = \"ftp://x\"\n",
        )
        .unwrap_err();
        assert!(e.contains("key `llm.base_url`"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = resolve_toml("[llm]\nprovider = \"anthropic\"\nmodel = \"m\"\nretries = 2\n")
            .unwrap_err();
        assert!(e.contains("retries"), "{e}");
        // The keys of a whole call are not a fallback's.
        let e = resolve_toml(
            "[llm]\nprovider = \"anthropic\"\nmodel = \"m\"\n[llm.fallback]\nprovider = \"anthropic\"\nmodel = \"f\"\nrun_timeout = \"5s\"\n",
        )
        .unwrap_err();
        assert!(e.contains("run_timeout"), "{e}");
    }

    #[test]
    fn the_key_is_never_printed() {
        let c = resolve_toml(
            "[llm]\nprovider = \"anthropic\"\nmodel = \"m\"\napi_key = \"sk-ant-SECRET\"\n",
        )
        .unwrap()
        .unwrap();
        assert!(!format!("{c:?}").contains("sk-ant-SECRET"));
    }
}
