//! Who is on the other end of a connection, as the kernel says — never as the client claims.
//! The kernel is asked through `berth_os` (`SO_PEERCRED`, `/proc`); what makes an [`Owner`]
//! and what a missing answer means are decided here.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
/// (`SO_PEERPIDFD`) so a pid reused meanwhile cannot lend another process's start time. A peer
/// whose pid is not visible here (another pid namespace: the kernel says pid 0) is refused: its
/// reservations could be neither watched nor told apart.
pub(crate) fn peer_owner(socket: &impl AsFd) -> io::Result<Owner> {
    let cred = berth_os::peer::peer_credentials(socket)?;
    if cred.pid == 0 {
        return Err(io::Error::other(
            "the peer's pid is not visible in the daemon's pid namespace",
        ));
    }
    // The process that connected, as the kernel pins it (see `confirmed`).
    let pidfd = berth_os::peer::peer_pidfd(socket).ok().flatten();
    Ok(confirmed(read_owner(cred.pid, cred.uid, cred.gid)?, pidfd))
}

/// `owner` as `/proc` described it, kept only if `pidfd` — taken before `/proc` was read, and
/// naming the process meant — shows that process still holding its pid (running, or exited
/// and not yet reaped): once reaped, its pid may already name another process, whose start
/// time and command must not pass for its own. It is then described as gone (start time 0),
/// as a process that exited first is. Without a pidfd (a kernel before 6.5, or a process
/// already reaped) the description stands.
pub(crate) fn confirmed(owner: Owner, pidfd: Option<impl AsFd>) -> Owner {
    match pidfd.map(berth_os::pidfd::holds_its_pid) {
        Some(Ok(false)) => gone(owner),
        _ => owner,
    }
}

/// `owner` described as a process that has exited: start time 0, no command.
pub(crate) fn gone(owner: Owner) -> Owner {
    Owner {
        start_time: 0,
        command: "".into(),
        ..owner
    }
}

/// The start time of process `pid` as `/proc` says, while `pidfd` — taken earlier, naming the
/// process meant — shows it holding its pid (see [`confirmed`]); 0 once that process has been
/// reaped (or `/proc` cannot say).
pub(crate) fn pinned_start_time(pid: u32, pidfd: impl AsFd) -> u64 {
    let start_time = proc::stat(pid)
        .ok()
        .and_then(|stat| proc::start_time_from_stat(&stat))
        .unwrap_or(0);
    match berth_os::pidfd::holds_its_pid(pidfd) {
        Ok(false) => 0,
        _ => start_time,
    }
}

/// How long a process's description is taken from [`Described`] rather than `/proc`: its
/// start time never changes, but its command name may (`exec`, `prctl`), and a reservation
/// should name it as it was at most this long before.
const DESCRIBED_FOR: Duration = Duration::from_secs(1);

/// The most processes [`Described`] remembers; full, it forgets those described more than
/// [`DESCRIBED_FOR`] ago, or else the one described longest ago.
const MAX_DESCRIBED: usize = 256;

/// Processes described lately, by [`berth_os::pidfd::process_key`]: a test process that asks
/// the portserver endpoint for port after port is described from `/proc` once a second, not
/// on every request (three system calls, and the kernel's longest part of an answer). The key
/// names one process for as long as the system runs, so no pid reused meanwhile can pass for
/// it, and a remembered description is still [`confirmed`] by the pidfd, as one just read is:
/// a process reaped since (its pid free for another) is described as gone. Without keys
/// (kernels before 6.9) every request reads `/proc`, as before.
#[derive(Debug, Default)]
pub(crate) struct Described {
    by_key: Mutex<HashMap<u64, Description>>,
}

#[derive(Debug, Clone)]
struct Description {
    pid: u32,
    start_time: u64,
    command: Arc<str>,
    at: Instant,
}

impl Described {
    /// Process `pid` (running as `uid`/`gid`, which are never remembered), pinned by `pidfd`
    /// taken before: remembered if described less than [`DESCRIBED_FOR`] ago, else described
    /// from `/proc` as [`process_owner`] does; either way [`confirmed`] by `pidfd` now, so that
    /// what was read before this call (the uid, say) is known to be this process's too. A
    /// process that has gone — a zombie too (the portserver endpoint, the only user, grants it
    /// nothing) — is described with start time 0 and never remembered.
    pub(crate) fn owner(
        &self,
        pid: u32,
        uid: u32,
        gid: u32,
        pidfd: Option<BorrowedFd<'_>>,
    ) -> Owner {
        self.owner_at(pid, uid, gid, pidfd, Instant::now())
    }

