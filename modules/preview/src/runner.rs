//! The Compose CLI, as previews use it: `config` (the model the policy checks), `build`, `up`,
//! `exec`, `port`, `down` with everything the project created. Only Compose v2 can print the
//! resolved model, so v1 (end of life since 2023) is refused with a message saying how to install
//! v2.
//!
//! Compose runs with an allowlisted environment: the daemon's tokens never reach it (a pull
//! request's `${VAR}` would read them), and neither do the operator's registry credentials
//! (`HOME`, `DOCKER_CONFIG`) unless `[preview] docker_config` names a directory for them. The
//! `docker compose` plugin is therefore resolved to its binary once and run directly.
//!
//! Every command runs through `productbuilder-process`: with a deadline, in its own process group
//! that is killed whole when the future is dropped (a cancelled deploy), when it ends, and when the
//! daemon dies, so no stray `compose` or build process stays behind; what it keeps of the output
//! is the last lines, for the pull request comment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use productbuilder_process as process;

use crate::reconcile::Secret;

/// Lines of output kept for error reports.
const TAIL_LINES: usize = 60;
/// Standard output kept: `config --format json` of a large project is well under this.
const STDOUT_CAP: usize = 16 * 1024 * 1024;

/// One compose project on disk.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: String,
    /// The rewritten compose file.
    pub file: PathBuf,
    /// The project directory. The rewritten model's paths are absolute, so this is the workspace:
    /// a `.env` of the pull request is not read again when the project runs.
    pub dir: PathBuf,
    /// Variables Compose passes to the services that name them without a value (the tenant's
    /// variables and secrets): on the process's environment, never in a file or an argument.
    pub env: Vec<(String, Secret)>,
}

/// A failed or timed-out command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub command: String,
    pub message: String,
    /// The last lines of its output.
    pub tail: String,
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.command, self.message)
    }
}

impl std::error::Error for CommandError {}

impl From<process::Error> for CommandError {
    fn from(e: process::Error) -> CommandError {
        let message = match &e {
            process::Error::NotFound { .. } => "cannot start: the program was not found".to_owned(),
            process::Error::Spawn { source, .. } => format!("cannot start: {source}"),
            process::Error::Exit { ended, .. } => format!("failed ({ended})"),
            process::Error::Deadline { after, .. } => {
                format!("did not finish within {after:?} (its processes were killed)")
            }
            process::Error::Cancelled { .. } => "was cancelled".to_owned(),
            process::Error::Io { source, .. } => format!("failed: {source}"),
        };
        CommandError {
            command: e.shown().to_owned(),
            message,
            tail: e.tail().to_owned(),
        }
    }
}

/// Why the configured Compose CLI cannot be used; each says how to install Compose v2.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("`{shown}`: no Compose plugin found (looked in $DOCKER_CONFIG, ~/.docker and {looked}/cli-plugins); {INSTALL_V2}", looked = SYSTEM_PLUGIN_DIRS.join(", "))]
    NoPlugin { shown: String },
    #[error("`[preview] compose_command` is empty; {INSTALL_V2}")]
    Empty,
    /// `version` did not answer in time: the binary hangs (it may be fine after a restart).
    #[error("{0}")]
    Hung(#[source] process::Error),
    /// `version` could not run or failed.
    #[error("{0}; {INSTALL_V2}")]
    Unusable(#[source] process::Error),
    #[error(
        "`{shown}` is Compose {version}, which cannot resolve a project for the preview policy (Compose v1 is end of life); {INSTALL_V2}"
    )]
    NotV2 { shown: String, version: String },
}

/// The Compose CLI to use.
#[derive(Debug, Clone)]
pub struct ComposeCli {
    argv: Vec<String>,
    pub version: String,
    /// `DOCKER_CONFIG` for Compose: the operator's directory for preview builds, or an empty one.
    docker_config: Option<PathBuf>,
}

/// Where the Docker CLI looks for plugins besides `$DOCKER_CONFIG/cli-plugins`.
const SYSTEM_PLUGIN_DIRS: &[&str] = &[
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
];

/// How to install Compose v2, for every message that needs it.
pub const INSTALL_V2: &str = "install the Docker Compose v2 plugin (Debian/Ubuntu: the `docker-compose-plugin` package from Docker's repository; or its release binary as ~/.docker/cli-plugins/docker-compose) and set `[preview] compose_command = [\"docker\", \"compose\"]`";

/// The binary behind `docker compose`: the CLI plugin, in `[preview] docker_config` first, then
/// where the Docker CLI finds it.
fn compose_plugin(docker_config: Option<&Path>) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = docker_config
        .iter()
        .map(|d| d.join("cli-plugins"))
        .collect();
    if let Some(config) = std::env::var_os("DOCKER_CONFIG") {
        dirs.push(PathBuf::from(config).join("cli-plugins"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".docker/cli-plugins"));
    }
    dirs.extend(SYSTEM_PLUGIN_DIRS.iter().map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("docker-compose"))
        .find(|p| p.is_file())
}

