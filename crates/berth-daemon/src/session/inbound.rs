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
//! # Which process
//! A read from the connection's owner (which the kernel pinned at connect time) needs nothing
//! more than its credentials. A read from another process — a forked child writing on an
//! inherited connection — has that process's start time read from `/proc` while a pidfd of it
//! shows it running ([`Sender::start_time`]), so that a sender that exits at once cannot lend
//! its pid, reused by another process, to the request it sent.
//!
//! That pidfd is the kernel's (`SCM_PIDFD`, with `SO_PASSPIDFD` on), which names the very
//! sender of the bytes. But making one and closing it for every read costs more than the rest
//! of a read, and almost every connection is never shared; so the option is turned on only
//! when a read from another process first arrives. That first read is pinned by a pidfd the
//! daemon opens for the sender's pid right after the read (`pidfd_open`): it names the sender
//! unless the sender exited and the kernel gave its pid to a new process between the sender's
//! write and the daemon's read — a full cycle of the pid space (`kernel.pid_max`) while the
//! bytes waited, which a session that is not reading (busy, or paused for its user's closes)
//! lengthens. Such a process still does not get the sender's user: credentials come with every
//! read. Reads after it — including those queued before the option was turned on, whose
//! sender the kernel recorded with their bytes — bring the kernel's pidfd. Kernels before 6.5
//! have no `SO_PASSPIDFD`: every read of another process is pinned like the first. The pidfd is closed on the serving thread
//! right away — unlike a descriptor a client sends, it never blocks on close.
//!
//! Every descriptor received is a [`Received`]: it is closed on a closer thread of the
//! connection's user, never on the runtime's (see `closer`), and so is the connection itself,
//! whose receive queue may still hold descriptors in flight. The request after an `Associate` is
//! read once the daemon's copy of its socket is closed (waiting at most [`CLOSE_WAIT`]), as when
//! it was closed in place: a client that closes its socket after the answer finds the port free
//! for its next bind. Nothing more is read from a connection while its user's closes back up
//! (`Lane::uncongested`).
//!
//! # When the daemon is out of descriptors
//! The control buffer has room for every descriptor one message can carry, so a message whose
//! control data the kernel truncated (`MSG_CTRUNC`) means the daemon could not take them: it
//! is out of descriptors (`EMFILE`, `ENFILE`). That is not the client's doing, so the frame the
//! lost descriptor belongs to is answered "unavailable" ([`Inbound::lost_fd`]) and the
//! connection stays; a lost descriptor counts as one for the ledger's rules, so a client that
//! breaks them is still refused.

use std::fmt;
use std::io;
use std::os::fd::AsFd;

use berth_protocol::{FrameCodec, FrameError, Request, Response};
use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::unix::OwnedReadHalf;
use tokio::time::{Duration, Instant};
use tokio_util::codec::Decoder;

use crate::session::closer::{Closing, Lane, Received};

pub(crate) use berth_os::recv::{self, control_buffer, recv, Credentials};
pub(crate) use berth_protocol::ledger::{Ledger, Refusal};

/// The most descriptors the kernel passes in one message (`SCM_MAX_FD`). The ancillary buffer
/// has room for all of them, so that the kernel never drops any: it would close them on the
/// reading thread.
pub(crate) const KERNEL_MAX_FDS: usize = recv::SCM_MAX_FD;

/// The descriptors one read of a session may install: a message's, and its sender's pidfd.
pub(crate) const READ_ROOM: usize = KERNEL_MAX_FDS + 1;

/// Bytes read per `recvmsg`.
const CHUNK: usize = 16 * 1024;

/// How long reading waits, when the daemon lacks the room to receive descriptors, before it
/// looks again (closes on the closer threads free descriptors meanwhile).
const ROOM_WAIT: Duration = Duration::from_millis(50);

/// A session's frame buffer is given back when it is idle (nothing buffered) and holds more
/// than this: requests are tens of bytes, and a daemon with 1,000 idle sessions should not keep
/// what one large read grew for each.
const KEPT_BUFFER: usize = 512;

/// The scratch space of one read — [`CHUNK`] bytes and the ancillary buffer — is the serving
/// thread's, not the session's: a read copies what it got into the session's frame buffer
/// before it returns, so 1,000 sessions share the two workers' scratch space instead of each
/// keeping 17 KiB. (Reading less at a time would not do: a session that ends with requests
/// still queued unread makes the kernel reset the connection rather than close it, and a client
/// then loses the answers it had not read yet.)
struct Scratch {
    bytes: Vec<u8>,
    /// Aligned for control headers.
    control: Vec<u64>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch {
        bytes: vec![0u8; CHUNK],
        control: recv::control_buffer(KERNEL_MAX_FDS),
    });
}

