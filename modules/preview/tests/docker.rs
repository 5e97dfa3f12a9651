//! The rewritten compose file on the real Docker engine: build, start, reach over the loopback
//! binding, and remove without a trace. Needs the engine, a Compose CLI and Debian's
//! busybox-static (`.ci/run` installs the last two).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use productbuilder_preview::compose::{Rewrite, project_name, render, rewrite, routed_network};
use productbuilder_preview::policy::Policy;
use productbuilder_preview::runner::{ComposeCli, write_project};
use productbuilder_preview::validate_checkout;
use support::docker;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn http_get(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[tokio::test]
async fn a_preview_builds_starts_answers_and_leaves_nothing_behind_with_compose_v2() {
    builds_starts_answers_and_leaves_nothing_behind(&["docker", "compose"]).await;
}

/// The daemon's sequence (build, start, exec, port, down) with Compose v2.
async fn builds_starts_answers_and_leaves_nothing_behind(flavour: &[&str]) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: apt-get install busybox-static (.ci/run does)"
    );
    docker(&["info", "--format", "{{.ServerVersion}}"]);
    let flavour: Vec<String> = flavour.iter().map(|s| s.to_string()).collect();
    let cli = ComposeCli::detect(&flavour).await.unwrap();

    // The example repository, as a pull request's checkout.
    let work = tempfile::tempdir().unwrap();
    let checkout = work.path().join("checkout");
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-preview");
    copy_dir(&example, &checkout);
    std::fs::copy(busybox, checkout.join("busybox")).unwrap();
    // A shell for `exec` (`sh -c`): busybox's applets, installed in the image.
    let dockerfile = std::fs::read_to_string(checkout.join("Dockerfile")).unwrap();
    std::fs::write(
        checkout.join("Dockerfile"),
        dockerfile.replace(
            "COPY busybox /bin/busybox",
            "COPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]",
        ),
    )
    .unwrap();
    let unique = format!("{}-{}", std::process::id(), fastrand_suffix());
    let project = project_name(&format!("test/hello-{unique}"), 1);
    let report = validate_checkout(&checkout, &Policy::default(), &cli, &project).await;
    let spec = report.spec.expect("the example passes its own checks");
    let model = report.resolved.expect("resolved").model;
    let network = routed_network(&model, &spec.service).expect("a network");
    let rewritten = rewrite(
        &model,
        &Rewrite {
            repo: "test/hello",
            number: 1,
            sha: "0123456789abcdef0123456789abcdef01234567",
            project: &project,
            service: &spec.service,
            internal_port: spec.internal_port,
            host: "hello-pr-1.preview.localhost",
            base_url: "http://hello-pr-1.preview.localhost",
            entrypoint: "web",
            cert_resolver: None,
            cpus: Some(0.5),
            memory: Some("64m"),
            pids_limit: 64,
            internal: false,
            env: &[],
        },
        &network,
    );
    let p = write_project(
        work.path(),
        &project,
        &render(&rewritten).unwrap(),
        Vec::new(),
    )
    .unwrap();

    let outcome = async {
        cli.build(&p, Duration::from_secs(300))
            .await
            .map_err(|e| format!("{e}\n{}", e.tail))?;
        cli.start(&p, Duration::from_secs(300))
            .await
            .map_err(|e| format!("{e}\n{}", e.tail))?;
        // A command inside the running container, as migrations and post-deploy commands run.
        let out = cli
            .exec(&p, &spec.service, "echo inside", Duration::from_secs(60))
            .await
            .map_err(|e| format!("{e}\n{}", e.tail))?;
        if out.trim() != "inside" {
            return Err(format!("exec printed {out:?}"));
        }
        let addr = cli
            .port(&p, &spec.service, spec.internal_port)
            .await
            .map_err(|e| e.to_string())?;
        if !addr.ip().is_loopback() {
            return Err(format!("published on {addr}, not loopback"));
        }
        // The other way in: the main container's address on the preview's own network.
        let engine = productbuilder_preview::engine::Engine::connect()
            .await
            .map_err(|e| e.to_string())?;
        let ip = engine
            .service_ip(&project, &spec.service, &network)
            .await
            .map_err(|e| e.to_string())?;
        let inside = std::net::SocketAddr::new(ip, spec.internal_port);
        // The container may need a moment to accept connections: poll until both answer.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let serves =
                |a| http_get(a).is_some_and(|b| b.contains("Hello from a productbuilder preview"));
            if serves(addr) && serves(inside) {
                return Ok(addr);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("{addr} or {inside} never served the page"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    // Whatever happened, tear down, then check.
    let down = cli.down(&p).await;
    let label = format!("label=com.docker.compose.project={project}");
    let containers = docker(&["ps", "-aq", "--filter", &label]);
    let volumes = docker(&["volume", "ls", "-q", "--filter", &label]);
    let networks = docker(&["network", "ls", "-q", "--filter", &label]);
    let images = docker(&["images", "-q", "--filter", &format!("reference={project}*")]);

    outcome.unwrap();
    down.unwrap();
    assert_eq!(containers, "", "containers left");
    assert_eq!(volumes, "", "volumes left");
    assert_eq!(networks, "", "networks left");
    assert_eq!(images, "", "images left");
}

fn fastrand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{nanos:x}")
}

/// A compose file interpolates `${VAR}` from the environment of the Compose CLI; the daemon's own
/// environment (tokens) must not be visible to it, nor the operator's registry credentials.
#[tokio::test]
async fn the_compose_cli_does_not_see_the_daemons_environment() {
    // Cargo sets this for test processes: a variable the test has and Compose must not get.
    assert!(std::env::var("CARGO_PKG_NAME").is_ok());
    let cli = ComposeCli::detect(&["docker".into(), "compose".into()])
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let preview = work.path().join(".productbuilding/preview");
    std::fs::create_dir_all(&preview).unwrap();
    std::fs::write(
        preview.join("config.yml"),
        "version: 1\ncompose:\n  file: .productbuilding/preview/docker-compose.yml\n  service: app\n",
    )
    .unwrap();
    std::fs::write(
        preview.join("docker-compose.yml"),
        "services:\n  app:\n    image: scratch\n    environment:\n      PROBE: \"${CARGO_PKG_NAME:-absent}\"\n      HOME_SEEN: \"${HOME:-none}\"\n",
    )
    .unwrap();
    let report = validate_checkout(work.path(), &Policy::default(), &cli, "pb-env-probe").await;
    let env = &report.resolved.expect("resolved").model["services"]["app"]["environment"];
    assert_eq!(env["PROBE"], "absent", "{env}");
    assert_eq!(env["HOME_SEEN"], "none", "{env}");
}

/// Compose v1 cannot print the resolved model: it is refused with a way out.
#[tokio::test]
async fn compose_v1_is_refused_saying_how_to_install_v2() {
    let fake = tempfile::tempdir().unwrap();
    let v1 = fake.path().join("docker-compose-v1");
    std::fs::write(&v1, "#!/bin/sh\necho 1.29.2\n").unwrap();
    let mut perms = std::fs::metadata(&v1).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&v1, perms).unwrap();
    let e = ComposeCli::detect(&[v1.display().to_string()])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, productbuilder_preview::runner::ComposeError::NotV2 { version, .. } if version == "1.29.2"),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains("Compose 1.29.2") && e.contains("end of life"),
        "{e}"
    );
    assert!(e.contains("docker-compose-plugin"), "{e}");
}
