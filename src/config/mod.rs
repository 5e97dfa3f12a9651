//! Configuration: the main TOML file, one TOML file per tenant, `PRODUCTBUILDER_<SECTION>__<KEY>`
//! environment overrides, `<key>_file` secrets and humantime durations.
//!
//! Loading happens in two steps, ripgrep-style: figment reads [`raw::RawConfig`] (the keys exactly as
//! typed, unknown keys rejected), then [`resolve`] checks values, reads secret files and produces a
//! [`Config`]. Every problem found is reported, each naming the file (or environment variable) and
//! the key.
//!
//! This file owns the main file's own sections (`state_dir`, `[http]`, `[log]`, `[scheduler]`)
//! and the tenant list. Each module resolves its own section and tenant keys
//! (`productbuilder_github::config`, `productbuilder_preview::config`,
//! `productbuilder_slack::config`, `productbuilder_builds::config`, `productbuilder_llm::config`)
//! with the shared helpers of `productbuilder_settings`.

pub mod raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};

use productbuilder_builds::config::{self as builds_config, BuildsConfig};
use productbuilder_github::config::{self as github_config, GithubConfig};
use productbuilder_llm::config::{self as llm_config, LlmConfig};
use productbuilder_preview::config::{self as preview_config, PreviewConfig, TenantPreview};
use productbuilder_settings::{
    Origins, Problem, Problems, duration, from_figment, parse_duration, secret,
};
use productbuilder_slack::config::{self as slack_config, SlackConfig};
use raw::{RawConfig, RawTenant};

pub use productbuilder_github::config::GithubAuth;
pub use productbuilder_settings::{ConfigError, ENV_PREFIX, Secret};
pub use raw::LogFormat;

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
    /// `[preview]` (with `state_dir` and `[http].public_url`, which it needs too) and every
    /// tenant's `previews` and `[preview]`, resolved by the preview crate.
    pub preview: PreviewConfig,
    /// `[slack]`, resolved by the Slack crate; `None` without the section.
    pub slack: Option<SlackConfig>,
    /// Each tenant's `slack_channel`, by `owner/name` as configured (tenants without one absent).
    pub slack_channels: BTreeMap<String, String>,
    /// Each tenant's `[slack] writers` (Slack user ids), for the agent; tenants without absent.
    pub slack_writers: BTreeMap<String, Vec<String>>,
    /// `[llm]`, resolved by the llm crate; `None` without the section.
    pub llm: Option<LlmConfig>,
    /// `[builds]`, resolved by the builds crate; `None` without the section.
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
pub struct SchedulerConfig {
    pub preflight_concurrency: usize,
    pub shutdown_grace: Duration,
    /// The timeout of each unit run unless its module sets its own.
    pub run_timeout: Duration,
}

/// One tenant file, without the modules' tables (those live in each module's configuration, keyed
/// by [`TenantConfig::repo`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub owner: String,
    pub name: String,
    pub poll_interval: Duration,
    /// The tenant file.
    pub source: PathBuf,
}

