//! The socket side of the authority beacon: an abstract Unix socket, scoped by the network
//! namespace, that only one process can bind, and a bounded question to whoever holds it.
//!
//! What the holder answers (one line) is not read here: the caller parses it (`berth-protocol`
//! owns the format). The kernel's credentials of the holder (`SO_PEERCRED`) come with it, so a
//! caller trusts the kernel for who holds the beacon and the line only for where to reach it.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::peer::{peer_credentials, PeerCredentials};

/// What the holder of a beacon said, and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The kernel's word on who holds the beacon.
    pub peer: PeerCredentials,
    /// What it wrote before the deadline: up to and including the first newline, at most the
    /// length asked for; possibly nothing (not a berth daemon, or stuck).
    pub text: Vec<u8>,
}

/// A zero timeout means "forever" to the kernel; never ask for it.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Connects to the abstract name `name` and reads its holder's answer: one line of at most
/// `max_answer` bytes, with a deadline of `timeout` from now for the connection and the answer
/// together. `Ok(None)` when nobody holds the name.
pub fn ask(name: &str, timeout: Duration, max_answer: usize) -> io::Result<Option<Answer>> {
    use rustix::net::{sockopt, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let deadline = Instant::now() + timeout;
    let fd: OwnedFd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // A connect to a listener whose backlog is full waits up to the send timeout.
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout.max(MIN_WAIT)))?;
    let addr = SocketAddrUnix::new_abstract_name(name.as_bytes())?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::CONNREFUSED || e == rustix::io::Errno::NOENT => {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    }
    let peer = peer_credentials(&fd)?;
    let text = read_line(UnixStream::from(fd), deadline, max_answer)?;
    Ok(Some(Answer { peer, text }))
}

/// [`ask`], for a caller on its way elsewhere that listens only to a holder it trusts: the
/// connection never waits (a holder whose queue is full is passed over: `Ok(None)`), and the
/// answer is read only when `trusted` accepts the kernel's credentials of the holder —
/// otherwise the answer has no text, at once. So a process without privileges that holds the
/// name cannot make the caller wait.
pub fn ask_trusted(
    name: &str,
    timeout: Duration,
    max_answer: usize,
    trusted: impl Fn(&PeerCredentials) -> bool,
) -> io::Result<Option<Answer>> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd: OwnedFd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new_abstract_name(name.as_bytes())?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        Err(e)
            if e == rustix::io::Errno::CONNREFUSED
                || e == rustix::io::Errno::NOENT
                || e == rustix::io::Errno::AGAIN =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    }
    let peer = peer_credentials(&fd)?;
    if !trusted(&peer) {
        return Ok(Some(Answer {
            peer,
            text: Vec::new(),
        }));
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    let deadline = Instant::now() + timeout;
    Ok(Some(Answer {
        peer,
        text: read_line(stream, deadline, max_answer)?,
    }))
}

/// One line of at most `max_answer` bytes from `stream`, or what arrived by `deadline`.
fn read_line(mut stream: UnixStream, deadline: Instant, max_answer: usize) -> io::Result<Vec<u8>> {
    let mut answer = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    while answer.len() < max_answer && !answer.ends_with(b"\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left.max(MIN_WAIT)))?;
        let want = buf.len().min(max_answer - answer.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Timed out or reset: what arrived is what it said.
            Err(_) => break,
        }
    }
    Ok(answer)
}

/// Binds the beacon `name` (abstract, so scoped by the caller's network namespace), ready to
/// accept without blocking and refusing descriptors ([`crate::rights::listen_abstract`]).
/// `EADDRINUSE` means another process holds it: [`ask`] says who.
#[cfg(feature = "daemon")]
pub fn bind(name: &str) -> io::Result<std::os::unix::net::UnixListener> {
    crate::rights::listen_abstract(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn unique(tag: &str) -> String {
        format!("berth-os-test-{tag}-{}", std::process::id())
    }

    const WAIT: Duration = Duration::from_secs(2);

    #[test]
    fn nobody_there_is_none() {
        assert_eq!(ask(&unique("none"), WAIT, 4096).unwrap(), None);
    }

    #[test]
    fn a_second_bind_fails_and_the_holder_answers() {
        let name = unique("held");
        let listener = bind(&name).unwrap();
        let err = bind(&name).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let server = std::thread::spawn(move || {
            listener.set_nonblocking(false).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"hello\nand more").unwrap();
        });
        let answer = ask(&name, WAIT, 4096).unwrap().expect("someone holds it");
        server.join().unwrap();
        assert_eq!(answer.peer.pid, std::process::id());
        assert_eq!(answer.peer.uid, rustix::process::geteuid().as_raw());
        assert!(answer.text.starts_with(b"hello\n"), "{:?}", answer.text);
    }

    #[test]
    fn a_silent_holder_is_named_by_the_kernel_within_the_deadline() {
        let name = unique("silent");
        let listener = bind(&name).unwrap();
        // Never accepted: the connection waits in the backlog and nothing is written.
        let answer = ask(&name, Duration::from_millis(50), 4096)
            .unwrap()
            .expect("someone holds it");
        assert_eq!(answer.peer.pid, std::process::id());
        assert!(answer.text.is_empty());
        drop(listener);
        // The name goes with its holder — once any process another test forked at that moment
        // (holding a copy of every descriptor until its exec) has let go of it too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ask(&name, Duration::from_millis(50), 4096)
            .unwrap()
            .is_some()
        {
            assert!(Instant::now() < deadline, "the name outlives its holder");
            std::thread::yield_now();
        }
    }

    #[test]
    fn an_untrusted_holder_is_not_waited_for() {
        let name = unique("untrusted");
        let _listener = bind(&name).unwrap();
        // A silent holder with a long deadline: not trusted, so nothing is read (waiting for
        // it would hold this test for the whole deadline).
        let answer = ask_trusted(&name, Duration::from_secs(30), 4096, |_| false)
            .unwrap()
            .expect("someone holds it");
        assert!(answer.text.is_empty());
        assert_eq!(answer.peer.pid, std::process::id());
        assert_eq!(
            ask_trusted(&unique("nobody"), WAIT, 4096, |_| true).unwrap(),
            None
        );
    }

    #[test]
    fn a_trusted_holder_is_heard() {
        let name = unique("trusted");
        let listener = bind(&name).unwrap();
        let server = std::thread::spawn(move || {
            listener.set_nonblocking(false).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"line\n").unwrap();
        });
        let answer = ask_trusted(&name, WAIT, 4096, |_| true)
            .unwrap()
            .expect("someone holds it");
        server.join().unwrap();
        assert_eq!(answer.text, b"line\n");
    }
}
