//! The bypasses of the compose policy, each as a pull request to the daemon's reconciler on the
//! real engine: every one ends `failed` at `policy`, and the engine never creates a container for
//! any of them (`docker events`). A benign control with interpolation, `include`, `extends` and a
//! profile deploys.

mod support;

use std::time::Duration;

use productbuilder_github_sandbox::NewPr;
use productbuilder_preview::TenantRules;
use productbuilder_preview::state::{Stage, Status};
use support::{World, app, docker, dockerfile_with};

const DIR: &str = ".productbuilding/preview";

/// The example app with `compose` as its compose file and `more` beside it (a later file of
/// the same path replaces the example's).
fn pr(title: &str, compose: &str, more: &[(&str, &str)]) -> NewPr {
    more.iter().fold(
        app(title).with_file(&format!("{DIR}/docker-compose.yml"), compose),
        |pr, (path, text)| pr.with_file(&format!("{DIR}/{path}"), *text),
    )
}

/// A title, the compose file, and further files beside it.
type Case = (&'static str, String, Vec<(&'static str, &'static str)>);

const APP: &str = "services:\n  app:\n    build: ../..\n    init: true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bypass_fails_at_policy_and_no_container_is_ever_created() {
    let w = World::new("byp").await;
    let previews = w.previews(20, Duration::from_secs(3600), TenantRules::default());
    let since = docker(&["info", "--format", "{{.SystemTime}}"]);
    let cases: Vec<Case> = vec![
        (
            "privileged-by-interpolation",
            format!("{APP}    privileged: ${{PRIV:-true}}\n"),
            vec![],
        ),
        (
            "host-network-by-interpolation",
            format!("{APP}    network_mode: ${{NET:-host}}\n"),
            vec![],
        ),
        (
            "include",
            format!("include: [other.yml]\n{APP}"),
            vec![(
                "other.yml",
                "services:\n  evil:\n    image: busybox\n    privileged: true\n    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n",
            )],
        ),
        (
            "extends",
            "services:\n  app:\n    extends: {file: base.yml, service: base}\n".to_owned(),
            vec![(
                "base.yml",
                "services:\n  base:\n    build: ../..\n    volumes: [\"/:/host\"]\n",
            )],
        ),
        (
            "volumes-from-the-router",
            format!("{APP}    volumes_from: [\"container:traefik\"]\n"),
            vec![],
        ),
        (
            "router-label",
            format!("{APP}    labels: [\"traefik.http.routers.x.rule=Host(`bank.example`)\"]\n"),
            vec![],
        ),
        (
            "env-file-of-the-host",
            format!("{APP}    env_file: /etc/hostname\n"),
            vec![],
        ),
    ];
    w.guarded(&previews, async {
        let mut numbers = Vec::new();
        for (title, compose, more) in &cases {
            numbers.push((*title, w.sandbox.open_pr(&w.repo, pr(title, compose, more))));
        }
        // A router label in the Dockerfile: the container would inherit it from its image.
        let dockerfile =
            dockerfile_with("LABEL traefik.http.routers.evil.rule=\"Host(`bank.example`)\"");
        let labelled = w.sandbox.open_pr(
            &w.repo,
            pr("image-label", APP, &[]).with_file("Dockerfile", dockerfile),
        );
        // The control: harmless interpolation, include, extends and a profile.
        let benign = w.sandbox.open_pr(
            &w.repo,
            pr(
                "benign",
                "include: [db.yml]\nservices:\n  app:\n    extends: {file: base.yml, service: base}\n    environment:\n      PORT: ${PORT:-8080}\n  debug:\n    image: busybox\n    profiles: [debug]\n",
                &[
                    ("base.yml", "services:\n  base:\n    build: ../..\n    init: true\n"),
                    ("db.yml", "services:\n  db:\n    build: ../..\n    init: true\n"),
                ],
            ),
        );
        w.pass(&previews).await;
        for (title, number) in &numbers {
            let row = previews.get(&w.repo, *number).await.unwrap().unwrap();
            assert_eq!(row.status, Status::Failed, "{title}: {row:?}");
            assert_eq!(row.stage, Some(Stage::Policy), "{title}: {row:?}");
            assert!(
                row.error.as_deref().is_some_and(|e| e.contains("(rule `")),
                "{title}: {:?}",
                row.error
            );
            assert!(w.containers(*number).is_empty(), "{title}");
        }
        assert_eq!(w.status(&previews, benign).await.0, Status::Ready);
        let row = previews.get(&w.repo, labelled).await.unwrap().unwrap();
        assert_eq!(row.status, Status::Failed, "{row:?}");
        assert!(
            row.error
                .as_deref()
                .is_some_and(|e| e.contains("its image carries the label `traefik.http.routers.evil.rule`")),
            "{:?}",
            row.error
        );

        // The engine's own record: containers were created for the control only.
        let until = docker(&["info", "--format", "{{.SystemTime}}"]);
        let created = docker(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
            &format!("label=productbuilder.tenant={}", w.repo),
            "--format",
            "{{index .Actor.Attributes \"productbuilder.pr\"}}",
        ]);
        let prs: std::collections::BTreeSet<&str> = created.lines().collect();
        assert_eq!(
            prs,
            [benign.to_string().as_str()].into(),
            "containers created: {created}"
        );
    })
    .await;
}
