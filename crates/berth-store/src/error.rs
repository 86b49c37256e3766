//! What can go wrong with the store, in words an operator can act on.

use std::io;
use std::path::{Path, PathBuf};

use berth_core::Token;
use rusqlite::ErrorCode;

/// A failure of the store. Every message names the database file, says what happened and what
/// to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The directory that should hold the database does not exist and could not be created.
    #[error(
        "cannot create the directory {} for the berth database: {source}; create it (mode 0700) \
         or give the daemon another --db path",
        .dir.display()
    )]
    CreateDir {
        /// The directory berth tried to create.
        dir: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },

    /// The database file did not exist and could not be created.
    #[error(
        "cannot create the berth database {}: {source}; check the directory's permissions or \
         give the daemon another --db path",
        .path.display()
    )]
    CreateFile {
        /// The database file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },

    /// Another connection held a lock on the database for longer than the busy timeout (5 s).
    #[error(
        "the berth database {} is locked (waited 5 s): is another berth daemon using it? Stop \
         it (or close the sqlite3 session holding a transaction open), or give this daemon its \
         own --db path",
        .path.display()
    )]
    Busy {
        /// The database file.
        path: PathBuf,
        /// SQLite's report.
        #[source]
        source: rusqlite::Error,
    },

    /// The file exists but is not a berth database: not SQLite at all, or another program's.
    #[error(
        "{}: the file is not a berth database ({detail}); move it aside or give the daemon \
         another --db path",
        .path.display()
    )]
    NotADatabase {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        detail: String,
    },

    /// The database's schema is newer than this build knows: a newer berth wrote it.
    #[error(
        "the berth database {} was written by a newer berth (schema version {found} > \
         {known}); run that berth (or newer), or move the database aside to start empty",
        .path.display()
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The schema version found in the file (`PRAGMA user_version`).
        found: i32,
        /// The newest schema version this build knows ([`crate::SCHEMA_VERSION`]).
        known: i32,
    },

    /// SQLite would not put the database in WAL mode (e.g. on a file system without shared
    /// memory support).
    #[error(
        "the berth database {} cannot use write-ahead logging (SQLite kept journal mode \
         {mode:?}); put it on a local file system",
        .path.display()
    )]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite reported instead of `wal`.
        mode: String,
    },

    /// A stored row does not describe a valid reservation (edited by hand, or damaged).
    #[error(
        "the berth database {} has a bad row in table {table} (token 0x{token:016x}): \
         {problem}; fix or delete that row with the sqlite3 tool (tokens are stored as signed \
         64-bit integers), or move the database aside",
        .path.display()
    )]
    BadRow {
        /// The database file.
        path: PathBuf,
        /// The table holding the row.
        table: &'static str,
        /// The row's token, as the unsigned value berth prints.
        token: u64,
        /// What is wrong with it.
        problem: String,
    },

    /// A persistent reservation with this token is stored already (tokens are never reused,
    /// so this is a bug in the caller).
    #[error(
        "the berth database {} already holds token {token} in table {table}; tokens are never \
         reused, so this is a bug in berth: please report it",
        .path.display()
    )]
    Duplicate {
        /// The database file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The token.
        token: Token,
    },

    /// The runtime journal file is not one: another program's file, or
    /// damaged at its start.
    #[error(
        "{}: the file is not a berth runtime journal ({detail}); move it aside (the runtime \
         reservations it held are then forgotten: their owners acquire again)",
        .path.display()
    )]
    NotAJournal {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        detail: String,
    },

    /// The database, a file SQLite keeps beside it, the runtime journal or its rewrite's
    /// scratch file belongs to another user: in a directory others can write to, such as
    /// `/tmp`, another user could have made it to feed the daemon reservations, or to read and
    /// change them later.
    #[error(
        "{}: the file belongs to uid {owner}, not to the daemon's user (uid {me}), and the \
         daemon does not use a file another user may have made or can change: remove it (or \
         give it to uid {me}) if it is the daemon's, and keep the database (--db) in a \
         directory only the daemon's user can write",
        .path.display()
    )]
    NotOurs {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The daemon's effective uid.
        me: u32,
    },

    /// Reading or writing the runtime journal file failed (disk full, I/O error, permissions).
    #[error(
        "the berth runtime journal {}: cannot {action}: {source}; check the disk and the \
         file's permissions",
        .path.display()
    )]
    Io {
        /// The journal file.
        path: PathBuf,
        /// What the store was doing, e.g. "write the runtime journal".
        action: &'static str,
        /// The system's report.
        #[source]
        source: io::Error,
    },

    /// Any other SQLite failure (disk full, I/O error, corruption, read-only file, …).
    #[error(
        "the berth database {}: cannot {action}: {source}; check the disk and the file (for \
         example `sqlite3 {} 'PRAGMA integrity_check'`)",
        .path.display(),
        .path.display()
    )]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What the store was doing, e.g. "record a persistent reservation".
        action: &'static str,
        /// SQLite's report.
        #[source]
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// Classifies a SQLite error met while doing `action` on the database at `path`.
    pub(crate) fn sqlite(path: &Path, action: &'static str, source: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        match source.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Busy { path, source }
            }
            Some(ErrorCode::NotADatabase) => StoreError::NotADatabase {
                path,
                detail: "SQLite cannot read it as a database".to_owned(),
            },
            _ => StoreError::Sqlite {
                path,
                action,
                source,
            },
        }
    }
}
