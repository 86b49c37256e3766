//! The fixture and builder the CLI tests drive `berth` through.
//!
//! - [`Daemon`]: a real `berth daemon` on a socket in its own temporary directory, with a pool
//!   the test chooses; ready once it says so on stdout, killed and reaped on drop.
//! - [`Berth`]: one `berth` command line, aimed at a socket, with on-demand start off unless
//!   asked for.
//! - [`Proc`]: a running command whose stdout lines can be read one at a time while it runs;
//!   for a `berth run`, the command it started and handed its reservations to
//!   ([`Proc::command_pid`], [`Daemon::owned_by`]).
//! - [`Out`]: how a command ended.
//!
//! Every wait has a deadline ([`DEADLINE`]); nothing sleeps to wait for readiness.
//!
//! Each test file compiles this module on its own and uses a different part of it.

#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses only part of it"
)]

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The `berth` binary under test.
pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// How long anything may take before a test gives up: generous, for a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A `berth daemon` run by this test, on `<tempdir>/b.sock` with `<tempdir>/berth.db`. It can
/// be stopped, killed and started again on the same socket and database ([`Daemon::restart`]).
pub struct Daemon {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
    pool: String,
    /// Options given after `--pool`, e.g. `--grace 10`; the same for every restart.
    extra: Vec<String>,
    /// Environment variables set for the daemon (e.g. `BERTH_LOG`), for every restart.
    env: Vec<(String, String)>,
    /// Its `RLIMIT_NOFILE` (soft and hard), when the test sets one.
    nofile: Option<u64>,
}

impl Daemon {
    /// Starts a daemon whose wildcard pool is `pool` (`LO-HI`) and waits for its "ready".
    pub fn start(pool: &str) -> Daemon {
        Daemon::start_with(pool, &[])
    }

    /// [`Daemon::start`] with more options (`--grace N`, …), kept for restarts.
    pub fn start_with(pool: &str, extra: &[&str]) -> Daemon {
        Daemon::start_full(pool, extra, &[])
    }

    /// [`Daemon::start`] with environment variables for the daemon (e.g. `BERTH_LOG=debug`).
    pub fn start_with_env(pool: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_full(pool, &[], env)
    }

    /// [`Daemon::start_with_env`] with `RLIMIT_NOFILE` set to `nofile`, soft and hard, so that
    /// the daemon cannot raise it.
    pub fn start_with_nofile(pool: &str, nofile: u64, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_limited(pool, &[], env, Some(nofile))
    }

    fn start_full(pool: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_limited(pool, extra, env, None)
    }

    fn start_limited(
        pool: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let socket = dir.path().join("b.sock");
        let extra: Vec<String> = extra.iter().map(|&a| a.to_owned()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let child = spawn_ready(dir.path(), &socket, pool, &extra, &env, nofile);
        Daemon {
            child,
            dir,
            socket,
            pool: pool.to_owned(),
            extra,
            env,
            nofile,
        }
    }

    /// Starts a new daemon on the same socket, database, pool and options, once the previous
    /// one has ended ([`Daemon::kill9`], [`Daemon::stop`]); waits for its "ready". Its log is
    /// appended to the same file.
    pub fn restart(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            panic!(
                "restart: the previous daemon (pid {}) still runs",
                self.child.id()
            );
        }
        self.child = spawn_ready(
            self.dir.path(),
            &self.socket,
            &self.pool,
            &self.extra,
            &self.env,
            self.nofile,
        );
    }

    /// SIGKILLs the daemon (our child, by its pid) and reaps it; asserts that SIGKILL is what
    /// ended it (it had not died on its own before).
    pub fn kill9(&mut self) {
        let pid = self.child.id();
        self.child.kill().expect("SIGKILL the daemon");
        let status = self.child.wait().expect("reap the daemon");
        assert_eq!(
            status.signal(),
            Some(9),
            "daemon pid {pid} had already ended ({status}) before SIGKILL; its log:\n{}",
            self.log()
        );
    }