impl ComposeCli {
    /// The configured command, which must be Compose v2. `docker compose` is resolved to the
    /// plugin's binary, so it runs without the Docker CLI's configuration directory.
    pub async fn detect(preferred: &[String]) -> Result<ComposeCli, ComposeError> {
        ComposeCli::detect_with(preferred, None).await
    }

    /// [`ComposeCli::detect`], looking for the plugin in `docker_config` first.
    pub async fn detect_with(
        preferred: &[String],
        docker_config: Option<&Path>,
    ) -> Result<ComposeCli, ComposeError> {
        let shown = preferred.join(" ");
        let mut argv = preferred.to_vec();
        if argv.len() >= 2 && argv[0] == "docker" && argv[1] == "compose" {
            match compose_plugin(docker_config) {
                Some(plugin) => {
                    argv.splice(..2, [plugin.display().to_string()]);
                }
                None => return Err(ComposeError::NoPlugin { shown }),
            }
        }
        let Some(program) = argv.first() else {
            return Err(ComposeError::Empty);
        };
        let out = process::Command::new(program, format!("{shown} version"))
            .args(&argv[1..])
            .args(["version", "--short"])
            .inherit(COMPOSE_ENV.iter().copied())
            .stdout_cap(64 * 1024)
            .deadline(Duration::from_secs(20))
            .run()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e @ process::Error::Deadline { .. }) => return Err(ComposeError::Hung(e)),
            Err(e) => return Err(ComposeError::Unusable(e)),
        };
        let version = out.stdout.trim().to_owned();
        let major = version
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        match major {
            Some(m) if m >= 2 => Ok(ComposeCli {
                argv,
                version: format!(
                    "Docker Compose version v{}",
                    version.trim_start_matches('v')
                ),
                docker_config: None,
            }),
            _ => Err(ComposeError::NotV2 { shown, version }),
        }
    }

    /// Builds see the registry credentials in `dir` (`[preview] docker_config`), or none when
    /// `dir` is an empty directory of the daemon's.
    pub fn with_docker_config(mut self, dir: PathBuf) -> ComposeCli {
        self.docker_config = Some(dir);
        self
    }

    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    async fn run(
        &self,
        project: &Project,
        args: &[&str],
        deadline: Duration,
    ) -> Result<String, CommandError> {
        // Shown in pull request comments: the command as people type it, not the host's path to
        // the plugin binary.
        let shown = format!("docker compose -p {} {}", project.name, args.join(" "));
        let mut command = process::Command::new(&self.argv[0], shown.clone())
            .args(&self.argv[1..])
            .arg("--project-name")
            .arg(&project.name)
            .arg("--project-directory")
            .arg(&project.dir)
            .arg("-f")
            .arg(&project.file)
            .args(args)
            // Compose interpolates `${VAR}` in the pull request's file from its environment: it
            // must not see the daemon's (tokens, keys), only what it needs to reach the engine.
            .inherit(COMPOSE_ENV.iter().copied())
            .stdout_cap(STDOUT_CAP)
            .tail_lines(TAIL_LINES)
            .deadline(deadline);
        if let Some(dir) = &self.docker_config {
            command = command.env("DOCKER_CONFIG", dir);
        }
        for (name, value) in &project.env {
            command = command.env(name, value.expose());
        }
        match command.run().await {
            Ok(out) if out.stdout_truncated => Err(CommandError {
                command: shown,
                message: format!(
                    "printed more than {} MiB on its standard output",
                    STDOUT_CAP >> 20
                ),
                tail: out.tail,
            }),
            Ok(out) => Ok(out.stdout),
            Err(e) => Err(CommandError::from(e)),
        }
    }

    /// A read-only command (`config ...`) with a short deadline; its standard output.
    pub async fn run_checked(
        &self,
        project: &Project,
        args: &[&str],
    ) -> Result<String, CommandError> {
        self.run(project, args, Duration::from_secs(60)).await
    }

    /// Builds the images of every service that has a `build` section.
    pub async fn build(&self, project: &Project, deadline: Duration) -> Result<(), CommandError> {
        self.run(project, &["build"], deadline).await.map(|_| ())
    }

    /// Pulls the images of the services that do not build theirs.
    pub async fn pull(&self, project: &Project, deadline: Duration) -> Result<(), CommandError> {
        self.run(
            project,
            &["pull", "--ignore-buildable", "--quiet"],
            deadline,
        )
        .await
        .map(|_| ())
    }

    /// Starts (or updates) the project in the background from images already built.
    pub async fn start(&self, project: &Project, deadline: Duration) -> Result<(), CommandError> {
        self.run(
            project,
            &["up", "-d", "--no-build", "--remove-orphans"],
            deadline,
        )
        .await
        .map(|_| ())
    }

    /// Runs `command` with `sh -c` in the running container of `service` (migrations, post-deploy
    /// commands). The command comes from the repository: it runs inside the preview's own
    /// container, never on the host.
    pub async fn exec(
        &self,
        project: &Project,
        service: &str,
        command: &str,
        deadline: Duration,
    ) -> Result<String, CommandError> {
        self.run(
            project,
            // `--` ends the options: a service named like a flag stays a service name.
            &["exec", "-T", "--", service, "sh", "-c", command],
            deadline,
        )
        .await
    }

    /// Builds the images and starts the project in the background.
    pub async fn up(&self, project: &Project, deadline: Duration) -> Result<(), CommandError> {
        self.run(
            project,
            &["up", "-d", "--build", "--remove-orphans"],
            deadline,
        )
        .await
        .map(|_| ())
    }

    /// The host address a service's port is published on (the loopback binding of the rewrite).
    pub async fn port(
        &self,
        project: &Project,
        service: &str,
        port: u16,
    ) -> Result<std::net::SocketAddr, CommandError> {
        let out = self
            .run(
                project,
                &["port", "--", service, &port.to_string()],
                Duration::from_secs(30),
            )
            .await?;
        out.lines()
            .filter_map(|l| l.trim().parse().ok())
            .next()
            .ok_or_else(|| CommandError {
                command: format!("port {service} {port}"),
                message: format!("printed no address: {out:?}"),
                tail: String::new(),
            })
    }

    /// Stops and removes the project: containers, its networks, volumes, and the images it built.
    pub async fn down(&self, project: &Project) -> Result<(), CommandError> {
        self.run(
            project,
            &[
                "down",
                "-v",
                "--remove-orphans",
                "--rmi",
                "local",
                "--timeout",
                "10",
            ],
            Duration::from_secs(180),
        )
        .await
        .map(|_| ())
    }
}

