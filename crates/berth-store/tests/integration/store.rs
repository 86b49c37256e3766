//! The store's API against real files.

// clippy's test allowances cover `#[test]` functions, not the helpers.
use crate::common;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_core::{Label, Name, Protocol};
use berth_store::schema::APPLICATION_ID;
use berth_store::{JournalOp, NameRow, Store, StoreError, SCHEMA_VERSION};
use common::{journaled, persistent, token};
use tempfile::TempDir;

fn temp_db() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    (dir, path)
}

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

fn count(path: &Path, sql: &str) -> i64 {
    raw(path).query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn persistent_rows_round_trip_with_allow_lists_in_protocol_start_order() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    let udp = persistent(7, Protocol::Udp, 53, 1);
    let mut tcp_high = persistent(5, Protocol::Tcp, 8080, 2);
    tcp_high.allow_users = vec![];
    tcp_high.allow_groups = vec![];
    let mut tcp_low = persistent(9, Protocol::Tcp, 443, 1);
    tcp_low.allow_users = vec![3000, 1000, 3000, u32::MAX];
    tcp_low.allow_groups = vec![0, 5];
    for row in [&udp, &tcp_high, &tcp_low] {
        store.create_persistent(row).unwrap();
    }
    let (rows, journal) = store.load().unwrap();
    assert!(journal.is_empty());
    // Allow lists come back as sorted sets.
    tcp_low.allow_users = vec![1000, 3000, u32::MAX];
    assert_eq!(rows, vec![tcp_low, tcp_high, udp]);
}

#[test]
fn delete_reports_whether_it_deleted_and_cascades_to_allow_rows() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    let keep = persistent(1, Protocol::Tcp, 1000, 1);
    let gone = persistent(2, Protocol::Tcp, 2000, 1);
    store.create_persistent(&keep).unwrap();
    store.create_persistent(&gone).unwrap();
    assert_eq!(count(&path, "SELECT count(*) FROM persistent_allow"), 6);

    assert!(store.delete_persistent(gone.token).unwrap());
    assert!(!store.delete_persistent(gone.token).unwrap());
    assert!(!store.delete_persistent(token(99)).unwrap());

    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM persistent_allow WHERE token = 2"
        ),
        0
    );
    assert_eq!(count(&path, "SELECT count(*) FROM persistent_allow"), 3);
    assert_eq!(store.load().unwrap().0, vec![keep]);
}

#[test]
fn a_duplicate_token_is_refused_and_changes_nothing() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    let row = persistent(42, Protocol::Udp, 5000, 3);
    store.create_persistent(&row).unwrap();
    let mut again = persistent(42, Protocol::Tcp, 6000, 1);
    again.allow_users = vec![1, 2, 3];
    let err = store.create_persistent(&again).unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate { table: "persistent", token, .. } if token == row.token),
        "{err:?}"
    );
    assert!(err.to_string().contains("0x000000000000002a"), "{err}");
    assert_eq!(store.load().unwrap().0, vec![row]);
}

#[test]
fn journal_applies_a_batch_in_order() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    let a = journaled(1, 40000, 1);
    let b = journaled(2, 40001, 2);
    let mut b2 = b.clone();
    b2.owner.command = "replaced".into();
    let c = journaled(3, 40003, 1);
    store
        .journal(&[
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
        ])
        .unwrap();
    store.journal(&[]).unwrap();
    let (persistent, journal) = store.load().unwrap();
    assert!(persistent.is_empty());
    assert_eq!(journal, vec![b2, c]);
}

#[test]
fn a_failing_journal_batch_applies_nothing_and_the_store_keeps_working() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    raw(&path)
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON runtime_journal WHEN NEW.token = 666
             BEGIN SELECT RAISE(ABORT, 'refused by test'); END;",
        )
        .unwrap();
    let err = store
        .journal(&[
            JournalOp::Insert(journaled(1, 1000, 1)),
            JournalOp::Insert(journaled(666, 1001, 1)),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("refused by test"), "{err}");
    assert!(store.load().unwrap().1.is_empty());
    store
        .journal(&[JournalOp::Insert(journaled(1, 1000, 1))])
        .unwrap();
    assert_eq!(store.load().unwrap().1, vec![journaled(1, 1000, 1)]);
}

