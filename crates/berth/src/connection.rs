//! The background task that owns a connection to the daemon.
//!
//! Requests go out in the order they are submitted and the daemon answers in that order, so
//! a queue of reply slots matches answers to callers; a caller may also submit without waiting
//! (a dropped [`crate::Reservation`] releases that way).

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_core::Token;
use berth_protocol::{FrameCodec, Hello, Request, Response, Welcome};
use futures_util::{SinkExt, StreamExt};
use tokio::io::Interest;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};

use crate::error::Error;

type Reply = oneshot::Sender<Result<Response, Error>>;

/// A request on its way, with the slot its answer goes to (none for fire-and-forget).
struct Call {
    request: Request,
    /// A descriptor that travels with the request (`SCM_RIGHTS`).
    fd: Option<OwnedFd>,
    reply: Option<Reply>,
}

type Reader = FramedRead<OwnedReadHalf, FrameCodec<Response, Request>>;
type Writer = FramedWrite<OwnedWriteHalf, FrameCodec<Response, Request>>;

/// A live connection: a handle to the task that owns the socket.
#[derive(Debug)]
pub(crate) struct Connection {
    calls: mpsc::UnboundedSender<Call>,
    welcome: Welcome,
    path: PathBuf,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("request", &self.request)
            .finish()
    }
}

/// Connects the handshake on `stream`.
async fn handshake(
    stream: UnixStream,
    path: &Path,
    client_name: &str,
) -> Result<(Reader, Writer, Welcome), Error> {
    let (rd, wr) = stream.into_split();
    let mut reader = FramedRead::new(rd, FrameCodec::client());
    let mut writer = FramedWrite::new(wr, FrameCodec::client());
    writer
        .send(Request::Hello(Hello::current(client_name)))
        .await
        .map_err(Error::lost)?;
    let welcome = match reader.next().await {
        Some(Ok(Response::Welcome(w))) => w,
        Some(Ok(Response::Error(e))) => return Err(e.into()),
        Some(Ok(other)) => return Err(Error::unexpected(other)),
        Some(Err(e)) => return Err(Error::lost(e)),
        None => return Err(Error::lost("closed during the handshake")),
    };
    let ours = berth_protocol::MIN_PROTOCOL_VERSION..=berth_protocol::PROTOCOL_VERSION;
    if !ours.contains(&welcome.version) {
        return Err(Error::Incompatible(format!(
            "the daemon on {} chose protocol version {}, which this client (versions {}..={}) does not speak; upgrade the older of the two",
            path.display(),
            welcome.version,
            ours.start(),
            ours.end()
        )));
    }
    Ok((reader, writer, welcome))
}

impl Connection {
    /// Shakes hands with the daemon on `stream` (connected to `path`) and starts the task that
    /// owns the connection. Must run inside a tokio runtime.
    pub(crate) async fn open(
        stream: UnixStream,
        path: &Path,
        client_name: &str,
        reconnect_window: Duration,
    ) -> Result<Self, Error> {
        let (reader, writer, welcome) = handshake(stream, path, client_name).await?;
        let (calls, rx) = mpsc::unbounded_channel::<Call>();
        let task = Task {
            path: path.to_owned(),
            client_name: client_name.to_owned(),
            reconnect_window,
            calls: rx,
            pending: VecDeque::new(),
            held: BTreeSet::new(),
        };
        tokio::spawn(task.run(reader, writer));
        Ok(Connection {
            calls,
            welcome,
            path: path.to_owned(),
        })
    }

    /// Sends `request` and waits for its answer. A [`Response::Error`] becomes an `Err`.
    pub(crate) async fn call(&self, request: Request) -> Result<Response, Error> {
        self.call_with_fd(request, None).await
    }