    /// SIGTERMs the daemon (our child, by its pid) and waits, with a deadline, for it to exit
    /// with status 0.
    pub fn stop(&mut self) {
        let pid = self.child.id();
        let raw = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .expect("a valid pid");
        rustix::process::kill_process(raw, rustix::process::Signal::TERM)
            .expect("SIGTERM the daemon");
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll the daemon") {
                break status;
            }
            if Instant::now() > deadline {
                panic!(
                    "daemon pid {pid} did not exit within {DEADLINE:?} of SIGTERM; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(
            status.code(),
            Some(0),
            "daemon pid {pid} exited with {status} after SIGTERM; its log:\n{}",
            self.log()
        );
    }

    /// Its database.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("berth.db")
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory holding the socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its pid (the current daemon's, after a restart).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its pool, as given.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// What it logged so far (every daemon started on this directory, in order).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// A `berth` command aimed at this daemon (never starting another).
    pub fn berth<I, S>(&self, args: I) -> Berth
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Berth::new(&self.socket).args(args)
    }

    /// `berth list --json`, parsed.
    pub fn list(&self) -> Vec<Value> {
        let out = self.berth(["list", "--json"]).output().code(0);
        match serde_json::from_str(&out.stdout) {
            Ok(Value::Array(rows)) => rows,
            other => panic!(
                "berth list --json printed no JSON array ({other:?}):\n{}",
                out.stdout
            ),
        }
    }

    /// `berth status --json`, parsed.
    pub fn status(&self) -> Value {
        self.berth(["status", "--json"]).output().code(0).json()
    }

