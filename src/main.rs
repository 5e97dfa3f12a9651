//! `productbuilder`: the binary and its wiring. The work happens in the crates under `modules/`;
//! this file parses the command line, loads the configuration, connects the modules to each other
//! in one visible place, and maps every outcome to an exit code (here and nowhere else).

// The configuration already carries the keys of features that later issues wire in (Slack, the
// LLM agent, builds): the contract fixes them, so they are parsed and checked today.
#[allow(dead_code)]
mod config;
mod dashboard;
#[cfg(feature = "demo")]
mod demo;
mod http;
mod kernel;
mod metrics;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use productbuilder_builds::BuildsModule;
use productbuilder_github::webhook::Deliveries;
use productbuilder_github::{
    BudgetLimits, ClientConfig, Credentials, GithubClient, GithubModule, GithubState, Token,
};
use productbuilder_planner::{
    Module, PlanError, RepoIdCell, Subscription, Tenant, check_names, plan, subscriptions,
};
use productbuilder_preview::policy::Policy;
use productbuilder_preview::runner::ComposeCli;
use productbuilder_preview::{PreviewModule, Previews};
use productbuilder_routes::Module as HttpModule;
use productbuilder_scheduler::{
    Phase, Schedule, Scheduler, SchedulerOptions, StartupFailed, UnitSpec,
};
use productbuilder_slack::SlackModule;
use productbuilder_slack::api::SlackApi;
use productbuilder_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{Config, ConfigError, GithubAuth, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "productbuilder",
    version,
    about = "Live previews of every open pull request, polled from GitHub, deployed with Docker Compose behind Traefik"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The main configuration file.
    #[arg(long, env = "PRODUCTBUILDER_CONFIG", value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: migrations, preflights, then interval workers until SIGINT/SIGTERM.
    Run(ConfigArg),
    /// Print every unit the planner produces (name, phase, interval); touches no network.
    Plan(ConfigArg),
    /// Validate the configuration; with --online also check what can be reached from here.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also check the database, the state directory, every repository with the credentials,
        /// and (when previews are on) the Docker engine and the Compose CLI.
        #[arg(long)]
        online: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate(ConfigArg),
    #[cfg(feature = "demo")]
    /// The whole pipeline on an embedded sandbox GitHub: the example repository with an open pull
    /// request, deployed for real; dashboard on 127.0.0.1:8091. No token needed.
    Demo {
        /// Where the dashboard and API listen (for a busy 8091).
        #[arg(long, default_value = demo::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// The loopback port Traefik publishes the preview on (for a busy 8092).
        #[arg(long, default_value_t = demo::DEFAULT_ROUTER_PORT)]
        router_port: u16,
    },
    /// Tools for target repository authors.
    Preview {
        #[command(subcommand)]
        action: PreviewCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PreviewCommand {
    /// Check a checkout's .productbuilding/preview/config.yml and its compose file against the
    /// preview policy, offline.
    Validate {
        /// The repository checkout (default: the current directory).
        dir: Option<PathBuf>,
    },
}

/// How a command failed, which decides the exit code.
enum Failure {
    /// Bad configuration or usage: exit 2.
    Invalid(String),
    /// A global preflight failed for good, no tenant can start, or the daemon could not run:
    /// exit 1.
    Failed(String),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Invalid(format!("invalid configuration:\n{e}"))
    }
}

impl From<PlanError> for Failure {
    fn from(e: PlanError) -> Self {
        Failure::Invalid(e.to_string())
    }
}

impl From<StartupFailed> for Failure {
    fn from(e: StartupFailed) -> Self {
        match e {
            StartupFailed::Global(e) => Failure::Failed(format!("preflight failed: {e}")),
            every @ StartupFailed::EveryTenant(_) => Failure::Failed(every.to_string()),
        }
    }
}

fn main() -> ExitCode {
    // Once, before any TLS client exists: the dependency graph enables both ring and aws-lc-rs,
    // and rustls then picks neither by itself (slack-morphism's connector would panic). An
    // `Err` means one is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let outcome = match cli.command {
        Command::Run(args) => config::load(&args.config)
            .map_err(Failure::from)
            .and_then(run),
        Command::Plan(args) => config::load(&args.config)
            .map_err(Failure::from)
            .and_then(|c| print_plan(&c)),
        Command::Check { config, online } => config::load(&config.config)
            .map_err(Failure::from)
            .and_then(|c| check(&c, online)),
        Command::Migrate(args) => config::load(&args.config)
            .map_err(Failure::from)
            .and_then(|c| migrate(&c)),
        #[cfg(feature = "demo")]
        Command::Demo {
            listen,
            router_port,
        } => demo::run(demo::Ports {
            listen,
            router_port,
        }),
        Command::Preview {
            action: PreviewCommand::Validate { dir },
        } => preview_validate(&dir.unwrap_or_else(|| PathBuf::from("."))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(message)) => {
            eprintln!("productbuilder: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("productbuilder: {message}");
            ExitCode::from(1)
        }
    }
}

/// The tenants as units see them.
fn tenants(config: &Config) -> Vec<Arc<Tenant>> {
    config
        .tenants
        .iter()
        .map(|t| {
            Arc::new(Tenant {
                owner: t.owner.clone(),
                name: t.name.clone(),
                poll_interval: t.poll_interval,
                source: t.source.display().to_string(),
                repo_id: RepoIdCell::default(),
            })
        })
        .collect()
}

/// No two tenants' previews may share a host (nor a Compose project, which the planner's encoding
/// already rules out): refused before anything runs.
fn names_apart(config: &Config, tenants: &[Arc<Tenant>]) -> Result<(), Failure> {
    let preview = &config.preview.settings;
    Ok(check_names(
        tenants,
        &preview.url_template,
        &preview.domain,
        &|t| config.preview.enabled(&t.repo()),
    )?)
}

/// Everything `run` needs besides the units themselves.
struct Wiring {
    units: Vec<UnitSpec>,
    /// Which feed nudges which unit, as the modules declared.
    subscriptions: Vec<Subscription>,
    github: GithubState,
    previews: Previews,
    slack: Option<SlackApi>,
    /// The build queue, with `[builds]`: the dashboard and `/metrics` read it.
    builds: Option<productbuilder_builds::Queue>,
    modules: Vec<Box<dyn HttpModule>>,
}

impl Wiring {
    /// Every module's HTTP routes, in module order.
    fn routes(&self) -> Vec<http::Route> {
        self.modules.iter().flat_map(|m| m.routes()).collect()
    }
}

/// The shared pieces modules are built from.
struct Shared<'a> {
    config: &'a Config,
    store: &'a Store,
    tenants: &'a [Arc<Tenant>],
    github: &'a GithubState,
    previews: &'a Previews,
    /// The Slack workspace's client, with `[slack]`.
    slack: &'a Option<SlackApi>,
}

