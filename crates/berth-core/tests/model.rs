//! Random operation sequences on a [`Table`], checked step by step against a naive model: one
//! flag per port per protocol, plus the set of ports "in use on the host".

// clippy's test allowances cover `#[test]` functions, not the model's helpers.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test: stopping loudly on a broken expectation is the point"
)]

use std::collections::{BTreeSet, HashSet};

use berth_core::{
    AcquireError, Holder, Owner, Pool, PortRange, Protocol, RangeRequest, ReleaseError, Requester,
    Reservation, SessionId, Table, Token,
};
use proptest::prelude::*;

const POOL_FIRST: u16 = 1000;
const POOL_LAST: u16 = 1199;
/// Ports the model tracks: the pool and a margin on either side for specific requests.
const LOW: u16 = 950;
const HIGH: u16 = 1250;

/// Where port `p` (LOW..=HIGH) sits in the model's arrays.
fn slot(p: u16) -> usize {
    usize::from(p - LOW)
}

/// Size of the model's arrays.
const SPAN: usize = (HIGH - LOW) as usize + 1;

fn owner(pid: u32, start_time: u64) -> Owner {
    Owner {
        pid,
        uid: pid,
        gid: pid,
        start_time,
        command: format!("p{pid}"),
    }
}

/// Session `s` belongs to process `100 + s` started at tick 1.
fn session_owner(session: u8) -> Owner {
    owner(100 + u32::from(session), 1)
}

fn index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
}

/// Who asks for a release.
#[derive(Debug, Clone, Copy)]
enum Asker {
    Owner,
    /// Same pid, another start time: the pid was reused.
    Impostor,
    Stranger,
    Admin,
}

#[derive(Debug, Clone)]
enum Op {
    Specific(Protocol, u16, u16, u8),
    Wildcard(Protocol, u16, u8),
    Release(usize, Asker),
    ReleaseStale(usize),
    ReleaseSession(u8),
    ToggleInUse(Protocol, Vec<u16>),
}

fn op() -> impl Strategy<Value = Op> {
    let asker = prop_oneof![
        3 => Just(Asker::Owner),
        1 => Just(Asker::Impostor),
        1 => Just(Asker::Stranger),
        1 => Just(Asker::Admin),
    ];
    let wildcard_count = prop_oneof![8 => 1u16..12, 2 => 12u16..60, 1 => 190u16..210];
    prop_oneof![
        4 => (protocol(), LOW..HIGH - 8, 1u16..8, 0u8..3)
            .prop_map(|(p, s, c, sess)| Op::Specific(p, s, c, sess)),
        6 => (protocol(), wildcard_count, 0u8..3).prop_map(|(p, c, s)| Op::Wildcard(p, c, s)),
        3 => (any::<usize>(), asker).prop_map(|(i, a)| Op::Release(i, a)),
        1 => any::<usize>().prop_map(Op::ReleaseStale),
        1 => (0u8..3).prop_map(Op::ReleaseSession),
        2 => (protocol(), prop::collection::vec(LOW - 10..HIGH + 10, 1..6))
            .prop_map(|(p, ports)| Op::ToggleInUse(p, ports)),
    ]
}

/// A token source that cycles through 0..512 (a full-period generator), so that it returns 0
/// and tokens of live reservations often; the table must redraw. 511 non-zero values are more
/// than the live reservations the test can make, so a free value always comes.
struct SmallTokens(u64);

impl SmallTokens {
    fn draw(&mut self) -> u64 {
        self.0 = (self.0 * 5 + 3) % 512;
        self.0
    }
}

struct Model {
    table: Table,
    tokens: SmallTokens,
    /// `reserved[protocol][slot(port)]`; ports outside LOW..=HIGH are never reserved.
    reserved: [Vec<bool>; 2],
    in_use: [BTreeSet<u16>; 2],
    /// Live reservations in the order they were made.
    live: Vec<Reservation>,
    released: Vec<Token>,
    /// Where the next wildcard search starts, per protocol.
    cursor: [u16; 2],
}

impl Model {
    fn new(seed: u64) -> Self {
        Model {
            table: Table::new(Pool::new(POOL_FIRST, POOL_LAST).unwrap()),
            tokens: SmallTokens(seed % 512),
            reserved: [vec![false; SPAN], vec![false; SPAN]],
            in_use: [BTreeSet::new(), BTreeSet::new()],
            live: Vec::new(),
            released: Vec::new(),
            cursor: [POOL_FIRST; 2],
        }
    }

    fn usable(&self, protocol: Protocol, start: u16, count: u16) -> bool {
        let i = index(protocol);
        (start..start + count).all(|p| !self.reserved[i][slot(p)] && !self.in_use[i].contains(&p))
    }

