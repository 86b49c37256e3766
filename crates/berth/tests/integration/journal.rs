//! The runtime journal across restarts, as a user of the library sees it: what an earlier
//! build of berth journaled in the database or in files of other names is moved into the
//! journal file and kept, and another network namespace's journal is left alone.

use berth::{Client, Protocol};
use berth_store::{for_namespace, runtime_journal_in, JournalOp, RuntimeJournal, Store};
use berth_testkit::TestDaemon;

/// The journal a daemon of this namespace keeps beside the database `db`.
fn beside(db: &std::path::Path) -> std::path::PathBuf {
    berth_daemon::runtime_journal(db, None).unwrap()
}

/// The journal a daemon of this namespace keeps for `db` in the runtime directory `run`.
fn in_runtime_dir(run: &std::path::Path, db: &std::path::Path) -> std::path::PathBuf {
    berth_daemon::runtime_journal(db, Some(run)).unwrap()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned()
}

/// A database and a runtime directory of a test's own, and the journal names a daemon uses there.
struct Places {
    _dir: tempfile::TempDir,
    run: tempfile::TempDir,
    db: std::path::PathBuf,
}

impl Places {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("berth.db");
        Places {
            _dir: dir,
            run: tempfile::tempdir().unwrap(),
            db,
        }
    }

    /// A daemon of this database keeping its journal in the runtime directory; pool `lo..=hi`.
    fn daemon(&self, lo: u16, hi: u16) -> TestDaemon {
        let run = self.run.path().to_owned();
        TestDaemon::with_db(&self.db, lo, hi, move |config| {
            config.runtime_dir = Some(run);
        })
    }

    /// A first daemon's runtime reservation of two TCP ports, in its journal once it stopped:
    /// its client and the reservation (forgotten, not dropped, by a test that restarts).
    async fn journaled_block(&self, lo: u16, hi: u16) -> (Client, berth::Reservation) {
        let first = self.daemon(lo, hi);
        let client = Client::connect_to(&first.socket).await.unwrap();
        let block = client.acquire(Protocol::Tcp, 0, 2).await.unwrap();
        first.shutdown().await;
        (client, block)
    }

    /// Starts a daemon (pool `lo..=hi`) that must restore nothing, stops it, and checks that
    /// `file`, another namespace's journal, still holds exactly `before`.
    async fn leaves_alone(&self, lo: u16, hi: u16, file: &std::path::Path, before: &[u8]) {
        let daemon = self.daemon(lo, hi);
        let watcher = Client::connect_to(&daemon.socket).await.unwrap();
        assert_eq!(
            crate::common::tokens(&watcher).await,
            Vec::<berth::Token>::new(),
            "nothing of the other namespace's is restored"
        );
        // This daemon's own work goes on beside it.
        drop(watcher.acquire(Protocol::Udp, 0, 1).await.unwrap());
        drop(watcher);
        daemon.shutdown().await;
        assert_eq!(
            std::fs::read(file).unwrap(),
            before,
            "the other namespace's journal is left as it was, for its own daemon"
        );
    }

    /// This namespace's journal in the runtime directory.
    fn ours(&self) -> std::path::PathBuf {
        in_runtime_dir(self.run.path(), &self.db)
    }

    /// The name a release before network namespaces gave it there.
    fn legacy(&self) -> std::path::PathBuf {
        runtime_journal_in(self.run.path(), &std::fs::canonicalize(&self.db).unwrap())
    }
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
    let path = beside(&db);
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
    let beside = beside(&db);
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
    let moved = in_runtime_dir(run.path(), &db);
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
    // Stopped with nothing to keep: no journal is left, in either place.
    assert!(
        !moved.exists(),
        "an empty journal is removed at a clean stop"
    );
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
    let moved = in_runtime_dir(run.path(), &db);
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
    std::fs::rename(&moved, beside(&db)).unwrap();
    std::fs::rename(&stale, &moved).unwrap();

    let third = TestDaemon::with_db(&db, 14820, 14829, in_run);
    let watcher = Client::connect_to(&third.socket).await.unwrap();
    let tokens = crate::common::tokens(&watcher).await;
    assert_eq!(
        tokens,
        vec![kept.token()],
        "only the newer journal's reservation"
    );
    assert!(!beside(&db).exists());
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
    assert!(beside(&db).exists());
    let planted: Vec<_> = std::fs::read_dir(run.path()).unwrap().collect();
    assert!(planted.is_empty(), "{planted:?}");
    drop(block);
    drop(client);
    daemon.shutdown().await;
}

