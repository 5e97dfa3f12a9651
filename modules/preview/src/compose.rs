//! The compose file a preview actually runs: the model Compose resolved from the pull request's
//! files ([`crate::resolve`]), checked ([`crate::policy`]) and rewritten here. Compose is handed only
//! this file, so nothing the pull request's files say reaches the engine without passing both.
//!
//! For every service, from whichever file it came: host port bindings and fixed container names
//! are dropped (previews never clash), `pids_limit`, the tenant's CPU and memory limits, log
//! rotation and `no-new-privileges` are set, and labels name tenant, pull request and sha. The main
//! service gets the Traefik labels for the network the router joins (the preview's own), `BASE_URL`,
//! the tenant's variables, and an ephemeral loopback port for the health check. With
//! `egress = "none"` every network of the project is internal: no traffic leaves it.

use serde_json::{Map, Value, json};

/// Labels on everything productbuilder starts: how it finds its containers again after a restart.
pub const LABEL_MANAGED: &str = "productbuilder.managed";
pub const LABEL_TENANT: &str = "productbuilder.tenant";
pub const LABEL_PR: &str = "productbuilder.pr";
pub const LABEL_SHA: &str = "productbuilder.sha";
/// On images built for a preview: how they are found again, including the untagged images of
/// earlier heads, which no tag or compose command reaches.
pub const LABEL_PROJECT: &str = "productbuilder.project";

/// What the rewrite needs to know.
#[derive(Debug, Clone)]
pub struct Rewrite<'a> {
    pub repo: &'a str,
    pub number: u64,
    pub sha: &'a str,
    pub project: &'a str,
    pub service: &'a str,
    pub internal_port: u16,
    /// The preview's host name, for the router rule and `BASE_URL`.
    pub host: &'a str,
    pub base_url: &'a str,
    pub entrypoint: &'a str,
    pub cert_resolver: Option<&'a str>,
    /// `cpus` for every service, e.g. 1.5.
    pub cpus: Option<f64>,
    /// `mem_limit` for every service, e.g. "1g".
    pub memory: Option<&'a str>,
    /// Most processes per container.
    pub pids_limit: u32,
    /// No traffic out of the project's networks (`egress = "none"`).
    pub internal: bool,
    /// `(service, variable)` pairs whose values Compose takes from its own environment: the
    /// tenant's variables and secrets, which never appear in this file.
    pub env: &'a [(String, String)],
}

/// The image each service runs: its `image`, or the name Compose v2 gives what it builds.
pub fn service_images(model: &Value, project: &str) -> Vec<(String, String)> {
    model
        .get("services")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, svc)| {
            let image = svc
                .get("image")
                .and_then(Value::as_str)
                .map_or_else(|| format!("{project}-{name}"), str::to_owned);
            (name.clone(), image)
        })
        .collect()
}

/// Labels an image may not carry into a preview: a container inherits its image's labels, and
/// the router reads them.
pub fn image_label_refused(key: &str) -> bool {
    key.starts_with("traefik.")
}

/// Labels only the daemon and Compose write: Traefik's configuration and the bookkeeping.
fn reserved_label(key: &str) -> bool {
    key.starts_with("traefik.")
        || key.starts_with("productbuilder.")
        || key.starts_with("com.docker.compose.")
}

/// Log rotation for every container: a chatty preview cannot fill the host's disk.
pub const LOG_MAX_SIZE: &str = "10m";
pub const LOG_MAX_FILE: &str = "3";

/// A Compose project name, also the workspace directory's: distinct for distinct repositories
/// and pull requests, at most 63 characters. The encoding is the planner's (`names`).
pub fn project_name(repo: &str, number: u64) -> String {
    productbuilder_planner::names::project_of(repo, number)
}

/// The router and service name in Traefik: the project name, which is unique.
fn router(project: &str) -> String {
    project.replace('_', "-")
}

fn labels_map(value: Option<&Value>) -> Map<String, Value> {
    match value {
        Some(Value::Object(map)) => map.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), Value::String(v.to_owned())),
                None => (item.to_owned(), Value::String(String::new())),
            })
            .collect(),
        _ => Map::new(),
    }
}

fn environment_map(value: Option<&Value>) -> Map<String, Value> {
    // Same two shapes as labels: a mapping, or a list of KEY=VALUE.
    labels_map(value)
}

/// Labels the images a service builds (`build` as a context string or a mapping).
fn label_build(build: &mut Value, r: &Rewrite<'_>) {
    if let Value::String(context) = build {
        *build = json!({ "context": context });
    }
    let Some(map) = build.as_object_mut() else {
        return;
    };
    let mut labels = labels_map(map.get("labels"));
    labels.retain(|k, _| !reserved_label(k));
    labels.insert(LABEL_MANAGED.into(), json!("true"));
    labels.insert(LABEL_TENANT.into(), json!(r.repo));
    labels.insert(LABEL_PR.into(), json!(r.number.to_string()));
    labels.insert(LABEL_PROJECT.into(), json!(r.project));
    map.insert("labels".into(), Value::Object(labels));
}

