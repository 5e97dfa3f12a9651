//! The target repository's contract: `.productbuilding/preview/config.yml`, version 1.
//!
//! The schema is the one repositories already use with the Go predecessor; they must keep working
//! unchanged, so its defaults are kept (`internal_port` 8080, `healthcheck_path` `/healthz`,
//! `startup_timeout_seconds` 300) and keys this version does not know are *warnings*, not errors
//! (the predecessor ignored them). Everything else is checked strictly, and every problem names
//! the file and the line.

use std::fmt;
use std::path::{Component, Path};

use serde::Deserialize;
use serde_saphyr::Spanned;

/// Where the contract lives in a checkout.
pub const CONFIG_PATH: &str = ".productbuilding/preview/config.yml";

/// Largest config file read; a contract is a few hundred bytes.
const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// One problem, with the line it is on when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    pub line: Option<u64>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// How the preview's logs are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource {
    /// `docker compose logs` of the service.
    Docker,
    /// `tail` of a file (or glob) inside the service's container.
    File { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostDeploy {
    pub service: String,
    pub command: String,
    pub description: Option<String>,
}

/// The validated contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewSpec {
    /// Relative to the checkout root, normalised.
    pub compose_file: String,
    pub service: String,
    pub internal_port: u16,
    pub healthcheck_path: String,
    pub startup_timeout_seconds: u64,
    pub migrate_command: Option<String>,
    pub log_service: String,
    pub log_source: LogSource,
    pub user_facing_note: Option<String>,
    pub post_deploy: Vec<PostDeploy>,
}

#[derive(Deserialize)]
struct Raw {
    version: Option<Spanned<i64>>,
    compose: Option<Spanned<RawCompose>>,
    runtime: Option<RawRuntime>,
    database: Option<RawDatabase>,
    logging: Option<Spanned<RawLogging>>,
    user_facing_note: Option<Spanned<String>>,
    post_deploy_commands: Option<Vec<Spanned<RawPostDeploy>>>,
}

#[derive(Deserialize)]
struct RawCompose {
    file: Option<Spanned<String>>,
    service: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawRuntime {
    internal_port: Option<Spanned<i64>>,
    healthcheck_path: Option<Spanned<String>>,
    startup_timeout_seconds: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
struct RawDatabase {
    migrate_command: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawLogging {
    service: Option<Spanned<String>>,
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawPostDeploy {
    service: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    description: Option<String>,
}

/// The keys version 1 knows, by section; anything else is reported as a warning.
const KNOWN: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "version",
            "compose",
            "runtime",
            "database",
            "logging",
            "user_facing_note",
            "post_deploy_commands",
        ],
    ),
    ("compose", &["file", "service"]),
    (
        "runtime",
        &[
            "internal_port",
            "healthcheck_path",
            "startup_timeout_seconds",
        ],
    ),
    ("database", &["migrate_command"]),
    ("logging", &["service", "type", "path"]),
    (
        "post_deploy_commands[]",
        &["service", "command", "description"],
    ),
];

/// The result of validation: the spec when there were no errors, and every error and warning.
#[derive(Debug, Clone, Default)]
pub struct Validated {
    pub spec: Option<PreviewSpec>,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

/// The 1-based line of the first `key:` at the start of a line (after indentation), for findings
/// about keys that serde cannot point at.
fn line_of_key(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|i| i as u64 + 1)
}

fn unknown_keys(value: &serde_json::Value, file: &str, text: &str, warnings: &mut Vec<Finding>) {
    let mut check = |section: &str, map: &serde_json::Map<String, serde_json::Value>| {
        let known = KNOWN
            .iter()
            .find(|(s, _)| *s == section)
            .map_or(&[][..], |(_, k)| *k);
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            let shown = if section.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", section.trim_end_matches("[]"))
            };
            warnings.push(Finding {
                file: file.to_owned(),
                line: line_of_key(text, key),
                message: format!(
                    "unknown key `{shown}` is ignored (known here: {})",
                    known.join(", ")
                ),
            });
        }
    };
    let Some(top) = value.as_object() else { return };
    check("", top);
    for section in ["compose", "runtime", "database", "logging"] {
        if let Some(map) = top.get(section).and_then(|v| v.as_object()) {
            check(section, map);
        }
    }
    if let Some(items) = top.get("post_deploy_commands").and_then(|v| v.as_array()) {
        for map in items.iter().filter_map(|v| v.as_object()) {
            check("post_deploy_commands[]", map);
        }
    }
}

