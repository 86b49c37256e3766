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

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;

use berth_protocol::{FrameCodec, FrameError, Request, Response};
use bytes::BytesMut;
use rustix::net::{
    recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, UCred,
};
use tokio::io::Interest;
use tokio::net::unix::OwnedReadHalf;
use tokio::time::{Duration, Instant};
use tokio_util::codec::Decoder;

use crate::closer::{self, Closing, Received};

/// Descriptors accepted in one `recvmsg`; a request carries at most one.
const MAX_FDS_PER_READ: usize = 4;

/// Descriptors received and not yet claimed by a request; more means a misbehaving client.
const MAX_PENDING_FDS: usize = 8;

/// The most descriptors the kernel passes in one message (`SCM_MAX_FD`). The ancillary buffer
/// has room for all of them, so that the kernel never drops any: it would close them on the
/// reading thread.
const KERNEL_MAX_FDS: usize = 253;

/// Bytes read per `recvmsg`.
const CHUNK: usize = 16 * 1024;

/// How long the next request waits for the close of the socket that came with an `Associate`
/// (a close normally takes microseconds; one that blocks is the client's own doing).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// One decoded request with what the kernel said about it.
pub(crate) struct Inbound {
    /// The request.
    pub(crate) request: Request,
    /// The credentials of the process that sent the bytes in which the frame starts, when the
    /// kernel supplied them.
    pub(crate) sender: Option<UCred>,
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
    buf: BytesMut,
    /// Scratch space for one read, kept to keep the future small.
    chunk: Vec<u8>,
    /// Ancillary scratch space for one read.
    space: Vec<MaybeUninit<u8>>,
    codec: FrameCodec<Request, Response>,
    /// Which bytes came from whom, and with which descriptors.
    ledger: Ledger<Received, Option<UCred>>,
    /// The close of the descriptor handed out with the last request, which the next one waits
    /// for, and until when (set when the wait starts).
    closing: Option<(Closing, Option<Instant>)>,
}

impl Reader {
    pub(crate) fn new(half: OwnedReadHalf) -> Self {
        Reader {
            half: Some(half),
            buf: BytesMut::with_capacity(CHUNK),
            chunk: vec![0u8; CHUNK],
            space: vec![
                MaybeUninit::uninit();
                rustix::cmsg_space!(ScmRights(KERNEL_MAX_FDS), ScmCredentials(1))
            ],
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
        loop {
            let buffered = self.buf.len();
            if let Some(request) = self.codec.decode(&mut self.buf).map_err(ReadError::Frame)? {
                let len = buffered.saturating_sub(self.buf.len());
                let associate = matches!(request, Request::Associate { .. });
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
        let space = &mut self.space;
        let (n, fds, sender) = stream
            .async_io(Interest::READABLE, || {
                let mut cmsg = RecvAncillaryBuffer::new(space);
                let mut iov = [IoSliceMut::new(chunk)];
                let msg = recvmsg(stream, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC)?;
                // Own every descriptor before anything can drop (and close) one here.
                let mut fds = Vec::new();
                let mut sender = None;
                for message in cmsg.drain() {
                    match message {
                        RecvAncillaryMessage::ScmRights(received) => {
                            fds.extend(received.map(Received::new));
                        }
                        RecvAncillaryMessage::ScmCredentials(cred) => sender = Some(cred),
                        _ => {}
                    }
                }
                if msg.flags.contains(ReturnFlags::CTRUNC) {
                    // The kernel dropped ancillary data it could not fit: refuse rather than
                    // lose track of what the client sent.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the client sent more file descriptors than a request may carry",
                    ));
                }
                Ok((msg.bytes, fds, sender))
            })
            .await
            .map_err(ReadError::Io)?;
        self.ledger.record(n, fds, sender).map_err(refused)?;
        self.buf
            .extend_from_slice(self.chunk.get(..n).unwrap_or_default());
        Ok(n)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Closing the connection also drops what is still in its receive queue, descriptors in
        // flight included, in the closing thread: close it on a closer thread too. (The writing
        // half is dropped first, which leaves this one the last owner of the socket.)
        if let Some(half) = self.half.take() {
            closer::dispose(half);
        }
    }
}

/// The error that closes a connection whose descriptors or senders do not add up.
fn refused(refusal: Refusal<Option<UCred>>) -> ReadError {
    ReadError::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        refusal.to_string(),
    ))
}

