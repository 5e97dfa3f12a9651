//! The compose model as Compose itself will run it.
//!
//! A second parser of compose files would disagree with Compose about interpolation (`${PRIV:-true}`),
//! `include`, `extends`, merging and profiles, and every disagreement is a way past the policy. So the
//! policy checks, and the rewrite edits, the model printed by `docker compose config --format json`
//! run in the checkout with the daemon's cleared environment. Only that rewritten model is handed
//! to Compose afterwards.
//!
//! Resolution itself reads files, and what it reads can leak into the model or into its error text
//! (which reaches the pull request comment). Before Compose runs:
//! - [`walk`] follows `include` and `extends.file` through the raw YAML: every file Compose would
//!   read must be a literal path inside the checkout;
//! - the project's `.env` (read for interpolation) may not set `COMPOSE_*` or `DOCKER_*` variables,
//!   which steer Compose itself;
//! - a first `config --no-interpolate --no-env-resolution` lists each service's `env_file` paths
//!   without reading them; only when every one is a literal path inside the checkout does the
//!   second, full `config` read them and inline them into `environment`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::policy::{Policy, Rule, Violation};
use crate::runner::{ComposeCli, Project};
use crate::spec::Finding;

/// Most files one compose project may consist of (the file, its includes and extends).
const MAX_FILES: usize = 32;
/// Largest compose file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A resolved project.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// `config --format json`: interpolated, merged, paths absolute, strings `$`-escaped.
    pub model: Value,
    /// Which file of the checkout defines each service (relative), for messages.
    pub origins: BTreeMap<String, String>,
    /// The checkout as an absolute, canonical path: every host path in the model must be inside.
    pub root: PathBuf,
}

/// What stopped resolution: findings in the checkout's files, or policy violations found before
/// Compose could safely run.
#[derive(Debug, Clone, Default)]
pub struct Refusal {
    pub errors: Vec<Finding>,
    pub violations: Vec<Violation>,
}

/// `path` normalised lexically (no `.` or `..`), if it stays inside `root`.
pub fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let joined = root.join(path);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.starts_with(root).then_some(out)
}

/// Whether a host path named by a compose model stays inside the checkout `root` (canonical):
/// literally (no interpolation left), lexically, and through links when it exists. A path that
/// does not exist yet counts as inside: Compose fails on it, skips it, or creates it there.
pub fn host_path_inside(root: &Path, path: &str) -> bool {
    !path.contains('$')
        && inside(root, Path::new(path)).is_some_and(|p| match p.canonicalize() {
            Ok(real) => real.starts_with(root),
            Err(_) => true,
        })
}

/// `path` relative to `root` for messages; a path elsewhere is named only as "a host path", so no
/// host layout reaches a comment.
pub fn shown(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
        Ok(rel) => rel.display().to_string(),
        Err(_) => format!("{:?} (outside the checkout)", path.display().to_string()),
    }
}

/// The files a compose project consists of, and which file defines each service.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<String>,
    pub origins: BTreeMap<String, String>,
    /// Whether any of the files says `env_file`: if none does, no env file can be read, and the
    /// pass that lists them is skipped.
    pub env_files: bool,
}

fn violation(rule: Rule, file: &str, message: String) -> Violation {
    Violation {
        rule,
        finding: Finding {
            file: file.to_owned(),
            line: None,
            message,
        },
    }
}

