//! `[preview]` of the main file and a tenant file's `previews` key, `[preview]` and
//! `[preview.env.<service>]` tables: the keys as typed and their resolution into the host's
//! [`Settings`] and each tenant's [`TenantPreview`]. Problems name the file (or environment
//! variable) and the key, and never quote a variable's value.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use productbuilder_settings::raw::{duration_text, lenient_u64};
use productbuilder_settings::{Origins, Problems, duration, read_secret_file};
use serde::Deserialize;

use crate::policy::Rule;
use crate::reconcile::{Egress, PreviewVar, Secret, Settings, TenantRules};
use crate::spec::valid_service_name;

/// `[preview]` of the main file, as typed.
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
    /// they found, and these values may be secrets, so [`resolve_tenant`] checks them itself.
    pub env: Option<figment::value::Value>,
    pub secrets_for_forks: Option<bool>,
}

/// One tenant's previews: whether it gets any (`previews`, default on) and its rules.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPreview {
    pub enabled: bool,
    pub rules: TenantRules,
}

/// The preview module's whole configuration: the host's settings and every tenant's table, keyed
/// by `owner/name` as configured.
#[derive(Debug, Clone)]
pub struct PreviewConfig {
    pub settings: Settings,
    pub tenants: BTreeMap<String, TenantPreview>,
}

impl PreviewConfig {
    /// Whether `repo` (as configured) gets previews.
    pub fn enabled(&self, repo: &str) -> bool {
        self.tenants.get(repo).is_some_and(|t| t.enabled)
    }

    /// Every configured repository and whether it has previews on (for [`crate::PreviewModule`]).
    pub fn switches(&self) -> BTreeMap<String, bool> {
        self.tenants
            .iter()
            .map(|(repo, t)| (repo.clone(), t.enabled))
            .collect()
    }

    /// The rules of the tenants with previews on: the others' previews are swept at start-up.
    pub fn rules(&self) -> HashMap<String, TenantRules> {
        self.tenants
            .iter()
            .filter(|(_, t)| t.enabled)
            .map(|(repo, t)| (repo.clone(), t.rules.clone()))
            .collect()
    }
}

/// Resolves `[preview]` of the main file. `state_dir` and `public_url` come from the main file's
/// own sections: workspaces live under the first, log links start with the second.
pub fn resolve(
    p: &mut Problems,
    at: &Origins<'_>,
    raw: RawPreview,
    state_dir: &Path,
    public_url: Option<&str>,
) -> Settings {
    let egress = match raw.egress.as_deref() {
        None | Some("open") => Egress::Open,
        Some("none") => Egress::None,
        Some(other) => {
            p.push(
                at.of("preview.egress"),
                Some("preview.egress"),
                format!("{other:?} is not an egress mode; use \"open\" or \"none\""),
            );
            Egress::Open
        }
    };
    if let Some(domain) = &raw.domain {
        check_domain(p, at.of("preview.domain"), domain);
    }
    let settings = Settings {
        egress,
        host_retry: Duration::from_secs(10),
        state_dir: state_dir.to_path_buf(),
        public_url: public_url.map(str::to_owned),
        limits: Default::default(),
        domain: raw.domain.unwrap_or_else(|| "preview.localhost".to_owned()),
        url_template: raw
            .url_template
            .unwrap_or_else(|| "http://{repo}-pr-{number}.{domain}".to_owned()),
        compose_command: raw
            .compose_command
            .unwrap_or_else(|| vec!["docker".to_owned(), "compose".to_owned()]),
        network: raw
            .network
            .unwrap_or_else(|| "productbuilder-previews".to_owned()),
        entrypoint: raw.entrypoint.unwrap_or_else(|| "web".to_owned()),
        cert_resolver: raw.cert_resolver,
        max_previews: raw.max_previews.map_or(20, |n| n as usize),
        max_builds: raw.max_builds.map_or(2, |n| n as usize),
        ttl: duration(
            p,
            at,
            "preview.ttl",
            raw.ttl.as_ref(),
            Duration::from_secs(7 * 24 * 3600),
        ),
        docker_config: raw.docker_config.map(|d| at.relative(d)),
    };
    if let Some(dir) = &settings.docker_config {
        let key = "preview.docker_config";
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => p.push(
                at.of(key),
                Some(key),
                format!(
                    "{} is not a directory; name the directory that holds config.json (as DOCKER_CONFIG would)",
                    dir.display()
                ),
            ),
            Err(e) => p.push(
                at.of(key),
                Some(key),
                format!("cannot read the directory {}: {e}", dir.display()),
            ),
        }
    }
    for (key, value) in [
        ("preview.max_previews", settings.max_previews),
        ("preview.max_builds", settings.max_builds),
    ] {
        if value == 0 {
            p.push(at.of(key), Some(key), "must be at least 1");
        }
    }
    // A Docker object name follows the same rule as a Compose service name.
    if !valid_service_name(&settings.network) {
        p.push(
            at.of("preview.network"),
            Some("preview.network"),
            format!("{:?} is not a Docker network name", settings.network),
        );
    }
    check_template(p, at.of("preview.url_template"), &settings.url_template);
    if settings.compose_command.is_empty() {
        p.push(
            at.of("preview.compose_command"),
            Some("preview.compose_command"),
            "must name a Compose v2 program, for example [\"docker\", \"compose\"]",
        );
    }
    settings
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
                match read_secret_file(&path, MAX_ENV_VALUE_BYTES) {
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
                value: Secret::new(value),
                secret: from_file,
            });
        }
    }
    vars.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    vars
}

