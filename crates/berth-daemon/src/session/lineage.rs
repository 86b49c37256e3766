//! Whether one process is a child of another, as `/proc` says: the check before a reservation
//! is handed from a process to its child.

use berth_core::Owner;

use berth_os::proc;

use crate::session::peer::process_owner;

/// The process `pid`, if it is a live child of `parent` run by the same user; otherwise why
/// not, for the client's answer.
pub(crate) fn child_of(parent: &Owner, pid: u32) -> Result<Owner, String> {
    if pid <= 1 {
        return Err(format!(
            "pid {pid} cannot receive a reservation; name a child process of yours"
        ));
    }
    let stat = proc::stat(pid).map_err(|_| {
        format!("no process {pid} is visible to the daemon; name a running child process of yours")
    })?;
    let ppid = proc::parent_from_stat(&stat);
    if ppid != Some(parent.pid) {
        return Err(format!(
            "pid {pid} is not a child of pid {}; a reservation can only be handed to a child process",
            parent.pid
        ));
    }
    let (uid, gid) =
        proc::real_ids(pid).ok_or_else(|| format!("cannot read who runs pid {pid}"))?;
    if uid != parent.uid {
        return Err(format!(
            "pid {pid} runs as uid {uid}, not as uid {} like its parent; a reservation stays with one user",
            parent.uid
        ));
    }
    let child = process_owner(pid, uid, gid);
    if child.start_time == 0 {
        return Err(format!(
            "pid {pid} exited; nothing to hand the reservation to"
        ));
    }
    Ok(child)
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
        let got = child_of(&me, child.id()).unwrap();
        assert_eq!(got.pid, child.id());
        assert!(got.start_time > 0);
        assert!(child_of(&me, 1).is_err());
        // Our own parent is not our child.
        assert!(child_of(&me, std::os::unix::process::parent_id()).is_err());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
