//! External processes, run so that none outlives its caller and none sees more than it is given.
//!
//! - **Environment**: cleared, then only the variables named in [`Command::inherit`] are copied
//!   from the daemon, plus those given with [`Command::env`]. Given values may be secrets: `Debug`
//!   never prints them and no error carries them. Standard input is `/dev/null`.
//! - **Process group**: the command leads its own group, and the *whole* group gets `SIGKILL` when
//!   the command is cancelled, misses its deadline, when the future running it is dropped, and also
//!   when it ends by itself (a `sleep 100 &` left behind would otherwise hold the output pipes
//!   open and live on).
//! - **The daemon's own death, even by `SIGKILL`** (nothing of ours runs then):
//!   - the command gets `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it with us;
//!   - before the command's program starts, a *watcher* is forked into its group: a copy of the
//!     forked child that closes every descriptor but the read end of a pipe whose only writer is
//!     the daemon, and blocks reading it. The daemon's death closes the pipe (the kernel closes a
//!     dead process's descriptors), the read returns, and the watcher kills the group, itself
//!     included. That covers what the command started (grandchildren in the group), which
//!     `PDEATHSIG` alone would not. A grandchild that leaves the group (`setsid`, `setpgid`) is out
//!     of reach of either, as it is of a normal kill of the group.
//!   - The kernel sends `PDEATHSIG` when the *thread* that spawned the child exits, not the process:
//!     [`Command::run`] spawns on the calling thread, which must live as long as the command (a
//!     Tokio worker thread does; a `spawn_blocking` thread, which ends when idle, does not).
//!   - The watcher and the group's killed members are reaped by init (or the nearest subreaper):
//!     run the daemon under an init that reaps (systemd does; in a container, `docker run --init`).
//! - **Output**: standard output is kept up to [`Command::stdout_cap`] bytes (for commands whose
//!   output is parsed); the last [`Command::tail_lines`] lines of standard output and error,
//!   interleaved in the order they arrived, are kept for error reports. Every string given to
//!   [`Command::redact`] (and every value given with [`Command::secret_env`]) is replaced by
//!   `[redacted]` in both, line by line (a secret spanning lines, or one cut by the line length
//!   limit, is not recognised).
//! - **Errors** ([`Error`]) name the command as the caller chose to show it ([`Command::new`]'s
//!   `shown`), never its environment.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// What replaces a redacted secret.
pub const REDACTED: &str = "[redacted]";

/// Lines of the tail kept by default.
pub const DEFAULT_TAIL_LINES: usize = 60;
/// Standard output kept by default.
pub const DEFAULT_STDOUT_CAP: usize = 16 * 1024 * 1024;
/// A line of the tail is cut at this many bytes: the tail is for people.
const TAIL_LINE_MAX: usize = 2000;
/// A line longer than this (and than the stdout cap, on standard output) is cut into pieces, so a
/// stream without newlines cannot grow the buffer without bound.
const LINE_MAX: usize = 64 * 1024;
/// After the command has exited and its group is killed, its output pipes close at once, unless a
/// process that left the group holds them: this long is given to read what is left.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// A value that may be a secret: `Debug` never shows it.
#[derive(Clone)]
struct Hidden(OsString);

impl fmt::Debug for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[hidden]")
    }
}

