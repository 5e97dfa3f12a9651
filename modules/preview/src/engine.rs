//! The Docker engine, through its API: what productbuilder finds running (every container it
//! labelled), the shared network, and logs. Building and starting go through the Compose CLI
//! ([`crate::runner`]); reading the actual state does not, so it works without a workspace on disk,
//! for instance after the state directory was lost.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerSummaryStateEnum, NetworkConnectRequest, NetworkCreateRequest,
    NetworkDisconnectRequest,
};
use bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, ListNetworksOptions, ListVolumesOptions, LogsOptions,
    RemoveContainerOptions, RemoveImageOptions, RemoveVolumeOptions,
};
use futures_util::{Stream, StreamExt};

use crate::compose::{
    LABEL_MANAGED, LABEL_PR, LABEL_PROJECT as LABEL_IMAGE_PROJECT, LABEL_SHA, LABEL_TENANT,
};

/// Compose's own label naming a container's project and service.
const LABEL_PROJECT: &str = "com.docker.compose.project";

/// A container attached to a network.
struct Attached {
    id: String,
    names: Vec<String>,
    /// Its Compose project, if Compose created it.
    project: Option<String>,
    image: String,
    running: bool,
}
const LABEL_SERVICE: &str = "com.docker.compose.service";

/// How long one Engine API call may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// A container productbuilder started, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    pub id: String,
    pub tenant: String,
    pub number: u64,
    pub sha: String,
    pub project: String,
    pub service: String,
    pub running: bool,
}

/// A connection to the engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// Where the engine was looked for, for error messages.
    socket: String,
}

/// Bytes of a log stream.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, EngineError>> + Send>>;

/// Every way an Engine API call fails; each names the engine's socket or the service, and what to
/// do next.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No engine answers at the socket.
    #[error("the Docker engine at {socket}: {detail}; start dockerd or set DOCKER_HOST")]
    Unreachable { socket: String, detail: String },
    /// A call the engine refused or did not answer.
    #[error("the Docker engine at {socket}: {what}: {detail}")]
    Api {
        socket: String,
        what: String,
        detail: String,
    },
    #[error("service `{service}` has no container (is the preview running?)")]
    NoContainer { service: String },
    #[error("service `{service}` has no address on network {network}")]
    NoAddress { service: String, network: String },
    #[error("following {path} needs a shell (`sh`) in service `{service}`'s container")]
    FollowNeedsShell { path: String, service: String },
    #[error("following {path} in service `{service}` ended at once: {said}")]
    FollowEnded {
        path: String,
        service: String,
        said: String,
    },
    /// A log stream broke off.
    #[error("log stream: {0}")]
    Stream(String),
}

