//! The servers under load: a real `berth daemon`, the echo server and the portpicker floor
//! server, each a child process started here (pinned with `taskset` on request), killed by its
//! pid when dropped; and their CPU time.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::args::Common;

/// How long a server may take to say "ready".
const READY_WITHIN: Duration = Duration::from_secs(20);

/// The daemon's configuration file: connection limits above any client count a mode uses
/// (1,000 clients of one user exceed the default per-uid limit of 256).
const DAEMON_CONFIG: &str = "max_connections = 16384\nmax_connections_per_uid = 16384\n";

/// What a measurement talks to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's pid (whose CPU time is read).
    pub pid: u32,
    /// Its persistent-connection socket.
    pub socket: PathBuf,
    /// Its connect-per-request socket (the echo server only).
    pub connect_socket: Option<PathBuf>,
}

/// A `berth daemon` child.
pub struct Daemon {
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// The same, as a measurement target.
    pub target: Target,
    log: PathBuf,
}

impl Daemon {
    /// Starts `berth daemon` on `<runtime>/berth.sock` (so its runtime journal is there too)
    /// with its database in the state directory and the extra daemon arguments `extra`, and
    /// waits for its "ready".
    ///
    /// The daemon reads a configuration file of the benchmark's own (`<state>/berth.toml`,
    /// never the host's): connection limits high enough for `--scale`-sized client counts.
    pub fn start(
        berth: &Path,
        dirs: &RunPaths,
        common: &Common,
        extra: &[&OsStr],
    ) -> Result<Daemon> {
        Daemon::start_configured(berth, dirs, common, extra, "")
    }