/// A path inside the checkout: relative, no `..`, no root. Returns it normalised.
pub fn inside_checkout(path: &str) -> Option<String> {
    let p = Path::new(path);
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_owned()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A Compose service name, by Compose's own rule `^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`: so never empty
/// and never starting with `-`, which `compose exec` or `compose port` would read as a flag.
pub fn valid_service_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The error for a service name that is not one; the name is quoted (control characters
/// escaped) and cut short, since it ends up in a pull request comment.
fn bad_service_name(key: &str, name: &str) -> String {
    const SHOWN: usize = 64;
    let mut shown = format!("{:?}", name.chars().take(SHOWN).collect::<String>());
    if name.chars().count() > SHOWN {
        shown.push('…');
    }
    format!(
        "`{key}` {shown} is not a Compose service name (letters, digits, `_`, `.` and `-`, starting with a letter or digit)"
    )
}

fn clean_text(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .take(max)
        .collect()
}

/// Validates the text of a config file. `file` is how findings name it.
pub fn parse(text: &str, file: &str) -> Validated {
    let mut out = Validated::default();
    let err = |out: &mut Validated, line: Option<u64>, message: String| {
        out.errors.push(Finding {
            file: file.to_owned(),
            line,
            message,
        });
    };
    if text.len() > MAX_CONFIG_BYTES {
        err(
            &mut out,
            None,
            format!("larger than {MAX_CONFIG_BYTES} bytes"),
        );
        return out;
    }
    let raw: Raw = match serde_saphyr::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.location().map(|l| l.line());
            let message = e.to_string();
            let first = message.lines().next().unwrap_or("invalid YAML").to_owned();
            err(&mut out, line, format!("not a valid config: {first}"));
            return out;
        }
    };
    if let Ok(value) = serde_saphyr::from_str::<serde_json::Value>(text) {
        unknown_keys(&value, file, text, &mut out.warnings);
    }

    match &raw.version {
        Some(v) if v.value == 1 => {}
        Some(v) => err(
            &mut out,
            Some(v.referenced.line()),
            format!(
                "version {} is not supported; this productbuilder reads version 1",
                v.value
            ),
        ),
        None => err(&mut out, Some(1), "missing `version: 1`".to_owned()),
    }

    let (compose_file, service) = match &raw.compose {
        None => {
            err(
                &mut out,
                None,
                "missing the `compose` section (file and service)".to_owned(),
            );
            (None, None)
        }
        Some(compose) => {
            let line = compose.referenced.line();
            let file_value = match &compose.value.file {
                None => {
                    err(
                        &mut out,
                        Some(line),
                        "missing `compose.file`: the compose file, relative to the repository root"
                            .to_owned(),
                    );
                    None
                }
                Some(f) => match inside_checkout(&f.value) {
                    Some(p) => Some(p),
                    None => {
                        err(
                            &mut out,
                            Some(f.referenced.line()),
                            format!(
                                "`compose.file` {:?} must be a relative path inside the repository",
                                f.value
                            ),
                        );
                        None
                    }
                },
            };
            let service = match &compose.value.service {
                None => {
                    err(
                        &mut out,
                        Some(line),
                        "missing `compose.service`: the service that serves the preview".to_owned(),
                    );
                    None
                }
                Some(s) if s.value.trim().is_empty() => {
                    err(
                        &mut out,
                        Some(s.referenced.line()),
                        "`compose.service` is empty".to_owned(),
                    );
                    None
                }
                Some(s) if !valid_service_name(&s.value) => {
                    err(
                        &mut out,
                        Some(s.referenced.line()),
                        bad_service_name("compose.service", &s.value),
                    );
                    None
                }
                Some(s) => Some(s.value.clone()),
            };
            (file_value, service)
        }
    };

    let runtime = raw.runtime.as_ref();
    let internal_port = match runtime.and_then(|r| r.internal_port.as_ref()) {
        None => 8080,
        Some(p) if (1..=65535).contains(&p.value) => p.value as u16,
        Some(p) => {
            err(
                &mut out,
                Some(p.referenced.line()),
                format!(
                    "`runtime.internal_port` {} is not a port (1 to 65535)",
                    p.value
                ),
            );
            8080
        }
    };
    let healthcheck_path = match runtime.and_then(|r| r.healthcheck_path.as_ref()) {
        None => "/healthz".to_owned(),
        Some(p)
            if p.value.starts_with('/')
                && p.value.len() <= 2048
                && !p.value.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            p.value.clone()
        }
        Some(p) => {
            err(
                &mut out,
                Some(p.referenced.line()),
                format!(
                    "`runtime.healthcheck_path` {:?} must be a URL path starting with / (no spaces)",
                    p.value
                ),
            );
            "/healthz".to_owned()
        }
    };
    let startup_timeout_seconds = match runtime.and_then(|r| r.startup_timeout_seconds.as_ref()) {
        None => 300,
        Some(t) if (1..=3600).contains(&t.value) => t.value as u64,
        Some(t) => {
            err(
                &mut out,
                Some(t.referenced.line()),
                format!(
                    "`runtime.startup_timeout_seconds` {} must be between 1 and 3600",
                    t.value
                ),
            );
            300
        }
    };
    let migrate_command = match raw
        .database
        .as_ref()
        .and_then(|d| d.migrate_command.as_ref())
    {
        None => None,
        Some(c) if c.value.trim().is_empty() => {
            err(
                &mut out,
                Some(c.referenced.line()),
                "`database.migrate_command` is empty".to_owned(),
            );
            None
        }
        Some(c) => Some(c.value.clone()),
    };

    let main_service = service.clone().unwrap_or_default();
    let (log_service, log_source) = match &raw.logging {
        None => (main_service.clone(), LogSource::Docker),
        Some(logging) => {
            let l = &logging.value;
            if let Some(s) = &l.service
                && !valid_service_name(&s.value)
            {
                err(
                    &mut out,
                    Some(s.referenced.line()),
                    bad_service_name("logging.service", &s.value),
                );
            }
            let log_service = l
                .service
                .as_ref()
                .map_or(main_service.clone(), |s| s.value.clone());
            let source = match (l.kind.as_ref().map(|k| k.value.as_str()), &l.path) {
                (None | Some("docker"), _) => LogSource::Docker,
                (Some("file"), Some(path)) if path.value.starts_with('/') => LogSource::File {
                    path: path.value.clone(),
                },
                (Some("file"), Some(path)) => {
                    err(
                        &mut out,
                        Some(path.referenced.line()),
                        format!(
                            "`logging.path` {:?} must be an absolute path inside the container",
                            path.value
                        ),
                    );
                    LogSource::Docker
                }
                (Some("file"), None) => {
                    err(
                        &mut out,
                        Some(logging.referenced.line()),
                        "`logging.type: file` needs `logging.path`".to_owned(),
                    );
                    LogSource::Docker
                }
                (Some(other), _) => {
                    let line = l.kind.as_ref().map(|k| k.referenced.line());
                    err(
                        &mut out,
                        line,
                        format!("`logging.type` {other:?} is not one of: docker, file"),
                    );
                    LogSource::Docker
                }
            };
            (log_service, source)
        }
    };

    let user_facing_note = raw.user_facing_note.as_ref().and_then(|n| {
        if n.value.chars().count() > 2000 {
            err(
                &mut out,
                Some(n.referenced.line()),
                "`user_facing_note` is longer than 2000 characters".to_owned(),
            );
            None
        } else {
            Some(clean_text(&n.value, 2000))
        }
    });

    let mut post_deploy = Vec::new();
    for (i, item) in raw.post_deploy_commands.iter().flatten().enumerate() {
        let line = item.referenced.line();
        if let Some(s) = &item.value.service
            && !valid_service_name(&s.value)
        {
            err(
                &mut out,
                Some(s.referenced.line()),
                bad_service_name(&format!("post_deploy_commands[{i}].service"), &s.value),
            );
        }
        match &item.value.command {
            Some(c) if !c.value.trim().is_empty() => post_deploy.push(PostDeploy {
                service: item
                    .value
                    .service
                    .as_ref()
                    .map_or(main_service.clone(), |s| s.value.clone()),
                command: c.value.clone(),
                description: item.value.description.clone(),
            }),
            _ => err(
                &mut out,
                Some(line),
                format!("`post_deploy_commands[{i}]` needs a non-empty `command`"),
            ),
        }
    }

    if out.errors.is_empty()
        && let (Some(compose_file), Some(service)) = (compose_file, service)
    {
        out.spec = Some(PreviewSpec {
            compose_file,
            service,
            internal_port,
            healthcheck_path,
            startup_timeout_seconds,
            migrate_command,
            log_service,
            log_source,
            user_facing_note,
            post_deploy,
        });
    }
    out
}

/// Reads and validates `config.yml` in a checkout.
pub fn load(checkout: &Path) -> Validated {
    let path = checkout.join(CONFIG_PATH);
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() > MAX_CONFIG_BYTES => Validated {
            errors: vec![Finding {
                file: CONFIG_PATH.to_owned(),
                line: None,
                message: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            }],
            ..Validated::default()
        },
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse(&text, CONFIG_PATH),
            Err(_) => Validated {
                errors: vec![Finding {
                    file: CONFIG_PATH.to_owned(),
                    line: None,
                    message: "is not UTF-8 text".to_owned(),
                }],
                ..Validated::default()
            },
        },
        Err(e) => Validated {
            errors: vec![Finding {
                file: CONFIG_PATH.to_owned(),
                line: None,
                message: format!(
                    "cannot be read ({e}); a repository opts into previews by adding it (docs/config-yml.md describes version 1)"
                ),
            }],
            ..Validated::default()
        },
    }
}
