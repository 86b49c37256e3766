//! The sockets of systemd's socket activation (`LISTEN_FDS`, `LISTEN_PID`; see
//! `sd_listen_fds(3)`), taken once.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, PoisonError};

/// Whether a [`take_listen_fds`] has handed descriptors out.
static HANDED_OUT: Mutex<bool> = Mutex::new(false);

/// The descriptors systemd passed this process (3, 4, …), owned and close-on-exec; empty when
/// it passed none (`LISTEN_PID` does not name this process, or is not set). They are handed
/// out once: a later call fails with `AlreadyExists`, so no descriptor gets two owners.
pub fn take_listen_fds() -> io::Result<Vec<OwnedFd>> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    if *handed_out {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the sockets of socket activation were taken already",
        ));
    }
    let fds: Vec<OwnedFd> = sd_notify::listen_fds()?
        .map(crate::inherited::take)
        .collect::<io::Result<_>>()?;
    *handed_out = !fds.is_empty();
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_systemd_did_not_start_has_none() {
        // LISTEN_PID, if set at all, names the test runner's parent, not this process.
        if std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string()) {
            return;
        }
        assert!(take_listen_fds().unwrap().is_empty());
        assert!(take_listen_fds().unwrap().is_empty());
    }
}
