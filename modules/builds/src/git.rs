//! git, driven as the real CLI through `productbuilder-process`: clone, branch, stage, commit,
//! list the files changed, push. The git work of a build is the daemon's, never the agent's.
//!
//! Why this way (research: git-browser-scaleout.md §1): the CLI pushes (gix does not), reports a
//! rejected push (libgit2 may not), signs with SSH keys, and costs no build time.
//!
//! What every call gets, whatever it does:
//! - an environment of `PATH` and what is listed here only (the process crate clears the rest);
//! - `GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=/dev/null`: the host's git configuration is not
//!   read; `GIT_TERMINAL_PROMPT=0`: git never waits for a password;
//! - through `GIT_CONFIG_COUNT` (the "command" scope, which beats the repository's own
//!   `.git/config`): `core.hooksPath=/dev/null` (the checkout holds the agent's and the pull
//!   request's files: a hook planted in `.git/hooks`, or a `core.hooksPath` the agent configured,
//!   would run with the token in its environment), `core.fsmonitor=false` (another command git
//!   would run), `credential.helper=` (no helper is asked or told anything);
//! - a deadline per step and the build's cancel token; errors name the step ([`Step`]).
//!
//! Authenticated calls (clone, push) add the token as an `http.<origin>/.extraheader`
//! ([`Credentials`]), through the environment only, and redact the token and its base64 form from
//! what is captured. The push goes to the clone URL the daemon holds, not to the checkout's
//! `origin` remote (which the agent could have changed), with an explicit refspec
//! `HEAD:refs/heads/<branch>`.
//!
//! Not covered here, for the module to decide: the git directory is inside the checkout, so what
//! the agent wrote into `.git/config` still applies to the daemon's `git add` and `git commit`
//! (clean/smudge filters, for instance), where no token is given; keeping the git directory out of
//! the agent's reach (`--git-dir` elsewhere) closes that too.

mod branch;
mod credentials;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use productbuilder_process::Command;
use tokio_util::sync::CancellationToken;

pub use branch::{BranchFor, branch_name, check_branch};
pub use credentials::Credentials;

/// A step of the git work, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Clone,
    Branch,
    Stage,
    ListFiles,
    Commit,
    Head,
    Push,
    ListRemote,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Clone => "clone",
            Step::Branch => "branch",
            Step::Stage => "stage",
            Step::ListFiles => "list files",
            Step::Commit => "commit",
            Step::Head => "read HEAD",
            Step::Push => "push",
            Step::ListRemote => "ls-remote",
        })
    }
}