/// Follows `include` and `extends.file` from `compose_file` (relative to `root`), refusing any file
/// Compose would read from outside the checkout, remote includes, and paths that interpolation
/// could change.
pub fn walk(root: &Path, compose_file: &str) -> Result<Walk, Refusal> {
    let mut refusal = Refusal::default();
    let mut walk = Walk::default();
    let mut queue: Vec<(PathBuf, String)> = vec![(PathBuf::from(compose_file), String::new())];
    let mut seen = BTreeSet::new();
    while let Some((rel, from)) = queue.pop() {
        let rel_text = rel.display().to_string();
        if !seen.insert(rel.clone()) {
            continue;
        }
        if seen.len() > MAX_FILES {
            refusal.errors.push(Finding {
                file: compose_file.to_owned(),
                line: None,
                message: format!("includes or extends more than {MAX_FILES} files"),
            });
            break;
        }
        let path = root.join(&rel);
        let text = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() <= MAX_FILE_BYTES => std::fs::read_to_string(&path),
            Ok(m) if m.is_file() => {
                refusal.errors.push(finding(
                    &rel_text,
                    format!("is larger than {MAX_FILE_BYTES} bytes"),
                ));
                continue;
            }
            // Links inside an extracted checkout stay inside it, but `preview validate` reads any
            // directory: canonicalise and check again.
            Ok(m) if m.file_type().is_symlink() => match path.canonicalize() {
                Ok(real) if real.starts_with(root) => std::fs::read_to_string(&real),
                _ => {
                    refusal.violations.push(violation(
                        Rule::HostPath,
                        &rel_text,
                        "is a link to a file outside the checkout".to_owned(),
                    ));
                    continue;
                }
            },
            Ok(_) => Err(std::io::Error::other("not a regular file")),
            Err(e) => Err(e),
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                let what = if from.is_empty() {
                    "cannot be read".to_owned()
                } else {
                    format!("(named by {from}) cannot be read")
                };
                refusal
                    .errors
                    .push(finding(&rel_text, format!("{what}: {}", io_reason(&e))));
                continue;
            }
        };
        let doc: Value = match serde_saphyr::from_str(&text) {
            Ok(d) => d,
            Err(e) => {
                refusal.errors.push(Finding {
                    file: rel_text.clone(),
                    line: e.location().map(|l| l.line()),
                    message: format!(
                        "not a valid compose file: {}",
                        e.to_string().lines().next().unwrap_or("invalid YAML")
                    ),
                });
                continue;
            }
        };
        walk.files.push(rel_text.clone());

        // On the parsed document, not the text: a quoted key may spell `env_file` with escapes.
        walk.env_files |= has_key(&doc, "env_file");
        let dir = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut follow = |named: &str, key: &str, refusal: &mut Refusal| {
            if named.contains('$') {
                refusal.violations.push(violation(
                    Rule::HostPath,
                    &rel_text,
                    format!("`{key}: {named}` uses interpolation; the files Compose reads must be named literally"),
                ));
            } else if named.contains("://")
                || named.starts_with("oci:")
                || named.starts_with("git@")
            {
                refusal.violations.push(violation(
                    Rule::HostPath,
                    &rel_text,
                    format!(
                        "`{key}: {named}` is remote; only files inside the checkout can be included"
                    ),
                ));
            } else {
                match inside(root, &dir.join(named)) {
                    Some(abs) => {
                        let rel = abs.strip_prefix(root).unwrap_or(&abs).to_path_buf();
                        queue.push((rel, rel_text.clone()));
                    }
                    None => refusal.violations.push(violation(
                        Rule::HostPath,
                        &rel_text,
                        format!("`{key}` names {named:?}, outside the checkout"),
                    )),
                }
            }
        };
        for include in doc
            .get("include")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut paths = Vec::new();
            match include {
                Value::String(p) => paths.push(p.clone()),
                Value::Object(o) => {
                    match o.get("path") {
                        Some(Value::String(p)) => paths.push(p.clone()),
                        Some(Value::Array(ps)) => {
                            paths.extend(ps.iter().filter_map(Value::as_str).map(str::to_owned))
                        }
                        _ => {}
                    }
                    for key in ["env_file", "project_directory"] {
                        let mut named = Vec::new();
                        match o.get(key) {
                            Some(Value::String(p)) => named.push(p.clone()),
                            Some(Value::Array(ps)) => {
                                named.extend(ps.iter().filter_map(Value::as_str).map(str::to_owned))
                            }
                            _ => {}
                        }
                        for n in named {
                            if n.contains('$') || inside(root, &dir.join(&n)).is_none() {
                                refusal.violations.push(violation(
                                    Rule::HostPath,
                                    &rel_text,
                                    format!("`include.{key}` names {n:?}, outside the checkout"),
                                ));
                            }
                        }
                    }
                }
                _ => {}
            }
            for p in paths {
                follow(&p, "include", &mut refusal);
            }
        }
        for (name, svc) in doc
            .get("services")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            walk.origins
                .entry(name.clone())
                .or_insert_with(|| rel_text.clone());
            if let Some(file) = svc
                .get("extends")
                .and_then(|e| e.get("file"))
                .and_then(Value::as_str)
            {
                follow(file, "extends.file", &mut refusal);
            }
        }
    }
    if refusal.errors.is_empty() && refusal.violations.is_empty() {
        Ok(walk)
    } else {
        Err(refusal)
    }
}

/// Whether `key` is a mapping key anywhere in `value`.
fn has_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| k == key || has_key(v, key)),
        Value::Array(items) => items.iter().any(|v| has_key(v, key)),
        _ => false,
    }
}

fn finding(file: &str, message: String) -> Finding {
    Finding {
        file: file.to_owned(),
        line: None,
        message,
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        _ => e.kind().to_string(),
    }
}

/// Variables in a project's `.env` that steer Compose itself rather than the app.
fn steering_variables(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| {
            k.starts_with("COMPOSE_") || k.starts_with("DOCKER_") || k.starts_with("BUILDKIT_")
        })
        .collect()
}

