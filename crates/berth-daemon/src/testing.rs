//! Test support for crates that drive a real daemon: an in-process daemon on a temporary
//! socket, bound before the server task starts, so a test can connect at once — no sleeps, no
//! polling for readiness. Enabled by the `testing` feature; never part of a release build.
//!
//! - [`needs`]: what a test needs from the machine (other users, namespaces, Python,
//!   portpicker, a C compiler), and the visible skip when it is missing;
//! - [`namespaces`]: private namespaces as root or in a user namespace;
//! - [`deadline`]: waiting for another process, or its connection, with a deadline;
//! - [`raw`]: speaking the protocol by hand.

#![allow(
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "test support: a failure to set up is a failed test"
)]

pub mod deadline;
pub mod namespaces;
pub mod needs;
pub mod raw;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{bind_socket, Config, SocketGuard};
use berth_core::{ErrorKind, Pool};
use berth_protocol::{FrameCodec, Request, Response, Welcome, WireError};
use bytes::BytesMut;
use tokio::sync::oneshot;
use tokio_util::codec::{Decoder, Encoder};

/// A running daemon; dropping it shuts the daemon down.
pub struct TestDaemon {
    pub socket: PathBuf,
    /// Where its database is.
    pub db: PathBuf,
    store_faults: Arc<AtomicBool>,
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
        // Many test daemons share one network namespace, each with a pool of its own.
        config.authority = None;
        adjust(&mut config);
        config.socket = socket.clone();
        config.db = db.clone();
        let store_faults = config.store_faults.clone();
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
            db,
            store_faults,
            stop: Some(stop),
            task: Some(task),
            _guard: guard,
            _dir: dir,
        }
    }

    /// Makes every write to the daemon's database fail (`true`), or work again (`false`), as a
    /// failing disk would.
    pub fn fail_store(&self, fail: bool) {
        self.store_faults.store(fail, Ordering::SeqCst);
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

/// An impostor on a temporary socket, answering each request with what `answer` says (`None`
/// closes the connection): for what a real daemon of this release never says to these
/// commands — a refused hello, a kind that only some other request can earn. Blocking, on
/// threads of its own, so that it needs no runtime; it stops when dropped.
pub struct FakeDaemon {
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// What a [`FakeDaemon`] answers to one request.
pub type Answer = dyn Fn(&Request) -> Option<Response> + Send + Sync;

impl FakeDaemon {
    /// Answers every hello with an error of `kind`, as a daemon that speaks no version of the
    /// client's would (`Incompatible`).
    pub fn refusing_hello(kind: ErrorKind, message: &str) -> Self {
        let message = message.to_owned();
        Self::answering(move |request| match request {
            Request::Hello(_) => Some(Response::Error(WireError::new(kind, message.clone()))),
            _ => None,
        })
    }

    /// Welcomes every client, then answers each of its requests with an error of `kind`.
    pub fn failing_with(kind: ErrorKind, message: &str) -> Self {
        let message = message.to_owned();
        Self::answering(move |request| match request {
            Request::Hello(_) => Some(Self::welcome()),
            _ => Some(Response::Error(WireError::new(kind, message.clone()))),
        })
    }

    /// Welcomes every client with a protocol version newer than this release speaks, as a
    /// daemon that ignored the client's range would; closes the connection on anything else.
    pub fn choosing_a_newer_version() -> Self {
        Self::answering(|request| match request {
            Request::Hello(_) => Some(Response::Welcome(Welcome {
                version: berth_protocol::PROTOCOL_VERSION + 100,
                daemon_version: "99.0.0".to_owned(),
                daemon_pid: std::process::id(),
            })),
            _ => None,
        })
    }

    /// The welcome of a daemon of this release.
    pub fn welcome() -> Response {
        Response::Welcome(Welcome {
            version: berth_protocol::PROTOCOL_VERSION,
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            daemon_pid: std::process::id(),
        })
    }

    /// Answers each request with what `answer` says; `None` closes the connection.
    pub fn answering(
        answer: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("fake.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let stop = Arc::new(AtomicBool::new(false));
        let answer: Arc<Answer> = Arc::new(answer);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let answer = answer.clone();
                    std::thread::spawn(move || Self::serve(conn, &*answer));
                }
            })
        };
        FakeDaemon {
            socket,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// One connection: frames in, answers out, until either side closes.
    fn serve(mut conn: std::os::unix::net::UnixStream, answer: &Answer) {
        use std::io::{Read, Write};
        let mut codec = FrameCodec::daemon();
        loop {
            let mut len = [0u8; 4];
            if conn.read_exact(&mut len).is_err() {
                return;
            }
            let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
            if conn.read_exact(&mut payload).is_err() {
                return;
            }
            let mut buf = BytesMut::from(&len[..]);
            buf.extend_from_slice(&payload);
            let Ok(Some(request)) = codec.decode(&mut buf) else {
                return;
            };
            let Some(response) = answer(&request) else {
                return;
            };
            let mut out = BytesMut::new();
            codec.encode(response, &mut out).expect("encode a response");
            if conn.write_all(&out).is_err() {
                return;
            }
        }
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees `stop`.
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A task with a timer due every millisecond, for tests on paused tokio time: the clock jumps
/// to the next timer whenever the runtime has nothing to do — also while it merely waits for
/// socket I/O already on its way — so a ticker keeps each jump to a millisecond, and every
/// socket exchange finishes long before the daemon's own timers. Aborted when dropped.
pub struct Ticker(tokio::task::JoinHandle<()>);

/// Starts a [`Ticker`] on the current runtime.
pub fn ticker() -> Ticker {
    Ticker(tokio::spawn(async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }))
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}
