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
//! once the write is through. (The daemon's sessions keep tokio's stream: the daemon is rarely
//! waiting in `epoll_wait` when a client reads its answer, and measured, registering them this
//! way changed nothing.)

#![expect(
    unsafe_code,
    reason = "tokio's AsyncFd registration is unsafe since tokio 1.5x"
)]

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Registers `stream` for reading (made non-blocking here) and splits it. Call within a tokio
/// runtime.
pub fn split(stream: UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    stream.set_nonblocking(true)?;
    let stream = Arc::new(register(stream, Interest::READABLE)?);
    Ok((
        ReadHalf(stream.clone()),
        WriteHalf {
            stream,
            writable: None,
        },
    ))
}

/// `fd` registered with the reactor for `interest`.
fn register<T: std::os::fd::AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: the AsyncFd takes ownership of `fd`, an open descriptor that stays the same until
    // the AsyncFd drops it: nothing else holds, replaces or closes it (the halves share it
    // through an `Arc`, and the writability registration owns a duplicate of its own).
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

/// The reading side, with readiness from the reactor. As an [`AsyncRead`] it is for a socket
/// that receives neither descriptors nor per-message credentials (the client's): a read that
/// stops short is taken to have emptied the queue.
#[derive(Debug)]
pub struct ReadHalf(Arc<AsyncFd<UnixStream>>);

impl ReadHalf {
    /// The socket and its read readiness, for reads of the caller's own (`recvmsg` with
    /// descriptors): `readable().await`, then `try_io`.
    pub fn registered(&self) -> &AsyncFd<UnixStream> {
        &self.0
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let len = unfilled.len();
            match ready.try_io(|stream| stream.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // A read that did not fill the buffer emptied the queue (as tokio's own
                    // streams assume: true of a stream socket read without descriptors or
                    // per-message credentials), so the next read waits for an event rather
                    // than finding the queue empty with one more system call.
                    if n > 0 && n < len {
                        ready.clear_ready();
                    }
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

/// The writing side: writes go straight to the socket (`MSG_NOSIGNAL`: a peer gone away is
/// an error, not a `SIGPIPE` for the program); writability is waited for only after a write
/// found the send buffer full.
#[derive(Debug)]
pub struct WriteHalf {
    stream: Arc<AsyncFd<UnixStream>>,
    /// A duplicate of the socket registered for writability, while a write waits for room.
    writable: Option<AsyncFd<OwnedFd>>,
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
            match send(self.stream.get_ref().as_fd()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => {
                    // Room again: stop being woken each time the peer reads.
                    self.writable = None;
                    return Poll::Ready(done);
                }
            }
            let writable = match &mut self.writable {
                Some(writable) => writable,
                // Registered after the failed send: epoll reports the socket at once if room
                // came in between, so no wake-up is lost.
                None => {
                    let dup = self.stream.get_ref().as_fd().try_clone_to_owned()?;
                    self.writable.insert(register(dup, Interest::WRITABLE)?)
                }
            };
            // Cleared before the next send: room that comes after it is a new event.
            ready!(writable.poll_write_ready(cx))?.clear_ready();
        }
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        // As tokio's write halves do: the peer sees the end of the stream now, even while the
        // read half lives on (the daemon closes it on another thread, possibly later).
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
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.stream.get_ref().shutdown(std::net::Shutdown::Write))
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
        // Several times what a Unix socket's buffers hold: the writer must wait for room.
        let sent: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = tokio::spawn({
            let sent = sent.clone();
            async move {
                wr.write_all(&sent).await.unwrap();
                wr.shutdown().await.unwrap();
                wr
            }
        });
        let mut got = Vec::new();
        peer_rd.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes arrived changed or out of order");
        let wr = writer.await.unwrap();
        assert!(
            wr.writable.is_none(),
            "the writability registration outlived its wait"
        );
    }

    #[tokio::test]
    async fn a_write_to_a_closed_peer_is_an_error_not_a_signal() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_rd, mut wr) = split(ours).unwrap();
        drop(theirs);
        let e = wr.write_all(b"hello").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
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
