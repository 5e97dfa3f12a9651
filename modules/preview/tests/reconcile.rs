//! The reconciler in-process, against the sandbox GitHub and the real Docker engine: repair of
//! vanished containers, eviction past `max_previews` (with the comment saying so, and no comeback
//! without a push), orphan removal, expiry, and the fork, draft and label rules. Each pass is
//! awaited with `Previews::idle`, so nothing here sleeps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use productbuilder_github::{
    BudgetLimits, ClientConfig, Credentials, GithubClient, GithubState, Token, poll_pulls,
};
use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};
use productbuilder_planner::{RepoIdCell, Tenant};
use productbuilder_preview::compose::project_name;
use productbuilder_preview::db::DeletedReason;
use productbuilder_preview::state::Status;
use productbuilder_preview::{MARKER, Previews, Settings, TenantRules};
use productbuilder_store::Store;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn app(version: &str) -> NewPr {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-preview");
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    NewPr::new(version, "octocat", version)
        .with_file("Dockerfile", read("Dockerfile"))
        .with_file(
            ".productbuilding/preview/config.yml",
            read(".productbuilding/preview/config.yml"),
        )
        .with_file(
            ".productbuilding/preview/docker-compose.yml",
            read(".productbuilding/preview/docker-compose.yml"),
        )
        .with_file("www/index.html", format!("<p>{version}</p>\n"))
        .with_file("busybox", std::fs::read("/bin/busybox").unwrap())
}

struct World {
    sandbox: Sandbox,
    github: GithubState,
    store: Store,
    tenant: Arc<Tenant>,
    repo: String,
    network: String,
    dir: tempfile::TempDir,
}

impl World {
    async fn new(name: &str) -> World {
        let sandbox = Sandbox::start().await.unwrap();
        let unique = format!("{name}{}", std::process::id());
        let repo = format!("acme/{unique}");
        sandbox.add_token("tok", "bot");
        sandbox.create_repo("acme", &unique);
        sandbox.grant("bot", &repo, Permission::Push);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        store.migrate().unwrap();
        let client = GithubClient::new(
            ClientConfig {
                api_url: sandbox.url(),
                credentials: Credentials::Token(Token::new("tok")),
                limits: BudgetLimits {
                    write_gap: Duration::ZERO,
                    ..BudgetLimits::default()
                },
                request_timeout: Duration::from_secs(10),
            },
            store.clone(),
        )
        .unwrap();
        let tenant = Arc::new(Tenant {
            owner: "acme".into(),
            name: unique.clone(),
            poll_interval: Duration::from_secs(1),
            previews: true,
            slack_channel: None,
            source: "tenants/test.toml".into(),
            repo_id: RepoIdCell::default(),
        });
        World {
            sandbox,
            github: GithubState::new(client, store.clone()),
            store,
            tenant,
            network: format!("pb-rec-{unique}"),
            repo,
            dir,
        }
    }

    fn previews(&self, max_previews: usize, ttl: Duration, rules: TenantRules) -> Previews {
        Previews::new(
            Settings {
                state_dir: self.dir.path().join("state"),
                domain: "test.localhost".into(),
                url_template: "http://{repo}-pr-{number}.{domain}".into(),
                compose_command: vec!["docker".into(), "compose".into()],
                network: self.network.clone(),
                entrypoint: "web".into(),
                cert_resolver: None,
                max_previews,
                max_builds: 2,
                ttl,
                public_url: None,
                limits: Default::default(),
            },
            HashMap::from([(self.repo.clone(), rules)]),
            self.store.clone(),
            self.github.clone(),
        )
    }

    /// One poll and one reconcile, then everything they started, to the end.
    async fn pass(&self, previews: &Previews) {
        poll_pulls(&self.github, &self.tenant).await.unwrap();
        previews.reconcile(&self.repo).await.unwrap();
        previews.idle().await;
    }

    async fn status(&self, previews: &Previews, number: u64) -> (Status, Option<DeletedReason>) {
        let row = previews.get(&self.repo, number).await.unwrap().unwrap();
        (row.status, row.deleted_reason)
    }

