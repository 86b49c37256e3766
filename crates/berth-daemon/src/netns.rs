//! Which network namespace a socket lives in.
//!
//! A bind happens in the socket's own namespace, not the daemon's, so a socket created in
//! another namespace must be refused: the reservation would not cover it.

#![expect(
    unsafe_code,
    reason = "SIOCGSKNS has no safe wrapper in rustix; the one ioctl is checked below"
)]

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use rustix::ioctl::{ioctl, Ioctl, IoctlOutput, Opcode};

/// `SIOCGSKNS` from `<linux/sockios.h>`: returns a new descriptor for the socket's network
/// namespace.
const SIOCGSKNS: Opcode = 0x894C;

/// The identity of a namespace: device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetNs {
    dev: u64,
    ino: u64,
}

impl NetNs {
    /// The daemon's own network namespace.
    pub(crate) fn current() -> io::Result<Self> {
        let st = rustix::fs::stat("/proc/self/ns/net")?;
        Ok(NetNs {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// The namespace of `socket`.
    pub(crate) fn of_socket(socket: impl AsFd) -> io::Result<Self> {
        // SAFETY: SIOCGSKNS takes no argument and returns a new file descriptor, which
        // `GetNetNs::output_from_ptr` takes ownership of exactly once.
        let ns = unsafe { ioctl(socket, GetNetNs) }?;
        let st = rustix::fs::fstat(&ns)?;
        Ok(NetNs {
            dev: st.st_dev,
            ino: st.st_ino,
        })
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
        assert_eq!(
            NetNs::of_socket(&socket).unwrap(),
            NetNs::current().unwrap()
        );
    }
}