/// The modules, and what the dashboard and `/metrics` read of them.
struct Modules {
    list: Vec<Box<dyn HttpModule>>,
    /// The build queue, with `[builds]`.
    builds: Option<productbuilder_builds::Queue>,
}

/// Every module, in the order their units are listed. Adding a module is a crate and one line
/// here: its units, routes and feeds are wired from what it declares.
fn modules(shared: &Shared<'_>) -> Result<Modules, Failure> {
    let Shared {
        config,
        store,
        tenants,
        github,
        previews,
        slack,
    } = shared;
    let run_timeout = config.scheduler.run_timeout;
    let builds = BuildsModule::new(
        config.builds.clone(),
        (*github).clone(),
        config.state_dir.clone(),
        tenants.iter().map(|t| t.repo()).collect(),
        // Build leases name their daemon: two on one database never take each other's builds.
        format!(
            "{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "productbuilder".into()),
            std::process::id()
        ),
        run_timeout,
    )
    .map_err(|e| Failure::Failed(format!("builds: {e}")))?;
    let queue = builds.queue().cloned();
    let responder = agent_responder(shared, queue.clone())?;
    let list: Vec<Box<dyn HttpModule>> = vec![
        Box::new(kernel::Kernel {
            store: (*store).clone(),
            tenants: tenants.to_vec(),
        }),
        Box::new(GithubModule {
            state: (*github).clone(),
            run_timeout,
        }),
        Box::new(PreviewModule {
            previews: (*previews).clone(),
            github: (*github).clone(),
            run_timeout,
            tenants: Arc::new(config.preview.switches()),
        }),
        Box::new(SlackModule {
            config: config.slack.clone(),
            api: (*slack).clone(),
            channels: Arc::new(config.slack_channels.clone()),
            run_timeout,
            github: (*github).clone(),
            github_web: github_web(&config.github.api_url),
            debounce: Arc::new(productbuilder_slack::debounce::StatusDebounce::new(
                productbuilder_slack::debounce::WINDOW,
            )),
            writers: Arc::new(config.slack_writers.clone()),
            responder,
        }),
        Box::new(builds),
        Box::new(
            productbuilder_agent::AgentModule::new(
                (*store).clone(),
                config.llm.as_ref().map(|l| l.trace_retention),
                run_timeout,
            )
            .with_loop(productbuilder_agent::LoopParts {
                slack: (*slack).clone(),
                queue: queue.clone(),
                previews: Some((*previews).clone()),
                max_fix_attempts: config.builds.as_ref().map_or(
                    productbuilder_builds::config::DEFAULT_MAX_FIX_ATTEMPTS,
                    |b| b.max_fix_attempts,
                ),
            })
            .map_err(|e| Failure::Failed(format!("agent: the system's root certificates: {e}")))?,
        ),
    ];
    Ok(Modules {
        list,
        builds: queue,
    })
}