    /// [`Described::owner`] at `now`.
    fn owner_at(
        &self,
        pid: u32,
        uid: u32,
        gid: u32,
        pidfd: Option<BorrowedFd<'_>>,
        now: Instant,
    ) -> Owner {
        let key = pidfd.and_then(berth_os::pidfd::process_key);
        let remembered = key.and_then(|key| {
            let by_key = self.by_key.lock().unwrap_or_else(PoisonError::into_inner);
            let d = by_key.get(&key)?;
            (d.pid == pid && now.saturating_duration_since(d.at) < DESCRIBED_FOR).then(|| Owner {
                pid,
                uid,
                gid,
                start_time: d.start_time,
                command: d.command.clone(),
            })
        });
        if let Some(owner) = remembered {
            return confirmed(owner, pidfd);
        }
        let owner = confirmed(described(pid, uid, gid, Zombie::Gone), pidfd);
        if let Some(key) = key.filter(|_| owner.start_time != 0) {
            let mut by_key = self.by_key.lock().unwrap_or_else(PoisonError::into_inner);
            if by_key.len() >= MAX_DESCRIBED {
                by_key.retain(|_, d| now.saturating_duration_since(d.at) < DESCRIBED_FOR);
            }
            if by_key.len() >= MAX_DESCRIBED {
                let oldest = by_key.iter().min_by_key(|(_, d)| d.at).map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    by_key.remove(&oldest);
                }
            }
            by_key.insert(
                key,
                Description {
                    pid,
                    start_time: owner.start_time,
                    command: owner.command.clone(),
                    at: now,
                },
            );
        }
        owner
    }
}

/// Describes process `pid`. A process that has already gone keeps start time 0 and an empty
/// command; its session ends as soon as its connection is seen closed.
pub(crate) fn process_owner(pid: u32, uid: u32, gid: u32) -> Owner {
    described(pid, uid, gid, Zombie::Running)
}

/// How a process that has exited but is not reaped yet (a zombie) is described.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zombie {
    /// As the process it was: a reservation handed to it (`berth run`'s command that ended at
    /// once) is released by the owner watch, as for any owner that exits.
    Running,
    /// As gone: the portserver endpoint grants nothing to it (a port for it would be released
    /// at once), as for a process already reaped.
    Gone,
}

/// [`process_owner`] with `zombie` deciding how a zombie is described.
fn described(pid: u32, uid: u32, gid: u32, zombie: Zombie) -> Owner {
    read(pid, uid, gid, zombie).unwrap_or_else(|_| Owner {
        pid,
        uid,
        gid,
        start_time: 0,
        command: "".into(),
    })
}

/// [`process_owner`], or an error when the daemon is out of descriptors and cannot look
/// (which must not pass for a process that is gone).
pub(crate) fn read_owner(pid: u32, uid: u32, gid: u32) -> io::Result<Owner> {
    read(pid, uid, gid, Zombie::Running)
}

