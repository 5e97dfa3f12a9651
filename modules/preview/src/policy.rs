//! What a pull request's compose project may do on this host, checked before anything runs.
//!
//! The project comes from the pull request, so its author controls it. Docker gives a container
//! that is privileged, shares the host's namespaces, holds extra capabilities or devices, or
//! reaches the Docker socket the same power as root on the host; a bind mount of a host path reads
//! or writes outside the checkout. The check runs on the model Compose itself resolved
//! ([`crate::resolve`]), so interpolation, `include`, `extends` and profiles cannot hide anything,
//! and it is an **allowlist**: a key this policy does not know is refused, naming it, since a
//! newer Compose may have given it power. Each refused construct belongs to a [`Rule`] that a
//! tenant can waive (`[preview] allow`). Host ports, limits and logging are not refused: the
//! rewrite ([`crate::compose`]) replaces them.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde_json::{Map, Value};

use crate::resolve::{Resolved, host_path_inside, shown};
use crate::spec::Finding;

/// One kind of dangerous construct; its [`name`](Rule::name) is what a tenant writes to waive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Privileged,
    HostNamespace,
    CapAdd,
    Devices,
    DockerSocket,
    HostPath,
    SecurityOpt,
    VolumesFrom,
    Sysctls,
    BuildAccess,
    ForeignNetwork,
    ReservedLabel,
    OomScore,
    Runtime,
    UnknownKey,
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
            Rule::VolumesFrom => "volumes_from",
            Rule::Sysctls => "sysctls",
            Rule::BuildAccess => "build_access",
            Rule::ForeignNetwork => "foreign_network",
            Rule::ReservedLabel => "reserved_label",
            Rule::OomScore => "oom_score",
            Rule::Runtime => "runtime",
            Rule::UnknownKey => "unknown_key",
        }
    }

    /// What waiving it means, for the documentation and `preview validate`.
    pub fn risk(self) -> &'static str {
        match self {
            Rule::Privileged => "root on the host",
            Rule::HostNamespace => "the host's (or another container's) network, processes or IPC",
            Rule::CapAdd => "kernel capabilities beyond Docker's default set",
            Rule::Devices => "the host's devices",
            Rule::DockerSocket => "the Docker engine, which is root on the host",
            Rule::HostPath => "files of the host outside the checkout",
            Rule::SecurityOpt => "running without seccomp, AppArmor or SELinux confinement",
            Rule::VolumesFrom => "the volumes of any container, the router's included",
            Rule::Sysctls => "kernel parameters",
            Rule::BuildAccess => "the host's network, SSH agent or files during the build",
            Rule::ForeignNetwork => "networks other than the preview's own",
            Rule::ReservedLabel => "the router's configuration and the daemon's bookkeeping",
            Rule::OomScore => "surviving the OOM killer at the host's expense",
            Rule::Runtime => "another container runtime or cgroup, outside the limits",
            Rule::UnknownKey => "whatever a key unknown to this policy does",
        }
    }

    pub const ALL: [Rule; 15] = [
        Rule::Privileged,
        Rule::HostNamespace,
        Rule::CapAdd,
        Rule::Devices,
        Rule::DockerSocket,
        Rule::HostPath,
        Rule::SecurityOpt,
        Rule::VolumesFrom,
        Rule::Sysctls,
        Rule::BuildAccess,
        Rule::ForeignNetwork,
        Rule::ReservedLabel,
        Rule::OomScore,
        Rule::Runtime,
        Rule::UnknownKey,
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
        write!(
            f,
            "{} (rule `{}`; a tenant can waive it with `[preview] allow = [\"{}\"]`)",
            self.finding, self.rule, self.rule
        )
    }
}

/// Most services one preview may run.
pub const MAX_SERVICES: usize = 25;

/// Top-level keys of a resolved model.
const TOP_KEYS: &[&str] = &[
    "name", "services", "networks", "volumes", "configs", "secrets",
];

