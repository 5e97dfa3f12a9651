//! Configuration: the main TOML file, one TOML file per tenant, `PRODUCTBUILDER_<SECTION>__<KEY>`
//! environment overrides, `<key>_file` secrets and humantime durations.
//!
//! Loading happens in two steps, ripgrep-style: figment reads [`raw::RawConfig`] (the keys exactly as
//! typed, unknown keys rejected), then [`resolve`] checks values, reads secret files and produces a
//! [`Config`]. Every problem found is reported, each naming the file (or environment variable) and
//! the key.

pub mod raw;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};

use productbuilder_preview::policy::Rule;
use productbuilder_preview::reconcile::PreviewVar;
use productbuilder_preview::spec::valid_service_name;
use productbuilder_preview::{Egress, Settings, TenantRules};
use raw::{LlmProvider, RawConfig, RawTenant};

pub use raw::LogFormat;

/// The environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "PRODUCTBUILDER_";

/// A secret value. It has no `Display`, and `Debug` prints a placeholder, so it cannot end up in a
/// log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it (an HTTP header, a signature check).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The main file, as given.
    pub file: PathBuf,
    pub state_dir: PathBuf,
    pub tenants_dir: PathBuf,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub github: GithubConfig,
    /// `[preview]`, resolved into the preview crate's own settings (with `state_dir` and
    /// `[http].public_url`, which it needs too).
    pub preview: Settings,
    pub slack: Option<SlackConfig>,
    pub llm: Option<LlmConfig>,
    pub builds: Option<BuildsConfig>,
    pub scheduler: SchedulerConfig,
    pub tenants: Vec<TenantConfig>,
}

impl Config {
    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("productbuilder.db")
    }
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Where people reach this daemon's HTTP API (behind a proxy, say), for the log links in pull
    /// request comments; without it comments carry no log link.
    pub public_url: Option<String>,
    /// Without it every mutating route answers 403.
    pub api_token: Option<Secret>,
    /// With it every route but `/healthz`, `/readyz` and `/webhook` asks for this token (or the
    /// api token); without it those read routes are open.
    pub read_token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive; `RUST_LOG` wins when set.
    pub level: String,
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

#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub bot_token: Secret,
    pub app_token: Option<Secret>,
    pub api_url: String,
}

#[derive(Debug, Clone)]
pub struct LlmEndpoint {
    pub provider: LlmProvider,
    pub model: String,
    pub api_key: Option<Secret>,
    pub base_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LlmConfig {
    pub primary: LlmEndpoint,
    pub fallback: Option<LlmEndpoint>,
}

#[derive(Debug, Clone)]
pub struct BuildsConfig {
    pub agent_command: Vec<String>,
    pub max_duration: Duration,
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub preflight_concurrency: usize,
    pub shutdown_grace: Duration,
    /// The timeout of each unit run unless its module sets its own.
    pub run_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub owner: String,
    pub name: String,
    pub poll_interval: Duration,
    pub previews: bool,
    pub slack_channel: Option<String>,
    /// Its `[preview]` table: the preview crate's own type, defaults included.
    pub preview: TenantRules,
    /// The tenant file.
    pub source: PathBuf,
}

impl TenantConfig {
    pub fn repo(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, or the environment variable, the value came from.
    pub origin: String,
    /// The dotted key, when the problem is about one.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{key}`: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// Everything wrong with the configuration, one problem per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems while resolving, so that one run reports all of them.
struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    fn push(&mut self, origin: impl Into<String>, key: Option<&str>, message: impl Into<String>) {
        self.list.push(Problem {
            origin: origin.into(),
            key: key.map(str::to_owned),
            message: message.into(),
        });
    }
}

/// Loads and resolves the configuration, with environment overrides from the process.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    load_with_env(file, Env::prefixed(ENV_PREFIX))
}

fn env_provider(env: Env) -> Env {
    // Keep values as typed: a token of digits must stay a string. `CONFIG` is the path of this
    // very file, not a key inside it.
    env.split("__")
        .ignore(&["config"])
        .parser(|v: &str| figment::value::Value::from(v))
}

fn load_with_env(file: &Path, env: Env) -> Result<Config, ConfigError> {
    let origin = file.display().to_string();
    match std::fs::metadata(file) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(single(&origin, "is not a file")),
        Err(e) => {
            return Err(single(
                &origin,
                format!(
                    "cannot read the config file: {e}; pass --config FILE or set PRODUCTBUILDER_CONFIG"
                ),
            ));
        }
    }
    let figment = Figment::new()
        .merge(Toml::file(file))
        .merge(env_provider(env));
    let raw: RawConfig = match figment.extract() {
        Ok(raw) => raw,
        Err(e) => {
            // A broken main file must not hide the tenant files' own problems: one run of
            // `check` should list everything to fix.
            let mut problems = from_figment(e, &origin).0;
            problems.extend(tenant_problems(file, &figment));
            return Err(ConfigError(problems));
        }
    };
    resolve(raw, file, &figment)
}

