//! The rewritten compose file, checked by the real Compose CLI (`config` validates and normalises
//! it without starting anything).

use std::process::Command;

use productbuilder_preview::compose::{Rewrite, project_name, render, rewrite};
use serde_json::Value;

/// The Compose CLI on this machine: v2 as a Docker plugin, else v1.
fn compose_cli() -> Vec<String> {
    for candidate in [vec!["docker", "compose"], vec!["docker-compose"]] {
        let ok = Command::new(candidate[0])
            .args(&candidate[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return candidate.into_iter().map(String::from).collect();
        }
    }
    panic!(
        "neither `docker compose` nor `docker-compose` is installed; .ci/run installs docker-compose"
    );
}

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

fn rewritten(project: &str) -> (String, Value) {
    let doc: Value = serde_saphyr::from_str(ORIGINAL).unwrap();
    let out = rewrite(
        &doc,
        &Rewrite {
            repo: "Acme/Shop.Web",
            number: 42,
            sha: "0123456789abcdef0123456789abcdef01234567",
            project,
            service: "app",
            internal_port: 8080,
            host: "shop-web-pr-42.preview.localhost",
            base_url: "http://shop-web-pr-42.preview.localhost",
            network: "productbuilder-previews",
            entrypoint: "web",
            cert_resolver: None,
            cpus: Some(1.5),
            memory: Some("512m"),
        },
    );
    (render(&out).unwrap(), out)
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

#[test]
fn the_rewrite_is_valid_compose_with_routing_labels_and_no_host_ports() {
    let project = project_name("Acme/Shop.Web", 42);
    let (yaml, _) = rewritten(&project);
    let dir = tempfile::tempdir().unwrap();
    let app_dir = dir.path().join("checkout/.productbuilding/preview");
    std::fs::create_dir_all(&app_dir).unwrap();
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, &yaml).unwrap();
    let cli = compose_cli();
    let out = Command::new(&cli[0])
        .args(&cli[1..])
        .arg("--project-name")
        .arg(&project)
        .arg("--project-directory")
        .arg(&app_dir)
        .arg("-f")
        .arg(&file)
        .arg("config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} config refused the rewrite:\n{}\n---\n{yaml}",
        cli.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let normalised: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
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
        "traefik.docker.network=productbuilder-previews",
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
    let networks = serde_json::to_string(&app["networks"]).unwrap();
    assert!(
        networks.contains("productbuilder-previews") && networks.contains("default"),
        "{networks}"
    );
    let external = &normalised["networks"]["productbuilder-previews"];
    assert!(
        external["external"] == Value::Bool(true) || external["external"]["name"].is_string(),
        "{external}"
    );
    let limits = serde_json::to_string(app).unwrap();
    assert!(
        limits.contains("1.5") && (limits.contains("512m") || limits.contains("536870912")),
        "{limits}"
    );
}
