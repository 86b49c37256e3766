//! Reading requests with `recvmsg`, so that file descriptors (`SCM_RIGHTS`) and the sender's
//! kernel-checked credentials (`SCM_CREDENTIALS`, with `SO_PASSCRED`) arrive with the bytes.
//!
//! # Who sent what
//! A connection can be shared: a forked child inherits it and writes on it too. Two facts of
//! the kernel's Unix stream sockets let the daemon attribute bytes and descriptors per frame:
//! - with `SO_PASSCRED` on, one `recvmsg` never returns bytes of two senders, so every read
//!   has one sender;
//! - a read stops right after the bytes that carried descriptors, so descriptors arrive with
//!   the read holding the first bytes their sender sent them with (earlier frames may share
//!   that read).
//!
//! [`Ledger`] keeps the reads' byte ranges in stream offsets and decides, frame by frame:
//! a frame's sender is the sender of the read in which it starts; a read's descriptors belong
//! to the last frame that starts in it, which must be an `Associate` carrying exactly one.
//! A partial frame continued by another sender, descriptors with a frame that is not an
//! `Associate`, and descriptors in a read where no frame starts close the connection.
//!
//! Every descriptor received is a [`Received`]: it is closed on a closer thread, never on the
//! runtime's (see `closer`), and so is the connection itself, whose receive queue may still
//! hold descriptors in flight. The request after an `Associate` is read once the daemon's copy
//! of its socket is closed (waiting at most [`CLOSE_WAIT`]), as when it was closed in place: a
//! client that closes its socket after the answer finds the port free for its next bind.

use std::fmt;
use std::io;
use std::os::fd::AsFd;

use berth_protocol::{FrameCodec, FrameError, Request, Response};
use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::unix::OwnedReadHalf;
use tokio::time::{Duration, Instant};
use tokio_util::codec::Decoder;

use crate::closer::{Closers, Closing, Received};

mod ledger;
mod recv;

pub(crate) use ledger::{Ledger, Refusal};
pub(crate) use recv::Credentials;

/// Descriptors accepted in one `recvmsg`; a request carries at most one.
pub(crate) const MAX_FDS_PER_READ: usize = 4;

/// Descriptors received and not yet claimed by a request; more means a misbehaving client.
pub(crate) const MAX_PENDING_FDS: usize = 8;

/// The most descriptors the kernel passes in one message (`SCM_MAX_FD`). The ancillary buffer
/// has room for all of them, so that the kernel never drops any: it would close them on the
/// reading thread.
const KERNEL_MAX_FDS: usize = 253;

/// The most bytes read per `recvmsg`.
const CHUNK: usize = 16 * 1024;

/// Bytes read per `recvmsg` at first, and again once the session is idle (nothing buffered):
/// requests are tens of bytes, and a daemon with 1,000 idle sessions should not keep 16 KiB of
/// scratch space and a grown frame buffer for each. A read that fills the scratch space doubles
/// it for the next, up to [`CHUNK`].
const SMALL_CHUNK: usize = 512;

/// How long the next request waits for the close of the socket that came with an `Associate`
/// (a close normally takes microseconds; one that blocks is the client's own doing).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// One decoded request with what the kernel said about it.
pub(crate) struct Inbound {
    /// The request.
    pub(crate) request: Request,
    /// The credentials of the process that sent the bytes in which the frame starts, when the
    /// kernel supplied them.
    pub(crate) sender: Option<Credentials>,
    /// The descriptor sent with an `Associate` frame.
    pub(crate) fd: Option<Received>,
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
    /// `None` only once dropped.
    half: Option<OwnedReadHalf>,
    /// Bytes read and not yet decoded; emptied (and its allocation dropped) when idle.
    buf: BytesMut,
    /// Scratch space for one read, kept to keep the future small: [`SMALL_CHUNK`] bytes,
    /// doubled after a read that fills it, back to [`SMALL_CHUNK`] when idle.
    chunk: Vec<u8>,
    /// Ancillary scratch space for one read, aligned for control headers.
    control: Vec<u64>,
    codec: FrameCodec<Request, Response>,
    /// Which bytes came from whom, and with which descriptors.
    ledger: Ledger<Received, Option<Credentials>>,
    /// The daemon's closer threads: every descriptor received is closed there.
    closers: Closers,
    /// The close of the descriptor handed out with the last request, which the next one waits
    /// for, and until when (set when the wait starts).
    closing: Option<(Closing, Option<Instant>)>,
}

impl Reader {
    pub(crate) fn new(half: OwnedReadHalf, closers: Closers) -> Self {
        Reader {
            closers,
            half: Some(half),
            buf: BytesMut::new(),
            chunk: vec![0u8; SMALL_CHUNK],
            control: recv::control_buffer(KERNEL_MAX_FDS),
            codec: FrameCodec::daemon(),
            ledger: Ledger::new(),
            closing: None,
        }
    }

