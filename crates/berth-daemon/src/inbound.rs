//! Reading requests with `recvmsg`, so that file descriptors (`SCM_RIGHTS`) and the sender's
//! kernel-checked credentials (`SCM_CREDENTIALS`, with `SO_PASSCRED`) arrive with the bytes.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;

use berth_protocol::{FrameCodec, FrameError, Request, Response};
use bytes::BytesMut;
use rustix::net::{
    recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, UCred,
};
use tokio::io::Interest;
use tokio::net::unix::OwnedReadHalf;
use tokio_util::codec::Decoder;

/// Descriptors accepted in one `recvmsg`; a request carries at most one.
const MAX_FDS_PER_READ: usize = 4;

/// Descriptors received and not yet claimed by a request; more means a misbehaving client.
const MAX_PENDING_FDS: usize = 8;

/// Bytes read per `recvmsg`.
const CHUNK: usize = 16 * 1024;

/// One decoded request with what the kernel said about it.
pub(crate) struct Inbound {
    /// The request.
    pub(crate) request: Request,
    /// The credentials of the process that sent the bytes completing the frame, when the
    /// kernel supplied them.
    pub(crate) sender: Option<UCred>,
    /// The descriptor sent with an `Associate` frame.
    pub(crate) fd: Option<OwnedFd>,
}

/// Why reading stopped.
pub(crate) enum ReadError {
    /// The stream broke or the client misbehaved at the transport level.
    Io(io::Error),
    /// A frame could not be decoded.
    Frame(FrameError),
}

/// The reading side of a session.
pub(crate) struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
    /// Scratch space for one read, kept to keep the future small.
    chunk: Vec<u8>,
    codec: FrameCodec<Request, Response>,
    fds: VecDeque<OwnedFd>,
    /// Credentials of the most recent read; the kernel never merges bytes of different
    /// senders into one read.
    sender: Option<UCred>,
}

impl Reader {
    pub(crate) fn new(half: OwnedReadHalf) -> Self {
        Reader {
            half,
            buf: BytesMut::with_capacity(CHUNK),
            chunk: vec![0u8; CHUNK],
            codec: FrameCodec::daemon(),
            fds: VecDeque::new(),
            sender: None,
        }
    }

    /// The next request; `Ok(None)` at a clean end of stream.
    pub(crate) async fn next(&mut self) -> Result<Option<Inbound>, ReadError> {
        loop {
            if let Some(request) = self.codec.decode(&mut self.buf).map_err(ReadError::Frame)? {
                let fd = match request {
                    Request::Associate { .. } => self.fds.pop_front(),
                    _ => None,
                };
                return Ok(Some(Inbound {
                    request,
                    sender: self.sender,
                    fd,
                }));
            }
            if self.read_chunk().await.map_err(ReadError::Io)? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed in the middle of a frame",
                    )))
                };
            }
        }
    }

    async fn read_chunk(&mut self) -> io::Result<usize> {
        let chunk = &mut self.chunk;
        let mut space = [MaybeUninit::uninit();
            rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ), ScmCredentials(1))];
        let stream: &tokio::net::UnixStream = self.half.as_ref();
        let (n, fds, sender) = stream
            .async_io(Interest::READABLE, || {
                let mut cmsg = RecvAncillaryBuffer::new(&mut space);
                let mut iov = [IoSliceMut::new(chunk)];
                let msg = recvmsg(stream, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC)?;
                if msg.flags.contains(ReturnFlags::CTRUNC) {
                    // The kernel dropped descriptors it could not fit: refuse rather than
                    // lose track of what the client sent.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the client sent more file descriptors than a request may carry",
                    ));
                }
                let mut fds = Vec::new();
                let mut sender = None;
                for message in cmsg.drain() {
                    match message {
                        RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
                        RecvAncillaryMessage::ScmCredentials(cred) => sender = Some(cred),
                        _ => {}
                    }
                }
                Ok((msg.bytes, fds, sender))
            })
            .await?;
        if sender.is_some() {
            self.sender = sender;
        }
        self.fds.extend(fds);
        if self.fds.len() > MAX_PENDING_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the client sent file descriptors with no request to claim them",
            ));
        }
        self.buf
            .extend_from_slice(self.chunk.get(..n).unwrap_or_default());
        Ok(n)
    }
}
