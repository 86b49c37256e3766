//! The runtime journal file: operations in order, reopening, the boot check, a record cut
//! short by a crash, files that are not a journal, and the rewrite that keeps it small.

use crate::common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use berth_store::{
    for_namespace, runtime_journal_in, runtime_journal_path, JournalOp, RuntimeJournal, StoreError,
};
use common::{journaled, token};
use tempfile::TempDir;

const BOOT: &str = "this-boot";

fn temp_journal() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = runtime_journal_path(&dir.path().join("berth.db"));
    (dir, path)
}

#[test]
fn the_path_is_the_databases_with_runtime_appended() {
    assert_eq!(
        runtime_journal_path(std::path::Path::new("/var/lib/berth/berth.db")),
        PathBuf::from("/var/lib/berth/berth.db.runtime")
    );
}

/// In a runtime directory: named after the database's file and a hash of its path, so that
/// two databases of one name in different directories get journals of their own.
#[test]
fn the_path_in_a_runtime_directory_is_the_databases_own() {
    let run = std::path::Path::new("/run/berth");
    let system = runtime_journal_in(run, std::path::Path::new("/var/lib/berth/berth.db"));
    assert_eq!(system.parent(), Some(run));
    let name = system.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("berth.db-"), "{name}");
    assert!(name.ends_with(".runtime"), "{name}");
    // The name must never change between versions: a daemon upgraded in place would not
    // find the journal its predecessor wrote. (FNV-1a of the path, computed independently.)
    assert_eq!(
        system,
        PathBuf::from("/run/berth/berth.db-588dfa4ec421b311.runtime")
    );
    assert_ne!(
        system,
        runtime_journal_in(run, std::path::Path::new("/srv/berth/berth.db"))
    );
}

/// One journal per network namespace: the namespace's number before `.runtime`, in the
/// runtime directory and beside the database alike. These names too must never change.
#[test]
fn each_network_namespace_has_a_journal_of_its_own() {
    let run = std::path::Path::new("/run/berth");
    let system = runtime_journal_in(run, std::path::Path::new("/var/lib/berth/berth.db"));
    assert_eq!(
        for_namespace(&system, 3),
        PathBuf::from("/run/berth/berth.db-588dfa4ec421b311.net-3.runtime")
    );
    assert_eq!(
        for_namespace(
            &runtime_journal_path(std::path::Path::new("/var/lib/berth/berth.db")),
            6544
        ),
        PathBuf::from("/var/lib/berth/berth.db.net-6544.runtime")
    );
    assert_ne!(for_namespace(&system, 3), for_namespace(&system, 4));
}

/// What a re-synchronisation writes: a removal for each row the table no longer has, an
/// insert for each row it lacks or holds otherwise (any field: the owner's command, a label),
/// nothing for a row it holds as wanted; once applied, nothing more.
#[test]
fn changes_to_hold_are_exactly_the_differences() {
    let (_dir, path) = temp_journal();
    let (mut journal, _) = RuntimeJournal::open(&path, BOOT).unwrap();
    let same = journaled(1, 40000, 1);
    let changed = journaled(2, 40001, 1);
    let gone = journaled(3, 40002, 1);
    for row in [&same, &changed, &gone] {
        journal.apply(&JournalOp::Insert(row.clone())).unwrap();
    }
    let mut changed2 = changed.clone();
    changed2.label = berth_core::Label::parse("relabelled").unwrap();
    let new = journaled(4, 40003, 1);
    let wanted = vec![same.clone(), changed2.clone(), new.clone()];
    let mut ops = journal.changes_to_hold(wanted.clone()).unwrap();
    ops.sort_by_key(|op| match op {
        JournalOp::Insert(row) => row.token,
        JournalOp::Remove(token) => *token,
    });
    assert_eq!(
        ops,
        vec![
            JournalOp::Insert(changed2),
            JournalOp::Remove(gone.token),
            JournalOp::Insert(new),
        ]
    );
    for op in &ops {
        journal.apply(op).unwrap();
    }
    assert_eq!(journal.changes_to_hold(wanted.clone()).unwrap(), vec![]);
    let mut want = wanted;
    want.sort_by_key(|r| (r.acquired_at_ms, r.token));
    assert_eq!(journal.rows(), want);
}

