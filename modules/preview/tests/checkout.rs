//! `validate_checkout` on real directories, as `productbuilder preview validate` runs it.

use productbuilder_preview::policy::{Policy, Rule};
use productbuilder_preview::validate_checkout;

fn checkout(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }
    dir
}

const CONFIG: &str = ".productbuilding/preview/config.yml";
const COMPOSE: &str = ".productbuilding/preview/docker-compose.yml";
const GOOD_CONFIG: &str =
    "version: 1\ncompose:\n  file: .productbuilding/preview/docker-compose.yml\n  service: app\n";

#[test]
fn a_valid_checkout_yields_the_spec() {
    let dir = checkout(&[
        (CONFIG, GOOD_CONFIG),
        (COMPOSE, "services:\n  app:\n    build: ../..\n"),
    ]);
    let report = validate_checkout(dir.path(), &Policy::default());
    assert!(report.is_valid(), "{report:?}");
}

#[test]
fn a_socket_mount_fails_the_policy_and_yields_no_spec() {
    let dir = checkout(&[
        (CONFIG, GOOD_CONFIG),
        (
            COMPOSE,
            "services:\n  app:\n    build: ../..\n    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n",
        ),
    ]);
    let report = validate_checkout(dir.path(), &Policy::default());
    assert!(!report.is_valid());
    assert_eq!(report.violations[0].rule, Rule::DockerSocket);
    assert!(
        report.violations[0]
            .to_string()
            .starts_with(&format!("{COMPOSE}:5: mentions the Docker socket"))
    );
}

#[test]
fn services_named_by_the_contract_must_exist() {
    let dir = checkout(&[
        (
            CONFIG,
            "version: 1\ncompose:\n  file: .productbuilding/preview/docker-compose.yml\n  service: web\n",
        ),
        (COMPOSE, "services:\n  app:\n    image: x\n"),
    ]);
    let report = validate_checkout(dir.path(), &Policy::default());
    assert_eq!(
        report.errors[0].to_string(),
        format!(
            "{CONFIG}: `compose.service` names service `web`, which {COMPOSE} does not define (it has: app)"
        )
    );
}

#[test]
fn missing_files_and_links_out_of_the_checkout_are_errors() {
    let empty = tempfile::tempdir().unwrap();
    let report = validate_checkout(empty.path(), &Policy::default());
    assert!(
        report.errors[0]
            .to_string()
            .starts_with(&format!("{CONFIG}: cannot be read"))
    );

    let dir = checkout(&[(CONFIG, GOOD_CONFIG)]);
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join(COMPOSE)).unwrap();
    let report = validate_checkout(dir.path(), &Policy::default());
    assert!(
        report.errors[0]
            .to_string()
            .contains("is not a regular file (links are not followed)"),
        "{report:?}"
    );
    assert!(!report.is_valid());
}