/// The tenant files' problems, for when the main file cannot be read as a whole. The tenants
/// directory is taken from the main file if that key can be read, else the default `tenants`
/// (then only if it exists: a guess must not add a problem of its own).
fn tenant_problems(file: &Path, figment: &Figment) -> Vec<Problem> {
    let base = file.parent().unwrap_or(Path::new("."));
    let (dir, guessed) = match figment.extract_inner::<PathBuf>("tenants_dir") {
        Ok(dir) => (dir, false),
        Err(_) => (PathBuf::from("tenants"), true),
    };
    let dir = base.join(dir);
    if guessed && !dir.is_dir() {
        return Vec::new();
    }
    let mut p = Problems { list: Vec::new() };
    // The interval only matters for a valid tenant, and none is used from here.
    load_tenants(&mut p, file, &dir, Duration::from_secs(30));
    p.list
}

fn single(origin: &str, message: impl Into<String>) -> ConfigError {
    ConfigError(vec![Problem {
        origin: origin.to_owned(),
        key: None,
        message: message.into(),
    }])
}

/// Turns figment's error chain into problems that name the file (or variable) and the key.
fn from_figment(error: figment::Error, default_origin: &str) -> ConfigError {
    use figment::error::Kind;
    let mut problems = Vec::new();
    for e in error {
        let origin = match &e.metadata {
            Some(meta) => match &meta.source {
                Some(figment::Source::File(path)) => path.display().to_string(),
                _ if meta.name.contains("environment") => env_origin(&e.path.join(".")),
                _ => default_origin.to_owned(),
            },
            None => default_origin.to_owned(),
        };
        let mut key = (!e.path.is_empty()).then(|| e.path.join("."));
        let message = match &e.kind {
            Kind::UnknownField(field, expected) => {
                key = Some(with_field(&e.path, field));
                let mut m = "unknown key".to_owned();
                if let Some(near) = nearest(field, expected) {
                    m.push_str(&format!("; did you mean `{near}`?"));
                }
                if !expected.is_empty() {
                    m.push_str(&format!(" (known keys here: {})", expected.join(", ")));
                }
                m
            }
            Kind::MissingField(field) => {
                key = Some(with_field(&e.path, field));
                "missing; this key is required".to_owned()
            }
            Kind::UnknownVariant(found, expected) => {
                format!("{found:?} is not one of: {}", expected.join(", "))
            }
            Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
            Kind::Message(m) => m.trim().replace('\n', " "),
            other => other.to_string(),
        };
        problems.push(Problem {
            origin,
            key,
            message,
        });
    }
    ConfigError(problems)
}

/// The dotted key of `field` under `path`; figment sometimes already ends the path with it.
fn with_field(path: &[String], field: &str) -> String {
    match path.last() {
        Some(last) if last == field => path.join("."),
        Some(_) => format!("{}.{field}", path.join(".")),
        None => field.to_owned(),
    }
}

/// The known key closest to a misspelt one, if any is close enough to be a likely typo.
fn nearest<'a>(typed: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (levenshtein(typed, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// "environment variable PRODUCTBUILDER_GITHUB__TOKEN" for the key `github.token`.
fn env_origin(key: &str) -> String {
    format!(
        "environment variable {ENV_PREFIX}{}",
        key.replace('.', "__").to_uppercase()
    )
}

/// Whether a key's value came from an environment variable rather than the file.
fn from_env(figment: &Figment, key: &str) -> bool {
    figment
        .find_metadata(key)
        .is_some_and(|meta| meta.name.contains("environment"))
}

/// Where a key's value came from: the file, or the environment variable that overrode it.
fn origin_of(figment: &Figment, key: &str, file: &Path) -> String {
    if from_env(figment, key) {
        env_origin(key)
    } else {
        file.display().to_string()
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write it like \"30s\", \"5m\", \"2h\" or \"7d\"")
    })
}

