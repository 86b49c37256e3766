//! A fake daemon, for answers a real daemon of this release never gives.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use berth_core::ErrorKind;
use berth_protocol::{FrameCodec, Request, Response, Welcome, WireError};
use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

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
