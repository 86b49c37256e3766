//! The runtime journal across restarts, as a user of the library sees it: what an earlier
//! build of berth journaled in the database is moved into the journal file and kept.

use berth::{Client, Protocol};
use berth_store::{runtime_journal_path, JournalOp, RuntimeJournal, Store};
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
