//! berth's store: persistent reservations in a SQLite file, runtime reservations in a journal
//! file (in the daemon's runtime directory, or beside the database).
//!
//! The daemon loads everything once at start-up ([`Store::load`], [`RuntimeJournal::open`])
//! and afterwards only writes. Writes come in two strengths:
//!
//! - **Persistent reservations** ([`Store::create_persistent`], [`Store::delete_persistent`])
//!   are durable before the call returns: the commit runs with `PRAGMA synchronous = FULL`, so
//!   the write-ahead log is fsync'ed and the change survives `kill -9` and power loss.
//! - **The runtime journal** ([`RuntimeJournal`], one per network namespace: the file
//!   [`for_namespace`] names from [`runtime_journal_in`] in the daemon's runtime directory, or
//!   from `<database>.runtime` [beside it](runtime_journal_path)) must survive a
//!   crash of the daemon, not of the host (after a power loss no owner runs any more): each
//!   change is one `write(2)` appended to the file, on the caller's thread, without fsync. The
//!   bytes are in the operating system's page cache when the call returns, which is what
//!   `kill -9` cannot take away.
//!
//! Earlier versions of berth kept the runtime journal in the database's `runtime_journal`
//! table ([`Store::journal`], committed with `synchronous = OFF`). The daemon now only reads
//! that table at start-up, moves its rows into the journal file and empties it
//! ([`Store::clear_journal`]).
//!
//! Checkpoints (copying the write-ahead log into the database file) are where `synchronous =
//! OFF` could endanger the persistent rows on a power loss, so the store never lets SQLite run
//! one during a journal commit: automatic checkpoints are off, and the store checkpoints with
//! `synchronous = FULL` itself — when asked ([`Store::checkpoint`], for the daemon to call when
//! idle) and after every [`CHECKPOINT_EVERY`] commits otherwise.
//!
//! The file is a plain SQLite database (WAL mode) that the sqlite3 tool can read while the
//! daemon runs, for example
//! `sqlite3 /var/lib/berth/berth.db "SELECT printf('0x%016x', token), protocol, start, count
//! FROM persistent"`. Tokens are stored as signed 64-bit integers with the token's bits
//! (`rows.rs`).
//!
//! # Layout
//!
//! - `lib.rs` — [`Store`]: opening, loading, writing.
//! - [`schema`] — embedded migrations and the "is this a berth database?" checks.
//! - `load.rs` — reading and validating rows at start-up.
//! - `rows.rs` — the row types and the mapping of their values to columns.
//! - `runtime.rs` — [`RuntimeJournal`]: the runtime journal file.
//! - `error.rs` — [`StoreError`].

#![forbid(unsafe_code)]

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_core::{Label, Name, Protocol, Token};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

mod error;
mod load;
mod rows;
mod runtime;
pub mod schema;

pub use error::StoreError;
pub use rows::{JournalOp, JournalRow, NameRow, PersistentRow};
pub use runtime::{
    for_namespace, runtime_journal_in, runtime_journal_path, Loaded, Prepared as PreparedRewrite,
    RewriteJob, RuntimeJournal,
};
pub use schema::SCHEMA_VERSION;

/// How long a statement waits for another connection's lock before failing with
/// [`StoreError::Busy`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// After this many commits without a checkpoint, the store runs one itself (with an fsync)
/// at the end of the next write, which keeps the write-ahead log to a few MiB.
pub const CHECKPOINT_EVERY: u32 = 1000;

/// The durability of the next commits (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// No fsync: survives a crash of the process, not of the host.
    Off,
    /// fsync of the write-ahead log on every commit, and of both files on checkpoints.
    Full,
}