/// An external command: what to run, with what, for how long.
#[derive(Clone)]
pub struct Command {
    shown: String,
    program: OsString,
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    inherit: Vec<String>,
    env: Vec<(OsString, Hidden)>,
    redact: Vec<String>,
    stdout_cap: usize,
    tail_lines: usize,
    deadline: Option<Duration>,
    cancel: Option<CancellationToken>,
    on_line: Option<LineObserver>,
}

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Sees every line of output as it arrives, already redacted (see [`Command::on_line`]).
pub type LineObserver = Arc<dyn Fn(Stream, &str) + Send + Sync>;

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("shown", &self.shown)
            .field("program", &self.program)
            .field("args", &self.args)
            .field("dir", &self.dir)
            .field("inherit", &self.inherit)
            .field("env", &self.env)
            .field("redact", &format_args!("{} strings", self.redact.len()))
            .field("stdout_cap", &self.stdout_cap)
            .field("tail_lines", &self.tail_lines)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Command {
    /// `program`, shown in errors and logs as `shown` (the command as people would type it, without
    /// host paths or secrets).
    pub fn new(program: impl Into<OsString>, shown: impl Into<String>) -> Command {
        Command {
            shown: shown.into(),
            program: program.into(),
            args: Vec::new(),
            dir: None,
            inherit: Vec::new(),
            env: Vec::new(),
            redact: Vec::new(),
            stdout_cap: DEFAULT_STDOUT_CAP,
            tail_lines: DEFAULT_TAIL_LINES,
            deadline: None,
            cancel: None,
            on_line: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Command {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Command {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The working directory (the daemon's when unset).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Command {
        self.dir = Some(dir.into());
        self
    }

    /// Variables copied from the daemon's environment when it has them; no other is.
    pub fn inherit<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Command {
        self.inherit.extend(names.into_iter().map(Into::into));
        self
    }

    /// A variable given explicitly (it wins over an inherited one of the same name). Its value is
    /// never printed by `Debug` nor in errors; it is not redacted from the output (see
    /// [`Command::secret_env`]).
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Command {
        self.env.push((name.into(), Hidden(value.into())));
        self
    }

    /// [`Command::env`], and the value is redacted from the captured output too.
    pub fn secret_env(self, name: impl Into<OsString>, value: impl Into<String>) -> Command {
        let value = value.into();
        self.env(name, value.clone()).redact(value)
    }

    /// A string replaced by `[redacted]` in the captured output and the tail. Empty strings are
    /// ignored.
    pub fn redact(mut self, secret: impl Into<String>) -> Command {
        let secret = secret.into();
        if !secret.is_empty() {
            self.redact.push(secret);
        }
        self
    }

    /// Bytes of standard output kept (the rest is read and dropped; [`Output::stdout_truncated`]
    /// says so).
    pub fn stdout_cap(mut self, bytes: usize) -> Command {
        self.stdout_cap = bytes;
        self
    }

    /// Lines of interleaved output kept for error reports.
    pub fn tail_lines(mut self, lines: usize) -> Command {
        self.tail_lines = lines;
        self
    }

    /// The group is killed and [`Error::Deadline`] returned when the command runs longer.
    pub fn deadline(mut self, after: Duration) -> Command {
        self.deadline = Some(after);
        self
    }

    /// The group is killed and [`Error::Cancelled`] returned when `token` is cancelled.
    /// Hands every line of stdout and stderr to `observer` while the command runs (progress of a
    /// long agent run, say), redacted like the captured output and at most as long as a captured
    /// line. The observer runs on the task that reads the pipes: it must not block.
    pub fn on_line(mut self, observer: impl Fn(Stream, &str) + Send + Sync + 'static) -> Command {
        self.on_line = Some(Arc::new(observer));
        self
    }

    pub fn cancel_on(mut self, token: CancellationToken) -> Command {
        self.cancel = Some(token);
        self
    }

    /// How the command is shown.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The variables the command gets from `vars` (the daemon's, in [`Command::run`]) by its
    /// allowlist.
    pub fn inherited_env(
        &self,
        vars: impl Iterator<Item = (OsString, OsString)>,
    ) -> Vec<(OsString, OsString)> {
        allowed_env(&self.inherit, vars)
    }

    /// Runs the command to its end (see the crate's documentation for what is killed when). The
    /// command must succeed (exit code 0).
    pub async fn run(&self) -> Result<Output, Error> {
        let shown = || self.shown.clone();
        let (watch_read, watch_write) = cloexec_pipe().map_err(|source| Error::Spawn {
            shown: shown(),
            source,
        })?;
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .envs(self.inherited_env(std::env::vars_os()))
            .envs(self.env.iter().map(|(k, v)| (k, &v.0)))
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let daemon = std::process::id() as libc::pid_t;
        let watch_fd = watch_read.as_raw_fd();
        // SAFETY: the hook runs in the forked child before `exec`, and calls only async-signal-safe
        // functions (prctl, getppid, getpid, fork, and in the watcher close, read, kill, _exit); it
        // allocates nothing (an `io::Error` from a raw OS error does not allocate).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The daemon died between the fork and the prctl: nothing would kill us then.
                if libc::getppid() != daemon {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                let group = libc::getpid();
                match libc::fork() {
                    -1 => return Err(std::io::Error::last_os_error()),
                    0 => watch(watch_fd, group),
                    _ => {}
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound { shown: shown() }
            } else {
                Error::Spawn {
                    shown: shown(),
                    source,
                }
            }
        })?;
        drop(watch_read);
        let pgid = child.id().expect("not yet awaited") as libc::pid_t;
        // From here on, every way out of this function (return, `?`, the future dropped) kills
        // the group.
        let mut group = Group {
            pgid,
            _watch: watch_write,
        };
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let mut capture = Capture::new(self);
        let mut out_lines = LineSplitter::new(self.stdout_cap.max(LINE_MAX));
        let mut err_lines = LineSplitter::new(LINE_MAX);
        let (mut out_buf, mut err_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
        let (mut out_done, mut err_done) = (false, false);
        let mut status = None;
        let deadline = self
            .deadline
            .map(|d| tokio::time::Instant::now() + d)
            .unwrap_or_else(far_future);
        let mut drain_until = far_future();
        let cancel = self.cancel.clone().unwrap_or_default();
        while status.is_none() || !(out_done && err_done) {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    group.kill();
                    return Err(Error::Cancelled { shown: shown() });
                }
                _ = tokio::time::sleep_until(deadline) => {
                    group.kill();
                    return Err(Error::Deadline {
                        shown: shown(),
                        after: self.deadline.unwrap_or_default(),
                        tail: capture.finish_tail(&mut out_lines, &mut err_lines),
                    });
                }
                _ = tokio::time::sleep_until(drain_until) => break,
                n = stdout.read(&mut out_buf), if !out_done => match n {
                    Ok(0) | Err(_) => out_done = true,
                    Ok(n) => out_lines.push(&out_buf[..n], |l, nl| capture.line(true, l, nl)),
                },
                n = stderr.read(&mut err_buf), if !err_done => match n {
                    Ok(0) | Err(_) => err_done = true,
                    Ok(n) => err_lines.push(&err_buf[..n], |l, nl| capture.line(false, l, nl)),
                },
                s = child.wait(), if status.is_none() => {
                    let s = s.map_err(|source| Error::Io { shown: shown(), source })?;
                    // What it left behind goes now, and with it the last writers of the pipes.
                    group.kill();
                    drain_until = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
                    status = Some(s);
                }
            }
        }
        let status = status.expect("loop ends after the exit");
        let tail = capture.finish_tail(&mut out_lines, &mut err_lines);
        if status.success() {
            return Ok(Output {
                stdout: std::mem::take(&mut capture.stdout),
                stdout_truncated: capture.truncated,
                tail,
            });
        }
        let ended = match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Code(code),
            (None, Some(signal)) => Ended::Signal(signal),
            (None, None) => Ended::Code(-1),
        };
        Err(Error::Exit {
            shown: shown(),
            ended,
            tail,
        })
    }
}

/// The part of `vars` whose names are in `allow`.
pub fn allowed_env<S: AsRef<str>>(
    allow: &[S],
    vars: impl Iterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    vars.filter(|(k, _)| allow.iter().any(|a| k == OsStr::new(a.as_ref())))
        .collect()
}

/// What a successful command printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Standard output, redacted, up to the cap.
    pub stdout: String,
    /// Standard output went over the cap: `stdout` is its beginning (in whole lines).
    pub stdout_truncated: bool,
    /// The last lines of standard output and error, redacted.
    pub tail: String,
}