/// How long the next request waits for the close of the socket that came with an `Associate`
/// (a close normally takes microseconds; one that blocks is the client's own doing).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Who sent a read, as the kernel said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sender {
    /// Its credentials (`SCM_CREDENTIALS`).
    pub(crate) cred: Credentials,
    /// For a process other than the connection's owner, its start time as read while a
    /// pidfd of it (the kernel's `SCM_PIDFD`, or one opened at once for its pid) showed it
    /// running — 0 when it had exited by then; `None` for the owner itself, or when the
    /// daemon was out of descriptors, when `/proc` is read later.
    pub(crate) start_time: Option<u64>,
}

/// One decoded request with what the kernel said about it.
pub(crate) struct Inbound {
    /// The request.
    pub(crate) request: Request,
    /// The process that sent the bytes in which the frame starts, when the kernel said.
    pub(crate) sender: Option<Sender>,
    /// The descriptor sent with an `Associate` frame.
    pub(crate) fd: Option<Received>,
    /// The frame came with a descriptor the daemon could not take: it is out of descriptors.
    pub(crate) lost_fd: bool,
}

/// A descriptor as the ledger sees it: received, or sent but lost because the daemon could not
/// take it (`MSG_CTRUNC`).
pub(crate) enum Carried {
    Fd(Received),
    Lost,
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
    /// Bytes read and not yet decoded; its allocation is dropped when idle (see
    /// [`KEPT_BUFFER`]).
    buf: BytesMut,
    codec: FrameCodec<Request, Response>,
    /// Which bytes came from whom, and with which descriptors.
    ledger: Ledger<Carried, Option<Sender>>,
    /// The pid of the process that opened the connection: its own reads need no pinning.
    owner_pid: u32,
    /// Whether the kernel has been asked to send the senders' pidfds (`SO_PASSPIDFD`): only
    /// once another process than the owner has written on the connection.
    pidfds_asked: bool,
    /// The connection's user's lane of closer threads: every descriptor received is closed
    /// there, and so is the connection.
    lane: Lane,
    /// What must live until the connection's descriptor is closed (its slot in the daemon's
    /// connection limits): dropped after it, on the closer thread.
    keep: Option<Box<dyn Send>>,
    /// The close of the descriptor handed out with the last request, which the next one waits
    /// for, and until when (set when the wait starts).
    closing: Option<(Closing, Option<Instant>)>,
}