    /// Waits, with a deadline, until the reservation starting at `start` is listed as owned by
    /// process `pid`, and returns its row. `berth run` hands its reservations to the command
    /// ([`Proc::command_pid`]) once it has started it, so the command may already run (and
    /// print) a moment before the hand-over is done.
    #[track_caller]
    pub fn owned_by(&self, start: u16, pid: u32) -> Value {
        let mut last = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let list = self.list();
            if let Some(row) = row_at(&list, start) {
                if row["owner"]["pid"] == pid {
                    return row.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "the reservation at {start} is not listed as owned by pid {pid} within {DEADLINE:?}: {last:?}"
                );
            }
            last = list;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Our own child, by its pid; then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps a daemon this command starts (directly, or on demand) off the host: it does not touch
/// the host's `ip_local_reserved_ports`, and it claims an authority beacon of its own, named
/// after `tag`, so that the tests' daemons can run side by side in the host's namespace.
pub fn isolate(cmd: &mut Command, tag: &Path) {
    use std::hash::{Hash, Hasher};
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    tag.hash(&mut hash);
    cmd.env("BERTH_KERNEL_SYNC", "off").env(
        "BERTH_AUTHORITY",
        format!("berth-test-{}-{:x}", std::process::id(), hash.finish()),
    );
}

/// One `berth` command line. On-demand start is off unless [`Berth::autostart`] is called.
pub struct Berth {
    cmd: Command,
}

impl Berth {
    /// `berth` with `BERTH_SOCKET=socket` and `BERTH_NO_AUTOSTART=1`.
    pub fn new(socket: &Path) -> Berth {
        let mut cmd = Command::new(BERTH);
        cmd.env("BERTH_SOCKET", socket)
            .env("BERTH_DB", db_beside(socket))
            .env("BERTH_NO_AUTOSTART", "1")
            .env_remove("BERTH_LOG");
        isolate(&mut cmd, socket);
        Berth { cmd }
    }

    /// `berth` run through another program first, e.g. `setpriv …`.
    pub fn wrapped_in<I, S>(socket: &Path, wrapper: I) -> Berth
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut wrapper = wrapper.into_iter();
        let first = wrapper.next().expect("a wrapper program");
        let mut cmd = Command::new(first);
        cmd.args(wrapper)
            .arg(BERTH)
            .env("BERTH_SOCKET", socket)
            .env("BERTH_DB", db_beside(socket))
            .env("BERTH_NO_AUTOSTART", "1")
            .env_remove("BERTH_LOG");
        isolate(&mut cmd, socket);
        Berth { cmd }
    }

    /// `berth` run through `wrapper` in an empty environment (`PATH` only): no socket, no
    /// database, no `XDG_RUNTIME_DIR` — a new user's default search and on-demand start.
    pub fn bare<I, S>(wrapper: I) -> Berth
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut wrapper = wrapper.into_iter();
        let first = wrapper.next().expect("a wrapper program");
        let mut cmd = Command::new(first);
        let args: Vec<std::ffi::OsString> = wrapper.map(|a| a.as_ref().to_owned()).collect();
        let tag = std::path::PathBuf::from(args.join(std::ffi::OsStr::new(" ")));
        cmd.args(&args)
            .arg(BERTH)
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        isolate(&mut cmd, &tag);
        Berth { cmd }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Berth {
        self.cmd.arg(arg);
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Berth {
        self.cmd.env(name, value);
        self
    }

    /// Lets the command start a daemon on demand.
    pub fn autostart(mut self) -> Berth {
        self.cmd.env_remove("BERTH_NO_AUTOSTART");
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Berth
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// The command itself, to run some other way.
    pub fn into_command(self) -> Command {
        self.cmd
    }

    /// Starts it with stdin, stdout and stderr piped.
    pub fn spawn(mut self) -> Proc {
        let what = format!("{:?}", self.cmd);
        let mut child = self
            .cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
        let stdin = child.stdin.take();
        let lines = lines_of(child.stdout.take().expect("piped stdout"));
        let stderr = all_of(child.stderr.take().expect("piped stderr"));
        Proc {
            child,
            what,
            stdin,
            lines,
            seen: String::new(),
            stderr,
            status: None,
        }
    }

    /// Runs it to the end with stdin empty.
    pub fn output(self) -> Out {
        let mut proc = self.spawn();
        proc.close_stdin();
        proc.wait()
    }
}

/// A running command.
pub struct Proc {
    child: Child,
    what: String,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Stdout read so far.
    seen: String,
    stderr: Receiver<String>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// For a `berth run`: the pid of the command it started, its only child — the process it
    /// hands its reservations to. Waits, with a deadline, until `berth run` has started it.
    #[track_caller]
    pub fn command_pid(&self) -> u32 {
        let pid = self.pid();
        let deadline = Instant::now() + DEADLINE;
        loop {
            match children_of(pid).as_slice() {
                [one] => return *one,
                more => {
                    if Instant::now() > deadline {
                        panic!(
                            "{} (pid {pid}) has not exactly one child within {DEADLINE:?}: {more:?}",
                            self.what
                        );
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The next line it prints on stdout, without the newline.
    pub fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(line) => {
                self.seen.push_str(&line);
                line.trim_end_matches('\n').to_owned()
            }
            Err(e) => panic!(
                "{} printed no line within {DEADLINE:?} ({e:?}); stdout so far: {:?}",
                self.what, self.seen
            ),
        }
    }

    /// Writes a line to its stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is still open");
        writeln!(stdin, "{line}").expect("write to the command's stdin");
        stdin.flush().expect("flush the command's stdin");
    }

    /// Closes its stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// SIGKILLs it (it is our child: by its pid) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        self.child.kill().expect("kill the command");
        let status = self.child.wait().expect("reap the command");
        self.status = Some(status);
        status
    }

    /// Waits for it to end, then for its stdout and stderr to close.
    pub fn wait(mut self) -> Out {
        let status = self.wait_status();
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.seen.push_str(&line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: stdout still open {DEADLINE:?} after it exited",
                    self.what
                ),
            }
        }
        let stderr = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|e| panic!("{}: stderr still open after it exited ({e:?})", self.what));
        Out {
            what: std::mem::take(&mut self.what),
            status,
            stdout: std::mem::take(&mut self.seen),
            stderr,
        }
    }

    /// Polls for its exit, with a deadline.
    fn wait_status(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the command") {
                self.status = Some(status);
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {DEADLINE:?}; stdout so far: {:?}",
                    self.what, self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A test that failed half-way leaves no process behind: close stdin (a `read` in the
        // command ends), then kill and reap our child if it still runs.
        self.stdin = None;
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How a command ended.
#[derive(Debug)]
pub struct Out {
    what: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl Out {
    /// Asserts the exit code; returns `self` for more checks.
    #[track_caller]
    pub fn code(self, expected: i32) -> Out {
        assert_eq!(
            self.status.code(),
            Some(expected),
            "{} exited with {}, not {expected}\nstdout: {}\nstderr: {}",
            self.what,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts that stderr is one or more `berth: ` messages mentioning each of `needles`.
    #[track_caller]
    pub fn says(self, needles: &[&str]) -> Out {
        assert!(
            self.stderr.starts_with("berth: "),
            "{}: stderr does not start with \"berth: \": {}",
            self.what,
            self.stderr
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "{}: stderr does not mention {needle:?}: {}",
                self.what,
                self.stderr
            );
        }
        self
    }

    /// Stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}): {}", self.what, self.stdout))
    }
}

/// Calls `probe` until it returns `Some`, for at most [`DEADLINE`].
pub fn poll_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        if Instant::now() > deadline {
            panic!("{what}: not within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns `berth daemon --socket <dir>/… --db <dir>/berth.db --pool POOL EXTRA… --ready-stdout`,
/// its stderr appended to `<dir>/daemon.log`, and waits for its "ready"; kills and reaps it
/// (by its pid) before panicking if it does not say so in time.
fn spawn_ready(
    dir: &Path,
    socket: &Path,
    pool: &str,
    extra: &[String],
    env: &[(String, String)],
    nofile: Option<u64>,
) -> Child {
    let log_path = dir.join("daemon.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open the daemon's log");
    let mut command = Command::new(BERTH);
    isolate(&mut command, socket);
    if let Some(limit) = nofile {
        // A resource limit for the daemon only.
        berth_os::exec::limit_open_files(&mut command, limit);
    }
    let mut child = command
        .arg("daemon")
        .arg("--socket")
        .arg(socket)
        .arg("--db")
        .arg(dir.join("berth.db"))
        .args(["--pool", pool])
        .args(extra)
        .arg("--ready-stdout")
        .env_remove("BERTH_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn berth daemon");
    let stdout = child.stdout.take().expect("piped stdout");
    match lines_of(stdout).recv_timeout(DEADLINE) {
        Ok(line) if line == "ready\n" => child,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "berth daemon --pool {pool} {extra:?} did not say ready within {DEADLINE:?} (got {other:?}); its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )
        }
    }
}

/// Each line of `reader` (newline kept), sent as it is read; disconnects at end-of-file.
pub use berth_testkit::deadline::lines_of;

/// All of `reader`, sent once at end-of-file.
pub fn all_of(mut reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// The database of a daemon started on demand for `socket`: beside it, never the machine's
/// default database (which another test's daemon, or a real one, may be using).
fn db_beside(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or(Path::new("."))
        .join("autostart.db")
}

/// `"a,b,c"` as ports.
pub fn ports(list: &str) -> Vec<u16> {
    list.split(',')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|e| panic!("{p:?} in {list:?} is no port: {e}"))
        })
        .collect()
}

/// The children of process `pid`: those of each of its threads
/// (`/proc/PID/task/TID/children`); none when it is gone.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children: Vec<u32> = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children.sort_unstable();
    children.dedup();
    children
}

/// Whether process `pid` is gone: exited and reaped (no longer in `/proc`, not even as a
/// zombie).
pub fn is_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// The row of `list` (as `berth list --json` prints it) that starts at `start`, if any.
pub fn row_at(list: &[Value], start: u16) -> Option<&Value> {
    list.iter().find(|r| r["start"] == u64::from(start))
}

/// `berth run … -- sh -c SCRIPT` against `daemon`.
pub fn run_sh(daemon: &Daemon, opts: &[&str], script: &str) -> Berth {
    daemon
        .berth(["run"])
        .args(opts)
        .args(["--", "sh", "-c", script])
}
