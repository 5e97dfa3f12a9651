//! `[builds]` of the main file: the keys as typed ([`RawBuilds`]) and their resolution into
//! [`BuildsConfig`]. Problems name the file (or environment variable) and the key; unknown keys
//! are refused by figment with the nearest known key.
//!
//! `agent_command` is an argv, never a shell line: `{prompt}` is replaced inside the elements that
//! hold it, each staying ONE argument whatever the prompt contains (quotes, `;`, newlines). It is
//! required, so that the prompt cannot silently go nowhere (the agent's standard input is
//! `/dev/null`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use productbuilder_settings::raw::{duration_text, lenient_u64};
use productbuilder_settings::{Origins, Problems, Secret, duration, read_secret_file, secret};
use serde::Deserialize;

use crate::agent::AgentFormat;
use crate::git::check_branch;

/// What is replaced by the prompt in `agent_command`.
pub const PROMPT_PLACEHOLDER: &str = "{prompt}";
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_LABEL: &str = "productbuilder";
pub const DEFAULT_BRANCH_PREFIX: &str = "productbuilder/";
pub const DEFAULT_AUTHOR_NAME: &str = "productbuilder";
pub const DEFAULT_AUTHOR_EMAIL: &str = "productbuilder@users.noreply.github.com";
/// The agent's environment when `env` is unset: enough to find its program.
pub const DEFAULT_ENV: &[&str] = &["PATH"];
/// Follow-up builds the agent starts, per request, when a build's preview fails.
pub const DEFAULT_MAX_FIX_ATTEMPTS: u32 = 1;
/// More automatic fixes than this is a loop burning money, not a fix.
const MAX_FIX_ATTEMPTS_LIMIT: u64 = 10;
/// A secret file in `env_files` is at most this large.
const MAX_ENV_FILE_BYTES: usize = 64 * 1024;

/// `[builds]` as typed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuilds {
    pub agent_command: Option<Vec<String>>,
    pub agent_format: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub max_duration: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_turns: Option<u64>,
    pub max_cost_usd: Option<f64>,
    pub label: Option<String>,
    pub callback_secret: Option<String>,
    pub callback_secret_file: Option<PathBuf>,
    pub branch_prefix: Option<String>,
    /// Names of the daemon's environment variables the agent gets (its API key, say).
    pub env: Option<Vec<String>>,
    /// Variables the agent gets from secret files: `NAME = "/run/secrets/file"`.
    pub env_files: Option<BTreeMap<String, PathBuf>>,
    pub author_name: Option<String>,
    pub author_email: Option<String>,
    pub signing_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_concurrent: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub max_fix_attempts: Option<u64>,
}

/// The resolved `[builds]` section.
#[derive(Debug, Clone)]
pub struct BuildsConfig {
    /// The agent's argv; elements holding `{prompt}` get the prompt substituted.
    pub agent_command: Vec<String>,
    pub agent_format: AgentFormat,
    /// The agent is killed after this long; what it changed is kept as a draft pull request.
    pub max_duration: Duration,
    /// The agent is stopped past this many turns (as it reports them).
    pub max_turns: Option<u32>,
    /// The agent is stopped past this cost in US dollars (as it reports it).
    pub max_cost_usd: Option<f64>,
    /// An issue labelled so by a writer is built.
    pub label: String,
    /// The HMAC key of the callback's `X-Productbuilder-Signature-256`; unset: unsigned.
    pub callback_secret: Option<Secret>,
    pub branch_prefix: String,
    /// Variable names copied from the daemon's environment into the agent's.
    pub env: Vec<String>,
    /// Variables given to the agent from secret files (redacted from its transcript).
    pub env_files: BTreeMap<String, Secret>,
    pub author_name: String,
    pub author_email: String,
    /// An unencrypted SSH private key commits are signed with.
    pub signing_key_file: Option<PathBuf>,
    pub max_concurrent: u32,
    /// When the preview of a build the agent delegated from Slack fails, the agent starts at
    /// most this many follow-up builds on the same branch, counted over the whole chain of one
    /// request; 0: it only reports the failure.
    pub max_fix_attempts: u32,
}