#[test]
fn clear_journal_empties_only_the_journal() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    let row = persistent(10, Protocol::Tcp, 80, 1);
    store.create_persistent(&row).unwrap();
    let ops: Vec<_> = (1..=50)
        .map(|t| JournalOp::Insert(journaled(t, 30000 + t as u16, 1)))
        .collect();
    store.journal(&ops).unwrap();
    assert_eq!(store.load().unwrap().1.len(), 50);
    store.clear_journal().unwrap();
    assert_eq!(store.load().unwrap(), (vec![row], vec![]));
}

#[test]
fn a_journal_from_another_boot_is_cleared_and_one_from_this_boot_kept() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    let row = persistent(10, Protocol::Tcp, 80, 1);
    store.create_persistent(&row).unwrap();
    assert!(
        !store.begin_boot("boot-a").unwrap(),
        "a new store has no other boot"
    );
    store
        .journal(&[JournalOp::Insert(journaled(1, 30001, 1))])
        .unwrap();
    drop(store);

    // A daemon restart within the same boot keeps the journal.
    let mut store = Store::open(&path).unwrap();
    assert!(!store.begin_boot("boot-a").unwrap());
    assert_eq!(store.load().unwrap().1.len(), 1);
    drop(store);

    // After a reboot its owners cannot run any more: the journal goes, the rest stays.
    let mut store = Store::open(&path).unwrap();
    assert!(store.begin_boot("boot-b").unwrap());
    assert_eq!(store.load().unwrap(), (vec![row], vec![]));
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM meta WHERE key = 'boot_id' AND value = 'boot-b'"
        ),
        1
    );
}

#[test]
fn reopening_keeps_everything() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    let rows = [
        persistent(1, Protocol::Tcp, 22, 1),
        persistent(2, Protocol::Udp, 500, 10),
    ];
    for row in &rows {
        store.create_persistent(row).unwrap();
    }
    store
        .journal(&[
            JournalOp::Insert(journaled(3, 33000, 4)),
            JournalOp::Insert(journaled(4, 33004, 1)),
        ])
        .unwrap();
    let before = store.load().unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.load().unwrap(), before);
    assert_eq!(before.0.len(), 2);
    assert_eq!(before.1.len(), 2);
}

#[test]
fn tokens_at_and_above_2_pow_63_round_trip() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    let big = [1u64 << 63, u64::MAX, (1 << 63) + 12345, (1 << 63) - 1];
    for (i, &t) in big.iter().enumerate() {
        store
            .create_persistent(&persistent(t, Protocol::Tcp, 1000 + i as u16, 1))
            .unwrap();
    }
    let ops: Vec<_> = big
        .iter()
        .map(|&t| JournalOp::Insert(journaled(t, 2000, 1)))
        .collect();
    store.journal(&ops).unwrap();
    let (rows, journal) = store.load().unwrap();
    let mut got: Vec<u64> = rows.iter().map(|r| r.token.get()).collect();
    assert_eq!(got, big);
    got = journal.iter().map(|r| r.token.get()).collect();
    got.sort_unstable();
    let mut want = big.to_vec();
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(
        journal[0].owner.start_time,
        u64::MAX - journal[0].token.get()
    );

    // What the sqlite3 tool shows: the same bits as a signed integer, and the documented
    // printf gives berth's spelling.
    let conn = raw(&path);
    let stored: i64 = conn
        .query_row("SELECT token FROM persistent WHERE start = 1001", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, -1);
    let printed: String = conn
        .query_row(
            "SELECT printf('0x%016x', token) FROM persistent WHERE start = 1000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(printed, token(1 << 63).to_string());
    assert!(store.delete_persistent(token(u64::MAX)).unwrap());
    store.journal(&[JournalOp::Remove(token(1 << 63))]).unwrap();
    let (rows, journal) = store.load().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(journal.len(), 3);
}

