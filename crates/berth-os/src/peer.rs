//! Who is on the other end of a Unix socket, as the kernel says (`SO_PEERCRED`).
//!
//! rustix's credentials type holds the pid as a non-zero number, but the kernel reports pid 0
//! for a peer outside the caller's pid namespace: the option is read into the C struct itself
//! and handed out as plain integers.

#![expect(
    unsafe_code,
    reason = "getsockopt(SO_PEERCRED) into a plain C struct: rustix's credentials type cannot hold pid 0"
)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pair_names_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = peer_credentials(&a).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.uid, rustix::process::geteuid().as_raw());
        assert_eq!(me.gid, rustix::process::getegid().as_raw());
    }
}
