//! Who has a port bound, as `berth why` and the refusals tell it: the sockets and their
//! processes come from `berth_os::diag` (`NETLINK_SOCK_DIAG`, `/proc/*/fd`); what a viewer may
//! see of them, and which are the daemon's own, is decided here.
//!
//! Used only where a person or a program asks (`berth why`, the message of a refused acquire,
//! the TIME_WAIT check of a re-associate), never on the hot path. An unprivileged daemon can
//! read the descriptor tables of its own user's processes only, and reports the others'
//! sockets without an owner.

use std::collections::HashMap;
use std::io;

use berth_core::{Owner, Protocol};
pub(crate) use berth_os::diag::{live_sockets_on, only_time_wait, sockets_in, sockets_on, Bound};
use berth_protocol::{OwnerInfo, SocketInfo, MAX_SOCKETS_REPORTED};

use crate::session::peer::process_owner;

/// The processes holding the sockets `inodes` (this process first: the daemon's own hold
/// sockets), stopping once each inode has a process or `MAX_SOCKETS_REPORTED` have one.
pub(crate) fn owners(inodes: &[u64]) -> HashMap<u64, u32> {
    berth_os::diag::owners(inodes, MAX_SOCKETS_REPORTED)
}

/// Describes process `pid` (uid and gid from its `/proc` directory, the command from `comm`);
/// `None` when it has gone.
pub(crate) fn process(pid: u32) -> Option<Owner> {
    let (uid, gid) = berth_os::proc::dir_owner(pid)?;
    Some(process_owner(pid, uid, gid))
}

/// What `viewer` may see of process `owner`: administrators and the same user see it.
pub(crate) fn shown(owner: &Owner, viewer_uid: u32, is_admin: bool) -> Option<OwnerInfo> {
    (is_admin || owner.uid == viewer_uid).then(|| OwnerInfo {
        pid: owner.pid,
        uid: owner.uid,
        command: owner.command.to_string(),
    })
}

/// The sockets bound to `port` as `berth why` reports them: at most `MAX_SOCKETS_REPORTED`,
/// with their processes where `viewer_uid` may see them. A socket is `held_by_berth` when the
/// daemon's own process has it open or `is_berths` says so (the hold code knows its inodes).
pub(crate) fn report(
    protocol: Protocol,
    port: u16,
    viewer_uid: u32,
    is_admin: bool,
    is_berths: &dyn Fn(u64) -> bool,
) -> io::Result<Vec<SocketInfo>> {
    let mut sockets = sockets_on(protocol, port, MAX_SOCKETS_REPORTED)?;
    sockets.truncate(MAX_SOCKETS_REPORTED);
    let inodes: Vec<u64> = sockets.iter().map(|s| s.inode).collect();
    let pids = owners(&inodes);
    let mut processes: HashMap<u32, Option<Owner>> = HashMap::new();
    Ok(sockets
        .into_iter()
        .map(|s| {
            let pid = pids.get(&s.inode).copied();
            let owner = pid.and_then(|pid| {
                processes
                    .entry(pid)
                    .or_insert_with(|| process(pid))
                    .as_ref()
                    .and_then(|o| shown(o, viewer_uid, is_admin))
            });
            SocketInfo {
                local: s.local.to_string(),
                state: s.state_name().to_owned(),
                owner,
                held_by_berth: s.inode != 0 && is_berths(s.inode),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests;