/// The agent that answers Slack mentions, with `[llm]`: its tools act through the daemon's
/// GitHub client, the build queue (with `[builds]`) and the previews.
fn agent_responder(
    shared: &Shared<'_>,
    queue: Option<productbuilder_builds::Queue>,
) -> Result<Option<Arc<dyn productbuilder_slack::Responder>>, Failure> {
    let Some(llm) = &shared.config.llm else {
        return Ok(None);
    };
    let client = productbuilder_llm::LlmClient::new(llm.clone())
        .map_err(|e| Failure::Failed(format!("[llm]: {e}")))?;
    let tools = productbuilder_agent::GithubTools {
        client: shared.github.client.clone(),
        store: shared.store.clone(),
        queue,
        previews: Some(shared.previews.clone()),
    };
    Ok(Some(Arc::new(productbuilder_agent::AgentResponder {
        llm: Arc::new(client),
        tools: Arc::new(tools),
        traces: productbuilder_agent::Traces::new(shared.store.clone()),
        store: shared.store.clone(),
        web: github_web(&shared.config.github.api_url),
        limits: productbuilder_agent::Limits::default(),
    })))
}

/// The whole wiring: the shared GitHub client and previews, then every module.
fn wire(config: &Config, store: &Store) -> Result<Wiring, Failure> {
    let tenants = tenants(config);
    names_apart(config, &tenants)?;
    let credentials = match &config.github.auth {
        GithubAuth::Token(token) => Credentials::Token(Token::new(token.expose())),
        GithubAuth::App {
            app_id,
            private_key,
            installation_id,
        } => Credentials::app(*app_id, private_key.expose(), *installation_id).map_err(|e| {
            Failure::Invalid(format!(
                "{}: key `github.private_key_file`: {e}",
                config.file.display()
            ))
        })?,
    };
    let client = GithubClient::new(
        ClientConfig {
            api_url: config.github.api_url.clone(),
            credentials,
            limits: BudgetLimits {
                max_in_flight: config.github.max_in_flight,
                ..BudgetLimits::default()
            },
            request_timeout: config.github.request_timeout,
        },
        store.clone(),
    )
    .map_err(Failure::Invalid)?;
    let github = GithubState::new(client, store.clone());
    let previews = previews(config, store, &github);
    let slack = slack_api(config)?;
    let Modules {
        list: modules,
        builds,
    } = modules(&Shared {
        config,
        store,
        tenants: &tenants,
        github: &github,
        previews: &previews,
        slack: &slack,
    })?;
    let planned: Vec<&dyn Module> = modules.iter().map(|m| m.as_ref() as &dyn Module).collect();
    let units = plan(&planned, &tenants, config.github.poll_interval)?;
    let subscriptions = subscriptions(&planned, &tenants, &units)?;
    Ok(Wiring {
        units,
        subscriptions,
        github,
        previews,
        slack,
        builds,
        modules,
    })
}

/// GitHub's web origin for links, from the API's: `https://api.github.com` is github.com's,
/// Enterprise Server serves its API under `/api/v3`, and a sandbox serves both at one origin.
fn github_web(api_url: &str) -> String {
    let api = api_url.trim_end_matches('/');
    if api == "https://api.github.com" {
        return "https://github.com".to_owned();
    }
    api.strip_suffix("/api/v3").unwrap_or(api).to_owned()
}

/// The Slack client of the workspace, with `[slack]`: one, so that every unit spends one budget.
fn slack_api(config: &Config) -> Result<Option<SlackApi>, Failure> {
    let Some(slack) = &config.slack else {
        return Ok(None);
    };
    SlackApi::new(
        &slack.api_url,
        slack.bot_token.expose(),
        slack.history_requests_per_minute,
    )
    .map(Some)
    .map_err(|e| {
        Failure::Failed(format!(
            "cannot load the TLS root certificates for Slack: {e}"
        ))
    })
}

/// The previews of every tenant, with the host's `[preview]` settings and each tenant's rules.
fn previews(config: &Config, store: &Store, github: &GithubState) -> Previews {
    // Only tenants with previews on: the others' previews are swept at start-up.
    Previews::new(
        config.preview.settings.clone(),
        config.preview.rules(),
        store.clone(),
        github.clone(),
    )
}

