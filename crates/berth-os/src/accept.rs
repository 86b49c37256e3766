//! Accepting Unix connections on threads that wait in `accept(2)` itself, as a blocking
//! thread-per-listener server does: the kernel wakes one waiting thread per connection, and
//! the connection comes as a plain non-blocking socket, registered with no reactor. For a
//! one-request protocol whose request is usually there when the connection is accepted, the
//! caller reads and answers at once — one system call to wait and accept, where a reactor
//! makes three (`epoll_wait`, the `accept4`, and the `accept4` that finds the queue empty), and
//! no `epoll_ctl` to add and remove each connection.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a thread waiting on a listener it must not shut down (one the service manager
/// passed, see [`Acceptor::new`]) looks whether it was told to stop: the longest such a stop
/// waits.
pub const STOP_LOOK_EVERY: Duration = Duration::from_millis(200);

/// A listening Unix socket that any number of threads wait on in [`Acceptor::accept`], until
/// [`Acceptor::stop`].
#[derive(Debug)]
pub struct Acceptor {
    listener: UnixListener,
    /// Whether [`Acceptor::stop`] may shut the socket down to wake the waiting threads; a
    /// socket shared with the service manager must keep accepting for the next daemon.
    own: bool,
    stopped: AtomicBool,
}

impl Acceptor {
    /// Takes `listener` (made blocking here). `own`: the socket is this process's alone, and
    /// [`Acceptor::stop`] shuts it down, which wakes every waiting thread at once. Otherwise
    /// (systemd's socket, shared with the service manager) each wait ends after
    /// [`STOP_LOOK_EVERY`] (`SO_RCVTIMEO`, which `accept` honours) to look whether to stop.
    pub fn new(listener: UnixListener, own: bool) -> io::Result<Acceptor> {
        listener.set_nonblocking(false)?;
        if !own {
            rustix::net::sockopt::set_socket_timeout(
                &listener,
                rustix::net::sockopt::Timeout::Recv,
                Some(STOP_LOOK_EVERY),
            )?;
        }
        Ok(Acceptor {
            listener,
            own,
            stopped: AtomicBool::new(false),
        })
    }

    /// The listener.
    pub fn get_ref(&self) -> &UnixListener {
        &self.listener
    }

    /// The next connection (non-blocking, close-on-exec), waiting for one; `None` once
    /// [`Acceptor::stop`] was called — though a wait on a shared socket that was under way
    /// then may still return a connection made meanwhile (within [`STOP_LOOK_EVERY`]), which
    /// the caller must answer: the next daemon would have. An error is the kernel's (out of
    /// descriptors, say): the caller decides whether to wait before the next call.
    pub fn accept(&self) -> Option<io::Result<UnixStream>> {
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return None;
            }
            let accepted = rustix::net::accept_with(
                &self.listener,
                rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
            );
            match accepted {
                // Taken even as the stop comes: on a shared socket it is off the queue the
                // next daemon would serve, so it is answered here.
                Ok(fd) => return Some(Ok(UnixStream::from(fd))),
                // A signal, or the receive timeout's look at `stopped`.
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                // What `accept` says on a socket shut down by `stop`.
                Err(rustix::io::Errno::INVAL) if self.stopped.load(Ordering::Acquire) => {
                    return None
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Ends every [`Acceptor::accept`], now and later: at once on a socket of this process's
    /// own (shut down, so that queued and new connections are refused), within
    /// [`STOP_LOOK_EVERY`] on a shared one.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if self.own {
            let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Both);
        }
    }

    /// Whether [`Acceptor::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Arc;

    #[test]
    fn connections_come_non_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let acceptor = Acceptor::new(UnixListener::bind(&path).unwrap(), true).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"42\n").unwrap();
        let mut conn = acceptor.accept().unwrap().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(conn.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"42\n");
        // Non-blocking: nothing more to read is an error at once, not a wait.
        let err = conn.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    /// Both kinds of listener: every waiting thread returns `None` after `stop`.
    #[test]
    fn stop_ends_every_waiting_thread() {
        for own in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s");
            let listener = UnixListener::bind(&path).unwrap();
            let acceptor = Arc::new(Acceptor::new(listener, own).unwrap());
            let (done, ended) = std::sync::mpsc::channel();
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let (acceptor, done) = (acceptor.clone(), done.clone());
                    std::thread::spawn(move || {
                        let got = acceptor.accept();
                        done.send(got.is_none()).unwrap();
                    })
                })
                .collect();
            acceptor.stop();
            assert!(acceptor.stopped());
            // Each thread reports within a generous deadline (one look interval at most).
            for _ in 0..3 {
                let none = ended.recv_timeout(Duration::from_secs(10)).unwrap();
                assert!(none, "own: {own}: a thread got a connection after stop");
            }
            for thread in threads {
                thread.join().unwrap();
            }
            // Later calls end at once too.
            assert!(acceptor.accept().is_none());
        }
    }

    /// An acceptor on a socket shared with a service manager (not its own), at `path` in the
    /// directory returned, and the service manager's copy of the listener.
    fn shared_socket() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Acceptor,
        UnixListener,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let kept = listener.try_clone().unwrap();
        let acceptor = Acceptor::new(listener, false).unwrap();
        (dir, path, acceptor, kept)
    }

    /// A connection made to a shared socket as the stop comes is never lost: the thread that
    /// was waiting returns it (to be answered), or it stays queued for the next daemon.
    #[test]
    fn a_connection_made_as_a_shared_socket_stops_is_answered_or_left_queued() {
        let (_dir, path, acceptor, kept) = shared_socket();
        let acceptor = Arc::new(acceptor);
        let waiting = {
            let acceptor = acceptor.clone();
            std::thread::spawn(move || acceptor.accept().map(Result::unwrap))
        };
        acceptor.stop();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"42\n").unwrap();
        let mut conn = match waiting.join().unwrap() {
            Some(conn) => conn,
            None => {
                kept.set_nonblocking(true).unwrap();
                kept.accept().expect("left queued for the next daemon").0
            }
        };
        conn.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 3];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"42\n");
    }

    /// A socket shared with the service manager is not shut down: it still takes connections
    /// (for the next daemon) after this one stopped.
    #[test]
    fn a_shared_socket_keeps_accepting_after_stop() {
        let (_dir, path, acceptor, kept) = shared_socket();
        acceptor.stop();
        drop(acceptor);
        UnixStream::connect(&path).unwrap();
        kept.set_nonblocking(true).unwrap();
        kept.accept().unwrap();
    }
}
