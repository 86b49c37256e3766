//! Accepting Unix connections without registering them with tokio's reactor: a listener
//! registered once ([`Acceptor`]), connections handed out as plain non-blocking sockets. For a
//! one-request protocol whose request is usually there when the connection is accepted, the
//! caller reads and answers at once and registers the connection only if it would block —
//! sparing each connection an `epoll_ctl` to add it and another to remove it.

#![expect(
    unsafe_code,
    reason = "tokio's AsyncFd registration is unsafe since tokio 1.5x"
)]

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};

use tokio::io::unix::AsyncFd;

/// A listening Unix socket registered with tokio's reactor for readiness only.
#[derive(Debug)]
pub struct Acceptor(AsyncFd<UnixListener>);

impl Acceptor {
    /// Registers `listener` (made non-blocking here). Call within a tokio runtime.
    pub fn register(listener: UnixListener) -> io::Result<Acceptor> {
        listener.set_nonblocking(true)?;
        // SAFETY: the AsyncFd takes ownership of the listener, whose descriptor is open and
        // stays the same until the AsyncFd drops it: nothing else holds, replaces or closes it.
        unsafe { AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE) }
            .map(Acceptor)
            .map_err(io::Error::from)
    }

    /// The listener.
    pub fn get_ref(&self) -> &UnixListener {
        self.0.get_ref()
    }

    /// The next connection: non-blocking, close-on-exec, not registered with the reactor.
    pub async fn accept(&self) -> io::Result<UnixStream> {
        loop {
            let mut ready = self.0.readable().await?;
            let accepted = ready.try_io(|listener| {
                rustix::net::accept_with(
                    listener.get_ref(),
                    rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
                )
                .map_err(io::Error::from)
            });
            if let Ok(result) = accepted {
                return result.map(UnixStream::from);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn connections_come_non_blocking_and_unregistered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let acceptor = Acceptor::register(UnixListener::bind(&path).unwrap()).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"42\n").unwrap();
        let mut conn = acceptor.accept().await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(conn.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"42\n");
        // Non-blocking: nothing more to read is an error at once, not a wait.
        let err = conn.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // A registered stream can still be made of it.
        let _registered = tokio::net::UnixStream::from_std(conn).unwrap();
    }
}