/// The one piece of wiring between modules: every subscription (a module's declared wake on
/// another's feed, see `productbuilder_planner::feeds`) becomes a named task that nudges its unit
/// on each change of the feed, until `cancel` or the feed's end. Units never learn why they ran.
fn relay_feeds(
    subscriptions: Vec<Subscription>,
    nudge: impl Fn(&str) -> bool + Clone + Send + 'static,
    cancel: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    use futures_util::StreamExt;
    use tracing::Instrument;
    subscriptions
        .into_iter()
        .map(
            |Subscription {
                 feed,
                 unit,
                 mut changes,
             }| {
                let (nudge, cancel) = (nudge.clone(), cancel.clone());
                let span = tracing::info_span!("feed relay", %feed, %unit);
                tokio::spawn(
                async move {
                    loop {
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            change = changes.next() => match change {
                                Some(()) => {
                                    if !nudge(&unit) {
                                        tracing::debug!("feed changed; the unit is not scheduled");
                                    }
                                }
                                None => break,
                            },
                        }
                    }
                }
                .instrument(span),
            )
            },
        )
        .collect()
}

/// A single-threaded runtime for the short commands: the GitHub client needs one to exist, even
/// when (as in `plan`) it never sends anything.
fn small_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))
}

fn print_plan(config: &Config) -> Result<(), Failure> {
    let runtime = small_runtime()?;
    let _entered = runtime.enter();
    // An in-memory database: planning must not create or touch the state directory.
    let store = Store::in_memory().map_err(|e| Failure::Failed(e.to_string()))?;
    let units = wire(config, &store)?.units;
    let width = units.iter().map(|u| u.name.len()).max().unwrap_or(0);
    for unit in &units {
        let (phase, when) = match unit.schedule {
            Schedule::Preflight { stage } => ("preflight", format!("stage {stage}")),
            Schedule::Worker { interval } => (
                "worker",
                format!("every {}", humantime::format_duration(interval)),
            ),
            Schedule::Service { .. } => ("service", "restarted when it stops".to_owned()),
        };
        println!("{:width$}  {phase:9}  {when}", unit.name);
    }
    Ok(())
}

fn check(config: &Config, online: bool) -> Result<(), Failure> {
    let runtime = small_runtime()?;
    let _entered = runtime.enter();
    let store = Store::in_memory().map_err(|e| Failure::Failed(e.to_string()))?;
    let wiring = wire(config, &store)?;
    let (units, slack) = (wiring.units, wiring.slack);
    let on_off = |on: bool| if on { "on" } else { "off" };
    println!("config ok: {}", config.file.display());
    println!("  state_dir: {}", config.state_dir.display());
    println!("  tenants: {}", config.tenants.len());
    for t in &config.tenants {
        let preview = config.preview.tenants.get(&t.repo());
        println!(
            "    {} (every {}, previews {}) from {}",
            t.repo(),
            humantime::format_duration(t.poll_interval),
            on_off(preview.is_some_and(|p| p.enabled)),
            t.source.display()
        );
        // Names only: values are never printed.
        if let Some(rules) = preview.map(|p| &p.rules)
            && !rules.env.is_empty()
        {
            let names: Vec<String> = rules
                .env
                .iter()
                .map(|v| {
                    let secret = if v.secret { " (secret)" } else { "" };
                    format!("{}.{}{secret}", v.service, v.name)
                })
                .collect();
            let forks = if rules.secrets_for_forks {
                "given to forks too"
            } else {
                "withheld from forks"
            };
            println!("      preview env: {}; secrets {forks}", names.join(", "));
        }
    }
    let auth = match &config.github.auth {
        GithubAuth::Token(_) => "token (set)".to_owned(),
        GithubAuth::App {
            app_id,
            installation_id,
            ..
        } => match installation_id {
            Some(id) => format!("GitHub App {app_id}, installation {id}, private key (set)"),
            None => format!("GitHub App {app_id}, private key (set)"),
        },
    };
    println!("  github: {} with {auth}", config.github.api_url);
    println!(
        "  http: {} (api token {}, read token {}, webhook {})",
        config.http.listen,
        if config.http.api_token.is_some() {
            "set"
        } else {
            "not set: mutating routes answer 403"
        },
        if config.http.read_token.is_some() {
            "set"
        } else {
            "not set: read routes are open"
        },
        on_off(config.github.webhook_secret.is_some())
    );
    println!(
        "  slack {}, llm {}, builds {}",
        on_off(config.slack.is_some()),
        on_off(config.llm.is_some()),
        on_off(config.builds.is_some())
    );
    let count = |phase: Phase| units.iter().filter(|u| u.schedule.phase() == phase).count();
    let services = match count(Phase::Service) {
        0 => String::new(),
        n => format!(", {n} services"),
    };
    println!(
        "  units: {} ({} preflights, {} workers{services})",
        units.len(),
        count(Phase::Preflight),
        count(Phase::Worker),
    );
    if !online {
        return Ok(());
    }
    let mut ok = true;
    let db = config.database_path();
    if db.exists() {
        match Store::open(&db).and_then(|s| s.pending()) {
            Ok(pending) if pending.is_empty() => {
                println!("√ database {}: up to date", db.display())
            }
            Ok(pending) => println!(
                "~ database {}: {} migration(s) pending; `run` or `migrate` applies them",
                db.display(),
                pending.len()
            ),
            Err(e) => {
                ok = false;
                println!("x {e}");
            }
        }
    } else {
        match probe_writable(&config.state_dir) {
            Ok(()) => println!(
                "~ database {}: not created yet; `run` or `migrate` creates it",
                db.display()
            ),
            Err(e) => {
                ok = false;
                println!("x state_dir {}: {e}", config.state_dir.display());
            }
        }
    }
    // The same repository preflights `run` starts with, once each, against a scratch database.
    store
        .migrate()
        .map_err(|e| Failure::Failed(e.to_string()))?;
    for unit in units.iter().filter(|u| {
        u.name.starts_with("preflight:repository:") || u.name == "preflight:slack:global"
    }) {
        let ctx =
            productbuilder_scheduler::RunCtx::new(unit.name.as_str(), 1, CancellationToken::new());
        let outcome = runtime.block_on(tokio::time::timeout(unit.timeout, (unit.work)(ctx)));
        match outcome {
            Ok(Ok(())) => println!("√ {}", unit.name),
            Ok(Err(e)) => {
                ok = false;
                println!("x {}: {e}", unit.name);
            }
            Err(_) => {
                ok = false;
                println!("x {}: no answer within {:?}", unit.name, unit.timeout);
            }
        }
    }
    if config.preview.tenants.values().any(|t| t.enabled) {
        ok &= runtime.block_on(check_preview_host(config));
    }
    if let (Some(api), Some(slack_config)) = (&slack, &config.slack) {
        match &slack_config.app_token {
            Some(app_token) => match runtime
                .block_on(productbuilder_slack::socket::probe(api, app_token.expose()))
            {
                Ok(()) => println!(
                    "√ Slack Socket Mode: connected; mentions will arrive over Socket Mode"
                ),
                Err(e) => {
                    ok = false;
                    println!("x Slack Socket Mode: {e}");
                }
            },
            None => println!(
                "~ Slack: no [slack] app_token; mentions will be read by polling (history_requests_per_minute = {}, history_page_size = {})",
                slack_config.history_requests_per_minute, slack_config.history_page_size
            ),
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::Invalid("online checks failed (see above)".into()))
    }
}

