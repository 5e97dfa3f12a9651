//! The bare git repositories behind git-backed sandbox repositories, driven with the real `git`.
//!
//! They live under one temporary directory the sandbox owns (`{root}/{owner}/{name}.git`, lower
//! case), removed when the sandbox goes. Every command runs with a cleared environment (only
//! `PATH`, a `HOME` inside the root, no system or global configuration), so the developer's own
//! git configuration (hooks, signing, credential helpers) never leaks into a test.
//!
//! The functions are synchronous: the control API calls them directly, HTTP handlers through
//! `spawn_blocking`. Refs and revisions that come from HTTP are checked by [`check_branch`] and
//! [`check_revision`] before they reach an argv.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The directory holding every bare repository of one sandbox; removed by [`GitRoot::remove`]
/// (when the sandbox is shut down or dropped) or, failing that, on drop.
#[derive(Debug)]
pub(crate) struct GitRoot {
    path: PathBuf,
    dir: std::sync::Mutex<Option<tempfile::TempDir>>,
}

impl GitRoot {
    pub(crate) fn new() -> io::Result<GitRoot> {
        let dir = tempfile::Builder::new()
            .prefix("github-sandbox-git-")
            .tempdir()?;
        std::fs::create_dir_all(dir.path().join(".home"))?;
        Ok(GitRoot {
            path: dir.path().to_path_buf(),
            dir: std::sync::Mutex::new(Some(dir)),
        })
    }

    /// `GIT_PROJECT_ROOT` for `git http-backend`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the bare repository of a repository key (`owner/name`, lower case) lives.
    pub(crate) fn repo_dir(&self, key: &str) -> PathBuf {
        self.path.join(format!("{key}.git"))
    }

    /// Removes the directory now (connections still open may hold the sandbox's state; its
    /// repositories must not outlive it). Later git requests fail.
    pub(crate) fn remove(&self) {
        let dir = self
            .dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(dir) = dir
            && let Err(error) = dir.close()
        {
            tracing::warn!(%error, "github sandbox: removing the git repositories");
        }
    }
}

