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
//! only the fallback for older kernels.

#![expect(
    unsafe_code,
    reason = "getsockopt(SO_NETNS_COOKIE) and ioctl(SIOCGSKNS) have no safe wrapper in rustix"
)]

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use rustix::ioctl::{ioctl, Ioctl, IoctlOutput, Opcode};

/// `SO_NETNS_COOKIE` from `<asm-generic/socket.h>`.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// `SIOCGSKNS` from `<linux/sockios.h>`: returns a new descriptor for the socket's network
/// namespace.
const SIOCGSKNS: Opcode = 0x894C;

/// The identity of a network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetNs {
    /// Its cookie (`SO_NETNS_COOKIE`).
    Cookie(u64),
    /// Device and inode of its nsfs file (older kernels).
    Inode { dev: u64, ino: u64 },
}

impl NetNs {
    /// The daemon's own network namespace.
    pub(crate) fn current() -> io::Result<Self> {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0")
            .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
        match cookie(&probe) {
            Ok(c) => Ok(NetNs::Cookie(c)),
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                let st = rustix::fs::stat("/proc/self/ns/net")?;
                Ok(NetNs::Inode {
                    dev: st.st_dev,
                    ino: st.st_ino,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `socket` lives in this namespace.
    pub(crate) fn holds(self, socket: impl AsFd) -> io::Result<bool> {
        match self {
            NetNs::Cookie(ours) => cookie(socket).map(|theirs| theirs == ours),
            NetNs::Inode { dev, ino } => Ok(NsFile::of_socket(socket)? == NsFile { dev, ino }),
        }
    }
}

/// A network namespace as `/proc` names it: the device and inode of its nsfs file. The inode
/// is what `ls -l /proc/PID/ns/net` shows: `net:[4026531840]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NsFile {
    dev: u64,
    ino: u64,
}

impl NsFile {
    /// The namespace of this process.
    pub(crate) fn of_self() -> io::Result<Self> {
        Self::at("/proc/self/ns/net")
    }

    /// The namespace process `pid` is in now. Needs the right to inspect it (ptrace read):
    /// an unprivileged daemon gets `EACCES` for other users' processes.
    pub(crate) fn of_process(pid: u32) -> io::Result<Self> {
        Self::at(&format!("/proc/{pid}/ns/net"))
    }

    /// The namespace `socket` was created in (`SIOCGSKNS`; needs `CAP_NET_ADMIN` over it).
    pub(crate) fn of_socket(socket: impl AsFd) -> io::Result<Self> {
        // SAFETY: SIOCGSKNS takes no argument and returns a new file descriptor, which
        // `GetNetNs::output_from_ptr` takes ownership of exactly once.
        let ns = unsafe { ioctl(socket, GetNetNs) }?;
        let st = rustix::fs::fstat(&ns)?;
        Ok(NsFile {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    fn at(path: &str) -> io::Result<Self> {
        let st = rustix::fs::stat(path)?;
        Ok(NsFile {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// The namespace's number, as `net:[N]` names it.
    pub(crate) fn inode(self) -> u64 {
        self.ino
    }
}

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

/// The network-namespace cookie of `socket`.
fn cookie(socket: impl AsFd) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<u64>()).unwrap_or(8);
    // SAFETY: `value` is a valid, writable u64 and `len` says so; the descriptor is borrowed
    // for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut value as *mut u64).cast::<c_void>(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

struct GetNetNs;

// SAFETY: the opcode is SIOCGSKNS, which reads no argument memory and returns a descriptor.
unsafe impl Ioctl for GetNetNs {
    type Output = OwnedFd;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        SIOCGSKNS
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::null_mut()
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _extract_output: *mut c_void,
    ) -> rustix::io::Result<Self::Output> {
        // SAFETY: a successful SIOCGSKNS returns a fresh descriptor that nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(out) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_of_ours_is_in_our_namespace() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(NetNs::current().unwrap().holds(&socket).unwrap());
    }

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
        let pid = crate::peer::peer_owner(&accepted).unwrap().pid;
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
