//! The contract as repository authors write it: every bad input with the message they see.

use productbuilder_preview::spec::{LogSource, parse, valid_service_name};

const FILE: &str = ".productbuilding/preview/config.yml";

/// The full reference from the schema, unchanged: it must keep working.
const REFERENCE: &str = r#"# Required
version: 1

compose:
  file: .productbuilding/preview/docker-compose.yml   # Path to Compose file (relative to repo root)
  service: app                                         # Main service name in the Compose file

runtime:
  internal_port: 8080              # Port the app listens on inside the container
  healthcheck_path: /healthz       # Path for health check polling
  startup_timeout_seconds: 300     # Max seconds to wait for healthy response

# Optional
database:
  migrate_command: go run ./cmd/migrate up   # Run inside the main service container after start

logging:
  service: app          # Compose service to get logs from (defaults to compose.service)
  type: file
  path: /var/log/app.log # Required when type=file; supports globs like /var/log/app/*.log

user_facing_note: "Test login: admin / secret"   # Shown in the PR comment

post_deploy_commands:                    # Run after preview is healthy
  - service: app                         # Compose service (defaults to compose.service)
    command: /app/seed-data              # Command to execute
    description: Seed demo data          # Human-readable label for logs
"#;

#[test]
fn the_reference_config_parses_unchanged() {
    let v = parse(REFERENCE, FILE);
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    let spec = v.spec.unwrap();
    assert_eq!(
        spec.compose_file,
        ".productbuilding/preview/docker-compose.yml"
    );
    assert_eq!(spec.service, "app");
    assert_eq!(spec.internal_port, 8080);
    assert_eq!(spec.healthcheck_path, "/healthz");
    assert_eq!(spec.startup_timeout_seconds, 300);
    assert_eq!(
        spec.migrate_command.as_deref(),
        Some("go run ./cmd/migrate up")
    );
    assert_eq!(
        spec.log_source,
        LogSource::File {
            path: "/var/log/app.log".into()
        }
    );
    assert_eq!(
        spec.user_facing_note.as_deref(),
        Some("Test login: admin / secret")
    );
    assert_eq!(spec.post_deploy.len(), 1);
    assert_eq!(spec.post_deploy[0].command, "/app/seed-data");
    assert_eq!(
        spec.post_deploy[0].description.as_deref(),
        Some("Seed demo data")
    );
}

#[test]
fn the_minimal_config_gets_the_predecessors_defaults() {
    let v = parse(
        "version: 1\ncompose:\n  file: compose.yml\n  service: web\n",
        FILE,
    );
    let spec = v.spec.expect("valid");
    assert_eq!(spec.internal_port, 8080);
    assert_eq!(spec.healthcheck_path, "/healthz");
    assert_eq!(spec.startup_timeout_seconds, 300);
    assert_eq!(spec.log_service, "web");
    assert_eq!(spec.log_source, LogSource::Docker);
    assert!(spec.post_deploy.is_empty());
}

#[test]
fn each_bad_input_has_its_message_and_line() {
    let base = "version: 1\ncompose:\n  file: compose.yml\n  service: web\n";
    let cases: &[(&str, &str)] = &[
        (
            "version: 2\ncompose:\n  file: c.yml\n  service: web\n",
            "config.yml:1: version 2 is not supported; this productbuilder reads version 1",
        ),
        (
            "compose:\n  file: c.yml\n  service: web\n",
            "config.yml:1: missing `version: 1`",
        ),
        (
            "version: 1\n",
            "config.yml: missing the `compose` section (file and service)",
        ),
        (
            "version: 1\ncompose:\n  service: web\n",
            "config.yml:3: missing `compose.file`: the compose file, relative to the repository root",
        ),
        (
            "version: 1\ncompose:\n  file: c.yml\n",
            "config.yml:3: missing `compose.service`: the service that serves the preview",
        ),
        (
            "version: 1\ncompose:\n  file: /etc/compose.yml\n  service: web\n",
            "config.yml:3: `compose.file` \"/etc/compose.yml\" must be a relative path inside the repository",
        ),
        (
            "version: 1\ncompose:\n  file: ../other/compose.yml\n  service: web\n",
            "config.yml:3: `compose.file` \"../other/compose.yml\" must be a relative path inside the repository",
        ),
        (
            &format!("{base}runtime:\n  internal_port: 70000\n"),
            "config.yml:6: `runtime.internal_port` 70000 is not a port (1 to 65535)",
        ),
        (
            &format!("{base}runtime:\n  internal_port: 0\n"),
            "config.yml:6: `runtime.internal_port` 0 is not a port (1 to 65535)",
        ),
        (
            &format!("{base}runtime:\n  healthcheck_path: healthz\n"),
            "config.yml:6: `runtime.healthcheck_path` \"healthz\" must be a URL path starting with / (no spaces)",
        ),
        (
            &format!("{base}runtime:\n  startup_timeout_seconds: 0\n"),
            "config.yml:6: `runtime.startup_timeout_seconds` 0 must be between 1 and 3600",
        ),
        (
            &format!("{base}logging:\n  type: syslog\n"),
            "config.yml:6: `logging.type` \"syslog\" is not one of: docker, file",
        ),
        (
            &format!("{base}logging:\n  type: file\n"),
            "config.yml:6: `logging.type: file` needs `logging.path`",
        ),
        (
            &format!("{base}logging:\n  type: file\n  path: app.log\n"),
            "config.yml:7: `logging.path` \"app.log\" must be an absolute path inside the container",
        ),
        (
            &format!("{base}database:\n  migrate_command: \"  \"\n"),
            "config.yml:6: `database.migrate_command` is empty",
        ),
        (
            &format!("{base}post_deploy_commands:\n  - description: nothing\n"),
            "config.yml:6: `post_deploy_commands[0]` needs a non-empty `command`",
        ),
    ];
    for (yaml, want) in cases {
        let v = parse(yaml, FILE);
        let got: Vec<String> = v.errors.iter().map(|e| e.to_string()).collect();
        assert!(v.spec.is_none(), "{yaml}");
        assert!(
            got.iter().any(|g| g.ends_with(want)),
            "for\n{yaml}\nwanted …{want}\ngot {got:#?}"
        );
    }
}

