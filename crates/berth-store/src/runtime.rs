//! The runtime journal: an append-only file of journal operations, in the daemon's runtime
//! directory ([`runtime_journal_in`]) or beside the database ([`runtime_journal_path`]).
//!
//! Runtime reservations must survive a crash of the daemon, never a crash of the host (their
//! owners die with it), so their record need not be durable, only *written*: once `write(2)`
//! returns, the bytes are in the kernel's page cache, and killing the daemon cannot take them
//! away. That makes a change cost one small `write` on the caller's own thread — no SQLite
//! transaction, no hand-over to another thread, no fsync, no checkpoint on the request path.
//!
//! # Format
//!
//! ```text
//! file   = MAGIC header record*
//! MAGIC  = "berth-rj" 0x00 0x00 0x00 0x01         (12 bytes: name and format version 1)
//! header = frame(postcard(Header))                the boot the file was written in
//! record = frame(postcard(Record))                Insert (a whole row), Remove (a token), or
//!                                                 Kernel (what the daemon listed in the kernel)
//! frame  = length: u32 little-endian, then that many bytes (at most MAX_FRAME)
//! ```
//!
//! Records are applied in order: an insert replaces any row with its token, a remove deletes
//! it, and the last Kernel record says which entries of `ip_local_reserved_ports` the daemon may
//! have written (a fact with the same lifetime as the rows: the kernel forgets the list at a
//! reboot, and a crash of the daemon must not make its entries look like someone else's). A daemon killed in the middle of a `write` leaves at most its last record cut short; the
//! reader stops at the first frame that is incomplete or does not decode, and the journal then
//! says so ([`Loaded::dropped_bytes`]). A file written during another boot names processes that
//! cannot run any more, so its rows are not returned ([`Loaded::other_boot`]).
//!
//! The file only grows until it is several times larger than the rows it describes; then it
//! is rewritten with just those rows (into a new file, renamed over the old one, so that a
//! crash at any point leaves one complete journal). The rewrite costs time proportional to the
//! live rows and happens after proportionally many appends, so each change pays O(1) for it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use berth_core::{Label, Name, Owner, PortRange, Protocol, Token};
use serde::{Deserialize, Serialize};

use crate::{JournalOp, JournalRow, StoreError};

mod rewrite;
pub use rewrite::{Prepared, RewriteJob};

/// The first bytes of a runtime journal: a name and the format's version.
const MAGIC: &[u8; 12] = b"berth-rj\0\0\0\x01";

/// The largest frame a journal holds. A row is under 200 bytes (a command name is at most 64); a
/// Kernel record lists ports in the kernel's syntax, at most ~190 KB (every other port); a
/// larger length can only be damage.
const MAX_FRAME: u32 = 1024 * 1024;

/// The file is rewritten once it is larger than this many times the bytes of its live rows…
const REWRITE_FACTOR: u64 = 4;
/// …and larger than this, so that a journal of a few rows is not rewritten every few changes.
const REWRITE_MIN_BYTES: u64 = 256 * 1024;

/// The runtime journal file beside the database at `db`, as releases before network
/// namespaces named it: `db` with `.runtime` appended. (Now [`for_namespace`] of it.)
pub fn runtime_journal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".runtime");
    PathBuf::from(name)
}

/// The runtime journal of the database at `db` kept in directory `dir` (the daemon's runtime
/// directory, beside its socket), as releases before network namespaces named it:
/// `<database file name>-<16 hex digits>.runtime`, the digits a hash (64-bit FNV-1a) of `db`,
/// which the caller gives in canonical form — so that daemons of different databases sharing
/// one directory never share a journal, and one database always finds its own. (Now
/// [`for_namespace`] of it.)
pub fn runtime_journal_in(dir: &Path, db: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = db
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    let mut name = db
        .file_name()
        .map_or_else(|| "berth".into(), std::ffi::OsStr::to_owned);
    name.push(format!("-{hash:016x}.runtime"));
    dir.join(name)
}