/// Service keys that give no power over the host, or whose values are checked below.
const SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    // Refused by the `runtime` rule, known so that waiving it is enough.
    "cgroup_parent",
    "runtime",
    "oom_kill_disable",
    "isolation",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_shares",
    "cpus",
    "cpuset",
    "depends_on",
    "deploy",
    "develop",
    "devices",
    "device_cgroup_rules",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "environment",
    "expose",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "networks",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
];

/// Build keys allowed (values of `context`, `dockerfile` and `additional_contexts` are checked).
const BUILD_KEYS: &[&str] = &[
    "context",
    "dockerfile",
    "dockerfile_inline",
    "args",
    "target",
    "labels",
    "cache_from",
    "additional_contexts",
    "extra_hosts",
    "shm_size",
    "tags",
    "platforms",
    "ulimits",
    "no_cache",
    "pull",
    "provenance",
    "sbom",
    "network",
    "ssh",
    "secrets",
    "privileged",
    "entitlements",
];

const NETWORK_KEYS: &[&str] = &[
    "name",
    "driver",
    "ipam",
    "internal",
    "attachable",
    "labels",
    "enable_ipv6",
    "external",
    "driver_opts",
];

const VOLUME_KEYS: &[&str] = &["name", "driver", "labels", "external", "driver_opts"];

/// Label prefixes only the daemon and Compose may write.
const RESERVED_LABELS: &[&str] = &["traefik.", "productbuilder.", "com.docker.compose."];

struct Checker<'a> {
    policy: &'a Policy,
    root: &'a Path,
    project: &'a str,
    origins: &'a std::collections::BTreeMap<String, String>,
    main_file: &'a str,
    out: Vec<Violation>,
}

