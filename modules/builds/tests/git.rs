//! The git plumbing against real git: a bare repository as origin (`file://`) for the round trip,
//! hooks the checkout plants that must not run, and an HTTP server that records what git sends to
//! an `http://` origin: the token in the `Authorization` header, and nowhere else.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use productbuilder_builds::git::{
    Author, BranchFor, Credentials, Git, GitError, Step, branch_name,
};

mod support;
use support::raw_git;

const TOKEN: &str = "ghs_TestToken0123456789abcdefXYZ";

fn author() -> Author {
    Author {
        name: "productbuilder".into(),
        email: "builds@productbuilder.example".into(),
    }
}

fn write_executable(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A hook that leaves a mark (and what it could see of the token) in `marks`.
fn hook(marks: &Path, name: &str) -> String {
    format!(
        "#!/bin/sh\necho ran > '{}/{name}'\nenv >> '{}/{name}'\n",
        marks.display(),
        marks.display()
    )
}

/// A bare origin on `main` whose one commit holds `app.txt`, `old.txt` and `.githooks/` (hooks
/// committed to the repository, which the agent could point `core.hooksPath` at).
fn origin(root: &Path, marks: &Path) -> PathBuf {
    let bare = root.join("origin.git");
    std::fs::create_dir_all(&bare).unwrap();
    raw_git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    raw_git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::write(seed.join("app.txt"), "hello\n").unwrap();
    std::fs::write(seed.join("old.txt"), "to be removed\n").unwrap();
    for name in ["pre-commit", "post-checkout", "pre-push", "commit-msg"] {
        write_executable(
            &seed.join(".githooks").join(name),
            &hook(marks, &format!("committed-{name}")),
        );
    }
    raw_git(&seed, &["add", "-A"]);
    raw_git(&seed, &["commit", "-q", "-m", "seed"]);
    raw_git(&seed, &["push", "-q", bare.to_str().unwrap(), "main"]);
    bare
}

/// The hooks an agent could plant in its checkout: in `.git/hooks`, and `core.hooksPath` set to
/// the committed `.githooks` in the repository's own configuration.
fn plant_hooks(checkout: &Path, marks: &Path) {
    for name in ["pre-commit", "post-checkout", "pre-push", "commit-msg"] {
        write_executable(
            &checkout.join(".git/hooks").join(name),
            &hook(marks, &format!("planted-{name}")),
        );
    }
    raw_git(checkout, &["config", "core.hooksPath", ".githooks"]);
    raw_git(
        checkout,
        &[
            "config",
            "core.fsmonitor",
            &format!("{}/fsmonitor", marks.display()),
        ],
    );
    write_executable(&marks.join("fsmonitor"), &hook(marks, "fsmonitor-ran"));
}

fn marks_left(marks: &Path) -> Vec<String> {
    std::fs::read_dir(marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "fsmonitor")
        .collect()
}

fn grep_tree(dir: &Path, needles: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(grep_tree(&path, needles));
        } else if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes);
            if needles.iter().any(|n| text.contains(n)) {
                found.push(path);
            }
        }
    }
    found
}

fn basic() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
}

#[tokio::test]
async fn clone_branch_commit_push_round_trip_with_no_hook_run() {
    let root = tempfile::tempdir().unwrap();
    let marks = root.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let bare = origin(root.path(), &marks);
    let url = format!("file://{}", bare.display());
    // The header is scoped to another origin (file:// takes none), but it is in the environment
    // of every authenticated call: it must end up in no file.
    let git = Git::new(author())
        .credentials(Credentials::for_url("https://github.example/o/r.git", TOKEN).unwrap())
        .step_deadline(Duration::from_secs(60));
    let checkout = root.path().join("checkout");

    git.clone(&url, &checkout, None).await.unwrap();
    let base = git.head(&checkout).await.unwrap();
    plant_hooks(&checkout, &marks);

    let branch = branch_name("productbuilder/", BranchFor::Issue(7)).unwrap();
    git.create_branch(&checkout, &branch).await.unwrap();
    // What the agent changed: an edit, a new file in a new directory, a deletion.
    std::fs::write(checkout.join("app.txt"), "hello, world\n").unwrap();
    std::fs::create_dir_all(checkout.join("docs")).unwrap();
    std::fs::write(checkout.join("docs/new file.md"), "# new\n").unwrap();
    std::fs::remove_file(checkout.join("old.txt")).unwrap();
    git.stage_all(&checkout).await.unwrap();
    let sha = git
        .commit(&checkout, "Implement #7\n\nCloses #7")
        .await
        .unwrap()
        .expect("there were changes");
    assert_eq!(git.head(&checkout).await.unwrap(), sha);
    let mut files = git.files_changed(&checkout, &base).await.unwrap();
    files.sort();
    assert_eq!(files, ["app.txt", "docs/new file.md", "old.txt"]);
    git.push(&checkout, &url, &branch).await.unwrap();

    // Nothing changed since: no empty commit.
    git.stage_all(&checkout).await.unwrap();
    assert_eq!(git.commit(&checkout, "nothing").await.unwrap(), None);

    // The origin has the branch at the commit, by the configured author, with the message.
    let pushed = raw_git(&bare, &["rev-parse", &format!("refs/heads/{branch}")]);
    assert_eq!(pushed.trim(), sha);
    let log = raw_git(&bare, &["log", "-1", "--format=%an|%ae|%cn|%ce|%B", &sha]);
    assert_eq!(
        log.trim(),
        "productbuilder|builds@productbuilder.example|productbuilder|builds@productbuilder.example|Implement #7\n\nCloses #7"
    );
    assert_eq!(
        raw_git(&bare, &["rev-parse", "refs/heads/main"]).trim(),
        base,
        "main is untouched"
    );

    // No hook ran: neither planted in .git/hooks nor committed and configured as core.hooksPath,
    // nor the fsmonitor command.
    assert_eq!(marks_left(&marks), Vec::<String>::new());
    // The token is in no file of the checkout (.git/config included) nor of the origin.
    let basic = basic();
    let needles = [TOKEN, basic.as_str()];
    assert_eq!(grep_tree(&checkout, &needles), Vec::<PathBuf>::new());
    assert_eq!(grep_tree(&bare, &needles), Vec::<PathBuf>::new());

    // The hooks are real: git run as the agent would run it does run the configured one.
    raw_git(
        &checkout,
        &["commit", "-q", "--allow-empty", "-m", "by hand"],
    );
    assert!(
        marks_left(&marks).contains(&"committed-pre-commit".to_owned()),
        "{:?}",
        marks_left(&marks)
    );
}