#[test]
fn a_database_from_a_newer_berth_is_refused_untouched() {
    let (_dir, path) = temp_db();
    drop(Store::open(&path).unwrap());
    raw(&path).pragma_update(None, "user_version", 99).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::TooNew { found: 99, known, .. } if known == SCHEMA_VERSION),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "written by a newer berth (schema version 99 > {SCHEMA_VERSION})"
        )),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(count(&path, "PRAGMA user_version"), 99);
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_untouched() {
    let (dir, path) = temp_db();
    let junk = "this is a configuration file, not a database\n".repeat(100);
    fs::write(&path, &junk).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("the file is not a berth database"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(fs::read_to_string(&path).unwrap(), junk);

    let short = dir.path().join("short.db");
    fs::write(&short, "hello\n").unwrap();
    let err = Store::open(&short).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
}

#[test]
fn another_programs_database_is_refused_untouched() {
    let (dir, path) = temp_db();
    raw(&path)
        .execute_batch("CREATE TABLE history (id INTEGER PRIMARY KEY, line TEXT)")
        .unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
    assert!(
        err.to_string().contains("without berth's application_id"),
        "{err}"
    );
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM sqlite_schema WHERE name = 'persistent'"
        ),
        0
    );

    let other = dir.path().join("other.db");
    raw(&other)
        .pragma_update(None, "application_id", 0x1234_5678)
        .unwrap();
    let err = Store::open(&other).unwrap_err();
    assert!(
        err.to_string().contains("application_id 0x12345678"),
        "{err}"
    );
}

#[test]
fn a_new_database_is_berths_in_wal_mode_at_the_current_version() {
    let (_dir, path) = temp_db();
    drop(Store::open(&path).unwrap());
    let conn = raw(&path);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(
        count(&path, "PRAGMA application_id"),
        i64::from(APPLICATION_ID)
    );
    assert_eq!(
        count(&path, "PRAGMA user_version"),
        i64::from(SCHEMA_VERSION)
    );
    // Reopening an up-to-date database migrates nothing.
    drop(Store::open(&path).unwrap());
    assert_eq!(
        count(&path, "PRAGMA user_version"),
        i64::from(SCHEMA_VERSION)
    );
}

#[test]
fn a_persistent_label_is_kept_and_read_back() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    let mut row = persistent(0x61, Protocol::Tcp, 8443, 1);
    row.label = Label::parse("shop web (TLS)").unwrap();
    store.create_persistent(&row).unwrap();
    store
        .create_persistent(&persistent(0x62, Protocol::Udp, 53, 1))
        .unwrap();
    drop(store);
    // Plain text in the table, for any sqlite3 tool.
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM persistent WHERE label = 'shop web (TLS)'"
        ),
        1
    );
    let (loaded, _) = Store::open(&path).unwrap().load().unwrap();
    let labels: Vec<_> = loaded
        .iter()
        .map(|r| (r.token.get(), r.label.as_ref().map(Label::as_str)))
        .collect();
    assert_eq!(labels, [(0x61, Some("shop web (TLS)")), (0x62, None)]);
}