/// The journal at `journal` (a [`runtime_journal_path`] or [`runtime_journal_in`]) of the
/// daemon that serves network namespace `netns` (`berth_os::netns::NetNs::id`): `.net-<netns>`
/// before `.runtime`, as in `berth.db-588dfa4ec421b311.net-3.runtime`. What a journal holds —
/// reservations of processes whose ports are that namespace's, and which entries of that
/// namespace's `ip_local_reserved_ports` are the daemon's — means nothing in another one, and
/// the database and the runtime directory are shared by every namespace of the host.
pub fn for_namespace(journal: &Path, netns: u64) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let bytes = journal.as_os_str().as_bytes();
    let mut name = bytes.strip_suffix(b".runtime").unwrap_or(bytes).to_vec();
    name.extend_from_slice(format!(".net-{netns}.runtime").as_bytes());
    PathBuf::from(std::ffi::OsString::from_vec(name))
}

/// The file's header.
#[derive(Serialize, Deserialize)]
struct Header {
    /// `/proc/sys/kernel/random/boot_id` when the file was written, empty when unknown.
    boot_id: String,
}

/// A runtime reservation's fields, as every insert record starts (written by [`RowRef`]).
#[derive(Deserialize)]
struct Row {
    token: Token,
    protocol: Protocol,
    range: PortRange,
    owner: Owner,
    acquired_at_ms: u64,
    process: bool,
    held: bool,
}

impl Row {
    fn into_row(self, label: Option<Label>, name: Option<Name>, cgroup: Option<u64>) -> JournalRow {
        let mut owner = self.owner;
        // An earlier release wrote the command as the process named itself.
        if owner.command.chars().any(berth_core::text::is_unprintable)
            || owner.command.len() > berth_core::owner::MAX_COMMAND_LEN
        {
            owner.command = Owner::printable_command(&owner.command).into();
        }
        JournalRow {
            token: self.token,
            protocol: self.protocol,
            range: self.range,
            owner,
            acquired_at_ms: self.acquired_at_ms,
            process: self.process,
            held: self.held,
            label,
            name,
            cgroup,
        }
    }
}

/// [`Row`] as written, borrowing the owner.
#[derive(Serialize)]
struct RowRef<'a> {
    token: Token,
    protocol: Protocol,
    range: PortRange,
    owner: &'a Owner,
    acquired_at_ms: u64,
    process: bool,
    held: bool,
}

/// One operation as read back. [`RecordRef`] writes the same shape (variants in the same
/// order, fields in the same order) from borrowed data. postcard writes a struct's fields with
/// no framing, so `Insert(Row)` is byte for byte the struct variant earlier builds wrote.
#[derive(Deserialize)]
enum Record {
    Insert(Row),
    Remove(Token),
    /// The entries of `ip_local_reserved_ports` the daemon may have written, in the kernel's
    /// list syntax ("" for none).
    Kernel(String),
    /// An `Insert` with a label and a name ("" for none; a variant of its own, appended, so
    /// that a journal written before labels and names existed still reads).
    Tagged(Row, String, String),
    /// A `Tagged` insert of a reservation that lives as long as a cgroup (its id): enforce
    /// mode's; appended, so that journals without it still read.
    InCgroup(Row, String, String, u64),
}

impl Record {
    /// The journal operation, or `Err` with a Kernel record's list.
    fn into_op(self) -> Result<JournalOp, String> {
        Ok(match self {
            Record::Insert(row) => JournalOp::Insert(row.into_row(None, None, None)),
            // Written from a valid label and name; a label an earlier release took is kept
            // with `?` for what no longer reads, a name that no longer reads is dropped, and
            // the reservation stays either way.
            Record::Tagged(row, label, name) => JournalOp::Insert(row.into_row(
                Label::from_stored(&label).ok().flatten(),
                Name::parse(&name).ok().flatten(),
                None,
            )),
            // Cgroup 0 is no cgroup: such a record was not written by berth; its row is then
            // restored as its owner process's.
            Record::InCgroup(row, label, name, cgroup) => JournalOp::Insert(row.into_row(
                Label::from_stored(&label).ok().flatten(),
                Name::parse(&name).ok().flatten(),
                (cgroup != 0).then_some(cgroup),
            )),
            Record::Remove(token) => JournalOp::Remove(token),
            Record::Kernel(list) => return Err(list),
        })
    }
}

