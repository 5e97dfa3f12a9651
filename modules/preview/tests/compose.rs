//! The rewritten compose file: the model Compose resolved from a pull request's files, rewritten,
//! then checked by the real Compose v2 CLI (`config` validates and normalises it without starting
//! anything).

use std::process::Command;

use productbuilder_preview::compose::{Rewrite, project_name, render, rewrite, routed_network};
use productbuilder_preview::policy::{Policy, Rule};
use productbuilder_preview::runner::ComposeCli;
use productbuilder_preview::validate_checkout;
use serde_json::Value;

const ORIGINAL: &str = r#"
services:
  app:
    build: ../..
    container_name: fixed
    ports: ["8080:8080", "9229:9229"]
    environment:
      - MODE=preview
    labels:
      - com.example.team=web
      - traefik.http.routers.evil.rule=Host(`bank.example.com`)
    depends_on: [db]
  db:
    image: postgres:16
    ports:
      - "5432:5432"
    volumes:
      - data:/var/lib/postgresql/data
volumes:
  data: {}
"#;

const CONFIG: &str = "version: 1\ncompose:\n  file: .productbuilding/preview/docker-compose.yml\n  service: app\nruntime:\n  internal_port: 8080\n";

/// ORIGINAL resolved by Compose in a checkout, then rewritten; the checkout stays alive with it.
async fn rewritten(
    project: &str,
    internal: bool,
    env: &[(String, String)],
) -> (String, Value, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let preview = dir.path().join(".productbuilding/preview");
    std::fs::create_dir_all(&preview).unwrap();
    std::fs::write(preview.join("config.yml"), CONFIG).unwrap();
    std::fs::write(preview.join("docker-compose.yml"), ORIGINAL).unwrap();
    let cli = ComposeCli::detect(&["docker".into(), "compose".into()])
        .await
        .expect("Compose v2");
    // The original carries a router label: waived here, so that the rewrite is seen dropping it.
    let policy = Policy {
        allowed: [Rule::ReservedLabel].into(),
    };
    let report = validate_checkout(dir.path(), &policy, &cli, project).await;
    assert!(report.is_valid(), "{report:#?}");
    let model = report.resolved.unwrap().model;
    let network = routed_network(&model, "app").expect("app has a network");
    let out = rewrite(
        &model,
        &Rewrite {
            repo: "Acme/Shop.Web",
            number: 42,
            sha: "0123456789abcdef0123456789abcdef01234567",
            project,
            service: "app",
            internal_port: 8080,
            host: "shop-web-pr-42.preview.localhost",
            base_url: "http://shop-web-pr-42.preview.localhost",
            entrypoint: "web",
            cert_resolver: None,
            cpus: Some(1.5),
            memory: Some("512m"),
            pids_limit: 256,
            internal,
            env,
        },
        &network,
    );
    (render(&out).unwrap(), out, dir)
}