    /// The next request; `Ok(None)` at a clean end of stream.
    ///
    /// Cancel-safe: the awaits are the wait for the last descriptor's close, whose deadline is
    /// kept, and the wait for readability; what a read brings is recorded before the next await.
    pub(crate) async fn next(&mut self) -> Result<Option<Inbound>, ReadError> {
        self.wait_for_close().await;
        self.shrink_if_idle();
        loop {
            let buffered = self.buf.len();
            if let Some(request) = self.codec.decode(&mut self.buf).map_err(ReadError::Frame)? {
                let len = buffered.saturating_sub(self.buf.len());
                let associate = matches!(
                    request,
                    Request::Associate { .. } | Request::AssociateAt { .. }
                );
                let claim = self.ledger.frame(len, associate).map_err(refused)?;
                self.closing = claim.fd.as_ref().map(|fd| (fd.closing(), None));
                return Ok(Some(Inbound {
                    request,
                    sender: claim.sender,
                    fd: claim.fd,
                }));
            }
            if self.read_chunk().await? == 0 {
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

    /// Between requests, with nothing buffered: gives back what a large frame grew (the frame
    /// buffer's allocation, scratch space beyond [`SMALL_CHUNK`]).
    fn shrink_if_idle(&mut self) {
        if !self.buf.is_empty() {
            return;
        }
        if self.buf.capacity() > SMALL_CHUNK {
            self.buf = BytesMut::new();
        }
        if self.chunk.len() > SMALL_CHUNK {
            self.chunk = vec![0u8; SMALL_CHUNK];
        }
    }

    /// Waits until the descriptor handed out with the last request, once dropped, is closed.
    async fn wait_for_close(&mut self) {
        let Some((closing, deadline)) = &mut self.closing else {
            return;
        };
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + CLOSE_WAIT);
        if tokio::time::timeout_at(deadline, closing.closed())
            .await
            .is_err()
        {
            tracing::info!(
                "the socket a client sent with an associate is not closed after {CLOSE_WAIT:?}; reading its next request anyway"
            );
        }
        self.closing = None;
    }

    /// One `recvmsg`. Call only once every complete frame is decoded (the ledger's rule).
    async fn read_chunk(&mut self) -> Result<usize, ReadError> {
        let Some(half) = self.half.as_ref() else {
            return Ok(0);
        };
        let stream: &tokio::net::UnixStream = half.as_ref();
        let chunk = &mut self.chunk;
        let control = &mut self.control;
        let message = stream
            .async_io(Interest::READABLE, || {
                recv::recv(stream.as_fd(), chunk, control)
            })
            .await
            .map_err(ReadError::Io)?;
        // Own every descriptor before anything can drop (and close) one here.
        let fds: Vec<Received> = message
            .fds
            .into_iter()
            .map(|fd| Received::new(fd, &self.closers))
            .collect();
        if message.truncated {
            // The kernel dropped ancillary data it could not fit: refuse rather than lose
            // track of what the client sent.
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "the client sent more file descriptors than a request may carry",
            )));
        }
        let n = message.bytes;
        self.ledger
            .record(n, fds, message.sender)
            .map_err(refused)?;
        self.buf
            .extend_from_slice(self.chunk.get(..n).unwrap_or_default());
        if n == self.chunk.len() && n < CHUNK {
            // More may be waiting: read more at once next time.
            self.chunk.resize((n * 2).min(CHUNK), 0);
        }
        Ok(n)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Closing the connection also drops what is still in its receive queue, descriptors in
        // flight included, in the closing thread: close it on a closer thread too. (The writing
        // half is dropped first, which leaves this one the last owner of the socket.)
        if let Some(half) = self.half.take() {
            self.closers.dispose(half);
        }
    }
}

/// The error that closes a connection whose descriptors or senders do not add up.
fn refused(refusal: Refusal<Option<Credentials>>) -> ReadError {
    ReadError::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        refusal.to_string(),
    ))
}

/// Who sent something, for a message.
struct Who(Option<Credentials>);

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(cred) if cred.pid != 0 => write!(f, "process {}", cred.pid),
            Some(_) => f.write_str("a process outside the daemon's pid namespace"),
            None => f.write_str("an unidentified process"),
        }
    }
}

