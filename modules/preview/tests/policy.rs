//! The compose policy on real checkouts, resolved by the real Compose v2 CLI, as
//! `productbuilder preview validate` and the daemon's `config` and `policy` stages run it: each
//! bypass and each refused rule alone, and the benign controls that must pass.

use productbuilder_preview::policy::{Policy, Rule};
use productbuilder_preview::runner::ComposeCli;
use productbuilder_preview::{Report, validate_checkout};

const CONFIG: &str = ".productbuilding/preview/config.yml";
const DIR: &str = ".productbuilding/preview";
const COMPOSE: &str = ".productbuilding/preview/docker-compose.yml";
const GOOD_CONFIG: &str =
    "version: 1\ncompose:\n  file: .productbuilding/preview/docker-compose.yml\n  service: app\n";

fn checkout(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }
    dir
}

async fn cli() -> ComposeCli {
    ComposeCli::detect(&["docker".into(), "compose".into()])
        .await
        .expect("Compose v2 (scripts/compose-plugin installs it)")
}

/// `compose` is the compose file's text; `more` are further files in the compose file's directory.
async fn validate(compose: &str, more: &[(&str, &str)], policy: &Policy) -> Report {
    let mut files = vec![(CONFIG.to_owned(), GOOD_CONFIG.to_owned())];
    files.push((COMPOSE.to_owned(), compose.to_owned()));
    for (path, text) in more {
        files.push((format!("{DIR}/{path}"), (*text).to_owned()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let dir = checkout(&refs);
    validate_checkout(dir.path(), policy, &cli().await, "pb-test").await
}

/// What is tried, the compose file, further files beside it, the rule, what the message says.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Rule, &'a str);

const APP: &str = "services:\n  app:\n    image: busybox\n";

#[tokio::test]
async fn each_bypass_and_each_rule_is_refused_naming_file_service_key_and_rule() {
    let cases: &[Case] = &[
        (
            "privileged by interpolation",
            "services:\n  app:\n    image: busybox\n    privileged: ${PRIV:-true}\n",
            &[],
            Rule::Privileged,
            "docker-compose.yml: service `app`: key `privileged` is true",
        ),
        (
            "host network by interpolation",
            "services:\n  app:\n    image: busybox\n    network_mode: ${NET:-host}\n",
            &[],
            Rule::HostNamespace,
            "service `app`: key `network_mode` is `host`",
        ),
        (
            "a privileged service from an include",
            "include:\n  - other.yml\nservices:\n  app:\n    image: busybox\n",
            &[(
                "other.yml",
                "services:\n  evil:\n    image: busybox\n    privileged: true\n",
            )],
            Rule::Privileged,
            "other.yml: service `evil`: key `privileged`",
        ),
        (
            "the socket from an include",
            "include:\n  - other.yml\nservices:\n  app:\n    image: busybox\n",
            &[(
                "other.yml",
                "services:\n  evil:\n    image: busybox\n    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n",
            )],
            Rule::DockerSocket,
            "mentions the Docker socket",
        ),
        (
            "the host's root through extends",
            "services:\n  app:\n    extends: {file: base.yml, service: base}\n",
            &[(
                "base.yml",
                "services:\n  base:\n    image: busybox\n    volumes: [\"/:/host\"]\n",
            )],
            Rule::HostPath,
            "service `app`: key `volumes` mounts \"/\" (outside the checkout)",
        ),
        (
            "the router's volumes",
            "services:\n  app:\n    image: busybox\n    volumes_from: [\"container:traefik\"]\n",
            &[],
            Rule::VolumesFrom,
            "service `app`: key `volumes_from`",
        ),
        (
            "pid host",
            "services:\n  app:\n    image: busybox\n    pid: host\n",
            &[],
            Rule::HostNamespace,
            "key `pid` is `host`",
        ),
        (
            "ipc host",
            "services:\n  app:\n    image: busybox\n    ipc: host\n",
            &[],
            Rule::HostNamespace,
            "key `ipc` is `host`",
        ),
        (
            "uts host",
            "services:\n  app:\n    image: busybox\n    uts: host\n",
            &[],
            Rule::HostNamespace,
            "key `uts` is `host`",
        ),
        (
            "userns host",
            "services:\n  app:\n    image: busybox\n    userns_mode: host\n",
            &[],
            Rule::HostNamespace,
            "key `userns_mode` is `host`",
        ),
        (
            "another container's network",
            "services:\n  app:\n    image: busybox\n    network_mode: container:traefik\n",
            &[],
            Rule::HostNamespace,
            "key `network_mode` is `container:traefik`",
        ),
        (
            "cap_add",
            "services:\n  app:\n    image: busybox\n    cap_add: [SYS_ADMIN]\n",
            &[],
            Rule::CapAdd,
            "key `cap_add`",
        ),
        (
            "devices",
            "services:\n  app:\n    image: busybox\n    devices: [\"/dev/kvm:/dev/kvm\"]\n",
            &[],
            Rule::Devices,
            "key `devices`",
        ),
        (
            "device cgroup rules",
            "services:\n  app:\n    image: busybox\n    device_cgroup_rules: [\"c 1:3 mr\"]\n",
            &[],
            Rule::Devices,
            "key `device_cgroup_rules`",
        ),
        (
            "seccomp unconfined",
            "services:\n  app:\n    image: busybox\n    security_opt: [\"seccomp:unconfined\"]\n",
            &[],
            Rule::SecurityOpt,
            "key `security_opt` has `seccomp:unconfined`",
        ),
        (
            "sysctls",
            "services:\n  app:\n    image: busybox\n    sysctls: {net.ipv4.ip_forward: 1}\n",
            &[],
            Rule::Sysctls,
            "key `sysctls`",
        ),
        (
            "the socket through DOCKER_HOST",
            "services:\n  app:\n    image: busybox\n    environment:\n      DOCKER_HOST: unix:///run/docker.sock\n",
            &[],
            Rule::DockerSocket,
            "mentions the Docker socket",
        ),
        (
            "a bind mount of /etc",
            "services:\n  app:\n    image: busybox\n    volumes: [\"/etc:/host-etc\"]\n",
            &[],
            Rule::HostPath,
            "key `volumes` mounts \"/etc\" (outside the checkout)",
        ),
        (
            "a bind mount above the checkout",
            "services:\n  app:\n    image: busybox\n    volumes: [\"../../..:/up\"]\n",
            &[],
            Rule::HostPath,
            "key `volumes` mounts",
        ),
        (
            "a build context above the checkout",
            "services:\n  app:\n    build: ../../..\n",
            &[],
            Rule::HostPath,
            "key `build.context`",
        ),
        (
            "a Dockerfile of the host",
            "services:\n  app:\n    build: {context: ../.., dockerfile: /etc/Dockerfile}\n",
            &[],
            Rule::HostPath,
            "key `build.dockerfile` is \"/etc/Dockerfile\"",
        ),
        (
            "an additional build context of the host",
            "services:\n  app:\n    build:\n      context: ../..\n      additional_contexts: {etc: /etc}\n",
            &[],
            Rule::HostPath,
            "key `build.additional_contexts.etc`",
        ),
        (
            "an env_file of the host",
            "services:\n  app:\n    image: busybox\n    env_file: /etc/hostname\n",
            &[],
            Rule::HostPath,
            "service `app`, key `env_file`: \"/etc/hostname\" (outside the checkout)",
        ),
        (
            "an env_file of the host under an escaped key",
            "services:\n  app:\n    image: busybox\n    \"env\\x5ffile\": /etc/hostname\n",
            &[],
            Rule::HostPath,
            "key `env_file`: \"/etc/hostname\" (outside the checkout)",
        ),
        (
            "an env_file of the host through a YAML anchor",
            "x-base: &base\n  env_file: /etc/hostname\nservices:\n  app:\n    <<: *base\n    image: busybox\n",
            &[],
            Rule::HostPath,
            "key `env_file`: \"/etc/hostname\" (outside the checkout)",
        ),
        (
            "a secret file of the host",
            "services:\n  app:\n    image: busybox\n    secrets: [key]\nsecrets:\n  key:\n    file: /root/.ssh/id_rsa\n",
            &[],
            Rule::HostPath,
            "secrets `key`: key `file` is \"/root/.ssh/id_rsa\"",
        ),
        (
            "a config file of the host",
            "services:\n  app:\n    image: busybox\n    configs: [c]\nconfigs:\n  c:\n    file: /etc/passwd\n",
            &[],
            Rule::HostPath,
            "configs `c`: key `file`",
        ),
        (
            "build on the host's network",
            "services:\n  app:\n    build: {context: ../.., network: host}\n",
            &[],
            Rule::BuildAccess,
            "key `build.network` is `host`",
        ),
        (
            "the host's SSH agent in the build",
            "services:\n  app:\n    build: {context: ../.., ssh: [default]}\n",
            &[],
            Rule::BuildAccess,
            "key `build.ssh`",
        ),
        (
            "a build secret from the host",
            "services:\n  app:\n    build: {context: ../.., secrets: [s]}\nsecrets:\n  s:\n    file: /etc/shadow\n",
            &[],
            Rule::HostPath,
            "secrets `s`: key `file`",
        ),
        (
            "an external network",
            "services:\n  app:\n    image: busybox\n    networks: [shared]\nnetworks:\n  shared:\n    external: true\n    name: productbuilder-previews\n",
            &[],
            Rule::ForeignNetwork,
            "network `shared` joins `productbuilder-previews`",
        ),
        (
            "the default bridge",
            "services:\n  app:\n    image: busybox\n    network_mode: bridge\n",
            &[],
            Rule::ForeignNetwork,
            "key `network_mode` is `bridge`",
        ),
        (
            "a router label",
            "services:\n  app:\n    image: busybox\n    labels: [\"traefik.http.routers.x.rule=Host(`bank.example`)\"]\n",
            &[],
            Rule::ReservedLabel,
            "key `labels` sets `traefik.http.routers.x.rule`",
        ),
        (
            "a negative oom_score_adj",
            "services:\n  app:\n    image: busybox\n    oom_score_adj: -900\n",
            &[],
            Rule::OomScore,
            "key `oom_score_adj` is negative",
        ),
        (
            "a key the policy does not know",
            "services:\n  app:\n    image: busybox\n    storage_opt: {size: 1G}\n",
            &[],
            Rule::UnknownKey,
            "key `storage_opt` is not known",
        ),
        (
            "a host cgroup",
            "services:\n  app:\n    image: busybox\n    cgroup_parent: /system.slice\n",
            &[],
            Rule::Runtime,
            "key `cgroup_parent` is not allowed",
        ),
        (
            "an include of a host file",
            "include:\n  - /etc/compose.yml\nservices:\n  app:\n    image: busybox\n",
            &[],
            Rule::HostPath,
            "`include` names \"/etc/compose.yml\", outside the checkout",
        ),
        (
            "an include chosen by interpolation",
            "include:\n  - ${F:-/etc/x.yml}\nservices:\n  app:\n    image: busybox\n",
            &[],
            Rule::HostPath,
            "uses interpolation",
        ),
        (
            "extends of a host file",
            "services:\n  app:\n    extends: {file: ../../../etc/base.yml, service: b}\n",
            &[],
            Rule::HostPath,
            "`extends.file` names",
        ),
        (
            "a volume bound to a host directory",
            "services:\n  app:\n    image: busybox\n    volumes: [\"data:/v\"]\nvolumes:\n  data:\n    driver_opts: {type: none, o: bind, device: /home}\n",
            &[],
            Rule::HostPath,
            "volume `data` sets `driver_opts`",
        ),
        (
            "a .env that steers Compose",
            APP,
            &[(".env", "COMPOSE_FILE=/etc/evil.yml\n")],
            Rule::HostPath,
            "sets COMPOSE_FILE, which steer Compose itself",
        ),
    ];
    let mut failures = Vec::new();
    for (what, compose, more, rule, want) in cases {
        let report = validate(compose, more, &Policy::default()).await;
        let shown: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        let hit = report
            .violations
            .iter()
            .find(|v| v.rule == *rule && v.to_string().contains(want));
        match hit {
            None => failures.push(format!(
                "{what}: wanted {rule:?} …{want}\n  got {shown:#?}\n  errors {:#?}",
                report.errors
            )),
            Some(v) => {
                let text = v.to_string();
                // The rule to waive is named, and no host path of the checkout leaks.
                assert!(
                    text.contains(&format!("allow = [\"{rule}\"]")),
                    "{what}: {text}"
                );
                assert!(!text.contains("/tmp/"), "{what}: leaks a host path: {text}");
                assert!(report.spec.is_none(), "{what}: refused yet valid");
                // Waiving exactly that rule removes it.
                let allowed = Policy {
                    allowed: [*rule].into(),
                };
                let waived = validate(compose, more, &allowed).await;
                assert!(
                    waived.violations.iter().all(|v| v.rule != *rule),
                    "{what}: still refused with the rule waived: {:?}",
                    waived.violations
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn benign_files_pass_interpolation_include_extends_and_profiles() {
    let compose = "include:\n  - db.yml\nvolumes:\n  data: {}\nservices:\n  app:\n    extends: {file: base.yml, service: base}\n    ports: [\"${PORT:-8080}:8080\"]\n    environment:\n      GREETING: ${GREETING:-hello}\n    env_file: app.env\n  debug:\n    image: busybox\n    profiles: [debug]\n";
    let more: &[(&str, &str)] = &[
        (
            "base.yml",
            "services:\n  base:\n    build: ../..\n    volumes: [\"./seed:/seed:ro\", \"data:/data\"]\n    cap_drop: [ALL]\n    security_opt: [\"no-new-privileges:true\"]\n",
        ),
        ("db.yml", "services:\n  db:\n    image: busybox\n"),
        ("app.env", "FROM_FILE=1\n"),
        (".env", "GREETING=hi\n"),
    ];
    let report = validate(compose, more, &Policy::default()).await;
    assert!(report.is_valid(), "{report:#?}");
    let model = &report.resolved.as_ref().unwrap().model;
    let app = &model["services"]["app"];
    assert_eq!(app["environment"]["GREETING"], "hi");
    assert_eq!(app["environment"]["FROM_FILE"], "1");
    assert!(model["services"]["db"].is_object(), "the include is merged");
}

#[tokio::test]
async fn every_problem_is_reported_in_one_run() {
    let report = validate(
        "services:\n  app:\n    image: busybox\n    privileged: true\n    cap_add: [NET_ADMIN]\n    volumes: [\"/:/host\"]\n",
        &[],
        &Policy::default(),
    )
    .await;
    let rules: Vec<Rule> = report.violations.iter().map(|v| v.rule).collect();
    for rule in [Rule::Privileged, Rule::CapAdd, Rule::HostPath] {
        assert!(rules.contains(&rule), "{rule:?} missing from {rules:?}");
    }
}

#[tokio::test]
async fn services_named_by_the_contract_must_exist() {
    let dir = checkout(&[
        (
            CONFIG,
            "version: 1\ncompose:\n  file: .productbuilding/preview/docker-compose.yml\n  service: web\n",
        ),
        (COMPOSE, APP),
    ]);
    let report = validate_checkout(dir.path(), &Policy::default(), &cli().await, "pb-test").await;
    assert_eq!(
        report.errors[0].to_string(),
        format!(
            "{CONFIG}: `compose.service` names service `web`, which {COMPOSE} does not define (it has: app)"
        )
    );
}

#[tokio::test]
async fn missing_files_and_links_out_of_the_checkout_are_refused() {
    let empty = tempfile::tempdir().unwrap();
    let report = validate_checkout(empty.path(), &Policy::default(), &cli().await, "pb-test").await;
    assert!(
        report.errors[0]
            .to_string()
            .starts_with(&format!("{CONFIG}: cannot be read")),
        "{report:?}"
    );

    let dir = checkout(&[(CONFIG, GOOD_CONFIG)]);
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join(COMPOSE)).unwrap();
    let report = validate_checkout(dir.path(), &Policy::default(), &cli().await, "pb-test").await;
    assert!(!report.is_valid());
    assert!(
        report.violations.iter().any(|v| v
            .to_string()
            .contains("is a link to a file outside the checkout")),
        "{report:?}"
    );
}

#[test]
fn rule_names_round_trip() {
    for rule in Rule::ALL {
        assert_eq!(Rule::from_name(rule.name()), Some(rule));
    }
    assert_eq!(Rule::from_name("everything"), None);
}

/// A compose file is hostile input: an alias bomb (a billion `lol`s from a few hundred bytes)
/// must be refused by the parser's budget before Compose ever sees it.
#[tokio::test]
async fn an_alias_bomb_is_refused_not_expanded() {
    let mut yaml = String::from(
        "x-a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        yaml.push_str(&format!(
            "x-{next}: &{next} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    yaml.push_str("services:\n  app:\n    image: x\n    command: *i\n");
    let report = validate(&yaml, &[], &Policy::default()).await;
    assert!(
        report.errors.iter().any(|e| e.message.contains("budget")),
        "{report:?}"
    );
}
