//! What a pull request's compose file may not do on this host, checked before anything runs.
//!
//! The compose file comes from the pull request, so its author controls it. Docker gives a
//! container that is privileged, shares the host's namespaces, holds extra capabilities or
//! devices, or mounts the Docker socket, the same power as root on the host; a bind mount of a
//! host path reads or writes outside the checkout. Each such construct is a [`Rule`] that is
//! refused unless the tenant allows it. Host port bindings are not refused: the generated override
//! removes them, so previews never clash.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

use crate::spec::{Finding, inside_checkout};

/// One kind of dangerous construct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Privileged,
    HostNamespace,
    CapAdd,
    Devices,
    DockerSocket,
    HostPath,
    SecurityOpt,
}

impl Rule {
    /// The name tenants use to allow it.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Privileged => "privileged",
            Rule::HostNamespace => "host_namespace",
            Rule::CapAdd => "cap_add",
            Rule::Devices => "devices",
            Rule::DockerSocket => "docker_socket",
            Rule::HostPath => "host_path",
            Rule::SecurityOpt => "security_opt",
        }
    }

    pub const ALL: [Rule; 7] = [
        Rule::Privileged,
        Rule::HostNamespace,
        Rule::CapAdd,
        Rule::Devices,
        Rule::DockerSocket,
        Rule::HostPath,
        Rule::SecurityOpt,
    ];

    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The rules a tenant waives; empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub allowed: BTreeSet<Rule>,
}

/// A refused construct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    pub finding: Finding,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.finding, self.rule)
    }
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    policy: &'a Policy,
    out: Vec<Violation>,
}

impl Checker<'_> {
    fn refuse(&mut self, rule: Rule, needle: &str, message: String) {
        if self.policy.allowed.contains(&rule) {
            return;
        }
        let line = self
            .text
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| i as u64 + 1);
        self.out.push(Violation {
            rule,
            finding: Finding {
                file: self.file.to_owned(),
                line,
                message,
            },
        });
    }

    /// A host path named by the compose file: inside the checkout (relative to the compose file's
    /// directory) or not.
    fn host_path_ok(&self, compose_dir: &str, path: &str) -> bool {
        if path.starts_with('/') || path.starts_with('~') || path.starts_with('$') {
            return false;
        }
        let joined = if compose_dir.is_empty() {
            path.to_owned()
        } else {
            format!("{compose_dir}/{path}")
        };
        // Resolve `..` lexically against the compose file's directory; escaping the root fails.
        let mut parts: Vec<&str> = Vec::new();
        for part in joined.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return false;
                    }
                }
                p => parts.push(p),
            }
        }
        inside_checkout(&parts.join("/")).is_some() || parts.is_empty()
    }
}

fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                strings(v, out);
            }
        }
        _ => {}
    }
}

