//! What one preview can reach, on the real engine: not another preview, not the world when the
//! host says `egress = "none"`; and what it is given: the tenant's secrets for a same-repository
//! pull request, never for a fork's, and never in a comment, the table or a file.

mod support;

use std::process::{Child, Command};
use std::time::Duration;

use productbuilder_preview::reconcile::{PreviewVar, Secret};
use productbuilder_preview::state::Status;
use productbuilder_preview::{Egress, TenantRules};
use support::{World, app, docker};

/// `wget` from inside `container` (the example image is busybox); whether it got the page.
/// One test of this file at a time: they measure the engine's network isolation, and dockerd
/// rewrites its isolation rules whenever a network comes or goes (another test's preview, the
/// router test's own network), so a check made during that rewrite can see a connection pass.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fetch_from(container: &str, url: &str) -> bool {
    Command::new("docker")
        .args([
            "exec",
            container,
            "/bin/busybox",
            "timeout",
            "4",
            "/bin/busybox",
            "wget",
            "-q",
            "-O",
            "-",
            url,
        ])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

fn address(container: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        container,
    ])
    .split_whitespace()
    .next()
    .expect("the container has an address")
    .to_owned()
}

fn env_of(container: &str) -> String {
    docker(&["inspect", "--format", "{{json .Config.Env}}", container])
}

const SECRET: &str = "s3cr3t-never-shown-4711";

fn rules_with_env() -> TenantRules {
    TenantRules {
        allow_forks: true,
        env: vec![
            PreviewVar {
                service: "app".into(),
                name: "API_KEY".into(),
                value: Secret::new(SECRET),
                secret: true,
            },
            PreviewVar {
                service: "app".into(),
                name: "GREETING".into(),
                value: Secret::new("hello $HOME"),
                secret: false,
            },
        ],
        ..TenantRules::default()
    }
}

fn files_containing(dir: &std::path::Path, needle: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            files_containing(&path, needle, out);
        } else if std::fs::read(&path)
            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            out.push(path.display().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_cannot_reach_each_other_and_secrets_reach_only_same_repository_pulls() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let w = World::new("iso").await;
    let previews = w.previews(5, Duration::from_secs(3600), rules_with_env());
    w.guarded(&previews, async {
        let own = w.sandbox.open_pr(&w.repo, app("own"));
        let fork = w.sandbox.open_pr(&w.repo, app("fork").from_fork());
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, own).await.0, Status::Ready);
        assert_eq!(w.status(&previews, fork).await.0, Status::Ready);
        let own_c = w.containers(own)[0].clone();
        let fork_c = w.containers(fork)[0].clone();

        // Each preview on its own network: one cannot open a connection to the other, though
        // both serve (the host reaches both, and each reaches itself).
        let (own_ip, fork_ip) = (address(&own_c), address(&fork_c));
        assert_ne!(
            own_ip.rsplit_once('.').map(|p| p.0),
            fork_ip.rsplit_once('.').map(|p| p.0),
            "two previews share a subnet"
        );
        assert!(
            fetch_from(&own_c, &format!("http://{own_ip}:8080/")),
            "control: itself"
        );
        assert!(
            reqwest_free_get(&format!("{fork_ip}:8080")),
            "control: the host reaches the other preview"
        );
        assert!(
            !fetch_from(&own_c, &format!("http://{fork_ip}:8080/")),
            "one preview reached another's container"
        );
        assert!(!fetch_from(&fork_c, &format!("http://{own_ip}:8080/")));

        // The tenant's secret reaches the same-repository pull request's service; the plain
        // variable reaches both, `$` and all; the fork's preview runs without the secret.
        let own_env = env_of(&own_c);
        assert!(own_env.contains(&format!("API_KEY={SECRET}")), "{own_env}");
        assert!(own_env.contains("GREETING=hello $HOME"), "{own_env}");
        let fork_env = env_of(&fork_c);
        assert!(!fork_env.contains("API_KEY"), "{fork_env}");
        assert!(fork_env.contains("GREETING=hello $HOME"), "{fork_env}");

        // Nowhere else: not in a comment, not in the table, not in a file of the workspaces.
        for number in [own, fork] {
            for comment in w.sandbox.comments(&w.repo, number) {
                assert!(!comment.body.contains(SECRET), "{}", comment.body);
            }
        }
        let rows = format!("{:?}", previews.list().await.unwrap());
        assert!(!rows.contains(SECRET));
        let mut found = Vec::new();
        files_containing(w.dir.path(), SECRET, &mut found);
        assert!(found.is_empty(), "the secret is on disk in {found:?}");
    })
    .await;
}