/// Who sent something, for a message.
struct Who(Option<UCred>);

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(cred) => write!(f, "process {}", cred.pid.as_raw_nonzero()),
            None => f.write_str("an unidentified process"),
        }
    }
}

impl fmt::Display for Refusal<Option<UCred>> {
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

/// Why a [`Ledger`] refuses the stream; `S` identifies a sender.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal<S> {
    /// More than [`MAX_FDS_PER_READ`] descriptors in one read.
    TooManyInOneRead(usize),
    /// More than [`MAX_PENDING_FDS`] descriptors not yet claimed by a frame.
    TooManyPending,
    /// A read from `continued` continues a frame that a read from `started` began.
    SenderChanged {
        /// The sender of the frame's first bytes.
        started: S,
        /// The sender of later bytes of it.
        continued: S,
    },
    /// Descriptors belong to a frame that is not an `Associate`.
    NotAnAssociate(usize),
    /// An `Associate` with more than one descriptor.
    SeveralForAssociate(usize),
    /// Descriptors in a read in which no frame starts.
    MidFrame(usize),
    /// A frame whose bytes no recorded read holds (a bug of the caller).
    Unrecorded,
}

/// What a decoded frame gets from the ledger.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Claim<F, S> {
    /// The sender of the read in which the frame starts.
    pub(crate) sender: S,
    /// Its descriptor, for an `Associate` that starts last in a read that brought one.
    pub(crate) fd: Option<F>,
}

/// One read: its bytes' range in the stream, its descriptors and its sender.
struct Read<F, S> {
    start: u64,
    end: u64,
    fds: Vec<F>,
    sender: S,
}

/// Which bytes of a stream came from whom and with which descriptors, in stream offsets.
/// Pure: fed the length, descriptors and sender of each read ([`Ledger::record`]) and the
/// length of each frame decoded, in order ([`Ledger::frame`]), it says who sent the frame and
/// which descriptor it carries. Every complete frame must be decoded before the next read is
/// recorded.
pub(crate) struct Ledger<F, S> {
    /// The reads not yet wholly decoded, oldest first; contiguous, the first one holding
    /// `consumed`.
    reads: VecDeque<Read<F, S>>,
    /// Stream offset past the last byte received.
    received: u64,
    /// Stream offset of the next frame's first byte.
    consumed: u64,
    /// Descriptors held in `reads`.
    pending: usize,
}

impl<F, S: Copy + PartialEq> Ledger<F, S> {
    pub(crate) fn new() -> Self {
        Ledger {
            reads: VecDeque::new(),
            received: 0,
            consumed: 0,
            pending: 0,
        }
    }

    /// Notes one read of `len` bytes (0: end of stream) from `sender` with `fds`.
    pub(crate) fn record(&mut self, len: usize, fds: Vec<F>, sender: S) -> Result<(), Refusal<S>> {
        if fds.len() > MAX_FDS_PER_READ {
            return Err(Refusal::TooManyInOneRead(fds.len()));
        }
        if len == 0 {
            // End of stream: no bytes, and no sender worth comparing.
            return if fds.is_empty() {
                Ok(())
            } else {
                Err(Refusal::MidFrame(fds.len()))
            };
        }
        // Bytes not yet decoded are the start of a frame (every complete one was decoded):
        // only their sender may continue it.
        if self.received > self.consumed {
            if let Some(first) = self.reads.front() {
                if first.sender != sender {
                    return Err(Refusal::SenderChanged {
                        started: first.sender,
                        continued: sender,
                    });
                }
            }
        }
        let start = self.received;
        self.received = start.saturating_add(len as u64);
        self.pending += fds.len();
        self.reads.push_back(Read {
            start,
            end: self.received,
            fds,
            sender,
        });
        if self.pending > MAX_PENDING_FDS {
            return Err(Refusal::TooManyPending);
        }
        Ok(())
    }

