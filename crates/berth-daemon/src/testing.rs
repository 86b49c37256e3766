//! Test support for crates that drive a real daemon: an in-process daemon on a temporary
//! socket, bound before the server task starts, so a test can connect at once — no sleeps, no
//! polling for readiness. Enabled by the `testing` feature; never part of a release build.

#![allow(
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "test support: a failure to set up is a failed test"
)]

pub mod raw;

use std::path::PathBuf;

use crate::{bind_socket, Config, SocketGuard};
use berth_core::Pool;
use tokio::sync::oneshot;

/// A running daemon; dropping it shuts the daemon down.
pub struct TestDaemon {
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _guard: SocketGuard,
    _dir: tempfile::TempDir,
}

impl TestDaemon {
    /// Starts a daemon serving wildcard requests from `lo..=hi`, on the current runtime.
    pub fn start(lo: u16, hi: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("berth.sock");
        let (listener, guard) = bind_socket(&socket).expect("bind socket");
        let mut config = Config::new(
            socket.clone(),
            dir.path().join("berth.db"),
            Pool::new(lo, hi).expect("pool"),
        );
        // Many test daemons share one network namespace, each with a pool of its own.
        config.authority = None;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            crate::run(listener, config, async move {
                let _ = stopped.await;
            })
            .await
            .expect("daemon ran");
        });
        TestDaemon {
            socket,
            stop: Some(stop),
            task: Some(task),
            _guard: guard,
            _dir: dir,
        }
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
