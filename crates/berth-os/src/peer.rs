//! Who is on the other end of a Unix socket, as the kernel says (`SO_PEERCRED`).
//!
//! rustix's credentials type holds the pid as a non-zero number, but the kernel reports pid 0
//! for a peer outside the caller's pid namespace: the option is read into the C struct itself
//! and handed out as plain integers.

#![expect(
    unsafe_code,
    reason = "the pidfd SO_PEERPIDFD makes is owned from its raw number"
)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use crate::sockopt;

/// `SO_PASSPIDFD` (include/uapi/asm-generic/socket.h, Linux 6.5).
const SO_PASSPIDFD: libc::c_int = 76;

/// `SO_PEERPIDFD` (include/uapi/asm-generic/socket.h, Linux 6.5).
const SO_PEERPIDFD: libc::c_int = 77;

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
    let empty = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let cred = sockopt::get(socket, libc::SOL_SOCKET, libc::SO_PEERCRED, empty)?;
    Ok(PeerCredentials {
        pid: u32::try_from(cred.pid).unwrap_or(0),
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// A pidfd of a connected Unix socket's peer, the process that connected (`SO_PEERPIDFD`):
/// it names that very process even after its pid is reused, so what `/proc/PID` said of it can
/// be checked afterwards (the process still runs: the pid was not reused meanwhile). `Ok(None)`
/// where the kernel has no such option (before 6.5), or the peer is gone.
pub fn peer_pidfd(socket: impl AsFd) -> io::Result<Option<OwnedFd>> {
    let fd = match sockopt::get::<libc::c_int>(socket, libc::SOL_SOCKET, SO_PEERPIDFD, -1) {
        Ok(fd) => fd,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOPROTOOPT | libc::EINVAL | libc::ESRCH)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    if fd < 0 {
        return Ok(None);
    }
    // SAFETY: the kernel made `fd` for this call, a new descriptor nobody else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether the kernel sends a pidfd of the sender with every message read from `socket`
/// ([`pass_pidfd`]); `Ok(false)` where the kernel has no such option.
pub fn passes_pidfd(socket: impl AsFd) -> io::Result<bool> {
    match sockopt::get::<libc::c_int>(socket, libc::SOL_SOCKET, SO_PASSPIDFD, 0) {
        Ok(on) => Ok(on != 0),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Asks the kernel to send a pidfd of the sender with every message read from `socket`
/// (`SO_PASSPIDFD`; see [`crate::recv::Message::sender_pidfd`]). `Ok(false)` where the kernel
/// has no such option (before 6.5): messages then come with credentials alone.
pub fn pass_pidfd(socket: impl AsFd) -> io::Result<bool> {
    sockopt::where_known(sockopt::set_int(socket, libc::SOL_SOCKET, SO_PASSPIDFD, 1))
}

/// The pid a pidfd names, as `/proc/self/fdinfo` says (`Pid:`); `None` when it cannot be read,
/// or the process has been reaped (the kernel then says -1).
pub fn pidfd_pid(pidfd: impl AsFd) -> Option<u32> {
    let info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_fd().as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse::<u32>().ok())
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

    #[test]
    fn a_peer_pidfd_names_the_process_that_connected() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        // Linux 6.5 and later; this machine's kernel has it.
        let Some(fd) = peer_pidfd(&a).unwrap() else {
            return;
        };
        assert_eq!(pidfd_pid(&fd), Some(std::process::id()));
    }
}