    /// The next frame was decoded: `len` bytes, header included; `associate` says whether it
    /// is an `Associate`.
    pub(crate) fn frame(&mut self, len: usize, associate: bool) -> Result<Claim<F, S>, Refusal<S>> {
        let start = self.consumed;
        let end = start.saturating_add(len as u64);
        let Some(first) = self.reads.front_mut() else {
            return Err(Refusal::Unrecorded);
        };
        if !(first.start <= start && start < first.end) || end > self.received {
            return Err(Refusal::Unrecorded);
        }
        let sender = first.sender;
        // The descriptors of the read in which this frame starts are its own if no later frame
        // starts in that read.
        let mut fds = if first.end <= end {
            std::mem::take(&mut first.fds)
        } else {
            Vec::new()
        };
        // Reads that begin inside this frame: the same sender, and no descriptors unless a
        // later frame starts in them.
        for read in self.reads.iter().skip(1) {
            if read.start >= end {
                break;
            }
            if read.sender != sender {
                return Err(Refusal::SenderChanged {
                    started: sender,
                    continued: read.sender,
                });
            }
            if read.end <= end && !read.fds.is_empty() {
                return Err(Refusal::MidFrame(read.fds.len()));
            }
        }
        self.consumed = end;
        while self.reads.front().is_some_and(|r| r.end <= end) {
            self.reads.pop_front();
        }
        self.pending = self.reads.iter().map(|r| r.fds.len()).sum();
        let fd = match fds.len() {
            0 => None,
            _ if !associate => return Err(Refusal::NotAnAssociate(fds.len())),
            1 => fds.pop(),
            n => return Err(Refusal::SeveralForAssociate(n)),
        };
        Ok(Claim { sender, fd })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// A ledger whose descriptors are labels and whose senders are pids.
    type TestLedger = Ledger<&'static str, u32>;

    const OWNER: u32 = 100;
    const CHILD: u32 = 200;

    fn claim(
        sender: u32,
        fd: Option<&'static str>,
    ) -> Result<Claim<&'static str, u32>, Refusal<u32>> {
        Ok(Claim { sender, fd })
    }

