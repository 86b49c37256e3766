//! The background task that owns a connection to the daemon.
//!
//! Requests go out in the order they are submitted and the daemon answers in that order, so
//! a queue of reply slots matches answers to callers; a caller may also submit without waiting
//! (a dropped [`crate::Reservation`] releases that way).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use berth_protocol::{FrameCodec, Hello, Request, Response, Welcome};
use futures_util::{SinkExt, StreamExt};
use tokio::io::Interest;
use tokio::net::unix::OwnedWriteHalf;
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

/// Reply slots of requests sent and not yet answered, in order.
#[derive(Default)]
struct Pending {
    queue: VecDeque<Option<Reply>>,
    /// Set when the daemon's side has closed: later calls fail at once.
    closed: bool,
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

impl Connection {
    /// Shakes hands with the daemon on `stream` (connected to `path`). Must run inside a tokio
    /// runtime, on which the connection's tasks are spawned.
    pub(crate) async fn open(
        stream: UnixStream,
        path: &Path,
        client_name: &str,
    ) -> Result<Self, Error> {
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

        let (calls, mut rx) = mpsc::unbounded_channel::<Call>();
        let pending = Arc::new(Mutex::new(Pending::default()));

        let writer_pending = pending.clone();
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                {
                    let mut p = writer_pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if p.closed {
                        if let Some(reply) = call.reply {
                            let _ = reply.send(Err(Error::lost("the daemon closed it")));
                        }
                        continue;
                    }
                    p.queue.push_back(call.reply);
                }
                let sent = match call.fd {
                    None => writer.send(call.request).await.map_err(Error::lost),
                    Some(fd) => send_with_fd(&mut writer, call.request, fd).await,
                };
                if sent.is_err() {
                    // The reader sees the same failure and fails every pending call.
                    break;
                }
            }
            // Dropping the writer shuts down our side; the daemon then ends the session.
        });

        tokio::spawn(async move {
            let why = loop {
                match reader.next().await {
                    Some(Ok(response)) => {
                        let slot = pending
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .queue
                            .pop_front();
                        if let Some(Some(reply)) = slot {
                            let _ = reply.send(Ok(response));
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "the daemon closed it".to_owned(),
                }
            };
            let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
            p.closed = true;
            for reply in p.queue.drain(..).flatten() {
                let _ = reply.send(Err(Error::lost(&why)));
            }
        });

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

    /// The socket this connection reached.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes `request` as one frame whose first bytes carry `fd` as `SCM_RIGHTS`. Frames queued
/// before it are flushed first so that the descriptor lands with this frame's bytes.
async fn send_with_fd(
    writer: &mut FramedWrite<OwnedWriteHalf, FrameCodec<Response, Request>>,
    request: Request,
    fd: OwnedFd,
) -> Result<(), Error> {
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
