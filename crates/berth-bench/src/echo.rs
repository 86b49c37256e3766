//! The echo baselines: a tiny blocking server (run as a child of the benchmark) and its
//! clients.
//!
//! Persistent connections carry berth's framing (a 4-byte big-endian length, then the
//! payload); the first four payload bytes say how long the answer's payload is, so one server
//! answers with the exact sizes of each berth response. The server does the least work the
//! shape allows: one thread per connection, a blocking read of the frame, one write.
//! The connect-per-request socket is the portpicker shape: accept, read a line, write a line,
//! close, on two accepting threads (the daemon runs two workers).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::EchoArgs;
use crate::floor::{open_journal, Candidates};

/// Largest answer the echo server sends (berth's acquire answer is well under this).
const MAX_ANSWER: usize = 4096;

/// Runs the echo server until its stdin ends (the benchmark is gone) or it is killed.
pub fn serve(args: &EchoArgs) -> Result<()> {
    let persistent = bind(&args.socket)?;
    let per_request = bind(&args.connect_socket)?;
    for _ in 0..2 {
        let listener = per_request.try_clone()?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer_once(stream);
            }
        });
    }
    std::thread::spawn(move || {
        for stream in persistent.incoming().flatten() {
            std::thread::spawn(move || echo_frames(stream));
        }
    });
    let floor = Arc::new(SessionFloor::open(args)?);
    let floor_listener = bind(&args.floor_socket)?;
    std::thread::spawn(move || {
        for stream in floor_listener.incoming().flatten() {
            let floor = floor.clone();
            std::thread::spawn(move || {
                if let Err(e) = floor.answer_frames(stream) {
                    eprintln!("session floor: a connection ended: {e}");
                }
            });
        }
    });
    println!("ready");
    std::io::stdout().flush()?;
    // Stop with the benchmark: its end closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

fn bind(path: &Path) -> Result<UnixListener> {
    UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))
}