    #[test]
    fn one_frame_per_read_is_its_senders() {
        let mut l = TestLedger::new();
        l.record(10, vec![], OWNER).unwrap();
        assert_eq!(l.frame(10, false), claim(OWNER, None));
        l.record(7, vec![], CHILD).unwrap();
        assert_eq!(l.frame(7, false), claim(CHILD, None));
        l.record(12, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));
        assert_eq!(l.pending, 0);
        assert!(l.reads.is_empty());
    }

    #[test]
    fn the_descriptor_belongs_to_the_last_frame_starting_in_its_read() {
        // Status, then Associate with the socket: one read.
        let mut l = TestLedger::new();
        l.record(5 + 12, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(5, false), claim(OWNER, None));
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));

        // Two associates in one read with one socket: the second has it, the first none.
        let mut l = TestLedger::new();
        l.record(24, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, None));
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));
    }

    #[test]
    fn a_descriptor_with_a_frame_that_is_not_an_associate_is_refused() {
        let mut l = TestLedger::new();
        l.record(5, vec!["s"], CHILD).unwrap();
        assert_eq!(l.frame(5, false), Err(Refusal::NotAnAssociate(1)));

        // Associate first, then a List in the same read: the List would own the socket.
        let mut l = TestLedger::new();
        l.record(12 + 5, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, None));
        assert_eq!(l.frame(5, false), Err(Refusal::NotAnAssociate(1)));
    }

    #[test]
    fn an_associate_carries_exactly_one_descriptor() {
        let mut l = TestLedger::new();
        l.record(12, vec!["a", "b"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), Err(Refusal::SeveralForAssociate(2)));

        let mut l = TestLedger::new();
        l.record(12, vec![], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, None));
    }

    #[test]
    fn a_frame_split_over_reads_keeps_its_first_reads_sender_and_descriptor() {
        // The associate's first bytes and socket come in one read, the rest in two more.
        let mut l = TestLedger::new();
        l.record(5 + 3, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(5, false), claim(OWNER, None));
        l.record(4, vec![], OWNER).unwrap();
        l.record(5, vec![], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));
        assert!(l.reads.is_empty());
    }

    #[test]
    fn another_sender_may_not_continue_a_partial_frame() {
        // The child sends all but the last byte of an associate with its socket; the owner's
        // next bytes would complete it.
        let mut l = TestLedger::new();
        l.record(11, vec!["child's"], CHILD).unwrap();
        assert_eq!(
            l.record(5, vec![], OWNER),
            Err(Refusal::SenderChanged {
                started: CHILD,
                continued: OWNER
            })
        );

        // Whole frames of different senders, one after the other, are fine.
        let mut l = TestLedger::new();
        l.record(5, vec![], CHILD).unwrap();
        assert_eq!(l.frame(5, false), claim(CHILD, None));
        l.record(12, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));

        // Checked when the frame is decoded too, should reads come in without decoding.
        let mut l = TestLedger::new();
        l.record(3, vec![], CHILD).unwrap();
        l.reads.push_back(Read {
            start: 3,
            end: 5,
            fds: vec![],
            sender: OWNER,
        });
        l.received = 5;
        assert_eq!(
            l.frame(5, false),
            Err(Refusal::SenderChanged {
                started: CHILD,
                continued: OWNER
            })
        );
    }

    #[test]
    fn the_end_of_stream_is_no_other_sender() {
        let mut l = TestLedger::new();
        l.record(3, vec![], OWNER).unwrap();
        assert_eq!(l.record(0, vec![], 0), Ok(()));
        assert_eq!(l.record(0, vec!["x"], 0), Err(Refusal::MidFrame(1)));
    }

    #[test]
    fn descriptors_in_the_middle_of_a_frame_are_refused() {
        // The associate starts in a read without descriptors; its socket comes with later
        // bytes, in a read in which no frame starts.
        let mut l = TestLedger::new();
        l.record(2, vec![], OWNER).unwrap();
        l.record(10, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), Err(Refusal::MidFrame(1)));

        // A read that starts inside a frame and ends in the next one: the next one's.
        let mut l = TestLedger::new();
        l.record(3, vec![], OWNER).unwrap();
        l.record(2 + 12, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(5, false), claim(OWNER, None));
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));
    }

    #[test]
    fn descriptor_counts_are_bounded() {
        let mut l = TestLedger::new();
        assert_eq!(
            l.record(1, vec!["a", "b", "c", "d", "e"], OWNER),
            Err(Refusal::TooManyInOneRead(5))
        );

        // A huge frame sent a byte at a time, each with a descriptor.
        let mut l = TestLedger::new();
        l.record(1, vec![], OWNER).unwrap();
        for _ in 0..MAX_PENDING_FDS {
            l.record(1, vec!["x"], OWNER).unwrap();
        }
        assert_eq!(l.record(1, vec!["x"], OWNER), Err(Refusal::TooManyPending));
    }

    #[test]
    fn a_frame_beyond_what_was_read_is_a_bug() {
        let mut l = TestLedger::new();
        assert_eq!(l.frame(5, false), Err(Refusal::Unrecorded));
        l.record(4, vec![], OWNER).unwrap();
        assert_eq!(l.frame(5, false), Err(Refusal::Unrecorded));
    }

    #[test]
    fn offsets_follow_the_stream() {
        let mut l = TestLedger::new();
        for i in 0..1000u32 {
            l.record(7, vec![], i % 3).unwrap();
            assert_eq!(l.frame(7, false), claim(i % 3, None));
        }
        assert_eq!((l.received, l.consumed), (7000, 7000));
        assert!(l.reads.is_empty());
    }

    mod reader {
        //! The reader over a real socket pair: descriptors and credentials from the kernel.

        use super::super::*;
        use crate::testing::raw::{frame, send_with_fds};
        use berth_protocol::Request;
        use std::os::fd::AsFd;

        fn pair() -> (tokio::net::UnixStream, Reader) {
            let (client, daemon) = tokio::net::UnixStream::pair().unwrap();
            rustix::net::sockopt::set_socket_passcred(&daemon, true).unwrap();
            let (rd, _wr) = daemon.into_split();
            (client, Reader::new(rd))
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
            let me = rustix::process::getpid();
            assert_eq!(status.sender.map(|c| c.pid), Some(me));

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
}