#[test]
fn names_are_remembered_replaced_forgotten_and_read_back() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    let name = |text: &str| Name::parse(text).unwrap().unwrap();
    let row = |uid, text: &str, protocol, start, at| NameRow {
        uid,
        name: name(text),
        protocol,
        range: berth_core::PortRange::new(start, 1).unwrap(),
        last_used_ms: at,
    };
    store
        .remember_name(&row(1000, "shop/web", Protocol::Tcp, 40000, 1))
        .unwrap();
    store
        .remember_name(&row(1000, "shop/web", Protocol::Udp, 40000, 1))
        .unwrap();
    store
        .remember_name(&row(1001, "shop/web", Protocol::Tcp, 40010, 2))
        .unwrap();
    // The same user, name and protocol: replaced.
    store
        .remember_name(&row(1000, "shop/web", Protocol::Tcp, 40005, 3))
        .unwrap();
    store
        .forget_name(1000, &name("shop/web"), Protocol::Udp)
        .unwrap();
    store
        .forget_name(1000, &name("never/was"), Protocol::Udp)
        .unwrap();
    drop(store);
    let names = Store::open(&path).unwrap().load_names().unwrap();
    assert_eq!(
        names,
        [
            row(1000, "shop/web", Protocol::Tcp, 40005, 3),
            row(1001, "shop/web", Protocol::Tcp, 40010, 2)
        ]
    );
    // A row that is not a name is refused when read, naming the table and the uid.
    raw(&path)
        .execute("UPDATE names SET name = 'Not A Name' WHERE uid = 1001", [])
        .unwrap();
    let err = Store::open(&path).unwrap().load_names().unwrap_err();
    assert!(
        matches!(&err, StoreError::BadRow { table: "names", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("is not a name"), "{err}");
}

#[test]
fn a_database_from_before_labels_is_migrated_in_place() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).unwrap();
    store
        .create_persistent(&persistent(0x71, Protocol::Tcp, 8080, 2))
        .unwrap();
    drop(store);
    // Back to schema 3, as a berth without labels left it.
    raw(&path)
        .execute_batch(
            "ALTER TABLE persistent DROP COLUMN label; ALTER TABLE persistent DROP COLUMN name;
             DROP TABLE names; PRAGMA user_version = 3;",
        )
        .unwrap();
    let (loaded, _) = Store::open(&path).unwrap().load().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        (loaded[0].token.get(), loaded[0].label.clone()),
        (0x71, None)
    );
    assert_eq!(
        count(&path, "PRAGMA user_version"),
        i64::from(SCHEMA_VERSION)
    );
}

#[test]
fn open_creates_missing_parent_directories_private() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("existing");
    fs::DirBuilder::new().mode(0o755).create(&existing).unwrap();
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o755)).unwrap();
    let path = existing.join("var/lib/berth/berth.db");
    let mut store = Store::open(&path).unwrap();
    store
        .create_persistent(&persistent(1, Protocol::Tcp, 80, 1))
        .unwrap();
    assert_eq!(store.path(), path);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&existing),
        0o755,
        "an existing directory is left alone"
    );
    for sub in ["var", "var/lib", "var/lib/berth"] {
        assert_eq!(mode(&existing.join(sub)), 0o700, "{sub}");
    }
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        mode(&PathBuf::from(format!("{}-wal", path.display()))),
        0o600
    );
}

/// `--db` given a directory: said so, with the file it should name.
#[test]
fn a_directory_given_as_the_database_is_said_to_be_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
    let said = err.to_string();
    assert!(
        said.contains("a directory: --db names the database file itself"),
        "{said}"
    );
    assert!(
        said.contains(&dir.path().join("berth.db").display().to_string()),
        "{said}"
    );
}

#[test]
fn open_reports_a_directory_it_cannot_create() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, "").unwrap();
    let err = Store::open(&file.join("sub/berth.db")).unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
    assert!(
        err.to_string().contains("cannot create the directory"),
        "{err}"
    );
}

mod bad_rows {
    use super::*;

    /// Opens a fresh store, lets `sql` damage it behind its back, and returns what `load` says.
    fn load_after(sql: &str) -> StoreError {
        let (_dir, path) = temp_db();
        let mut store = Store::open(&path).unwrap();
        store
            .create_persistent(&persistent(0x51, Protocol::Tcp, 5000, 1))
            .unwrap();
        store
            .journal(&[JournalOp::Insert(journaled(0x52, 6000, 1))])
            .unwrap();
        raw(&path)
            .execute_batch(&format!("PRAGMA foreign_keys = OFF; {sql}"))
            .unwrap();
        store.load().unwrap_err()
    }

