//! Whom a portserver request's reservation belongs to, from the peer's kernel credentials
//! (`SO_PEERCRED`) — the pid in the request is only a claim, checked against them.
//!
//! - A peer the daemon cannot see (`SO_PEERCRED` pid 0: a pid namespace that is not the
//!   daemon's or a descendant of it) is refused: its reservation could not be watched.
//! - A peer in **another pid namespace** than the daemon's (its `/proc/PID/ns/pid` differs from
//!   the daemon's own) names a pid of its own namespace, which means nothing here, or — worse
//!   — some unrelated process. Its reservation belongs to the peer process itself, as the
//!   kernel names it to the daemon, whatever number it sent.
//! - In the daemon's pid namespace, a pid ≤ 1 is refused (portpicker's own server refuses
//!   init and invalid pids), and so is a thread's id (no process to watch); the named pid must
//!   exist, and be the peer itself, or run as the peer's uid, or the peer must be an
//!   administrator.
//!
//! Each process is described from `/proc` — or from its description of the last second, found
//! by its pidfd's inode (`session::peer::Described`) — while a pidfd taken first shows it
//! holding its pid: the peer's from `SO_PEERPIDFD`, the named one's from `pidfd_open`. So a pid
//! that passed to another process meanwhile does not lend that process's start time.

use std::os::fd::{AsFd, BorrowedFd};

use berth_core::Owner;
use berth_os::peer::PeerCredentials;

use berth_os::pidfd::PidFd;
use berth_os::proc::{pid_namespace, real_ids as ids};

use crate::session::peer::Described;

/// Why a portserver request names no owner the daemon will reserve for (logged; portpicker's
/// client is told nothing but a closed connection).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotOwner {
    /// Pid 0 or 1.
    #[error("pid {named} cannot own a port")]
    Unfit { named: u32 },
    /// `SO_PEERCRED` gave pid 0: the peer is in a pid namespace the daemon cannot see into.
    #[error("the peer's pid is not visible in the daemon's pid namespace")]
    PeerInvisible,
    /// The peer exited before it was described.
    #[error("the peer (pid {pid}) exited")]
    PeerExited { pid: u32 },
    /// `/proc/self/ns/pid` cannot be read.
    #[error("cannot read the daemon's pid namespace")]
    OwnNamespaceUnreadable,
    /// The peer's `/proc/PID/ns/pid` cannot be read.
    #[error("cannot read the pid namespace of the peer (pid {pid})")]
    PeerNamespaceUnreadable { pid: u32 },
    /// No process has the pid named (or its user cannot be read).
    #[error("no process {named} exists")]
    NoSuchProcess { named: u32 },
    /// The process named runs as another user, and the asker does not administer the daemon.
    #[error("pid {named} runs as uid {uid}, not as the asker's uid {asker_uid}")]
    OtherUser {
        named: u32,
        uid: u32,
        asker_uid: u32,
    },
    /// The process named exited before it was described.
    #[error("pid {named} exited")]
    Exited { named: u32 },
    /// The id named is a thread's, not a process's (`pidfd_open` refuses it): a reservation
    /// for it could not be watched, and would outlive it.
    #[error("{named} is the id of a thread, not of a process; name the process (os.getpid())")]
    Thread { named: u32 },
    /// The process named cannot be watched (the daemon is out of descriptors, say): its
    /// reservation would never be released.
    #[error("pid {named} cannot be watched: {why}")]
    Unwatchable { named: u32, why: String },
}

/// The owner of the reservation `named` asks for on behalf of `peer` (whose pidfd, from
/// `SO_PEERPIDFD`, is `peer_pidfd`), or why it is refused. `is_admin` decides whether the peer
/// administers the daemon; processes are described through `described`. With the owner, the
/// pidfd it was described through when it is not the peer (the peer's is `peer_pidfd`).
pub(crate) fn owner_for(
    named: u32,
    peer: PeerCredentials,
    peer_pidfd: Option<BorrowedFd<'_>>,
    described: &Described,
    is_admin: impl FnOnce(&Owner) -> bool,
) -> Result<(Owner, Option<PidFd>), NotOwner> {
    if peer.pid == 0 {
        return Err(NotOwner::PeerInvisible);
    }
    // Pid 1 as the daemon sees it is its own namespace's init, naming itself: refused, as
    // portpicker refuses it.
    if named == peer.pid && named <= 1 {
        return Err(NotOwner::Unfit { named });
    }
    let asker = live(described.owner(peer.pid, peer.uid, peer.gid, peer_pidfd))
        .ok_or(NotOwner::PeerExited { pid: peer.pid })?;
    // The asker names itself (what portpicker does): it is the owner in any pid namespace —
    // in another one, a pid it names is served as itself anyway — with nothing more to read.
    if named == peer.pid {
        return Ok((asker, None));
    }
    let here = own_pid_namespace().ok_or(NotOwner::OwnNamespaceUnreadable)?;
    let theirs = pid_namespace(&peer.pid.to_string())
        .ok_or(NotOwner::PeerNamespaceUnreadable { pid: peer.pid })?;
    if &theirs != here {
        tracing::debug!(
            peer = peer.pid,
            named,
            "portserver: a peer in another pid namespace is served as itself"
        );
        return Ok((asker, None));
    }
    // Init, or no pid at all — in the daemon's namespace (a peer that is init of its own is
    // served as itself, above).
    if named <= 1 {
        return Err(NotOwner::Unfit { named });
    }
    // Beyond any pid the kernel gives.
    if i32::try_from(named).is_err() {
        return Err(NotOwner::NoSuchProcess { named });
    }
    // Taken first, so that the process described below is the one watched.
    let pidfd = match berth_os::pidfd::PidFd::open(named) {
        Ok(Some(pidfd)) => pidfd,
        Ok(None) => return Err(NotOwner::NoSuchProcess { named }),
        // A thread's id — `/proc` knows it, but it names no process to watch — when its
        // thread group says so (`pidfd_open` refuses it with `ENOENT` on recent kernels,
        // `EINVAL` before, which older kernels also return for its flags).
        Err(_) if berth_os::proc::thread_group(named).is_some_and(|tgid| tgid != named) => {
            return Err(NotOwner::Thread { named })
        }
        Err(e) => {
            return Err(NotOwner::Unwatchable {
                named,
                why: e.to_string(),
            })
        }
    };
    let (uid, gid) = ids(named).ok_or(NotOwner::NoSuchProcess { named })?;
    if uid != peer.uid && !is_admin(&asker) {
        return Err(NotOwner::OtherUser {
            named,
            uid,
            asker_uid: peer.uid,
        });
    }
    let owner = live(described.owner(named, uid, gid, Some(pidfd.as_fd())))
        .ok_or(NotOwner::Exited { named })?;
    Ok((owner, Some(pidfd)))
}

