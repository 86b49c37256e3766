//! The background task that owns a connection to the daemon.
//!
//! Requests go out in the order they are submitted and the daemon answers in that order, so
//! a queue of reply slots matches answers to callers; a caller may also submit without waiting
//! (a dropped [`crate::Reservation`] releases that way).
//!
//! Each connection has a writer task fed through a channel, in the order the reply slots are
//! queued, so the connection task keeps reading answers while a burst of requests is being
//! written: if it stopped reading while a write blocked, both sides' socket buffers could fill
//! and neither would move again.
//!
//! The task keeps track of the runtime reservations the session holds (`held`) and of the
//! releases written and not yet answered (`releasing`). When the daemon goes away it
//! reconnects, first repeats the releases that may not have been carried out, then re-claims
//! what it holds.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_core::{ErrorKind, Token};
use berth_protocol::{FrameCodec, Hello, Request, Response, Welcome};
use futures_util::{SinkExt, StreamExt};
use tokio::io::Interest;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};

use crate::error::Error;

type Reply = oneshot::Sender<Delivery>;

/// The least time one reconnection attempt (connect, handshake, releases, re-claims) is
/// given, even when less of the reconnection window is left.
const ATTEMPT_FLOOR: Duration = Duration::from_secs(1);

/// A request on its way, with the slot its answer goes to (none for fire-and-forget).
struct Call {
    request: Request,
    /// A descriptor that travels with the request (`SCM_RIGHTS`).
    fd: Option<OwnedFd>,
    reply: Option<Reply>,
}

/// What a reply slot receives. An `Acquired` answer that its caller never takes (the caller's
/// future was dropped after the answer was handed over) goes back to the connection task when
/// this is dropped, and the task releases the reservation.
struct Delivery {
    result: Option<Result<Response, Error>>,
    /// Where an untaken `Acquired` answer's token goes.
    orphans: Option<mpsc::UnboundedSender<Token>>,
}

impl Delivery {
    fn failed(error: Error) -> Self {
        Delivery {
            result: Some(Err(error)),
            orphans: None,
        }
    }

    fn take(mut self) -> Result<Response, Error> {
        self.result
            .take()
            .unwrap_or_else(|| Err(Error::lost("the answer went missing")))
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let (Some(Ok(Response::Acquired(info))), Some(orphans)) = (&self.result, &self.orphans) {
            let _ = orphans.send(info.token);
        }
    }
}

/// A frame for the writer task.
struct Frame {
    request: Request,
    fd: Option<OwnedFd>,
}

/// A reply slot of a request sent and not yet answered.
struct Slot {
    reply: Option<Reply>,
    /// The held reservation this request releases (it is in `Task::releasing` meanwhile).
    release: Option<Token>,
}

type Reader = FramedRead<OwnedReadHalf, FrameCodec<Response, Request>>;
type Writer = FramedWrite<OwnedWriteHalf, FrameCodec<Response, Request>>;

/// One established connection: its read half, and the writer task that owns its write half.
struct Link {
    reader: Reader,
    frames: mpsc::UnboundedSender<Frame>,
    writer: JoinHandle<Result<(), Error>>,
}