/// One operation as written, borrowing what it records: see [`Record`].
#[derive(Serialize)]
enum RecordRef<'a> {
    Insert(RowRef<'a>),
    Remove(Token),
    Kernel(&'a str),
    Tagged(RowRef<'a>, &'a str, &'a str),
    InCgroup(RowRef<'a>, &'a str, &'a str, u64),
}

impl<'a> RecordRef<'a> {
    fn of(op: &'a JournalOp) -> Self {
        match op {
            JournalOp::Insert(row) => RecordRef::insert(row),
            JournalOp::Remove(token) => RecordRef::Remove(*token),
        }
    }

    fn insert(row: &'a JournalRow) -> Self {
        let fields = RowRef {
            token: row.token,
            protocol: row.protocol,
            range: row.range,
            owner: &row.owner,
            acquired_at_ms: row.acquired_at_ms,
            process: row.process,
            held: row.held,
        };
        let label = row.label.as_ref().map_or("", Label::as_str);
        let name = row.name.as_ref().map_or("", Name::as_str);
        match row.cgroup {
            Some(cgroup) => RecordRef::InCgroup(fields, label, name, cgroup),
            None if row.label.is_none() && row.name.is_none() => RecordRef::Insert(fields),
            None => RecordRef::Tagged(fields, label, name),
        }
    }
}

/// What [`RuntimeJournal::open`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The journaled runtime reservations, ordered by acquisition time (then token).
    pub rows: Vec<JournalRow>,
    /// The file was written during another boot: its rows were dropped.
    pub other_boot: bool,
    /// Bytes at the end of the file that did not form a whole record (a daemon killed during a
    /// write, or damage) and were dropped.
    pub dropped_bytes: u64,
    /// The entries of `ip_local_reserved_ports` the daemon recorded it may have written, in the
    /// kernel's list syntax ("" for none; always "" after a reboot).
    pub kernel: String,
}

/// The open runtime journal. One per daemon (the database lock guards it too); not shared
/// between threads — the daemon keeps it behind a lock.
#[derive(Debug)]
pub struct RuntimeJournal {
    path: PathBuf,
    file: File,
    boot_id: String,
    /// The rows the file describes, each as the frame it was last written in (length prefix
    /// included): a few dozen bytes a row where the decoded row would take a few hundred —
    /// with ten thousand reservations live, the difference is megabytes of the daemon's memory.
    /// A B-tree, not a hash map: rows come and go by the thousand, and a hash map whose removed
    /// entries leave tombstones doubles its buckets with no more rows live (measured: ~0.8 MiB
    /// more after ten waves of 10,000); the tree's nodes are freed as they empty. It also keeps
    /// the rows in token order, the order a fresh file lists them in.
    live: BTreeMap<Token, Box<[u8]>>,
    /// The sum of the live rows' frame lengths (and the kernel record's).
    live_bytes: u64,
    /// The last kernel record ("" for none) and its frame's length.
    kernel: (String, u64),
    /// The file's length.
    len: u64,
    /// The length at which the file is rewritten next.
    rewrite_at: u64,
    /// False after a failed write, which may have left part of a record at the end: nothing
    /// may be appended behind it (the reader would stop there) until a rewrite succeeds.
    clean: bool,
    /// Reused for encoding.
    buf: Vec<u8>,
    /// Whether an append that makes the file outgrow its live records rewrites it at once
    /// (the default), or leaves that to [`RuntimeJournal::begin_rewrite`] (a daemon that
    /// rewrites outside its lock).
    auto_rewrite: bool,
    /// While a rewrite is prepared outside the lock: the frames appended since it began, to be
    /// appended to the new file too.
    since: Option<Vec<u8>>,
    /// Counts the rewrites, so that one prepared outside the lock is dropped if another
    /// replaced the file meanwhile.
    generation: u64,
}

impl RuntimeJournal {
    /// Opens the journal at `path` (see [`runtime_journal_path`]), creating it (mode 0600) if
    /// it does not exist, and returns what it holds. `boot_id` is the current boot's
    /// (`/proc/sys/kernel/random/boot_id`), or empty when unknown; rows written during another
    /// boot are dropped. The file is rewritten with just the returned rows, in the current
    /// boot. Refuses a file that is not a runtime journal, a symbolic link, and a file of
    /// another user's ([`StoreError::NotOurs`]).
    pub fn open(path: &Path, boot_id: &str) -> Result<(RuntimeJournal, Loaded), StoreError> {
        let mut loaded = Loaded::default();
        let mut rows: HashMap<Token, JournalRow> = HashMap::new();
        let mut kernel = String::new();
        if let Some(bytes) = read_file(path)? {
            let read = read_journal(&bytes).map_err(|detail| StoreError::NotAJournal {
                path: path.to_path_buf(),
                detail,
            })?;
            loaded.dropped_bytes = read.dropped_bytes;
            if read.boot_id == boot_id {
                for record in read.records {
                    match record.into_op() {
                        Ok(op) => apply(&mut rows, op),
                        Err(list) => kernel = list,
                    }
                }
            } else {
                loaded.other_boot = true;
            }
        }
        let mut live: BTreeMap<Token, Box<[u8]>> = BTreeMap::new();
        let kernel_len = if kernel.is_empty() {
            0
        } else {
            frame_of(path, &RecordRef::Kernel(&kernel))?.len() as u64
        };
        let kernel = (kernel, kernel_len);
        let mut live_bytes = kernel_len;
        for (token, row) in rows {
            let frame = frame_of(path, &RecordRef::insert(&row))?;
            live_bytes += frame.len() as u64;
            live.insert(token, frame);
        }
        let (file, len) = write_fresh(path, boot_id, &live, &kernel.0)?;
        loaded.kernel.clone_from(&kernel.0);
        let journal = RuntimeJournal {
            path: path.to_path_buf(),
            file,
            boot_id: boot_id.to_owned(),
            live,
            live_bytes,
            kernel,
            len,
            rewrite_at: rewrite_threshold(live_bytes),
            clean: true,
            buf: Vec::new(),
            auto_rewrite: true,
            since: None,
            generation: 0,
        };
        loaded.rows = journal.rows();
        Ok((journal, loaded))
    }

    /// What the journal at `path` records of the kernel's list ("" for nothing, or when it was
    /// written during another boot than `boot_id`'s), read without opening it as
    /// [`RuntimeJournal::open`] does: the file is left exactly as it is. `None` when there is
    /// no file; refused as `open` refuses.
    pub fn peek_kernel(path: &Path, boot_id: &str) -> Result<Option<String>, StoreError> {
        let Some(bytes) = read_file(path)? else {
            return Ok(None);
        };
        let read = read_journal(&bytes).map_err(|detail| StoreError::NotAJournal {
            path: path.to_path_buf(),
            detail,
        })?;
        let mut kernel = String::new();
        if read.boot_id == boot_id {
            for record in read.records {
                if let Err(list) = record.into_op() {
                    kernel = list;
                }
            }
        }
        Ok(Some(kernel))
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rows the journal holds, ordered by acquisition time (then token): decoded from
    /// the frames kept in memory.
    pub fn rows(&self) -> Vec<JournalRow> {
        let mut rows: Vec<JournalRow> = self.live.values().filter_map(|f| decode_row(f)).collect();
        rows.sort_by_key(|r| (r.acquired_at_ms, r.token));
        rows
    }

    /// The operations that make the journal hold exactly `wanted` (one row per token): a
    /// removal for each row it holds that `wanted` lacks, an insert for each row of `wanted`
    /// it lacks or holds otherwise — compared as encoded, without decoding what it holds. No
    /// sort: for a diff under a lock.
    pub fn changes_to_hold(&self, wanted: Vec<JournalRow>) -> Result<Vec<JournalOp>, StoreError> {
        let wanted_tokens: std::collections::HashSet<Token> =
            wanted.iter().map(|row| row.token).collect();
        let mut ops: Vec<JournalOp> = self
            .live
            .keys()
            .filter(|token| !wanted_tokens.contains(token))
            .map(|token| JournalOp::Remove(*token))
            .collect();
        for row in wanted {
            let frame = frame_of(&self.path, &RecordRef::insert(&row))?;
            if self.live.get(&row.token) != Some(&frame) {
                ops.push(JournalOp::Insert(row));
            }
        }
        Ok(ops)
    }

    /// Records `op` with one `write`: once this returns `Ok`, a crash of the calling process
    /// no longer loses it. On error the journal is as before.
    pub fn apply(&mut self, op: &JournalOp) -> Result<(), StoreError> {
        self.apply_all(std::slice::from_ref(op))
    }

    /// Records `ops`, in order, with one `write` together (the two halves of a TCP and UDP
    /// pair, say): once this returns `Ok`, a crash no longer loses any of them; a crash during
    /// the write keeps a prefix of them, whole records only (a torn last record is dropped
    /// when the journal is read). On error the journal is as before.
    pub fn apply_all(&mut self, ops: &[JournalOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        let mut ends = Vec::with_capacity(ops.len());
        for op in ops {
            push_frame(&mut self.buf, &RecordRef::of(op))
                .map_err(|e| io_error(&self.path, "encode a runtime journal record", e))?;
            ends.push(self.buf.len());
        }
        self.write_buf()?;
        let buf = std::mem::take(&mut self.buf);
        let mut start = 0;
        for (op, end) in ops.iter().zip(ends) {
            self.note(op, buf.get(start..end).unwrap_or_default());
            start = end;
        }
        self.buf = buf;
        if self.auto_rewrite {
            self.rewrite_if_long();
        }
        Ok(())
    }

    /// Counts `op`, just written as `frame`, in the live rows.
    fn note(&mut self, op: &JournalOp, frame: &[u8]) {
        match op {
            JournalOp::Insert(row) => {
                self.live_bytes += frame.len() as u64;
                if let Some(old) = self.live.insert(row.token, frame.into()) {
                    self.live_bytes -= old.len() as u64;
                }
            }
            JournalOp::Remove(token) => {
                if let Some(old) = self.live.remove(token) {
                    self.live_bytes -= old.len() as u64;
                }
            }
        }
    }

    /// Records which entries of `ip_local_reserved_ports` the daemon may have written (the
    /// kernel's list syntax; "" for none), with one `write` like [`RuntimeJournal::apply`].
    pub fn set_kernel(&mut self, list: &str) -> Result<(), StoreError> {
        if list == self.kernel.0 {
            return Ok(());
        }
        let frame = self.append(&RecordRef::Kernel(list))?;
        self.live_bytes -= self.kernel.1;
        self.kernel = if list.is_empty() {
            (String::new(), 0)
        } else {
            (list.to_owned(), frame)
        };
        self.live_bytes += self.kernel.1;
        if self.auto_rewrite {
            self.rewrite_if_long();
        }
        Ok(())
    }

    /// What the last [`RuntimeJournal::set_kernel`] recorded.
    pub fn kernel(&self) -> &str {
        &self.kernel.0
    }

    /// Appends one record with one `write`; returns its frame's length. On error nothing is
    /// recorded.
    fn append(&mut self, record: &RecordRef<'_>) -> Result<u64, StoreError> {
        self.buf.clear();
        push_frame(&mut self.buf, record)
            .map_err(|e| io_error(&self.path, "encode a runtime journal record", e))?;
        let frame = self.buf.len() as u64;
        self.write_buf()?;
        Ok(frame)
    }

    /// Appends the records encoded in `buf` with one `write`.
    fn write_buf(&mut self) -> Result<(), StoreError> {
        if !self.clean {
            // The rewrite uses `buf` too: keep what is to be appended aside.
            let pending = std::mem::take(&mut self.buf);
            let rewritten = self.rewrite();
            self.buf = pending;
            rewritten?;
        }
        let frame = self.buf.len() as u64;
        if let Err(e) = self.file.write_all(&self.buf) {
            // Part of the records may be in the file now — whole ones too, when the write
            // stopped at a page (a full disk): cut them off (shortening needs no space), so
            // that none is read back at the next start; then start over from what is live (or,
            // if that fails too, before the next append).
            let _ = self.file.set_len(self.len);
            self.clean = false;
            let _ = self.rewrite();
            return Err(io_error(&self.path, "write the runtime journal", e));
        }
        self.len += frame;
        if let Some(since) = self.since.as_mut() {
            since.extend_from_slice(&self.buf);
        }
        Ok(())
    }

    /// Rewrites the file once it has outgrown its live records.
    fn rewrite_if_long(&mut self) {
        if self.outgrown() && self.rewrite().is_err() {
            // What was appended is recorded already; a failed rewrite only leaves a longer
            // file. Try again once it has grown as much again.
            self.rewrite_at = self.len.saturating_mul(2);
        }
    }

    /// Whether the file has outgrown its live rows: past the length set at the last rewrite
    /// (or failure) and several times what is live now. A file that grew by inserts alone is
    /// all live rows: rewriting it would write the same rows again (and, for a daemon filling
    /// its table, hold a copy of them all in memory for nothing).
    fn outgrown(&self) -> bool {
        self.len >= self.rewrite_at && self.len >= rewrite_threshold(self.live_bytes)
    }

    /// Forgets every row (the kernel record stays).
    pub fn clear(&mut self) -> Result<(), StoreError> {
        let before = std::mem::take(&mut self.live);
        let bytes = std::mem::replace(&mut self.live_bytes, self.kernel.1);
        if let Err(e) = self.rewrite() {
            self.live = before;
            self.live_bytes = bytes;
            return Err(e);
        }
        Ok(())
    }

    /// Replaces the file with one holding just the live rows.
    fn rewrite(&mut self) -> Result<(), StoreError> {
        self.generation += 1;
        let (file, len) = write_fresh(&self.path, &self.boot_id, &self.live, &self.kernel.0)?;
        self.file = file;
        self.len = len;
        self.rewrite_at = rewrite_threshold(self.live_bytes);
        self.clean = true;
        Ok(())
    }
}

/// The file length at which a journal whose live rows take `live_bytes` is rewritten.
fn rewrite_threshold(live_bytes: u64) -> u64 {
    REWRITE_MIN_BYTES.max(REWRITE_FACTOR.saturating_mul(live_bytes))
}

/// Writes the header, the kernel record (unless "") and `live`'s rows to a new file and renames
/// it over `path`, so that the journal is, at every moment, either the old file or the whole
/// new one. Returns the new file, open for appending, and its length.
fn write_fresh(
    path: &Path,
    boot_id: &str,
    live: &BTreeMap<Token, Box<[u8]>>,
    kernel: &str,
) -> Result<(File, u64), StoreError> {
    let fail = |e| io_error(path, "write the runtime journal", e);
    let bytes = encode_fresh(path, boot_id, live, kernel)?;
    let scratch = scratch_path(path);
    let file = write_aside(&scratch, &bytes)?;
    std::fs::rename(&scratch, path).map_err(fail)?;
    // The descriptor now names the journal itself.
    Ok((file, bytes.len() as u64))
}

/// A whole journal's bytes: the header, the kernel record (unless "") and `live`'s rows.
fn encode_fresh(
    path: &Path,
    boot_id: &str,
    live: &BTreeMap<Token, Box<[u8]>>,
    kernel: &str,
) -> Result<Vec<u8>, StoreError> {
    let encode = |e| io_error(path, "encode a runtime journal record", e);
    let mut bytes = Vec::with_capacity(64 + live.values().map(|f| f.len()).sum::<usize>());
    bytes.extend_from_slice(MAGIC);
    push_frame(
        &mut bytes,
        &Header {
            boot_id: boot_id.to_owned(),
        },
    )
    .map_err(encode)?;
    if !kernel.is_empty() {
        push_frame(&mut bytes, &RecordRef::Kernel(kernel)).map_err(encode)?;
    }
    // In token order (the map's), so that the same rows always make the same file.
    for frame in live.values() {
        bytes.extend_from_slice(frame);
    }
    Ok(bytes)
}

/// Writes `bytes` to the file `aside` (mode 0600, not through a symbolic link) from its start
/// — one a crash left there is started afresh — and returns it open for appending.
fn write_aside(aside: &Path, bytes: &[u8]) -> Result<File, StoreError> {
    let fail = |e| io_error(aside, "write the runtime journal", e);
    // Made afresh, never opened as found: a file put here by another user would become the
    // journal at the rename (one that cannot be removed here, such as another user's in a
    // sticky directory, makes the creation fail, and says so).
    match std::fs::remove_file(aside) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(aside)
        .map_err(fail)?;
    ours(&file, aside)?;
    file.write_all(bytes).map_err(fail)?;
    Ok(file)
}

/// Where a rewrite is prepared before it replaces the journal.
fn scratch_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// `O_NOFOLLOW` for [`OpenOptionsExt::custom_flags`].
fn no_follow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits().cast_signed()
}

/// The whole file, or `None` if there is none.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let fail = |e| io_error(path, "read the runtime journal", e);
    // Non-blocking: a FIFO put in its place must not hang the daemon's start (it is then
    // refused as no regular file).
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(no_follow() | rustix::fs::OFlags::NONBLOCK.bits().cast_signed())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e)),
    };
    ours(&file, path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(fail)?;
    Ok(Some(bytes))
}

