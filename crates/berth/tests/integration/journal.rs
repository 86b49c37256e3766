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