    fn containers(&self, number: u64) -> Vec<String> {
        let label = format!(
            "label=com.docker.compose.project={}",
            project_name(&self.repo, number)
        );
        docker(&["ps", "-aq", "--filter", &label])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    async fn clean_up(&self, previews: &Previews) {
        previews.remove_all().await;
        previews.idle().await;
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_eviction_orphans_and_expiry() {
    let w = World::new("rec").await;
    let previews = w.previews(1, Duration::from_secs(3600), TenantRules::default());
    let outcome = async {
        // Deployed, then its container vanishes: the next pass repairs it.
        let one = w.sandbox.open_pr(&w.repo, app("one"));
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, one).await.0, Status::Ready);
        for id in w.containers(one) {
            docker(&["rm", "-f", &id]);
        }
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, one).await.0, Status::Ready);
        assert_eq!(w.containers(one).len(), 1);

        // A second pull request on a host that holds one preview: the older one makes room, says
        // so in its comment, and stays removed until a push.
        let two = w.sandbox.open_pr(&w.repo, app("two"));
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, two).await.0, Status::Ready);
        assert_eq!(
            w.status(&previews, one).await,
            (Status::Deleted, Some(DeletedReason::Evicted))
        );
        assert!(w.containers(one).is_empty());
        let comments = w.sandbox.comments(&w.repo, one);
        assert_eq!(comments.len(), 1);
        assert!(comments[0].body.starts_with(MARKER));
        assert!(
            comments[0].body.contains("Removed to make room"),
            "{}",
            comments[0].body
        );
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, one).await.0, Status::Deleted);

        // A container labelled for this tenant that no preview accounts for is removed.
        let image = docker(&[
            "inspect",
            "--format",
            "{{.Config.Image}}",
            &w.containers(two)[0],
        ]);
        let orphan_project = project_name(&w.repo, 99);
        docker(&[
            "run",
            "-d",
            "--label",
            "productbuilder.managed=true",
            "--label",
            &format!("productbuilder.tenant={}", w.repo),
            "--label",
            "productbuilder.pr=99",
            "--label",
            &format!("com.docker.compose.project={orphan_project}"),
            &image,
        ]);
        assert_eq!(w.containers(99).len(), 1);
        w.pass(&previews).await;
        assert!(w.containers(99).is_empty(), "the orphan is left");
        assert_eq!(w.status(&previews, two).await.0, Status::Ready);

        // Not updated within the TTL: removed, and not brought back by the next pass.
        let expiring = w.previews(1, Duration::ZERO, TenantRules::default());
        w.pass(&expiring).await;
        assert_eq!(
            w.status(&expiring, two).await,
            (Status::Deleted, Some(DeletedReason::Expired))
        );
        assert!(w.containers(two).is_empty());
        w.pass(&expiring).await;
        assert_eq!(w.status(&expiring, two).await.0, Status::Deleted);

        // A push brings an expired preview back.
        w.sandbox.push(
            &w.repo,
            two,
            vec![("www/index.html".into(), b"<p>three</p>\n".to_vec())],
        );
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, two).await.0, Status::Ready);
    }
    .await;
    w.clean_up(&previews).await;
    assert!(w.containers(1).is_empty() && w.containers(2).is_empty());
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_drafts_and_labels_decide_what_is_deployed() {
    let w = World::new("gate").await;
    let previews = w.previews(20, Duration::from_secs(3600), TenantRules::default());
    let outcome = async {
        let fork = w.sandbox.open_pr(&w.repo, app("fork").from_fork());
        let draft = w.sandbox.open_pr(&w.repo, app("draft").as_draft());
        w.pass(&previews).await;
        for number in [fork, draft] {
            assert!(
                previews.get(&w.repo, number).await.unwrap().is_none(),
                "#{number} was deployed"
            );
        }
        // A maintainer labels the fork's pull request: now it deploys.
        w.sandbox
            .set_labels(&w.repo, fork, vec!["preview".to_owned()]);
        w.pass(&previews).await;
        assert_eq!(w.status(&previews, fork).await.0, Status::Ready);
        // The label removed again: the preview goes, as unwanted.
        w.sandbox.set_labels(&w.repo, fork, Vec::new());
        w.pass(&previews).await;
        assert_eq!(
            w.status(&previews, fork).await,
            (Status::Deleted, Some(DeletedReason::Unwanted))
        );
        assert!(w.containers(fork).is_empty());
    }
    .await;
    w.clean_up(&previews).await;
    outcome
}