#[test]
fn operations_apply_in_order_and_survive_reopening() {
    let (_dir, path) = temp_journal();
    let (mut journal, loaded) = RuntimeJournal::open(&path, BOOT).unwrap();
    assert!(loaded.rows.is_empty() && !loaded.other_boot && loaded.dropped_bytes == 0);
    let a = journaled(1, 40000, 1);
    let b = journaled(2, 40001, 2);
    let mut b2 = b.clone();
    b2.owner.command = "replaced".into();
    b2.label = berth_core::Label::parse("tests::login, shard 2").unwrap();
    let c = journaled(3, 40003, 1);
    for op in [
        JournalOp::Insert(a.clone()),
        JournalOp::Insert(b),
        JournalOp::Remove(a.token),
        JournalOp::Insert(c.clone()),
        JournalOp::Remove(token(77)),
        JournalOp::Insert(b2.clone()),
        // Removed then inserted again: present. Inserted then removed: absent.
        JournalOp::Remove(c.token),
        JournalOp::Insert(c.clone()),
        JournalOp::Insert(journaled(4, 40004, 1)),
        JournalOp::Remove(token(4)),
    ] {
        journal.apply(&op).unwrap();
    }
    let mut want = vec![b2, c];
    want.sort_by_key(|r| (r.acquired_at_ms, r.token));
    assert_eq!(journal.rows(), want);
    drop(journal);
    let (_journal, loaded) = RuntimeJournal::open(&path, BOOT).unwrap();
    assert_eq!(loaded.rows, want);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the journal names processes: private");
}

#[test]
fn a_journal_from_another_boot_is_dropped() {
    let (_dir, path) = temp_journal();
    let (mut journal, _) = RuntimeJournal::open(&path, "earlier-boot").unwrap();
    journal
        .apply(&JournalOp::Insert(journaled(1, 30001, 1)))
        .unwrap();
    drop(journal);
    let (journal, loaded) = RuntimeJournal::open(&path, BOOT).unwrap();
    assert!(loaded.other_boot);
    assert!(loaded.rows.is_empty() && journal.rows().is_empty());
    drop(journal);
    // And it now belongs to this boot.
    let (_, loaded) = RuntimeJournal::open(&path, BOOT).unwrap();
    assert!(!loaded.other_boot);
}

#[test]
fn a_record_cut_short_is_dropped_and_what_came_before_kept() {
    let (_dir, path) = temp_journal();
    let (mut journal, _) = RuntimeJournal::open(&path, BOOT).unwrap();
    journal
        .apply(&JournalOp::Insert(journaled(1, 30001, 1)))
        .unwrap();
    journal
        .apply(&JournalOp::Insert(journaled(2, 30002, 1)))
        .unwrap();
    drop(journal);
    // A daemon killed in the middle of writing a third record: its first bytes only.
    let whole = fs::read(&path).unwrap();
    let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&[60, 0, 0, 0, 0, 7, 7]).unwrap();
    drop(file);
    let (mut journal, loaded) = RuntimeJournal::open(&path, BOOT).unwrap();
    assert_eq!(loaded.dropped_bytes, 7);
    assert_eq!(
        loaded
            .rows
            .iter()
            .map(|r| r.token.get())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    // The file was rewritten without the cut record, so later records are read again.
    assert_eq!(fs::read(&path).unwrap(), whole);
    journal.apply(&JournalOp::Remove(token(1))).unwrap();
    drop(journal);
    let (_, loaded) = RuntimeJournal::open(&path, BOOT).unwrap();
    assert_eq!(loaded.dropped_bytes, 0);
    assert_eq!(
        loaded
            .rows
            .iter()
            .map(|r| r.token.get())
            .collect::<Vec<_>>(),
        vec![2]
    );
}