/// Resolves `compose_file` (relative to `root`) with the Compose CLI. `project` names the
/// resolution (network and volume names in the model are derived from it).
pub async fn resolve(
    cli: &ComposeCli,
    root: &Path,
    compose_file: &str,
    project: &str,
    policy: &Policy,
) -> Result<Resolved, Refusal> {
    let waived = |mut refusal: Refusal| {
        refusal
            .violations
            .retain(|v| !policy.allowed.contains(&v.rule));
        refusal
    };
    let keep_going = |r: &Refusal| r.errors.is_empty() && r.violations.is_empty();
    let root = root.canonicalize().map_err(|e| Refusal {
        errors: vec![finding(
            ".",
            format!("the checkout cannot be read: {}", io_reason(&e)),
        )],
        violations: Vec::new(),
    })?;
    let walked = match walk(&root, compose_file) {
        Ok(w) => w,
        Err(r) => {
            let r = waived(r);
            if !keep_going(&r) {
                return Err(r);
            }
            walk_unchecked(&root, compose_file)
        }
    };
    let file = root.join(compose_file);
    let dir = file.parent().unwrap_or(&root).to_path_buf();
    if let Ok(text) = std::fs::read_to_string(dir.join(".env")) {
        let steering = steering_variables(&text);
        if !steering.is_empty() && !policy.allowed.contains(&Rule::HostPath) {
            let env_file = shown(&root, &dir.join(".env"));
            return Err(Refusal {
                errors: Vec::new(),
                violations: vec![violation(
                    Rule::HostPath,
                    &env_file,
                    format!(
                        "sets {}, which steer Compose itself; a preview's `.env` may only set the app's variables",
                        steering.join(", ")
                    ),
                )],
            });
        }
    }
    let p = Project {
        name: project.to_owned(),
        file: file.clone(),
        dir: dir.clone(),
        env: Vec::new(),
    };
    let error = |e: crate::runner::CommandError| Refusal {
        errors: vec![finding(
            compose_file,
            format!(
                "Compose cannot resolve it: {}",
                scrub(&root, e.tail.trim())
                    .lines()
                    .last()
                    .unwrap_or("no output")
            ),
        )],
        violations: Vec::new(),
    };
    // First pass: which env files would be read, without reading them (unneeded when no file
    // of the project names one).
    let raw = if !walked.env_files {
        Ok(r#"{"services":{}}"#.to_owned())
    } else {
        cli.run_checked(
            &p,
            &[
                "config",
                "--format",
                "json",
                "--no-interpolate",
                "--no-env-resolution",
            ],
        )
        .await
    }
    .map_err(error)?;
    let raw = parse_model(compose_file, &raw)?;
    let mut refused = Vec::new();
    for (name, svc) in raw
        .get("services")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        for entry in svc
            .get("env_file")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(path) = entry
                .get("path")
                .and_then(Value::as_str)
                .or_else(|| entry.as_str())
            else {
                continue;
            };
            let origin = walked.origins.get(name).map_or(compose_file, |s| s);
            if !host_path_inside(&root, path) {
                refused.push(violation(
                    Rule::HostPath,
                    origin,
                    format!(
                        "service `{name}`, key `env_file`: {}",
                        shown(&root, Path::new(path))
                    ),
                ));
            }
        }
    }
    let refused = waived(Refusal {
        errors: Vec::new(),
        violations: refused,
    });
    if !keep_going(&refused) {
        return Err(refused);
    }
    let model = cli
        .run_checked(&p, &["config", "--format", "json"])
        .await
        .map_err(error)?;
    let model = parse_model(compose_file, &model)?;
    Ok(Resolved {
        model,
        origins: walked.origins,
        root,
    })
}

/// The JSON model `config --format json` printed.
fn parse_model(compose_file: &str, printed: &str) -> Result<Value, Refusal> {
    serde_json::from_str(printed).map_err(|e| Refusal {
        errors: vec![finding(
            compose_file,
            format!("Compose printed no model: {e}"),
        )],
        violations: Vec::new(),
    })
}

/// The services' origins when a tenant waived the walk's refusals: best effort, for messages.
fn walk_unchecked(root: &Path, compose_file: &str) -> Walk {
    let mut walk = Walk {
        env_files: true,
        ..Walk::default()
    };
    if let Ok(text) = std::fs::read_to_string(root.join(compose_file))
        && let Ok(doc) = serde_saphyr::from_str::<Value>(&text)
    {
        for name in doc
            .get("services")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|s| s.keys())
        {
            walk.origins.insert(name.clone(), compose_file.to_owned());
        }
    }
    walk
}

/// Compose's error text with the checkout's absolute path made relative.
fn scrub(root: &Path, text: &str) -> String {
    let root = root.display().to_string();
    text.replace(&format!("{root}/"), "").replace(&root, ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_resolves_dots_and_refuses_escapes() {
        let root = Path::new("/srv/co");
        assert_eq!(inside(root, Path::new("a/../b")), Some("/srv/co/b".into()));
        assert_eq!(
            inside(root, Path::new("/srv/co/x")),
            Some("/srv/co/x".into())
        );
        assert_eq!(inside(root, Path::new("..")), None);
        assert_eq!(inside(root, Path::new("a/../../co2")), None);
        assert_eq!(inside(root, Path::new("/etc/passwd")), None);
        assert_eq!(inside(root, Path::new("/srv/co2/x")), None);
    }

    #[test]
    fn env_steering_compose_is_found() {
        let found = steering_variables(
            "A=1\n# COMPOSE_X=1\nexport DOCKER_HOST=tcp://x\nCOMPOSE_PROFILES=a\n",
        );
        assert_eq!(found, ["DOCKER_HOST", "COMPOSE_PROFILES"]);
    }
}