/// The Docker engine, the shared network and its router, and the Compose CLI; prints one line
/// each and says whether previews can run here.
async fn check_preview_host(config: &Config) -> bool {
    use productbuilder_preview::engine::Engine;
    let mut ok = true;
    match Engine::connect().await {
        Ok(engine) => {
            match engine.version().await {
                Ok(version) => println!("√ Docker engine {version} at {}", engine.socket_name()),
                Err(e) => {
                    ok = false;
                    println!("x {e}");
                }
            }
            let network = &config.preview.settings.network;
            match engine.routers_on(network).await {
                Ok(None) => println!(
                    "! network {network} does not exist yet: `run` creates it; attach Traefik to it (README, \"On the host\")"
                ),
                Ok(Some(routers)) if routers.is_empty() => println!(
                    "! no Traefik container on network {network}: previews will deploy but nobody can reach them"
                ),
                Ok(Some(routers)) => {
                    println!("√ network {network} with Traefik: {}", routers.join(", "))
                }
                Err(e) => println!("! {e}"),
            }
        }
        Err(e) => {
            ok = false;
            println!("x {e}");
        }
    }
    match ComposeCli::detect(&config.preview.settings.compose_command).await {
        Ok(cli) => println!("√ Compose: `{}` ({})", cli.argv().join(" "), cli.version),
        Err(e) => {
            ok = false;
            println!("x {e}");
        }
    }
    println!(
        "{}",
        egress_line(config.preview.settings.egress, metadata_answers().await)
    );
    ok
}

/// The cloud instance metadata endpoint, which hands out the instance role's credentials.
const METADATA: ([u8; 4], u16) = ([169, 254, 169, 254], 80);