#[test]
fn a_file_that_is_not_a_journal_is_refused_untouched() {
    let (_dir, path) = temp_journal();
    fs::write(&path, b"something else entirely").unwrap();
    let err = RuntimeJournal::open(&path, BOOT).unwrap_err();
    assert!(matches!(err, StoreError::NotAJournal { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("not a berth runtime journal") && text.contains("move it aside"),
        "{text}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"something else entirely");
}

#[test]
fn a_symbolic_link_is_not_followed() {
    let (dir, path) = temp_journal();
    let target = dir.path().join("elsewhere");
    fs::write(&target, b"precious").unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let err = RuntimeJournal::open(&path, BOOT).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert_eq!(fs::read(&target).unwrap(), b"precious");
}

/// A FIFO or a second name of another file where the journal should be is refused at once:
/// opening a FIFO for reading would wait for a writer for ever, and a hard link could name a
/// file of the daemon's user's it must not read as its journal.
#[test]
fn a_fifo_or_a_hard_link_is_refused_without_waiting() {
    let (dir, path) = temp_journal();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let err = RuntimeJournal::open(&path, BOOT).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotAJournal { detail, .. } if detail.contains("FIFO")),
        "{err:?}"
    );
    fs::remove_file(&path).unwrap();
    let other = dir.path().join("other");
    fs::write(&other, b"precious").unwrap();
    fs::hard_link(&other, &path).unwrap();
    let err = RuntimeJournal::open(&path, BOOT).unwrap_err();
    assert!(matches!(err, StoreError::NotAJournal { .. }), "{err:?}");
    assert_eq!(fs::read(&other).unwrap(), b"precious");
}

/// A journal that only grew (inserts, no garbage) is not rewritten however long it gets: a
/// rewrite would write the same rows again.
#[test]
fn a_file_of_live_rows_only_is_not_rewritten() {
    use std::os::unix::fs::MetadataExt;
    let (_dir, path) = temp_journal();
    let (mut journal, _) = RuntimeJournal::open(&path, BOOT).unwrap();
    let inode = fs::metadata(&path).unwrap().ino();
    let mut n = 0u64;
    // Past the smallest length at which a journal is ever rewritten (256 KiB).
    while fs::metadata(&path).unwrap().len() < 600 * 1024 {
        n += 1;
        let port = 1024 + u16::try_from(n % 60_000).unwrap();
        journal
            .apply(&JournalOp::Insert(journaled(n, port, 1)))
            .unwrap();
    }
    assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "rewritten");
    assert_eq!(journal.rows().len(), usize::try_from(n).unwrap());
    // Once most of it is garbage, it is.
    for t in 1..=n {
        if t % 10 != 0 {
            journal.apply(&JournalOp::Remove(token(t))).unwrap();
        }
    }
    assert_ne!(fs::metadata(&path).unwrap().ino(), inode, "not rewritten");
    assert!(fs::metadata(&path).unwrap().len() < 300 * 1024);
    assert_eq!(journal.rows().len(), usize::try_from(n / 10).unwrap());
}

