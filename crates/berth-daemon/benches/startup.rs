//! Daemon start-up with 10,000 persistent reservations (under 100 ms), against
//! start-up with an empty database measured in the same run.
//!
//! One iteration is a whole `berth_daemon::run` that is told to stop at once: it takes the
//! database lock, opens and loads the store, rebuilds the table, serves nothing, and drains.
//! Run with `cargo bench -p berth-daemon --bench startup`.

#![allow(
    clippy::expect_used,
    reason = "a benchmark that cannot set up has nothing to measure"
)]

use std::path::Path;

use berth_core::{Pool, PortRange, Protocol, Token};
use berth_daemon::{bind_socket, Config};
use berth_store::{PersistentRow, Store};
use criterion::{criterion_group, criterion_main, Criterion};

/// A database holding `n` persistent single-port reservations on distinct TCP and UDP ports.
fn database(path: &Path, n: u16) {
    let mut store = Store::open(path).expect("open the store");
    for i in 0..n {
        let protocol = if i % 2 == 0 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let row = PersistentRow {
            token: Token::new(u64::from(i) + 1).expect("non-zero"),
            protocol,
            range: PortRange::new(1024 + i / 2, 1).expect("a port"),
            allow_users: Vec::new(),
            allow_groups: Vec::new(),
            created_at_ms: 0,
            created_by_uid: 0,
            label: None,
            name: None,
        };
        store.create_persistent(&row).expect("create");
    }
}

fn start_and_stop(rt: &tokio::runtime::Runtime, dir: &Path) {
    let socket = dir.join("b.sock");
    let mut config = Config::new(
        socket.clone(),
        dir.join("berth.db"),
        Pool::new(40000, 49999).expect("pool"),
    );
    // Measured beside whatever berth daemon the host runs: no claim on the namespace.
    config.authority = None;
    rt.block_on(async {
        let (listener, _guard) = bind_socket(&socket).expect("bind");
        berth_daemon::run(listener, config, async {})
            .await
            .expect("run");
    });
}

fn startup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let empty = tempfile::tempdir().expect("tempdir");
    database(&empty.path().join("berth.db"), 0);
    let full = tempfile::tempdir().expect("tempdir");
    database(&full.path().join("berth.db"), 10_000);

    let mut group = c.benchmark_group("startup");
    group.sample_size(20);
    group.bench_function("empty database (baseline)", |b| {
        b.iter(|| start_and_stop(&rt, empty.path()))
    });
    group.bench_function("10000 persistent reservations", |b| {
        b.iter(|| start_and_stop(&rt, full.path()))
    });
    group.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
