//! Starting a per-user daemon on demand, as `berth run` does — and, opt-in, as a program's
//! own [`crate::Client::connect_or_start`] does (so `cargo test` works on a fresh machine).
//!
//! Take an exclusive lock beside the socket (two starters never start two daemons), look
//! again, spawn `berth daemon --ready-stdout` fully detached — its own session, stdin from
//! `/dev/null`, stdout (once ready) and stderr to its log, and no other inherited descriptor —
//! and wait, with a deadline, for its readiness line rather than sleeping.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_protocol::paths;

use crate::error::Error;
use crate::rendezvous;

/// How long an on-demand daemon may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Set to a non-empty value other than `0`, `false` or `no` to never start a daemon on demand.
pub const NO_AUTOSTART_ENV: &str = "BERTH_NO_AUTOSTART";

/// The `berth` binary that starts daemons when the caller names none (else `berth` on `PATH`).
pub const BIN_ENV: &str = "BERTH_BIN";

/// Whether [`NO_AUTOSTART_ENV`] forbids starting a daemon: any non-empty value but `0`,
/// `false` and `no` (in any case) does.
pub fn forbidden() -> bool {
    std::env::var_os(NO_AUTOSTART_ENV).is_some_and(|v| {
        let v = v.to_string_lossy().trim().to_ascii_lowercase();
        !matches!(v.as_str(), "" | "0" | "false" | "no")
    })
}

/// How to start a daemon when none answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Starter {
    binary: Option<PathBuf>,
    quiet: bool,
}

impl Starter {
    /// The default starter: the binary named by `$BERTH_BIN`, else `berth` on `PATH`; says on
    /// stderr, once, that it started a daemon.
    pub fn new() -> Self {
        Starter::default()
    }

    /// Starts daemons with this `berth` binary.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Does not print the line saying that a daemon was started.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// The binary to run.
    fn resolve(&self) -> Result<PathBuf, Error> {
        if let Some(path) = &self.binary {
            return Ok(path.clone());
        }
        if let Some(path) = std::env::var_os(BIN_ENV).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        let found = std::env::var_os("PATH").and_then(|dirs| {
            std::env::split_paths(&dirs)
                .map(|d| d.join("berth"))
                .find(|p| p.is_file())
        });
        found.ok_or_else(|| {
            Error::Unavailable(format!(
                "no berth daemon answers, and none can be started: no `berth` binary on PATH and {BIN_ENV} is not set; install it with `cargo install --path crates/berth-cli` (in berth's repository), or set {BIN_ENV}"
            ))
        })
    }

    /// Starts a daemon on `socket` (an absolute path) unless one answers there by the time the
    /// lock is held. Blocking. `None` when another starter's daemon answered.
    pub fn start(&self, socket: &Path) -> Result<Option<Started>, Error> {
        let exe = self.resolve()?;
        let started = start_daemon(&exe, socket)?;
        if let (Some(s), false) = (&started, self.quiet) {
            eprintln!("berth: {s}");
        }
        Ok(started)
    }
}

/// A daemon started on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Started {
    /// Its process id.
    pub pid: u32,
    /// The socket it listens on.
    pub socket: PathBuf,
    /// Its log file.
    pub log: PathBuf,
}

impl fmt::Display for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "started a berth daemon (pid {}) on {}; it keeps running in the background, logging to {}; stop it with `berth stop`",
            self.pid,
            self.socket.display(),
            self.log.display()
        )
    }
}

/// The socket an on-demand daemon is started on: `$BERTH_SOCKET`, else this user's default,
/// made absolute (the daemon runs from `/`).
pub fn default_socket() -> Result<PathBuf, Error> {
    let uid = rustix::process::getuid().as_raw();
    std::path::absolute(paths::autostart_socket(&paths::process_env, uid))
        .map_err(|e| Error::Unavailable(format!("cannot resolve the daemon's socket path: {e}")))
}

/// A failure to start: the daemon is unavailable, and the message says why.
fn cannot(what: impl fmt::Display) -> Error {
    Error::Unavailable(format!("no berth daemon answers, and {what}"))
}

fn start_daemon(exe: &Path, socket: &Path) -> Result<Option<Started>, Error> {
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A `/tmp` fallback must be private; any other directory is made as the daemon would.
    if rendezvous::check_socket_dir(socket, true)? {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(paths::socket_dir_mode(socket))
            .create(dir)
            .map_err(|e| {
                cannot(format_args!(
                    "cannot create {} for its socket: {e}",
                    dir.display()
                ))
            })?;
    }

    let lock_path = socket.with_extension("lock");
    let lock = open_beside(&lock_path, false).map_err(|e| {
        cannot(format_args!(
            "cannot open the start-up lock {}: {e}",
            lock_path.display()
        ))
    })?;
    // Blocks while another process is starting a daemon; it holds the lock for at most
    // READY_TIMEOUT. The lock is released when `lock` is closed.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| cannot(format_args!("cannot lock {}: {e}", lock_path.display())))?;

    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Ok(None); // started by whoever held the lock before us
    }

    let log_path = socket.with_extension("log");
    let log = open_beside(&log_path, true).map_err(|e| {
        cannot(format_args!(
            "cannot open the daemon log {}: {e}",
            log_path.display()
        ))
    })?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut command = Command::new(exe);
    command
        .arg("daemon")
        .arg("--socket")
        .arg(socket)
        .arg("--ready-stdout")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .current_dir("/");
    detach(&mut command);
    let mut child = command.spawn().map_err(|e| {
        cannot(format_args!(
            "`{} daemon` could not be started: {e}",
            exe.display()
        ))
    })?;
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| cannot("the daemon's stdout was not captured"))?;

    // Read the readiness line on a helper thread so that the wait has a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let got = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(got);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(line)) if line.trim() == "ready" => {
            // The child is not waited for: it outlives this process (init reaps it then).
            drop(child);
            Ok(Some(Started {
                pid,
                socket: socket.to_owned(),
                log: log_path,
            }))
        }
        Ok(_) => {
            let _ = child.wait();
            Err(cannot(format_args!(
                "the daemon started on demand exited before it was ready; its log {} says:\n{}",
                log_path.display(),
                log_tail(&log_path, log_start)
            )))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(cannot(format_args!(
                "the daemon started on demand was not ready within {}s and was stopped; see {}",
                READY_TIMEOUT.as_secs(),
                log_path.display()
            )))
        }
    }
}

/// Opens a file beside the socket (lock or log) without following a symbolic link, closed on
/// exec, created 0600.
fn open_beside(path: &Path, append: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).mode(0o600);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(false);
    }
    // std adds O_CLOEXEC itself.
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits();
    options.custom_flags(i32::try_from(nofollow).unwrap_or(0));
    options.open(path)
}

/// Makes the spawned daemon a session of its own (a Ctrl-C or a closed terminal meant for its
/// starter does not reach it) that inherits no descriptor but its standard three — and the
/// readiness pipe, which is its stdout. A descriptor inherited from the starter's caller
/// (`x=$(berth run … 7>&1)`) would otherwise keep that caller waiting for as long as the
/// daemon runs.
fn detach(command: &mut Command) {
    berth_os::exec::new_session(command);
    berth_os::exec::inherit_only(command, Vec::new());
}

/// What the daemon wrote to its log since `from`, at most the last 2 KiB.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = from.max(len.saturating_sub(2048));
        if f.seek(SeekFrom::Start(start)).is_ok() {
            let _ = f.read_to_string(&mut text);
        }
    }
    if text.trim().is_empty() {
        "(nothing)".to_owned()
    } else {
        text
    }
}
