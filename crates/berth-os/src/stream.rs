//! A connected Unix stream socket registered with tokio's reactor for reading only, split into
//! a read half and a write half (feature `tokio`): the client library's connection.
//!
//! Why not `tokio::net::UnixStream`: it registers for both directions, and the kernel wakes a
//! Unix socket's writability waiters each time the peer consumes what it sent
//! (`unix_write_space`). So every time the daemon read a request, the client, waiting in
//! `epoll_wait` for the answer, was woken for nothing — and where the two share a CPU, it
//! preempted the daemon mid-request: a context switch each way, per request. Requests are small
//! and the send buffer nearly always has room, so a write goes straight out; only a write that
//! finds the buffer full registers a second descriptor of the socket for writability, dropped
//! at the next flush. Writes use `MSG_NOSIGNAL`: a daemon gone away is an error for the caller,
//! never a `SIGPIPE` for a C program using libberth (Rust programs ignore it; C programs need
//! not). (The daemon's sessions keep tokio's stream: the daemon is rarely
//! waiting in `epoll_wait` when a client reads its answer, and measured, registering them this
//! way changed nothing.)

#![expect(
    unsafe_code,
    reason = "tokio's AsyncFd registration is unsafe since tokio 1.5x"
)]

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Registers `stream` for reading (made non-blocking here) and splits it. Call within a tokio
/// runtime.
pub fn split(stream: UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    stream.set_nonblocking(true)?;
    // SAFETY: the AsyncFd takes ownership of the stream, an open descriptor that stays the same
    // until the AsyncFd drops it: the halves share it through an `Arc` and never take it out.
    let stream = Arc::new(unsafe { register(stream, Interest::READABLE)? });
    Ok((
        ReadHalf(stream.clone()),
        WriteHalf {
            stream,
            writable: None,
            backoff: None,
        },
    ))
}

/// `fd` registered with the reactor for `interest`.
///
/// # Safety
/// `fd` must own its descriptor, which must stay open and the same until the returned AsyncFd
/// drops it (tokio's condition for `register_with_interest`).
unsafe fn register<T: AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: the caller's promise.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

/// The reading side, with readiness from the reactor, for a socket that receives neither
/// descriptors nor per-message credentials (the client's): a read that stops short is taken to
/// have emptied the queue.
#[derive(Debug)]
pub struct ReadHalf(Arc<AsyncFd<UnixStream>>);

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.0.poll_read_ready(cx))?;
            // SAFETY: only the bytes the kernel wrote are marked initialised below; nothing
            // here reads the rest.
            let unfilled = unsafe { buf.unfilled_mut() };
            let len = unfilled.len();
            let read = ready.try_io(|stream| {
                rustix::net::recv(stream, &mut *unfilled, rustix::net::RecvFlags::empty())
                    .map(|((filled, _), _)| filled.len())
                    .map_err(io::Error::from)
            });
            match read {
                Ok(Ok(n)) => {
                    // A read that did not fill the buffer emptied the queue (as tokio's own
                    // streams assume: true of a stream socket read without descriptors or
                    // per-message credentials), so the next read waits for an event rather
                    // than finding the queue empty with one more system call.
                    if n > 0 && n < len {
                        ready.clear_ready();
                    }
                    // SAFETY: `recv` initialised the first `n` bytes of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Readiness was stale (cleared by `try_io`): wait for the next.
                Err(_would_block) => continue,
            }
        }
    }
}

/// How long a write that found the send buffer full waits before trying again when it cannot
/// register for writability (the process is out of descriptors, say).
const RETRY_WITHOUT_REGISTRATION: Duration = Duration::from_millis(10);

