//! Which network namespace a socket lives in.
//!
//! A bind happens in the socket's own namespace, not the daemon's, so a socket created in
//! another namespace must be refused: the reservation would not cover it.
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
            NetNs::Inode { dev, ino } => {
                // SAFETY: SIOCGSKNS takes no argument and returns a new file descriptor, which
                // `GetNetNs::output_from_ptr` takes ownership of exactly once.
                let ns = unsafe { ioctl(socket, GetNetNs) }?;
                let st = rustix::fs::fstat(&ns)?;
                Ok(st.st_dev == dev && st.st_ino == ino)
            }
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

    #[test]
    fn a_socket_of_another_namespace_is_not() {
        let ours = NetNs::current().unwrap();
        let foreign = std::thread::spawn(|| {
            // SAFETY: NEWNET changes only this thread's network namespace.
            #[allow(unsafe_code)]
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .expect("unshare(CLONE_NEWNET) needs root");
            std::net::UdpSocket::bind("0.0.0.0:0").unwrap()
        })
        .join()
        .unwrap();
        assert!(!ours.holds(&foreign).unwrap());
    }
}