/// Refuses `file` (opened at `path`) unless it belongs to the daemon's user (see
/// [`StoreError::NotOurs`]). Asked of the open descriptor, so no file put in its place
/// meanwhile passes.
fn ours(file: &File, path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let meta = file
        .metadata()
        .map_err(|e| io_error(path, "look at the runtime journal", e))?;
    let owner = meta.uid();
    let me = rustix::process::geteuid().as_raw();
    if owner != me {
        return Err(StoreError::NotOurs {
            path: path.to_path_buf(),
            owner,
            me,
        });
    }
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return Err(StoreError::NotAJournal {
            path: path.to_path_buf(),
            detail: "not a regular file of one name (a FIFO, a device, or a hard link)".into(),
        });
    }
    Ok(())
}

/// What a journal file says.
struct Parsed {
    boot_id: String,
    records: Vec<Record>,
    dropped_bytes: u64,
}

/// Parses a journal file. `Err` when it is not one (wrong magic, no readable header).
fn read_journal(bytes: &[u8]) -> Result<Parsed, String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| "it does not start like a berth runtime journal".to_owned())?;
    let (header, mut rest) =
        next_frame(rest).ok_or_else(|| "its header is cut short".to_owned())?;
    let header: Header =
        postcard::from_bytes(header).map_err(|e| format!("its header does not decode: {e}"))?;
    let mut records = Vec::new();
    while let Some((frame, after)) = next_frame(rest) {
        let Ok(record) = postcard::from_bytes::<Record>(frame) else {
            break;
        };
        records.push(record);
        rest = after;
    }
    Ok(Parsed {
        boot_id: header.boot_id,
        records,
        dropped_bytes: rest.len() as u64,
    })
}