/// The writing side: writes go straight to the socket (`MSG_NOSIGNAL`: a peer gone away is
/// an error, not a `SIGPIPE` for the program); writability is waited for only after a write
/// found the send buffer full, until the next flush.
#[derive(Debug)]
pub struct WriteHalf {
    stream: Arc<AsyncFd<UnixStream>>,
    /// A duplicate of the socket registered for writability, from a write that found the send
    /// buffer full until the next flush (so that a flush larger than the buffer registers once).
    writable: Option<AsyncFd<OwnedFd>>,
    /// When that registration could not be made: the wait before trying again.
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteHalf {
    /// Runs `send` (one non-blocking send on the socket it is given) until it does not find
    /// the send buffer full, waiting for room in between.
    pub fn poll_send<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut send: impl FnMut(BorrowedFd<'_>) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            if let Some(backoff) = &mut self.backoff {
                ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match send(self.stream.get_ref().as_fd()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
            let writable = match &mut self.writable {
                Some(writable) => writable,
                // Registered after the failed send: epoll reports the socket at once if room
                // came in between, so no wake-up is lost.
                None => match self.register_writable() {
                    Ok(writable) => self.writable.insert(writable),
                    Err(_) => {
                        // The connection stays: the send is tried again a little later.
                        self.backoff =
                            Some(Box::pin(tokio::time::sleep(RETRY_WITHOUT_REGISTRATION)));
                        continue;
                    }
                },
            };
            // Cleared before the next send: room that comes after it is a new event.
            ready!(writable.poll_write_ready(cx))?.clear_ready();
        }
    }

    /// A duplicate of the socket, registered for writability.
    fn register_writable(&self) -> io::Result<AsyncFd<OwnedFd>> {
        let dup = self.stream.get_ref().as_fd().try_clone_to_owned()?;
        // SAFETY: `dup` is a descriptor of its own, owned by the AsyncFd from here on.
        unsafe { register(dup, Interest::WRITABLE) }
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        // As tokio's write halves do: the peer sees the end of the stream now, even while the
        // read half lives on.
        let _ = self.stream.get_ref().shutdown(std::net::Shutdown::Write);
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, |socket| {
            rustix::net::send(socket, buf, rustix::net::SendFlags::NOSIGNAL)
                .map_err(io::Error::from)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here. What was written is out: stop being woken each time the
        // peer reads.
        self.get_mut().writable = None;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.writable = None;
        Poll::Ready(this.stream.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_larger_than_the_send_buffer_waits_for_room_and_arrives_whole() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_rd, mut wr) = split(ours).unwrap();
        let (mut peer_rd, _peer_wr) = split(theirs).unwrap();
        // Several times what a Unix socket's buffers hold: on this current-thread runtime the
        // writer runs until the buffer is full, so it must wait for room.
        let sent: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = tokio::spawn({
            let sent = sent.clone();
            async move {
                wr.write_all(&sent).await.unwrap();
                assert!(wr.writable.is_some(), "the write never waited for room");
                wr.flush().await.unwrap();
                assert!(
                    wr.writable.is_none(),
                    "the writability registration outlived the flush"
                );
                // Dropped: the peer sees the end of the stream.
            }
        });
        let mut got = Vec::new();
        peer_rd.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes arrived changed or out of order");
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_write_to_a_closed_peer_is_an_error_and_raises_no_sigpipe() {
        // SIGPIPE blocked on this thread (the runtime's: a current-thread test runtime): a
        // write that raised it would leave it pending, whatever its disposition.
        let pipe_only = || {
            // SAFETY: an empty set, then one signal added: plain libc calls on a local set.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGPIPE);
                set
            }
        };
        let set = pipe_only();
        // SAFETY: changes only this thread's signal mask.
        let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        assert_eq!(blocked, 0);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_rd, mut wr) = split(ours).unwrap();
        drop(theirs);
        let e = wr.write_all(b"hello").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
        // SAFETY: reads this thread's pending signals into a local set.
        let pending = unsafe {
            let mut pending: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut pending);
            libc::sigismember(&pending, libc::SIGPIPE)
        };
        if pending == 1 {
            // Taken off before the mask is restored, so that it cannot be delivered later.
            let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::uninit();
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: waits (not at all) for a signal of the local set into local storage.
            unsafe { libc::sigtimedwait(&set, info.as_mut_ptr(), &zero) };
        }
        // SAFETY: restores this thread's signal mask.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        assert_eq!(pending, 0, "the write raised SIGPIPE");
    }

    #[tokio::test]
    async fn dropping_the_write_half_ends_the_peer_s_stream_while_the_read_half_lives() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_rd, wr) = split(ours).unwrap();
        let (mut peer_rd, _peer_wr) = split(theirs).unwrap();
        drop(wr);
        let mut got = Vec::new();
        peer_rd.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn the_read_half_sees_the_peer_s_bytes_and_its_end() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (mut rd, _wr) = split(ours).unwrap();
        std::io::Write::write_all(&mut theirs, b"answer").unwrap();
        drop(theirs);
        let mut got = String::new();
        rd.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "answer");
    }
}