impl Engine {
    /// Where the engine is expected: `DOCKER_HOST`, or the default socket.
    pub fn socket() -> String {
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned())
    }

    /// Connects and agrees on an API version (the engine may be older than the client).
    pub async fn connect() -> Result<Engine, EngineError> {
        let socket = Self::socket();
        let unreachable = |e: &dyn std::fmt::Display| EngineError::Unreachable {
            socket: socket.clone(),
            detail: e.to_string(),
        };
        let docker = Docker::connect_with_local_defaults().map_err(|e| unreachable(&e))?;
        let docker = tokio::time::timeout(API_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| unreachable(&"no answer within 30s"))?
            .map_err(|e| unreachable(&e))?;
        Ok(Engine { docker, socket })
    }

    pub fn socket_name(&self) -> &str {
        &self.socket
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::Api {
            socket: self.socket.clone(),
            what: what.to_owned(),
            detail: e.to_string(),
        }
    }

    /// The engine's version and API version.
    pub async fn version(&self) -> Result<String, EngineError> {
        let v = tokio::time::timeout(API_TIMEOUT, self.docker.version())
            .await
            .map_err(|_| self.err("version", "no answer within 30s"))?
            .map_err(|e| self.err("version", e))?;
        Ok(format!(
            "{} (API {})",
            v.version.unwrap_or_else(|| "unknown".into()),
            v.api_version.unwrap_or_else(|| "unknown".into())
        ))
    }

    /// Creates the network shared by Traefik and the previews unless it exists.
    pub async fn ensure_network(&self, name: &str) -> Result<(), EngineError> {
        if self.docker.inspect_network(name, None).await.is_ok() {
            return Ok(());
        }
        let created = self
            .docker
            .create_network(NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some("bridge".into()),
                attachable: Some(true),
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => Ok(()),
            // Created concurrently by someone else: fine.
            Err(_) if self.docker.inspect_network(name, None).await.is_ok() => Ok(()),
            Err(e) => Err(self.err(&format!("creating network {name}"), e)),
        }
    }

    /// The names of the Traefik containers attached to `network` (by image name), or `None` when
    /// the network does not exist yet. For `check --online`: previews deploy without a router, but
    /// nobody can reach them.
    pub async fn routers_on(&self, network: &str) -> Result<Option<Vec<String>>, EngineError> {
        if self.docker.inspect_network(network, None).await.is_err() {
            return Ok(None);
        }
        Ok(Some(
            self.containers_on(network)
                .await?
                .into_iter()
                .filter(|c| c.running && c.image.to_ascii_lowercase().contains("traefik"))
                .filter_map(|c| c.names.into_iter().next())
                .collect(),
        ))
    }

    /// Attaches the router containers of the shared network (see [`Engine::routers_on`]) to every
    /// network of a preview's Compose project (found by Compose's project label), so they can
    /// route to it. Already attached is fine.
    pub async fn attach_routers_to_project(
        &self,
        shared: &str,
        project: &str,
    ) -> Result<(), EngineError> {
        let routers = self.routers_on(shared).await?.unwrap_or_default();
        if routers.is_empty() {
            return Ok(());
        }
        for network in self.project_networks(project).await? {
            let attached = self.containers_on(&network).await?;
            for router in &routers {
                if attached.iter().any(|c| c.names.contains(router)) {
                    continue;
                }
                let request = NetworkConnectRequest {
                    container: router.clone(),
                    endpoint_config: None,
                };
                if let Err(e) = self.docker.connect_network(&network, request).await
                    && !e.to_string().contains("already exists")
                {
                    return Err(self.err(&format!("attaching {router} to {network}"), e));
                }
            }
        }
        Ok(())
    }

    /// The names of the networks Compose created for `project`.
    async fn project_networks(&self, project: &str) -> Result<Vec<String>, EngineError> {
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(HashMap::from([(
                    "label".to_owned(),
                    vec![format!("{LABEL_PROJECT}={project}")],
                )])),
            }))
            .await
            .map_err(|e| self.err("listing networks", e))?;
        Ok(networks.into_iter().filter_map(|n| n.name).collect())
    }

    /// The containers attached to `network`, running or not.
    async fn containers_on(&self, network: &str) -> Result<Vec<Attached>, EngineError> {
        let attached = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "network".to_owned(),
                    vec![network.to_owned()],
                )])),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.err("listing containers", e))?;
        Ok(attached
            .into_iter()
            .filter_map(|c| {
                Some(Attached {
                    names: c
                        .names
                        .unwrap_or_default()
                        .into_iter()
                        .map(|n| n.trim_start_matches('/').to_owned())
                        .collect(),
                    project: c.labels.and_then(|l| l.get(LABEL_PROJECT).cloned()),
                    image: c.image.unwrap_or_default(),
                    running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
                    id: c.id?,
                })
            })
            .collect())
    }

    /// Disconnects every container that is not part of `project` (the router) from the
    /// project's networks, so that they can be removed.
    pub async fn detach_foreign(&self, project: &str) -> Result<(), EngineError> {
        for network in self.project_networks(project).await? {
            for Attached {
                id, project: owner, ..
            } in self.containers_on(&network).await?
            {
                if owner.as_deref() == Some(project) {
                    continue;
                }
                let request = NetworkDisconnectRequest {
                    container: id.clone(),
                    force: Some(true),
                };
                if let Err(e) = self.docker.disconnect_network(&network, request).await
                    && !e.to_string().contains("is not connected")
                {
                    return Err(self.err(&format!("detaching {id} from {network}"), e));
                }
            }
        }
        Ok(())
    }

    /// Every container labelled `productbuilder.managed`, running or not; for one tenant when
    /// `tenant` is set.
    pub async fn labelled(&self, tenant: Option<&str>) -> Result<Vec<Labelled>, EngineError> {
        let mut labels = vec![format!("{LABEL_MANAGED}=true")];
        if let Some(t) = tenant {
            labels.push(format!("{LABEL_TENANT}={t}"));
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), labels)])),
            ..Default::default()
        };
        let list = tokio::time::timeout(API_TIMEOUT, self.docker.list_containers(Some(options)))
            .await
            .map_err(|_| self.err("listing containers", "no answer within 30s"))?
            .map_err(|e| self.err("listing containers", e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(Labelled {
                    id: c.id?,
                    tenant: labels.get(LABEL_TENANT)?.clone(),
                    number: labels.get(LABEL_PR)?.parse().ok()?,
                    sha: labels.get(LABEL_SHA).cloned().unwrap_or_default(),
                    project: labels.get(LABEL_PROJECT)?.clone(),
                    service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
                    running: matches!(
                        c.state,
                        Some(
                            ContainerSummaryStateEnum::RUNNING
                                | ContainerSummaryStateEnum::RESTARTING
                        )
                    ),
                })
            })
            .collect())
    }

    /// The container of `service` in `project`, running or not.
    async fn service_container(&self, project: &str, service: &str) -> Result<String, EngineError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![
                    format!("{LABEL_PROJECT}={project}"),
                    format!("{LABEL_SERVICE}={service}"),
                ],
            )])),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.err("listing containers", e))?;
        list.into_iter()
            .find_map(|c| c.id)
            .ok_or_else(|| EngineError::NoContainer {
                service: service.to_owned(),
            })
    }

    /// The address of `service`'s container on `network`.
    pub async fn service_ip(
        &self,
        project: &str,
        service: &str,
        network: &str,
    ) -> Result<std::net::IpAddr, EngineError> {
        let id = self.service_container(project, service).await?;
        let inspected = self
            .docker
            .inspect_container(&id, None)
            .await
            .map_err(|e| self.err("inspecting a container", e))?;
        inspected
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut nets| nets.remove(network))
            .and_then(|n| n.ip_address)
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| EngineError::NoAddress {
                service: service.to_owned(),
                network: network.to_owned(),
            })
    }

    /// The container logs of `service` (stdout and stderr), the last `tail` lines, then new ones
    /// while `follow`.
    pub async fn container_logs(
        &self,
        project: &str,
        service: &str,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, EngineError> {
        let id = self.service_container(project, service).await?;
        let stream = self.docker.logs(
            &id,
            Some(LogsOptions {
                follow,
                stdout: true,
                stderr: true,
                tail: tail.to_string(),
                ..Default::default()
            }),
        );
        Ok(Box::pin(stream.map(|item| {
            item.map(LogOutput::into_bytes)
                .map_err(|e| EngineError::Stream(e.to_string()))
        })))
    }

    /// The last `tail` lines of a file inside `service`'s container (`tail -F` while `follow`),
    /// for repositories whose `logging.type` is `file`.
    ///
    /// The engine never ends an exec when its client goes away, so a follow runs `tail` under a
    /// shell that first prints its process id (`exec` keeps that id for `tail`); dropping the
    /// stream execs a `kill` of that id in the container. Without this, every follow a client
    /// abandoned would leave a `tail -F` running in the preview for as long as it lives.
    pub async fn file_logs(
        &self,
        project: &str,
        service: &str,
        path: &str,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, EngineError> {
        let id = self.service_container(project, service).await?;
        // `--` so that a path from the repository's config can never be read as an option; with a
        // shell, the tail count and path are positional arguments, never part of the script.
        let cmd: Vec<String> = if follow {
            [
                "sh",
                "-c",
                "echo $$; exec tail -n \"$1\" -F -- \"$2\"",
                "productbuilder-logs",
                &tail.to_string(),
                path,
            ]
            .map(str::to_owned)
            .to_vec()
        } else {
            ["tail", "-n", &tail.to_string(), "--", path]
                .map(str::to_owned)
                .to_vec()
        };
        let mut output = match self.exec_attached(&id, cmd).await? {
            StartExecResults::Attached { output, .. } => output,
            StartExecResults::Detached => {
                return Err(self.err("exec tail", "the exec detached unexpectedly"));
            }
        };
        let bytes = |item: Result<LogOutput, bollard::errors::Error>| {
            item.map(LogOutput::into_bytes)
                .map_err(|e| EngineError::Stream(e.to_string()))
        };
        if !follow {
            return Ok(Box::pin(output.map(bytes)));
        }
        // The shell's first line is its (and then tail's) process id; anything after it is log.
        let mut first = Vec::new();
        let mut said = Vec::new();
        let (pid, rest) = loop {
            let item = tokio::time::timeout(API_TIMEOUT, output.next())
                .await
                .map_err(|_| self.err("exec tail", "no process id within 30s"))?;
            match item {
                Some(Ok(LogOutput::StdOut { message })) => {
                    first.extend_from_slice(&message);
                    if let Some(end) = first.iter().position(|b| *b == b'\n') {
                        let pid = std::str::from_utf8(&first[..end])
                            .ok()
                            .and_then(|t| t.trim().parse::<u32>().ok())
                            .ok_or_else(|| EngineError::FollowNeedsShell {
                                path: path.to_owned(),
                                service: service.to_owned(),
                            })?;
                        break (pid, bytes::Bytes::copy_from_slice(&first[end + 1..]));
                    }
                }
                Some(Ok(other)) => said.extend_from_slice(&other.into_bytes()),
                Some(Err(e)) => return Err(self.err("exec tail", e)),
                None => {
                    return Err(EngineError::FollowEnded {
                        path: path.to_owned(),
                        service: service.to_owned(),
                        said: String::from_utf8_lossy(&said).trim().to_owned(),
                    });
                }
            }
        };
        let killer = KillOnDrop {
            engine: self.clone(),
            container: id,
            pid,
        };
        let head = futures_util::stream::iter((!rest.is_empty()).then_some(Ok(rest)));
        Ok(Box::pin(head.chain(output.map(move |item| {
            // The stream owns the killer: it runs when the stream is dropped, however it ends.
            let _owned = &killer;
            bytes(item)
        }))))
    }

    async fn exec_attached(
        &self,
        id: &str,
        cmd: Vec<String>,
    ) -> Result<StartExecResults, EngineError> {
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(cmd),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.err("exec tail", e))?;
        self.docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| self.err("exec tail", e))
    }

    /// Removes everything of a Compose project without its compose file: containers (with their
    /// anonymous volumes), networks and volumes labelled with the project, and the images Compose
    /// built for it (named `{project}-{service}` by v2, `{project}_{service}` by v1).
    pub async fn remove_project(&self, project: &str) -> Result<(), EngineError> {
        let by_label = || {
            Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL_PROJECT}={project}")],
            )]))
        };
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: by_label(),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.err("listing containers", e))?;
        self.detach_foreign(project).await?;
        for id in containers.into_iter().filter_map(|c| c.id) {
            self.docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| self.err(&format!("removing container {id}"), e))?;
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: by_label(),
            }))
            .await
            .map_err(|e| self.err("listing networks", e))?;
        for name in networks.into_iter().filter_map(|n| n.name) {
            self.docker
                .remove_network(&name)
                .await
                .map_err(|e| self.err(&format!("removing network {name}"), e))?;
        }
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: by_label(),
            }))
            .await
            .map_err(|e| self.err("listing volumes", e))?;
        for volume in volumes.volumes.unwrap_or_default() {
            self.docker
                .remove_volume(&volume.name, Some(RemoveVolumeOptions { force: true }))
                .await
                .map_err(|e| self.err(&format!("removing volume {}", volume.name), e))?;
        }
        // By name (images built before they were labelled), then by label.
        let named = self
            .docker
            .list_images(Some(ListImagesOptions {
                filters: Some(HashMap::from([(
                    "reference".to_owned(),
                    vec![format!("{project}-*"), format!("{project}_*")],
                )])),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.err("listing images", e))?;
        for image in named {
            self.remove_image(&image.id, true).await?;
        }
        self.remove_images(project, false).await
    }

    /// Removes the images built for `project` (found by their `productbuilder.project` label):
    /// every one, or with `dangling_only` those no tag names any more (earlier heads' builds).
    /// An image a container still uses is kept when only dangling ones are asked for.
    pub async fn remove_images(
        &self,
        project: &str,
        dangling_only: bool,
    ) -> Result<(), EngineError> {
        let mut filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_IMAGE_PROJECT}={project}")],
        )]);
        if dangling_only {
            filters.insert("dangling".to_owned(), vec!["true".to_owned()]);
        }
        let images = self
            .docker
            .list_images(Some(ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.err("listing images", e))?;
        for image in images {
            match self.remove_image(&image.id, !dangling_only).await {
                Ok(()) => {}
                Err(e) if dangling_only => {
                    tracing::debug!(project, error = %e, "an old image stays")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The labels of a local image, or `None` when the engine has no such image.
    pub async fn image_labels(
        &self,
        image: &str,
    ) -> Result<Option<HashMap<String, String>>, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(Some(
                inspect.config.and_then(|c| c.labels).unwrap_or_default(),
            )),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.err(&format!("inspecting image {image}"), e)),
        }
    }

    async fn remove_image(&self, id: &str, force: bool) -> Result<(), EngineError> {
        match self
            .docker
            .remove_image(
                id,
                Some(RemoveImageOptions {
                    force,
                    ..Default::default()
                }),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            // Removed meanwhile (an image listed twice, or by another removal): fine.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.err(&format!("removing image {id}"), e)),
        }
    }
}

/// Ends a process started by an exec in a container when dropped (a log follow whose client went
/// away, or whose time ran out).
struct KillOnDrop {
    engine: Engine,
    container: String,
    pid: u32,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (engine, container, pid) = (self.engine.clone(), self.container.clone(), self.pid);
        runtime.spawn(async move {
            // The shell's own `kill`: the container may have no kill binary, but it has the shell
            // that ran tail. The pid is a number we parsed, passed as an argument.
            let cmd = [
                "sh",
                "-c",
                "kill \"$1\"",
                "productbuilder-logs",
                &pid.to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            let ended = match engine.exec_attached(&container, cmd).await {
                Ok(StartExecResults::Attached { mut output, .. }) => {
                    while output.next().await.is_some() {}
                    Ok(())
                }
                Ok(StartExecResults::Detached) => Ok(()),
                Err(e) => Err(e),
            };
            match ended {
                Ok(()) => tracing::debug!(container, pid, "log follow ended; its tail was stopped"),
                // The container may be gone already (a redeploy, a removal): nothing to stop then.
                Err(e) => {
                    tracing::debug!(container, pid, error = %e, "cannot stop a log follow's tail")
                }
            }
        });
    }
}