/// A plain HTTP GET from the host, with no client crate: whether it answered 200.
fn reqwest_free_get(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &addr.parse().expect("ip:port"),
        Duration::from_secs(3),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200")
}

/// A host outside every Docker network, as the internet or a metadata endpoint is: a network
/// namespace behind a veth pair, serving HTTP on 10.213.77.2:18080. Traffic to it is forwarded by
/// the host, as traffic to the world is.
struct Outside {
    ns: String,
    server: Child,
}

impl Outside {
    fn start() -> Outside {
        let ns = format!("pbeg{}", std::process::id());
        let host_if = format!("{ns}h");
        let ns_if = format!("{ns}n");
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("iproute2");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns]);
        ip(&["addr", "add", "10.213.77.1/30", "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &ns, "addr", "add", "10.213.77.2/30", "dev", &ns_if]);
        ip(&["-n", &ns, "link", "set", &ns_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", "10.213.77.1"]);
        let www = std::env::temp_dir().join(format!("{ns}-www"));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "outside\n").unwrap();
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "/bin/busybox", "httpd", "-f", "-p"])
            .arg("10.213.77.2:18080")
            .arg("-h")
            .arg(&www)
            .spawn()
            .expect("busybox httpd in the namespace");
        Outside { ns, server }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}h", self.ns)])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_egress_a_preview_cannot_connect_out_of_its_network() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let outside = Outside::start();
    let url = "http://10.213.77.2:18080/";

    let open = World::new("egro").await;
    let open_previews = open.previews(5, Duration::from_secs(3600), TenantRules::default());
    let closed = World::new("egrn").await;
    let closed_previews = closed.previews_with(
        5,
        Duration::from_secs(3600),
        TenantRules::default(),
        Egress::None,
    );
    open.guarded(&open_previews, async {
        closed
            .guarded(&closed_previews, async {
                let a = open.sandbox.open_pr(&open.repo, app("open"));
                let b = closed.sandbox.open_pr(&closed.repo, app("closed"));
                open.pass(&open_previews).await;
                closed.pass(&closed_previews).await;
                assert_eq!(open.status(&open_previews, a).await.0, Status::Ready);
                // Health is checked on the container's address: an internal network publishes
                // no port.
                assert_eq!(closed.status(&closed_previews, b).await.0, Status::Ready);
                let (open_c, closed_c) = (
                    open.containers(a)[0].clone(),
                    closed.containers(b)[0].clone(),
                );
                // Control: with egress open the outside host answers, so the refusal below is
                // the network's, not the probe's.
                let mut reached = false;
                for _ in 0..20 {
                    if fetch_from(&open_c, url) {
                        reached = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                assert!(reached, "control: an open preview reaches the outside host");
                assert!(
                    !fetch_from(&closed_c, url),
                    "a preview with egress = \"none\" reached a host outside its network"
                );
            })
            .await;
    })
    .await;
    drop(outside);
}

/// The router joins a preview's own network when it starts, joins it again when it was recreated
/// since (detached here by hand), and leaves it at teardown so that the network can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_follows_the_previews_networks() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let w = World::new("rtr").await;
    let previews = w.previews(5, Duration::from_secs(3600), TenantRules::default());
    docker(&["network", "create", &w.network]);
    let name = format!("pb-rtr-traefik-{}", std::process::id());
    let router = productbuilder_preview::router::Traefik::start(&name, &w.network, 0)
        .await
        .expect("Traefik starts (scripts/traefik-image builds its image)");
    let networks_of = |c: &str| {
        docker(&[
            "inspect",
            "--format",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            c,
        ])
    };
    w.guarded(&previews, async {
        let number = w.sandbox.open_pr(&w.repo, app("routed"));
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, number).await.0, Status::Ready);
        let row = previews.get(&w.repo, number).await.unwrap().unwrap();
        let own = format!("{}_default", row.project);
        assert!(networks_of(&name).contains(&own), "{}", networks_of(&name));

        docker(&["network", "disconnect", &own, &name]);
        w.pass(&previews).await;
        assert!(networks_of(&name).contains(&own), "attached again");

        w.sandbox.close_pr(&w.repo, number, false);
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, number).await.0, Status::Deleted);
        assert!(!networks_of(&name).contains(&own), "{}", networks_of(&name));
        assert_eq!(
            docker(&["network", "ls", "-q", "--filter", &format!("name={own}")]),
            "",
            "the preview's network is gone"
        );
    })
    .await;
    router.stop().await;
    // The shared network this test created (the daemon's is created by the reconciler).
    docker(&["network", "rm", &w.network]);
}
