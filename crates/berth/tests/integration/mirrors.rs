//! The daemon's mirrors against the table, as a model test: random requests of one client —
//! grants (held or not, one protocol or both), releases — with the store failing at random
//! points (from the n-th write on, and healing), then a clean restart on the same database.
//! The restarted daemon must hold exactly the reservations the client was told it holds:
//! none lost (a grant answered "ok" is in the journal) and none brought back (a refused grant
//! left nothing; a release the journal missed is not resurrected). Ports 48500-48599.

use std::collections::BTreeSet;

use berth::{Client, Protocol, Token};
use berth_testkit::TestDaemon;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        count: u16,
        held: bool,
    },
    AcquireBoth {
        count: u16,
    },
    Release(usize),
    /// The store fails from the n-th write on.
    FailAfter(u32),
    Heal,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u16..4, any::<bool>()).prop_map(|(count, held)| Op::Acquire { count, held }),
        1 => (1u16..3).prop_map(|count| Op::AcquireBoth { count }),
        3 => (0usize..8).prop_map(Op::Release),
        1 => (0u32..3).prop_map(Op::FailAfter),
        1 => Just(Op::Heal),
    ]
}

/// Runs `ops`, restarts, and returns (tokens the client holds, tokens the new daemon lists).
async fn run(ops: Vec<Op>) -> (BTreeSet<Token>, BTreeSet<Token>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let daemon = TestDaemon::with_db(&db, 48500, 48599, |_| {});
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let mut held = Vec::new();
    for op in ops {
        match op {
            Op::Acquire { count, held: hold } => {
                let got = if hold {
                    client.acquire(Protocol::Tcp, 0, count).await
                } else {
                    client.acquire_unheld(Protocol::Udp, 0, count).await
                };
                if let Ok(r) = got {
                    held.push(r);
                }
            }
            Op::AcquireBoth { count } => {
                if let Ok((tcp, udp)) = client.acquire_same_ports(0, count).await {
                    held.push(tcp);
                    held.push(udp);
                }
            }
            Op::Release(i) => {
                if !held.is_empty() {
                    let r = held.remove(i % held.len());
                    // A release cannot be refused, failing store or not.
                    r.release().await.unwrap();
                }
            }
            Op::FailAfter(n) => daemon.fail_store_after(n),
            Op::Heal => daemon.fail_store(false),
        }
    }
    daemon.fail_store(false);
    let expected: BTreeSet<Token> = held.iter().map(berth::Reservation::token).collect();
    // The handles must not release anything while the daemon restarts.
    std::mem::forget(held);
    daemon.shutdown().await;
    let daemon = TestDaemon::with_db(&db, 48500, 48599, |_| {});
    let admin = Client::connect_to(&daemon.socket).await.unwrap();
    let listed = admin
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.token)
        .collect();
    drop(client);
    daemon.shutdown().await;
    (expected, listed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_journal_holds_exactly_what_the_client_was_told(
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (expected, listed) = rt.block_on(run(ops));
        prop_assert_eq!(expected, listed);
    }
}
