//! The compose file a preview actually runs: the pull request's file, rewritten.
//!
//! A merge override cannot *remove* host port bindings with Compose v1 (only v2 has `!reset`), so
//! instead of layering an override the whole file is rewritten into the preview's workspace and run
//! with `--project-directory` set to the original file's directory, so that relative paths still
//! resolve. The rewrite, for every service: drops host port bindings (previews never clash), adds
//! labels naming tenant, pull request and sha, and applies the tenant's CPU and memory limits. For
//! the main service it adds the Traefik labels, joins the shared external network, sets
//! `BASE_URL`, and publishes the internal port on an ephemeral loopback port so that the health
//! check works from the host as well as from a container on the shared network.

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
    /// The external network shared with Traefik.
    pub network: &'a str,
    pub entrypoint: &'a str,
    pub cert_resolver: Option<&'a str>,
    /// `cpus` for every service, e.g. 1.5.
    pub cpus: Option<f64>,
    /// `mem_limit` for every service, e.g. "1g".
    pub memory: Option<&'a str>,
}

/// A Compose project name: lowercase letters, digits, `-` and `_`, starting with a letter or digit,
/// unique per repository and pull request, at most 63 characters.
pub fn project_name(repo: &str, number: u64) -> String {
    let mut name: String = format!("pb-{repo}")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '-',
        })
        .collect();
    let suffix = format!("-pr-{number}");
    if name.len() + suffix.len() > 63 {
        // Keep it unique: a short hash of the full repository name replaces the tail.
        let hash = repo.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        name.truncate(63 - suffix.len() - 9);
        name.push_str(&format!("-{:08x}", hash as u32));
    }
    name.push_str(&suffix);
    name
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
    labels.retain(|k, _| !k.starts_with("productbuilder."));
    labels.insert(LABEL_MANAGED.into(), json!("true"));
    labels.insert(LABEL_TENANT.into(), json!(r.repo));
    labels.insert(LABEL_PR.into(), json!(r.number.to_string()));
    labels.insert(LABEL_PROJECT.into(), json!(r.project));
    map.insert("labels".into(), Value::Object(labels));
}

/// Rewrites a parsed compose document. The document was already checked by the policy.
pub fn rewrite(doc: &Value, r: &Rewrite<'_>) -> Value {
    let mut doc = doc.clone();
    // `version` is obsolete in v2 and optional in v1; keep whatever the file says.
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
        labels.retain(|k, _| !k.starts_with("traefik.") && !k.starts_with("productbuilder."));
        labels.insert(LABEL_MANAGED.into(), json!("true"));
        labels.insert(LABEL_TENANT.into(), json!(r.repo));
        labels.insert(LABEL_PR.into(), json!(r.number.to_string()));
        labels.insert(LABEL_SHA.into(), json!(r.sha));
        if let Some(cpus) = r.cpus {
            svc.insert("cpus".into(), json!(cpus));
        }
        if let Some(memory) = r.memory {
            svc.insert("mem_limit".into(), json!(memory));
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
            labels.insert("traefik.docker.network".into(), json!(r.network));
            let mut env = environment_map(svc.get("environment"));
            env.insert("BASE_URL".into(), json!(r.base_url));
            svc.insert("environment".into(), Value::Object(env));
            // Loopback only, ephemeral: the host can health-check, nothing else can reach it.
            svc.insert(
                "ports".into(),
                json!([format!("127.0.0.1::{}", r.internal_port)]),
            );
            let mut networks = match svc.get("networks") {
                Some(Value::Object(map)) => map.clone(),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|n| (n.to_owned(), Value::Null))
                    .collect(),
                _ => {
                    let mut m = Map::new();
                    m.insert("default".into(), Value::Null);
                    m
                }
            };
            networks.insert(r.network.to_owned(), Value::Null);
            svc.insert("networks".into(), Value::Object(networks));
        }
        svc.insert("labels".into(), Value::Object(labels));
    }
    let top = doc.as_object_mut().expect("checked above");
    let networks = top
        .entry("networks")
        .or_insert_with(|| Value::Object(Map::new()));
    if !networks.is_object() {
        *networks = Value::Object(Map::new());
    }
    let networks = networks.as_object_mut().expect("made an object above");
    networks.insert(
        r.network.to_owned(),
        json!({ "external": true, "name": r.network }),
    );
    doc
}

/// The rewritten file as YAML text.
pub fn render(doc: &Value) -> Result<String, String> {
    serde_saphyr::to_string(doc).map_err(|e| format!("cannot write the compose file: {e}"))
}
