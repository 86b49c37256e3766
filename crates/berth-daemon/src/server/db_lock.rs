//! One daemon per database.
//!
//! SQLite in WAL mode lets two processes open the same file, and two daemons would each take
//! the other's journaled reservations for their own to hold. An exclusive `flock` on a file
//! beside the database keeps a second daemon out, with an error that says so.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Held for the daemon's lifetime; the lock goes with the descriptor.
#[derive(Debug)]
pub(crate) struct DbLock {
    _file: std::fs::File,
}

/// `berth.db` → `berth.db.lock`.
fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock of `db`, or explains who has it.
pub(crate) fn acquire(db: &Path) -> io::Result<DbLock> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            // Said, so that a mistyped --db does not leave directories behind unnoticed.
            tracing::info!("created {} (mode 0700) for the database", dir.display());
        }
    }
    let path = lock_path(db);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        // A planted symbolic link must not make the daemon create or lock another file.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    // In a directory others can write to (`/tmp`), another user could have made the lock file
    // and hold a lock on it, and the daemon would blame "another berth daemon".
    let owner = std::os::unix::fs::MetadataExt::uid(&file.metadata()?);
    let me = rustix::process::geteuid().as_raw();
    if owner != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {owner}, not to the daemon's user (uid {me}), and a lock file another user may have made could keep this daemon out: remove it (or give it to uid {me}) if it is the daemon's, and keep the database (--db) in a directory only the daemon's user can write",
                path.display()
            ),
        ));
    }
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DbLock { _file: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "the database {} is in use by another berth daemon; stop that daemon, or give this one its own --db",
                db.display()
            ),
        )),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot lock {}: {e}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_daemon_is_kept_out_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sub/berth.db");
        let first = acquire(&db).unwrap();
        let err = acquire(&db).unwrap_err();
        assert!(err.to_string().contains("another berth daemon"), "{err}");
        drop(first);
        acquire(&db).unwrap();
    }
}
