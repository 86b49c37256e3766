//! Durability of persistent reservations under `kill -9` (docs/persistent.md, "Durability"):
//! round after round, a thread streams persistent creates and deletes at the daemon while the
//! test SIGKILLs it at a pseudo-random moment; a new daemon on the same database must then
//! hold every acknowledged create not deleted since (with its token), none of the
//! acknowledged deletes, and nothing else — the one request in flight at the kill may have
//! happened or not.
//!
//! Ports: pool 23990-23999; persistent blocks from 23000 up (below the host's ephemeral range,
//! apart from the other test files).

use crate::support;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::{Allow, ErrorKind, Kind, Protocol, Token};
use serde_json::Value;
use support::{Daemon, DEADLINE};

/// Rounds of stream-then-kill.
const ROUNDS: u32 = 32;
/// Rounds always run, even when the time budget is spent.
const MIN_ROUNDS: u32 = 8;
/// No new round starts after this much time (a slow machine runs fewer rounds).
const BUDGET: Duration = Duration::from_secs(20);
/// Persistent reservations the stream keeps before it deletes the oldest.
const KEEP: usize = 3;
/// Requests one round's stream makes at most (the kill ends it long before).
const MAX_OPS: usize = 400;
/// The first port of the blocks; block `i` starts at `FIRST_PORT + STRIDE * i`.
const FIRST_PORT: u16 = 23000;
const STRIDE: u16 = 4;
/// Blocks that fit below 32768 (the usual start of the ephemeral range).
const MAX_BLOCKS: u32 = 2000;

/// A persistent block: protocol and exact range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Block {
    protocol: Protocol,
    start: u16,
    count: u16,
}

impl Block {
    /// Block number `i`: TCP and UDP in turn, 1 to 3 ports, never overlapping another.
    fn nth(i: u32) -> Block {
        assert!(i < MAX_BLOCKS, "block {i} would reach the ephemeral range");
        let i16 = u16::try_from(i).expect("a small block number");
        Block {
            protocol: if i.is_multiple_of(2) {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            start: FIRST_PORT + STRIDE * i16,
            count: 1 + i16 % 3,
        }
    }
}

/// One request of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create(Block),
    Delete(Block),
}

/// What one round's stream did.
#[derive(Debug)]
struct Stream {
    /// Acknowledged requests in order, with the token each answer named.
    acked: Vec<(Op, Token)>,
    /// The request that failed because the daemon died, if any.
    in_flight: Option<Op>,
    /// How it failed.
    error: Option<berth::Error>,
}

/// Streams requests on `client` until one fails (the daemon died) or [`MAX_OPS`]: creates
/// block after block from `next`, deleting the oldest of `present` whenever more than
/// [`KEEP`] are there. Counts acknowledgements in `acks`.
fn stream(
    client: &berth::blocking::Client,
    mut present: VecDeque<Block>,
    mut next: u32,
    acks: &AtomicUsize,
) -> Stream {
    let mut acked = Vec::new();
    let none = Allow::default();
    while acked.len() < MAX_OPS {
        let op = if present.len() > KEEP {
            Op::Delete(*present.front().expect("present is not empty"))
        } else {
            Op::Create(Block::nth(next))
        };
        let answer = match op {
            Op::Create(b) => client.create_persistent(b.protocol, b.start, b.count, &none),
            Op::Delete(b) => client.delete_persistent(b.protocol, b.start, b.count),
        };
        match answer {
            Ok(info) => {
                match op {
                    Op::Create(b) => {
                        present.push_back(b);
                        next += 1;
                    }
                    Op::Delete(_) => {
                        present.pop_front();
                    }
                }
                acked.push((op, info.token));
                acks.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                return Stream {
                    acked,
                    in_flight: Some(op),
                    error: Some(e),
                }
            }
        }
    }
    Stream {
        acked,
        in_flight: None,
        error: None,
    }
}

/// A small deterministic generator (xorshift64*), so that every run kills at the same points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The persistent reservations the daemon on `d` holds, by block, per its Rust API; checks
/// each with a lookup too.
fn observed(d: &Daemon) -> BTreeMap<Block, Token> {
    let client = berth::blocking::Client::connect_to_with(
        d.socket(),
        berth::Options::default().reconnect_window(Duration::ZERO),
    )
    .expect("connect to the restarted daemon");
    let mut found = BTreeMap::new();
    for r in client.list_persistent().expect("list_persistent") {
        assert_eq!(r.kind, Kind::Persistent);
        assert!(r.owner.is_none(), "{r:?}");
        let block = Block {
            protocol: r.protocol,
            start: r.range.start(),
            count: r.range.count(),
        };
        let looked_up = client
            .lookup_persistent(block.protocol, block.start, block.count)
            .expect("lookup of a listed reservation");
        assert_eq!(looked_up, r.token, "lookup and list disagree on {block:?}");
        assert!(
            found.insert(block, r.token).is_none(),
            "{block:?} listed twice"
        );
    }
    // Nothing runtime is left either (the stream made none).
    let all = client.list().expect("list");
    assert_eq!(all.len(), found.len(), "{all:?}");
    found
}