/// The network of the main service that the router joins: its `default` network if it has one,
/// else the first it names; `None` when it has none (`network_mode: none` or `service:`).
pub fn routed_network(model: &Value, service: &str) -> Option<String> {
    let networks = model.pointer(&format!("/services/{}/networks", escape_pointer(service)))?;
    let networks = networks.as_object()?;
    let key = if networks.contains_key("default") {
        "default"
    } else {
        networks.keys().next()?
    };
    model
        .pointer(&format!("/networks/{}/name", escape_pointer(key)))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Rewrites a resolved model that passed the policy. `network` is [`routed_network`]'s answer.
pub fn rewrite(model: &Value, r: &Rewrite<'_>, network: &str) -> Value {
    let mut doc = model.clone();
    let Some(services) = doc.get_mut("services").and_then(Value::as_object_mut) else {
        return doc;
    };
    for (name, service) in services.iter_mut() {
        let Some(svc) = service.as_object_mut() else {
            continue;
        };
        svc.remove("ports");
        svc.remove("container_name"); // a fixed name would clash between previews
        if let Some(build) = svc.get_mut("build") {
            label_build(build, r);
        }
        let mut labels = labels_map(svc.get("labels"));
        labels.retain(|k, _| !reserved_label(k));
        // One container per service: limits are per container, so replicas would multiply them.
        svc.remove("scale");
        if let Some(deploy) = svc.get_mut("deploy").and_then(Value::as_object_mut) {
            deploy.remove("replicas");
        }
        if r.internal
            && let Some(build) = svc.get_mut("build").and_then(Value::as_object_mut)
        {
            // No egress means none for the build's `RUN` steps either.
            build.insert("network".into(), json!("none"));
        }
        labels.insert(LABEL_MANAGED.into(), json!("true"));
        labels.insert(LABEL_TENANT.into(), json!(r.repo));
        labels.insert(LABEL_PR.into(), json!(r.number.to_string()));
        labels.insert(LABEL_SHA.into(), json!(r.sha));
        // `deploy.resources.limits` would contradict the limits below (Compose refuses both).
        if let Some(resources) = svc
            .get_mut("deploy")
            .and_then(|d| d.get_mut("resources"))
            .and_then(Value::as_object_mut)
        {
            resources.remove("limits");
        }
        if let Some(cpus) = r.cpus {
            svc.insert("cpus".into(), json!(cpus));
        }
        if let Some(memory) = r.memory {
            svc.insert("mem_limit".into(), json!(memory));
            svc.remove("memswap_limit");
        }
        let pids = svc
            .get("pids_limit")
            .and_then(Value::as_i64)
            .filter(|p| *p > 0)
            .map_or(i64::from(r.pids_limit), |p| p.min(i64::from(r.pids_limit)));
        svc.insert("pids_limit".into(), json!(pids));
        svc.insert(
            "logging".into(),
            json!({ "driver": "json-file", "options": { "max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE } }),
        );
        let mut security: Vec<Value> = svc
            .get("security_opt")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        security.retain(|o| {
            !o.as_str()
                .is_some_and(|o| o.starts_with("no-new-privileges"))
        });
        security.push(json!("no-new-privileges:true"));
        svc.insert("security_opt".into(), Value::Array(security));
        let mut env = environment_map(svc.get("environment"));
        for (service, var) in r.env {
            if service == name {
                // No value: Compose takes it from its own environment, so it is never on disk.
                env.insert(var.clone(), Value::Null);
            } else if env.get(var).is_some_and(Value::is_null) {
                // Another service asking for it by name would get it the same way: it is the
                // named service's only.
                env.remove(var);
            }
        }
        if name == r.service {
            let router = router(r.project);
            labels.insert("traefik.enable".into(), json!("true"));
            labels.insert(
                format!("traefik.http.routers.{router}.rule"),
                json!(format!("Host(`{}`)", r.host)),
            );
            labels.insert(
                format!("traefik.http.routers.{router}.entrypoints"),
                json!(r.entrypoint),
            );
            if let Some(resolver) = r.cert_resolver {
                labels.insert(
                    format!("traefik.http.routers.{router}.tls.certresolver"),
                    json!(resolver),
                );
            }
            labels.insert(
                format!("traefik.http.routers.{router}.service"),
                json!(router),
            );
            labels.insert(
                format!("traefik.http.services.{router}.loadbalancer.server.port"),
                json!(r.internal_port.to_string()),
            );
            labels.insert("traefik.docker.network".into(), json!(network));
            env.insert("BASE_URL".into(), json!(escape_dollars(r.base_url)));
            if !r.internal {
                // Loopback only, ephemeral: the host can health-check, nothing else can reach
                // it. (An internal network publishes nothing; the check then uses the container's
                // address.)
                svc.insert(
                    "ports".into(),
                    json!([{ "target": r.internal_port, "host_ip": "127.0.0.1", "protocol": "tcp" }]),
                );
            }
        }
        if !env.is_empty() {
            svc.insert("environment".into(), Value::Object(env));
        }
        svc.insert("labels".into(), Value::Object(labels));
    }
    if r.internal
        && let Some(networks) = doc.get_mut("networks").and_then(Value::as_object_mut)
    {
        for net in networks.values_mut() {
            if let Some(net) = net.as_object_mut() {
                net.insert("internal".into(), json!(true));
            }
        }
    }
    doc
}

/// A value of ours in Compose's escaped form (`$` is `$$`), as the resolved model's strings are.
fn escape_dollars(s: &str) -> String {
    s.replace('$', "$$")
}

/// The rewritten model could not be written as text (a bug: the model is our own JSON).
#[derive(Debug, thiserror::Error)]
#[error("cannot write the compose file: {0}")]
pub struct RenderError(#[from] serde_json::Error);

/// The rewritten file's text (JSON, which Compose reads as YAML).
pub fn render(doc: &Value) -> Result<String, RenderError> {
    Ok(serde_json::to_string_pretty(doc)?)
}