/// Why a git step failed. None carries the token: the process crate's errors carry the command as
/// shown (without URL) and a redacted tail.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {step} failed: {source}")]
    Failed {
        step: Step,
        #[source]
        source: productbuilder_process::Error,
    },
    #[error("the clone URL is refused: {0}")]
    Url(&'static str),
    #[error("branch name `{name}` is refused: {why}")]
    Branch { name: String, why: &'static str },
    #[error("git {step} printed something unexpected: {detail}")]
    Output { step: Step, detail: String },
}

impl GitError {
    /// The step that failed, if a git command did.
    pub fn step(&self) -> Option<Step> {
        match self {
            GitError::Failed { step, .. } | GitError::Output { step, .. } => Some(*step),
            GitError::Url(_) | GitError::Branch { .. } => None,
        }
    }

    /// The last lines git printed (redacted), if a git command failed.
    pub fn tail(&self) -> &str {
        match self {
            GitError::Failed { source, .. } => source.tail(),
            _ => "",
        }
    }
}

/// Who commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// Default deadline of one git step.
pub const DEFAULT_STEP_DEADLINE: Duration = Duration::from_secs(300);

/// git for one build: its credentials, author, signing key, deadline per step and cancel token.
#[derive(Debug, Clone)]
pub struct Git {
    program: OsString,
    author: Author,
    credentials: Option<Credentials>,
    signing_key: Option<PathBuf>,
    step_deadline: Duration,
    cancel: CancellationToken,
}

impl Git {
    pub fn new(author: Author) -> Git {
        Git {
            program: "git".into(),
            author,
            credentials: None,
            signing_key: None,
            step_deadline: DEFAULT_STEP_DEADLINE,
            cancel: CancellationToken::new(),
        }
    }

    /// The git binary (default: `git` on the `PATH`).
    pub fn program(mut self, program: impl Into<OsString>) -> Git {
        self.program = program.into();
        self
    }

    /// The token for clone and push (none: an anonymous clone, e.g. a `file://` URL in tests).
    pub fn credentials(mut self, credentials: Credentials) -> Git {
        self.credentials = Some(credentials);
        self
    }

    /// Sign commits with this SSH private key (unencrypted; `gpg.format=ssh`, git ≥ 2.34).
    pub fn signing_key(mut self, key_file: impl Into<PathBuf>) -> Git {
        self.signing_key = Some(key_file.into());
        self
    }

    pub fn step_deadline(mut self, deadline: Duration) -> Git {
        self.step_deadline = deadline;
        self
    }

    pub fn cancel_on(mut self, cancel: CancellationToken) -> Git {
        self.cancel = cancel;
        self
    }

    /// Clones `url` into `dir` (which must not exist or be empty), on `branch` if given (else the
    /// remote's default branch).
    pub async fn clone(&self, url: &str, dir: &Path, branch: Option<&str>) -> Result<(), GitError> {
        if url.starts_with('-') {
            return Err(GitError::Url("it starts with '-'"));
        }
        let mut args: Vec<OsString> = vec!["clone".into(), "--no-tags".into()];
        if let Some(branch) = branch {
            check_branch(branch)?;
            args.extend(["--branch".into(), branch.into()]);
        }
        args.extend(["--".into(), url.into(), dir.into()]);
        let command = self.command(Step::Clone, None, args, true);
        self.run(Step::Clone, command).await.map(drop)
    }

    /// Creates `branch` at `HEAD` and switches to it (reset to `HEAD` if it exists: a retried
    /// build starts from the same place).
    pub async fn create_branch(&self, dir: &Path, branch: &str) -> Result<(), GitError> {
        check_branch(branch)?;
        let command = self.command(Step::Branch, Some(dir), ["switch", "-C", branch], false);
        self.run(Step::Branch, command).await.map(drop)
    }

    /// Stages everything in the work tree: changes, new files, deletions (`git add -A`).
    pub async fn stage_all(&self, dir: &Path) -> Result<(), GitError> {
        let command = self.command(Step::Stage, Some(dir), ["add", "-A"], false);
        self.run(Step::Stage, command).await.map(drop)
    }

    /// The paths staged for the next commit.
    pub async fn staged_files(&self, dir: &Path) -> Result<Vec<String>, GitError> {
        let args = ["diff", "--cached", "--name-only", "-z", "--no-renames"];
        let command = self.command(Step::ListFiles, Some(dir), args, false);
        Ok(paths(&self.run(Step::ListFiles, command).await?))
    }

    /// Commits what is staged, as the configured author (signed if a key is set), and returns the
    /// commit's id; `None` when nothing is staged (no empty commit).
    pub async fn commit(&self, dir: &Path, message: &str) -> Result<Option<String>, GitError> {
        if self.staged_files(dir).await?.is_empty() {
            return Ok(None);
        }
        let command = self.command(
            Step::Commit,
            Some(dir),
            ["commit", "-q", "-m", message],
            false,
        );
        self.run(Step::Commit, command).await?;
        self.head(dir).await.map(Some)
    }

    /// The commit `HEAD` points at.
    pub async fn head(&self, dir: &Path) -> Result<String, GitError> {
        let command = self.command(
            Step::Head,
            Some(dir),
            ["rev-parse", "--verify", "HEAD"],
            false,
        );
        let out = self.run(Step::Head, command).await?;
        let sha = out.trim();
        if sha.len() < 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(GitError::Output {
                step: Step::Head,
                detail: format!("not a commit id: {}", crate::agent::short(sha, 80)),
            });
        }
        Ok(sha.to_owned())
    }

    /// The paths that differ between `since` (a commit id) and `HEAD`.
    pub async fn files_changed(&self, dir: &Path, since: &str) -> Result<Vec<String>, GitError> {
        if since.is_empty() || !since.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(GitError::Output {
                step: Step::ListFiles,
                detail: "the base must be a commit id".into(),
            });
        }
        let range = format!("{since}..HEAD");
        let args = [
            "diff",
            "--name-only",
            "-z",
            "--no-renames",
            range.as_str(),
            "--",
        ];
        let command = self.command(Step::ListFiles, Some(dir), args, false);
        Ok(paths(&self.run(Step::ListFiles, command).await?))
    }

    /// Pushes `HEAD` to `refs/heads/{branch}` of `url` (the clone URL: not the checkout's remote,
    /// which the agent could have changed).
    pub async fn push(&self, dir: &Path, url: &str, branch: &str) -> Result<(), GitError> {
        check_branch(branch)?;
        if url.starts_with('-') {
            return Err(GitError::Url("it starts with '-'"));
        }
        let refspec = format!("HEAD:refs/heads/{branch}");
        let args = ["push", "--porcelain", "--no-verify", url, refspec.as_str()];
        let command = self.command(Step::Push, Some(dir), args, true);
        self.run(Step::Push, command).await.map(drop)
    }

    /// The commit `branch` of `url` points at, or `None` when the remote has no such branch
    /// (a build that goes on from its earlier work clones it instead of the base).
    pub async fn remote_branch(&self, url: &str, branch: &str) -> Result<Option<String>, GitError> {
        check_branch(branch)?;
        if url.starts_with('-') {
            return Err(GitError::Url("it starts with '-'"));
        }
        let pattern = format!("refs/heads/{branch}");
        let args = ["ls-remote", "--heads", url, pattern.as_str()];
        let command = self.command(Step::ListRemote, None, args, true);
        let out = self.run(Step::ListRemote, command).await?;
        Ok(out.lines().find_map(|line| {
            let (sha, name) = line.split_once('\t')?;
            (name == pattern && sha.len() >= 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| sha.to_owned())
        }))
    }

    /// The command for one step: its argv, and the environment that carries everything else.
    pub(crate) fn command<I, S>(
        &self,
        step: Step,
        dir: Option<&Path>,
        args: I,
        authenticated: bool,
    ) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut config: Vec<(String, String)> = vec![
            ("core.hooksPath".into(), "/dev/null".into()),
            ("core.fsmonitor".into(), "false".into()),
            ("credential.helper".into(), String::new()),
        ];
        if let Some(key) = &self.signing_key {
            config.extend([
                ("gpg.format".into(), "ssh".into()),
                ("user.signingkey".into(), key.to_string_lossy().into_owned()),
                ("commit.gpgsign".into(), "true".into()),
            ]);
        }
        let mut command = Command::new(&self.program, format!("git {step}"))
            .args(args)
            .inherit(["PATH"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .env("GIT_AUTHOR_NAME", &self.author.name)
            .env("GIT_AUTHOR_EMAIL", &self.author.email)
            .env("GIT_COMMITTER_NAME", &self.author.name)
            .env("GIT_COMMITTER_EMAIL", &self.author.email)
            .stdout_cap(4 * 1024 * 1024)
            .deadline(self.step_deadline)
            .cancel_on(self.cancel.clone());
        if authenticated && let Some(credentials) = &self.credentials {
            config.push((credentials.config_key(), credentials.header()));
            for secret in credentials.secrets() {
                command = command.redact(secret);
            }
        }
        command = command.env("GIT_CONFIG_COUNT", config.len().to_string());
        for (n, (key, value)) in config.into_iter().enumerate() {
            command = command
                .env(format!("GIT_CONFIG_KEY_{n}"), key)
                .env(format!("GIT_CONFIG_VALUE_{n}"), value);
        }
        if let Some(dir) = dir {
            command = command.current_dir(dir);
        }
        command
    }

    async fn run(&self, step: Step, command: Command) -> Result<String, GitError> {
        command
            .run()
            .await
            .map(|out| out.stdout)
            .map_err(|source| GitError::Failed { step, source })
    }
}

/// NUL-separated paths (`-z`), as git printed them.
fn paths(out: &str) -> Vec<String> {
    out.split('\0')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_in_no_argv() {
        let git = Git::new(Author {
            name: "pb".into(),
            email: "pb@example.com".into(),
        })
        .credentials(Credentials::for_url("https://github.com/o/r.git", "ghs_SECRET").unwrap());
        let refspec = "HEAD:refs/heads/productbuilder/issue-1";
        let push = git.command(
            Step::Push,
            Some(Path::new("/tmp/x")),
            ["push", "https://github.com/o/r.git", refspec],
            true,
        );
        // `Debug` shows the argv and hides every environment value.
        let shown = format!("{push:?}");
        assert!(shown.contains(refspec), "{shown}");
        assert!(!shown.contains("ghs_SECRET"), "{shown}");
        assert!(
            !shown.contains("eC1hY2Nlc3MtdG9rZW46Z2hzX1NFQ1JFVA"),
            "{shown}"
        );
        assert!(shown.contains("redact: 2 strings"), "{shown}");
        assert_eq!(push.shown(), "git push");
    }
}
