//! Whom a portserver request's reservation belongs to, from the peer's kernel credentials
//! (`SO_PEERCRED`) — the pid in the request is only a claim, checked against them.
//!
//! - A pid ≤ 1 is refused (portpicker's own server refuses init and invalid pids).
//! - A peer the daemon cannot see (`SO_PEERCRED` pid 0: a pid namespace that is not the
//!   daemon's or a descendant of it) is refused: its reservation could not be watched.
//! - A peer in **another pid namespace** than the daemon's (its `/proc/PID/ns/pid` differs from
//!   the daemon's own) names a pid of its own namespace, which means nothing here, or — worse
//!   — some unrelated process. Its reservation belongs to the peer process itself, as the
//!   kernel names it to the daemon, whatever number it sent.
//! - In the daemon's pid namespace, the named pid must exist, and be the peer itself, or run
//!   as the peer's uid, or the peer must be an administrator.

use berth_core::Owner;
use berth_os::peer::PeerCredentials;

use berth_os::proc::{pid_namespace, real_ids as ids};

use crate::session::peer::process_owner;

/// The owner of the reservation `named` asks for on behalf of `peer`, or why it is refused.
/// `is_admin` decides whether the peer administers the daemon.
pub(crate) fn owner_for(
    named: u32,
    peer: PeerCredentials,
    is_admin: impl FnOnce(&Owner) -> bool,
) -> Result<Owner, String> {
    if named <= 1 {
        return Err(format!("pid {named} cannot own a port"));
    }
    if peer.pid == 0 {
        return Err("the peer's pid is not visible in the daemon's pid namespace".into());
    }
    let asker = live(process_owner(peer.pid, peer.uid, peer.gid))
        .ok_or_else(|| format!("the peer (pid {}) exited", peer.pid))?;
    let here = pid_namespace("self").ok_or("cannot read the daemon's pid namespace")?;
    let theirs = pid_namespace(&peer.pid.to_string()).ok_or_else(|| {
        format!(
            "cannot read the pid namespace of the peer (pid {})",
            peer.pid
        )
    })?;
    if theirs != here {
        if named != peer.pid {
            tracing::debug!(
                peer = peer.pid,
                named,
                "portserver: a peer in another pid namespace is served as itself"
            );
        }
        return Ok(asker);
    }
    if named == peer.pid {
        return Ok(asker);
    }
    let (uid, gid) = ids(named).ok_or_else(|| format!("no process {named} exists"))?;
    if uid != peer.uid && !is_admin(&asker) {
        return Err(format!(
            "pid {named} runs as uid {uid}, not as the asker's uid {}",
            peer.uid
        ));
    }
    live(process_owner(named, uid, gid)).ok_or_else(|| format!("pid {named} exited"))
}

/// `owner`, if it was still running when described (start time known).
fn live(owner: Owner) -> Option<Owner> {
    (owner.start_time != 0).then_some(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> PeerCredentials {
        PeerCredentials {
            pid: std::process::id(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    #[test]
    fn the_peer_itself_and_its_own_processes_are_served() {
        let got = owner_for(me().pid, me(), |_| false).unwrap();
        assert_eq!(got.pid, me().pid);
        assert!(got.start_time > 0);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let got = owner_for(child.id(), me(), |_| false).unwrap();
        assert_eq!(got.pid, child.id());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn init_nonexistent_and_invisible_pids_are_refused() {
        assert!(owner_for(0, me(), |_| true).is_err());
        assert!(owner_for(1, me(), |_| true).is_err());
        // Beyond pid_max (at most 2^22): never a process.
        assert!(owner_for(99_999_999, me(), |_| true).is_err());
        let hidden = PeerCredentials { pid: 0, ..me() };
        assert!(owner_for(me().pid, hidden, |_| true).is_err());
    }

    #[test]
    fn another_users_process_needs_an_administrator() {
        // A process of another uid, as the peer claims to be a user it is not: pretend the
        // peer runs as a uid nobody else has.
        let stranger = PeerCredentials {
            uid: 4_000_000_000,
            ..me()
        };
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(owner_for(child.id(), stranger, |_| false).is_err());
        assert_eq!(
            owner_for(child.id(), stranger, |_| true).unwrap().pid,
            child.id()
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
