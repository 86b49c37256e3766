//! An in-process daemon on a temporary socket, bound before the server task starts, so a test
//! can connect at once — no sleeps, no polling for readiness.

use std::path::{Path, PathBuf};

use berth_core::Pool;
use berth_daemon::{bind_socket, Config, Faults, SocketGuard};
use tokio::sync::oneshot;

/// A running daemon; dropping it shuts the daemon down.
pub struct TestDaemon {
    pub socket: PathBuf,
    /// Where its database is.
    pub db: PathBuf,
    faults: Faults,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _guard: SocketGuard,
    _dir: tempfile::TempDir,
}

impl TestDaemon {
    /// Starts a daemon serving wildcard requests from `lo..=hi`, on the current runtime.
    pub fn start(lo: u16, hi: u16) -> Self {
        Self::with_config(lo, hi, |_| {})
    }

    /// [`TestDaemon::start`], with the configuration changed by `adjust` first (its socket and
    /// database stay the temporary ones).
    pub fn with_config(lo: u16, hi: u16, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::on(None, lo, hi, adjust)
    }

    /// [`TestDaemon::with_config`] on the database `db`, which outlives the daemon: stop one
    /// with [`TestDaemon::shutdown`] and start another on the same file to test a restart.
    /// (Its socket is a temporary one, new each time.)
    pub fn with_db(db: &Path, lo: u16, hi: u16, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::on(Some(db), lo, hi, adjust)
    }

    fn on(db: Option<&Path>, lo: u16, hi: u16, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("berth.sock");
        let db = db.map_or_else(|| dir.path().join("berth.db"), Path::to_owned);
        let (listener, guard) = bind_socket(&socket).expect("bind socket");
        let mut config = Config::new(socket.clone(), db.clone(), Pool::new(lo, hi).expect("pool"));
        // Many test daemons share one network namespace, each with a pool of its own — below
        // the ephemeral range (32768–60999 by default), so that no test's own bind(0) or
        // connect(), nor anything else on the host, lands in another test's pool.
        config.authority = None;
        // The host's sysctl files say nothing about a test's private list.
        config.configured_reserved_ports = Vec::new();
        adjust(&mut config);
        config.socket = socket.clone();
        config.db = db.clone();
        let faults = config.faults.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            berth_daemon::run(listener, config, async move {
                let _ = stopped.await;
            })
            .await
            .expect("daemon ran");
        });
        TestDaemon {
            socket,
            db,
            faults,
            stop: Some(stop),
            task: Some(task),
            _guard: guard,
            _dir: dir,
        }
    }

    /// Makes every write to the daemon's database fail (`true`), or work again (`false`), as a
    /// failing disk would.
    pub fn fail_store(&self, fail: bool) {
        self.faults.fail_store(fail);
    }

    /// Makes every write to the kernel's reserved-ports list fail (`true`), or work again.
    pub fn fail_kernel(&self, fail: bool) {
        self.faults.fail_kernel(fail);
    }

    /// Lets the next `writes` writes to the database and runtime journal succeed and makes
    /// the ones after fail, as a disk failing in the middle of a request would.
    pub fn fail_store_after(&self, writes: u32) {
        self.faults.fail_store_after(writes);
    }

    /// The writes kernel sync made to the reserved-ports list since the daemon started, in
    /// order (kept only when the configuration's `faults` were told to, before the start:
    /// `Faults::log_kernel_writes`).
    pub fn kernel_writes(&self) -> Vec<berth_daemon::KernelWrite> {
        self.faults.kernel_writes()
    }

    /// Waits until the daemon stops by itself (a client's `Stop`), without stopping it.
    pub async fn stopped(mut self) {
        if let Some(task) = self.task.take() {
            task.await.expect("daemon task");
        }
    }

    /// Stops the daemon and waits until every session has drained.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("daemon task");
        }
    }
}

/// Polls `check` until it returns true or `deadline_ms` passes; returns the last answer.
pub async fn eventually<F, Fut>(deadline_ms: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(deadline_ms);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