fn resolve(raw: RawConfig, file: &Path, figment: &Figment) -> Result<Config, ConfigError> {
    let base = file.parent().unwrap_or(Path::new("."));
    let mut p = Problems { list: Vec::new() };
    let here = |key: &str| origin_of(figment, key, file);
    let relative = |path: PathBuf| {
        if path.is_absolute() {
            path
        } else {
            base.join(path)
        }
    };
    let duration =
        |p: &mut Problems, key: &str, value: Option<&String>, default: Duration| match value
            .map(|v| parse_duration(v))
        {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(message)) => {
                p.push(here(key), Some(key), message);
                default
            }
        };
    // A secret given inline or as `<key>_file`, never both, and never empty: an empty token would
    // pass as "set" here and fail later as a 401 far from its cause.
    let secret = |p: &mut Problems, key: &str, inline: Option<String>, path: Option<PathBuf>| {
        let key_file = format!("{key}_file");
        match (inline, path) {
            (Some(_), Some(_)) => {
                // Blame the environment variable when one of the two came from it: that is the
                // setting the operator is least likely to see while reading the file.
                let (key_env, other) = if from_env(figment, &key_file) {
                    (key_file.as_str(), key)
                } else {
                    (key, key_file.as_str())
                };
                let mut message = format!("set either `{key}` or `{key_file}`, not both");
                let (origin, other_origin) = (here(key_env), here(other));
                if origin != other_origin {
                    message.push_str(&format!(
                        "; `{other}` is also set in {other_origin}: remove one of the two"
                    ));
                }
                p.push(origin, Some(key_env), message);
                None
            }
            (Some(value), None) if value.trim().is_empty() => {
                p.push(
                    here(key),
                    Some(key),
                    "is empty; give the secret's value, or remove the key",
                );
                None
            }
            (Some(value), None) => Some(Secret(value)),
            (None, Some(path)) => {
                let path = relative(path);
                match std::fs::read_to_string(&path) {
                    Ok(text) if text.trim().is_empty() => {
                        p.push(
                            here(&key_file),
                            Some(&key_file),
                            format!(
                                "secret file {} is empty; write the secret into it",
                                path.display()
                            ),
                        );
                        None
                    }
                    Ok(text) => Some(Secret(text.trim_end_matches(['\n', '\r']).to_owned())),
                    Err(e) => {
                        p.push(
                            here(&key_file),
                            Some(&key_file),
                            format!("cannot read secret file {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        }
    };
    // Whether a problem about `key` (or `key_file`) was already recorded: then it is not missing,
    // and saying so would contradict that line.
    let reported = |p: &Problems, key: &str| {
        p.list
            .iter()
            .any(|x| x.key.as_deref().is_some_and(|k| k.starts_with(key)))
    };

    let state_dir = match raw.state_dir {
        Some(dir) => relative(dir),
        None => {
            p.push(
                file.display().to_string(),
                Some("state_dir"),
                "missing; this key is required (where the database and workspaces live, for example state_dir = \"/var/lib/productbuilder\")",
            );
            PathBuf::new()
        }
    };
    let tenants_dir = relative(raw.tenants_dir.unwrap_or_else(|| PathBuf::from("tenants")));

    let listen_text = raw
        .http
        .listen
        .unwrap_or_else(|| "127.0.0.1:8091".to_owned());
    let listen = listen_text.parse().unwrap_or_else(|_| {
        p.push(
            here("http.listen"),
            Some("http.listen"),
            format!("{listen_text:?} is not an address; write it like \"127.0.0.1:8091\""),
        );
        SocketAddr::from(([127, 0, 0, 1], 8091))
    });
    let public_url = raw
        .http
        .public_url
        .map(|u| u.trim_end_matches('/').to_owned());
    if let Some(u) = &public_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        p.push(
            here("http.public_url"),
            Some("http.public_url"),
            format!("{u:?} is not an http(s) URL; write it like \"https://previews.example.com\""),
        );
    }
    let api_token = secret(
        &mut p,
        "http.api_token",
        raw.http.api_token,
        raw.http.api_token_file,
    );
    let read_token = secret(
        &mut p,
        "http.read_token",
        raw.http.read_token,
        raw.http.read_token_file,
    );

    let log = LogConfig {
        format: raw.log.format.unwrap_or(LogFormat::Json),
        level: raw.log.level.unwrap_or_else(|| "info".to_owned()),
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        p.push(
            here("log.level"),
            Some("log.level"),
            format!(
                "{:?} is not a log filter ({e}); use error, warn, info, debug or trace",
                log.level
            ),
        );
    }

    let github_raw = raw.github.unwrap_or_else(|| {
        p.push(
            file.display().to_string(),
            Some("github"),
            "missing; the [github] section with a token (or app_id and private_key_file) is required",
        );
        Default::default()
    });
    let api_url = github_raw
        .api_url
        .unwrap_or_else(|| "https://api.github.com".to_owned());
    check_url(&mut p, here("github.api_url"), "github.api_url", &api_url);
    let token = secret(
        &mut p,
        "github.token",
        github_raw.token,
        github_raw.token_file,
    );
    let auth = match (token, github_raw.app_id, github_raw.private_key_file) {
        (Some(token), None, None) => Some(GithubAuth::Token(token)),
        (None, Some(app_id), Some(key_file)) => {
            let path = relative(key_file);
            match std::fs::read_to_string(&path) {
                Ok(pem) if pem.contains("PRIVATE KEY") => Some(GithubAuth::App {
                    app_id,
                    private_key: Secret(pem),
                    installation_id: github_raw.installation_id,
                }),
                Ok(_) => {
                    p.push(
                        here("github.private_key_file"),
                        Some("github.private_key_file"),
                        format!("{} is not a PEM private key", path.display()),
                    );
                    None
                }
                Err(e) => {
                    p.push(
                        here("github.private_key_file"),
                        Some("github.private_key_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, Some(_), None) => {
            p.push(
                here("github.app_id"),
                Some("github.private_key_file"),
                "missing; app_id needs private_key_file",
            );
            None
        }
        (None, None, Some(_)) => {
            p.push(
                here("github.private_key_file"),
                Some("github.app_id"),
                "missing; private_key_file needs app_id",
            );
            None
        }
        (Some(_), _, _) => {
            p.push(
                here("github.token"),
                Some("github.token"),
                "set either a token or app_id with private_key_file, not both",
            );
            None
        }
        (None, None, None) => {
            // Only worth saying when the section exists (a missing section was reported above)
            // and no problem with the token was reported (it was set, but wrongly).
            if !p.list.iter().any(|x| x.key.as_deref() == Some("github"))
                && !reported(&p, "github.token")
            {
                p.push(
                    file.display().to_string(),
                    Some("github.token"),
                    "missing; set github.token (or github.token_file, or PRODUCTBUILDER_GITHUB__TOKEN), or app_id with private_key_file",
                );
            }
            None
        }
    };
    let poll_interval = duration(
        &mut p,
        "github.poll_interval",
        github_raw.poll_interval.as_ref(),
        Duration::from_secs(30),
    );
    let webhook_secret = secret(
        &mut p,
        "github.webhook_secret",
        github_raw.webhook_secret,
        github_raw.webhook_secret_file,
    );
    let max_in_flight = match github_raw.max_in_flight {
        Some(n @ 1..=100) => n as usize,
        None => 4,
        Some(n) => {
            p.push(
                here("github.max_in_flight"),
                Some("github.max_in_flight"),
                format!("{n} is out of range; GitHub allows at most 100 concurrent requests, use 1 to 100"),
            );
            4
        }
    };
    let request_timeout = duration(
        &mut p,
        "github.request_timeout",
        github_raw.request_timeout.as_ref(),
        Duration::from_secs(30),
    );

    let egress = match raw.preview.egress.as_deref() {
        None | Some("open") => Egress::Open,
        Some("none") => Egress::None,
        Some(other) => {
            p.push(
                here("preview.egress"),
                Some("preview.egress"),
                format!("{other:?} is not an egress mode; use \"open\" or \"none\""),
            );
            Egress::Open
        }
    };
    if let Some(domain) = &raw.preview.domain {
        check_domain(&mut p, here("preview.domain"), domain);
    }
    let preview = Settings {
        egress,
        host_retry: Duration::from_secs(10),
        state_dir: state_dir.clone(),
        public_url: public_url.clone(),
        limits: Default::default(),
        domain: raw
            .preview
            .domain
            .unwrap_or_else(|| "preview.localhost".to_owned()),
        url_template: raw
            .preview
            .url_template
            .unwrap_or_else(|| "http://{repo}-pr-{number}.{domain}".to_owned()),
        compose_command: raw
            .preview
            .compose_command
            .unwrap_or_else(|| vec!["docker".to_owned(), "compose".to_owned()]),
        network: raw
            .preview
            .network
            .unwrap_or_else(|| "productbuilder-previews".to_owned()),
        entrypoint: raw.preview.entrypoint.unwrap_or_else(|| "web".to_owned()),
        cert_resolver: raw.preview.cert_resolver,
        max_previews: raw.preview.max_previews.map_or(20, |n| n as usize),
        max_builds: raw.preview.max_builds.map_or(2, |n| n as usize),
        ttl: duration(
            &mut p,
            "preview.ttl",
            raw.preview.ttl.as_ref(),
            Duration::from_secs(7 * 24 * 3600),
        ),
        docker_config: raw.preview.docker_config.map(relative),
    };
    if let Some(dir) = &preview.docker_config {
        let key = "preview.docker_config";
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => p.push(
                here(key),
                Some(key),
                format!(
                    "{} is not a directory; name the directory that holds config.json (as DOCKER_CONFIG would)",
                    dir.display()
                ),
            ),
            Err(e) => p.push(
                here(key),
                Some(key),
                format!("cannot read the directory {}: {e}", dir.display()),
            ),
        }
    }
    for (key, value) in [
        ("preview.max_previews", preview.max_previews),
        ("preview.max_builds", preview.max_builds),
    ] {
        if value == 0 {
            p.push(here(key), Some(key), "must be at least 1");
        }
    }
    if !valid_docker_name(&preview.network) {
        p.push(
            here("preview.network"),
            Some("preview.network"),
            format!("{:?} is not a Docker network name", preview.network),
        );
    }
    check_template(&mut p, here("preview.url_template"), &preview.url_template);
    if preview.compose_command.is_empty() {
        p.push(
            here("preview.compose_command"),
            Some("preview.compose_command"),
            "must name a Compose v2 program, for example [\"docker\", \"compose\"]",
        );
    }

    let slack = raw.slack.and_then(|s| {
        let bot = secret(&mut p, "slack.bot_token", s.bot_token, s.bot_token_file);
        let app = secret(&mut p, "slack.app_token", s.app_token, s.app_token_file);
        let api_url = s
            .api_url
            .unwrap_or_else(|| "https://slack.com/api".to_owned());
        check_url(&mut p, here("slack.api_url"), "slack.api_url", &api_url);
        match bot {
            Some(bot_token) => Some(SlackConfig {
                bot_token,
                app_token: app,
                api_url,
            }),
            None => {
                if !reported(&p, "slack.bot_token") {
                    p.push(
                        here("slack"),
                        Some("slack.bot_token"),
                        "missing; [slack] needs bot_token (or bot_token_file)",
                    );
                }
                None
            }
        }
    });

    let llm = raw.llm.and_then(|l| {
        let primary = llm_endpoint(
            &mut p,
            &here,
            &secret,
            "llm",
            l.provider,
            l.model,
            l.api_key,
            l.api_key_file,
            l.base_url,
        )?;
        let fallback = match l.fallback {
            Some(f) => Some(llm_endpoint(
                &mut p,
                &here,
                &secret,
                "llm.fallback",
                f.provider,
                f.model,
                f.api_key,
                f.api_key_file,
                f.base_url,
            )?),
            None => None,
        };
        Some(LlmConfig { primary, fallback })
    });

    let builds = raw.builds.map(|b| {
        let agent_command = b.agent_command.unwrap_or_else(|| {
            ["claude", "-p", "{prompt}", "--output-format", "stream-json"]
                .map(String::from)
                .to_vec()
        });
        if agent_command.is_empty() {
            p.push(
                here("builds.agent_command"),
                Some("builds.agent_command"),
                "must name a program",
            );
        }
        let max_duration = duration(
            &mut p,
            "builds.max_duration",
            b.max_duration.as_ref(),
            Duration::from_secs(30 * 60),
        );
        BuildsConfig {
            agent_command,
            max_duration,
        }
    });

    let scheduler = SchedulerConfig {
        preflight_concurrency: match raw.scheduler.preflight_concurrency {
            Some(0) => {
                p.push(
                    here("scheduler.preflight_concurrency"),
                    Some("scheduler.preflight_concurrency"),
                    "must be at least 1",
                );
                1
            }
            Some(n) => n as usize,
            None => 8,
        },
        shutdown_grace: duration(
            &mut p,
            "scheduler.shutdown_grace",
            raw.scheduler.shutdown_grace.as_ref(),
            Duration::from_secs(30),
        ),
        run_timeout: duration(
            &mut p,
            "scheduler.run_timeout",
            raw.scheduler.run_timeout.as_ref(),
            Duration::from_secs(5 * 60),
        ),
    };

    let tenants = load_tenants(&mut p, file, &tenants_dir, poll_interval);

    if !p.list.is_empty() {
        return Err(ConfigError(p.list));
    }
    Ok(Config {
        file: file.to_path_buf(),
        state_dir,
        tenants_dir,
        http: HttpConfig {
            listen,
            public_url,
            api_token,
            read_token,
        },
        log,
        github: GithubConfig {
            api_url,
            auth: auth.expect("no problems means auth resolved"),
            poll_interval,
            webhook_secret,
            max_in_flight,
            request_timeout,
        },
        preview,
        slack,
        llm,
        builds,
        scheduler,
        tenants,
    })
}

/// Resolves `<key>` / `<key>_file` into a secret, recording problems.
type SecretReader<'a> =
    dyn Fn(&mut Problems, &str, Option<String>, Option<PathBuf>) -> Option<Secret> + 'a;

#[allow(clippy::too_many_arguments)]
fn llm_endpoint(
    p: &mut Problems,
    here: &dyn Fn(&str) -> String,
    secret: &SecretReader<'_>,
    section: &str,
    provider: Option<LlmProvider>,
    model: Option<String>,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    base_url: Option<String>,
) -> Option<LlmEndpoint> {
    let api_key = secret(p, &format!("{section}.api_key"), api_key, api_key_file);
    let Some(provider) = provider else {
        let key = format!("{section}.provider");
        p.push(
            here(section),
            Some(&key),
            "missing; use \"anthropic\" or \"openaicompat\"",
        );
        return None;
    };
    let Some(model) = model else {
        let key = format!("{section}.model");
        p.push(here(section), Some(&key), "missing; name the model to use");
        return None;
    };
    if let Some(url) = &base_url {
        let key = format!("{section}.base_url");
        check_url(p, here(&key), &key, url);
    } else if provider == LlmProvider::Openaicompat {
        let key = format!("{section}.base_url");
        p.push(
            here(section),
            Some(&key),
            "missing; openaicompat needs the server's base URL",
        );
        return None;
    }
    Some(LlmEndpoint {
        provider,
        model,
        api_key,
        base_url,
    })
}

fn check_url(p: &mut Problems, origin: String, key: &str, url: &str) {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
        p.push(origin, Some(key), format!("{url:?} is not an http(s) URL"));
    }
}

/// `[preview] domain` goes into host names (`{domain}` in `url_template`, Traefik's `Host` rule),
/// so it must be a bare host name: a scheme, path or port there would make every preview URL
/// wrong while `check` passes.
fn check_domain(p: &mut Problems, origin: String, domain: &str) {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if domain.len() <= 253 && domain.split('.').all(label_ok) {
        return;
    }
    // What the operator probably meant: the host part of what they wrote.
    let host = domain.trim();
    let host = host.split_once("://").map_or(host, |(_, rest)| rest);
    let host = host.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = host.split(':').next().unwrap_or_default();
    let hint = if !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok) {
        format!("write only the host name: domain = {host:?}")
    } else {
        "write only the host name, for example domain = \"preview.example.com\"".to_owned()
    };
    p.push(
        origin,
        Some("preview.domain"),
        format!("{domain:?} is not a host name (no scheme, path or port); {hint}"),
    );
}

fn check_template(p: &mut Problems, origin: String, template: &str) {
    const KNOWN: [&str; 4] = ["owner", "repo", "number", "domain"];
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            p.push(
                origin,
                Some("preview.url_template"),
                "has a `{` without a closing `}`",
            );
            return;
        };
        let name = &rest[start + 1..start + len];
        if !KNOWN.contains(&name) {
            p.push(
                origin.clone(),
                Some("preview.url_template"),
                format!("unknown placeholder {{{name}}}; use {{owner}}, {{repo}}, {{number}} or {{domain}}"),
            );
        }
        rest = &rest[start + len + 1..];
    }
    if !template.contains("{number}") {
        p.push(
            origin,
            Some("preview.url_template"),
            "must contain {number}, or every pull request would get the same URL",
        );
    }
}

/// A repository name as GitHub allows it.
fn valid_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A Docker object name: letters, digits, `_`, `.`, `-`, starting with a letter or digit — the
/// same rule as a Compose service name.
fn valid_docker_name(name: &str) -> bool {
    valid_service_name(name)
}

/// `512m`, `1g`, `2048k`, `1073741824`: what Compose accepts for `mem_limit`.
fn valid_memory(text: &str) -> bool {
    let t = text.trim().to_ascii_lowercase();
    let digits = t.trim_end_matches(['b', 'k', 'm', 'g']);
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && t.len() - digits.len() <= 1
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
}

/// Largest value of a preview variable, inline or from a file: far below what Linux allows for
/// one environment string (128 KiB), and far above any real URL or key.
const MAX_ENV_VALUE_BYTES: usize = 64 * 1024;

/// How a TOML key is written in a dotted path: bare when TOML allows, quoted otherwise.
fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// Reads a `<NAME>_file` secret: at most [`MAX_ENV_VALUE_BYTES`] (a device like /dev/zero ends
/// the read), UTF-8, one trailing newline trimmed. Errors name the path, never the content.
fn read_env_secret(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_ENV_VALUE_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    if bytes.len() > MAX_ENV_VALUE_BYTES {
        return Err(format!(
            "secret file {} is larger than {} KiB",
            path.display(),
            MAX_ENV_VALUE_BYTES / 1024
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("secret file {} is not UTF-8 text", path.display()))?;
    if text.trim().is_empty() {
        return Err(format!(
            "secret file {} is empty; write the secret into it",
            path.display()
        ));
    }
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// `[preview.env.<service>]` of a tenant file: `NAME = "value"` is a plain variable, and
/// `NAME_file = "path"` a secret read from that file (relative paths from the tenant file's
/// directory). Problems never quote a value.
fn tenant_env(
    p: &mut Problems,
    origin: &str,
    dir: &Path,
    env: figment::value::Value,
) -> Vec<PreviewVar> {
    use figment::value::Value;
    const HOW: &str = "write variables under a table named after the Compose service, for example [preview.env.web] with DATABASE_URL = \"...\" or API_KEY_file = \"/path/to/secret\"";
    let Value::Dict(_, services) = env else {
        p.push(
            origin,
            Some("preview.env"),
            format!("must be a table; {HOW}"),
        );
        return Vec::new();
    };
    let mut vars = Vec::new();
    for (service, table) in services {
        let service_key = format!("preview.env.{}", toml_key(&service));
        if !valid_service_name(&service) {
            p.push(
                origin,
                Some(&service_key),
                format!(
                    "{service:?} is not a Compose service name (letters, digits, `_`, `.` and `-`, starting with a letter or digit)"
                ),
            );
            continue;
        }
        let Value::Dict(_, table) = table else {
            p.push(
                origin,
                Some(&service_key),
                format!("must be a table named after a Compose service; {HOW}"),
            );
            continue;
        };
        for (key, value) in &table {
            let full_key = format!("{service_key}.{}", toml_key(key));
            let (name, from_file) = match key.strip_suffix("_file") {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            if !PreviewVar::valid_name(name) {
                p.push(
                    origin,
                    Some(&full_key),
                    format!(
                        "{name:?} is not an environment variable name (letters, digits and `_`, not starting with a digit)"
                    ),
                );
                continue;
            }
            if PreviewVar::reserved(name) {
                p.push(
                    origin,
                    Some(&full_key),
                    format!(
                        "`{name}` is reserved: productbuilder sets BASE_URL (the preview's address) and keeps names starting with {} for itself",
                        PreviewVar::RESERVED_PREFIX
                    ),
                );
                continue;
            }
            if from_file && table.contains_key(name) {
                p.push(
                    origin,
                    Some(&full_key),
                    format!("set either `{name}` or `{name}_file`, not both"),
                );
                continue;
            }
            let Value::String(_, text) = value else {
                let what = if from_file {
                    "must be the path of the secret file, as a string"
                } else {
                    "must be a string; quote it, for example PORT = \"8080\""
                };
                p.push(origin, Some(&full_key), what);
                continue;
            };
            let value = if from_file {
                let path = Path::new(text);
                let path = if path.is_absolute() {
                    path.to_path_buf()
                } else {
                    dir.join(path)
                };
                match read_env_secret(&path) {
                    Ok(value) => value,
                    Err(message) => {
                        p.push(origin, Some(&full_key), message);
                        continue;
                    }
                }
            } else if text.len() > MAX_ENV_VALUE_BYTES {
                p.push(
                    origin,
                    Some(&full_key),
                    format!("is longer than {} KiB", MAX_ENV_VALUE_BYTES / 1024),
                );
                continue;
            } else {
                text.clone()
            };
            if value.contains('\0') {
                p.push(
                    origin,
                    Some(&full_key),
                    "contains a NUL byte, which no environment variable can hold",
                );
                continue;
            }
            vars.push(PreviewVar {
                service: service.clone(),
                name: name.to_owned(),
                value: productbuilder_preview::reconcile::Secret::new(value),
                secret: from_file,
            });
        }
    }
    vars.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    vars
}

/// A tenant file's `[preview]` table; `None` when it has problems (they are recorded).
fn tenant_preview(
    p: &mut Problems,
    origin: &str,
    dir: &Path,
    raw: Option<raw::RawTenantPreview>,
) -> Option<TenantRules> {
    let raw = raw.unwrap_or_default();
    let mut preview = TenantRules::default();
    let before = p.list.len();
    if let Some(v) = raw.allow_forks {
        preview.allow_forks = v;
    }
    if let Some(v) = raw.drafts {
        preview.drafts = v;
    }
    if let Some(v) = raw.require_label {
        preview.require_label = v;
    }
    if let Some(label) = raw.fork_label {
        if label.trim().is_empty() || label.len() > 50 {
            p.push(
                origin,
                Some("preview.fork_label"),
                "must be a label name of 1 to 50 characters",
            );
        }
        preview.fork_label = label;
    }
    for name in raw.allow.unwrap_or_default() {
        match Rule::from_name(&name) {
            Some(rule) => {
                preview.policy.allowed.insert(rule);
            }
            None => p.push(
                origin,
                Some("preview.allow"),
                format!(
                    "{name:?} is not a policy rule; use: {}",
                    Rule::ALL.map(Rule::name).join(", ")
                ),
            ),
        }
    }
    if let Some(cpus) = raw.cpus {
        if !(cpus > 0.0 && cpus <= 256.0) {
            p.push(
                origin,
                Some("preview.cpus"),
                format!("{cpus} is not a CPU count (more than 0, at most 256)"),
            );
        }
        preview.cpus = Some(cpus);
    }
    if let Some(memory) = raw.memory {
        if !valid_memory(&memory) {
            p.push(
                origin,
                Some("preview.memory"),
                format!("{memory:?} is not a memory size; write it like \"512m\" or \"2g\""),
            );
        }
        preview.memory = Some(memory);
    }
    if let Some(env) = raw.env {
        preview.env = tenant_env(p, origin, dir, env);
    }
    if let Some(v) = raw.secrets_for_forks {
        preview.secrets_for_forks = v;
    }
    (p.list.len() == before).then_some(preview)
}

fn load_tenants(
    p: &mut Problems,
    main_file: &Path,
    dir: &Path,
    default_interval: Duration,
) -> Vec<TenantConfig> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            p.push(
                main_file.display().to_string(),
                Some("tenants_dir"),
                format!(
                    "cannot read the tenants directory {}: {e}; create it with one <name>.toml per repository",
                    dir.display()
                ),
            );
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|path| path.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut tenants: Vec<TenantConfig> = Vec::new();
    for path in files {
        let origin = path.display().to_string();
        let raw: RawTenant = match Figment::new().merge(Toml::file(&path)).extract() {
            Ok(raw) => raw,
            Err(e) => {
                let mut problems = from_figment(e, &origin).0;
                for problem in &mut problems {
                    if problem.key.as_deref() == Some("repo") {
                        problem.message =
                            "missing; name the repository, for example repo = \"acme/shop\""
                                .to_owned();
                    }
                }
                p.list.extend(problems);
                continue;
            }
        };
        let Some((owner, name)) = raw
            .repo
            .split_once('/')
            .filter(|(o, n)| valid_repo_part(o) && valid_repo_part(n))
        else {
            p.push(
                &origin,
                Some("repo"),
                format!(
                    "{:?} is not owner/name, for example \"acme/shop\"",
                    raw.repo
                ),
            );
            continue;
        };
        let poll_interval = match raw.poll_interval.as_deref().map(parse_duration) {
            None => default_interval,
            Some(Ok(d)) if d < Duration::from_secs(1) => {
                p.push(&origin, Some("poll_interval"), "must be at least 1s");
                continue;
            }
            Some(Ok(d)) => d,
            Some(Err(message)) => {
                p.push(&origin, Some("poll_interval"), message);
                continue;
            }
        };
        let Some(preview) = tenant_preview(p, &origin, dir, raw.preview) else {
            continue;
        };
        let tenant = TenantConfig {
            owner: owner.to_owned(),
            name: name.to_owned(),
            poll_interval,
            previews: raw.previews.unwrap_or(true),
            slack_channel: raw.slack_channel,
            preview,
            source: path.clone(),
        };
        // GitHub names are case-insensitive: acme/Shop and acme/shop are one repository.
        if let Some(first) = tenants
            .iter()
            .find(|t| t.repo().eq_ignore_ascii_case(&tenant.repo()))
        {
            p.push(
                &origin,
                Some("repo"),
                format!(
                    "{} is already configured in {}; keep one file per repository",
                    tenant.repo(),
                    first.source.display()
                ),
            );
            continue;
        }
        tenants.push(tenant);
    }
    if tenants.is_empty()
        && !p
            .list
            .iter()
            .any(|x| x.origin.starts_with(&*dir.to_string_lossy()))
    {
        p.push(
            main_file.display().to_string(),
            Some("tenants_dir"),
            format!(
                "no tenant in {}; add one <name>.toml per repository containing repo = \"owner/name\"",
                dir.display()
            ),
        );
    }
    tenants
}

#[cfg(test)]
mod tests;
