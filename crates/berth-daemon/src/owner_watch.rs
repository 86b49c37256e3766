//! Noticing that a session's owner died even while its connection stays open.
//!
//! A connection closes when its process exits — unless a forked child inherited it. The
//! reservations belong to the process, not to the descriptor (SPEC §2), so each session
//! also watches its owner through a pidfd, which becomes readable when the process exits.

use std::io;
use std::os::fd::OwnedFd;

use berth_core::Owner;
use tokio::io::unix::AsyncFd;

use crate::peer::process_owner;

/// Resolves when the owner exits; never resolves when it cannot be watched (a peer in another
/// pid namespace shows pid 0), leaving the connection's end as the only signal.
pub(crate) async fn owner_exit(owner: &Owner) {
    match watch(owner) {
        Ok(Some(fd)) => {
            // Readable means the process has exited (a zombie counts).
            let _ = fd.readable().await;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(pid = owner.pid, "cannot watch the owner: {e}");
            std::future::pending::<()>().await;
        }
    }
}

/// A pidfd for the owner, or `None` when it has already gone (its pid is free or reused).
fn watch(owner: &Owner) -> io::Result<Option<AsyncFd<OwnedFd>>> {
    let Some(pid) = i32::try_from(owner.pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Err(io::Error::other("the peer's pid is not visible here"));
    };
    let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // The pid might have been reused between accept and now: same start time or it is gone.
    let now = process_owner(owner.pid, owner.uid, owner.gid);
    if now.start_time != owner.start_time {
        return Ok(None);
    }
    register(fd).map(Some)
}

/// Registers the pidfd with tokio's reactor.
#[expect(
    unsafe_code,
    reason = "tokio's AsyncFd registration is unsafe since tokio 1.5x"
)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of `fd`, a valid pidfd, and nothing else holds,
    // replaces or closes it while it is registered.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}
