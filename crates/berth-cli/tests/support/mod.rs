//! The fixture and builder the CLI tests drive `berth` through.
//!
//! - [`Daemon`]: a real `berth daemon` on a socket in its own temporary directory, with a pool
//!   the test chooses; ready once it says so on stdout, killed and reaped on drop.
//! - [`Berth`]: one `berth` command line, aimed at a socket, with on-demand start off unless
//!   asked for.
//! - [`Proc`]: a running command whose stdout lines can be read one at a time while it runs.
//! - [`Out`]: how a command ended.
//!
//! Every wait has a deadline ([`DEADLINE`]); nothing sleeps to wait for readiness.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
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

/// A `berth daemon` run by this test, on `<tempdir>/b.sock`.
pub struct Daemon {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
    pool: String,
}

impl Daemon {
    /// Starts a daemon whose wildcard pool is `pool` (`LO-HI`) and waits for its "ready".
    pub fn start(pool: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let socket = dir.path().join("b.sock");
        let log = std::fs::File::create(dir.path().join("daemon.log")).expect("create the log");
        let mut child = Command::new(BERTH)
            .arg("daemon")
            .arg("--socket")
            .arg(&socket)
            .arg("--db")
            .arg(dir.path().join("berth.db"))
            .args(["--pool", pool, "--ready-stdout"])
            .env_remove("BERTH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn berth daemon");
        let stdout = child.stdout.take().expect("piped stdout");
        let daemon = Daemon {
            child,
            dir,
            socket,
            pool: pool.to_owned(),
        };
        match lines_of(stdout).recv_timeout(DEADLINE) {
            Ok(line) if line == "ready\n" => daemon,
            other => panic!(
                "berth daemon --pool {pool} did not say ready within {DEADLINE:?} (got {other:?}); its log:\n{}",
                daemon.log()
            ),
        }
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory holding the socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its pool, as given.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// What it logged so far.
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Our own child, by its pid; then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        Berth { cmd }
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

/// Each line of `reader` (newline kept), sent as it is read; disconnects at end-of-file.
fn lines_of(reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// All of `reader`, sent once at end-of-file.
fn all_of(mut reader: impl Read + Send + 'static) -> Receiver<String> {
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
