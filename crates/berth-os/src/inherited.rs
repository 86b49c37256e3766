//! Descriptors a process inherits by number: the sockets of `sd_listen_fds(3)`, the ones
//! `berth run --listen` names to its exec step.
//!
//! A number becomes an owned descriptor once: [`take`] refuses a number it handed out already,
//! so two owners of one descriptor (and a double close) cannot come from here. The caller takes
//! only numbers its parent handed over, at start-up, before anything of its own could have
//! been given those numbers.

#![expect(
    unsafe_code,
    reason = "taking ownership of a descriptor inherited by number needs from_raw_fd"
)]

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, PoisonError};

/// Numbers [`take`] has handed out.
static TAKEN: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Whether descriptor `raw` is open in this process.
pub fn is_open(raw: RawFd) -> bool {
    // SAFETY: F_GETFD reads the descriptor's flags; it does nothing to it, open or not.
    raw >= 0 && unsafe { libc::fcntl(raw, libc::F_GETFD) } >= 0
}

/// Takes ownership of descriptor `raw`, inherited from the parent (named in an argument or an
/// environment variable). Fails with `EBADF` when it is not open, and with `AlreadyExists`
/// when it was taken before.
pub fn take(raw: RawFd) -> io::Result<OwnedFd> {
    let mut taken = TAKEN.lock().unwrap_or_else(PoisonError::into_inner);
    if taken.contains(&raw) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("descriptor {raw} was taken already"),
        ));
    }
    if !is_open(raw) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    taken.insert(raw);
    // SAFETY: `raw` is open, was handed to this process by its parent, and this function
    // hands each number out once (recorded in TAKEN under its lock): the OwnedFd is its one
    // owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn a_number_is_taken_once_and_only_when_open() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let raw = r.into_raw_fd();
        assert!(is_open(raw));
        let owned = take(raw).unwrap();
        let again = take(raw).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        drop(owned);
        assert!(!is_open(-1));
        // Far above anything this test process opens.
        assert_eq!(take(1 << 20).unwrap_err().raw_os_error(), Some(libc::EBADF));
    }
}