/// Variables the Compose CLI may inherit: how to find programs and the engine, nothing else. Not
/// `HOME` nor `DOCKER_CONFIG`: they hold the operator's registry credentials.
const COMPOSE_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "DOCKER_HOST",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
];

/// The part of `vars` the Compose CLI gets.
pub fn compose_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    process::allowed_env(COMPOSE_ENV, vars)
}

/// Writes a rewritten compose file next to the checkout, in the preview's workspace.
pub fn write_project(
    workspace: &Path,
    name: &str,
    compose_text: &str,
    env: Vec<(String, Secret)>,
) -> std::io::Result<Project> {
    let file = workspace.join("productbuilder.compose.yml");
    std::fs::write(&file, compose_text)?;
    Ok(Project {
        name: name.to_owned(),
        file,
        dir: workspace.to_path_buf(),
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for Compose v2 (a script) whose `build` leaves a background process and hangs:
    /// at the deadline the error says so with the output's tail, and nothing of it is left.
    #[tokio::test]
    async fn a_command_past_its_deadline_is_killed_with_its_whole_group() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-compose");
        std::fs::write(
            &fake,
            "#!/bin/sh\ncase \"$*\" in *version*) echo 2.30.0; exit 0;; esac\n\
             sleep 100 & echo $$ $! > \"$PIDS.tmp\"; mv \"$PIDS.tmp\" \"$PIDS\"\n\
             echo building; sleep 100\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cli = ComposeCli::detect(&[fake.display().to_string()])
            .await
            .unwrap();
        let pids_file = dir.path().join("pids");
        let project = write_project(
            dir.path(),
            "pb-fake",
            "services: {}\n",
            vec![(
                "PIDS".to_owned(),
                Secret::new(pids_file.display().to_string()),
            )],
        )
        .unwrap();
        let e = cli
            .build(&project, Duration::from_millis(1500))
            .await
            .unwrap_err();
        assert_eq!(e.command, "docker compose -p pb-fake build");
        assert!(e.message.starts_with("did not finish within 1.5s"), "{e}");
        assert_eq!(e.tail, "building");
        let pids: Vec<i32> = std::fs::read_to_string(&pids_file)
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2);
        // SIGKILL was sent to the group before `build` returned; the kernel tears the processes
        // down right after: wait for that, bounded.
        let gone = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('Z'))
                })
                .unwrap_or(true)
        };
        let start = std::time::Instant::now();
        while !pids.iter().all(|p| gone(*p)) && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(pids.iter().all(|p| gone(*p)), "still running: {pids:?}");
    }

    #[test]
    fn compose_inherits_no_secret() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("PRODUCTBUILDER_GITHUB__TOKEN", "ghp_secret"),
            ("DOCKER_HOST", "unix:///run/docker.sock"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            // The operator's registry credentials live under these.
            ("HOME", "/root"),
            ("DOCKER_CONFIG", "/root/.docker"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let kept: Vec<String> = compose_env(vars.into_iter())
            .into_iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept, ["PATH", "DOCKER_HOST"]);
    }
}