/// `git` with an environment of our own: `PATH`, `HOME` under the root, no system or global
/// configuration, no prompts, a fixed identity for the commits the sandbox makes.
pub(crate) fn command(root: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root.join(".home"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env("GIT_AUTHOR_NAME", "GitHub Sandbox")
        .env("GIT_AUTHOR_EMAIL", "sandbox@github.invalid")
        .env("GIT_COMMITTER_NAME", "GitHub Sandbox")
        .env("GIT_COMMITTER_EMAIL", "sandbox@github.invalid")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd`, failing with its stderr when it exits non-zero.
fn run(mut cmd: Command, what: &str) -> io::Result<Output> {
    let output = cmd.output()?;
    if output.status.success() {
        return Ok(output);
    }
    Err(io::Error::other(format!(
        "git {what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

fn git_dir(root: &Path, dir: &Path) -> Command {
    let mut cmd = command(root);
    cmd.arg("--git-dir").arg(dir);
    cmd
}

/// Creates the bare repository `dir` with `default_branch` holding one commit of `files`, and
/// pushes allowed over HTTP. Returns the commit's sha.
pub(crate) fn init(
    root: &Path,
    dir: &Path,
    default_branch: &str,
    files: &[(String, Vec<u8>)],
) -> io::Result<String> {
    let mut cmd = command(root);
    cmd.args([
        "init",
        "--quiet",
        "--bare",
        "--initial-branch",
        default_branch,
    ])
    .arg(dir);
    run(cmd, "init")?;
    let mut cmd = git_dir(root, dir);
    cmd.args(["config", "http.receivepack", "true"]);
    run(cmd, "config")?;

    // The initial commit is made in a throwaway work tree and index, so the bare repository
    // keeps no index of its own.
    let work = tempfile::Builder::new().prefix("seed-").tempdir_in(root)?;
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree)?;
    for (path, content) in files {
        let file = tree.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, content)?;
        // Seed files come without modes: executables are inferred from their content, as the
        // sandbox's tarballs do, so that git records them 100755 (a scratch image runs them).
        if content.starts_with(b"\x7fELF") || content.starts_with(b"#!") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let index = work.path().join("index");
    let mut cmd = git_dir(root, dir);
    cmd.arg("--work-tree")
        .arg(&tree)
        .env("GIT_INDEX_FILE", &index)
        .args(["add", "--all", "."]);
    run(cmd, "add")?;
    let mut cmd = git_dir(root, dir);
    cmd.arg("--work-tree")
        .arg(&tree)
        .env("GIT_INDEX_FILE", &index)
        .args(["commit", "--quiet", "--allow-empty", "-m", "Initial commit"]);
    run(cmd, "commit")?;
    resolve(root, dir, &format!("refs/heads/{default_branch}"))?
        .ok_or_else(|| io::Error::other("git init: the initial commit has no ref"))
}

/// Every branch and its head, read from the repository now.
pub(crate) fn branches(root: &Path, dir: &Path) -> io::Result<BTreeMap<String, String>> {
    let mut cmd = git_dir(root, dir);
    cmd.args([
        "for-each-ref",
        "--format=%(objectname) %(refname)",
        "refs/heads/",
    ]);
    let output = run(cmd, "for-each-ref")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (sha, name) = line.split_once(' ')?;
            let name = name.strip_prefix("refs/heads/")?;
            Some((name.to_string(), sha.to_string()))
        })
        .collect())
}

/// The commit `revision` names, or `None` when it names none. `revision` must have passed
/// [`check_revision`] (or be built by the sandbox itself).
pub(crate) fn resolve(root: &Path, dir: &Path, revision: &str) -> io::Result<Option<String>> {
    let mut cmd = git_dir(root, dir);
    cmd.args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{revision}^{{commit}}"));
    let output = cmd.output()?;
    if !output.status.success() {
        return Ok(None);
    }
    let sha = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Ok(Some(sha))
}

/// `git archive --format=tar.gz --prefix={top}/ {sha}`: what codeload serves.
pub(crate) fn archive(root: &Path, dir: &Path, sha: &str, top: &str) -> io::Result<Vec<u8>> {
    let mut cmd = git_dir(root, dir);
    cmd.args(["archive", "--format=tar.gz"])
        .arg(format!("--prefix={top}/"))
        .arg("--end-of-options")
        .arg(sha);
    Ok(run(cmd, "archive")?.stdout)
}

/// The bytes of `path` at commit `sha` (`git cat-file blob {sha}:{path}`); `None` when the
/// commit has no such file. `sha` is a full sha resolved by the sandbox; `path` must have
/// passed [`check_path`].
pub(crate) fn file_at(
    root: &Path,
    dir: &Path,
    sha: &str,
    path: &str,
) -> io::Result<Option<Vec<u8>>> {
    let mut cmd = git_dir(root, dir);
    cmd.args(["cat-file", "blob", "--end-of-options"])
        .arg(format!("{sha}:{path}"));
    let output = cmd.output()?;
    Ok(output.status.success().then_some(output.stdout))
}

/// Whether `path` is a plain relative path inside a tree (no `.`/`..` or empty segments, no
/// leading `-` or `:`, no control characters): what an HTTP caller may ask for.
pub(crate) fn check_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 4096
        && !path.starts_with(['-', ':'])
        && !path.chars().any(|c| c.is_control() || c == '\\')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// Whether `name` is a branch name git would accept and that cannot be read as an option or a
/// revision expression (`..`, `@{`, `^`, `~`, `:`...): what an HTTP caller may name.
pub(crate) fn check_branch(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name.contains("/.")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./+@".contains(&b))
}

/// Whether `revision` is a full or abbreviated sha or a [`check_branch`] name (optionally with
/// `refs/heads/` or `heads/`).
pub(crate) fn check_revision(revision: &str) -> bool {
    let hex = (4..=40).contains(&revision.len()) && revision.bytes().all(|b| b.is_ascii_hexdigit());
    hex || check_branch(revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_branch_names_are_refused() {
        for good in ["main", "pb/issue-11", "feature_x.y", "a+b@c"] {
            assert!(check_branch(good), "{good}");
        }
        for bad in [
            "",
            "-n",
            "--upload-pack=x",
            "a..b",
            "HEAD@{1}",
            "main^",
            "main~1",
            "a:b",
            "a b",
            "x.lock",
            "/abs",
            "a//b",
            "a/.hidden",
            "trail/",
            "new\nline",
        ] {
            assert!(!check_branch(bad), "{bad:?}");
        }
        assert!(check_revision("0123abcd"));
        assert!(!check_revision("-0123abcd"));
    }

    #[test]
    fn a_bare_repository_with_files_archives_them() {
        let root = GitRoot::new().unwrap();
        let dir = root.repo_dir("o/r");
        let files = vec![
            ("README.md".to_string(), b"hello\n".to_vec()),
            ("app/index.html".to_string(), b"<h1>hi</h1>".to_vec()),
        ];
        let sha = init(root.path(), &dir, "main", &files).unwrap();
        assert_eq!(sha.len(), 40);
        let heads = branches(root.path(), &dir).unwrap();
        assert_eq!(heads.get("main"), Some(&sha));
        assert_eq!(
            resolve(root.path(), &dir, "main").unwrap(),
            Some(sha.clone())
        );
        assert_eq!(resolve(root.path(), &dir, "nope").unwrap(), None);
        assert!(
            !dir.join("index").exists(),
            "the bare repository has no index"
        );

        let gz = archive(root.path(), &dir, &sha, "o-r-abc1234").unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
        let names: Vec<String> = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&"o-r-abc1234/app/index.html".to_string()),
            "{names:?}"
        );
        let path = root.path().to_path_buf();
        drop(root);
        assert!(!path.exists(), "the root is removed on drop");
    }
}
