//! Who is on the other end of a connection, as the kernel says — never as the client claims.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::Path;

use berth_core::Owner;

/// Reads a small `/proc` file with one `read()`. Some `/proc` files answer EOF to any read at
/// an offset > 0, so the usual "probe, then read the rest" silently truncates them.
pub(crate) fn read_proc(path: impl AsRef<Path>) -> io::Result<String> {
    let mut buf = vec![0u8; 4096];
    let n = std::fs::File::open(path)?.read(&mut buf)?;
    buf.truncate(n);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `CAP_NET_BIND_SERVICE`, bit 10 of the capability sets.
const CAP_NET_BIND_SERVICE: u32 = 10;

/// Whether process `pid` may bind privileged ports in the daemon's network namespace itself:
/// it holds `CAP_NET_BIND_SERVICE` in its effective set, *and* its user namespace is the
/// daemon's. `CapEff` in `/proc` is relative to the process's own user namespace — after
/// `unshare -Ur` it shows every capability, which the kernel honours only over namespaces that
/// user namespace owns, not over the daemon's — so a capability counts only in the daemon's
/// own user namespace (the one that owns its network namespace, for a daemon started there).
/// Read when asked (a capability can be dropped at any time).
pub(crate) fn may_bind_privileged(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let userns = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    // The daemon's own user namespace does not change: looked at once.
    static OURS: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    let ours = *OURS.get_or_init(|| userns("/proc/self/ns/user"));
    let theirs = userns(&format!("/proc/{pid}/ns/user"));
    theirs.is_some()
        && theirs == ours
        && read_proc(format!("/proc/{pid}/status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .is_some_and(|caps| caps & (1 << CAP_NET_BIND_SERVICE) != 0)
        })
}

/// The process that connected on `socket`: `SO_PEERCRED` for pid, uid and gid, then `/proc`
/// for its start time and command name. A peer whose pid is not visible here (another pid
/// namespace: the kernel says pid 0) is refused: its reservations could be neither watched nor
/// told apart.
pub(crate) fn peer_owner(socket: &impl AsFd) -> io::Result<Owner> {
    let cred = berth_protocol::authority::peer_credentials(socket)?;
    if cred.pid == 0 {
        return Err(io::Error::other(
            "the peer's pid is not visible in the daemon's pid namespace",
        ));
    }
    read_owner(cred.pid, cred.uid, cred.gid)
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
    let start_time = match read_proc(format!("/proc/{pid}/stat")) {
        Ok(stat) => start_time_from_stat(&stat).unwrap_or(0),
        Err(e) if crate::limits::is_shortage(&e) => return Err(e),
        Err(_) => 0,
    };
    Ok(read_rest(pid, uid, gid, start_time))
}

/// [`process_owner`] once its start time is known.
fn read_rest(pid: u32, uid: u32, gid: u32, start_time: u64) -> Owner {
    let command = read_proc(format!("/proc/{pid}/comm"))
        .map(|c| Owner::bound_command(c.trim_end()))
        .unwrap_or_default();
    Owner {
        pid,
        uid,
        gid,
        start_time,
        command,
    }
}

/// Every group `who` belongs to: its primary group and the supplementary ones the kernel lists
/// for the process. One read of `/proc/PID/status`: callers ask only when a decision needs it.
pub(crate) fn groups_of(who: &Owner) -> Vec<u32> {
    let mut gids = process_groups(who.pid);
    gids.push(who.gid);
    gids
}

/// The supplementary groups of process `pid` (the `Groups:` line of `/proc/PID/status`);
/// empty when the process is gone.
fn process_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = read_proc_large(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a `/proc` file that may exceed one page (`status` does), in one `read()`.
fn read_proc_large(path: String) -> io::Result<String> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path)?.read(&mut buf)?;
    buf.truncate(n);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Field 22 (`starttime`) of `/proc/PID/stat`. The command (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn start_time_from_stat(stat: &str) -> Option<u64> {
    // After ")" comes field 3 (state); field 22 is 19 further on.
    field_after_comm(stat, 19)?.parse().ok()
}

/// Field `n` (0 = state, 1 = ppid, …) after the command of `/proc/PID/stat`, whose command may
/// hold spaces and parentheses (so fields are counted from the last `)`).
pub(crate) fn field_after_comm(stat: &str, n: usize) -> Option<&str> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(n)
}

/// The real uid and gid of `pid` (`Uid:` and `Gid:` of `/proc/PID/status`).
pub(crate) fn process_ids(pid: u32) -> Option<(u32, u32)> {
    let status = read_proc(format!("/proc/{pid}/status")).ok()?;
    let first = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    Some((first("Uid:")?, first("Gid:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_with_awkward_command_names() {
        let stat =
            "4121 (a) b (c)) S 1 4121 4121 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time_from_stat(stat), Some(987654));
        assert_eq!(start_time_from_stat("garbage"), None);
    }

    #[test]
    fn describes_this_process() {
        let me = process_owner(std::process::id(), 0, 0);
        assert!(me.start_time > 0);
        assert!(!me.command.is_empty());
    }
}