impl BuildsConfig {
    /// A configuration with every default and `agent_command` (for tests and the demo).
    pub fn new(agent_command: Vec<String>) -> BuildsConfig {
        BuildsConfig {
            agent_command,
            agent_format: AgentFormat::ClaudeStreamJson,
            max_duration: DEFAULT_MAX_DURATION,
            max_turns: None,
            max_cost_usd: None,
            label: DEFAULT_LABEL.into(),
            callback_secret: None,
            branch_prefix: DEFAULT_BRANCH_PREFIX.into(),
            env: DEFAULT_ENV.iter().map(|s| s.to_string()).collect(),
            env_files: BTreeMap::new(),
            author_name: DEFAULT_AUTHOR_NAME.into(),
            author_email: DEFAULT_AUTHOR_EMAIL.into(),
            signing_key_file: None,
            max_concurrent: 1,
            max_fix_attempts: DEFAULT_MAX_FIX_ATTEMPTS,
        }
    }

    /// The queue's settings: `max_concurrent` from here, the rest the queue's defaults.
    pub fn queue_config(&self) -> crate::queue::QueueConfig {
        crate::queue::QueueConfig {
            max_concurrent: self.max_concurrent,
            ..crate::queue::QueueConfig::default()
        }
    }

    /// The agent's argv for `prompt`: `{prompt}` replaced inside each element, each element one
    /// argument.
    pub fn argv(&self, prompt: &str) -> Vec<String> {
        self.agent_command
            .iter()
            .map(|a| a.replace(PROMPT_PLACEHOLDER, prompt))
            .collect()
    }
}

