//! The first three stages of a deploy: `download` (the head's tarball, streamed to disk under a
//! cap, then extracted as hostile input), `config` and `policy` (the checkout's contract and compose
//! file). Nothing of the pull request runs before these pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use productbuilder_github::GithubClient;

use crate::archive::{self, Limits};
use crate::policy::Policy;
use crate::runner::ComposeCli;
use crate::spec::PreviewSpec;
use crate::state::Stage;
use crate::validate_checkout;

/// How long a download may take, end to end.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// A failed stage: which one, and what to tell the pull request's author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageError {
    pub stage: Stage,
    pub message: String,
    /// The cause may pass by itself (a network error, a timeout, GitHub's 5xx or rate limit):
    /// worth another attempt before the preview is marked failed.
    pub transient: bool,
    /// The host failed, not the repository (the workspace cannot be written: a full disk, a
    /// permission): the commit is not to blame, and the deploy is tried again later.
    pub host: bool,
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.stage, self.message)
    }
}

impl std::error::Error for StageError {}

/// A checked-out head: its directory and its validated contract.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub dir: PathBuf,
    pub spec: PreviewSpec,
    /// The compose model Compose resolved, which passed the policy.
    pub resolved: crate::resolve::Resolved,
    /// Warnings for the pull request comment (unknown keys in config.yml).
    pub warnings: Vec<String>,
}

fn fail(stage: Stage, message: impl Into<String>) -> StageError {
    StageError {
        stage,
        message: message.into(),
        transient: false,
        host: false,
    }
}

/// A failure of this host, not of the repository's commit.
fn host_failed(stage: Stage, message: impl Into<String>) -> StageError {
    StageError {
        host: true,
        ..fail(stage, message)
    }
}

/// A download failure, transient or not as the scheduler's kinds say.
fn download_failed(e: productbuilder_github::GithubError) -> StageError {
    let message = e.to_string();
    let kind = productbuilder_scheduler::UnitError::from(e).kind();
    use productbuilder_scheduler::ErrorKind::*;
    StageError {
        stage: Stage::Download,
        message,
        transient: matches!(kind, Network | Timeout | Server | RateLimited),
        host: false,
    }
}

/// Downloads and checks `repo`'s tree at `sha` into `workspace` (which this function owns: it
/// is emptied first, so a retry after a crash starts clean).
pub async fn fetch_and_check(
    client: &GithubClient,
    repo: &str,
    sha: &str,
    workspace: &Path,
    limits: &Limits,
    checks: &Checks<'_>,
) -> Result<Checkout, StageError> {
    let dir = download(client, repo, sha, workspace, limits).await?;
    check(&dir, checks).await
}

/// How a checkout is checked: the tenant's policy, the Compose CLI that resolves the model, and
/// the project name it is resolved under.
#[derive(Debug, Clone, Copy)]
pub struct Checks<'a> {
    pub policy: &'a Policy,
    pub cli: &'a ComposeCli,
    pub project: &'a str,
}

/// The `download` stage: `repo`'s tree at `sha`, extracted into `workspace/checkout`. The
/// workspace is emptied first, so a retry after a crash starts clean.
pub async fn download(
    client: &GithubClient,
    repo: &str,
    sha: &str,
    workspace: &Path,
    limits: &Limits,
) -> Result<PathBuf, StageError> {
    if !sha.chars().all(|c| c.is_ascii_hexdigit()) || sha.len() < 7 {
        return Err(fail(
            Stage::Download,
            format!("{sha:?} is not a commit sha"),
        ));
    }
    match tokio::fs::remove_dir_all(workspace).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(host_failed(
                Stage::Download,
                format!("cannot clear the workspace {}: {e}", workspace.display()),
            ));
        }
    }
    tokio::fs::create_dir_all(workspace).await.map_err(|e| {
        host_failed(
            Stage::Download,
            format!("cannot create the workspace {}: {e}", workspace.display()),
        )
    })?;
    let tarball = workspace.join("source.tar.gz");
    let identity = client.identity(repo).await.map_err(download_failed)?;
    let url = client.url(&format!("/repos/{repo}/tarball/{sha}"));
    client
        .download_to(
            &identity,
            &url,
            &tarball,
            limits.max_compressed_bytes,
            DOWNLOAD_TIMEOUT,
        )
        .await
        .map_err(download_failed)?;

    let dir = workspace.join("checkout");
    let (source, dest, limits_owned) = (tarball.clone(), dir.clone(), limits.clone());
    let short = sha.get(..7).unwrap_or(sha).to_owned();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&source)
            .map_err(|e| format!("cannot open the downloaded archive: {e}"))?;
        archive::extract(std::io::BufReader::new(file), &dest, &limits_owned)
            .map(|_| ())
            .map_err(|e| format!("the archive of {short}: {e}"))
    })
    .await
    .map_err(|e| fail(Stage::Download, format!("extraction stopped: {e}")))?
    .map_err(|e| fail(Stage::Download, e))?;
    // The archive is no longer needed; the checkout is.
    let _ = tokio::fs::remove_file(&tarball).await;
    Ok(dir)
}

/// The `config` and `policy` stages on an extracted checkout, resolved as Compose project
/// `project`.
pub async fn check(dir: &Path, checks: &Checks<'_>) -> Result<Checkout, StageError> {
    let report = validate_checkout(dir, checks.policy, checks.cli, checks.project).await;
    // Every problem at once, so one push can fix them all; a refused construct names the stage.
    let stage = if report.violations.is_empty() {
        Stage::Config
    } else {
        Stage::Policy
    };
    let mut lines: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    lines.extend(report.violations.iter().map(|v| v.to_string()));
    match (report.spec, report.resolved) {
        (Some(spec), Some(resolved)) if lines.is_empty() => Ok(Checkout {
            dir: dir.to_path_buf(),
            spec,
            resolved,
            warnings: report.warnings.iter().map(|w| w.to_string()).collect(),
        }),
        _ if lines.is_empty() => Err(fail(Stage::Config, "no valid contract")),
        _ => Err(fail(stage, lines.join("\n"))),
    }
}