/// Whether something answers at the metadata address from this host. Traffic of a preview with
/// `egress = "open"` is forwarded from the host, so what the host reaches, previews reach too.
async fn metadata_answers() -> bool {
    let addr = std::net::SocketAddr::from(METADATA);
    matches!(
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// What `check --online` says of egress (pure, for its table test).
fn egress_line(egress: productbuilder_preview::Egress, metadata_answers: bool) -> String {
    use productbuilder_preview::Egress;
    match (egress, metadata_answers) {
        (Egress::None, _) => {
            "√ egress = \"none\": previews cannot open connections out of their networks".into()
        }
        (Egress::Open, true) => "! a metadata endpoint answers at 169.254.169.254, and previews (egress = \"open\") can reach it: unless the instance requires IMDSv2 with a hop limit of 1 (this check cannot tell), a pull request could read the instance role's credentials. Set [preview] egress = \"none\" (docs/operating.md, \"Security model\")".into(),
        (Egress::Open, false) => {
            "√ egress = \"open\": no metadata endpoint answers at 169.254.169.254".into()
        }
    }
}

/// Whether the state directory exists (or can be created) and accepts files.
fn probe_writable(dir: &std::path::Path) -> std::io::Result<()> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(std::path::Path::new("/"));
    }
    let probe = existing.join(".productbuilder-write-probe");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

fn migrate(config: &Config) -> Result<(), Failure> {
    let failed = |e: productbuilder_store::StoreError| Failure::Failed(e.to_string());
    let store = Store::open(config.database_path()).map_err(failed)?;
    let applied = store.migrate().map_err(failed)?;
    if applied.is_empty() {
        println!(
            "database {} is up to date",
            config.database_path().display()
        );
    }
    for m in applied {
        println!("applied {:04}_{}", m.version, m.name);
    }
    Ok(())
}

fn preview_validate(dir: &std::path::Path) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
    let report = runtime.block_on(async {
        // The policy checks the model Compose itself resolves: Compose v2 is required.
        let cli = ComposeCli::detect(&["docker".to_owned(), "compose".to_owned()])
            .await
            .map_err(|e| Failure::Failed(e.to_string()))?;
        Ok::<_, Failure>(
            productbuilder_preview::validate_checkout(dir, &Policy::default(), &cli, "pb-validate")
                .await,
        )
    })?;
    for warning in &report.warnings {
        println!("warning: {warning}");
    }
    for error in &report.errors {
        println!("error: {error}");
    }
    for violation in &report.violations {
        println!("refused: {violation}");
    }
    // What each waiver would give the pull request, so nobody waives a rule blindly.
    let rules: std::collections::BTreeSet<_> = report.violations.iter().map(|v| v.rule).collect();
    for rule in rules {
        println!(
            "rule `{rule}`: waiving it gives a pull request {}",
            rule.risk()
        );
    }
    match &report.spec {
        Some(spec) => {
            println!(
                "{}: valid: service `{}` on port {}, health check {} within {}s, compose file {}",
                dir.display(),
                spec.service,
                spec.internal_port,
                spec.healthcheck_path,
                spec.startup_timeout_seconds,
                spec.compose_file
            );
            Ok(())
        }
        None => Err(Failure::Invalid(format!(
            "{}: {} problem(s) in the preview contract (see above)",
            dir.display(),
            report.errors.len() + report.violations.len()
        ))),
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Pretty => builder.init(),
    }
    // A panic inside a unit is caught and logged by the scheduler; this hook makes any other
    // panic a structured log line too instead of bare text on stderr.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        error!(%location, panic = %payload, "panic");
    }));
}

fn run(config: Config) -> Result<(), Failure> {
    // Before the state directory is touched (`wire` checks again, for `plan` and `check`).
    names_apart(&config, &tenants(&config))?;
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(daemon(config, CancellationToken::new(), false, |_| {}))
}