/// Answers frames on one persistent connection until it closes.
fn echo_frames(mut stream: UnixStream) -> std::io::Result<()> {
    let mut answer = vec![0u8; 4 + MAX_ANSWER];
    let mut payload = vec![0u8; 64 * 1024];
    loop {
        let mut header = [0u8; 4];
        stream.read_exact(&mut header)?;
        let len = (u32::from_be_bytes(header) as usize).min(payload.len());
        stream.read_exact(&mut payload[..len])?;
        let want = payload
            .get(..4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .min(MAX_ANSWER);
        answer[..4].copy_from_slice(&(want as u32).to_be_bytes());
        stream.write_all(&answer[..4 + want])?;
    }
}

/// Bytes of one journal record of the session floor: about a runtime journal's.
const RECORD: usize = 64;

/// The session floor: what a held acquire and its release must do per request, and nothing
/// else, on a persistent connection. Per request: one `recvmsg` with the sender's credentials
/// (`SO_PASSCRED`, as the daemon reads a connection only its owner writes on); for an acquire the hold socket (the daemon's own `berth_os::hold::bind`: `socket`,
/// `setsockopt`, `bind` on the wildcard address), for a release its `close`; one `write(2)` of a
/// journal record; one write of the answer, of berth's size. Requests alternate acquire and
/// release, as the benchmark sends them. No table, no policy, no runtime: blocking, a thread
/// per connection, as the echo server.
struct SessionFloor {
    journal: File,
    /// The ports its holds take.
    candidates: Candidates,
    ipv6: bool,
}

impl SessionFloor {
    fn open(args: &EchoArgs) -> Result<SessionFloor> {
        Ok(SessionFloor {
            journal: open_journal(&args.floor_journal)?,
            candidates: Candidates::parse(&args.floor_pool, "--floor-pool")?,
            ipv6: berth_os::hold::ipv6_available(),
        })
    }

    /// A hold socket on the next free port of the pool (a port in use moves on to the next).
    fn hold(&self) -> Option<socket2::Socket> {
        let cover = berth_os::hold::Cover::all(self.ipv6);
        self.candidates
            .first(|port| berth_os::hold::bind(berth::Protocol::Tcp, port, cover).ok())
    }

    /// Answers requests on one connection until it closes.
    fn answer_frames(&self, stream: UnixStream) -> std::io::Result<()> {
        // Credentials with every read; no pidfds, as the daemon reads a connection that only
        // its owner writes on.
        rustix::net::sockopt::set_socket_passcred(&stream, true)?;
        let mut buf = vec![0u8; 64 * 1024];
        // Room for the kernel's most descriptors per message, as the daemon's reads have.
        let mut control = berth_os::recv::control_buffer(berth_os::recv::SCM_MAX_FD);
        let mut answer = vec![0u8; 4 + MAX_ANSWER];
        let mut held = None;
        loop {
            // The client sends a whole frame and waits for its answer: one read takes it.
            let message = berth_os::recv::recv_waiting(stream.as_fd(), &mut buf, &mut control)?;
            if message.bytes == 0 {
                return Ok(());
            }
            held = match held.take() {
                None => self.hold(),
                Some(socket) => {
                    drop::<socket2::Socket>(socket);
                    None
                }
            };
            (&self.journal).write_all(&[0u8; RECORD])?;
            let want = buf
                .get(4..8)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .min(MAX_ANSWER);
            answer[..4].copy_from_slice(&(want as u32).to_be_bytes());
            (&stream).write_all(&answer[..4 + want])?;
        }
    }
}

/// The portpicker shape: one line in, one line out, close.
fn answer_once(mut stream: UnixStream) -> std::io::Result<()> {
    let mut line = [0u8; 64];
    let mut got = 0;
    while got < line.len() {
        let n = stream.read(&mut line[got..])?;
        if n == 0 {
            break;
        }
        got += n;
        if line[..got].contains(&b'\n') {
            break;
        }
    }
    stream.write_all(b"32768\n")
}

/// A request frame of `payload` bytes (at least 4) asking for an answer of `answer` payload
/// bytes.
pub fn request_frame(payload: usize, answer: usize) -> Vec<u8> {
    let payload = payload.max(4);
    let mut frame = vec![0u8; 4 + payload];
    frame[..4].copy_from_slice(&(payload as u32).to_be_bytes());
    frame[4..8].copy_from_slice(&(answer as u32).to_be_bytes());
    frame
}

/// A client on one persistent connection.
pub struct EchoClient {
    stream: tokio::net::UnixStream,
    buf: Vec<u8>,
}

impl EchoClient {
    /// Connects to `socket`.
    pub async fn connect(socket: &Path) -> Result<EchoClient> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        Ok(EchoClient {
            stream,
            buf: vec![0u8; 4 + MAX_ANSWER],
        })
    }

    /// One round trip: sends `frame` (from [`request_frame`]), reads the whole answer.
    pub async fn round_trip(&mut self, frame: &[u8]) -> Result<()> {
        self.stream.write_all(frame).await?;
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).await?;
        let len = (u32::from_be_bytes(header) as usize).min(MAX_ANSWER);
        self.stream.read_exact(&mut self.buf[..len]).await?;
        Ok(())
    }
}

/// How long [`connect_once`] waits for the server at each step.
const CONNECT_ONCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One connect-per-request exchange with `socket`: connect, `"<pid>\n"` (this process's),
/// read to the end. An answer that is not a line (a portserver's refusal is a close without
/// one) is an error.
///
/// Blocking calls (call it from a thread of its own), as portpicker's own client makes them (and C and Python clients generally):
/// a socket registered with tokio's reactor for both directions would be woken when the
/// server reads the request (the kernel wakes a Unix socket's writability waiters as the peer
/// consumes), and on a shared CPU would preempt the server mid-answer — a cost of the client's
/// making, charged to whichever server it measures.
pub fn connect_once(socket: &Path) -> Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    // A server that never answers ends the measurement with an error, not a hang.
    stream.set_read_timeout(Some(CONNECT_ONCE_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECT_ONCE_TIMEOUT))?;
    let line = format!("{}\n", std::process::id());
    stream.write_all(line.as_bytes())?;
    let mut answer = Vec::with_capacity(16);
    stream.read_to_end(&mut answer)?;
    anyhow::ensure!(
        answer.ends_with(b"\n"),
        "the server answered {:?} (a portserver refuses by closing without an answer)",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}
