//! The schema: numbered, embedded migrations tracked with `PRAGMA user_version`, and the checks
//! that keep berth from writing into a file that is not its own.
//!
//! A database is berth's when its `application_id` is [`APPLICATION_ID`]. A brand-new (empty)
//! SQLite file gets it together with migration 1. Any other file — another program's
//! database, or one whose `user_version` is newer than [`SCHEMA_VERSION`] — is refused before
//! anything is written to it.
//!
//! Tables are plain (not `STRICT`) so that any sqlite3 tool can read them; the store validates
//! every row it loads instead.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::error::StoreError;

/// `PRAGMA application_id` of a berth database: "brth" in ASCII. `file(1)` and the sqlite3
/// tool show it.
pub const APPLICATION_ID: i32 = 0x6272_7468;

/// The migrations, in order: migration `n` (1-based) brings a database from `user_version`
/// `n - 1` to `n`. Never edit one that has shipped; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: persistent reservations with their allow lists, and the runtime journal.
    "CREATE TABLE persistent (
         token          INTEGER PRIMARY KEY,
         protocol       TEXT    NOT NULL CHECK (protocol IN ('tcp', 'udp')),
         start          INTEGER NOT NULL,
         count          INTEGER NOT NULL,
         created_at_ms  INTEGER NOT NULL,
         created_by_uid INTEGER NOT NULL
     );
     CREATE TABLE persistent_allow (
         token INTEGER NOT NULL REFERENCES persistent (token) ON DELETE CASCADE,
         kind  TEXT    NOT NULL CHECK (kind IN ('user', 'group')),
         id    INTEGER NOT NULL,
         PRIMARY KEY (token, kind, id)
     );
     CREATE TABLE runtime_journal (
         token          INTEGER PRIMARY KEY,
         protocol       TEXT    NOT NULL,
         start          INTEGER NOT NULL,
         count          INTEGER NOT NULL,
         pid            INTEGER NOT NULL,
         uid            INTEGER NOT NULL,
         gid            INTEGER NOT NULL,
         start_time     INTEGER NOT NULL,
         command        TEXT    NOT NULL,
         acquired_at_ms INTEGER NOT NULL
     );",
    // 2: facts about the store itself; `boot_id` names the boot the journal was written in.
    "CREATE TABLE meta (
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );",
    // 3: a runtime reservation handed to a process lives as long as that process, and needs
    // no re-claim after a restart; a held one has its ports held by the daemon.
    "ALTER TABLE runtime_journal ADD COLUMN process INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runtime_journal ADD COLUMN held INTEGER NOT NULL DEFAULT 0;",
    // 4: a persistent reservation may carry a label (NULL: none).
    "ALTER TABLE persistent ADD COLUMN label TEXT;",
    // 5: names: a persistent reservation's (host-wide), and the block each user's runtime
    // name was last given, to give it again.
    "ALTER TABLE persistent ADD COLUMN name TEXT;
     CREATE TABLE names (
         uid          INTEGER NOT NULL,
         name         TEXT    NOT NULL,
         protocol     TEXT    NOT NULL CHECK (protocol IN ('tcp', 'udp')),
         start        INTEGER NOT NULL,
         count        INTEGER NOT NULL,
         last_used_ms INTEGER NOT NULL,
         PRIMARY KEY (uid, name, protocol)
     );",
];

/// The newest schema version this build knows: the number of migrations.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Refuses files that are not berth databases (or are newer than this build), then applies
/// the missing migrations in one transaction.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found = check(conn, path)?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let err = |e| StoreError::sqlite(path, "create or upgrade the schema", e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    // Another process may have migrated between the check and the lock: look again.
    let found = check(&tx, path)?;
    for (done, sql) in MIGRATIONS.iter().enumerate().skip(version_index(found)) {
        tx.execute_batch(sql).map_err(err)?;
        let version = i32::try_from(done + 1).unwrap_or(i32::MAX);
        tx.pragma_update(None, "user_version", version)
            .map_err(err)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(err)?;
    tx.commit().map_err(err)
}

/// The schema version of a database berth may open: refuses other programs' files and newer
/// schemas.
pub(crate) fn check(conn: &Connection, path: &Path) -> Result<i32, StoreError> {
    let err = |e| StoreError::sqlite(path, "read the schema version", e);
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(err)?;
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    let not_berth = |detail: String| StoreError::NotADatabase {
        path: path.to_path_buf(),
        detail,
    };
    if app_id != APPLICATION_ID {
        if app_id != 0 {
            return Err(not_berth(format!(
                "it is a SQLite database of another program, application_id 0x{app_id:08x}"
            )));
        }
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(err)?;
        if objects > 0 || version != 0 {
            return Err(not_berth(format!(
                "it is a SQLite database without berth's application_id, holding {objects} \
                 schema objects at user_version {version}"
            )));
        }
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    if version < 0 {
        return Err(not_berth(format!(
            "its schema version {version} is negative"
        )));
    }
    Ok(version)
}

/// How many migrations a database at `version` (0..=SCHEMA_VERSION, checked) has applied.
fn version_index(version: i32) -> usize {
    usize::try_from(version).unwrap_or(0)
}