/// How a command that failed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Code(code) => write!(f, "exited with code {code}"),
            Ended::Signal(signal) => write!(f, "was killed by signal {signal}"),
        }
    }
}

/// Why a command did not succeed. Each names the command as shown; none carries its environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "`{shown}`: the program was not found (is it installed, and on the PATH it was given?)"
    )]
    NotFound { shown: String },
    #[error("`{shown}` could not be started: {source}")]
    Spawn {
        shown: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{shown}` {ended}")]
    Exit {
        shown: String,
        ended: Ended,
        tail: String,
    },
    #[error("`{shown}` did not finish within {}; it was killed", humanize(*after))]
    Deadline {
        shown: String,
        after: Duration,
        tail: String,
    },
    #[error("`{shown}` was cancelled and killed")]
    Cancelled { shown: String },
    #[error("`{shown}`: waiting for it failed: {source}")]
    Io {
        shown: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The command as shown.
    pub fn shown(&self) -> &str {
        match self {
            Error::NotFound { shown }
            | Error::Spawn { shown, .. }
            | Error::Exit { shown, .. }
            | Error::Deadline { shown, .. }
            | Error::Cancelled { shown }
            | Error::Io { shown, .. } => shown,
        }
    }

    /// The last lines of its output, when it ran (redacted).
    pub fn tail(&self) -> &str {
        match self {
            Error::Exit { tail, .. } | Error::Deadline { tail, .. } => tail,
            _ => "",
        }
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn far_future() -> tokio::time::Instant {
    // About thirty years: `Instant` has no maximum.
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// The running command's group, killed whole when this is dropped. Holding `_watch` (the write end
/// of the watcher's pipe) keeps the watcher waiting; the daemon's death closes it.
struct Group {
    pgid: libc::pid_t,
    _watch: OwnedFd,
}

impl Group {
    fn kill(&mut self) {
        // SAFETY: kill(2) with a negative pid signals the group; no memory is involved. The group
        // id cannot have been reused: the watcher is a member until this kill, so the group exists.
        unsafe {
            libc::kill(-self.pgid, libc::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cloexec_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The watcher: in the command's group, waits for the daemon's end of `fd` to close, then kills
/// the group. Runs in a forked child of a multithreaded process: async-signal-safe calls only.
unsafe fn watch(fd: RawFd, group: libc::pid_t) -> ! {
    // SAFETY: only close, syscall(close_range), read, kill and _exit, on descriptors of this process.
    unsafe {
        // Every other descriptor goes: the command's pipes (whose readers wait for their end) and
        // any other command's watcher pipe inherited from the daemon.
        let closed = close_range(0, fd as libc::c_uint - 1)
            && close_range(fd as libc::c_uint + 1, libc::c_uint::MAX);
        if !closed {
            for other in 0..65536 {
                if other != fd {
                    libc::close(other);
                }
            }
        }
        let mut byte = 0u8;
        loop {
            let n = libc::read(fd, (&raw mut byte).cast(), 1);
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        libc::kill(-group, libc::SIGKILL);
        libc::_exit(0)
    }
}

/// close_range(2) (Linux 5.9); false when the kernel lacks it.
unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) -> bool {
    if first > last {
        return true;
    }
    // SAFETY: close_range takes plain integers.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) == 0 }
}

/// Splits a byte stream into lines, cutting one that grows past `limit`.
struct LineSplitter {
    pending: Vec<u8>,
    limit: usize,
}

impl LineSplitter {
    fn new(limit: usize) -> LineSplitter {
        LineSplitter {
            pending: Vec::new(),
            limit,
        }
    }

    /// Calls `emit(line, ended_by_newline)` for each complete line in `chunk`.
    fn push(&mut self, mut chunk: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            if self.pending.is_empty() {
                emit(&chunk[..i], true);
            } else {
                self.pending.extend_from_slice(&chunk[..i]);
                emit(&self.pending, true);
                self.pending.clear();
            }
            chunk = &chunk[i + 1..];
        }
        self.pending.extend_from_slice(chunk);
        if self.pending.len() > self.limit {
            emit(&self.pending, false);
            self.pending.clear();
        }
    }

    /// The last line, when the stream did not end with a newline.
    fn finish(&mut self, mut emit: impl FnMut(&[u8], bool)) {
        if !self.pending.is_empty() {
            emit(&self.pending, false);
            self.pending.clear();
        }
    }
}

/// What is kept of the output.
struct Capture {
    secrets: Vec<String>,
    stdout: String,
    stdout_cap: usize,
    truncated: bool,
    tail: VecDeque<String>,
    tail_lines: usize,
    on_line: Option<LineObserver>,
}

impl Capture {
    fn new(command: &Command) -> Capture {
        let mut secrets = command.redact.clone();
        // The longest first: a secret that contains another is redacted whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Capture {
            secrets,
            stdout: String::new(),
            stdout_cap: command.stdout_cap,
            truncated: false,
            tail: VecDeque::with_capacity(command.tail_lines.min(1024)),
            tail_lines: command.tail_lines,
            on_line: command.on_line.clone(),
        }
    }

    fn line(&mut self, from_stdout: bool, raw: &[u8], newline: bool) {
        let mut line = String::from_utf8_lossy(raw).into_owned();
        for secret in &self.secrets {
            if line.contains(secret.as_str()) {
                line = line.replace(secret.as_str(), REDACTED);
            }
        }
        if let Some(observe) = &self.on_line {
            let stream = if from_stdout {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            observe(stream, &line);
        }
        if from_stdout && !self.truncated {
            if self.stdout.len() + line.len() + usize::from(newline) > self.stdout_cap {
                self.truncated = true;
            } else {
                self.stdout.push_str(&line);
                if newline {
                    self.stdout.push('\n');
                }
            }
        }
        if self.tail_lines == 0 {
            return;
        }
        if line.len() > TAIL_LINE_MAX {
            let mut cut = TAIL_LINE_MAX;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        if self.tail.len() == self.tail_lines {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn finish_tail(&mut self, out: &mut LineSplitter, err: &mut LineSplitter) -> String {
        out.finish(|l, nl| self.line(true, l, nl));
        err.finish(|l, nl| self.line(false, l, nl));
        self.tail
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_cut_at_the_limit() {
        let mut lines = LineSplitter::new(4);
        let mut seen = Vec::new();
        lines.push(b"ab\ncd", |l, nl| seen.push((l.to_vec(), nl)));
        lines.push(b"e\nfghij", |l, nl| seen.push((l.to_vec(), nl)));
        lines.finish(|l, nl| seen.push((l.to_vec(), nl)));
        assert_eq!(
            seen,
            [
                (b"ab".to_vec(), true),
                (b"cde".to_vec(), true),
                (b"fghij".to_vec(), false)
            ]
        );
    }

    #[test]
    fn debug_hides_given_values() {
        let c = Command::new("sh", "sh")
            .env("TOKEN", "ghp_visible_nowhere")
            .redact("other-secret");
        let shown = format!("{c:?}");
        assert!(!shown.contains("ghp_visible_nowhere"), "{shown}");
        assert!(!shown.contains("other-secret"), "{shown}");
        assert!(shown.contains("TOKEN"), "{shown}");
    }

    #[test]
    fn the_allowlist_keeps_only_named_variables() {
        let vars = [("PATH", "/bin"), ("TOKEN", "x"), ("PATHX", "y")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let kept = allowed_env(&["PATH"], vars.into_iter());
        assert_eq!(kept, [(OsString::from("PATH"), OsString::from("/bin"))]);
    }
}
