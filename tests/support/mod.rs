//! What the end-to-end tests of the binary share: the docker CLI, loopback HTTP, waiting on
//! another process, and the example app's files. Each test binary uses a part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

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

/// One HTTP/1.0 request to a loopback address; the status and the body.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Polls `what` until it returns `Some`, or fails the test naming what was awaited and the last
/// thing seen. The daemon is another process: there is no event to await but its answers.
pub fn wait_for<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {within:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Now, as `docker events` takes it (the test and the engine share the clock).
pub fn unix_now() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example app's files, with a page that says `version`.
pub fn app_files(version: &str, socket_mount: bool, slow_build: bool) -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/hello-preview");
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    let mut dockerfile = String::from_utf8(read("Dockerfile")).unwrap();
    if slow_build {
        // A build step that takes a while, so the test can kill the daemon in the middle of it;
        // its command is new on every run, so no earlier run's cache skips it (BuildKit keys a
        // step by its command and its parent's files, not by labels).
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        dockerfile = dockerfile.replace(
            "COPY www /www",
            &format!(
                "COPY www /www\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"sleep 4; : {nonce}\"]"
            ),
        );
    }
    let mut compose =
        String::from_utf8(read(".productbuilding/preview/docker-compose.yml")).unwrap();
    if socket_mount {
        compose.push_str("    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n");
    }
    vec![
        ("Dockerfile".into(), dockerfile.into_bytes()),
        (
            ".productbuilding/preview/config.yml".into(),
            read(".productbuilding/preview/config.yml"),
        ),
        (
            ".productbuilding/preview/docker-compose.yml".into(),
            compose.into_bytes(),
        ),
        (
            "www/index.html".into(),
            format!("<h1>Hello from a productbuilder preview</h1><p>{version}</p>\n").into_bytes(),
        ),
        ("busybox".into(), std::fs::read("/bin/busybox").unwrap()),
    ]
}

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_productbuilder");

/// A daemon with its log lines (stderr) streamed to the test; killed when dropped, also when a
/// test fails. Tests add the calls they need in their own `impl Daemon` blocks.
pub struct Daemon {
    pub child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
    pub port: u16,
}

impl Daemon {
    /// `productbuilder run --config {config}`, listening on a free loopback port.
    pub fn run(config: &std::path::Path) -> Daemon {
        let port = free_port();
        let mut command = Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(config)
            .env("PRODUCTBUILDER_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("RUST_LOG");
        Daemon::spawn(&mut command, port)
    }

    /// `command` must make the daemon listen on `port`.
    pub fn spawn(command: &mut Command, port: u16) -> Daemon {
        use std::io::BufRead;
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon { child, lines, port }
    }

    /// Waits for a log line containing `needle` and returns it; fails with every line read.
    pub fn wait_for(&self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no log line with {needle:?}; got:\n{}", seen.join("\n")),
            }
        }
    }

    /// SIGKILL, and its end awaited.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes whatever the engine still holds of `repo`'s previews (containers by their tenant label;
/// the compose projects' networks and images, named `pb--{owner}--{name}--{number}…` by
/// planner::names) and the shared `network`: a test's site calls it when dropped, also when the
/// test failed. Errors are ignored (there may be nothing to remove).
pub fn remove_previews_of(repo: &str, network: &str) {
    let (owner, name) = repo.split_once('/').expect("owner/name");
    let prefix = format!("pb--{owner}--{name}--");
    let script = format!(
        "ids=$(docker ps -aq --filter 'label=productbuilder.tenant={repo}'); [ -z \"$ids\" ] || docker rm -f $ids
         for n in $(docker network ls --format '{{{{.Name}}}}' | grep '^{prefix}'); do docker network rm $n; done
         for i in $(docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '^{prefix}'); do docker rmi -f $i; done
         docker network rm {network}"
    );
    let _ = Command::new("sh").args(["-c", &script]).output();
}