    /// [`Daemon::start`] with `config_extra` appended to the configuration file.
    pub fn start_configured(
        berth: &Path,
        dirs: &RunPaths,
        common: &Common,
        extra: &[&OsStr],
        config_extra: &str,
    ) -> Result<Daemon> {
        let dir = &dirs.state;
        let socket = dirs.runtime.join("berth.sock");
        let log = dir.join("daemon.log");
        let config = dir.join("berth.toml");
        let mut text = DAEMON_CONFIG.to_owned();
        text.push_str(config_extra);
        if let Some(secs) = common.reuse_cool_down {
            text.push_str(&format!("reuse_cool_down_s = {secs}\n"));
        }
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let authority = common
            .authority
            .clone()
            .unwrap_or_else(|| format!("berth-bench-{}", std::process::id()));
        let mut cmd = pinned(berth, common.server_cpu);
        cmd.arg("daemon")
            .arg("--socket")
            .arg(&socket)
            .arg("--db")
            .arg(dir.join("berth.db"))
            .arg("--config")
            .arg(&config)
            .args(["--pool", &common.pool])
            .args(["--kernel-sync", common.kernel_sync.as_str()])
            .args(["--authority", &authority])
            .args(
                common
                    .listed_ahead
                    .map(|n| ["--listed-ahead".to_owned(), n.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(extra)
            .arg("--ready-stdout")
            .env_remove("BERTH_LOG")
            .env_remove("BERTH_CONFIG");
        // Append: a restarted daemon's log follows its predecessor's.
        let child = start_ready(cmd, &log, "berth daemon")?;
        let pid = child.id();
        Ok(Daemon {
            child: Some(child),
            target: Target {
                pid,
                socket: socket.clone(),
                connect_socket: None,
            },
            socket,
            log,
        })
    }

    /// Stops it cleanly (SIGTERM to our own child, by its pid; it drains and keeps the runtime
    /// journal, as `berth stop` does) and waits for it to exit.
    pub fn terminate(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(status) = child.try_wait()? {
            bail!("the daemon had died already ({status})");
        }
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("cannot run kill")?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", child.id());
        child.wait()?;
        Ok(())
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.target.pid
    }

    /// Stops it (SIGKILL to our own child, by its pid; it keeps nothing worth a clean stop) and
    /// fails if it had already died.
    pub fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the daemon died during the benchmark ({status}); its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The echo server child (this binary, `echo-server`).
pub struct EchoServer {
    child: Child,
    /// It, as a measurement target.
    pub target: Target,
    /// Its session floor, as a measurement target.
    pub floor: Target,
}

/// The ports the echo server's session floor holds, one at a time: outside the daemon's
/// default pool and the usual ephemeral range (a port in use is skipped).
const FLOOR_POOL: &str = "61000-61999";

impl EchoServer {
    /// Starts it on sockets in `dir`.
    pub fn start(dir: &Path, cpu: Option<usize>) -> Result<EchoServer> {
        let exe = std::env::current_exe().context("cannot find this program's binary")?;
        let socket = dir.join("echo.sock");
        let connect_socket = dir.join("echo-connect.sock");
        let floor_socket = dir.join("session-floor.sock");
        let mut cmd = pinned(&exe, cpu);
        cmd.arg("echo-server")
            .arg("--socket")
            .arg(&socket)
            .arg("--connect-socket")
            .arg(&connect_socket)
            .arg("--floor-socket")
            .arg(&floor_socket)
            .arg("--floor-journal")
            .arg(dir.join("session-floor.journal"))
            .arg("--floor-pool")
            .arg(FLOOR_POOL);
        let child = start_ready(cmd, &dir.join("echo.log"), "the echo server")?;
        Ok(EchoServer {
            target: Target {
                pid: child.id(),
                socket,
                connect_socket: Some(connect_socket),
            },
            floor: Target {
                pid: child.id(),
                socket: floor_socket,
                connect_socket: None,
            },
            child,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.target.pid
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The portpicker floor server child (this binary, `floor-server`): see `floor`.
pub struct FloorServer {
    child: Child,
    /// It, as a measurement target (its only socket is a connect-per-request one).
    pub target: Target,
}

impl FloorServer {
    /// Starts it on a socket in `dir`, its journal in `dir`, test-binding ports of `pool`.
    pub fn start(dir: &Path, pool: &str, cpu: Option<usize>) -> Result<FloorServer> {
        let exe = std::env::current_exe().context("cannot find this program's binary")?;
        let socket = dir.join("floor.sock");
        let mut cmd = pinned(&exe, cpu);
        cmd.arg("floor-server")
            .arg("--socket")
            .arg(&socket)
            .arg("--journal")
            .arg(dir.join("floor.journal"))
            .args(["--pool", pool]);
        let child = start_ready(cmd, &dir.join("floor.log"), "the floor server")?;
        Ok(FloorServer {
            target: Target {
                pid: child.id(),
                socket: socket.clone(),
                connect_socket: Some(socket),
            },
            child,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.target.pid
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program`, under `taskset -c CPU` when `cpu` is given (taskset execs it: same pid).
fn pinned(program: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpu.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Spawns `cmd` with stdin a pipe (it ends when we do), stdout piped, stderr to `log`, and
/// waits for "ready" on its stdout.
fn start_ready(mut cmd: Command, log: &Path, what: &str) -> Result<Child> {
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot create {}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {what} ({cmd:?})"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(READY_WITHIN) {
        Ok(line) if line == "ready\n" => Ok(child),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not say ready within {READY_WITHIN:?} (got {other:?}); its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        }
    }
}

/// What every mode does first: pins this process to `--client-cpu` (if given) and finds the
/// berth binary to start daemons from.
pub fn prepare(common: &Common) -> Result<PathBuf> {
    if let Some(cpu) = common.client_cpu {
        pin_self(cpu).with_context(|| format!("cannot pin this process to CPU {cpu}"))?;
    }
    common.berth_bin.clone().context(
        "name the berth binary with --berth-bin or BERTH_BIN (build it with `cargo build --release -p berth-cli`)",
    )
}

/// One run's temporary directories (removed when dropped): databases and logs in `TMPDIR`;
/// sockets and journals in a runtime directory, where `berth daemon`'s defaults put them —
/// under `/run` for root, `$XDG_RUNTIME_DIR` for another user (both a tmpfs as a rule), else
/// `TMPDIR` too.
pub struct RunDir {
    /// Removed when dropped (the runtime one only when it is a directory of its own).
    _dirs: (tempfile::TempDir, Option<tempfile::TempDir>),
    paths: RunPaths,
}

/// [`RunDir`]'s paths, kept by what outlives a borrow (a restart on another thread).
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// Databases, configuration files and logs.
    pub state: PathBuf,
    /// Sockets and journals.
    pub runtime: PathBuf,
}

impl RunDir {
    /// The directory of databases and logs.
    pub fn path(&self) -> &Path {
        &self.paths.state
    }

    /// The directory of sockets and journals.
    pub fn runtime(&self) -> &Path {
        &self.paths.runtime
    }

    /// Both, owned.
    pub fn paths(&self) -> &RunPaths {
        &self.paths
    }
}

/// Creates one run's [`RunDir`].
pub fn run_dir() -> Result<RunDir> {
    let state = tempfile::Builder::new()
        .prefix("berth-bench.")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let runtime_parent = if rustix::process::geteuid().is_root() {
        Some(PathBuf::from("/run"))
    } else {
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
    };
    // Where that cannot be made, beside the databases.
    let runtime = runtime_parent.and_then(|parent| {
        tempfile::Builder::new()
            .prefix("berth-bench.")
            .tempdir_in(parent)
            .ok()
    });
    let paths = RunPaths {
        state: state.path().to_owned(),
        runtime: runtime
            .as_ref()
            .map_or_else(|| state.path().to_owned(), |dir| dir.path().to_owned()),
    };
    Ok(RunDir {
        _dirs: (state, runtime),
        paths,
    })
}

/// Pins the calling process's threads (and every thread it starts later) to `cpu`.
pub fn pin_self(cpu: usize) -> Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

/// CPU time (user + system) that process `pid` has used so far, all threads, in
/// microseconds, from `/proc/<pid>/stat` (clock-tick resolution: 10 ms at 100 Hz).
pub fn cpu_time_us(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse::<u64>()
            .context("malformed /proc/<pid>/stat")
    };
    let total = ticks(11)? + ticks(12)?;
    let hz = rustix::param::clock_ticks_per_second();
    Ok(total * 1_000_000 / hz.max(1))
}