impl Link {
    fn new(reader: Reader, writer: Writer) -> Self {
        let (frames, queue) = mpsc::unbounded_channel();
        Link {
            reader,
            frames,
            writer: tokio::spawn(write_frames(writer, queue)),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The connection is done with: whatever is still queued would go to a dead (or
        // abandoned) connection, and a write blocked on an unresponsive peer must not linger.
        self.writer.abort();
    }
}

/// Writes frames in the order they come, flushing whenever the queue runs dry. An error ends
/// the task, which ends the connection.
async fn write_frames(
    mut writer: Writer,
    mut frames: mpsc::UnboundedReceiver<Frame>,
) -> Result<(), Error> {
    while let Some(frame) = frames.recv().await {
        write_frame(&mut writer, frame).await?;
        // Whatever else is queued already goes out with the same flush (`feed` flushes by
        // itself once its buffer is large).
        while let Ok(frame) = frames.try_recv() {
            write_frame(&mut writer, frame).await?;
        }
        writer.flush().await.map_err(Error::lost)?;
    }
    Ok(())
}

async fn write_frame(writer: &mut Writer, frame: Frame) -> Result<(), Error> {
    match frame.fd {
        None => writer.feed(frame.request).await.map_err(Error::lost),
        Some(fd) => send_with_fd(writer, frame.request, fd).await,
    }
}

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
        options: crate::Options,
    ) -> Result<Self, Error> {
        let (reader, writer, welcome) = handshake(stream, path, client_name).await?;
        let (calls, rx) = mpsc::unbounded_channel::<Call>();
        let (orphans_tx, orphans) = mpsc::unbounded_channel::<Token>();
        let task = Task {
            path: path.to_owned(),
            client_name: client_name.to_owned(),
            reconnect_window: options.reconnect_window,
            trusted_daemon_uid: options.trusted_daemon_uid,
            calls: rx,
            orphans,
            orphans_tx,
            pending: VecDeque::new(),
            held: BTreeSet::new(),
            releasing: BTreeMap::new(),
        };
        tokio::spawn(task.run(Link::new(reader, writer)));
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
        match rx.await.map(Delivery::take) {
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
/// reconnects, repeats unanswered releases and re-claims the rest (SPEC §7).
struct Task {
    path: PathBuf,
    client_name: String,
    /// How long to keep trying to reach the daemon again.
    reconnect_window: Duration,
    /// [`crate::Options::trusted_daemon_uid`], checked again on every reconnection.
    trusted_daemon_uid: Option<u32>,
    calls: mpsc::UnboundedReceiver<Call>,
    /// Tokens of `Acquired` answers whose callers went away before taking them.
    orphans: mpsc::UnboundedReceiver<Token>,
    /// Cloned into each `Acquired` delivery (keeps `orphans` open for the task's lifetime).
    orphans_tx: mpsc::UnboundedSender<Token>,
    /// Reply slots of requests sent and not yet answered, in order.
    pending: VecDeque<Slot>,
    /// Tokens of the runtime reservations acquired (or re-claimed) and not being released.
    held: BTreeSet<Token>,
    /// Tokens of held reservations whose release was written and not answered yet, with the
    /// number of such releases in flight. After a reconnect they are released again (the
    /// daemon may have died before carrying the release out).
    releasing: BTreeMap<Token, usize>,
}

/// Why a connection ended.
enum End {
    /// Every handle is gone: nothing more to do.
    Unused,
    /// The daemon went away (or the connection broke).
    Lost(String),
}

impl Task {
    async fn run(mut self, first: Link) {
        let mut link = first;
        loop {
            let end = self.drive(&mut link).await;
            drop(link);
            let why = match end {
                End::Unused => return,
                End::Lost(why) => why,
            };
            // Unanswered releases stay in `releasing`, to be repeated after the reconnect.
            for slot in self.pending.drain(..) {
                if let Some(reply) = slot.reply {
                    let _ = reply.send(Delivery::failed(Error::lost(&why)));
                }
            }
            link = match self.reconnect().await {
                Some(link) => link,
                None => break,
            };
        }
        // The daemon stayed away. Ending the task closes the call channel: every later call
        // fails at once, and `Client::is_open` says so.
    }

    /// Serves calls on one connection until it ends.
    async fn drive(&mut self, link: &mut Link) -> End {
        loop {
            let step = tokio::select! {
                call = self.calls.recv() => match call {
                    Some(call) => self.send(link, call),
                    None => return End::Unused,
                },
                Some(token) = self.orphans.recv() => self.abandon(link, token),
                frame = link.reader.next() => match frame {
                    Some(Ok(response)) => self.answer(link, response),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("the daemon closed it".into()),
                },
                written = &mut link.writer => Err(match written {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(())) => "the writer stopped".into(),
                    Err(e) => format!("the writer failed: {e}"),
                }),
            };
            if let Err(why) = step {
                return End::Lost(why);
            }
        }
    }

    /// Queues `call`'s reply slot and hands its frame to the writer, in that order.
    fn send(&mut self, link: &Link, call: Call) -> Result<(), String> {
        let release = match call.request {
            Request::Release { token } => Token::new(token).filter(|&t| self.start_release(t)),
            _ => None,
        };
        self.pending.push_back(Slot {
            reply: call.reply,
            release,
        });
        link.frames
            .send(Frame {
                request: call.request,
                fd: call.fd,
            })
            .map_err(|_| "the writer task ended".to_owned())
    }

    /// A release of `token` is being written: if it is ours, it moves from `held` to
    /// `releasing`. Whether it is tracked.
    fn start_release(&mut self, token: Token) -> bool {
        if self.held.remove(&token) || self.releasing.contains_key(&token) {
            *self.releasing.entry(token).or_insert(0) += 1;
            true
        } else {
            false
        }
    }

    /// A tracked release of `token` was answered (released, or refused: either way it is not
    /// ours any more).
    fn finish_release(&mut self, token: Token) {
        if let Entry::Occupied(mut in_flight) = self.releasing.entry(token) {
            *in_flight.get_mut() = in_flight.get().saturating_sub(1);
            if *in_flight.get() == 0 {
                in_flight.remove();
            }
        }
    }

    /// Matches `response` to the oldest reply slot, keeps the books, and delivers it. An
    /// acquired reservation whose caller went away is released at once.
    fn answer(&mut self, link: &Link, response: Response) -> Result<(), String> {
        let slot = self.pending.pop_front();
        if let Some(token) = slot.as_ref().and_then(|s| s.release) {
            self.finish_release(token);
        }
        let acquired = match &response {
            Response::Acquired(info) => Some(info.token),
            Response::Released(info) => {
                self.held.remove(&info.token);
                None
            }
            _ => None,
        };
        if let Some(token) = acquired {
            self.held.insert(token);
        }
        let delivered = match slot.and_then(|s| s.reply) {
            Some(reply) => {
                let delivery = Delivery {
                    result: Some(Ok(response)),
                    orphans: acquired.map(|_| self.orphans_tx.clone()),
                };
                match reply.send(delivery) {
                    Ok(()) => true,
                    Err(mut undelivered) => {
                        // Released below, not through the orphan channel.
                        undelivered.orphans = None;
                        false
                    }
                }
            }
            None => false,
        };
        match acquired {
            Some(token) if !delivered => self.abandon(link, token),
            _ => Ok(()),
        }
    }

    /// Releases a held reservation that nobody holds a handle to (its acquire was cancelled).
    fn abandon(&mut self, link: &Link, token: Token) -> Result<(), String> {
        if !self.held.contains(&token) {
            return Ok(());
        }
        self.send(
            link,
            Call {
                request: Request::Release { token: token.get() },
                fd: None,
                reply: None,
            },
        )
    }

    /// Reaches the daemon again (it restarted), repeats the releases that were not answered,
    /// and re-claims the held reservations. `None` when nobody answered within the
    /// reconnection window, or the client was dropped meanwhile.
    async fn reconnect(&mut self) -> Option<Link> {
        let deadline = Instant::now() + self.reconnect_window;
        let mut pause = Duration::from_millis(10);
        loop {
            if self.calls.is_closed() && self.held.is_empty() && self.releasing.is_empty() {
                return None;
            }
            // A daemon that accepts and never answers must not hold an attempt up forever.
            let limit = deadline
                .saturating_duration_since(Instant::now())
                .max(ATTEMPT_FLOOR);
            if let Ok(Ok((reader, writer))) = tokio::time::timeout(limit, self.attempt()).await {
                return Some(Link::new(reader, writer));
            }
            if Instant::now() + pause > deadline {
                self.held.clear();
                self.releasing.clear();
                return None;
            }
            // Waiting for a daemon to come back: there is no readiness signal to wait on.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// One reconnection attempt: connect, shake hands, release what was being released (any
    /// answer will do: released, or gone already), then re-claim each held reservation. One
    /// the daemon does not know or refuses (its owner is this process, so a refusal means the
    /// reservation is gone) is forgotten; any other answer fails the attempt, keeping the
    /// token for the next one. Requests are pipelined, with reading and writing side by side.
    async fn attempt(&mut self) -> Result<(Reader, Writer), Error> {
        let stream =
            crate::rendezvous::connect_within(&self.path, ATTEMPT_FLOOR, self.trusted_daemon_uid)
                .await?;
        let (mut reader, mut writer, _) = handshake(stream, &self.path, &self.client_name).await?;
        let releases: Vec<Token> = self.releasing.keys().copied().collect();
        let reclaims: Vec<Token> = self.held.iter().copied().collect();
        let requests = releases
            .iter()
            .map(|t| Request::Release { token: t.get() })
            .chain(reclaims.iter().map(|t| Request::Reclaim { token: t.get() }));
        let write = async {
            for request in requests {
                writer.feed(request).await.map_err(Error::lost)?;
            }
            writer.flush().await.map_err(Error::lost)
        };
        let read = async {
            for token in &releases {
                next_answer(&mut reader).await?;
                self.releasing.remove(token);
            }
            let mut failed = None;
            for token in &reclaims {
                match next_answer(&mut reader).await? {
                    Response::Reclaimed(_) => {}
                    Response::Error(e)
                        if matches!(e.kind, ErrorKind::NotFound | ErrorKind::PermissionDenied) =>
                    {
                        self.held.remove(token);
                    }
                    Response::Error(e) => failed = Some(Error::from(e)),
                    other => failed = Some(Error::unexpected(other)),
                }
            }
            failed.map_or(Ok(()), Err)
        };
        tokio::try_join!(write, read)?;
        Ok((reader, writer))
    }
}

/// The next answer on a connection being set up again.
async fn next_answer(reader: &mut Reader) -> Result<Response, Error> {
    match reader.next().await {
        Some(Ok(response)) => Ok(response),
        Some(Err(e)) => Err(Error::lost(e)),
        None => Err(Error::lost("closed while re-claiming")),
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