    /// The block next-fit must grant: the first usable start in ring order from the cursor.
    fn expected_wildcard(&self, protocol: Protocol, count: u16) -> Option<u16> {
        if count == 0 || count > POOL_LAST - POOL_FIRST + 1 {
            return None;
        }
        let cursor = self.cursor[index(protocol)];
        let last_start = POOL_LAST + 1 - count;
        (cursor..=last_start)
            .chain(POOL_FIRST..cursor.min(last_start + 1))
            .find(|&s| self.usable(protocol, s, count))
    }

    fn mark(&mut self, r: &Reservation, value: bool) {
        for p in r.range.ports() {
            let flag = &mut self.reserved[index(r.protocol)][slot(p)];
            assert_ne!(*flag, value, "port {p} of {r:?} flipped twice");
            *flag = value;
        }
    }

    fn acquire(&mut self, protocol: Protocol, request: RangeRequest, session: u8) {
        let holder = Holder {
            owner: session_owner(session),
            session: SessionId(u64::from(session)),
            acquired_at_ms: 5,
        };
        let in_use = &self.in_use[index(protocol)];
        let reserved = &self.reserved[index(protocol)];
        let mut probes: Vec<PortRange> = Vec::new();
        let mut probe = |p: Protocol, r: PortRange| {
            assert_eq!(p, protocol);
            probes.push(r);
            r.ports().find(|port| in_use.contains(port))
        };
        let tokens = &mut self.tokens;
        let mut source = || tokens.draw();
        let result = self
            .table
            .acquire(protocol, request, holder, &mut source, &mut probe);

        let is_wildcard = matches!(request, RangeRequest::Wildcard { .. });
        if is_wildcard {
            // Every candidate offered to the probe was unreserved and inside the pool, and the
            // search visited each start at most once.
            assert!(probes.len() <= usize::from(POOL_LAST - POOL_FIRST + 1));
            for r in &probes {
                assert!(
                    r.start() >= POOL_FIRST && r.end() <= POOL_LAST,
                    "{r} off pool"
                );
                assert!(r.ports().all(|p| !reserved[slot(p)]), "{r} reserved");
            }
        }

        let expected: Result<PortRange, AcquireError> = match request {
            RangeRequest::Specific(range) => self.expected_specific(protocol, range),
            RangeRequest::Wildcard { count } => self
                .expected_wildcard(protocol, count)
                .map(|s| PortRange::new(s, count).unwrap())
                .ok_or(AcquireError::PoolExhausted {
                    protocol,
                    count,
                    pool: Pool::new(POOL_FIRST, POOL_LAST).unwrap(),
                }),
        };
        match (result, expected) {
            (Ok(granted), Ok(range)) => {
                assert_eq!(granted.range, range);
                assert_eq!(granted.protocol, protocol);
                assert!(self.usable(protocol, range.start(), range.count()));
                assert!(self.live.iter().all(|r| r.token != granted.token));
                self.mark(&granted, true);
                if is_wildcard {
                    self.cursor[index(protocol)] = if range.end() == POOL_LAST {
                        POOL_FIRST
                    } else {
                        range.end() + 1
                    };
                }
                self.live.push(granted);
            }
            (Err(got), Err(want)) => assert_eq!(got, want),
            (got, want) => panic!("{request:?}: table gave {got:?}, model expected {want:?}"),
        }
    }

    fn expected_specific(
        &self,
        protocol: Protocol,
        range: PortRange,
    ) -> Result<PortRange, AcquireError> {
        let lowest = self
            .live
            .iter()
            .filter(|r| r.protocol == protocol && r.range.overlaps(range))
            .min_by_key(|r| r.range.start());
        if let Some(holder) = lowest {
            return Err(AcquireError::Conflict {
                protocol,
                requested: range,
                holder: Box::new(holder.clone()),
            });
        }
        match range
            .ports()
            .find(|p| self.in_use[index(protocol)].contains(p))
        {
            Some(port) => Err(AcquireError::InUse {
                protocol,
                requested: range,
                port,
            }),
            None => Ok(range),
        }
    }

    fn release(&mut self, pick: usize, asker: Asker) {
        if self.live.is_empty() {
            return;
        }
        let i = pick % self.live.len();
        let r = self.live[i].clone();
        let owner = r.owner.clone().unwrap();
        let (process, is_admin) = match asker {
            Asker::Owner => (owner.clone(), false),
            Asker::Impostor => (
                Owner {
                    start_time: owner.start_time + 1,
                    ..owner.clone()
                },
                false,
            ),
            Asker::Stranger => (session_owner(7), false),
            Asker::Admin => (session_owner(8), true),
        };
        let before = self.table.reserved_ports(r.protocol);
        let result = self
            .table
            .release(r.token, &Requester { process, is_admin });
        match asker {
            Asker::Owner | Asker::Admin => {
                assert_eq!(result, Ok(r.clone()));
                let after = self.table.reserved_ports(r.protocol);
                assert_eq!(after + u32::from(r.range.count()), before);
                self.mark(&r, false);
                self.live.remove(i);
                self.released.push(r.token);
            }
            Asker::Impostor | Asker::Stranger => {
                assert_eq!(result, Err(ReleaseError::PermissionDenied(Box::new(r))));
            }
        }
    }

