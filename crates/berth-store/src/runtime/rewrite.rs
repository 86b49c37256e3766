//! Rewriting the journal outside the lock that guards it.
//!
//! An append that makes the file outgrow its live records rewrites it at once — the cost of
//! that write grows with the live records, and a daemon appends while its table is locked. A
//! daemon that turns that off ([`RuntimeJournal::set_auto_rewrite`]) rewrites in three steps
//! instead: [`RuntimeJournal::begin_rewrite`] (under the lock: the live records encoded in
//! memory), [`RewriteJob::prepare`] (no lock: the new file written beside the journal), and
//! [`RuntimeJournal::finish_rewrite`] (under the lock: the frames appended meanwhile copied to
//! the new file, which then replaces the journal by a rename). At every moment the journal is
//! the old file, whole, or the new one, whole.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{encode_fresh, io_error, rewrite_threshold, write_aside, RuntimeJournal};
use crate::StoreError;

/// A rewrite begun under the lock: the encoded live records, to write outside it.
#[derive(Debug)]
pub struct RewriteJob {
    path: PathBuf,
    bytes: Vec<u8>,
    generation: u64,
}

/// A rewrite written beside the journal, to put in place under the lock.
#[derive(Debug)]
pub struct Prepared {
    path: PathBuf,
    file: File,
    len: u64,
    generation: u64,
}

/// Where a rewrite prepared outside the lock is written (not where an inline one is: both
/// may be under way at once).
fn next_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

impl RuntimeJournal {
    /// Whether an append that makes the file outgrow its live records rewrites it at once
    /// (`true`, the default) or leaves it to the three steps of this module.
    pub fn set_auto_rewrite(&mut self, on: bool) {
        self.auto_rewrite = on;
    }

    /// Whether the file has outgrown its live records, and no rewrite is under way.
    pub fn rewrite_due(&self) -> bool {
        self.clean && self.since.is_none() && self.outgrown()
    }

    /// Begins a rewrite: the live records encoded now (in memory only); every frame appended
    /// from now on is kept for [`RuntimeJournal::finish_rewrite`].
    pub fn begin_rewrite(&mut self) -> Result<RewriteJob, StoreError> {
        let bytes = encode_fresh(&self.path, &self.boot_id, &self.live, &self.kernel.0)?;
        self.since = Some(Vec::new());
        Ok(RewriteJob {
            path: self.path.clone(),
            bytes,
            generation: self.generation,
        })
    }

    /// Puts `prepared` in place: the frames appended since the rewrite began are appended to
    /// it, and it replaces the journal. A rewrite another replaced meanwhile (an append failed
    /// and rewrote the file at once) is dropped.
    pub fn finish_rewrite(&mut self, mut prepared: Prepared) -> Result<(), StoreError> {
        let since = self.since.take().unwrap_or_default();
        let fail = |e| io_error(&self.path, "write the runtime journal", e);
        if prepared.generation != self.generation || !self.clean {
            let _ = std::fs::remove_file(next_path(&prepared.path));
            return Ok(());
        }
        prepared.file.write_all(&since).map_err(fail)?;
        std::fs::rename(next_path(&prepared.path), &self.path).map_err(fail)?;
        self.file = prepared.file;
        self.len = prepared.len + since.len() as u64;
        self.rewrite_at = rewrite_threshold(self.live_bytes);
        self.generation += 1;
        Ok(())
    }

    /// Gives up a rewrite whose preparation failed: appends go on to the journal as before.
    pub fn abandon_rewrite(&mut self) {
        self.since = None;
        if self.len >= self.rewrite_at {
            // Not again before it has grown as much again.
            self.rewrite_at = self.len.saturating_mul(2);
        }
    }
}

impl RewriteJob {
    /// Writes the new file beside the journal (outside any lock).
    pub fn prepare(self) -> Result<Prepared, StoreError> {
        let file = write_aside(&next_path(&self.path), &self.bytes)?;
        Ok(Prepared {
            path: self.path,
            file,
            len: self.bytes.len() as u64,
            generation: self.generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JournalOp, JournalRow};
    use berth_core::{Owner, PortRange, Protocol, Token};

    fn row(token: u64, port: u16) -> JournalRow {
        JournalRow {
            token: Token::new(token).unwrap(),
            protocol: Protocol::Tcp,
            range: PortRange::new(port, 1).unwrap(),
            owner: Owner {
                pid: 42,
                uid: 1000,
                gid: 1000,
                start_time: 7,
                command: "t".into(),
            },
            acquired_at_ms: token,
            process: false,
            held: true,
            label: None,
            name: None,
            cgroup: None,
        }
    }

    #[test]
    fn appends_made_while_a_rewrite_is_prepared_are_in_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.runtime");
        let (mut journal, _) = RuntimeJournal::open(&path, "boot").unwrap();
        journal.set_auto_rewrite(false);
        for t in 1..=50 {
            journal
                .apply(&JournalOp::Insert(row(t, 40000 + t as u16)))
                .unwrap();
        }
        for t in 1..=45 {
            journal
                .apply(&JournalOp::Remove(Token::new(t).unwrap()))
                .unwrap();
        }
        let job = journal.begin_rewrite().unwrap();
        // Meanwhile (the lock let go): more appends.
        journal.apply(&JournalOp::Insert(row(100, 41000))).unwrap();
        journal
            .apply(&JournalOp::Remove(Token::new(46).unwrap()))
            .unwrap();
        let prepared = job.prepare().unwrap();
        journal.finish_rewrite(prepared).unwrap();
        journal.apply(&JournalOp::Insert(row(101, 41001))).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        drop(journal);
        let (_, loaded) = RuntimeJournal::open(&path, "boot").unwrap();
        let tokens: Vec<u64> = loaded.rows.iter().map(|r| r.token.get()).collect();
        assert_eq!(tokens, vec![47, 48, 49, 50, 100, 101]);
        assert!(len < 2_000, "the rewrite shrank the file: {len} bytes");
    }

    #[test]
    fn a_rewrite_another_replaced_meanwhile_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.runtime");
        let (mut journal, _) = RuntimeJournal::open(&path, "boot").unwrap();
        journal.set_auto_rewrite(false);
        journal.apply(&JournalOp::Insert(row(1, 40001))).unwrap();
        let job = journal.begin_rewrite().unwrap();
        // An inline rewrite (what a failed append does) replaces the file meanwhile.
        journal.clear().unwrap();
        journal.apply(&JournalOp::Insert(row(2, 40002))).unwrap();
        let prepared = job.prepare().unwrap();
        journal.finish_rewrite(prepared).unwrap();
        drop(journal);
        let (_, loaded) = RuntimeJournal::open(&path, "boot").unwrap();
        let tokens: Vec<u64> = loaded.rows.iter().map(|r| r.token.get()).collect();
        assert_eq!(
            tokens,
            vec![2],
            "the stale rewrite did not bring row 1 back"
        );
        assert!(!next_path(&path).exists());
    }
}
