//! Connection settings that only the store itself can see.

use std::path::Path;

use berth_core::{Owner, PortRange, Protocol, Token};

use super::*;

fn pragma(store: &Store, name: &str) -> i64 {
    store
        .conn
        .pragma_query_value(None, name, |r| r.get(0))
        .unwrap()
}

#[test]
fn facts_are_set_read_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("b.db")).unwrap();
    assert_eq!(store.meta("k").unwrap(), None);
    store.set_meta("k", Some("1-3,5")).unwrap();
    store.set_meta("k", Some("7")).unwrap();
    assert_eq!(store.meta("k").unwrap().as_deref(), Some("7"));
    store.set_meta("k", None).unwrap();
    assert_eq!(store.meta("k").unwrap(), None);
}

fn journal_row(t: u64) -> JournalRow {
    JournalRow {
        token: Token::new(t).unwrap(),
        protocol: Protocol::Udp,
        range: PortRange::new(50000, 1).unwrap(),
        owner: Owner {
            pid: 1,
            uid: 2,
            gid: 3,
            start_time: 4,
            command: "x".into(),
        },
        acquired_at_ms: 5,
        process: false,
        held: false,
        label: None,
        name: None,
        cgroup: None,
    }
}

fn persistent_row(t: u64) -> PersistentRow {
    PersistentRow {
        token: Token::new(t).unwrap(),
        protocol: Protocol::Tcp,
        range: PortRange::new(80, 1).unwrap(),
        allow_users: vec![],
        allow_groups: vec![],
        created_at_ms: 0,
        created_by_uid: 0,
        label: None,
        name: None,
    }
}

fn open(dir: &Path) -> Store {
    Store::open(&dir.join("berth.db")).unwrap()
}

#[test]
fn the_connection_is_configured_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(pragma(&store, "synchronous"), 2, "FULL");
    assert_eq!(pragma(&store, "foreign_keys"), 1);
    assert_eq!(pragma(&store, "wal_autocheckpoint"), 0);
    assert_eq!(pragma(&store, "busy_timeout"), 5000);
}

#[test]
fn each_write_commits_at_its_own_durability() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    // Alternate to catch a pragma that would only take effect once (a cached statement).
    for t in 1..=3 {
        store.journal(&[JournalOp::Insert(journal_row(t))]).unwrap();
        assert_eq!(pragma(&store, "synchronous"), 0, "journal: OFF");
        store.create_persistent(&persistent_row(t)).unwrap();
        assert_eq!(pragma(&store, "synchronous"), 2, "create: FULL");
        store.clear_journal().unwrap();
        assert_eq!(pragma(&store, "synchronous"), 0, "clear: OFF");
        store.delete_persistent(Token::new(t).unwrap()).unwrap();
        assert_eq!(pragma(&store, "synchronous"), 2, "delete: FULL");
    }
}

#[test]
fn the_store_checkpoints_with_fsync_every_so_many_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    for t in 1..u64::from(CHECKPOINT_EVERY) {
        store.journal(&[JournalOp::Insert(journal_row(t))]).unwrap();
    }
    assert_eq!(store.uncheckpointed, CHECKPOINT_EVERY - 1);
    assert_eq!(pragma(&store, "synchronous"), 0);
    store
        .journal(&[JournalOp::Remove(Token::new(1).unwrap())])
        .unwrap();
    assert_eq!(store.uncheckpointed, 0);
    assert_eq!(pragma(&store, "synchronous"), 2, "checkpointed at FULL");
    // Everything is in the database file now: the log is fully backfilled.
    let (log, done): (i64, i64) = store
        .conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(log, done);
    assert_eq!(
        store.load().unwrap().1.len(),
        usize::try_from(CHECKPOINT_EVERY).unwrap() - 2
    );
}

#[test]
fn lock_and_format_errors_say_what_to_do() {
    let path = Path::new("/var/lib/berth/berth.db");
    let busy =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    let err = StoreError::sqlite(path, "write", busy);
    assert!(matches!(err, StoreError::Busy { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/var/lib/berth/berth.db"), "{msg}");
    assert!(msg.contains("is another berth daemon using it?"), "{msg}");

    let notadb = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB),
        None,
    );
    let err = StoreError::sqlite(path, "read", notadb);
    assert!(
        err.to_string().contains("the file is not a berth database"),
        "{err}"
    );
}

#[test]
fn a_store_can_move_to_the_daemons_store_thread() {
    fn send<T: Send>() {}
    send::<Store>();
}