#[test]
fn wrong_types_and_broken_yaml_name_the_line() {
    let v = parse(
        "version: 1\ncompose:\n  file: c.yml\n  service: web\nruntime:\n  internal_port: eighty\n",
        FILE,
    );
    let e = v.errors[0].to_string();
    assert!(
        e.starts_with(".productbuilding/preview/config.yml:6: not a valid config"),
        "{e}"
    );

    let v = parse("version: 1\ncompose: [unclosed\n", FILE);
    let e = v.errors[0].to_string();
    assert!(
        e.contains("config.yml:2") || e.contains("config.yml:3"),
        "{e}"
    );
}

#[test]
fn unknown_keys_warn_but_do_not_break_a_working_repository() {
    let v = parse(
        "version: 1\ncompose:\n  file: c.yml\n  service: web\n  profile: x\nruntime:\n  internal_port: 3000\nnotify: true\n",
        FILE,
    );
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    assert!(v.spec.is_some());
    let warnings: Vec<String> = v.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(":5: unknown key `compose.profile` is ignored")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(":8: unknown key `notify` is ignored")),
        "{warnings:?}"
    );
}

#[test]
fn hostile_yaml_is_refused_without_hanging() {
    // A billion laughs: aliases expanding exponentially.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, name) in ["b", "c", "d", "e", "f", "g", "h", "i"].iter().enumerate() {
        let prev = ["a", "b", "c", "d", "e", "f", "g", "h"][i];
        bomb.push_str(&format!("{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    bomb.push_str("version: 1\n");
    let v = parse(&bomb, FILE);
    assert!(v.spec.is_none());
    assert!(!v.errors.is_empty());
    // Over the size cap.
    let big = format!(
        "version: 1\nuser_facing_note: \"{}\"\n",
        "x".repeat(70 * 1024)
    );
    assert!(
        parse(&big, FILE).errors[0]
            .to_string()
            .contains("larger than")
    );
}

/// A service name reaches `compose exec` and `compose port` as an argument: one that looks like a
/// flag, or that Compose itself would refuse, is refused here with the file, line and key.
#[test]
fn hostile_service_names_are_refused_where_they_are_written() {
    let head = "version: 1\ncompose:\n  file: compose.yml\n";
    let cases: &[(String, &str)] = &[
        (
            format!("{head}  service: --privileged\n"),
            "config.yml:4: `compose.service` \"--privileged\" is not a Compose service name",
        ),
        (
            format!("{head}  service: \"-d\"\n"),
            "config.yml:4: `compose.service` \"-d\" is not a Compose service name",
        ),
        (
            format!("{head}  service: \"web app\"\n"),
            "config.yml:4: `compose.service` \"web app\" is not a Compose service name",
        ),
        (
            format!("{head}  service: \"web\\nx\"\n"),
            "config.yml:4: `compose.service` \"web\\nx\" is not a Compose service name",
        ),
        (
            format!("{head}  service: web\nlogging:\n  service: --volume=/:/host\n"),
            "config.yml:6: `logging.service` \"--volume=/:/host\" is not a Compose service name",
        ),
        (
            format!("{head}  service: web\nlogging:\n  service: \"\"\n"),
            "config.yml:6: `logging.service` \"\" is not a Compose service name",
        ),
        (
            format!(
                "{head}  service: web\npost_deploy_commands:\n  - command: ok\n  - service: _web\n    command: seed\n"
            ),
            "config.yml:7: `post_deploy_commands[1].service` \"_web\" is not a Compose service name",
        ),
        (
            format!(
                "{head}  service: web\npost_deploy_commands:\n  - service: \"-T\"\n    command: id\n"
            ),
            "config.yml:6: `post_deploy_commands[0].service` \"-T\" is not a Compose service name",
        ),
    ];
    for (yaml, want) in cases {
        let v = parse(yaml, FILE);
        let got: Vec<String> = v.errors.iter().map(|e| e.to_string()).collect();
        assert!(v.spec.is_none(), "{yaml}");
        assert!(
            got.iter().any(|g| g.ends_with(&format!(
                "{want} (letters, digits, `_`, `.` and `-`, starting with a letter or digit)"
            ))),
            "for\n{yaml}\nwanted …{want}\ngot {got:#?}"
        );
    }

    // A very long name is cut short in the message, which a pull request comment shows.
    let long = format!("{head}  service: \"-{}\"\n", "a".repeat(10_000));
    let message = parse(&long, FILE).errors[0].to_string();
    assert!(message.len() < 300 && message.contains('…'), "{message}");

    // Names Compose accepts still pass, in every place.
    let fine = format!(
        "{head}  service: web-1.app_x\nlogging:\n  service: 0db\npost_deploy_commands:\n  - service: Worker\n    command: seed\n"
    );
    let v = parse(&fine, FILE);
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    assert_eq!(v.spec.unwrap().log_service, "0db");

    for ok in ["web", "0", "a.b", "a_b", "a-b", "Web9"] {
        assert!(valid_service_name(ok), "{ok}");
    }
    for bad in ["", "-a", "_a", ".a", "a b", "a/b", "a:b", "é", "a\n"] {
        assert!(!valid_service_name(bad), "{bad:?}");
    }
}
