//! The open-file limit (`RLIMIT_NOFILE`) and this process's use of descriptors.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, when it is lower.
pub fn raise_open_files() -> io::Result<()> {
    let current = getrlimit(Resource::Nofile);
    if current.current != current.maximum {
        let raised = Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        };
        setrlimit(Resource::Nofile, raised)?;
    }
    Ok(())
}

/// The soft `RLIMIT_NOFILE` in force (`u64::MAX` for unlimited).
pub fn open_files_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The hard `RLIMIT_NOFILE` (`u64::MAX` for unlimited).
pub fn open_files_hard_limit() -> u64 {
    getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX)
}

/// Descriptors this process has open (`/proc/self/fd`, without the directory's own). Costs
/// about a millisecond per 1,000 descriptors.
pub fn count_open_files() -> io::Result<u32> {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| u32::try_from(dir.count().saturating_sub(1)).unwrap_or(u32::MAX))
}

/// Whether some descriptor number at or above `lowest` is free: `F_DUPFD` asks for the lowest
/// free one there, and the duplicate (of `/dev/null`, whose close never blocks) is closed
/// again. Descriptors are handed out lowest first, so the top of the table is the last to
/// fill: with `lowest` the limit less some room, this tells whether that room is free. Two
/// system calls. `None` when `/dev/null` could not be opened (once, kept for every later call).
pub fn free_at_or_above(lowest: i32) -> Option<bool> {
    static PROBE: OnceLock<Option<OwnedFd>> = OnceLock::new();
    let probe = PROBE
        .get_or_init(|| {
            rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()
        })
        .as_ref()?;
    Some(rustix::io::fcntl_dupfd_cloexec(probe, lowest).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        raise_open_files().unwrap();
        assert_eq!(open_files_limit(), open_files_hard_limit());
    }

    #[test]
    fn the_top_of_the_table_is_free_and_beyond_it_nothing_is() {
        // At the hard limit already, as the other test may leave it.
        raise_open_files().unwrap();
        let Ok(limit) = i32::try_from(open_files_limit()) else {
            return;
        };
        assert_eq!(free_at_or_above(limit - 1), Some(true));
        assert_eq!(free_at_or_above(limit), Some(false));
        assert!(count_open_files().unwrap() >= 3);
    }
}
