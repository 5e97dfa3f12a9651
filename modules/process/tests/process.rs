//! Real processes (`/bin/sh`): exit codes, the whole group killed on deadline, cancel, drop and the
//! parent's SIGKILL, the output cap, redaction, the environment allowlist.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use productbuilder_process::{Command, Ended, Error, Stream};
use tokio_util::sync::CancellationToken;

/// The helper mode of this binary (see `helper_parent`): set to a file where the pids go.
const HELPER_ENV: &str = "PB_PROCESS_TEST_HELPER_PIDS";

fn sh(script: &str) -> Command {
    Command::new("/bin/sh", "sh -c test-script")
        .arg("-c")
        .arg(script)
        .inherit(["PATH"])
}

/// Pids of live (not zombie) processes whose process group is `pgid`, from /proc.
fn live_members(pgid: i32) -> Vec<i32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            live.push(pid);
        }
    }
    live
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .map(|i| !stat[i + 2..].starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls until `check` holds, at most `within` (process teardown after SIGKILL is asynchronous).
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// The pids the script wrote to `file` (one a line), once it has written `count` of them.
async fn read_pids(file: &Path, count: usize) -> Vec<i32> {
    let mut pids = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            pids = std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            pids.len() >= count
        })
        .await,
        "the script did not write {count} pids to {}",
        file.display()
    );
    pids
}

