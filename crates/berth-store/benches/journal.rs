//! What the store costs on the daemon's paths: one journal insert plus one journal remove (the
//! acquire and release of a runtime reservation, no fsync) — in the runtime journal file the
//! daemon writes, and, as the baseline it replaced, in the database's journal table (two SQLite
//! commits) — and one durable persistent create
//! plus delete (two fsync'ed commits, for comparison); and opening and loading a store of
//! 10,000 persistent reservations.

#![expect(
    clippy::unwrap_used,
    reason = "a benchmark: set-up failures should stop it loudly"
)]

use std::hint::black_box;

use berth_core::{Owner, PortRange, Protocol, Token};
use berth_store::{
    runtime_journal_path, JournalOp, JournalRow, PersistentRow, RuntimeJournal, Store,
};
use criterion::{criterion_group, criterion_main, Criterion};

/// A journal row like the daemon's.
fn row(token: Token) -> JournalRow {
    JournalRow {
        token,
        protocol: Protocol::Tcp,
        range: PortRange::new(40000, 2).unwrap(),
        owner: Owner {
            pid: 4121,
            uid: 1000,
            gid: 1000,
            start_time: 123_456,
            command: "bench".into(),
        },
        acquired_at_ms: 1_750_000_000_000,
        process: false,
        held: false,
        label: None,
        name: None,
        cgroup: None,
    }
}

fn journal(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let mut store = Store::open(&db).unwrap();
    let (mut runtime, _) = RuntimeJournal::open(&runtime_journal_path(&db), "bench").unwrap();
    let mut next = 0u64;
    c.bench_function("runtime journal file insert + remove", |b| {
        b.iter(|| {
            next += 1;
            let token = Token::new(next).unwrap();
            runtime
                .apply(black_box(&JournalOp::Insert(row(token))))
                .unwrap();
            runtime.apply(black_box(&JournalOp::Remove(token))).unwrap();
        });
    });
    c.bench_function(
        "database journal table insert + remove (earlier builds)",
        |b| {
            b.iter(|| {
                next += 1;
                let token = Token::new(next).unwrap();
                store
                    .journal(black_box(&[JournalOp::Insert(row(token))]))
                    .unwrap();
                store
                    .journal(black_box(&[JournalOp::Remove(token)]))
                    .unwrap();
            });
        },
    );
    c.bench_function("persistent create + delete (fsync)", |b| {
        b.iter(|| {
            next += 1;
            let token = Token::new(next).unwrap();
            let row = PersistentRow {
                token,
                protocol: Protocol::Udp,
                range: PortRange::new(5000, 1).unwrap(),
                allow_users: vec![1000],
                allow_groups: vec![],
                created_at_ms: 1_750_000_000_000,
                created_by_uid: 0,
                label: None,
                name: None,
            };
            store.create_persistent(black_box(&row)).unwrap();
            store.delete_persistent(black_box(token)).unwrap();
        });
    });
}

/// berth aims at a start-up with 10,000 persistent reservations under 100 ms; this is the
/// store's share of it.
fn load(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    let mut store = Store::open(&path).unwrap();
    for i in 1..=10_000u16 {
        let row = PersistentRow {
            token: Token::new(u64::from(i) << 48 | 0xabc).unwrap(),
            protocol: if i % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            range: PortRange::new(i, 1).unwrap(),
            allow_users: vec![1000, u32::from(i)],
            allow_groups: vec![100],
            created_at_ms: 1_750_000_000_000,
            created_by_uid: 0,
            label: None,
            name: None,
        };
        store.create_persistent(&row).unwrap();
    }
    drop(store);
    c.bench_function("open + load 10,000 persistent reservations", |b| {
        b.iter(|| {
            let store = Store::open(&path).unwrap();
            black_box(store.load().unwrap())
        });
    });
}

criterion_group!(benches, journal, load);
criterion_main!(benches);
