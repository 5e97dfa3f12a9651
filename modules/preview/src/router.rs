//! A Traefik container for the demo and the end-to-end tests: the router a production host runs
//! in front of its previews, started here on the previews' shared network with its web entrypoint
//! published on loopback only.
//!
//! Production hosts run their own Traefik (see the README); this exists so that `productbuilder
//! demo` and the tests exercise the same routing path, with the image `scripts/traefik-image`
//! builds (this machine has no registry to pull one from).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::process::Command;

/// The image `scripts/traefik-image` builds: Traefik's static binary in a `FROM scratch` image.
pub const TRAEFIK_IMAGE: &str = "productbuilder-traefik:3.7.15";

/// A running Traefik container. Removed by [`Traefik::stop`], or on drop (best effort).
#[derive(Debug)]
pub struct Traefik {
    pub name: String,
    /// Its web entrypoint, on loopback.
    pub addr: SocketAddr,
    stopped: bool,
}

/// Why Traefik could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot run the docker CLI: {0}; install it or put it on PATH")]
    Cli(#[source] std::io::Error),
    #[error("`docker {command}` failed: {stderr}")]
    Docker { command: String, stderr: String },
    #[error("cannot find a free port for Traefik: {0}; give one with --router-port")]
    NoFreePort(#[source] std::io::Error),
    #[error("the image {TRAEFIK_IMAGE} is missing: build it with scripts/traefik-image")]
    MissingImage,
    #[error("`docker port {name} 80` printed no address: {printed:?}")]
    NoAddress { name: String, printed: String },
    #[error("Traefik did not come up: {0}")]
    Unhealthy(#[from] crate::probe::Unhealthy),
}

async fn docker(args: &[&str]) -> Result<String, RouterError> {
    let out = Command::new("docker")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(RouterError::Cli)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(RouterError::Docker {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

impl Traefik {
    /// Starts Traefik as container `name` on `network`, publishing its web entrypoint on
    /// `127.0.0.1:{port}` (`0`: any free port), and waits until it answers its ping.
    pub async fn start(name: &str, network: &str, port: u16) -> Result<Traefik, RouterError> {
        docker(&["image", "inspect", "--format", "{{.Id}}", TRAEFIK_IMAGE])
            .await
            .map_err(|_| RouterError::MissingImage)?;
        // A leftover of an earlier run that was killed.
        let _ = docker(&["rm", "-f", name]).await;
        let socket = crate::engine::Engine::socket();
        let socket_path = socket
            .strip_prefix("unix://")
            .unwrap_or("/var/run/docker.sock");
        // A fixed host port even when any will do: the engine may move an ephemeral binding when
        // the container joins another network, and the router joins every preview's network.
        let port = if port == 0 {
            std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map_err(RouterError::NoFreePort)?
                .port()
        } else {
            port
        };
        let publish = format!("127.0.0.1:{port}:80");
        docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--label",
            "productbuilder.router=true",
            "-v",
            &format!("{socket_path}:/var/run/docker.sock:ro"),
            "-p",
            &publish,
            TRAEFIK_IMAGE,
            "--providers.docker=true",
            "--providers.docker.exposedbydefault=false",
            &format!("--providers.docker.network={network}"),
            "--entrypoints.web.address=:80",
            "--ping=true",
            "--ping.entrypoint=web",
            "--global.checknewversion=false",
            "--global.sendanonymoususage=false",
        ])
        .await?;
        let mut traefik = Traefik {
            name: name.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stopped: false,
        };
        let printed = docker(&["port", name, "80/tcp"]).await?;
        traefik.addr = printed
            .lines()
            .filter_map(|l| l.trim().parse::<SocketAddr>().ok())
            .find(|a| a.is_ipv4())
            .ok_or_else(|| RouterError::NoAddress {
                name: name.to_owned(),
                printed: printed.clone(),
            })?;
        crate::probe::wait_healthy(
            &[traefik.addr],
            "localhost",
            "/ping",
            Duration::from_secs(30),
        )
        .await?;
        Ok(traefik)
    }

    /// Removes the container.
    pub async fn stop(mut self) {
        let _ = docker(&["rm", "-f", &self.name]).await;
        self.stopped = true;
    }
}

impl Drop for Traefik {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &self.name])
                .output();
        }
    }
}
