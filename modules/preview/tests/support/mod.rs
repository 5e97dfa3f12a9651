//! A sandbox GitHub, a store and a `Previews` on the real engine, for the reconciler's tests and
//! the push-to-ready benchmark (included by both with `#[path]`).

#![allow(dead_code)]

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
use productbuilder_preview::{Egress, Previews, Settings, TenantRules};
use productbuilder_store::Store;

pub fn docker(args: &[&str]) -> String {
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

/// The example app's Dockerfile with `lines` added after it copies the site.
pub fn dockerfile_with(lines: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-preview");
    std::fs::read_to_string(root.join("Dockerfile"))
        .unwrap()
        .replace("COPY www /www", &format!("COPY www /www\n{lines}"))
}

pub fn app(version: &str) -> NewPr {
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

pub struct World {
    pub sandbox: Sandbox,
    pub github: GithubState,
    pub store: Store,
    pub tenant: Arc<Tenant>,
    pub repo: String,
    pub network: String,
    pub dir: tempfile::TempDir,
}

impl World {
    pub async fn new(name: &str) -> World {
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
                // The sandbox is no GitHub: no content-write caps, or reports would pace the runs.
                limits: BudgetLimits {
                    write_gap: Duration::ZERO,
                    writes_per_minute: 100_000,
                    writes_per_hour: 100_000,
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

    pub fn previews(&self, max_previews: usize, ttl: Duration, rules: TenantRules) -> Previews {
        self.previews_with(max_previews, ttl, rules, Egress::Open)
    }

    /// A second repository in the same sandbox, for tests across tenants: its name and tenant.
    pub fn second_tenant(&self, name: &str) -> (String, Arc<Tenant>) {
        let unique = format!("{name}{}", std::process::id());
        let repo = format!("acme/{unique}");
        self.sandbox.create_repo("acme", &unique);
        self.sandbox.grant("bot", &repo, Permission::Push);
        let tenant = Arc::new(Tenant {
            name: unique,
            ..(*self.tenant).clone()
        });
        (repo, tenant)
    }

    /// [`World::previews`] for this world's repository and `others`, each with default rules.
    pub fn previews_for(&self, others: &[&str], max_previews: usize) -> Previews {
        let mut rules = HashMap::from([(self.repo.clone(), TenantRules::default())]);
        for repo in others {
            rules.insert((*repo).to_owned(), TenantRules::default());
        }
        self.previews_with_rules(max_previews, Duration::from_secs(3600), rules, Egress::Open)
    }

    pub fn previews_with(
        &self,
        max_previews: usize,
        ttl: Duration,
        rules: TenantRules,
        egress: Egress,
    ) -> Previews {
        self.previews_with_rules(
            max_previews,
            ttl,
            HashMap::from([(self.repo.clone(), rules)]),
            egress,
        )
    }

    fn previews_with_rules(
        &self,
        max_previews: usize,
        ttl: Duration,
        rules: HashMap<String, TenantRules>,
        egress: Egress,
    ) -> Previews {
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
                egress,
                // No wait before retrying a deploy the host failed: tests drive the passes.
                host_retry: Duration::ZERO,
                docker_config: None,
            },
            rules,
            self.store.clone(),
            self.github.clone(),
        )
    }

    /// One poll and one reconcile, then everything they started, to the end.
    pub async fn pass(&self, previews: &Previews) {
        poll_pulls(&self.github, &self.tenant).await.unwrap();
        previews.reconcile(&self.repo).await.unwrap();
        previews.idle().await;
    }

    pub async fn status(
        &self,
        previews: &Previews,
        number: u64,
    ) -> (Status, Option<DeletedReason>) {
        let row = previews.get(&self.repo, number).await.unwrap().unwrap();
        (row.status, row.deleted_reason)
    }

    pub fn containers(&self, number: u64) -> Vec<String> {
        let label = format!(
            "label=com.docker.compose.project={}",
            project_name(&self.repo, number)
        );
        docker(&["ps", "-aq", "--filter", &label])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs a test's body, then cleans up whether it passed or panicked (then panics again).
    pub async fn guarded(&self, previews: &Previews, body: impl std::future::Future<Output = ()>) {
        use futures_util::FutureExt;
        let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
        self.clean_up(previews).await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    pub async fn clean_up(&self, previews: &Previews) {
        previews.remove_all().await;
        previews.idle().await;
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}