/// The daemon until `cancel` or a signal. `remove_previews` tears every preview down at the end
/// (the demo); a daemon normally keeps them across restarts. `wired` sees the previews once wired.
async fn daemon(
    config: Config,
    cancel: CancellationToken,
    remove_previews: bool,
    wired: impl FnOnce(&Previews),
) -> Result<(), Failure> {
    let store = Store::open(config.database_path()).map_err(|e| Failure::Failed(e.to_string()))?;
    let mut wiring = wire(&config, &store)?;
    let module_routes = wiring.routes();
    let subscriptions = std::mem::take(&mut wiring.subscriptions);
    let scheduler = Scheduler::new(
        wiring.units,
        SchedulerOptions {
            preflight_concurrency: config.scheduler.preflight_concurrency,
            shutdown_grace: config.scheduler.shutdown_grace,
            ..SchedulerOptions::default()
        },
    )
    .map_err(|e| Failure::Invalid(e.to_string()))?;
    let board = scheduler.board();
    wired(&wiring.previews);
    let nudges = board.clone();
    let relays = relay_feeds(subscriptions, move |unit| nudges.nudge_unit(unit), &cancel);

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| {
            Failure::Failed(format!(
                "cannot listen on {} ([http].listen in {}): {e}",
                config.http.listen,
                config.file.display()
            ))
        })?;
    let app = http::router(
        http::AppState {
            board: board.clone(),
            store: store.clone(),
            github: wiring.github.clone(),
            previews: wiring.previews.clone(),
            tenants: config.tenants.iter().map(|t| t.repo()).collect(),
            webhook_secret: config.github.webhook_secret.clone(),
            deliveries: Arc::new(Deliveries::new(10_000)),
            tokens: http::ApiTokens::new(
                config.http.api_token.as_ref(),
                config.http.read_token.as_ref(),
            ),
            slack: wiring.slack.clone(),
            builds: wiring.builds.clone(),
        },
        module_routes,
    );
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .into_future(),
    );
    // The handlers are in place before "started" is said: a SIGTERM right after it must stop the
    // daemon gracefully, not kill it.
    let signals = StopSignals::install();
    info!(
        listen = %config.http.listen,
        tenants = config.tenants.len(),
        units = board.units().len(),
        "productbuilder started"
    );

    tokio::spawn(stop_on_signal(signals, cancel.clone()));
    let result = scheduler.run(cancel.clone()).await;
    cancel.cancel();
    // The relays end at the cancel; nothing of theirs outlives the daemon.
    for relay in relays {
        let _ = relay.await;
    }
    // Deploys stop at their next step; their rows say where, and the next start converges.
    wiring.previews.shutdown();
    let _ = tokio::time::timeout(config.scheduler.shutdown_grace, wiring.previews.idle()).await;
    if remove_previews {
        wiring.previews.remove_all().await;
    }
    // The server stops accepting at once; open requests get the same grace as unit runs.
    let _ = tokio::time::timeout(config.scheduler.shutdown_grace, server).await;
    match &result {
        Ok(()) => info!("stopped"),
        Err(StartupFailed::Global(e)) => {
            error!(unit = %e.unit, cause = %e.error, "start-up stopped by a failed global preflight")
        }
        Err(e @ StartupFailed::EveryTenant(_)) => error!(cause = %e, "no tenant can start"),
    }
    result.map_err(Failure::from)
}

/// SIGTERM and SIGINT, listened to from the moment they are installed.
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                error!("cannot listen for {name}: {e}");
                None
            }
        };
        StopSignals {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }
}