#[tokio::test]
async fn clone_of_a_branch_and_errors_name_their_step() {
    let root = tempfile::tempdir().unwrap();
    let marks = root.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let bare = origin(root.path(), &marks);
    let url = format!("file://{}", bare.display());
    let git = Git::new(author()).step_deadline(Duration::from_secs(60));

    let missing = git
        .clone(&url, &root.path().join("a"), Some("no-such-branch"))
        .await
        .unwrap_err();
    assert_eq!(missing.step(), Some(Step::Clone), "{missing}");
    assert!(
        missing.to_string().starts_with("git clone failed"),
        "{missing}"
    );
    assert!(
        missing.tail().contains("no-such-branch"),
        "{}",
        missing.tail()
    );

    let checkout = root.path().join("b");
    git.clone(&url, &checkout, Some("main")).await.unwrap();
    let refused = git.push(&checkout, &url, "../main").await.unwrap_err();
    assert!(matches!(refused, GitError::Branch { .. }), "{refused}");
    let rejected = git
        .push(
            &checkout,
            &format!("file://{}/nope.git", root.path().display()),
            "x",
        )
        .await
        .unwrap_err();
    assert_eq!(rejected.step(), Some(Step::Push), "{rejected}");
    let bad_base = git
        .files_changed(&checkout, "HEAD~1; rm")
        .await
        .unwrap_err();
    assert_eq!(bad_base.step(), Some(Step::ListFiles));
}

/// What the test server saw: the request's head, and whether any process's argv held the token
/// while git was waiting for the answer.
struct Seen {
    head: String,
    git_processes_seen: usize,
    argv_with_token: Vec<String>,
}

/// Every process's argv (`/proc/*/cmdline`), NULs as spaces.
fn all_argv() -> Vec<String> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) {
            all.push(String::from_utf8_lossy(&bytes).replace('\0', " "));
        }
    }
    all
}

/// An HTTP server for one request: it reads the head, looks at every process's argv (git and its
/// `git-remote-http` child are blocked on this answer), then answers 404.
fn one_request_server() -> (String, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let argv = all_argv();
        let secret = basic();
        let seen = Seen {
            head,
            git_processes_seen: argv
                .iter()
                .filter(|a| a.contains("git") && a.contains(&address.to_string()))
                .count(),
            argv_with_token: argv
                .into_iter()
                .filter(|a| a.contains(TOKEN) || a.contains(&secret))
                .collect(),
        };
        let mut stream = stream;
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        tx.send(seen).unwrap();
    });
    (format!("http://{address}"), rx)
}

