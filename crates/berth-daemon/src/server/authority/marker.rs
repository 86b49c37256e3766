//! The system daemon's marker: beside the system lock (which nobody else may open), a file
//! anyone may read that names root's daemon of the network namespace — its pid and start
//! time — while it runs. A per-user daemon reads it before it serves and defers to a live
//! system daemon, also in the moment after a squatter let the beacon go and before root's
//! daemon took it back (the beacon alone would let the per-user daemon in). Only root writes
//! in the marker's directory; a marker a killed daemon left names a process that is gone (or
//! a pid now another process's, with another start time) and is ignored.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use berth_os::proc;

/// The marker beside the system lock `lock` (`…/authority-<inode>.lock` → `….owner`).
pub(super) fn path_for(lock: &Path) -> PathBuf {
    lock.with_extension("owner")
}

/// Writes the marker for this process at `path` (0644; written aside, then renamed).
pub(super) fn write(path: &Path) -> io::Result<()> {
    let pid = std::process::id();
    let start = proc::stat(pid)
        .ok()
        .and_then(|stat| proc::start_time_from_stat(&stat))
        .unwrap_or(0);
    let aside = path.with_extension("owner.new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&aside)?;
    writeln!(file, "{pid} {start}")?;
    std::fs::rename(&aside, path)
}

/// The pid of the live daemon the marker at `path` names, if any.
pub(super) fn live_daemon_at(path: &Path) -> Option<u32> {
    // Bounded: a marker is one short line.
    let text = proc::read_file(path).ok()?;
    let mut fields = text.get(..64.min(text.len()))?.split_whitespace();
    let pid: u32 = fields.next()?.parse().ok()?;
    let start: u64 = fields.next()?.parse().ok()?;
    let now = proc::stat(pid)
        .ok()
        .and_then(|stat| proc::start_time_from_stat(&stat))?;
    (now == start && start != 0).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_names_a_live_daemon_and_a_stale_one_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("authority-1.lock");
        let marker = path_for(&lock);
        assert_eq!(live_daemon_at(&marker), None, "no marker");
        write(&marker).unwrap();
        assert_eq!(live_daemon_at(&marker), Some(std::process::id()));
        // A pid whose start time is not the one written: another process, or none.
        std::fs::write(&marker, format!("{} 1\n", std::process::id())).unwrap();
        assert_eq!(live_daemon_at(&marker), None);
        std::fs::write(&marker, "garbage").unwrap();
        assert_eq!(live_daemon_at(&marker), None);
    }
}