fn read(pid: u32, uid: u32, gid: u32, zombie: Zombie) -> io::Result<Owner> {
    // One file for both: `stat` holds the command name too.
    let (start_time, command) = match proc::stat(pid) {
        Ok(stat) if zombie == Zombie::Gone && proc::exited_from_stat(&stat) => (0, String::new()),
        Ok(stat) => (
            proc::start_time_from_stat(&stat).unwrap_or(0),
            proc::comm_from_stat(&stat)
                .map(Owner::printable_command)
                .unwrap_or_default(),
        ),
        Err(e) if crate::server::limits::is_shortage(&e) => return Err(e),
        Err(_) => (0, String::new()),
    };
    Ok(Owner {
        pid,
        uid,
        gid,
        start_time,
        command: command.into(),
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

    /// A process described through [`Described`] within [`DESCRIBED_FOR`] keeps its first
    /// description, even across an `exec`; after it, or for another process, or without a
    /// pidfd, `/proc` is read again.
    #[test]
    fn a_process_is_described_from_memory_for_a_second() {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let pidfd = berth_os::pidfd::PidFd::open(pid).unwrap().unwrap();
        if berth_os::pidfd::process_key(&pidfd).is_none() {
            eprintln!("skipped: pidfds here have no process key (a kernel before 6.9)");
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        let described = Described::default();
        let t0 = Instant::now();
        let first = described.owner_at(pid, 1, 2, Some(pidfd.as_fd()), t0);
        assert_eq!(&*first.command, "sh");
        assert!(first.start_time > 0);
        // The child becomes `sleep`.
        writeln!(child.stdin.as_mut().unwrap()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc::stat(pid)
            .ok()
            .as_deref()
            .and_then(proc::comm_from_stat)
            != Some("sleep")
        {
            assert!(Instant::now() < deadline, "the child never became sleep");
            std::thread::yield_now();
        }
        let soon = described.owner_at(pid, 3, 4, Some(pidfd.as_fd()), t0 + DESCRIBED_FOR / 2);
        assert_eq!(&*soon.command, "sh", "remembered");
        assert_eq!(
            (soon.uid, soon.gid, soon.start_time),
            (3, 4, first.start_time)
        );
        // Without a pidfd, nothing is remembered.
        assert_eq!(&*described.owner_at(pid, 1, 2, None, t0).command, "sleep");
        let later = described.owner_at(pid, 1, 2, Some(pidfd.as_fd()), t0 + DESCRIBED_FOR * 2);
        assert_eq!(&*later.command, "sleep", "described again");
        assert_eq!(later.start_time, first.start_time);
        // Another process is never taken for it.
        let me = berth_os::pidfd::PidFd::open(std::process::id())
            .unwrap()
            .unwrap();
        let mine = described.owner_at(std::process::id(), 1, 2, Some(me.as_fd()), t0);
        assert_ne!(mine.start_time, 0);
        assert_ne!(&*mine.command, "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped while remembered: the pidfd says it no longer holds its pid (which another
        // process may have by now), so it is described as gone all the same.
        let within = t0 + DESCRIBED_FOR * 2 + DESCRIBED_FOR / 2;
        let reaped = described.owner_at(pid, 1, 2, Some(pidfd.as_fd()), within);
        assert_eq!(reaped.start_time, 0, "remembered, but reaped");
        // Reaped: described as gone, and not remembered as running.
        let gone = described.owner_at(pid, 1, 2, Some(pidfd.as_fd()), t0 + DESCRIBED_FOR * 4);
        assert_eq!(gone.start_time, 0);
        let by_key = described.by_key.lock().unwrap();
        let key = berth_os::pidfd::process_key(&pidfd).unwrap();
        assert!(by_key
            .get(&key)
            .is_none_or(|d| d.at < t0 + DESCRIBED_FOR * 4));
    }

    /// Full, it forgets the descriptions older than a second, or else the oldest, rather than
    /// grow.
    #[test]
    fn described_processes_are_bounded() {
        let me = berth_os::pidfd::PidFd::open(std::process::id())
            .unwrap()
            .unwrap();
        let Some(my_key) = berth_os::pidfd::process_key(&me) else {
            eprintln!("skipped: pidfds here have no process key (a kernel before 6.9)");
            return;
        };
        let described = Described::default();
        let t0 = Instant::now();
        {
            let mut by_key = described.by_key.lock().unwrap();
            for key in 0..MAX_DESCRIBED as u64 {
                by_key.insert(
                    key,
                    Description {
                        pid: 1,
                        start_time: 1,
                        command: "x".into(),
                        at: t0 + Duration::from_micros(key),
                    },
                );
            }
        }
        // All fresh: the one described longest ago goes.
        let ms = Duration::from_millis(1);
        described.owner_at(std::process::id(), 1, 2, Some(me.as_fd()), t0 + ms);
        {
            let by_key = described.by_key.lock().unwrap();
            assert_eq!(by_key.len(), MAX_DESCRIBED);
            assert!(!by_key.contains_key(&0));
            assert!(by_key.contains_key(&1) && by_key.contains_key(&my_key));
        }
        // A second on, all of them are stale: they go.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let theirs = berth_os::pidfd::PidFd::open(other.id()).unwrap().unwrap();
        described.owner_at(
            other.id(),
            1,
            2,
            Some(theirs.as_fd()),
            t0 + DESCRIBED_FOR + ms,
        );
        assert_eq!(described.by_key.lock().unwrap().len(), 1);
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn a_pidfd_of_a_reaped_process_unpins_its_pid() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let pidfd = berth_os::pidfd::PidFd::open(pid).unwrap().unwrap();
        let running = pinned_start_time(pid, &pidfd);
        assert!(running > 0);
        let described = process_owner(pid, 0, 0);
        assert_eq!(confirmed(described.clone(), Some(&pidfd)), described);
        // Exited but not reaped: the pid is still its own, and so is what /proc says.
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        // The pidfd becomes readable at the exit: wait for that, with a deadline.
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        let limit = rustix::event::Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        assert_eq!(rustix::event::poll(&mut fds, Some(&limit)).unwrap(), 1);
        assert_eq!(pinned_start_time(pid, &pidfd), running);
        assert_eq!(confirmed(described.clone(), Some(&pidfd)), described);
        child.wait().unwrap();
        // Reaped: the pid may name another process from now on; the pidfd still names this one.
        assert_eq!(pinned_start_time(pid, &pidfd), 0);
        let after = confirmed(described.clone(), Some(&pidfd));
        assert_eq!(after.start_time, 0);
        assert!(after.command.is_empty());
        assert_eq!(after.pid, pid);
    }

    #[test]
    fn describes_this_process() {
        let me = process_owner(std::process::id(), 0, 0);
        assert!(me.start_time > 0);
        assert!(!me.command.is_empty());
    }
}