    /// Sends `request` with `fd` attached and waits for its answer.
    pub(crate) async fn call_with_fd(
        &self,
        request: Request,
        fd: Option<OwnedFd>,
    ) -> Result<Response, Error> {
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Call {
                request,
                fd,
                reply: Some(tx),
            })
            .map_err(|_| Error::lost("the connection task ended"))?;
        match rx.await {
            Ok(Ok(Response::Error(e))) => Err(e.into()),
            Ok(result) => result,
            Err(_) => Err(Error::lost("the connection task ended")),
        }
    }

    /// Sends `request` without waiting for its answer.
    pub(crate) fn submit(&self, request: Request) {
        let _ = self.calls.send(Call {
            request,
            fd: None,
            reply: None,
        });
    }

    /// The daemon's side of the handshake.
    pub(crate) fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Whether the connection task still runs (it ends when the daemon stayed away longer than
    /// the reconnection deadline).
    pub(crate) fn is_open(&self) -> bool {
        !self.calls.is_closed()
    }

    /// The socket this connection reached.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// The task that owns the connection: sends calls in order, matches answers to them, keeps
/// track of the runtime reservations this session holds, and — when the daemon goes away —
/// reconnects and re-claims them (SPEC §7).
struct Task {
    path: PathBuf,
    client_name: String,
    /// How long to keep trying to reach the daemon again.
    reconnect_window: Duration,
    calls: mpsc::UnboundedReceiver<Call>,
    /// Reply slots of requests sent and not yet answered, in order.
    pending: VecDeque<Option<Reply>>,
    /// Tokens of the runtime reservations acquired (or re-claimed) and not released.
    held: BTreeSet<Token>,
}

/// Why a connection ended.
enum End {
    /// Every handle is gone: nothing more to do.
    Unused,
    /// The daemon went away (or the connection broke).
    Lost(String),
}

impl Task {
    async fn run(mut self, mut reader: Reader, mut writer: Writer) {
        loop {
            let why = match self.drive(&mut reader, &mut writer).await {
                End::Unused => return,
                End::Lost(why) => why,
            };
            for reply in self.pending.drain(..).flatten() {
                let _ = reply.send(Err(Error::lost(&why)));
            }
            match self.reconnect().await {
                Some((r, w)) => (reader, writer) = (r, w),
                None => break,
            }
        }
        // The daemon stayed away. Ending the task closes the call channel: every later call
        // fails at once, and `Client::is_open` says so.
    }

    /// Serves calls on one connection until it ends.
    async fn drive(&mut self, reader: &mut Reader, writer: &mut Writer) -> End {
        loop {
            tokio::select! {
                call = self.calls.recv() => {
                    let Some(call) = call else { return End::Unused };
                    self.pending.push_back(call.reply);
                    let sent = match call.fd {
                        None => writer.send(call.request).await.map_err(Error::lost),
                        Some(fd) => send_with_fd(writer, call.request, fd).await,
                    };
                    if let Err(e) = sent {
                        return End::Lost(e.to_string());
                    }
                }
                frame = reader.next() => match frame {
                    Some(Ok(response)) => {
                        self.note(&response);
                        if let Some(Some(reply)) = self.pending.pop_front() {
                            let _ = reply.send(Ok(response));
                        }
                    }
                    Some(Err(e)) => return End::Lost(e.to_string()),
                    None => return End::Lost("the daemon closed it".into()),
                },
            }
        }
    }

    /// Keeps `held` in step with what the daemon granted and released.
    fn note(&mut self, response: &Response) {
        match response {
            Response::Acquired(info) | Response::Reclaimed(info) => {
                self.held.insert(info.token);
            }
            Response::Released(info) => {
                self.held.remove(&info.token);
            }
            _ => {}
        }
    }

    /// Reaches the daemon again (it restarted) and re-claims the held reservations. `None`
    /// when nobody answered within the reconnection window, or the client was dropped
    /// meanwhile.
    async fn reconnect(&mut self) -> Option<(Reader, Writer)> {
        let deadline = tokio::time::Instant::now() + self.reconnect_window;
        let mut pause = Duration::from_millis(10);
        loop {
            if self.calls.is_closed() && self.held.is_empty() {
                return None;
            }
            if let Ok(stream) = UnixStream::connect(&self.path).await {
                if let Ok((mut reader, mut writer, _)) =
                    handshake(stream, &self.path, &self.client_name).await
                {
                    if self.reclaim(&mut reader, &mut writer).await.is_ok() {
                        return Some((reader, writer));
                    }
                }
            }
            if tokio::time::Instant::now() + pause > deadline {
                self.held.clear();
                return None;
            }
            // Waiting for a daemon to come back: there is no readiness signal to wait on.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Asks the new daemon for each held reservation; forgets those it refuses (their owner
    /// is this process, so a refusal means the reservation is gone).
    async fn reclaim(&mut self, reader: &mut Reader, writer: &mut Writer) -> Result<(), Error> {
        let tokens: Vec<Token> = self.held.iter().copied().collect();
        for token in tokens {
            writer
                .send(Request::Reclaim { token: token.get() })
                .await
                .map_err(Error::lost)?;
            match reader.next().await {
                Some(Ok(Response::Reclaimed(_))) => {}
                Some(Ok(_)) => {
                    self.held.remove(&token);
                }
                Some(Err(e)) => return Err(Error::lost(e)),
                None => return Err(Error::lost("closed while re-claiming")),
            }
        }
        Ok(())
    }
}

/// Writes `request` as one frame whose first bytes carry `fd` as `SCM_RIGHTS`. Frames queued
/// before it are flushed first so that the descriptor lands with this frame's bytes.
async fn send_with_fd(writer: &mut Writer, request: Request, fd: OwnedFd) -> Result<(), Error> {
    writer.flush().await.map_err(Error::lost)?;
    let mut frame = bytes::BytesMut::new();
    FrameCodec::client()
        .encode(request, &mut frame)
        .map_err(Error::lost)?;
    let stream: &UnixStream = writer.get_ref().as_ref();
    let mut sent = 0;
    while sent < frame.len() {
        let rest = frame.get(sent..).unwrap_or_default();
        let attach = sent == 0;
        let n = stream
            .async_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(rest)];
                let fds = [fd.as_fd()];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
                if attach && !cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)) {
                    return Err(io::Error::other("cannot attach the socket to the request"));
                }
                rustix::net::sendmsg(stream, &iov, &mut cmsg, rustix::net::SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            })
            .await
            .map_err(Error::lost)?;
        sent += n;
    }
    Ok(())
}