impl Checker<'_> {
    fn refuse(&mut self, rule: Rule, service: Option<&str>, message: String) {
        if self.policy.allowed.contains(&rule) {
            return;
        }
        let file = service
            .and_then(|s| self.origins.get(s))
            .map_or(self.main_file, |s| s.as_str())
            .to_owned();
        let message = match service {
            Some(s) => format!("service `{s}`: {message}"),
            None => message,
        };
        self.out.push(Violation {
            rule,
            finding: Finding {
                file,
                line: None,
                message,
            },
        });
    }

    /// A host path named by the model (absolute after resolution) is inside the checkout.
    fn inside(&self, path: &str) -> bool {
        host_path_inside(self.root, path)
    }

    fn shown(&self, path: &str) -> String {
        shown(self.root, Path::new(path))
    }

    fn unknown_keys(
        &mut self,
        map: &Map<String, Value>,
        known: &[&str],
        service: Option<&str>,
        what: &str,
    ) {
        for key in map.keys() {
            if !known.contains(&key.as_str()) && !key.starts_with("x-") {
                self.refuse(
                    Rule::UnknownKey,
                    service,
                    format!("key `{what}{key}` is not known to the preview policy"),
                );
            }
        }
    }

    fn service(&mut self, name: &str, svc: &Map<String, Value>) {
        let s = Some(name);
        self.unknown_keys(svc, SERVICE_KEYS, s, "");
        if svc.get("privileged").and_then(Value::as_bool) == Some(true) {
            self.refuse(Rule::Privileged, s, "key `privileged` is true".into());
        }
        for hook in ["post_start", "pre_stop"] {
            for h in svc
                .get(hook)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if h.get("privileged").and_then(Value::as_bool) == Some(true) {
                    self.refuse(
                        Rule::Privileged,
                        s,
                        format!("key `{hook}[].privileged` is true"),
                    );
                }
            }
        }
        for key in ["network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup"] {
            if let Some(mode) = svc.get(key).and_then(Value::as_str)
                && (mode == "host" || mode.starts_with("container:"))
            {
                self.refuse(
                    Rule::HostNamespace,
                    s,
                    format!("key `{key}` is `{mode}`, a namespace outside the preview"),
                );
            }
        }
        if let Some(mode) = svc.get("network_mode").and_then(Value::as_str)
            && mode != "none"
            && !mode.starts_with("service:")
            && mode != "host"
            && !mode.starts_with("container:")
        {
            self.refuse(
                Rule::ForeignNetwork,
                s,
                format!("key `network_mode` is `{mode}`; previews use their own networks"),
            );
        }
        if non_empty(svc.get("cap_add")) {
            self.refuse(Rule::CapAdd, s, "key `cap_add` adds capabilities".into());
        }
        for key in ["devices", "device_cgroup_rules", "gpus"] {
            if non_empty(svc.get(key)) {
                self.refuse(Rule::Devices, s, format!("key `{key}` uses host devices"));
            }
        }
        if non_empty(
            svc.get("deploy")
                .and_then(|d| d.pointer("/resources/reservations/devices")),
        ) {
            self.refuse(
                Rule::Devices,
                s,
                "key `deploy.resources.reservations.devices` uses host devices".into(),
            );
        }
        for opt in svc
            .get("security_opt")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let allowed = matches!(
                opt,
                "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true"
            );
            if !allowed {
                self.refuse(
                    Rule::SecurityOpt,
                    s,
                    format!("key `security_opt` has `{opt}`; only `no-new-privileges` is allowed"),
                );
            }
        }
        if non_empty(svc.get("volumes_from")) {
            self.refuse(
                Rule::VolumesFrom,
                s,
                "key `volumes_from` mounts another container's volumes".into(),
            );
        }
        if non_empty(svc.get("sysctls")) {
            self.refuse(
                Rule::Sysctls,
                s,
                "key `sysctls` sets kernel parameters".into(),
            );
        }
        if svc
            .get("oom_score_adj")
            .and_then(Value::as_i64)
            .is_some_and(|v| v < 0)
        {
            self.refuse(
                Rule::OomScore,
                s,
                "key `oom_score_adj` is negative: the host's processes would be killed first"
                    .into(),
            );
        }
        for key in ["cgroup_parent", "runtime", "oom_kill_disable", "isolation"] {
            if svc.contains_key(key) {
                self.refuse(Rule::Runtime, s, format!("key `{key}` is not allowed"));
            }
        }
        self.labels(svc.get("labels"), s, "labels");
        self.labels(
            svc.get("deploy").and_then(|d| d.get("labels")),
            s,
            "deploy.labels",
        );
        for volume in svc
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let kind = volume
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("volume");
            let source = volume.get("source").and_then(Value::as_str).unwrap_or("");
            match kind {
                "bind" if !self.inside(source) => {
                    let shown = self.shown(source);
                    self.refuse(Rule::HostPath, s, format!("key `volumes` mounts {shown}"));
                }
                "bind" | "volume" | "tmpfs" => {}
                other => self.refuse(
                    Rule::HostPath,
                    s,
                    format!("key `volumes` has a mount of type `{other}`"),
                ),
            }
        }
        if let Some(build) = svc.get("build").and_then(Value::as_object) {
            self.build(name, build);
        }
    }

    fn labels(&mut self, labels: Option<&Value>, s: Option<&str>, key: &str) {
        let keys: Vec<String> = match labels {
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(|l| l.split('=').next().unwrap_or(l).to_owned())
                .collect(),
            _ => Vec::new(),
        };
        for label in keys {
            if RESERVED_LABELS.iter().any(|p| label.starts_with(p)) {
                self.refuse(
                    Rule::ReservedLabel,
                    s,
                    format!("key `{key}` sets `{label}`; only the daemon writes those labels"),
                );
            }
        }
    }

    fn build(&mut self, name: &str, build: &Map<String, Value>) {
        let s = Some(name);
        self.unknown_keys(build, BUILD_KEYS, s, "build.");
        let context = build.get("context").and_then(Value::as_str).unwrap_or(".");
        if context.contains("://") || context.starts_with("git@") {
            self.refuse(
                Rule::HostPath,
                s,
                format!("key `build.context` is remote ({context:?}); build from the checkout"),
            );
        } else if !self.inside(context) {
            let shown = self.shown(context);
            self.refuse(Rule::HostPath, s, format!("key `build.context` is {shown}"));
        } else if let Some(dockerfile) = build.get("dockerfile").and_then(Value::as_str) {
            let path = Path::new(context).join(dockerfile);
            let path = path.to_string_lossy();
            if !self.inside(&path) {
                let shown = self.shown(&path);
                self.refuse(
                    Rule::HostPath,
                    s,
                    format!("key `build.dockerfile` is {shown}"),
                );
            }
        }
        for (ctx_name, ctx) in build
            .get("additional_contexts")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let Some(ctx) = ctx.as_str() else { continue };
            let local = !ctx.contains("://") && !ctx.starts_with("service:");
            if ctx.starts_with("service:") || ctx.starts_with("docker-image://") {
                continue;
            }
            if !local || !self.inside(ctx) {
                let shown = if local {
                    self.shown(ctx)
                } else {
                    format!("{ctx:?}")
                };
                self.refuse(
                    Rule::HostPath,
                    s,
                    format!("key `build.additional_contexts.{ctx_name}` is {shown}"),
                );
            }
        }
        if build.get("privileged").and_then(Value::as_bool) == Some(true) {
            self.refuse(Rule::Privileged, s, "key `build.privileged` is true".into());
        }
        if non_empty(build.get("entitlements")) {
            self.refuse(
                Rule::Privileged,
                s,
                "key `build.entitlements` grants the build host access".into(),
            );
        }
        if let Some(network) = build.get("network").and_then(Value::as_str)
            && network != "default"
        {
            self.refuse(
                Rule::BuildAccess,
                s,
                format!("key `build.network` is `{network}`"),
            );
        }
        if non_empty(build.get("ssh")) {
            self.refuse(
                Rule::BuildAccess,
                s,
                "key `build.ssh` forwards an SSH agent or key into the build".into(),
            );
        }
        for cache in build
            .get("cache_from")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if cache.contains("type=local") {
                self.refuse(
                    Rule::HostPath,
                    s,
                    "key `build.cache_from` reads a local cache from the host".into(),
                );
            }
        }
        self.labels(build.get("labels"), s, "build.labels");
    }

    /// Top-level `configs` and `secrets`: files inside the checkout or inline content.
    fn files(&mut self, section: &str, entries: &Map<String, Value>) {
        for (name, entry) in entries {
            let Some(entry) = entry.as_object() else {
                continue;
            };
            for key in entry.keys() {
                match key.as_str() {
                    "name" | "content" | "labels" | "template_driver" => {}
                    "file" => {
                        let file = entry["file"].as_str().unwrap_or("");
                        if !self.inside(file) {
                            let shown = self.shown(file);
                            self.refuse(
                                Rule::HostPath,
                                None,
                                format!("{section} `{name}`: key `file` is {shown}"),
                            );
                        }
                    }
                    "environment" | "external" => self.refuse(
                        Rule::BuildAccess,
                        None,
                        format!("{section} `{name}`: key `{key}` reads from the host"),
                    ),
                    other if other.starts_with("x-") => {}
                    other => self.refuse(
                        Rule::UnknownKey,
                        None,
                        format!(
                            "{section} `{name}`: key `{other}` is not known to the preview policy"
                        ),
                    ),
                }
            }
        }
    }

    fn networks(&mut self, networks: &Map<String, Value>) {
        for (key, net) in networks {
            let Some(net) = net.as_object() else { continue };
            self.unknown_keys(net, NETWORK_KEYS, None, &format!("networks.{key}."));
            let own = format!("{}_{key}", self.project);
            let name = net.get("name").and_then(Value::as_str).unwrap_or(&own);
            if net.get("external").and_then(Value::as_bool) == Some(true) || name != own {
                self.refuse(
                    Rule::ForeignNetwork,
                    None,
                    format!("network `{key}` joins `{name}`, which is not the preview's own"),
                );
            }
            if let Some(driver) = net.get("driver").and_then(Value::as_str)
                && driver != "bridge"
            {
                self.refuse(
                    Rule::ForeignNetwork,
                    None,
                    format!("network `{key}` uses driver `{driver}`; previews use bridge networks"),
                );
            }
            if non_empty(net.get("driver_opts")) {
                self.refuse(
                    Rule::ForeignNetwork,
                    None,
                    format!("network `{key}` sets `driver_opts`"),
                );
            }
        }
    }

    fn volumes(&mut self, volumes: &Map<String, Value>) {
        for (key, vol) in volumes {
            let Some(vol) = vol.as_object() else { continue };
            self.unknown_keys(vol, VOLUME_KEYS, None, &format!("volumes.{key}."));
            let own = format!("{}_{key}", self.project);
            let name = vol.get("name").and_then(Value::as_str).unwrap_or(&own);
            if vol.get("external").and_then(Value::as_bool) == Some(true) || name != own {
                self.refuse(
                    Rule::HostPath,
                    None,
                    format!("volume `{key}` is `{name}`, which is not the preview's own"),
                );
            }
            if let Some(driver) = vol.get("driver").and_then(Value::as_str)
                && driver != "local"
            {
                self.refuse(
                    Rule::HostPath,
                    None,
                    format!("volume `{key}` uses driver `{driver}`"),
                );
            }
            if non_empty(vol.get("driver_opts")) {
                self.refuse(
                    Rule::HostPath,
                    None,
                    format!("volume `{key}` sets `driver_opts` (a bind or remote mount)"),
                );
            }
        }
    }
}

