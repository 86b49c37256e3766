//! The system daemon's marker: beside the system lock (which nobody else may open), a file
//! anyone may read that names root's daemon of the network namespace — its pid, start time
//! and the socket its clients reach it on — while it runs. A per-user daemon reads it before it serves and defers to a live
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

/// The daemon a live marker names.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Marked {
    pub(super) pid: u32,
    /// The socket it serves on; `None` from a marker of an earlier release, which had none.
    pub(super) socket: Option<String>,
}

/// Writes the marker for this process, serving on `socket`, at `path` (0644; written aside,
/// then renamed). A newline in the path is written as `?`, so that the marker stays one line.
pub(super) fn write(path: &Path, socket: &Path) -> io::Result<()> {
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    let aside = path.with_extension("owner.new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&aside)?;
    let socket = socket.display().to_string().replace('\n', "?");
    writeln!(file, "{pid} {start} {socket}")?;
    std::fs::rename(&aside, path)
}

/// The live daemon the marker at `path` names, if any.
pub(super) fn live_daemon_at(path: &Path) -> Option<Marked> {
    // Bounded: a marker is one line (a socket's path is at most 107 bytes), read in one page.
    let text = proc::read_file(path).ok()?;
    let line = text.lines().next()?;
    let mut fields = line.splitn(3, ' ');
    let pid: u32 = fields.next()?.parse().ok()?;
    let start: u64 = fields.next()?.trim().parse().ok()?;
    let socket = fields.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let now = start_time(pid)?;
    (now == start && start != 0).then_some(Marked { pid, socket })
}

/// Process `pid`'s start time, from `/proc`.
fn start_time(pid: u32) -> Option<u64> {
    proc::stat(pid)
        .ok()
        .and_then(|stat| proc::start_time_from_stat(&stat))
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
        write(&marker, Path::new("/tmp/a dir/berth.sock")).unwrap();
        assert_eq!(
            live_daemon_at(&marker),
            Some(Marked {
                pid: std::process::id(),
                socket: Some("/tmp/a dir/berth.sock".into())
            })
        );
        // An earlier release's marker names no socket.
        let start = start_time(std::process::id()).unwrap();
        std::fs::write(&marker, format!("{} {start}\n", std::process::id())).unwrap();
        assert_eq!(
            live_daemon_at(&marker),
            Some(Marked {
                pid: std::process::id(),
                socket: None
            })
        );
        // A pid whose start time is not the one written: another process, or none.
        std::fs::write(&marker, format!("{} 1\n", std::process::id())).unwrap();
        assert_eq!(live_daemon_at(&marker), None);
        std::fs::write(&marker, "garbage").unwrap();
        assert_eq!(live_daemon_at(&marker), None);
    }
}
