//! The authority beacon: how a berth daemon makes itself the only one serving its network
//! namespace.
//!
//! Ports are one resource per network namespace, so two daemons serving one namespace could
//! grant the same port. Every daemon therefore binds an *abstract* Unix socket named
//! [`DEFAULT_NAME`] (the address `\0berth-authority`). Abstract names live in the network
//! namespace, not in a file system: a second daemon in the same namespace gets `EADDRINUSE`
//! whatever its user, socket path or mount namespace, and the name vanishes with the process
//! that bound it, so a crash leaves nothing stale behind.
//!
//! The beacon speaks a one-line protocol: on every connection the daemon writes
//! `berth <daemon-version> <pid> <socket-path>\n` (the path runs to the end of the line) and
//! closes. [`query`] reads that line and also the kernel's credentials of the socket's owner
//! (`SO_PEERCRED`), so callers trust the kernel for who it is and the line only for where to
//! reach it.

#![expect(
    unsafe_code,
    reason = "getsockopt(SO_PEERCRED) into a plain C struct: rustix's credentials type cannot hold pid 0"
)]

use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// The beacon's name unless configured otherwise: the abstract address `\0berth-authority`.
pub const DEFAULT_NAME: &str = "berth-authority";

/// The longest answer [`query`] reads.
pub const MAX_ANSWER: usize = 4096;

/// How long [`query`] waits for the connection and the answer, together.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What a daemon says about itself on its beacon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The daemon's release, e.g. `0.1.0`.
    pub version: String,
    /// The daemon's pid, as the daemon sees itself (in its own pid namespace).
    pub pid: u32,
    /// The socket clients reach it on.
    pub socket: String,
}

impl Announcement {
    /// The line the beacon writes: `berth <version> <pid> <socket>\n`. A newline in the socket
    /// path (which would end the line early) is written as `?`.
    pub fn to_line(&self) -> String {
        let version: String = self.version.split_whitespace().collect();
        format!(
            "berth {} {} {}\n",
            if version.is_empty() { "?" } else { &version },
            self.pid,
            self.socket.replace('\n', "?")
        )
    }

    /// Parses a beacon's answer; `None` unless it is a whole berth line.
    pub fn parse(answer: &str) -> Option<Self> {
        let line = answer.strip_suffix('\n')?;
        let mut words = line.splitn(4, ' ');
        if words.next()? != "berth" {
            return None;
        }
        let version = words.next()?.to_owned();
        let pid = words.next()?.parse().ok()?;
        let socket = words.next()?.to_owned();
        (!socket.is_empty()).then_some(Announcement {
            version,
            pid,
            socket,
        })
    }
}

/// The kernel's credentials of a socket's peer (`SO_PEERCRED`), as plain integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's pid in the caller's pid namespace; 0 when the kernel cannot map it there (the
    /// peer lives in a pid namespace the caller cannot see into).
    pub pid: u32,
    /// The peer's user id.
    pub uid: u32,
    /// The peer's group id.
    pub gid: u32,
}

/// `SO_PEERCRED` of a connected Unix socket, read into the C struct itself: the kernel reports
/// pid 0 for a peer outside the caller's pid namespace, which a non-zero pid type cannot hold.
pub fn peer_credentials(socket: impl AsFd) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>()).unwrap_or(12);
    // SAFETY: `cred` is a valid, writable ucred and `len` is its size; the descriptor is
    // borrowed for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCredentials {
        pid: u32::try_from(cred.pid).unwrap_or(0),
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Who answered on a beacon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityInfo {
    /// The kernel's word on who holds the beacon.
    pub peer: PeerCredentials,
    /// What it said about itself; `None` when it wrote no berth line in time (not a berth
    /// daemon, or stuck).
    pub announced: Option<Announcement>,
}

impl fmt::Display for AuthorityInfo {
    /// `pid 4121 (uid 1000), socket /run/user/1000/berth/berth.sock, berth 0.1.0`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer.pid {
            0 => write!(f, "a process of another pid namespace")?,
            pid => write!(f, "pid {pid}")?,
        }
        write!(f, " (uid {})", self.peer.uid)?;
        match &self.announced {
            Some(a) => write!(f, ", socket {}, berth {}", a.socket, a.version),
            None => write!(f, ", which does not answer as a berth daemon"),
        }
    }
}