fn strings<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k);
                strings(v, out);
            }
        }
        _ => {}
    }
}

fn non_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// Checks a resolved project. `project` is the name it was resolved under (its own networks and
/// volumes are `{project}_{key}`); `main_file` names the compose file in messages.
pub fn check(
    resolved: &Resolved,
    project: &str,
    main_file: &str,
    policy: &Policy,
) -> Vec<Violation> {
    let mut c = Checker {
        policy,
        root: &resolved.root,
        project,
        origins: &resolved.origins,
        main_file,
        out: Vec::new(),
    };
    let model = &resolved.model;
    let Some(top) = model.as_object() else {
        return c.out;
    };
    c.unknown_keys(top, TOP_KEYS, None, "");

    // The socket by any name, anywhere: mounts, DOCKER_HOST, labels, commands.
    let mut all = Vec::new();
    strings(model, &mut all);
    if let Some(s) = all
        .iter()
        .find(|s| s.contains("docker.sock") || s.contains("containerd.sock"))
    {
        let s = if s.starts_with('/') {
            c.shown(s)
        } else {
            format!("{s:?}")
        };
        c.refuse(
            Rule::DockerSocket,
            None,
            format!("the project mentions the Docker socket ({s}); a preview must never reach the host's engine"),
        );
    }
    let count = top
        .get("services")
        .and_then(Value::as_object)
        .map_or(0, |s| s.len());
    if count > MAX_SERVICES {
        c.refuse(
            Rule::Runtime,
            None,
            format!("the project runs {count} services; a preview runs at most {MAX_SERVICES}"),
        );
    }
    for (name, svc) in top
        .get("services")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(svc) = svc.as_object() {
            c.service(name, svc);
        }
    }
    for section in ["configs", "secrets"] {
        if let Some(entries) = top.get(section).and_then(Value::as_object) {
            c.files(section, entries);
        }
    }
    if let Some(networks) = top.get("networks").and_then(Value::as_object) {
        c.networks(networks);
    }
    if let Some(volumes) = top.get("volumes").and_then(Value::as_object) {
        c.volumes(volumes);
    }
    c.out
}

/// The services a resolved model defines.
pub fn services(model: &Value) -> Vec<String> {
    model
        .get("services")
        .and_then(Value::as_object)
        .map(|s| s.keys().cloned().collect())
        .unwrap_or_default()
}