/// A script that writes its pid (the group's id) and a background sleep's pid to `file`, then
/// sleeps in the foreground too.
fn group_script(file: &Path) -> Command {
    sh(r#"sleep 100 & echo $$ > "$F.tmp"; echo $! >> "$F.tmp"; mv "$F.tmp" "$F"; sleep 100"#)
        .env("F", file.as_os_str())
}

async fn assert_group_gone(pids: &[i32]) {
    let pgid = pids[0];
    assert!(
        eventually(Duration::from_secs(10), || live_members(pgid).is_empty()
            && pids.iter().all(|p| !alive(*p)))
        .await,
        "still alive in group {pgid}: {:?}",
        live_members(pgid)
    );
}

#[tokio::test]
async fn exit_code_and_tail() {
    let e = sh("echo one; echo two >&2; echo three; exit 3")
        .run()
        .await
        .unwrap_err();
    match &e {
        Error::Exit { ended, tail, .. } => {
            assert_eq!(*ended, Ended::Code(3));
            // Both streams, each in its order. (Across the two pipes, the order in which lines
            // arrive is the order they are read: two writes close in time may swap.)
            let lines: Vec<&str> = tail.lines().collect();
            assert_eq!(lines.len(), 3, "{tail}");
            assert!(lines.contains(&"two"), "{tail}");
            let out: Vec<&str> = lines.into_iter().filter(|l| *l != "two").collect();
            assert_eq!(out, ["one", "three"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.to_string(), "`sh -c test-script` exited with code 3");
}

#[tokio::test]
async fn success_returns_stdout_and_tail_keeps_the_last_lines() {
    let out = sh("for i in 1 2 3 4 5; do echo $i; done; echo err >&2")
        .tail_lines(2)
        .run()
        .await
        .unwrap();
    assert_eq!(out.stdout, "1\n2\n3\n4\n5\n");
    assert!(!out.stdout_truncated);
    assert_eq!(out.tail, "5\nerr");
}

#[tokio::test]
async fn a_signal_is_reported() {
    let e = sh("kill -TERM $$").run().await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Exit {
                ended: Ended::Signal(15),
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn deadline_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids");
    let started = Instant::now();
    let e = group_script(&file)
        .deadline(Duration::from_millis(1500))
        .run()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Deadline { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        e.to_string(),
        "`sh -c test-script` did not finish within 1.5s; it was killed"
    );
    let pids = read_pids(&file, 2).await;
    assert_group_gone(&pids).await;
}

#[tokio::test]
async fn cancel_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids");
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let command = group_script(&file).cancel_on(token.clone());
        async move { command.run().await }
    });
    let pids = read_pids(&file, 2).await;
    assert!(!live_members(pids[0]).is_empty());
    token.cancel();
    let e = run.await.unwrap().unwrap_err();
    assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
    assert_group_gone(&pids).await;
}

#[tokio::test]
async fn dropping_the_future_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids");
    let command = group_script(&file);
    let run = tokio::spawn(async move { command.run().await });
    let pids = read_pids(&file, 2).await;
    assert!(!live_members(pids[0]).is_empty());
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    assert_group_gone(&pids).await;
}

#[tokio::test]
async fn what_a_command_leaves_behind_is_killed_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids");
    // The background sleep keeps stdout open: without the group kill this would wait 100 s.
    let out = sh(r#"sleep 100 & echo $$ > "$F"; echo $! >> "$F"; echo done"#)
        .env("F", file.as_os_str())
        .deadline(Duration::from_secs(20))
        .run()
        .await
        .unwrap();
    assert_eq!(out.stdout, "done\n");
    let pids = read_pids(&file, 2).await;
    assert_group_gone(&pids).await;
}

#[tokio::test]
async fn stdout_is_capped() {
    // 1000 lines of 10 bytes; the cap keeps whole lines.
    let out = sh("i=0; while [ $i -lt 1000 ]; do echo 123456789; i=$((i+1)); done")
        .stdout_cap(95)
        .run()
        .await
        .unwrap();
    assert!(out.stdout_truncated);
    assert_eq!(out.stdout, "123456789\n".repeat(9));
    // The tail still sees the end.
    assert_eq!(out.tail.lines().count(), 60);
}

#[tokio::test]
async fn secrets_are_redacted_from_output_and_tail() {
    let e = sh(r#"echo "token=$TOKEN and pw=hunter2"; echo "$TOKEN" >&2; exit 1"#)
        .secret_env("TOKEN", "ghp_s3cret")
        .redact("hunter2")
        .run()
        .await
        .unwrap_err();
    let tail = e.tail().to_owned();
    assert_eq!(tail, "token=[redacted] and pw=[redacted]\n[redacted]");
    let debug = format!("{e:?} {e}");
    assert!(
        !debug.contains("ghp_s3cret") && !debug.contains("hunter2"),
        "{debug}"
    );

    let out = sh(r#"echo "$TOKEN""#)
        .secret_env("TOKEN", "ghp_s3cret")
        .run()
        .await
        .unwrap();
    assert_eq!(out.stdout, "[redacted]\n");
}

#[tokio::test]
async fn only_allowed_variables_are_inherited() {
    let home = std::env::var("HOME").expect("the test runs with HOME set");
    assert!(!home.is_empty());
    let path = std::env::var("PATH").expect("the test runs with PATH set");
    // PATH is allowed (by `sh`), HOME is not.
    let out = sh(r#"echo "p=$PATH h=$HOME g=$GIVEN""#)
        .env("GIVEN", "g")
        .run()
        .await
        .unwrap();
    assert_eq!(out.stdout, format!("p={path} h= g=g\n"));
}

#[tokio::test]
async fn a_missing_program_is_not_found() {
    let e = Command::new("/nonexistent/pb-no-such-program", "pb-no-such-program")
        .run()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert!(e.to_string().starts_with("`pb-no-such-program`"), "{e}");
}

#[tokio::test]
async fn the_working_directory_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = sh("pwd").current_dir(dir.path()).run().await.unwrap();
    assert_eq!(
        PathBuf::from(out.stdout.trim()).canonicalize().unwrap(),
        dir.path().canonicalize().unwrap()
    );
}

/// Not a test by itself: the parent process of `sigkill_of_the_parent_kills_the_group`, run as
/// this test binary with `HELPER_ENV` set. It starts the group through the crate and waits.
#[tokio::test]
async fn helper_parent() {
    let Some(file) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let _ = group_script(Path::new(&file)).run().await;
    unreachable!("the test kills this process first");
}

#[tokio::test]
async fn sigkill_of_the_parent_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids");
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_parent",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, &file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pids = read_pids(&file, 2).await;
    assert!(pids.iter().all(|p| alive(*p)));
    parent.kill().unwrap(); // SIGKILL: nothing of the parent's runs.
    parent.wait().unwrap();
    assert_group_gone(&pids).await;
}

/// Lines reach the observer while the command runs, not at its end: the script waits for a file
/// that only the observer creates once it saw the first line, so a late observer would leave it
/// waiting until its deadline. Lines are redacted and keep their stream and order.
#[tokio::test]
async fn lines_are_observed_while_the_command_runs_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("seen-first");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (observed, flag_path) = (seen.clone(), flag.clone());
    let script = format!(
        "echo 'first hunter2'; echo 'to stderr' >&2; \
         while [ ! -e '{}' ]; do sleep 0.01; done; echo second",
        flag.display()
    );
    let out = sh(&script)
        .redact("hunter2")
        .deadline(Duration::from_secs(20))
        .on_line(move |stream, line| {
            observed.lock().unwrap().push((stream, line.to_owned()));
            if line.starts_with("first") {
                std::fs::write(&flag_path, b"").unwrap();
            }
        })
        .run()
        .await
        .expect("the observer saw the first line while the script ran");
    assert_eq!(out.stdout, "first [redacted]\nsecond\n");
    let seen = seen.lock().unwrap().clone();
    let stdout: Vec<&str> = seen
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(stdout, ["first [redacted]", "second"]);
    assert!(
        seen.contains(&(Stream::Stderr, "to stderr".to_owned())),
        "{seen:?}"
    );
}