/// Binds the beacon `name` (abstract, so scoped by the caller's network namespace), ready to
/// accept without blocking. `EADDRINUSE` means another process holds it: [`query`] says who.
pub fn bind(name: &str) -> io::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Asks whoever holds the beacon `name` who it is, within [`QUERY_TIMEOUT`]. `Ok(None)` when
/// nobody holds it.
pub fn query(name: &str) -> io::Result<Option<AuthorityInfo>> {
    query_within(name, QUERY_TIMEOUT)
}

/// [`query`] with a deadline of `timeout` from now for the connection and the answer.
pub fn query_within(name: &str, timeout: Duration) -> io::Result<Option<AuthorityInfo>> {
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
    let mut stream = UnixStream::from(fd);
    let mut answer = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    while answer.len() < MAX_ANSWER && !answer.ends_with(b"\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left.max(MIN_WAIT)))?;
        let want = buf.len().min(MAX_ANSWER - answer.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Timed out or reset: what arrived is what it said.
            Err(_) => break,
        }
    }
    let announced = std::str::from_utf8(&answer)
        .ok()
        .and_then(Announcement::parse);
    Ok(Some(AuthorityInfo { peer, announced }))
}

/// A zero timeout means "forever" to the kernel; never ask for it.
const MIN_WAIT: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines_round_trip() {
        let a = Announcement {
            version: "0.1.0".into(),
            pid: 4121,
            socket: "/run/user/1000/my berth/berth.sock".into(),
        };
        assert_eq!(
            a.to_line(),
            "berth 0.1.0 4121 /run/user/1000/my berth/berth.sock\n"
        );
        assert_eq!(Announcement::parse(&a.to_line()), Some(a));
        assert_eq!(Announcement::parse("berth 0.1.0 12 /s"), None, "no newline");
        assert_eq!(Announcement::parse("HTTP/1.1 200 OK\n"), None);
        assert_eq!(Announcement::parse("berth 0.1.0 x /s\n"), None);
        assert_eq!(Announcement::parse("berth 0.1.0 12 \n"), None);
    }

    fn unique(tag: &str) -> String {
        format!("berth-test-{tag}-{}", std::process::id())
    }

    #[test]
    fn nobody_there_is_none() {
        assert_eq!(query(&unique("none")).unwrap(), None);
    }

    #[test]
    fn a_second_bind_fails_and_the_query_names_the_holder() {
        let name = unique("held");
        let listener = bind(&name).unwrap();
        let err = bind(&name).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let line = Announcement {
            version: "9.9.9".into(),
            pid: std::process::id(),
            socket: "/tmp/x.sock".into(),
        }
        .to_line();
        let server = std::thread::spawn(move || {
            listener.set_nonblocking(false).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(line.as_bytes()).unwrap();
        });
        let info = query(&name).unwrap().expect("someone holds it");
        server.join().unwrap();
        assert_eq!(info.peer.pid, std::process::id());
        assert_eq!(info.peer.uid, rustix::process::geteuid().as_raw());
        let announced = info.announced.as_ref().expect("a berth line");
        assert_eq!(announced.socket, "/tmp/x.sock");
        assert!(info.to_string().contains("socket /tmp/x.sock"), "{info}");
    }

    #[test]
    fn a_silent_holder_is_named_by_the_kernel_within_the_deadline() {
        let name = unique("silent");
        let listener = bind(&name).unwrap();
        // Never accepted: the connection waits in the backlog and nothing is written.
        let info = query_within(&name, Duration::from_millis(50))
            .unwrap()
            .expect("someone holds it");
        assert_eq!(info.peer.pid, std::process::id());
        assert_eq!(info.announced, None);
        drop(listener);
        assert_eq!(query(&name).unwrap(), None, "the name goes with its holder");
    }
}