/// Resolves `[builds]` (optional: `None` without the section, or when something is wrong, each
/// problem recorded in `p`).
pub fn resolve(p: &mut Problems, at: &Origins<'_>, raw: Option<RawBuilds>) -> Option<BuildsConfig> {
    let b = raw?;
    let before = p.len();
    let push = |p: &mut Problems, key: &str, message: String| {
        p.push(at.of(key), Some(key), message);
    };

    let agent_command = b.agent_command.unwrap_or_default();
    if agent_command.is_empty() {
        push(
            p,
            "builds.agent_command",
            "missing; [builds] needs the agent's argv, for example agent_command = [\"claude\", \"-p\", \"{prompt}\", \"--output-format\", \"stream-json\", \"--verbose\"]".into(),
        );
    } else if agent_command[0].trim().is_empty() || agent_command[0].contains(PROMPT_PLACEHOLDER) {
        push(
            p,
            "builds.agent_command",
            "the first element must name the agent's program".into(),
        );
    } else if !agent_command.iter().any(|a| a.contains(PROMPT_PLACEHOLDER)) {
        push(
            p,
            "builds.agent_command",
            "no element holds {prompt}; put \"{prompt}\" where the agent takes its prompt (it is passed as one argument, never through a shell)".into(),
        );
    } else if agent_command.iter().any(|a| a.contains('\0')) {
        push(p, "builds.agent_command", "holds a NUL byte".into());
    }

    let agent_format = match b.agent_format.as_deref() {
        None => AgentFormat::ClaudeStreamJson,
        Some(text) => text.parse().unwrap_or_else(|e| {
            push(p, "builds.agent_format", format!("{e}"));
            AgentFormat::ClaudeStreamJson
        }),
    };

    let max_duration = duration(
        p,
        at,
        "builds.max_duration",
        b.max_duration.as_ref(),
        DEFAULT_MAX_DURATION,
    );
    if max_duration.is_zero() {
        push(p, "builds.max_duration", "must be longer than 0s".into());
    }

    let max_turns = match b.max_turns {
        None => None,
        Some(n) if (1..=10_000).contains(&n) => Some(n as u32),
        Some(n) => {
            push(
                p,
                "builds.max_turns",
                format!("{n} is out of range; use 1 to 10000"),
            );
            None
        }
    };
    let max_cost_usd = match b.max_cost_usd {
        Some(c) if !(c.is_finite() && c > 0.0) => {
            push(
                p,
                "builds.max_cost_usd",
                format!("{c} is not a positive number of US dollars, for example 5.0"),
            );
            None
        }
        c => c,
    };

    let label = b.label.unwrap_or_else(|| DEFAULT_LABEL.into());
    if label.trim().is_empty() || label.len() > 50 {
        push(
            p,
            "builds.label",
            "must be a GitHub label name of 1 to 50 characters".into(),
        );
    }

    let callback_secret = secret(
        p,
        at,
        "builds.callback_secret",
        b.callback_secret,
        b.callback_secret_file,
    );

    let branch_prefix = b
        .branch_prefix
        .unwrap_or_else(|| DEFAULT_BRANCH_PREFIX.into());
    // The prefix must make a valid branch with what follows it.
    if let Err(e) = check_branch(&format!("{branch_prefix}issue-1")) {
        push(p, "builds.branch_prefix", format!("{e}"));
    }

    let env = b
        .env
        .unwrap_or_else(|| DEFAULT_ENV.iter().map(|s| s.to_string()).collect());
    for name in &env {
        check_env_name(p, at, "builds.env", name);
    }
    let mut env_files = BTreeMap::new();
    for (name, path) in b.env_files.unwrap_or_default() {
        let key = format!("builds.env_files.{name}");
        if !check_env_name(p, at, &key, &name) {
            continue;
        }
        if env.contains(&name) {
            push(
                p,
                &key,
                format!("`{name}` is also in builds.env; give it one way only"),
            );
            continue;
        }
        match read_secret_file(&at.relative(path), MAX_ENV_FILE_BYTES) {
            Ok(value) => {
                env_files.insert(name, Secret::new(value));
            }
            Err(message) => push(p, &key, message),
        }
    }

    let author_name = b.author_name.unwrap_or_else(|| DEFAULT_AUTHOR_NAME.into());
    if author_name.trim().is_empty() || author_name.contains(['<', '>', '\n', '\0']) {
        push(
            p,
            "builds.author_name",
            "must be a name without '<', '>' or line breaks".into(),
        );
    }
    let author_email = b
        .author_email
        .unwrap_or_else(|| DEFAULT_AUTHOR_EMAIL.into());
    if !author_email.contains('@') || author_email.contains(['<', '>', ' ', '\n', '\0']) {
        push(
            p,
            "builds.author_email",
            "must be an email address like productbuilder@users.noreply.github.com".into(),
        );
    }
    let signing_key_file = b.signing_key_file.map(|path| at.relative(path));
    if let Some(path) = &signing_key_file
        && !path.is_file()
    {
        push(
            p,
            "builds.signing_key_file",
            format!(
                "{} is not a readable file; give the SSH private key commits are signed with",
                path.display()
            ),
        );
    }

    let max_concurrent = match b.max_concurrent {
        None => 1,
        Some(n) if (1..=64).contains(&n) => n as u32,
        Some(n) => {
            push(
                p,
                "builds.max_concurrent",
                format!("{n} is out of range; use 1 to 64"),
            );
            1
        }
    };

    let max_fix_attempts = match b.max_fix_attempts {
        None => DEFAULT_MAX_FIX_ATTEMPTS,
        Some(n) if n <= MAX_FIX_ATTEMPTS_LIMIT => n as u32,
        Some(n) => {
            push(
                p,
                "builds.max_fix_attempts",
                format!(
                    "{n} is out of range; use 0 (no automatic fix) to {MAX_FIX_ATTEMPTS_LIMIT}"
                ),
            );
            DEFAULT_MAX_FIX_ATTEMPTS
        }
    };

    (p.len() == before).then_some(BuildsConfig {
        agent_command,
        agent_format,
        max_duration,
        max_turns,
        max_cost_usd,
        label,
        callback_secret,
        branch_prefix,
        env,
        env_files,
        author_name,
        author_email,
        signing_key_file,
        max_concurrent,
        max_fix_attempts,
    })
}

/// A variable name the agent may get: `[A-Za-z_][A-Za-z0-9_]*`, not the daemon's own
/// (`PRODUCTBUILDER_*`, where its GitHub token may be) nor git's (`GIT_*`, which would steer the
/// daemon's git in the agent's hands).
fn check_env_name(p: &mut Problems, at: &Origins<'_>, key: &str, name: &str) -> bool {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let message = if !valid {
        format!("{name:?} is not an environment variable name")
    } else if name.to_ascii_uppercase().starts_with("PRODUCTBUILDER_") {
        format!(
            "`{name}` is reserved: the daemon's own settings (and its tokens) never reach the agent"
        )
    } else if name.to_ascii_uppercase().starts_with("GIT_") {
        format!("`{name}` is reserved: git's settings are the daemon's")
    } else {
        return true;
    };
    p.push(at.of(key), Some(key), message);
    false
}

#[cfg(test)]
mod tests;