#[tokio::test]
async fn the_token_travels_in_the_authorization_header_only() {
    let (server, seen) = one_request_server();
    let url = format!("{server}/o/r.git");
    let git = Git::new(author())
        .credentials(Credentials::for_url(&url, TOKEN).unwrap())
        .step_deadline(Duration::from_secs(60));
    let root = tempfile::tempdir().unwrap();
    let checkout = root.path().join("checkout");

    let err = git.clone(&url, &checkout, None).await.unwrap_err();
    let seen = seen.recv_timeout(Duration::from_secs(10)).unwrap();

    let request_line = seen.head.lines().next().unwrap();
    assert_eq!(
        request_line,
        "GET /o/r.git/info/refs?service=git-upload-pack HTTP/1.1"
    );
    let authorization: Vec<&str> = seen
        .head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim())
        .collect();
    assert_eq!(
        authorization,
        [format!("basic {}", basic())],
        "{}",
        seen.head
    );
    // git and its remote helper were running, and neither argv held the token.
    // git and `git remote-http` (which makes the request) are both waiting for the answer.
    assert!(
        seen.git_processes_seen >= 2,
        "{} git processes seen",
        seen.git_processes_seen
    );
    assert_eq!(seen.argv_with_token, Vec::<String>::new());
    // The failure names its step, and neither it nor the captured output holds the token.
    assert_eq!(err.step(), Some(Step::Clone), "{err}");
    for shown in [err.to_string(), format!("{err:?}"), err.tail().to_owned()] {
        assert!(
            !shown.contains(TOKEN) && !shown.contains(&basic()),
            "{shown}"
        );
    }
    assert!(err.tail().contains("not found"), "{}", err.tail());
    // Nothing of the failed clone kept the token.
    if checkout.exists() {
        assert_eq!(
            grep_tree(&checkout, &[TOKEN, &basic()]),
            Vec::<PathBuf>::new()
        );
    }
}

#[tokio::test]
async fn the_header_goes_to_its_origin_only() {
    let (server, seen) = one_request_server();
    let git = Git::new(author())
        .credentials(Credentials::for_url("https://github.com/o/r.git", TOKEN).unwrap())
        .step_deadline(Duration::from_secs(60));
    let root = tempfile::tempdir().unwrap();
    let err = git
        .clone(&format!("{server}/o/r.git"), &root.path().join("c"), None)
        .await
        .unwrap_err();
    assert_eq!(err.step(), Some(Step::Clone));
    let seen = seen.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        !seen.head.to_ascii_lowercase().contains("authorization"),
        "{}",
        seen.head
    );
}

#[tokio::test]
async fn commits_are_signed_with_the_ssh_key() {
    let Ok(keygen) = which("ssh-keygen") else {
        eprintln!("skipped: ssh-keygen is not on the PATH, SSH signing cannot be tested");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let marks = root.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let bare = origin(root.path(), &marks);
    let key = root.path().join("signing_key");
    let out = std::process::Command::new(keygen)
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "productbuilder",
            "-f",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let git = Git::new(author())
        .signing_key(&key)
        .step_deadline(Duration::from_secs(60));
    let checkout = root.path().join("checkout");
    git.clone(&format!("file://{}", bare.display()), &checkout, None)
        .await
        .unwrap();
    std::fs::write(checkout.join("app.txt"), "signed\n").unwrap();
    git.stage_all(&checkout).await.unwrap();
    let sha = git.commit(&checkout, "signed").await.unwrap().unwrap();

    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let allowed = root.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!("builds@productbuilder.example namespaces=\"git\" {public}"),
    )
    .unwrap();
    let verify = std::process::Command::new("git")
        .args(["-c", "gpg.format=ssh", "-c"])
        .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
        .args(["verify-commit", &sha])
        .current_dir(&checkout)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{said}");
    assert!(said.contains("Good \"git\" signature"), "{said}");
}

/// A server that accepts one connection, says so, and never answers while the test runs.
fn silent_server() -> (String, mpsc::Receiver<std::net::TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        // The stream is handed over (kept open) so that git keeps waiting.
        let _ = tx.send(stream);
    });
    (format!("http://{address}/o/r.git"), rx)
}

#[tokio::test]
async fn a_step_that_hangs_is_cancelled_or_stopped_by_its_deadline() {
    let root = tempfile::tempdir().unwrap();
    // Cancelled once git is waiting on the server.
    let (url, connected) = silent_server();
    let cancel = tokio_util::sync::CancellationToken::new();
    let git = Git::new(author())
        .credentials(Credentials::for_url(&url, TOKEN).unwrap())
        .cancel_on(cancel.clone());
    let checkout = root.path().join("a");
    let clone = git.clone(&url, &checkout, None);
    let watcher = tokio::task::spawn_blocking(move || {
        let stream = connected.recv().unwrap();
        cancel.cancel();
        stream
    });
    let (result, _stream) = tokio::join!(clone, watcher);
    let err = result.unwrap_err();
    assert_eq!(err.step(), Some(Step::Clone));
    assert!(
        matches!(
            err,
            GitError::Failed {
                source: productbuilder_process::Error::Cancelled { .. },
                ..
            }
        ),
        "{err}"
    );

    // Stopped by the step's deadline.
    let (url, _connected) = silent_server();
    let git = Git::new(author()).step_deadline(Duration::from_millis(500));
    let err = git
        .clone(&url, &root.path().join("b"), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("git clone failed: `git clone` did not finish within"),
        "{err}"
    );
}

fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}
