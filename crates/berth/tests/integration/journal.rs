//! The runtime journal across restarts, as a user of the library sees it: what an earlier
//! build of berth journaled in the database is moved into the journal file and kept.

use berth::{Client, Protocol};
use berth_store::{runtime_journal_in, runtime_journal_path, JournalOp, RuntimeJournal, Store};
use berth_testkit::TestDaemon;

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn reservations_an_earlier_build_journaled_in_the_database_survive_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let first = TestDaemon::with_db(&db, 14800, 14809, |_| {});
    let client = Client::connect_to(&first.socket).await.unwrap();
    let block = client.acquire(Protocol::Tcp, 0, 2).await.unwrap();
    first.shutdown().await;

    // Make the files look like an earlier build's: the rows in the database's journal table,
    // no journal file.
    let path = runtime_journal_path(&db);
    let (journal, loaded) = RuntimeJournal::open(&path, &boot_id()).unwrap();
    drop(journal);
    assert_eq!(
        loaded.rows.len(),
        1,
        "the journal file holds the reservation"
    );
    std::fs::remove_file(&path).unwrap();
    let mut store = Store::open(&db).unwrap();
    let ops: Vec<JournalOp> = loaded.rows.into_iter().map(JournalOp::Insert).collect();
    store.journal(&ops).unwrap();
    drop(store);

    let second = TestDaemon::with_db(&db, 14800, 14809, |_| {});
    let watcher = Client::connect_to(&second.socket).await.unwrap();
    let listed = watcher.list().await.unwrap();
    assert!(
        listed.iter().any(|r| r.token == block.token()),
        "the reservation was not restored from the database's journal: {listed:?}"
    );
    // Moved: in the file now, and gone from the database.
    let (persistent, legacy) = Store::open(&db).unwrap().load().unwrap();
    assert!(persistent.is_empty() && legacy.is_empty(), "{legacy:?}");
    assert!(path.exists());
    drop(block);
    drop(client);
    second.shutdown().await;
}

/// A daemon given a runtime directory keeps its journal there, named after its database, and
/// moves into it the journal an earlier daemon kept beside the database: the reservation of
/// a running owner survives the move, and the old file is gone.
#[tokio::test]
async fn a_journal_beside_the_database_moves_to_the_runtime_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let first = TestDaemon::with_db(&db, 14810, 14819, |_| {});
    let client = Client::connect_to(&first.socket).await.unwrap();
    let block = client.acquire(Protocol::Tcp, 0, 2).await.unwrap();
    first.shutdown().await;
    let beside = runtime_journal_path(&db);
    assert!(
        beside.exists(),
        "without a runtime directory, beside the database"
    );

    let run_dir = run.path().to_owned();
    let second = TestDaemon::with_db(&db, 14810, 14819, |config| {
        config.runtime_dir = Some(run_dir);
    });
    let watcher = Client::connect_to(&second.socket).await.unwrap();
    let listed = watcher.list().await.unwrap();
    assert!(
        listed.iter().any(|r| r.token == block.token()),
        "the reservation was not restored from the journal beside the database: {listed:?}"
    );
    let moved = runtime_journal_in(run.path(), &std::fs::canonicalize(&db).unwrap());
    assert!(!beside.exists(), "the old journal was removed");
    // Read from a copy: opening a journal rewrites it, under the running daemon.
    let copy = run.path().join("copy.runtime");
    std::fs::copy(&moved, &copy).unwrap();
    let (journal, loaded) = RuntimeJournal::open(&copy, &boot_id()).unwrap();
    drop(journal);
    assert_eq!(
        loaded.rows.iter().map(|row| row.token).collect::<Vec<_>>(),
        vec![block.token()],
        "the journal in the runtime directory holds the reservation"
    );
    // Re-claimed and released: the journal there says so, and no file appears beside the
    // database again.
    let token = block.token();
    std::mem::forget(block);
    drop(client);
    let reclaimed = watcher.reclaim(token).await.unwrap();
    std::mem::forget(reclaimed);
    watcher.release(token).await.unwrap();
    drop(watcher);
    second.shutdown().await;
    let (_, loaded) = RuntimeJournal::open(&moved, &boot_id()).unwrap();
    assert!(loaded.rows.is_empty(), "{:?}", loaded.rows);
    assert!(!beside.exists());
}

/// Both journals present (an earlier build ran after the move, writing beside the database):
/// the one beside the database is the newer and wins — a reservation released meanwhile does
/// not come back from the runtime directory's stale copy.
#[tokio::test]
async fn with_both_journals_the_one_beside_the_database_wins() {
    let dir = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let in_run = |config: &mut berth_daemon::Config| config.runtime_dir = Some(run.path().into());
    let first = TestDaemon::with_db(&db, 14820, 14829, in_run);
    let client = Client::connect_to(&first.socket).await.unwrap();
    let released = client.acquire(Protocol::Tcp, 0, 1).await.unwrap().token();
    first.shutdown().await;
    let moved = runtime_journal_in(run.path(), &std::fs::canonicalize(&db).unwrap());
    let stale = run.path().join("stale");
    std::fs::copy(&moved, &stale).unwrap();

    let second = TestDaemon::with_db(&db, 14820, 14829, in_run);
    let client = Client::connect_to(&second.socket).await.unwrap();
    std::mem::forget(client.reclaim(released).await.unwrap());
    client.release(released).await.unwrap();
    let kept = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();
    second.shutdown().await;
    // As after a downgrade and an upgrade: the newer journal beside the database, the stale
    // one (still holding the released reservation) in the runtime directory.
    std::fs::rename(&moved, runtime_journal_path(&db)).unwrap();
    std::fs::rename(&stale, &moved).unwrap();

    let third = TestDaemon::with_db(&db, 14820, 14829, in_run);
    let watcher = Client::connect_to(&third.socket).await.unwrap();
    let tokens = crate::common::tokens(&watcher).await;
    assert_eq!(
        tokens,
        vec![kept.token()],
        "only the newer journal's reservation"
    );
    assert!(!runtime_journal_path(&db).exists());
    std::mem::forget(kept);
    drop(watcher);
    third.shutdown().await;
}

/// A runtime directory others can write to (where another user could plant a journal under
/// its predictable name) is not used: the journal stays beside the database.
#[tokio::test]
async fn a_runtime_directory_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let db = dir.path().join("berth.db");
    let run_dir = run.path().to_owned();
    let daemon = TestDaemon::with_db(&db, 14830, 14839, |config| {
        config.runtime_dir = Some(run_dir);
    });
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let block = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();
    assert!(runtime_journal_path(&db).exists());
    let planted: Vec<_> = std::fs::read_dir(run.path()).unwrap().collect();
    assert!(planted.is_empty(), "{planted:?}");
    drop(block);
    drop(client);
    daemon.shutdown().await;
}