/// `docker compose config` of a rewritten file, with `env` in Compose's environment.
fn compose_config(project: &str, yaml: &str, env: &[(&str, &str)]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("docker")
        .args(["compose", "--project-name", project, "--project-directory"])
        .arg(dir.path())
        .arg("-f")
        .arg(&file)
        .args(["config", "--format", "json"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker compose config refused the rewrite:\n{}\n---\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn project_names_meet_composes_rules() {
    assert_eq!(project_name("Acme/Shop.Web", 42), "pb--acme--shopqdweb--42");
    // These two shared one project (and tore each other down) before the planner's encoding.
    assert_ne!(
        project_name("foo/bar-baz", 1),
        project_name("foo-bar/baz", 1)
    );
    let long = project_name(&format!("acme/{}", "x".repeat(100)), 7);
    assert!(long.len() <= 63, "{long}");
    assert_ne!(
        long,
        project_name(&format!("acme/{}y", "x".repeat(100)), 7),
        "unique"
    );
    assert_ne!(long, project_name(&format!("acme/{}", "x".repeat(100)), 8));
    for name in [long, project_name("ACME/..", 1)] {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
            "{name}"
        );
        assert!(name.chars().next().unwrap().is_ascii_alphanumeric());
    }
}

#[tokio::test]
async fn the_rewrite_is_valid_compose_with_routing_labels_limits_and_no_host_ports() {
    let project = project_name("Acme/Shop.Web", 42);
    let (yaml, _, _checkout) = rewritten(&project, false, &[]).await;
    let normalised = compose_config(&project, &yaml, &[]);
    let app = &normalised["services"]["app"];
    let db = &normalised["services"]["db"];

    // Labels, in whichever shape the CLI normalises them to.
    let labels = |svc: &Value| -> Vec<String> {
        match &svc["labels"] {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect(),
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    };
    let app_labels = labels(app);
    for want in [
        "traefik.enable=true",
        &format!("traefik.http.routers.{project}.rule=Host(`shop-web-pr-42.preview.localhost`)"),
        &format!("traefik.http.routers.{project}.entrypoints=web"),
        &format!("traefik.http.services.{project}.loadbalancer.server.port=8080"),
        &format!("traefik.docker.network={project}_default"),
        "productbuilder.tenant=Acme/Shop.Web",
        "productbuilder.pr=42",
        "productbuilder.sha=0123456789abcdef0123456789abcdef01234567",
        "com.example.team=web",
    ] {
        assert!(
            app_labels.iter().any(|l| l == want),
            "missing {want} in {app_labels:#?}"
        );
    }
    assert!(
        !app_labels.iter().any(|l| l.contains("routers.evil")),
        "the pull request's own traefik labels are dropped"
    );
    assert!(labels(db).iter().any(|l| l == "productbuilder.pr=42"));
    // The image it builds carries the project, so that every image of the preview is found again.
    let build_labels = labels(&app["build"]);
    assert!(
        build_labels
            .iter()
            .any(|l| *l == format!("productbuilder.project={project}")),
        "{build_labels:?}"
    );

    // No host port binding is left but the loopback, ephemeral one for health checks.
    let ports = serde_json::to_string(&app["ports"]).unwrap();
    assert!(ports.contains("127.0.0.1"), "{ports}");
    assert!(
        !ports.contains("9229") && !ports.contains("\"8080:8080\""),
        "{ports}"
    );
    assert!(
        db.get("ports")
            .is_none_or(|p| p.is_null() || p.as_array().is_some_and(|a| a.is_empty())),
        "{db}"
    );
    assert!(app.get("container_name").is_none_or(Value::is_null));

    // Environment, networks, limits.
    let env = serde_json::to_string(&app["environment"]).unwrap();
    assert!(
        env.contains("BASE_URL") && env.contains("http://shop-web-pr-42.preview.localhost"),
        "{env}"
    );
    assert!(env.contains("MODE"), "{env}");
    // Its own network only: the router is attached to it at start, nothing external is joined.
    let networks: Vec<&String> = normalised["networks"].as_object().unwrap().keys().collect();
    assert_eq!(networks, ["default"], "{}", normalised["networks"]);
    assert_eq!(
        normalised["networks"]["default"]["name"],
        format!("{project}_default")
    );
    let limits = serde_json::to_string(app).unwrap();
    assert!(
        limits.contains("1.5") && (limits.contains("512m") || limits.contains("536870912")),
        "{limits}"
    );
    // Every service, from whichever file: pids, log rotation, no new privileges.
    for svc in [app, db] {
        assert_eq!(svc["pids_limit"], 256, "{svc}");
        assert_eq!(svc["logging"]["driver"], "json-file", "{svc}");
        assert_eq!(svc["logging"]["options"]["max-size"], "10m", "{svc}");
        let security = serde_json::to_string(&svc["security_opt"]).unwrap();
        assert!(security.contains("no-new-privileges"), "{security}");
    }
}

#[tokio::test]
async fn the_tenants_variables_come_from_composes_environment_never_from_the_file() {
    let project = project_name("Acme/Shop.Web", 43);
    let env = [("app".to_owned(), "API_KEY".to_owned())];
    let (yaml, _, _checkout) = rewritten(&project, false, &env).await;
    assert!(yaml.contains("API_KEY"), "the variable is named");
    let normalised = compose_config(&project, &yaml, &[("API_KEY", "s3cr3t-value")]);
    assert_eq!(
        normalised["services"]["app"]["environment"]["API_KEY"],
        "s3cr3t-value"
    );
    assert!(
        normalised["services"]["db"]["environment"]
            .get("API_KEY")
            .is_none(),
        "only the named service gets it"
    );
}

#[tokio::test]
async fn without_egress_every_network_is_internal_and_nothing_is_published() {
    let project = project_name("Acme/Shop.Web", 44);
    let (yaml, _, _checkout) = rewritten(&project, true, &[]).await;
    let normalised = compose_config(&project, &yaml, &[]);
    assert_eq!(normalised["networks"]["default"]["internal"], true);
    // Builds get no network either.
    assert_eq!(normalised["services"]["app"]["build"]["network"], "none");
    assert!(
        normalised["services"]["app"]
            .get("ports")
            .is_none_or(|p| p.as_array().is_none_or(|a| a.is_empty())),
        "{}",
        normalised["services"]["app"]
    );
}