/// Releases before network namespaces named the journal after the database alone: a daemon
/// moves such a file into its namespace's journal (in the runtime directory here) and removes
/// it, and the reservation it held is kept.
#[tokio::test]
async fn a_journal_of_a_release_before_namespaces_is_moved_in() {
    let places = Places::new();
    let (client, block) = places.journaled_block(14840, 14849).await;
    let (ours, legacy) = (places.ours(), places.legacy());
    assert_eq!(
        ours,
        for_namespace(&legacy, ours_netns(&ours, &legacy)),
        "one file per namespace, named after the release's"
    );
    std::fs::rename(&ours, &legacy).unwrap();

    let second = places.daemon(14840, 14849);
    let watcher = Client::connect_to(&second.socket).await.unwrap();
    assert_eq!(
        crate::common::tokens(&watcher).await,
        vec![block.token()],
        "restored from the older release's journal"
    );
    assert!(!legacy.exists() && ours.exists());
    std::mem::forget(block);
    drop((client, watcher));
    second.shutdown().await;
}

/// A release's file names no namespace; one whose record of the kernel's list names entries
/// this namespace does not list was written by another namespace's daemon (a fresh namespace
/// lists nothing). It is left for that daemon: taken here, its record would make an entry an
/// administrator lists in this namespace pass for berth's.
#[tokio::test]
async fn a_release_journal_recording_entries_this_namespace_lacks_is_left_alone() {
    let places = Places::new();
    let (client, block) = places.journaled_block(14870, 14879).await;
    let legacy = places.legacy();
    std::fs::rename(places.ours(), &legacy).unwrap();
    // A port this namespace does not list, recorded as listed by the release's daemon.
    let listed =
        berth_os::reserved_ports::read(std::path::Path::new(berth_os::reserved_ports::PATH))
            .unwrap();
    let unlisted = (14870..=14879)
        .find(|p| !listed.contains(*p))
        .expect("a port of the range this namespace does not list");
    let (mut journal, _) = RuntimeJournal::open(&legacy, &boot_id()).unwrap();
    journal.set_kernel(&unlisted.to_string()).unwrap();
    drop(journal);
    let before = std::fs::read(&legacy).unwrap();

    places.leaves_alone(14870, 14879, &legacy, &before).await;
    std::mem::forget(block);
    drop(client);
}

/// The network namespace in `ours`'s name (see `for_namespace`), read back.
fn ours_netns(ours: &std::path::Path, legacy: &std::path::Path) -> u64 {
    let ours = ours.file_name().unwrap().to_str().unwrap();
    let stem = legacy.file_name().unwrap().to_str().unwrap();
    let stem = stem.strip_suffix(".runtime").unwrap();
    ours.strip_prefix(stem)
        .and_then(|rest| rest.strip_prefix(".net-"))
        .and_then(|rest| rest.strip_suffix(".runtime"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{ours} is not {stem}.net-N.runtime"))
}

/// The runtime directory and the database are shared by every network namespace of the host,
/// but a journal says which processes hold ports and which entries of the kernel's list are
/// the daemon's in one namespace only. A daemon never takes another namespace's journal: the
/// reservations in it are not restored, and the file is left for its own namespace's daemon.
#[tokio::test]
async fn another_namespaces_journal_is_left_alone() {
    let places = Places::new();
    let (client, block) = places.journaled_block(14850, 14859).await;
    // As if a daemon of another namespace had written it.
    let (ours, legacy) = (places.ours(), places.legacy());
    let theirs = for_namespace(&legacy, ours_netns(&ours, &legacy) + 1);
    std::fs::rename(&ours, &theirs).unwrap();
    let before = std::fs::read(&theirs).unwrap();

    places.leaves_alone(14850, 14859, &theirs, &before).await;
    std::mem::forget(block);
    drop(client);
}

/// A journal file older than the one in place (a release's, left behind while a daemon could
/// not use the runtime directory) holds an earlier state: its rows do not replace the newer
/// file's, so a reservation released since does not come back.
#[tokio::test]
async fn an_older_journal_left_behind_does_not_bring_back_a_release() {
    let places = Places::new();
    let first = places.daemon(14860, 14869);
    let client = Client::connect_to(&first.socket).await.unwrap();
    // Kept by the handles' absence: a dropped handle releases.
    let [released, kept] = [
        client.acquire(Protocol::Tcp, 0, 1).await.unwrap(),
        client.acquire(Protocol::Tcp, 0, 1).await.unwrap(),
    ]
    .map(|r| {
        let token = r.token();
        std::mem::forget(r);
        token
    });
    first.shutdown().await;
    let stale = places.run.path().join("stale");
    std::fs::copy(places.ours(), &stale).unwrap();

    let second = places.daemon(14860, 14869);
    let client = Client::connect_to(&second.socket).await.unwrap();
    std::mem::forget(client.reclaim(released).await.unwrap());
    client.release(released).await.unwrap();
    std::mem::forget(client.reclaim(kept).await.unwrap());
    second.shutdown().await;
    // The earlier state, under the name an earlier release used, written an hour ago.
    let legacy = places.legacy();
    std::fs::rename(&stale, &legacy).unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&legacy)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();

    let third = places.daemon(14860, 14869);
    let watcher = Client::connect_to(&third.socket).await.unwrap();
    assert_eq!(crate::common::tokens(&watcher).await, vec![kept]);
    assert!(!legacy.exists());
    drop((client, watcher));
    third.shutdown().await;
}
