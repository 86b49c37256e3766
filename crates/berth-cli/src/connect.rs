//! Finding the daemon — and, when none answers, starting a per-user one on demand (SPEC §5):
//! take a lock so that two commands never start two daemons, look again, spawn
//! `berth daemon`, and wait for its readiness line rather than sleeping.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context};
use berth::{Client, Options};
use berth_protocol::paths;

use crate::exit::Failure;

/// How long an on-demand daemon may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Set to `1` to never start a daemon on demand.
pub const NO_AUTOSTART_ENV: &str = "BERTH_NO_AUTOSTART";

/// Whether the connection should outlive a daemon restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// One request and done: if the daemon goes away meanwhile, fail at once.
    OneShot,
    /// Holds reservations for a while (`berth run`): reconnect and re-claim them.
    Holding,
}

impl Lifetime {
    fn options(self) -> Options {
        match self {
            Lifetime::OneShot => Options::default().reconnect_window(Duration::ZERO),
            Lifetime::Holding => Options::default(),
        }
    }
}

/// Connects to a running daemon, without starting one, for one-shot requests.
pub async fn existing() -> Result<Client, Failure> {
    Ok(Client::connect_with(Lifetime::OneShot.options()).await?)
}

/// Connects to a running daemon, starting one on demand unless `BERTH_NO_AUTOSTART=1`.
pub async fn or_start(lifetime: Lifetime) -> Result<Client, Failure> {
    let options = lifetime.options();
    let unavailable = match Client::connect_with(options).await {
        Ok(client) => return Ok(client),
        Err(e @ berth::Error::Unavailable(_)) => e,
        Err(e) => return Err(e.into()),
    };
    if std::env::var_os(NO_AUTOSTART_ENV).is_some_and(|v| v == "1") {
        return Err(berth::Error::Unavailable(format!(
            "{} — {NO_AUTOSTART_ENV}=1 is set, so none was started on demand",
            unavailable.message()
        ))
        .into());
    }
    let uid = rustix::process::getuid().as_raw();
    // Absolute, because the daemon runs from `/` so as not to hold our directory busy.
    let socket = std::path::absolute(paths::autostart_socket(&paths::process_env, uid))
        .context("cannot resolve the daemon's socket path")?;
    let started = tokio::task::spawn_blocking(move || start_daemon(&socket))
        .await
        .map_err(|e| anyhow!("the daemon starter failed: {e}"))??;
    Ok(Client::connect_to_with(&started, options).await?)
}

/// Starts a daemon on `socket` unless one answers there by the time the lock is ours.
/// Returns the socket path once it is ready.
fn start_daemon(socket: &Path) -> Result<PathBuf, Failure> {
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(paths::socket_dir_mode(socket))
        .create(dir)
        .with_context(|| format!("cannot create {} for the daemon's socket", dir.display()))?;

    let lock_path = socket.with_extension("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("cannot open the start-up lock {}", lock_path.display()))?;
    // Blocks while another command is starting a daemon; it holds the lock for at most
    // READY_TIMEOUT. The lock is released when `lock` is closed.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;

    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Ok(socket.to_owned()); // started by whoever held the lock before us
    }

    let log_path = socket.with_extension("log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open the daemon log {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().context("cannot find the berth executable")?;
    let mut child = Command::new(exe)
        .arg("daemon")
        .arg("--socket")
        .arg(socket)
        .arg("--ready-stdout")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group: a Ctrl-C meant for this command must not stop the daemon.
        .process_group(0)
        .current_dir("/")
        .spawn()
        .context("cannot start `berth daemon`")?;
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("the daemon's stdout was not captured"))?;

    // Read the readiness line on a helper thread so that the wait has a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let got = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(got);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(line)) if line.trim() == "ready" => {
            tracing::info!("started berth daemon (pid {pid}) on {}", socket.display());
            // The child is not waited for: it outlives this command (init reaps it).
            drop(child);
            Ok(socket.to_owned())
        }
        Ok(_) => {
            let _ = child.wait();
            Err(anyhow!(
                "the berth daemon started on demand exited before it was ready; its log {} says:\n{}",
                log_path.display(),
                log_tail(&log_path, log_start)
            )
            .into())
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(anyhow!(
                "the berth daemon started on demand was not ready within {}s and was stopped; see {}",
                READY_TIMEOUT.as_secs(),
                log_path.display()
            )
            .into())
        }
    }
}

/// What the daemon wrote to its log since `from`, at most the last 2 KiB.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
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