/// The next whole frame and what follows it; `None` when the bytes do not hold one.
fn next_frame(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len);
    if len > MAX_FRAME {
        return None;
    }
    let len = usize::try_from(len).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Appends `value` as one frame.
fn push_frame<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> io::Result<()> {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    *buf = postcard::to_extend(value, std::mem::take(buf)).map_err(io::Error::other)?;
    let len = buf.len() - at - 4;
    let len = u32::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or_else(|| io::Error::other(format!("a record of {len} bytes is larger than 1 MiB")))?;
    if let Some(prefix) = buf.get_mut(at..at + 4) {
        prefix.copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

/// `record`'s frame (length prefix included), for the journal at `path`.
fn frame_of(path: &Path, record: &RecordRef<'_>) -> Result<Box<[u8]>, StoreError> {
    let mut buf = Vec::new();
    push_frame(&mut buf, record)
        .map_err(|e| io_error(path, "encode a runtime journal record", e))?;
    Ok(buf.into_boxed_slice())
}

/// The row an insert record's frame (length prefix included) holds; `None` for another
/// record, or bytes that do not decode (never the case for a frame this journal wrote).
fn decode_row(frame: &[u8]) -> Option<JournalRow> {
    let (payload, _) = next_frame(frame)?;
    match postcard::from_bytes::<Record>(payload).ok()?.into_op() {
        Ok(JournalOp::Insert(row)) => Some(row),
        _ => None,
    }
}

fn apply(rows: &mut HashMap<Token, JournalRow>, op: JournalOp) {
    match op {
        JournalOp::Insert(row) => {
            rows.insert(row.token, row);
        }
        JournalOp::Remove(token) => {
            rows.remove(&token);
        }
    }
}

fn io_error(path: &Path, action: &'static str, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The bytes of an insert record are the ones earlier builds wrote and read (pinned before
    /// the records shared their fields), and a tagged one reads back with its label and name.
    #[test]
    fn insert_records_keep_their_bytes() {
        let row = JournalRow {
            token: Token::new(300).unwrap(),
            protocol: Protocol::Udp,
            range: PortRange::new(8080, 2).unwrap(),
            owner: Owner {
                pid: 7,
                uid: 1000,
                gid: 1000,
                start_time: 9,
                command: "nc".into(),
            },
            acquired_at_ms: 5,
            process: true,
            held: false,
            label: None,
            name: None,
            cgroup: None,
        };
        let mut tagged = row.clone();
        tagged.label = Label::parse("t").unwrap();
        tagged.name = Name::parse("a/b").unwrap();
        let plain = postcard::to_allocvec(&RecordRef::insert(&row)).unwrap();
        assert_eq!(
            hex(&plain),
            "00 ac 02 01 90 3f 02 07 e8 07 e8 07 09 02 6e 63 05 01 00"
        );
        let with_tags = postcard::to_allocvec(&RecordRef::insert(&tagged)).unwrap();
        assert_eq!(
            hex(&with_tags),
            "03 ac 02 01 90 3f 02 07 e8 07 e8 07 09 02 6e 63 05 01 00 01 74 03 61 2f 62"
        );
        // A cgroup's (enforce mode): variant 4, the tags, then the cgroup's id.
        let mut in_cgroup = row.clone();
        in_cgroup.process = false;
        in_cgroup.cgroup = Some(0x1234);
        let cgrouped = postcard::to_allocvec(&RecordRef::insert(&in_cgroup)).unwrap();
        assert_eq!(
            hex(&cgrouped),
            "04 ac 02 01 90 3f 02 07 e8 07 e8 07 09 02 6e 63 05 00 00 00 00 b4 24"
        );
        for (bytes, want) in [(plain, row), (with_tags, tagged), (cgrouped, in_cgroup)] {
            let back: Record = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back.into_op(), Ok(JournalOp::Insert(want)));
        }
    }
}