impl Reader {
    /// A reader of `half`, opened by process `owner_pid`, whose descriptors are closed in
    /// `lane`; `keep` is dropped once the connection is closed.
    pub(crate) fn new(
        half: OwnedReadHalf,
        owner_pid: u32,
        lane: Lane,
        keep: Option<Box<dyn Send>>,
    ) -> Self {
        Reader {
            owner_pid,
            pidfds_asked: false,
            lane,
            keep,
            half: Some(half),
            buf: BytesMut::new(),
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
                let (fd, lost_fd) = match claim.fd {
                    Some(Carried::Fd(fd)) => (Some(fd), false),
                    Some(Carried::Lost) => (None, true),
                    None => (None, false),
                };
                self.closing = fd.as_ref().map(|fd| (fd.closing(), None));
                return Ok(Some(Inbound {
                    request,
                    sender: claim.sender,
                    fd,
                    lost_fd,
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

    /// Between requests, with nothing buffered: gives back what a large read grew.
    fn shrink_if_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > KEPT_BUFFER {
            self.buf = BytesMut::new();
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
            // Debug: a client that does this on purpose must not flood the log (its user's
            // lane says once that its closes block).
            tracing::debug!(
                "the socket a client sent with an associate is not closed after {CLOSE_WAIT:?}; reading its next request anyway"
            );
        }
        self.closing = None;
    }

    /// One `recvmsg`, once the user's closes do not back up. Call only once every complete
    /// frame is decoded (the ledger's rule).
    async fn read_chunk(&mut self) -> Result<usize, ReadError> {
        if self.half.is_none() {
            return Ok(0);
        }
        let Some(half) = self.half.as_ref() else {
            return Ok(0);
        };
        let stream: &tokio::net::UnixStream = half.as_ref();
        let buf = &mut self.buf;
        let message = loop {
            stream.readable().await.map_err(ReadError::Io)?;
            // Back-pressure: what this user sends waits in the kernel while its closes back up,
            // and one of its connections is read at a time (see `Lane::read_turn`).
            let turn = self.lane.read_turn().await;
            // The room a message's descriptors (and its sender's pidfd) take is there, or
            // nothing is read for now: the kernel would close what it cannot install on this
            // very thread.
            if !crate::server::limits::room_for(READ_ROOM) {
                drop(turn);
                // A connection that has ended is still seen to end (a peek installs nothing):
                // its session ends and frees its descriptors — how a daemon at its limit gets
                // room again when clients leave.
                if recv::at_end(stream.as_fd()).unwrap_or(false) {
                    return Ok(0);
                }
                crate::server::limits::log_shortage(
                    "reading is paused until descriptors are freed",
                );
                tokio::time::sleep(ROOM_WAIT).await;
                continue;
            }
            let read = stream.try_io(Interest::READABLE, || {
                SCRATCH.with_borrow_mut(|scratch| {
                    let Scratch { bytes, control } = scratch;
                    let message = recv::recv(stream.as_fd(), bytes, control)?;
                    // Copied out at once: the scratch space is the thread's. (Should the
                    // checks below refuse the read, the connection closes with these bytes.)
                    buf.extend_from_slice(bytes.get(..message.bytes).unwrap_or_default());
                    Ok(message)
                })
            });
            drop(turn);
            match read {
                Ok(message) => break message,
                // Readiness was stale: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(ReadError::Io(e)),
            }
        };
        // Own every descriptor before anything can drop (and close) one here.
        let mut fds: Vec<Carried> = message
            .fds
            .into_iter()
            .map(|fd| Carried::Fd(Received::new(fd, &self.lane)))
            .collect();
        if message.truncated {
            // The buffer has room for all a message can carry: the daemon could not install
            // them (out of descriptors). At least one was lost.
            crate::server::limits::log_shortage("a descriptor a client sent could not be received");
            fds.push(Carried::Lost);
        }
        let n = message.bytes;
        let pidfd = (message.sender_pidfd, message.sender_pidfd_error);
        let sender = message.sender.map(|cred| self.pin(cred, pidfd));
        self.ledger.record(n, fds, sender).map_err(refused)?;
        Ok(n)
    }

    /// The sender of a read: for another process than the connection's owner, pinned by its
    /// pidfd (see "Which process" above) — the kernel's, or why the kernel made none. The
    /// pidfd is closed here.
    fn pin(
        &mut self,
        cred: Credentials,
        pidfd: (Option<std::os::fd::OwnedFd>, Option<i32>),
    ) -> Sender {
        if cred.pid == 0 || cred.pid == self.owner_pid {
            return Sender {
                cred,
                start_time: None,
            };
        }
        let start_time = match pidfd {
            (Some(pidfd), _) => Some(crate::session::peer::pinned_start_time(cred.pid, pidfd)),
            // The kernel says the sender has been reaped: its pid may name another process.
            (None, Some(libc::ESRCH)) => Some(0),
            // Out of descriptors: the sender is looked up when its request is served.
            (None, Some(_)) => None,
            (None, None) => {
                // The first read of another process: from now on the kernel pins each sender
                // itself; this read's sender is pinned by its pid, at once.
                self.ask_for_pidfds();
                match berth_os::pidfd::PidFd::open(cred.pid) {
                    Ok(Some(pidfd)) => {
                        Some(crate::session::peer::pinned_start_time(cred.pid, pidfd))
                    }
                    Ok(None) => Some(0),
                    // Out of descriptors: the sender is looked up when its request is served.
                    Err(_) => None,
                }
            }
        };
        Sender { cred, start_time }
    }

    /// Turns `SO_PASSPIDFD` on, once: the connection is shared.
    fn ask_for_pidfds(&mut self) {
        if std::mem::replace(&mut self.pidfds_asked, true) {
            return;
        }
        let Some(half) = self.half.as_ref() else {
            return;
        };
        let stream: &tokio::net::UnixStream = half.as_ref();
        // A kernel without the option (before 6.5) says so; every read of another process is
        // then pinned by its pid, as the first one is.
        if let Err(e) = berth_os::peer::pass_pidfd(stream) {
            tracing::debug!("cannot enable SO_PASSPIDFD on a shared connection: {e}");
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Closing the connection also drops what is still in its receive queue, descriptors in
        // flight included, in the closing thread: close it on a closer thread too. (The writing
        // half is dropped first, which leaves this one the last owner of the socket.)
        if let Some(half) = self.half.take() {
            self.lane.dispose((half, self.keep.take()));
        }
    }
}

/// The error that closes a connection whose descriptors or senders do not add up.
fn refused(refusal: Refusal<Option<Sender>>) -> ReadError {
    ReadError::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        Told(&refusal).to_string(),
    ))
}

/// Who sent something, for a message.
struct Who(Option<Sender>);

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(sender) if sender.cred.pid != 0 => write!(f, "process {}", sender.cred.pid),
            Some(_) => f.write_str("a process outside the daemon's pid namespace"),
            None => f.write_str("an unidentified process"),
        }
    }
}

/// A refusal as the client is told it.
struct Told<'a>(&'a Refusal<Option<Sender>>);

impl fmt::Display for Told<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
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
                "{} came with a request that is not an associate; only an associate request \
                 carries one, the socket to bind",
                descriptors(*n)
            ),
            Refusal::SeveralForAssociate(n) => write!(
                f,
                "an associate request carries exactly one file descriptor; {n} came with it"
            ),
            Refusal::MidFrame(n) => write!(
                f,
                "{} came in the middle of a request frame; send the socket with the first bytes \
                 of its associate frame",
                descriptors(*n)
            ),
            Refusal::Unrecorded => {
                f.write_str("internal error: a frame with no read recorded for its bytes")
            }
        }
    }
}

/// "1 file descriptor", "3 file descriptors".
fn descriptors(n: usize) -> String {
    if n == 1 {
        "1 file descriptor".to_owned()
    } else {
        format!("{n} file descriptors")
    }
}

#[cfg(test)]
mod tests;
