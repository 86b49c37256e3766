//! Whether one process is a child of another, as `/proc` says: the check before a reservation
//! is handed from a process to its child.

use berth_core::{ErrorKind, Owner};

use berth_os::proc;

use crate::session::peer::{confirmed, process_owner};

/// Why a process cannot receive a reservation from another (the text is the client's answer).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotAChild {
    /// Pid 0 or 1: nobody's child to hand a reservation to.
    #[error("pid {pid} cannot receive a reservation; name a child process of yours")]
    Unfit { pid: u32 },
    /// `/proc/PID/stat` cannot be read: no such process, or not in the daemon's view.
    #[error("no process {pid} is visible to the daemon; name a running child process of yours")]
    Invisible {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    /// Its parent is another process.
    #[error(
        "pid {pid} is not a child of pid {parent}; a reservation can only be handed to a child process"
    )]
    NotChild { pid: u32, parent: u32 },
    /// Its user cannot be read from `/proc/PID/status`.
    #[error("cannot read who runs pid {pid}")]
    Unreadable { pid: u32 },
    /// It runs as another user than its parent.
    #[error(
        "pid {pid} runs as uid {uid}, not as uid {parent_uid} like its parent; a reservation stays with one user"
    )]
    OtherUser { pid: u32, uid: u32, parent_uid: u32 },
    /// It exited while being looked at.
    #[error("pid {pid} exited; nothing to hand the reservation to")]
    Exited { pid: u32 },
}

impl NotAChild {
    /// The kind the client is told: the hand-over is not permitted, whatever the reason.
    pub(crate) fn kind(&self) -> ErrorKind {
        ErrorKind::PermissionDenied
    }
}

/// The process `pid`, if it is a live child of `parent` run by the same user, with the pidfd
/// it was described through (none on kernels without pidfds); otherwise why not, for the
/// client's answer.
pub(crate) fn child_of(
    parent: &Owner,
    pid: u32,
) -> Result<(Owner, Option<berth_os::pidfd::PidFd>), NotAChild> {
    if pid <= 1 {
        return Err(NotAChild::Unfit { pid });
    }
    // Taken first: what `/proc` says below is kept only while this process still runs (its pid
    // cannot have passed to another meanwhile).
    let pidfd = berth_os::pidfd::PidFd::open(pid).ok().flatten();
    let stat = proc::stat(pid).map_err(|source| NotAChild::Invisible { pid, source })?;
    let ppid = proc::parent_from_stat(&stat);
    if ppid != Some(parent.pid) {
        return Err(NotAChild::NotChild {
            pid,
            parent: parent.pid,
        });
    }
    let (uid, gid) = proc::real_ids(pid).ok_or(NotAChild::Unreadable { pid })?;
    if uid != parent.uid {
        return Err(NotAChild::OtherUser {
            pid,
            uid,
            parent_uid: parent.uid,
        });
    }
    let child = confirmed(process_owner(pid, uid, gid), pidfd.as_ref());
    if child.start_time == 0 {
        return Err(NotAChild::Exited { pid });
    }
    Ok((child, pidfd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_recognised_and_a_stranger_is_not() {
        let me = process_owner(
            std::process::id(),
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (got, pidfd) = child_of(&me, child.id()).unwrap();
        // The child's pidfd, which it was described through: the owner watch takes it.
        let again = berth_os::pidfd::PidFd::open(child.id()).unwrap().unwrap();
        assert_eq!(
            pidfd.and_then(berth_os::pidfd::process_key),
            berth_os::pidfd::process_key(&again)
        );
        assert_eq!(got.pid, child.id());
        assert!(got.start_time > 0);
        assert!(matches!(child_of(&me, 1), Err(NotAChild::Unfit { pid: 1 })));
        // Our own parent is not our child.
        let parent = std::os::unix::process::parent_id();
        assert!(matches!(
            child_of(&me, parent),
            Err(NotAChild::NotChild { pid, .. }) if pid == parent
        ));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn the_refusals_read_as_they_always_have() {
        let other = NotAChild::OtherUser {
            pid: 42,
            uid: 1001,
            parent_uid: 1000,
        };
        assert_eq!(
            other.to_string(),
            "pid 42 runs as uid 1001, not as uid 1000 like its parent; a reservation stays with one user"
        );
        assert_eq!(
            NotAChild::NotChild { pid: 42, parent: 7 }.to_string(),
            "pid 42 is not a child of pid 7; a reservation can only be handed to a child process"
        );
        assert_eq!(other.kind(), ErrorKind::PermissionDenied);
    }
}
