//! Socket I/O of one established connection: the handshake, a reader, and a writer task that
//! owns the write half (so that answers keep being read while a burst of requests is written:
//! if reading stopped while a write blocked, both sides' buffers could fill and neither would
//! move again). A frame may carry a descriptor (`SCM_RIGHTS`).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use berth_os::stream::{ReadHalf, WriteHalf};
use berth_protocol::{FrameCodec, Hello, Request, Response, Welcome};
use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};

use crate::error::Error;

pub(super) type Reader = FramedRead<ReadHalf, FrameCodec<Response, Request>>;
pub(super) type Writer = FramedWrite<WriteHalf, FrameCodec<Response, Request>>;

/// A frame for the writer task.
pub(super) struct Frame {
    pub(super) request: Request,
    pub(super) fd: Option<OwnedFd>,
}

/// One established connection: its read half, and the writer task that owns its write half.
pub(super) struct Link {
    pub(super) reader: Reader,
    pub(super) frames: mpsc::UnboundedSender<Frame>,
    pub(super) writer: JoinHandle<Result<(), String>>,
}

impl Link {
    pub(super) fn new(reader: Reader, writer: Writer) -> Self {
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

/// Why a handshake failed: the error, and whether the daemon refused only because it is at a
/// connection limit (its own, or this user's), which passes as connections close.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) error: Error,
    pub(crate) busy: bool,
}

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Refused { error, busy: false }
    }
}

impl From<Refused> for Error {
    fn from(refused: Refused) -> Self {
        refused.error
    }
}

/// Whether `e` is a refusal at a connection limit.
fn at_connection_limit(e: &berth_protocol::WireError) -> bool {
    matches!(
        &e.detail,
        berth_protocol::ErrorDetail::Busy(berth_protocol::BusyDetail {
            limit: berth_protocol::DaemonLimit::Connections,
            ..
        })
    )
}

/// Sends the hello on `stream` (connected to `path`) and checks the daemon's welcome.
pub(super) async fn handshake(
    stream: UnixStream,
    path: &Path,
    client_name: &str,
) -> Result<(Reader, Writer, Welcome), Refused> {
    let (rd, wr) = stream
        .into_std()
        .and_then(berth_os::stream::split)
        .map_err(Error::lost)?;
    let mut reader = FramedRead::new(rd, FrameCodec::client());
    let mut writer = FramedWrite::new(wr, FrameCodec::client());
    let sent = writer
        .send(Request::Hello(Hello::current(client_name)))
        .await;
    if let Err(e) = sent {
        // A daemon that refuses a connection at once (busy, a client it cannot identify)
        // writes its answer and closes without reading the hello: the answer is still there.
        return match reader.next().await {
            Some(Ok(Response::Error(refusal))) => Err(Refused {
                busy: at_connection_limit(&refusal),
                error: refusal.into(),
            }),
            _ => Err(Error::lost(e).into()),
        };
    }
    let welcome = match reader.next().await {
        Some(Ok(Response::Welcome(w))) => w,
        Some(Ok(Response::Error(e))) => {
            return Err(Refused {
                busy: at_connection_limit(&e),
                error: e.into(),
            })
        }
        Some(Ok(other)) => return Err(Error::unexpected(other).into()),
        Some(Err(e)) => return Err(not_berth(path, e).into()),
        None => return Err(Error::lost("closed during the handshake").into()),
    };
    let ours = berth_protocol::MIN_PROTOCOL_VERSION..=berth_protocol::PROTOCOL_VERSION;
    if !ours.contains(&welcome.version) {
        return Err(Refused::from(Error::Incompatible(format!(
            "the daemon on {} chose protocol version {}, which this client (versions {}..={}) does not speak; upgrade the older of the two",
            path.display(),
            welcome.version,
            ours.start(),
            ours.end()
        ))));
    }
    Ok((reader, writer, welcome))
}

/// The error for a handshake whose answer could not be read: when it is not berth's protocol
/// at all, something else listens on the socket (a web server, another program) — said so, not
/// "the connection was lost … retry".
fn not_berth(path: &Path, e: berth_protocol::FrameError) -> Error {
    use berth_protocol::FrameError;
    let what = match &e {
        FrameError::Io(_) => return Error::lost(e),
        FrameError::TooLong { len, .. } => {
            // The four bytes a berth daemon would have sent as a length, as text if they are.
            let head = u32::try_from(*len).unwrap_or(u32::MAX).to_be_bytes();
            if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                format!("it begins {:?}", String::from_utf8_lossy(&head))
            } else {
                format!("a frame of {len} bytes, over berth's limit")
            }
        }
        FrameError::Malformed(why) => format!("a frame berth cannot read: {why}"),
    };
    Error::Unavailable(format!(
        "{} is not a berth daemon's socket: what listens there answered the handshake with something that is not berth's protocol ({what}); set BERTH_SOCKET to a berth daemon's socket, or see what listens there (`ss -xlp src {}`)",
        path.display(),
        path.display()
    ))
}

/// The next answer on a connection.
pub(super) async fn next_answer(reader: &mut Reader) -> Result<Response, Error> {
    match reader.next().await {
        Some(Ok(response)) => Ok(response),
        Some(Err(e)) => Err(Error::lost(e)),
        None => Err(Error::lost("closed while re-claiming")),
    }
}

/// Writes frames in the order they come, flushing whenever the queue runs dry. An error ends
/// the task, which ends the connection; it says why in words (the connection task wraps them
/// once, as the connection's loss).
async fn write_frames(
    mut writer: Writer,
    mut frames: mpsc::UnboundedReceiver<Frame>,
) -> Result<(), String> {
    while let Some(frame) = frames.recv().await {
        write_frame(&mut writer, frame).await?;
        // Whatever else is queued already goes out with the same flush (`feed` flushes by
        // itself once its buffer is large).
        while let Ok(frame) = frames.try_recv() {
            // Writes go straight to the socket, outside tokio's budget: a queue kept full by
            // other threads must still let this worker's other tasks run.
            tokio::task::consume_budget().await;
            write_frame(&mut writer, frame).await?;
        }
        writer.flush().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn write_frame(writer: &mut Writer, frame: Frame) -> Result<(), String> {
    match frame.fd {
        None => writer.feed(frame.request).await.map_err(|e| e.to_string()),
        Some(fd) => send_with_fd(writer, frame.request, fd).await,
    }
}

/// Writes `request` as one frame whose first bytes carry `fd` as `SCM_RIGHTS`. Frames queued
/// before it are flushed first so that the descriptor lands with this frame's bytes.
async fn send_with_fd(writer: &mut Writer, request: Request, fd: OwnedFd) -> Result<(), String> {
    writer.flush().await.map_err(|e| e.to_string())?;
    let mut frame = bytes::BytesMut::new();
    FrameCodec::client()
        .encode(request, &mut frame)
        .map_err(|e| e.to_string())?;
    let wr = writer.get_mut();
    let mut sent = 0;
    while sent < frame.len() {
        let rest = frame.get(sent..).unwrap_or_default();
        let attach = sent == 0;
        let n = std::future::poll_fn(|cx| {
            wr.poll_send(cx, |socket| {
                let iov = [IoSlice::new(rest)];
                let fds = [fd.as_fd()];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
                if attach && !cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)) {
                    return Err(io::Error::other("cannot attach the socket to the request"));
                }
                rustix::net::sendmsg(socket, &iov, &mut cmsg, rustix::net::SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            })
        })
        .await
        .map_err(|e| e.to_string())?;
        sent += n;
    }
    Ok(())
}