/// The daemon's own pid namespace, read once: a process cannot change it.
fn own_pid_namespace() -> Option<&'static std::ffi::OsString> {
    static OWN: std::sync::OnceLock<Option<std::ffi::OsString>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| pid_namespace("self")).as_ref()
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
        let (got, pidfd) =
            owner_for(me().pid, me(), None, &Described::default(), |_| false).unwrap();
        assert_eq!(got.pid, me().pid);
        assert!(got.start_time > 0);
        assert!(pidfd.is_none(), "the peer's own pidfd is the caller's");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (got, pidfd) =
            owner_for(child.id(), me(), None, &Described::default(), |_| false).unwrap();
        assert_eq!(got.pid, child.id());
        // The named process's pidfd, which it was described through.
        let key = berth_os::pidfd::process_key(pidfd.expect("a pidfd of the child"));
        let again = berth_os::pidfd::PidFd::open(child.id()).unwrap().unwrap();
        assert_eq!(key, berth_os::pidfd::process_key(&again));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A thread's id is known to `/proc`, but names no process: a reservation for it could not
    /// be watched and would never be released.
    #[test]
    fn a_thread_id_is_refused() {
        let (tid_sender, tid) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tid_sender
                .send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            let _ = wait.recv();
        });
        let tid = u32::try_from(tid.recv().unwrap()).unwrap();
        assert_ne!(tid, me().pid);
        assert!(
            std::path::Path::new(&format!("/proc/{tid}/status")).exists(),
            "/proc knows the thread"
        );
        assert!(matches!(
            owner_for(tid, me(), None, &Described::default(), |_| true),
            Err(NotOwner::Thread { named }) if named == tid
        ));
        done.send(()).unwrap();
        thread.join().unwrap();
    }

    /// A zombie has exited: only its pid is left until its parent reaps it. It is refused, as a
    /// process already reaped is, rather than granted a port released at once.
    #[test]
    fn a_zombie_is_refused_as_exited() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped: `std` waits only when asked to.
        let limit = berth_testkit::deadline::DEADLINE;
        assert!(
            berth_testkit::deadline::exited_unreaped(&child, limit),
            "process {pid} did not exit"
        );
        let stat = berth_os::proc::stat(pid).unwrap();
        assert!(berth_os::proc::exited_from_stat(&stat), "a zombie: {stat}");
        assert!(matches!(
            owner_for(pid, me(), None, &Described::default(), |_| false),
            Err(NotOwner::Exited { named }) if named == pid
        ));
        child.wait().unwrap();
    }

    #[test]
    fn init_nonexistent_and_invisible_pids_are_refused() {
        assert!(matches!(
            owner_for(0, me(), None, &Described::default(), |_| true),
            Err(NotOwner::Unfit { named: 0 })
        ));
        assert!(matches!(
            owner_for(1, me(), None, &Described::default(), |_| true),
            Err(NotOwner::Unfit { named: 1 })
        ));
        // Beyond pid_max (at most 2^22): never a process.
        assert!(matches!(
            owner_for(99_999_999, me(), None, &Described::default(), |_| true),
            Err(NotOwner::NoSuchProcess { named: 99_999_999 })
        ));
        assert!(matches!(
            owner_for(u32::MAX, me(), None, &Described::default(), |_| true),
            Err(NotOwner::NoSuchProcess { .. })
        ));
        // The init of the daemon's own namespace, naming itself.
        let init = PeerCredentials {
            pid: 1,
            uid: 0,
            gid: 0,
        };
        assert!(matches!(
            owner_for(1, init, None, &Described::default(), |_| true),
            Err(NotOwner::Unfit { named: 1 })
        ));
        let hidden = PeerCredentials { pid: 0, ..me() };
        assert!(matches!(
            owner_for(me().pid, hidden, None, &Described::default(), |_| true),
            Err(NotOwner::PeerInvisible)
        ));
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
        assert!(matches!(
            owner_for(child.id(), stranger, None, &Described::default(), |_| false),
            Err(NotOwner::OtherUser {
                asker_uid: 4_000_000_000,
                ..
            })
        ));
        assert_eq!(
            owner_for(child.id(), stranger, None, &Described::default(), |_| true)
                .unwrap()
                .0
                .pid,
            child.id()
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn the_refusals_read_as_they_always_have() {
        let other = NotOwner::OtherUser {
            named: 42,
            uid: 1001,
            asker_uid: 1000,
        };
        assert_eq!(
            other.to_string(),
            "pid 42 runs as uid 1001, not as the asker's uid 1000"
        );
        assert_eq!(
            NotOwner::PeerNamespaceUnreadable { pid: 7 }.to_string(),
            "cannot read the pid namespace of the peer (pid 7)"
        );
    }
}
