//! the allocator's cost is logarithmic in the number of live reservations. Measures
//! one wildcard acquire plus release of a single port in a pool of 65,000 ports, with 10 live
//! reservations (the baseline, in the same run) and with 30,000.

#![expect(
    clippy::unwrap_used,
    reason = "a benchmark: set-up failures should stop it loudly"
)]

use std::hint::black_box;

use berth_core::{
    Constraints, Holder, Owner, Pool, PortRange, Protocol, RangeRequest, SessionId, Table,
};
use criterion::{criterion_group, criterion_main, Criterion};

/// 65,000 ports, up to the top of the port space.
const POOL_FIRST: u16 = 536;
const POOL_LAST: u16 = 65535;

fn holder() -> Holder {
    Holder {
        owner: Owner {
            pid: 1,
            uid: 1000,
            gid: 1000,
            start_time: 1,
            command: "bench".into(),
        },
        session: SessionId(1),
        acquired_at_ms: 0,
        hold: false,
        label: None,
        name: None,
    }
}

/// xorshift64: cheap, non-zero, and never repeats within a run.
fn tokens() -> impl FnMut() -> u64 {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

fn nothing_in_use(_: Protocol, _: PortRange) -> Option<u16> {
    None
}

/// A table holding `live` single-port reservations on every other port of the pool, so the
/// free space is as fragmented as it can be.
fn table_with(live: u16) -> Table {
    let mut table = Table::new(Pool::new(POOL_FIRST, POOL_LAST).unwrap());
    let mut draw = tokens();
    for i in 0..live {
        let range = PortRange::new(POOL_FIRST + 2 * i, 1).unwrap();
        table
            .acquire(
                Protocol::Tcp,
                RangeRequest::Specific(range),
                holder(),
                Constraints::default(),
                &mut draw,
                &mut nothing_in_use,
            )
            .unwrap();
    }
    table
}

fn acquire_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("wildcard_acquire_release_1_port");
    for live in [10u16, 30_000] {
        let mut table = table_with(live);
        // Other tokens than the set-up's, so no redraws skew the numbers.
        let mut draw = {
            let mut inner = tokens();
            move || inner().rotate_left(32)
        };
        let admin = berth_core::Requester {
            process: holder().owner,
            is_admin: true,
        };
        group.bench_function(format!("{live}_live"), |b| {
            b.iter(|| {
                let granted = table
                    .acquire(
                        Protocol::Tcp,
                        RangeRequest::Wildcard { count: 1 },
                        holder(),
                        Constraints::default(),
                        &mut draw,
                        &mut nothing_in_use,
                    )
                    .unwrap();
                let token = granted.reservation().unwrap().token;
                black_box(table.release(token, &admin).unwrap());
            });
        });
    }
    group.finish();
}

criterion_group!(benches, acquire_release);
criterion_main!(benches);