    fn release_stale(&mut self, pick: usize) {
        if self.released.is_empty() {
            return;
        }
        let token = self.released[pick % self.released.len()];
        if self.live.iter().any(|r| r.token == token) {
            return; // The small token source handed it out again.
        }
        let admin = Requester {
            process: session_owner(8),
            is_admin: true,
        };
        assert_eq!(
            self.table.release(token, &admin),
            Err(ReleaseError::NotFound(token))
        );
    }

    fn release_session(&mut self, session: u8) {
        let id = SessionId(u64::from(session));
        let got = self.table.release_session(id);
        let (gone, kept): (Vec<_>, Vec<_>) =
            self.live.drain(..).partition(|r| r.session == Some(id));
        self.live = kept;
        let mut want = gone;
        want.sort_by_key(|r| (r.protocol, r.range.start()));
        assert_eq!(got, want);
        for r in &want {
            self.mark(r, false);
            self.released.push(r.token);
        }
    }

    fn toggle(&mut self, protocol: Protocol, ports: Vec<u16>) {
        let set = &mut self.in_use[index(protocol)];
        for p in ports {
            if !set.remove(&p) {
                set.insert(p);
            }
        }
    }

    /// The invariants that hold between any two steps.
    fn check(&self) {
        assert_eq!(self.table.len(), self.live.len());
        let tokens: HashSet<Token> = self.table.iter().map(|r| r.token).collect();
        assert_eq!(tokens.len(), self.live.len(), "tokens not unique");
        for protocol in Protocol::ALL {
            let i = index(protocol);
            let mine: Vec<&Reservation> = self
                .table
                .iter()
                .filter(|r| r.protocol == protocol)
                .collect();
            // Ordered by start and disjoint: no port in two reservations.
            for pair in mine.windows(2) {
                assert!(
                    pair[0].range.end() < pair[1].range.start(),
                    "{pair:?} overlap"
                );
            }
            let mut seen = vec![false; SPAN];
            for r in &mine {
                assert!(
                    r.range.start() >= LOW && r.range.end() <= HIGH,
                    "{r:?} off the model"
                );
                for p in r.range.ports() {
                    seen[slot(p)] = true;
                }
            }
            assert!(
                seen == self.reserved[i],
                "table and model disagree on {protocol}"
            );
            let count = self.reserved[i].iter().filter(|&&b| b).count();
            assert_eq!(self.table.reserved_ports(protocol) as usize, count);
            for p in LOW..=HIGH {
                let holder = self.table.find_port(protocol, p);
                assert_eq!(holder.is_some(), self.reserved[i][slot(p)]);
                assert!(holder.is_none_or(|r| r.range.contains(p)));
            }
        }
        for r in &self.live {
            assert_eq!(self.table.get(r.token), Some(r));
        }
        let order: Vec<_> = self
            .table
            .iter()
            .map(|r| (r.protocol, r.range.start()))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn table_matches_model(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..120)) {
        let mut model = Model::new(seed);
        for op in ops {
            match op {
                Op::Specific(p, start, count, session) => {
                    let range = PortRange::new(start, count).unwrap();
                    model.acquire(p, RangeRequest::Specific(range), session);
                }
                Op::Wildcard(p, count, session) => {
                    model.acquire(p, RangeRequest::Wildcard { count }, session);
                }
                Op::Release(pick, asker) => model.release(pick, asker),
                Op::ReleaseStale(pick) => model.release_stale(pick),
                Op::ReleaseSession(s) => model.release_session(s),
                Op::ToggleInUse(p, ports) => model.toggle(p, ports),
            }
            model.check();
        }
    }
}

/// A source that first returns 0 and then tokens of live reservations: the table redraws.
#[test]
fn zero_and_duplicate_tokens_are_redrawn() {
    let mut table = Table::new(Pool::new(POOL_FIRST, POOL_LAST).unwrap());
    let mut script = vec![0, 0, 9, 0, 9, 9, 0, 10, 9, 10, 11].into_iter();
    let mut source = move || script.next().unwrap_or(12);
    let holder = Holder {
        owner: session_owner(0),
        session: SessionId(0),
        acquired_at_ms: 0,
    };
    let mut got = Vec::new();
    for _ in 0..4 {
        let r = table
            .acquire(
                Protocol::Tcp,
                RangeRequest::Wildcard { count: 1 },
                holder.clone(),
                &mut source,
                &mut |_, _| None,
            )
            .unwrap();
        got.push(r.token.get());
    }
    assert_eq!(got, [9, 10, 11, 12]);
}
