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

/// How long a start waits for the start-up lock by default: a process starting a daemon holds
/// it for at most [`READY_TIMEOUT`]; one that holds it longer is not starting one.
pub const LOCK_WAIT: Duration = Duration::from_secs(20);

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
    lock_wait: Option<Duration>,
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

    /// How long to wait for another process that is starting a daemon on the same socket
    /// (it holds the start-up lock beside the socket) before giving up with an error that
    /// names the lock; [`LOCK_WAIT`] unless set.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
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
        let started = start_daemon(&exe, socket, self.lock_wait.unwrap_or(LOCK_WAIT))?;
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

fn start_daemon(exe: &Path, socket: &Path, lock_wait: Duration) -> Result<Option<Started>, Error> {
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
    // Waits while another process is starting a daemon; it holds the lock for at most
    // READY_TIMEOUT. The lock is released when `lock` is closed.
    lock_within(&lock, &lock_path, lock_wait)?;

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
            // Reaped when it ends, on a thread of its own: a daemon stopped while the program
            // that started it runs on (a long `berth run`) must not stay a zombie of it.
            let _ = std::thread::Builder::new()
                .name("berth-daemon-reaper".into())
                .spawn(move || child.wait());
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

/// Takes the start-up lock `lock` (at `path`), waiting at most `wait` for whoever holds it.
fn lock_within(lock: &File, path: &Path, wait: Duration) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match rustix::fs::flock(lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                // Polled: a blocking flock cannot be given a deadline.
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(cannot(format_args!(
                    "the start-up lock {} has been held for {}s by another process, longer than a start takes; if no daemon is starting, find what holds it (`fuser {}`) and stop it, or use a socket in a directory only you can write (BERTH_SOCKET)",
                    path.display(),
                    wait.as_secs(),
                    path.display()
                )))
            }
            Err(e) => {
                return Err(cannot(format_args!("cannot lock {}: {e}", path.display())))
            }
        }
    }
}

/// Opens a file beside the socket (lock or log) without following a symbolic link, closed on
/// exec, created 0600 — and only if it is this user's and nobody else's to write: where
/// others can create files beside the socket (a directory such as `/tmp`), one planted there
/// would let its owner read the daemon's log, write lines into it, or hold its lock.
fn open_beside(path: &Path, append: bool) -> std::io::Result<File> {
    use std::os::unix::fs::MetadataExt;
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
    let file = options.open(path).map_err(|e| {
        // A symbolic link is refused by O_NOFOLLOW (or, in a sticky directory, by the
        // kernel's protected_symlinks) with a bare errno: say what it is.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "it is a symbolic link, which another user may have put there: remove it, or use a socket in a directory only you can write (BERTH_SOCKET)",
            )
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "it belongs to uid {}, not to you (uid {me}): another user may have put it there; remove it, or use a socket in a directory only you can write (BERTH_SOCKET)",
                meta.uid()
            ),
        ));
    }
    if meta.nlink() != 1 {
        // A hard link another user made to a file of ours (where the kernel lets them:
        // `fs.protected_hardlinks` off) would have the daemon's log written into that file.
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "it has {} names (hard links), not one: remove it",
                meta.nlink()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        // Ours, from an earlier umask or by hand: private from now on.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    Ok(file)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Never run: every start below fails before it would spawn.
    fn starter() -> Starter {
        Starter::new().binary("/nonexistent/berth").quiet()
    }

    fn message(result: Result<Option<Started>, Error>) -> String {
        match result {
            Err(e) => e.to_string(),
            Ok(started) => panic!("started: {started:?}"),
        }
    }

    #[test]
    fn a_start_up_lock_held_too_long_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("b.sock");
        let lock = open_beside(&socket.with_extension("lock"), false).unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let got = message(
            starter()
                .lock_wait(Duration::from_millis(100))
                .start(&socket),
        );
        assert!(got.contains("start-up lock"), "{got}");
        assert!(got.contains("b.lock"), "{got}");
    }

    #[test]
    fn a_lock_or_log_another_user_put_beside_the_socket_is_refused() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root, to make a file another user's");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("b.sock");
        let lock = socket.with_extension("lock");
        std::fs::write(&lock, "").unwrap();
        let nobody = rustix::process::Uid::from_raw(65534);
        rustix::fs::chown(&lock, Some(nobody), None).unwrap();
        let got = message(starter().start(&socket));
        assert!(got.contains("belongs to uid 65534"), "{got}");
        std::fs::remove_file(&lock).unwrap();

        // The log is checked too (the lock is now ours): a hard link is refused as well.
        let log = socket.with_extension("log");
        std::fs::write(&log, "planted\n").unwrap();
        rustix::fs::chown(&log, Some(nobody), None).unwrap();
        let got = message(starter().start(&socket));
        assert!(got.contains("belongs to uid 65534"), "{got}");
        std::fs::remove_file(&log).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "").unwrap();
        std::fs::hard_link(&elsewhere, &log).unwrap();
        let got = message(starter().start(&socket));
        assert!(got.contains("hard links"), "{got}");
    }

    #[test]
    fn a_symbolic_link_beside_the_socket_is_named_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "precious\n").unwrap();
        let log = dir.path().join("b.log");
        std::os::unix::fs::symlink(&target, &log).unwrap();
        let err = open_beside(&log, true).unwrap_err();
        assert!(err.to_string().contains("it is a symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    }

    #[test]
    fn a_file_of_ours_beside_the_socket_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.log");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        drop(open_beside(&path, true).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