/// The open database. One per daemon; not shared between threads (it is `Send`, so it can
/// live in the daemon's store thread).
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The `synchronous` level set on the connection, when known; saves a statement per write.
    sync: Option<Sync>,
    /// Commits since the last checkpoint.
    uncheckpointed: u32,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed, parent directories too with mode 0700 unless they exist) the
    /// database at `path`; a new file gets mode 0600, since the journal names processes. WAL
    /// mode, foreign keys on, busy timeout 5 s ([`BUSY_TIMEOUT`]), numbered embedded
    /// migrations tracked with `PRAGMA user_version`. Refuses, with a clear error, a file that
    /// is not a berth database ([`StoreError::NotADatabase`]) and one written by a newer berth
    /// ([`StoreError::TooNew`]). Errors are returned, never exit or panic.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        create_parent(path)?;
        create_private_file(path)?;
        check_ours(path)?;
        let err = |action: &'static str| move |e| StoreError::sqlite(path, action, e);
        let mut conn = Connection::open(path).map_err(err("open the file"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("set the busy timeout"))?;
        // Read-only checks first: nothing is written to a file that is not ours.
        schema::check(&conn, path)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
            .map_err(err("switch to write-ahead logging"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             PRAGMA synchronous = FULL;
             PRAGMA wal_autocheckpoint = 0;",
        )
        .map_err(err("configure the connection"))?;
        schema::migrate(&mut conn, path)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            sync: Some(Sync::Full),
            uncheckpointed: 0,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything to load at start-up: the persistent reservations ordered by (protocol,
    /// start) with their allow lists sorted, and the runtime journal ordered by acquisition
    /// time. A row that is not a valid reservation (bad range, token 0, unknown protocol, an
    /// id out of range) is a [`StoreError::BadRow`] naming its table and token.
    pub fn load(&self) -> Result<(Vec<PersistentRow>, Vec<JournalRow>), StoreError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.fail("start reading", e))?;
        let persistent = self.load_persistent()?;
        let journal = self.load_journal()?;
        tx.finish().map_err(|e| self.fail("finish reading", e))?;
        Ok((persistent, journal))
    }

    /// Records a persistent reservation. Durable before it returns (`synchronous = FULL` for
    /// this commit). Allow lists are stored as sets. A token that is stored already is
    /// [`StoreError::Duplicate`].
    pub fn create_persistent(&mut self, row: &PersistentRow) -> Result<(), StoreError> {
        const ACTION: &str = "record a persistent reservation";
        self.set_sync(Sync::Full)?;
        let path = &self.path;
        let err = |e| StoreError::sqlite(path, ACTION, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let token = rows::token_to_sql(row.token);
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO persistent
                         (token, protocol, start, count, created_at_ms, created_by_uid, label,
                          name)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(err)?;
            insert
                .execute(params![
                    token,
                    row.protocol.as_str(),
                    row.range.start(),
                    row.range.count(),
                    rows::to_sql(row.created_at_ms),
                    row.created_by_uid,
                    row.label.as_ref().map(Label::as_str),
                    row.name.as_ref().map(Name::as_str),
                ])
                .map_err(|e| {
                    if is_primary_key_violation(&e) {
                        StoreError::Duplicate {
                            path: path.clone(),
                            table: "persistent",
                            token: row.token,
                        }
                    } else {
                        err(e)
                    }
                })?;
            let mut allow = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO persistent_allow (token, kind, id) VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?;
            for (kind, ids) in [("user", &row.allow_users), ("group", &row.allow_groups)] {
                for id in ids {
                    allow.execute(params![token, kind, id]).map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)?;
        self.committed()
    }

    /// Deletes a persistent reservation and its allow list. Durable before it returns.
    /// `Ok(false)` if no reservation has this token.
    pub fn delete_persistent(&mut self, token: Token) -> Result<bool, StoreError> {
        const ACTION: &str = "delete a persistent reservation";
        self.set_sync(Sync::Full)?;
        let path = &self.path;
        let err = |e| StoreError::sqlite(path, ACTION, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let deleted = tx
            .prepare_cached("DELETE FROM persistent WHERE token = ?1")
            .and_then(|mut s| s.execute([rows::token_to_sql(token)]))
            .map_err(err)?;
        tx.commit().map_err(err)?;
        self.committed()?;
        Ok(deleted > 0)
    }

    /// Applies journal operations in order, in one transaction, without fsync
    /// (`synchronous = OFF` for this commit): the journal must survive a crash of the daemon,
    /// not a power loss. Either all operations are applied or, on error, none.
    pub fn journal(&mut self, ops: &[JournalOp]) -> Result<(), StoreError> {
        const ACTION: &str = "write the runtime journal";
        if ops.is_empty() {
            return Ok(());
        }
        self.set_sync(Sync::Off)?;
        let path = &self.path;
        let err = |e| StoreError::sqlite(path, ACTION, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO runtime_journal
                         (token, protocol, start, count, pid, uid, gid, start_time, command,
                          acquired_at_ms, process, held)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(err)?;
            let mut remove = tx
                .prepare_cached("DELETE FROM runtime_journal WHERE token = ?1")
                .map_err(err)?;
            for op in ops {
                match op {
                    JournalOp::Insert(row) => insert.execute(params![
                        rows::token_to_sql(row.token),
                        row.protocol.as_str(),
                        row.range.start(),
                        row.range.count(),
                        row.owner.pid,
                        row.owner.uid,
                        row.owner.gid,
                        rows::to_sql(row.owner.start_time),
                        row.owner.command,
                        rows::to_sql(row.acquired_at_ms),
                        row.process,
                        row.held,
                    ]),
                    JournalOp::Remove(token) => remove.execute([rows::token_to_sql(*token)]),
                }
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        self.committed()
    }

    /// Remembers the block `row` names (replacing what its user's name had in its protocol).
    /// Without fsync: a name's memory is a convenience, and a crash may cost its last move.
    pub fn remember_name(&mut self, row: &NameRow) -> Result<(), StoreError> {
        self.set_sync(Sync::Off)?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO names (uid, name, protocol, start, count, last_used_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut insert| {
                insert.execute(params![
                    row.uid,
                    row.name.as_str(),
                    row.protocol.as_str(),
                    row.range.start(),
                    row.range.count(),
                    rows::to_sql(row.last_used_ms),
                ])
            })
            .map_err(|e| self.fail("remember a name", e))?;
        self.committed()
    }

    /// Forgets what `uid`'s `name` was given in `protocol` (nothing to forget is fine). Like
    /// [`Store::remember_name`], without fsync.
    pub fn forget_name(
        &mut self,
        uid: u32,
        name: &Name,
        protocol: Protocol,
    ) -> Result<(), StoreError> {
        self.set_sync(Sync::Off)?;
        self.conn
            .execute(
                "DELETE FROM names WHERE uid = ?1 AND name = ?2 AND protocol = ?3",
                params![uid, name.as_str(), protocol.as_str()],
            )
            .map_err(|e| self.fail("forget a name", e))?;
        self.committed()
    }

    /// Empties the runtime journal (when the daemon drops all runtime reservations). Like
    /// [`Store::journal`], without fsync.
    pub fn clear_journal(&mut self) -> Result<(), StoreError> {
        self.set_sync(Sync::Off)?;
        self.conn
            .execute("DELETE FROM runtime_journal", [])
            .map_err(|e| self.fail("clear the runtime journal", e))?;
        self.committed()
    }

    /// Records that a daemon starts during the boot `boot_id` (`/proc/sys/kernel/random/boot_id`).
    /// A journal written during another boot names processes that cannot still run — a pid and
    /// start time seen then may belong to another process now — so it is cleared. Returns
    /// whether it was.
    pub fn begin_boot(&mut self, boot_id: &str) -> Result<bool, StoreError> {
        const ACTION: &str = "record the boot the daemon runs in";
        self.set_sync(Sync::Full)?;
        let path = &self.path;
        let err = |e| StoreError::sqlite(path, ACTION, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let previous: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'boot_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        let other_boot = previous.is_some_and(|p| p != boot_id);
        if other_boot {
            tx.execute("DELETE FROM runtime_journal", []).map_err(err)?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('boot_id', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [boot_id],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        self.committed()?;
        Ok(other_boot)
    }

    /// The value of `key` in the store's own facts, if set.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.fail("read a fact of the store", e))
    }

    /// Sets (`Some`) or clears (`None`) `key` in the store's own facts, without fsync like the
    /// journal: such facts describe the running system, which a power loss resets anyway.
    pub fn set_meta(&mut self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        self.set_sync(Sync::Off)?;
        // Cached statements: the kernel-sync writer records its entries here often.
        let result = match value {
            Some(value) => self
                .conn
                .prepare_cached(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut s| s.execute([key, value])),
            None => self
                .conn
                .prepare_cached("DELETE FROM meta WHERE key = ?1")
                .and_then(|mut s| s.execute([key])),
        };
        result.map_err(|e| self.fail("record a fact of the store", e))?;
        self.committed()
    }

    /// Copies the write-ahead log into the database file, with fsyncs. The store does this by
    /// itself every [`CHECKPOINT_EVERY`] commits; a daemon that calls it when idle keeps those
    /// fsyncs off its request paths. Readers (an open sqlite3 session) can make it partial,
    /// which is harmless.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.set_sync(Sync::Full)?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(|e| self.fail("checkpoint the write-ahead log", e))?;
        self.uncheckpointed = 0;
        Ok(())
    }

    /// Counts a commit and checkpoints when [`CHECKPOINT_EVERY`] have piled up.
    fn committed(&mut self) -> Result<(), StoreError> {
        self.uncheckpointed = self.uncheckpointed.saturating_add(1);
        if self.uncheckpointed >= CHECKPOINT_EVERY {
            // The commit is done and durable whatever the checkpoint does: reporting its
            // failure here would make the caller believe the change did not happen. A failed
            // checkpoint is tried again after the next commit.
            let _ = self.checkpoint();
        }
        Ok(())
    }

    /// Sets `PRAGMA synchronous` for the next commits. (Never through a cached statement:
    /// SQLite applies this pragma when it compiles the statement, not when it runs it.)
    fn set_sync(&mut self, level: Sync) -> Result<(), StoreError> {
        if self.sync == Some(level) {
            return Ok(());
        }
        self.sync = None;
        let sql = match level {
            Sync::Off => "PRAGMA synchronous = OFF",
            Sync::Full => "PRAGMA synchronous = FULL",
        };
        self.conn
            .execute_batch(sql)
            .map_err(|e| self.fail("set the durability level", e))?;
        self.sync = Some(level);
        Ok(())
    }

    pub(crate) fn fail(&self, action: &'static str, e: rusqlite::Error) -> StoreError {
        StoreError::sqlite(&self.path, action, e)
    }

    pub(crate) fn bad_row(&self, table: &'static str, token: i64, problem: String) -> StoreError {
        StoreError::BadRow {
            path: self.path.clone(),
            table,
            token: rows::from_sql(token),
            problem,
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the last connection checkpoints the log; make that checkpoint fsync. A
        // failure here leaves nothing to report to: the data is in the log either way.
        let _ = self.set_sync(Sync::Full);
    }
}

fn is_primary_key_violation(e: &rusqlite::Error) -> bool {
    e.sqlite_error()
        .is_some_and(|e| e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// Creates the missing directories above `path`, mode 0700 (existing ones are left as they
/// are).
fn create_parent(path: &Path) -> Result<(), StoreError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })
}

/// Creates the database file with mode 0600 if it does not exist (SQLite would use 0644, and
/// gives the log files the database's mode).
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::CreateFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The database and the files SQLite keeps beside it (`-wal`, `-shm`, `-journal`) must be
/// regular files of the daemon's user's (see [`StoreError::NotOurs`]): in a directory others
/// can write to, another user could make them first and so hold the persistent reservations.
/// (Looked at before SQLite opens them: in a sticky directory such as `/tmp` nobody else can
/// replace a file of ours meanwhile.)
fn check_ours(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        // Followed: an administrator may keep the database elsewhere through a symbolic link
        // (one planted to a file of the daemon's user's is then read, and refused, as no
        // database: nothing is written to a file before the schema check).
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.uid() != me {
            return Err(StoreError::NotOurs {
                path: file,
                owner: meta.uid(),
                me,
            });
        }
        if meta.is_dir() {
            let detail = format!(
                "a directory: --db names the database file itself, e.g. {}",
                file.join("berth.db").display()
            );
            return Err(StoreError::NotADatabase { path: file, detail });
        }
        if !meta.file_type().is_file() {
            return Err(StoreError::NotADatabase {
                path: file,
                detail: "not a regular file (a FIFO or a device)".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