fn non_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// Checks a compose file's text. `compose_path` is its path in the checkout (for messages and to
/// resolve relative paths); `services` are returned so the caller can check the contract's names.
pub fn check(
    text: &str,
    compose_path: &str,
    policy: &Policy,
) -> Result<(Vec<String>, Vec<Violation>), Finding> {
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| Finding {
        file: compose_path.to_owned(),
        line: e.location().map(|l| l.line()),
        message: format!(
            "not a valid compose file: {}",
            e.to_string().lines().next().unwrap_or("invalid YAML")
        ),
    })?;
    let compose_dir = compose_path.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut c = Checker {
        file: compose_path,
        text,
        policy,
        out: Vec::new(),
    };
    let Some(services) = doc.get("services").and_then(Value::as_object) else {
        return Err(Finding {
            file: compose_path.to_owned(),
            line: None,
            message: "has no `services` mapping".to_owned(),
        });
    };

    // The socket by any name, anywhere: volumes, environment (DOCKER_HOST), labels, commands.
    let mut all = Vec::new();
    strings(&doc, &mut all);
    if let Some(s) = all.iter().find(|s| s.contains("docker.sock")) {
        c.refuse(
            Rule::DockerSocket,
            "docker.sock",
            format!("mentions the Docker socket ({s:?}); a preview must never reach the host's Docker engine"),
        );
    }

    for (name, svc) in services {
        let field = |key: &str| svc.get(key);
        if field("privileged").and_then(Value::as_bool) == Some(true) {
            c.refuse(
                Rule::Privileged,
                "privileged",
                format!("service `{name}` is privileged"),
            );
        }
        for key in ["network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup"] {
            if let Some(mode) = field(key).and_then(Value::as_str)
                // `service:other` stays inside the project; `container:x` joins any container.
                && (mode == "host" || mode.starts_with("container:"))
            {
                c.refuse(
                    Rule::HostNamespace,
                    key,
                    format!("service `{name}` sets `{key}: {mode}`, sharing a namespace outside the preview"),
                );
            }
        }
        if non_empty(field("cap_add")) {
            c.refuse(
                Rule::CapAdd,
                "cap_add",
                format!("service `{name}` adds capabilities (`cap_add`)"),
            );
        }
        for key in ["devices", "device_cgroup_rules", "gpus"] {
            if non_empty(field(key)) {
                c.refuse(
                    Rule::Devices,
                    key,
                    format!("service `{name}` uses host devices (`{key}`)"),
                );
            }
        }
        if let Some(opts) = field("security_opt").and_then(Value::as_array) {
            for opt in opts.iter().filter_map(Value::as_str) {
                if opt.contains("unconfined")
                    || opt.starts_with("label:disable")
                    || opt.starts_with("label=disable")
                {
                    c.refuse(
                        Rule::SecurityOpt,
                        "security_opt",
                        format!("service `{name}` disables confinement (`security_opt: {opt}`)"),
                    );
                }
            }
        }
        for volume in field("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (source, kind) = match volume {
                Value::String(short) => {
                    let source = short.split(':').next().unwrap_or("");
                    let kind = if source.starts_with('/')
                        || source.starts_with('.')
                        || source.starts_with('~')
                        || source.starts_with('$')
                    {
                        "bind"
                    } else {
                        "volume"
                    };
                    (source.to_owned(), kind.to_owned())
                }
                Value::Object(long) => (
                    long.get("source")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    long.get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("volume")
                        .to_owned(),
                ),
                _ => continue,
            };
            if kind == "bind" && !c.host_path_ok(compose_dir, &source) {
                c.refuse(
                    Rule::HostPath,
                    &source,
                    format!("service `{name}` mounts {source:?} from outside the checkout"),
                );
            }
        }
        let build_context = match field("build") {
            Some(Value::String(ctx)) => Some(ctx.clone()),
            Some(Value::Object(b)) => b.get("context").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        if let Some(ctx) = build_context
            && !ctx.contains("://")
            && !c.host_path_ok(compose_dir, &ctx)
        {
            c.refuse(
                Rule::HostPath,
                &ctx,
                format!("service `{name}` builds from {ctx:?}, outside the checkout"),
            );
        }
        let env_files: Vec<String> = match field("env_file") {
            Some(Value::String(f)) => vec![f.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .or_else(|| i.get("path").and_then(Value::as_str).map(str::to_owned))
                })
                .collect(),
            _ => Vec::new(),
        };
        for f in env_files {
            if !c.host_path_ok(compose_dir, &f) {
                c.refuse(
                    Rule::HostPath,
                    &f,
                    format!("service `{name}` reads `env_file` {f:?} from outside the checkout"),
                );
            }
        }
        if let Some(file) = field("extends")
            .and_then(|e| e.get("file"))
            .and_then(Value::as_str)
            && !c.host_path_ok(compose_dir, file)
        {
            c.refuse(
                Rule::HostPath,
                file,
                format!("service `{name}` extends {file:?}, outside the checkout"),
            );
        }
    }

    for section in ["configs", "secrets"] {
        for (name, entry) in doc
            .get(section)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if let Some(file) = entry.get("file").and_then(Value::as_str)
                && !c.host_path_ok(compose_dir, file)
            {
                c.refuse(
                    Rule::HostPath,
                    file,
                    format!("{section} `{name}` reads {file:?} from outside the checkout"),
                );
            }
        }
    }
    for (name, vol) in doc
        .get("volumes")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(device) = vol.pointer("/driver_opts/device").and_then(Value::as_str) {
            c.refuse(
                Rule::HostPath,
                device,
                format!("volume `{name}` binds {device:?} from the host through driver_opts"),
            );
        }
    }
    for include in doc
        .get("include")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let path = include.as_str().map(str::to_owned).or_else(|| {
            include
                .get("path")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        if let Some(path) = path
            && !c.host_path_ok(compose_dir, &path)
        {
            c.refuse(
                Rule::HostPath,
                &path,
                format!("includes {path:?}, outside the checkout"),
            );
        }
    }

    Ok((services.keys().cloned().collect(), c.out))
}