    fn assert_bad(err: &StoreError, table: &str, token: u64, problem: &str) {
        match err {
            StoreError::BadRow {
                table: t,
                token: k,
                problem: p,
                ..
            } => {
                assert_eq!((*t, *k), (table, token), "{err}");
                assert!(p.contains(problem), "{err}");
            }
            other => panic!("expected a bad row, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("table {table}")), "{msg}");
        assert!(msg.contains(&format!("token 0x{token:016x}")), "{msg}");
    }

    #[test]
    fn invalid_ranges() {
        let err = load_after("UPDATE persistent SET start = 0");
        assert_bad(&err, "persistent", 0x51, "not a valid port range");
        let err = load_after("UPDATE persistent SET start = 65535, count = 2");
        assert_bad(&err, "persistent", 0x51, "not a valid port range");
        let err = load_after("UPDATE runtime_journal SET count = 0");
        assert_bad(&err, "runtime_journal", 0x52, "not a valid port range");
        let err = load_after("UPDATE runtime_journal SET start = 'eighty'");
        assert_bad(&err, "runtime_journal", 0x52, "column start holds text");
    }

    #[test]
    fn token_zero() {
        let err = load_after("UPDATE runtime_journal SET token = 0");
        assert_bad(&err, "runtime_journal", 0, "token 0");
        let err = load_after("INSERT INTO persistent VALUES (0, 'udp', 7, 1, 0, 0, NULL, NULL)");
        assert_bad(&err, "persistent", 0, "token 0");
    }

    #[test]
    fn a_label_an_earlier_release_took_loads_with_its_invisible_characters_shown() {
        let (_dir, path) = temp_db();
        let mut store = Store::open(&path).unwrap();
        store
            .create_persistent(&persistent(0x51, Protocol::Tcp, 5000, 1))
            .unwrap();
        // A zero-width space and a byte-order mark: taken before labels refused them.
        raw(&path)
            .execute_batch(
                "UPDATE persistent SET label = 'ci' || char(8203) || '-job' || char(65279)",
            )
            .unwrap();
        let (rows, _) = store.load().unwrap();
        assert_eq!(rows[0].label.as_ref().map(Label::as_str), Some("ci?-job?"));
    }

    #[test]
    fn a_label_that_is_no_label() {
        let err = load_after("UPDATE persistent SET label = 'a' || char(27) || '[31m'");
        assert_bad(&err, "persistent", 0x51, "control characters");
        let err = load_after("UPDATE persistent SET label = x'00ff'");
        assert_bad(&err, "persistent", 0x51, "column label holds");
    }

    #[test]
    fn unknown_protocol_and_kind() {
        let err = load_after("UPDATE runtime_journal SET protocol = 'sctp'");
        assert_bad(&err, "runtime_journal", 0x52, "unknown protocol \"sctp\"");
        let err = load_after(
            "PRAGMA ignore_check_constraints = ON;
             UPDATE persistent_allow SET kind = 'role' WHERE kind = 'group'",
        );
        assert_bad(&err, "persistent_allow", 0x51, "unknown kind \"role\"");
    }

    #[test]
    fn ids_out_of_range_and_orphans() {
        let err = load_after("UPDATE runtime_journal SET uid = -1");
        assert_bad(&err, "runtime_journal", 0x52, "column uid holds -1");
        let err = load_after("UPDATE persistent SET created_by_uid = 4294967296");
        assert_bad(&err, "persistent", 0x51, "created_by_uid");
        let err = load_after("INSERT INTO persistent_allow VALUES (0x99, 'user', 5)");
        assert_bad(&err, "persistent_allow", 0x99, "no persistent reservation");
        let err = load_after("UPDATE runtime_journal SET command = x'00ff'");
        assert_bad(&err, "runtime_journal", 0x52, "column command holds a blob");
    }
}