#[test]
fn acknowledged_persistent_changes_survive_kill_9() {
    let began = Instant::now();
    // A bound on the loop's length, not a timing assertion: the rounds stop at this moment.
    let budget_ends = began + BUDGET;
    let mut d = Daemon::start("23990-23999");
    let mut rng = Rng(0x6265_7274_685f_6b39); // "berth_k9"
                                              // The model: what the daemon must hold, oldest first, with tokens.
    let mut model: BTreeMap<Block, Token> = BTreeMap::new();
    let mut order: VecDeque<Block> = VecDeque::new();
    let mut next: u32 = 0;
    let (mut rounds, mut in_flight_happened, mut in_flight_total) = (0u32, 0u32, 0u32);
    let mut acked_total = 0usize;

    while rounds < ROUNDS && (rounds < MIN_ROUNDS || Instant::now() < budget_ends) {
        rounds += 1;
        let target = usize::try_from(rng.between(1, 12)).expect("small");
        let jitter = Duration::from_micros(rng.between(0, 3000));
        let client = berth::blocking::Client::connect_to_with(
            d.socket(),
            berth::Options::default().reconnect_window(Duration::ZERO),
        )
        .expect("connect");
        let acks = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (present, acks) = (order.clone(), acks.clone());
            std::thread::spawn(move || stream(&client, present, next, &acks))
        };
        // A tight poll (the stream makes a request every few milliseconds), with a deadline.
        let deadline = Instant::now() + DEADLINE;
        while acks.load(Ordering::SeqCst) < target && !worker.is_finished() {
            assert!(
                Instant::now() < deadline,
                "round {rounds}: {target} acknowledgements not within {DEADLINE:?}; log:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        // Lands the kill at varying points of a request: reading, committing, answering.
        std::thread::sleep(jitter);
        d.kill9();
        let s = worker.join().expect("the stream thread panicked");
        let error = s
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("round {rounds}: the stream ended without a failure: {s:?}"));
        // The daemon's death, not a refusal: the model says every request was valid.
        assert_eq!(
            error.kind(),
            ErrorKind::Unavailable,
            "round {rounds}: {error} ({s:?})"
        );
        assert!(s.acked.len() >= target, "round {rounds}: {s:?}");

        // Apply the acknowledged requests to the model.
        for &(op, token) in &s.acked {
            match op {
                Op::Create(b) => {
                    assert!(model.insert(b, token).is_none(), "{b:?} created twice");
                    order.push_back(b);
                    next += 1;
                }
                Op::Delete(b) => {
                    assert_eq!(model.remove(&b), Some(token), "deleted {b:?}: wrong token");
                    assert_eq!(order.pop_front(), Some(b));
                }
            }
        }
        acked_total += s.acked.len();

        d.restart();
        let mut found = observed(&d);
        // The request in flight may have happened or not; then the model follows the daemon.
        let in_flight = s.in_flight.expect("a failure names its request");
        in_flight_total += 1;
        match in_flight {
            Op::Create(b) => {
                if let Some(token) = found.get(&b) {
                    in_flight_happened += 1;
                    model.insert(b, *token);
                    order.push_back(b);
                }
                // Used or not, the block is never offered again.
                next += 1;
            }
            Op::Delete(b) => {
                if !found.contains_key(&b) {
                    in_flight_happened += 1;
                    model.remove(&b);
                    assert_eq!(order.pop_front(), Some(b));
                }
            }
        }
        // Every acknowledged create not deleted is there with its token; every acknowledged
        // delete is gone; nothing else is there.
        for (block, token) in &model {
            match found.remove(block) {
                Some(t) => assert_eq!(
                    t, *token,
                    "round {rounds}: {block:?} came back with another token"
                ),
                None => panic!(
                    "round {rounds}: acknowledged {block:?} ({token}) lost after kill -9; \
                     stream {s:?}\nlog:\n{}",
                    d.log()
                ),
            }
        }
        assert!(
            found.is_empty(),
            "round {rounds}: the daemon holds reservations never acknowledged nor in flight: \
             {found:?}; stream {s:?}"
        );
    }

    // The command line agrees with the model at the end.
    let out = d.berth(["persistent", "list", "--json"]).output().code(0);
    let rows = match out.json() {
        Value::Array(rows) => rows,
        other => panic!("not an array: {other}"),
    };
    let listed: BTreeMap<(String, u64), String> = rows
        .iter()
        .map(|r| {
            (
                (
                    r["protocol"].as_str().expect("protocol").to_owned(),
                    r["start"].as_u64().expect("start"),
                ),
                r["token"].as_str().expect("token").to_owned(),
            )
        })
        .collect();
    let expected: BTreeMap<(String, u64), String> = model
        .iter()
        .map(|(b, t)| {
            (
                (b.protocol.as_str().to_owned(), u64::from(b.start)),
                t.to_string(),
            )
        })
        .collect();
    assert_eq!(listed, expected);
    assert!(rounds >= MIN_ROUNDS);
    eprintln!(
        "{rounds} rounds, {acked_total} acknowledged requests, {in_flight_happened} of \
         {in_flight_total} in-flight requests happened, {:?}",
        began.elapsed()
    );
}