#[test]
fn churn_keeps_the_file_small_and_the_rows_right() {
    let (_dir, path) = temp_journal();
    let (mut journal, _) = RuntimeJournal::open(&path, BOOT).unwrap();
    // Ten live rows and 20,000 acquire/release pairs: about 1.4 MB of records appended.
    for t in 1..=10u64 {
        journal
            .apply(&JournalOp::Insert(journaled(t, 20000 + t as u16, 1)))
            .unwrap();
    }
    let mut largest = 0;
    for i in 0..20_000u64 {
        let t = 1000 + i;
        journal
            .apply(&JournalOp::Insert(journaled(t, 30000, 1)))
            .unwrap();
        journal.apply(&JournalOp::Remove(token(t))).unwrap();
        largest = largest.max(fs::metadata(&path).unwrap().len());
    }
    assert!(
        largest <= 512 * 1024,
        "the journal grew to {largest} bytes for 10 live rows"
    );
    assert!(!dir_has_scratch(&path), "no scratch file left behind");
    drop(journal);
    let (_, loaded) = RuntimeJournal::open(&path, BOOT).unwrap();
    assert_eq!(
        loaded
            .rows
            .iter()
            .map(|r| r.token.get())
            .collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
}

fn dir_has_scratch(path: &std::path::Path) -> bool {
    let mut scratch = path.as_os_str().to_owned();
    scratch.push(".new");
    PathBuf::from(scratch).exists()
}

#[test]
fn clear_forgets_every_row() {
    let (_dir, path) = temp_journal();
    let (mut journal, _) = RuntimeJournal::open(&path, BOOT).unwrap();
    for t in 1..=3u64 {
        journal
            .apply(&JournalOp::Insert(journaled(t, 20000 + t as u16, 1)))
            .unwrap();
    }
    journal.clear().unwrap();
    assert!(journal.rows().is_empty());
    drop(journal);
    assert!(RuntimeJournal::open(&path, BOOT).unwrap().1.rows.is_empty());
}

#[test]
fn the_kernel_record_is_kept_like_the_rows() {
    let (_dir, path) = temp_journal();
    let (mut journal, loaded) = RuntimeJournal::open(&path, BOOT).unwrap();
    assert_eq!(loaded.kernel, "");
    journal.set_kernel("20000-20001").unwrap();
    journal
        .apply(&JournalOp::Insert(journaled(1, 20000, 2)))
        .unwrap();
    journal.set_kernel("20000-20001,20005").unwrap();
    // Cleared rows keep the record: the kernel still lists what the daemon wrote.
    journal.clear().unwrap();
    assert_eq!(journal.kernel(), "20000-20001,20005");
    drop(journal);
    let (mut journal, loaded) = RuntimeJournal::open(&path, BOOT).unwrap();
    assert_eq!(loaded.kernel, "20000-20001,20005");
    journal.set_kernel("").unwrap();
    drop(journal);
    assert_eq!(RuntimeJournal::open(&path, BOOT).unwrap().1.kernel, "");
    // After a reboot the kernel's list is empty again, and so is the record.
    let (mut journal, _) = RuntimeJournal::open(&path, BOOT).unwrap();
    journal.set_kernel("30000").unwrap();
    drop(journal);
    assert_eq!(
        RuntimeJournal::open(&path, "next-boot").unwrap().1.kernel,
        ""
    );
}

/// Records written together (`apply_all`, one write) read back like records written one by
/// one, and a write cut inside its second record keeps the first.
#[test]
fn records_written_together_survive_and_a_cut_keeps_the_whole_ones() {
    let (_dir, path) = temp_journal();
    let (mut journal, _) = RuntimeJournal::open(&path, BOOT).unwrap();
    journal
        .apply_all(&[
            JournalOp::Insert(journaled(1, 30001, 1)),
            JournalOp::Insert(journaled(2, 30001, 1)),
        ])
        .unwrap();
    let after_pair = fs::read(&path).unwrap();
    journal
        .apply_all(&[
            JournalOp::Remove(token(1)),
            JournalOp::Insert(journaled(3, 30003, 1)),
        ])
        .unwrap();
    journal.apply_all(&[]).unwrap();
    drop(journal);
    // (Opening compacts the file: keep it as written.)
    let whole = fs::read(&path).unwrap();
    assert!(whole.len() > after_pair.len());
    let rows = |loaded: &berth_store::Loaded| -> Vec<u64> {
        loaded.rows.iter().map(|r| r.token.get()).collect()
    };
    let (_, loaded) = RuntimeJournal::open(&path, BOOT).unwrap();
    assert_eq!(rows(&loaded), vec![2, 3]);
    // A crash in the middle of the second write, inside its last record: the removal is
    // whole and kept, the insert dropped.
    fs::write(&path, &whole[..whole.len() - 3]).unwrap();
    let (_, loaded) = RuntimeJournal::open(&path, BOOT).unwrap();
    assert!(loaded.dropped_bytes > 0);
    assert_eq!(rows(&loaded), vec![2]);
}
