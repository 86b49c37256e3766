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
//! closes. This module is that line ([`Announcement`]) and what a question to the beacon
//! learns ([`AuthorityInfo`]); the sockets are `berth_os::beacon`'s. An asker reads the line
//! and also the kernel's credentials of the socket's owner (`SO_PEERCRED`), so callers trust
//! the kernel for who it is and the line only for where to reach it.

use std::fmt;
use std::time::Duration;

/// The beacon's name unless configured otherwise: the abstract address `\0berth-authority`.
pub const DEFAULT_NAME: &str = "berth-authority";

/// The longest answer an asker reads.
pub const MAX_ANSWER: usize = 4096;

/// How long an asker waits for the connection and the answer, together.
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

/// The kernel's credentials (`SO_PEERCRED`) of the process holding a beacon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its pid in the asker's pid namespace; 0 when the kernel cannot map it there (the holder
    /// lives in a pid namespace the asker cannot see into).
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
}

/// Who answered on a beacon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityInfo {
    /// The kernel's word on who holds the beacon.
    pub peer: Peer,
    /// What it said about itself; `None` when it wrote no berth line in time (not a berth
    /// daemon, or stuck).
    pub announced: Option<Announcement>,
}

impl AuthorityInfo {
    /// What an asker learnt: the kernel's credentials of the holder, and what it wrote.
    pub fn new(peer: Peer, answer: &[u8]) -> Self {
        let announced = std::str::from_utf8(answer)
            .ok()
            .and_then(Announcement::parse);
        AuthorityInfo { peer, announced }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn what_an_asker_learnt_is_told_plainly() {
        let peer = Peer {
            pid: 4121,
            uid: 1000,
            gid: 1000,
        };
        let info = AuthorityInfo::new(peer, b"berth 0.1.0 4121 /tmp/x.sock\n");
        assert_eq!(
            info.to_string(),
            "pid 4121 (uid 1000), socket /tmp/x.sock, berth 0.1.0"
        );
        let silent = AuthorityInfo::new(Peer { pid: 0, ..peer }, b"");
        assert_eq!(silent.announced, None);
        assert_eq!(
            silent.to_string(),
            "a process of another pid namespace (uid 1000), which does not answer as a berth daemon"
        );
    }
}