async fn stop_on_signal(mut signals: StopSignals, cancel: CancellationToken) {
    async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
        match signal {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let name = tokio::select! {
        _ = next(&mut signals.int) => "SIGINT",
        _ = next(&mut signals.term) => "SIGTERM",
    };
    info!(
        signal = name,
        "shutting down; in-flight runs get the grace period"
    );
    cancel.cancel();
}

#[cfg(test)]
mod tests {
    use super::egress_line;
    use productbuilder_preview::Egress;

    /// A loaded configuration with `tenants` (file name, text) in a temporary directory.
    pub(crate) fn config_with(tenants: &[(&str, &str)]) -> (tempfile::TempDir, super::Config) {
        config_against("http://127.0.0.1:9", tenants)
    }

    /// [`config_with`] against the GitHub API at `api_url`, with the token `t`.
    fn config_against(
        api_url: &str,
        tenants: &[(&str, &str)],
    ) -> (tempfile::TempDir, super::Config) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tenants")).unwrap();
        for (file, text) in tenants {
            std::fs::write(dir.path().join("tenants").join(file), text).unwrap();
        }
        let main = dir.path().join("productbuilder.toml");
        std::fs::write(
            &main,
            format!("state_dir = \"state\"\n[github]\ntoken = \"t\"\napi_url = \"{api_url}\"\n"),
        )
        .unwrap();
        let config = super::config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        (dir, config)
    }

    /// Runs the planned unit `name` once, as the scheduler would.
    async fn run_unit(units: &[productbuilder_scheduler::UnitSpec], name: &str) {
        let unit = units.iter().find(|u| u.name == name).expect(name);
        let ctx = productbuilder_scheduler::RunCtx::new(name, 1, Default::default());
        (unit.work)(ctx)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    #[tokio::test]
    async fn a_changed_pulls_feed_nudges_that_tenants_previews_worker() {
        use productbuilder_github_sandbox::{NewPr, Permission, Sandbox};
        let github = Sandbox::start().await.unwrap();
        github.add_token("t", "bot");
        for name in ["shop", "blog"] {
            github.create_repo("acme", name);
            github.grant("bot", &format!("acme/{name}"), Permission::Push);
        }
        let (_dir, config) = config_against(
            &github.url(),
            &[
                ("blog.toml", "repo = \"acme/blog\"\npreviews = false\n"),
                ("shop.toml", "repo = \"acme/shop\"\n"),
            ],
        );
        let store = productbuilder_store::Store::in_memory().unwrap();
        store.migrate().unwrap();
        let Ok(wiring) = super::wire(&config, &store) else {
            panic!("the test config does not wire");
        };
        // The preview module's declaration, resolved: only the tenant with previews.
        let declared: Vec<(&str, &str)> = wiring
            .subscriptions
            .iter()
            .map(|s| (s.feed.as_str(), s.unit.as_str()))
            .collect();
        assert_eq!(
            declared,
            [("github:pulls:acme/shop", "worker:previews:acme/shop")]
        );
        let (nudged, mut nudges) = tokio::sync::mpsc::unbounded_channel();
        let cancel = tokio_util::sync::CancellationToken::new();
        let relays = super::relay_feeds(
            wiring.subscriptions,
            move |unit| nudged.send(unit.to_owned()).is_ok(),
            &cancel,
        );
        run_unit(&wiring.units, "preflight:repository:acme/shop").await;
        run_unit(&wiring.units, "preflight:repository:acme/blog").await;
        github.open_pr("acme/shop", NewPr::new("A change", "octocat", "change"));
        github.open_pr("acme/blog", NewPr::new("A change", "octocat", "change"));
        run_unit(&wiring.units, "worker:pulls:acme/blog").await;
        run_unit(&wiring.units, "worker:pulls:acme/shop").await;
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), nudges.recv())
            .await
            .expect("no nudge within 10 s");
        assert_eq!(first.as_deref(), Some("worker:previews:acme/shop"));
        cancel.cancel();
        for relay in relays {
            relay.await.unwrap();
        }
        // acme/blog's feed changed too, but its previews are off: no unit of it was nudged.
        while let Ok(unit) = nudges.try_recv() {
            assert_eq!(unit, "worker:previews:acme/shop");
        }
    }

    /// The Slack threads follow the pull requests and the previews of the tenants with a channel:
    /// both feeds wake `worker:slack` of those tenants, and of no other.
    #[tokio::test]
    async fn the_slack_worker_wakes_on_pull_requests_previews_and_builds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tenants")).unwrap();
        std::fs::write(
            dir.path().join("tenants/shop.toml"),
            "repo = \"acme/shop\"\nslack_channel = \"C0SHOP\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tenants/blog.toml"),
            "repo = \"acme/blog\"\npreviews = false\n",
        )
        .unwrap();
        let main = dir.path().join("productbuilder.toml");
        std::fs::write(
            &main,
            "state_dir = \"state\"\n[github]\ntoken = \"t\"\napi_url = \"http://127.0.0.1:9\"\n\
             [slack]\nbot_token = \"xoxb-t\"\napi_url = \"http://127.0.0.1:9/api\"\n",
        )
        .unwrap();
        let config = super::config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        let store = productbuilder_store::Store::in_memory().unwrap();
        store.migrate().unwrap();
        let Ok(wiring) = super::wire(&config, &store) else {
            panic!("the test config does not wire");
        };
        let mut declared: Vec<(&str, &str)> = wiring
            .subscriptions
            .iter()
            .map(|s| (s.feed.as_str(), s.unit.as_str()))
            .collect();
        declared.sort();
        assert_eq!(
            declared,
            [
                // Without [builds] the feed is published and never changes.
                ("builds:rows:acme/shop", "worker:slack:acme/shop"),
                ("github:pulls:acme/shop", "worker:previews:acme/shop"),
                ("github:pulls:acme/shop", "worker:slack:acme/shop"),
                ("preview:rows:acme/shop", "worker:slack:acme/shop"),
            ]
        );
    }

    #[tokio::test]
    async fn a_tenant_with_previews_off_gets_no_preview_units() {
        let (_dir, config) = config_with(&[
            ("blog.toml", "repo = \"acme/blog\"\npreviews = false\n"),
            ("shop.toml", "repo = \"acme/shop\"\n"),
        ]);
        let store = productbuilder_store::Store::in_memory().unwrap();
        let Ok(wiring) = super::wire(&config, &store) else {
            panic!("the test config does not wire");
        };
        let names: Vec<&str> = wiring.units.iter().map(|u| u.name.as_str()).collect();
        for want in [
            "preflight:previews:global",
            "preflight:previews:acme/shop",
            "worker:previews:acme/shop",
            "worker:pulls:acme/blog",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let blog_previews: Vec<&&str> = names
            .iter()
            .filter(|n| n.contains("previews") && n.ends_with("acme/blog"))
            .collect();
        assert!(blog_previews.is_empty(), "{blog_previews:?}");
    }

    #[test]
    fn check_warns_only_when_open_previews_can_reach_the_metadata_endpoint() {
        assert!(egress_line(Egress::Open, true).starts_with("! "));
        assert!(egress_line(Egress::Open, false).starts_with("√ "));
        assert!(egress_line(Egress::None, true).starts_with("√ "));
        assert!(egress_line(Egress::None, false).starts_with("√ "));
    }
}