impl fmt::Display for Refusal<Option<Credentials>> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooManyInOneRead(n) => write!(
                f,
                "the client sent {n} file descriptors in one message; a request carries at most one"
            ),
            Refusal::TooManyPending => {
                f.write_str("the client sent file descriptors with no request to claim them")
            }
            Refusal::SenderChanged { started, continued } => write!(
                f,
                "{} sent bytes that continue a request frame {} began on this shared connection; \
                 every process must send whole frames",
                Who(*continued),
                Who(*started)
            ),
            Refusal::NotAnAssociate(n) => write!(
                f,
                "{n} file descriptor(s) came with a request that is not an associate; only an \
                 associate request carries one, the socket to bind"
            ),
            Refusal::SeveralForAssociate(n) => write!(
                f,
                "an associate request carries exactly one file descriptor; {n} came with it"
            ),
            Refusal::MidFrame(n) => write!(
                f,
                "{n} file descriptor(s) came in the middle of a request frame; send the socket \
                 with the first bytes of its associate frame"
            ),
            Refusal::Unrecorded => {
                f.write_str("internal error: a frame with no read recorded for its bytes")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reader over a real socket pair: descriptors and credentials from the kernel.

    use super::*;
    use crate::testing::raw::{frame, send_with_fds};
    use berth_protocol::Request;
    use std::os::fd::AsFd;

    fn pair() -> (tokio::net::UnixStream, Reader) {
        let (client, daemon) = tokio::net::UnixStream::pair().unwrap();
        rustix::net::sockopt::set_socket_passcred(&daemon, true).unwrap();
        let (rd, _wr) = daemon.into_split();
        (client, Reader::new(rd, Closers::new()))
    }

    fn error_message(result: Result<Option<Inbound>, ReadError>) -> String {
        match result {
            Err(ReadError::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                e.to_string()
            }
            Err(ReadError::Frame(e)) => panic!("a frame error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[tokio::test]
    async fn pipelined_frames_and_a_socket_are_attributed() {
        let (client, mut reader) = pair();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let associate = Request::Associate {
            token: 7,
            address: None,
        };
        // Two messages, read at once: the socket's message ends the read.
        send_with_fds(&client, &frame(Request::Status), &[]);
        send_with_fds(&client, &frame(associate.clone()), &[socket.as_fd()]);
        send_with_fds(&client, &frame(Request::List), &[]);

        let status = reader.next().await.ok().flatten().unwrap();
        assert_eq!(status.request, Request::Status);
        assert!(status.fd.is_none());
        assert_eq!(status.sender.map(|c| c.pid), Some(std::process::id()));

        let got = reader.next().await.ok().flatten().unwrap();
        assert_eq!(got.request, associate);
        let fd = got.fd.expect("the socket");
        let addr = socket2::SockRef::from(&fd).local_addr().unwrap();
        assert_eq!(
            addr.as_socket(),
            Some(socket.local_addr().unwrap()),
            "the very socket sent"
        );

        let list = reader.next().await.ok().flatten().unwrap();
        assert_eq!(list.request, Request::List);
        assert!(list.fd.is_none());
    }

    #[tokio::test]
    async fn buffers_start_small_grow_for_a_large_frame_and_shrink_back_when_idle() {
        let (client, mut reader) = pair();
        assert_eq!(reader.chunk.len(), SMALL_CHUNK);
        assert_eq!(
            reader.buf.capacity(),
            0,
            "nothing allocated before the first read"
        );
        let mut hello = berth_protocol::Hello::current("x");
        hello.client = "x".repeat(6000);
        let large = Request::Hello(hello);
        send_with_fds(&client, &frame(large.clone()), &[]);
        send_with_fds(&client, &frame(Request::Status), &[]);
        let got = reader.next().await.ok().flatten().unwrap();
        assert_eq!(got.request, large, "a frame larger than the first reads");
        assert!(reader.chunk.len() > SMALL_CHUNK, "grown while reading it");
        let got = reader.next().await.ok().flatten().unwrap();
        assert_eq!(got.request, Request::Status);
        // The next call finds nothing buffered: back to small.
        let wait = std::time::Duration::from_millis(20);
        assert!(tokio::time::timeout(wait, reader.next()).await.is_err());
        assert_eq!(reader.chunk.len(), SMALL_CHUNK);
        assert!(
            reader.buf.capacity() <= SMALL_CHUNK,
            "{}",
            reader.buf.capacity()
        );
    }

    #[tokio::test]
    async fn a_socket_with_another_request_closes_the_connection() {
        let (client, mut reader) = pair();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        send_with_fds(&client, &frame(Request::List), &[socket.as_fd()]);
        let message = error_message(reader.next().await);
        assert!(message.contains("not an associate"), "{message}");
    }

    #[tokio::test]
    async fn an_associate_whose_socket_comes_later_gets_none_and_the_socket_is_refused() {
        let (client, mut reader) = pair();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let bytes = frame(Request::Associate {
            token: 7,
            address: None,
        });
        let (head, tail) = bytes.split_at(2);
        send_with_fds(&client, head, &[]);
        // The head is read alone, then the reader waits for more.
        let next = reader.next();
        tokio::pin!(next);
        let wait = std::time::Duration::from_millis(50);
        assert!(tokio::time::timeout(wait, next.as_mut()).await.is_err());
        send_with_fds(&client, tail, &[socket.as_fd()]);
        let message = error_message(next.await);
        assert!(message.contains("middle of a request frame"), "{message}");
    }

    #[tokio::test]
    async fn too_many_descriptors_in_one_message_close_the_connection_and_are_closed() {
        let (client, mut reader) = pair();
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        let fds = [write_end.as_fd(); 6];
        send_with_fds(&client, &frame(Request::Status), &fds);
        drop(write_end);
        let message = error_message(reader.next().await);
        assert!(message.contains("6 file descriptors"), "{message}");
        // Every copy the daemon got is closed (by a closer thread): the pipe sees its end.
        let eof = tokio::task::spawn_blocking(move || {
            let mut byte = [0u8; 1];
            rustix::io::read(&read_end, &mut byte[..]).unwrap()
        });
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), eof)
            .await
            .expect("every received copy closed")
            .unwrap();
        assert_eq!(n, 0);
    }
}
