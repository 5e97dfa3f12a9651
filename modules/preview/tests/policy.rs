//! The compose policy, one hostile construct per row.

use productbuilder_preview::policy::{Policy, Rule, check};

const PATH: &str = ".productbuilding/preview/docker-compose.yml";

fn violations(yaml: &str) -> Vec<String> {
    let (_, found) = check(yaml, PATH, &Policy::default()).expect("valid YAML");
    found.iter().map(|v| v.to_string()).collect()
}

#[test]
fn a_plain_compose_file_passes_and_lists_its_services() {
    let yaml = r#"
services:
  app:
    build: ../..
    ports: ["8080:8080"]
    volumes:
      - data:/var/lib/app
      - ./seed:/seed:ro
      - type: bind
        source: ../../static
        target: /static
    env_file: ../../.env.preview
    cap_drop: [ALL]
    network_mode: service:db
  db:
    image: postgres
volumes:
  data: {}
"#;
    let (services, found) = check(yaml, PATH, &Policy::default()).unwrap();
    assert_eq!(services, ["app", "db"]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn each_dangerous_construct_is_refused_with_its_rule_and_line() {
    let cases: &[(&str, Rule, &str)] = &[
        (
            "services:\n  app:\n    privileged: true\n",
            Rule::Privileged,
            ":3: service `app` is privileged",
        ),
        (
            "services:\n  app:\n    network_mode: host\n",
            Rule::HostNamespace,
            ":3: service `app` sets `network_mode: host`",
        ),
        (
            "services:\n  app:\n    pid: host\n",
            Rule::HostNamespace,
            ":3: service `app` sets `pid: host`",
        ),
        (
            "services:\n  app:\n    ipc: host\n",
            Rule::HostNamespace,
            ":3: service `app` sets `ipc: host`",
        ),
        (
            "services:\n  app:\n    network_mode: container:other\n",
            Rule::HostNamespace,
            "`network_mode: container:other`",
        ),
        (
            "services:\n  app:\n    cap_add: [SYS_ADMIN]\n",
            Rule::CapAdd,
            ":3: service `app` adds capabilities",
        ),
        (
            "services:\n  app:\n    devices: [\"/dev/kvm:/dev/kvm\"]\n",
            Rule::Devices,
            ":3: service `app` uses host devices (`devices`)",
        ),
        (
            "services:\n  app:\n    security_opt: [\"seccomp:unconfined\"]\n",
            Rule::SecurityOpt,
            "disables confinement",
        ),
        (
            "services:\n  app:\n    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n",
            Rule::DockerSocket,
            ":3: mentions the Docker socket",
        ),
        (
            "services:\n  app:\n    environment:\n      DOCKER_HOST: unix:///run/docker.sock\n",
            Rule::DockerSocket,
            ":4: mentions the Docker socket",
        ),
        (
            "services:\n  app:\n    volumes: [\"/etc:/host-etc\"]\n",
            Rule::HostPath,
            "service `app` mounts \"/etc\" from outside the checkout",
        ),
        (
            "services:\n  app:\n    volumes: [\"../../../:/up\"]\n",
            Rule::HostPath,
            "mounts \"../../../\" from outside the checkout",
        ),
        (
            "services:\n  app:\n    volumes: [\"~/.ssh:/ssh\"]\n",
            Rule::HostPath,
            "mounts \"~/.ssh\"",
        ),
        (
            "services:\n  app:\n    volumes:\n      - type: bind\n        source: /\n        target: /host\n",
            Rule::HostPath,
            "mounts \"/\" from outside",
        ),
        (
            "services:\n  app:\n    build: /srv/other\n",
            Rule::HostPath,
            "builds from \"/srv/other\", outside the checkout",
        ),
        (
            "services:\n  app:\n    build:\n      context: ../../..\n",
            Rule::HostPath,
            "builds from \"../../..\"",
        ),
        (
            "services:\n  app:\n    env_file: /etc/environment\n",
            Rule::HostPath,
            "reads `env_file` \"/etc/environment\"",
        ),
        (
            "services:\n  app:\n    image: x\nsecrets:\n  key:\n    file: /root/.ssh/id_rsa\n",
            Rule::HostPath,
            "secrets `key` reads \"/root/.ssh/id_rsa\"",
        ),
        (
            "services:\n  app:\n    image: x\nvolumes:\n  v:\n    driver_opts:\n      type: none\n      o: bind\n      device: /home\n",
            Rule::HostPath,
            "volume `v` binds \"/home\"",
        ),
        (
            "include:\n  - /etc/compose.yml\nservices:\n  app:\n    image: x\n",
            Rule::HostPath,
            "includes \"/etc/compose.yml\"",
        ),
    ];
    for (yaml, rule, want) in cases {
        let (_, found) = check(yaml, PATH, &Policy::default()).unwrap();
        let hit = found.iter().find(|v| v.rule == *rule);
        let shown: Vec<String> = found.iter().map(|v| v.to_string()).collect();
        assert!(
            hit.is_some_and(|v| v.to_string().contains(want)),
            "for\n{yaml}\nwanted {rule:?} …{want}\ngot {shown:#?}"
        );
        // The same file passes when the tenant allows exactly that rule.
        let allowed = Policy {
            allowed: [*rule].into(),
        };
        let (_, rest) = check(yaml, PATH, &allowed).unwrap();
        assert!(rest.iter().all(|v| v.rule != *rule), "{yaml}");
    }
}

#[test]
fn rule_names_round_trip() {
    for rule in Rule::ALL {
        assert_eq!(Rule::from_name(rule.name()), Some(rule));
    }
    assert_eq!(Rule::from_name("everything"), None);
}

#[test]
fn broken_or_empty_compose_files_are_findings_not_panics() {
    let e = check("services: [", PATH, &Policy::default()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(".productbuilding/preview/docker-compose.yml:"),
        "{e}"
    );
    let e = check("version: '3'\n", PATH, &Policy::default()).unwrap_err();
    assert!(e.to_string().ends_with("has no `services` mapping"), "{e}");
    assert!(violations("services: {}\n").is_empty());
}

/// A compose file is hostile input: an alias bomb (a billion `lol`s from a few hundred bytes)
/// must be refused by the parser's budget, not expanded into memory.
#[test]
fn an_alias_bomb_is_refused_not_expanded() {
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
    let finding =
        check(&yaml, "compose.yml", &Policy::default()).expect_err("the bomb is a finding");
    assert_eq!(finding.file, "compose.yml");
    assert!(finding.message.contains("budget"), "{}", finding.message);
    // The same shape, small, is fine: the refusal is the budget's, not the syntax's.
    let small = "x-a: &a [\"lol\"]\nservices:\n  app:\n    image: x\n    command: *a\n";
    assert!(check(small, "compose.yml", &Policy::default()).is_ok());
}
