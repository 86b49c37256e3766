//! Who is on the other end of a connection, as the kernel says — never as the client claims.
//! The kernel is asked through `berth_os` (`SO_PEERCRED`, `/proc`); what makes an [`Owner`]
//! and what a missing answer means are decided here.

use std::io;
use std::os::fd::AsFd;

use berth_core::Owner;
use berth_os::proc;

/// Whether process `pid` may bind privileged ports in the daemon's network namespace itself:
/// it holds `CAP_NET_BIND_SERVICE` in its effective set, *and* its user namespace is the
/// daemon's (see [`proc::capable_here`]), so a capability counts only in the daemon's own user
/// namespace (the one that owns its network namespace, for a daemon started there). Read when
/// asked (a capability can be dropped at any time).
pub(crate) fn may_bind_privileged(pid: u32) -> bool {
    proc::capable_here(pid, proc::CAP_NET_BIND_SERVICE)
}

/// The process that connected on `socket`: `SO_PEERCRED` for pid, uid and gid, then `/proc`
/// for its start time and command name, checked against a pidfd of the peer taken first
/// (`SO_PEERPIDFD`) so a pid reused meanwhile cannot lend another process's start time. A peer whose pid is not visible here (another pid
/// namespace: the kernel says pid 0) is refused: its reservations could be neither watched nor
/// told apart.
pub(crate) fn peer_owner(socket: &impl AsFd) -> io::Result<Owner> {
    let cred = berth_os::peer::peer_credentials(socket)?;
    if cred.pid == 0 {
        return Err(io::Error::other(
            "the peer's pid is not visible in the daemon's pid namespace",
        ));
    }
    // The process that connected, as the kernel pins it: if it has exited by the time `/proc`
    // was read, its pid may already name another process, whose start time must not pass for
    // its own. It is then described as gone (start time 0), as a process that exited first is.
    let pidfd = berth_os::peer::peer_pidfd(socket).ok().flatten();
    let owner = read_owner(cred.pid, cred.uid, cred.gid)?;
    match pidfd.map(berth_os::pidfd::has_exited) {
        Some(Ok(true)) => Ok(Owner {
            start_time: 0,
            command: String::new(),
            ..owner
        }),
        _ => Ok(owner),
    }
}

/// Describes process `pid`. A process that has already gone keeps start time 0 and an empty
/// command; its session ends as soon as its connection is seen closed.
pub(crate) fn process_owner(pid: u32, uid: u32, gid: u32) -> Owner {
    read_owner(pid, uid, gid).unwrap_or_else(|_| Owner {
        pid,
        uid,
        gid,
        start_time: 0,
        command: String::new(),
    })
}

/// [`process_owner`], or an error when the daemon is out of descriptors and cannot look
/// (which must not pass for a process that is gone).
pub(crate) fn read_owner(pid: u32, uid: u32, gid: u32) -> io::Result<Owner> {
    let start_time = match proc::stat(pid) {
        Ok(stat) => proc::start_time_from_stat(&stat).unwrap_or(0),
        Err(e) if crate::server::limits::is_shortage(&e) => return Err(e),
        Err(_) => 0,
    };
    let command = proc::comm(pid)
        .map(|c| Owner::bound_command(&c))
        .unwrap_or_default();
    Ok(Owner {
        pid,
        uid,
        gid,
        start_time,
        command,
    })
}

/// Every group `who` belongs to: its primary group and the supplementary ones the kernel lists
/// for the process. One read of `/proc/PID/status`: callers ask only when a decision needs it.
pub(crate) fn groups_of(who: &Owner) -> Vec<u32> {
    let mut gids = proc::supplementary_groups(who.pid);
    gids.push(who.gid);
    gids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_this_process() {
        let me = process_owner(std::process::id(), 0, 0);
        assert!(me.start_time > 0);
        assert!(!me.command.is_empty());
    }
}
