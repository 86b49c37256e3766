//! Which network namespace a socket or a process lives in.
//!
//! `SO_NETNS_COOKIE` (Linux 5.14+), which any process may read, names a socket's namespace by
//! a cookie; compared with that of a socket of one's own, it tells whether the two share a
//! namespace. `ioctl(SIOCGSKNS)` names the namespace too, as an nsfs file, but needs
//! `CAP_NET_ADMIN` over it: it is the fallback for older kernels. `/proc/PID/ns/net` names the
//! namespace a process is in now.

#![expect(unsafe_code, reason = "ioctl(SIOCGSKNS) has no safe wrapper in rustix")]

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use rustix::ioctl::{ioctl, Ioctl, IoctlOutput, Opcode};

/// `SO_NETNS_COOKIE` from `<asm-generic/socket.h>`.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// `SIOCGSKNS` from `<linux/sockios.h>`: returns a new descriptor for the socket's network
/// namespace.
const SIOCGSKNS: Opcode = 0x894C;

/// The identity of a network namespace, as the sockets made in it tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetNs {
    /// Its cookie (`SO_NETNS_COOKIE`).
    Cookie(u64),
    /// Device and inode of its nsfs file (older kernels).
    Inode {
        /// The nsfs device.
        dev: u64,
        /// The namespace's inode number.
        ino: u64,
    },
}

impl NetNs {
    /// The caller's own network namespace.
    pub fn current() -> io::Result<Self> {
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

    /// A number for this namespace, for names of files that belong to it: its cookie, which
    /// no other namespace has during this boot (the first ones made at boot, the host's among
    /// them, get the same cookie each boot); on older kernels its inode number, which a
    /// namespace made after this one is gone may get again.
    pub fn id(self) -> u64 {
        match self {
            NetNs::Cookie(cookie) => cookie,
            NetNs::Inode { ino, .. } => ino,
        }
    }

    /// Whether `socket` lives in this namespace.
    pub fn holds(self, socket: impl AsFd) -> io::Result<bool> {
        match self {
            NetNs::Cookie(ours) => cookie(socket).map(|theirs| theirs == ours),
            NetNs::Inode { dev, ino } => Ok(NsFile::of_socket(socket)? == NsFile { dev, ino }),
        }
    }
}

/// A network namespace as `/proc` names it: the device and inode of its nsfs file. The inode
/// is what `ls -l /proc/PID/ns/net` shows: `net:[4026531840]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsFile {
    dev: u64,
    ino: u64,
}

impl NsFile {
    /// The namespace of this process.
    pub fn of_self() -> io::Result<Self> {
        Self::at("/proc/self/ns/net")
    }

    /// The namespace process `pid` is in now. Needs the right to inspect it (ptrace read):
    /// an unprivileged caller gets `EACCES` for other users' processes.
    pub fn of_process(pid: u32) -> io::Result<Self> {
        Self::at(&format!("/proc/{pid}/ns/net"))
    }

    /// The namespace `socket` was created in (`SIOCGSKNS`; needs `CAP_NET_ADMIN` over it).
    pub fn of_socket(socket: impl AsFd) -> io::Result<Self> {
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
    pub fn inode(self) -> u64 {
        self.ino
    }
}

/// Moves the calling thread, and only it, into a new network namespace (`unshare(2)` with
/// `CLONE_NEWNET`; needs `CAP_SYS_ADMIN`): sockets it makes from then on live there, while the
/// process's other threads, and sockets made before, stay where they were. Only berth's tests
/// need it (feature `testing`), to make a socket in another namespace without a child process.
#[cfg(feature = "testing")]
pub fn enter_new_on_this_thread() -> io::Result<()> {
    // SAFETY: rustix marks unshare unsafe for the flags that unshare what other code relies on
    // (CLONE_FILES: the descriptor table behind every OwnedFd; CLONE_FS, …). CLONE_NEWNET alone
    // changes only the namespace this thread's future sockets are made in; no Rust invariant
    // depends on it, and descriptors stay valid in every thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
    Ok(())
}

/// The network-namespace cookie of `socket`.
fn cookie(socket: impl AsFd) -> io::Result<u64> {
    crate::sockopt::get::<u64>(socket, libc::SOL_SOCKET, SO_NETNS_COOKIE, 0)
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

    #[test]
    fn this_process_is_where_its_proc_entry_says() {
        let me = NsFile::of_self().unwrap();
        assert_eq!(NsFile::of_process(std::process::id()).unwrap(), me);
        assert_ne!(me.inode(), 0);
    }

    #[test]
    fn a_thread_in_a_new_namespace_makes_its_sockets_there() {
        let ours = NetNs::current().unwrap();
        let socket = std::thread::spawn(|| {
            enter_new_on_this_thread().map(|()| {
                rustix::net::socket(
                    rustix::net::AddressFamily::INET,
                    rustix::net::SocketType::DGRAM,
                    None,
                )
            })
        })
        .join()
        .unwrap();
        match socket {
            Ok(socket) => assert!(!ours.holds(socket.unwrap()).unwrap()),
            // Not root: nothing moved.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
        // This thread is where it was.
        assert_eq!(NetNs::current().unwrap(), ours);
    }
}