/// A tenant file's `previews` key and `[preview]` table (`origin` is the file, `dir` its
/// directory, for relative secret paths); `None` when they have problems (they are recorded).
pub fn resolve_tenant(
    p: &mut Problems,
    origin: &str,
    dir: &Path,
    previews: Option<bool>,
    raw: Option<RawTenantPreview>,
) -> Option<TenantPreview> {
    let raw = raw.unwrap_or_default();
    let mut rules = TenantRules::default();
    let before = p.len();
    if let Some(v) = raw.allow_forks {
        rules.allow_forks = v;
    }
    if let Some(v) = raw.drafts {
        rules.drafts = v;
    }
    if let Some(v) = raw.require_label {
        rules.require_label = v;
    }
    if let Some(label) = raw.fork_label {
        if label.trim().is_empty() || label.len() > 50 {
            p.push(
                origin,
                Some("preview.fork_label"),
                "must be a label name of 1 to 50 characters",
            );
        }
        rules.fork_label = label;
    }
    for name in raw.allow.unwrap_or_default() {
        match Rule::from_name(&name) {
            Some(rule) => {
                rules.policy.allowed.insert(rule);
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
        rules.cpus = Some(cpus);
    }
    if let Some(memory) = raw.memory {
        if !valid_memory(&memory) {
            p.push(
                origin,
                Some("preview.memory"),
                format!("{memory:?} is not a memory size; write it like \"512m\" or \"2g\""),
            );
        }
        rules.memory = Some(memory);
    }
    if let Some(env) = raw.env {
        rules.env = tenant_env(p, origin, dir, env);
    }
    if let Some(v) = raw.secrets_for_forks {
        rules.secrets_for_forks = v;
    }
    (p.len() == before).then_some(TenantPreview {
        enabled: previews.unwrap_or(true),
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        for ok in ["512m", "1g", "2048k", "1073741824", "1G"] {
            assert!(valid_memory(ok), "{ok}");
        }
        for bad in ["", "m", "1gb", "0", "-1g", "1.5g", "lots"] {
            assert!(!valid_memory(bad), "{bad}");
        }
    }

    #[test]
    fn only_tenants_with_previews_on_get_rules() {
        let mut p = Problems::new();
        let dir = Path::new(".");
        let on = resolve_tenant(&mut p, "shop.toml", dir, None, None).unwrap();
        let off = resolve_tenant(&mut p, "blog.toml", dir, Some(false), None).unwrap();
        assert!(p.is_empty());
        let figment = figment::Figment::new();
        let at = Origins::new(&figment, Path::new("pb.toml"));
        let settings = resolve(
            &mut p,
            &at,
            RawPreview::default(),
            Path::new("/state"),
            None,
        );
        assert!(p.is_empty(), "{:?}", p.into_vec());
        let config = PreviewConfig {
            settings,
            tenants: BTreeMap::from([("acme/shop".into(), on), ("acme/blog".into(), off)]),
        };
        assert!(config.enabled("acme/shop") && !config.enabled("acme/blog"));
        assert!(!config.enabled("acme/unknown"));
        assert_eq!(
            config.rules().into_keys().collect::<Vec<_>>(),
            ["acme/shop"]
        );
    }
}
