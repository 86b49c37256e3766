//! Which network namespace a socket lives in.
//!
//! A bind happens in the socket's own namespace, not the daemon's, so a socket created in
//! another namespace must be refused: the reservation would not cover it. For the same reason a
//! *client* in another namespace is refused every request that grants or uses ports
//! ([`PeerNetns`], decided once per connection).
//!
//! The test is `SO_NETNS_COOKIE` (Linux 5.14+), which any process may read: the socket's
//! namespace cookie against that of a socket the daemon made itself. `ioctl(SIOCGSKNS)` would
//! name the namespace too, but it needs `CAP_NET_ADMIN`, which a per-user daemon lacks; it is
//! only the fallback for older kernels. The kernel is asked through `berth_os::netns`; what a
//! client's namespace means for it is decided here.

use std::os::fd::AsFd;

use berth_os::netns::{NetNs, NsFile};

/// Where a client is, compared with the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerNetns {
    /// The daemon's namespace: ports granted here are the client's ports.
    Same,
    /// Another namespace, by the inode numbers of the daemon's and, where it can be read, the
    /// client's.
    Foreign { daemon: u64, peer: Option<u64> },
    /// Neither `/proc` nor the socket tells (an old kernel and an unprivileged daemon): served
    /// as before, since refusing would lock out clients that are most likely local.
    Unknown,
}

/// The daemon's side of [`PeerNetns`], learnt once at start-up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NetnsCheck {
    /// `/proc/self/ns/net`, when it can be read.
    file: Option<NsFile>,
    /// The namespace of sockets the daemon creates.
    sockets: Option<NetNs>,
}

impl NetnsCheck {
    /// The daemon's own namespace.
    pub(crate) fn current() -> Self {
        NetnsCheck {
            file: NsFile::of_self().ok(),
            sockets: NetNs::current().ok(),
        }
    }

    /// Where the client connected on `socket`, process `pid`, is.
    ///
    /// First `/proc/PID/ns/net`: the namespace the process is in now, which is where its binds
    /// will happen. When that cannot be read (another user's process and an unprivileged
    /// daemon, or the process is gone), the namespace the client's end of the connection was
    /// created in: the kernel creates the accepted socket in the connecting socket's namespace,
    /// so its `SO_NETNS_COOKIE` tells without any privilege.
    pub(crate) fn peer(&self, pid: u32, socket: impl AsFd) -> PeerNetns {
        if let (Some(ours), Ok(theirs)) = (self.file, NsFile::of_process(pid)) {
            return if ours == theirs {
                PeerNetns::Same
            } else {
                PeerNetns::Foreign {
                    daemon: ours.inode(),
                    peer: Some(theirs.inode()),
                }
            };
        }
        let Some(sockets) = self.sockets else {
            return PeerNetns::Unknown;
        };
        match sockets.holds(&socket) {
            Ok(true) => PeerNetns::Same,
            Ok(false) => PeerNetns::Foreign {
                daemon: self.file.map_or(0, NsFile::inode),
                peer: NsFile::of_socket(&socket).ok().map(NsFile::inode),
            },
            Err(_) => PeerNetns::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose client end was made in a new network namespace: the daemon's end,
    /// and the listener's path; `None` (the skip reported) where no namespace can be made.
    fn foreign_connection() -> Option<(std::os::unix::net::UnixStream, tempfile::TempDir)> {
        use berth_testkit::{deadline, needs};
        let ns = needs::namespaces()?;
        let client = socket2::Socket::from(ns.socket(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
        )?);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        client
            .connect(&socket2::SockAddr::unix(&path).unwrap())
            .unwrap();
        let accepted = deadline::accept_within(&listener, deadline::DEADLINE, "our own connect");
        drop(client);
        Some((accepted, dir))
    }

    #[test]
    fn a_client_of_another_namespace_is_told_by_its_socket_when_proc_is_silent() {
        let check = NetnsCheck::current();
        let Some((accepted, _dir)) = foreign_connection() else {
            return;
        };
        // No process 0 in /proc: the socket decides.
        match check.peer(0, &accepted) {
            PeerNetns::Foreign { daemon, peer } => {
                assert_eq!(daemon, NsFile::of_self().unwrap().inode());
                assert_ne!(peer, Some(daemon));
                // Root may ask any socket; an ordinary user, one of its own user namespace's.
                assert!(peer.is_some(), "the socket names its namespace");
            }
            other => panic!("{other:?}"),
        }
        // /proc says where the process is now, and that wins (this process is at home).
        assert_eq!(check.peer(std::process::id(), &accepted), PeerNetns::Same);
    }

    #[test]
    fn a_client_process_in_another_namespace_is_foreign() {
        use berth_testkit::{deadline, needs};
        let Some(ns) = needs::namespaces() else {
            return;
        };
        if !needs::python3() {
            return;
        }
        let check = NetnsCheck::current();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let prefix = ns.unshare(&["--net"]);
        let mut child = std::process::Command::new(&prefix[0])
            .args(&prefix[1..])
            .args([needs::PYTHON3, "-c"])
            .arg("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(1)")
            .arg(&path)
            .spawn()
            .unwrap();
        // Bounded: a child that failed to start never connects.
        let accepted = deadline::accept_within(&listener, deadline::DEADLINE, "the client");
        let pid = crate::session::peer::peer_owner(&accepted).unwrap().pid;
        let verdict = check.peer(pid, &accepted);
        // The child's recv ends with our end.
        drop(accepted);
        let status = deadline::wait_within(&mut child, deadline::DEADLINE, "the client");
        assert!(status.success(), "the client failed: {status}");
        let child_ns = match verdict {
            PeerNetns::Foreign { peer: Some(p), .. } => p,
            other => panic!("{other:?}"),
        };
        assert_ne!(child_ns, NsFile::of_self().unwrap().inode());
    }

    #[test]
    fn a_client_at_home_is_same() {
        let check = NetnsCheck::current();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(check.peer(std::process::id(), &a), PeerNetns::Same);
        assert_eq!(check.peer(0, &a), PeerNetns::Same);
    }

    #[test]
    fn a_socket_of_another_namespace_is_not() {
        use berth_testkit::needs;
        let Some(ns) = needs::namespaces() else {
            return;
        };
        let Some(foreign) = ns.socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::DGRAM,
        ) else {
            return;
        };
        let foreign = socket2::Socket::from(foreign);
        let ours = NetNs::current().unwrap();
        // Bound in its own namespace, whatever the process's.
        foreign
            .bind(&std::net::SocketAddr::from(([0, 0, 0, 0], 0)).into())
            .unwrap();
        assert!(!ours.holds(&foreign).unwrap());
    }
}