impl TenantConfig {
    pub fn repo(&self) -> String {
        format!("{}/{}", self.owner, self.name)
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
            let mut problems = from_figment(e, &origin);
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
    let mut p = Problems::new();
    // The interval only matters for a valid tenant, and none is used from here.
    load_tenants(
        &mut p,
        file,
        &dir,
        Duration::from_secs(30),
        &mut TenantTables::default(),
    );
    p.into_vec()
}

fn single(origin: &str, message: impl Into<String>) -> ConfigError {
    ConfigError(vec![Problem {
        origin: origin.to_owned(),
        key: None,
        message: message.into(),
    }])
}

fn resolve(raw: RawConfig, file: &Path, figment: &Figment) -> Result<Config, ConfigError> {
    let at = Origins::new(figment, file);
    let mut p = Problems::new();

    let state_dir = match raw.state_dir {
        Some(dir) => at.relative(dir),
        None => {
            p.push(
                at.file(),
                Some("state_dir"),
                "missing; this key is required (where the database and workspaces live, for example state_dir = \"/var/lib/productbuilder\")",
            );
            PathBuf::new()
        }
    };
    let tenants_dir = at.relative(raw.tenants_dir.unwrap_or_else(|| PathBuf::from("tenants")));

    let listen_text = raw
        .http
        .listen
        .unwrap_or_else(|| "127.0.0.1:8091".to_owned());
    let listen = listen_text.parse().unwrap_or_else(|_| {
        p.push(
            at.of("http.listen"),
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
            at.of("http.public_url"),
            Some("http.public_url"),
            format!("{u:?} is not an http(s) URL; write it like \"https://previews.example.com\""),
        );
    }
    let api_token = secret(
        &mut p,
        &at,
        "http.api_token",
        raw.http.api_token,
        raw.http.api_token_file,
    );
    let read_token = secret(
        &mut p,
        &at,
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
            at.of("log.level"),
            Some("log.level"),
            format!(
                "{:?} is not a log filter ({e}); use error, warn, info, debug or trace",
                log.level
            ),
        );
    }

    let github = github_config::resolve(&mut p, &at, raw.github);
    let poll_interval = github
        .as_ref()
        .map_or(github_config::DEFAULT_POLL_INTERVAL, |g| g.poll_interval);
    let preview =
        preview_config::resolve(&mut p, &at, raw.preview, &state_dir, public_url.as_deref());

    let slack = slack_config::resolve(&mut p, &at, raw.slack);

    let llm = llm_config::resolve(&mut p, &at, raw.llm);

    let builds = builds_config::resolve(&mut p, &at, raw.builds);

    let scheduler = SchedulerConfig {
        preflight_concurrency: match raw.scheduler.preflight_concurrency {
            Some(0) => {
                p.push(
                    at.of("scheduler.preflight_concurrency"),
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
            &at,
            "scheduler.shutdown_grace",
            raw.scheduler.shutdown_grace.as_ref(),
            Duration::from_secs(30),
        ),
        run_timeout: duration(
            &mut p,
            &at,
            "scheduler.run_timeout",
            raw.scheduler.run_timeout.as_ref(),
            Duration::from_secs(5 * 60),
        ),
    };

    let mut modules = TenantTables::default();
    let tenants = load_tenants(&mut p, file, &tenants_dir, poll_interval, &mut modules);

    p.finish(|| Config {
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
        github: github.expect("no problems means [github] resolved"),
        preview: PreviewConfig {
            settings: preview,
            tenants: modules.previews,
        },
        slack,
        slack_channels: modules.slack_channels,
        slack_writers: modules.slack_writers,
        llm,
        builds,
        scheduler,
        tenants,
    })
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

/// The modules' keys of every tenant file, by `owner/name`, resolved by each module.
#[derive(Default)]
struct TenantTables {
    previews: BTreeMap<String, TenantPreview>,
    slack_channels: BTreeMap<String, String>,
    slack_writers: BTreeMap<String, Vec<String>>,
}

fn load_tenants(
    p: &mut Problems,
    main_file: &Path,
    dir: &Path,
    default_interval: Duration,
    modules: &mut TenantTables,
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
                let mut problems = from_figment(e, &origin);
                for problem in &mut problems {
                    if problem.key.as_deref() == Some("repo") {
                        problem.message =
                            "missing; name the repository, for example repo = \"acme/shop\""
                                .to_owned();
                    }
                }
                p.extend(problems);
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
        let Some(preview) =
            preview_config::resolve_tenant(p, &origin, dir, raw.previews, raw.preview)
        else {
            continue;
        };
        let slack_problems = p.len();
        let slack_channel = slack_config::resolve_tenant(p, &origin, raw.slack_channel);
        let slack_writers = slack_config::resolve_writers(p, &origin, raw.slack);
        if p.len() != slack_problems {
            continue;
        }
        let tenant = TenantConfig {
            owner: owner.to_owned(),
            name: name.to_owned(),
            poll_interval,
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
        modules.previews.insert(tenant.repo(), preview);
        if let Some(channel) = slack_channel {
            modules.slack_channels.insert(tenant.repo(), channel);
        }
        if !slack_writers.is_empty() {
            modules.slack_writers.insert(tenant.repo(), slack_writers);
        }
        tenants.push(tenant);
    }
    if tenants.is_empty()
        && !p
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
