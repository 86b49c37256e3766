//! The descriptor limit: every connection, owner pidfd and (soon) hold socket costs one, so the
//! daemon raises its soft limit to the hard one at start-up and reports it in `berth status`.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit; returns the soft limit in force
/// afterwards (`u64::MAX` for unlimited).
pub(crate) fn raise_open_files() -> u64 {
    let current = getrlimit(Resource::Nofile);
    if current.current != current.maximum {
        let raised = Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("cannot raise the open-file limit to its hard limit: {e}");
        }
    }
    open_files_limit()
}

/// The soft `RLIMIT_NOFILE` in force (`u64::MAX` for unlimited).
pub(crate) fn open_files_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Descriptors this process has open now (`/proc/self/fd`, without the directory's own).
pub(crate) fn open_files() -> u32 {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| u32::try_from(dir.count().saturating_sub(1)).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let limit = raise_open_files();
        assert_eq!(
            Some(limit),
            getrlimit(Resource::Nofile).maximum.or(Some(u64::MAX))
        );
    }
}
