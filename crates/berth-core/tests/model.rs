//! Random operation sequences on a [`Table`], checked step by step against a naive model: one
//! flag per port per protocol, the live reservations in a list, the set of ports "in use on the
//! host", and per-user usage counted from scratch.
//!
//! A run starts by restoring a random set of journaled rows (persistent, unclaimed and
//! process-bound; some overlapping, some capped), then applies random operations: acquires
//! (held or not) under random constraints (lowest port, quota, the shared range's cap),
//! moving the shared range, releases, session ends, owners exiting, the grace period
//! ending, re-claims, transfers, persistent creation and deletion, and reverting the previous
//! operation's change. For each, the model computes the exact result (the changes or the error)
//! and the table must return it; after each, the table and the model must agree.

#![forbid(unsafe_code)]
// clippy's test allowances cover `#[test]` functions, not the model's helpers.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test: stopping loudly on a broken expectation is the point"
)]

use std::collections::{BTreeSet, HashSet};

use berth_core::{
    AcquireError, Allowed, Bond, Change, Constraints, Ending, Holder, Kind, Lease, Owner, Pool,
    PortRange, PrivilegedDenied, Protocol, Quota, QuotaKind, RangeRequest, ReleaseError, Requester,
    Reservation, SessionId, Table, Token, Usage, UseError,
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

fn pool() -> Pool {
    Pool::new(POOL_FIRST, POOL_LAST).unwrap()
}

/// Process `pid` started at tick `start_time`; its user and group ids are its pid, so usage is
/// per process here and moves when a reservation is handed on.
fn owner(pid: u32, start_time: u64) -> Owner {
    Owner {
        pid,
        uid: pid,
        gid: pid,
        start_time,
        command: format!("p{pid}").into(),
    }
}

/// Session `s` belongs to process `100 + s` started at tick 1. Journaled rows belong to
/// processes 100..105 (so some are re-claimed by a session's process), transfers go to
/// processes 200..203.
fn session_owner(session: u8) -> Owner {
    owner(100 + u32::from(session), 1)
}

/// Every uid the model can produce.
fn uids() -> impl Iterator<Item = u32> {
    (100..=108).chain(200..=203)
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

/// Who asks for an operation on an existing reservation.
#[derive(Debug, Clone, Copy)]
enum Asker {
    Owner,
    /// Same pid, another start time: the pid was reused.
    Impostor,
    Stranger,
    Admin,
}

fn asker() -> impl Strategy<Value = Asker> {
    prop_oneof![
        3 => Just(Asker::Owner),
        1 => Just(Asker::Impostor),
        1 => Just(Asker::Stranger),
        1 => Just(Asker::Admin),
    ]
}

/// What a journaled row at start-up is.
#[derive(Debug, Clone, Copy)]
enum RowKind {
    Persistent,
    Unclaimed,
    Process,
}

/// A row of the store as a restarted daemon reads it.
#[derive(Debug, Clone)]
struct Row {
    token: u64,
    protocol: Protocol,
    start: u16,
    count: u16,
    kind: RowKind,
    /// Owner: process `100 + pid`.
    pid: u8,
}

fn row() -> impl Strategy<Value = Row> {
    let kind = prop_oneof![
        1 => Just(RowKind::Persistent),
        2 => Just(RowKind::Unclaimed),
        1 => Just(RowKind::Process),
    ];
    // Tokens from a small set so that some rows share one.
    (1u64..48, protocol(), LOW..HIGH - 8, 1u16..8, kind, 0u8..5).prop_map(
        |(token, protocol, start, count, kind, pid)| Row {
            token,
            protocol,
            start,
            count,
            kind,
            pid,
        },
    )
}

#[derive(Debug, Clone)]
enum Op {
    /// Protocol, start, count, session, hold, constraints.
    Specific(Protocol, u16, u16, u8, bool, Constraints),
    /// Protocol, count, session, hold, constraints.
    Wildcard(Protocol, u16, u8, bool, Constraints),
    /// Protocol, count, bounds (first, last; inside the pool, across its edges or outside),
    /// session, hold, constraints.
    Within(Protocol, u16, (u16, u16), u8, bool, Constraints),
    /// Move (or drop) the shared range.
    SetShared(Option<(u16, u16)>),
    Release(usize, Asker),
    ReleaseStale(usize),
    ReleaseSession(u8),
    ToggleInUse(Protocol, Vec<u16>),
    CreatePersistent(Protocol, u16, u16),
    /// Delete the persistent reservation picked (if `true` and there is one), else the range.
    DeletePersistent(usize, bool, Protocol, u16, u16),
    /// Re-claim the reservation picked on a session.
    Reclaim(usize, Asker, u8),
    /// Hand the reservation picked to process `200 + k`.
    Transfer(usize, Asker, u8),
    /// Process `pid` (start time 1, or 2 for another process with the pid) exited.
    OwnerExited(u32, bool),
    ReleaseUnclaimed,
    /// Undo the last change the previous operation made.
    RevertLast,
    /// Mark the port at this offset from the start of the reservation picked bound, or free
    /// again (`true`); offsets outside the block included.
    NoteBound(usize, i16, bool),
}

fn constraints() -> impl Strategy<Value = Constraints> {
    let lowest = prop_oneof![4 => Just(0u16), 1 => LOW..HIGH];
    let quota = prop_oneof![
        3 => Just(None),
        1 => (0u32..6, 0u32..60, 0u32..40).prop_map(|(max_reservations, max_ports, max_held_ports)| Some(Quota {
            max_reservations,
            max_ports,
            max_held_ports,
        })),
    ];
    let shared_max = prop_oneof![1 => Just(None), 1 => (0u32..30).prop_map(Some)];
    (lowest, quota, shared_max).prop_map(|(lowest_port, quota, shared_max)| Constraints {
        lowest_port,
        quota,
        shared_max,
    })
}

fn op() -> impl Strategy<Value = Op> {
    let wildcard_count = prop_oneof![8 => 1u16..12, 2 => 12u16..60, 1 => 190u16..210];
    let exited = prop_oneof![100u32..105, 200u32..203];
    prop_oneof![
        4 => (protocol(), LOW..HIGH - 8, 1u16..8, 0u8..3, any::<bool>(), constraints())
            .prop_map(|(p, s, c, sess, h, k)| Op::Specific(p, s, c, sess, h, k)),
        6 => (protocol(), wildcard_count, 0u8..3, any::<bool>(), constraints())
            .prop_map(|(p, c, s, h, k)| Op::Wildcard(p, c, s, h, k)),
        3 => (protocol(), 1u16..8, (LOW..HIGH - 8, 0u16..60), 0u8..3, any::<bool>(), constraints())
            .prop_map(|(p, c, (lo, len), s, h, k)| {
                Op::Within(p, c, (lo, lo.saturating_add(len).max(lo + c - 1).min(HIGH)), s, h, k)
            }),
        3 => prop::option::of((LOW..HIGH, 0u16..120))
            .prop_map(|r| Op::SetShared(r.map(|(lo, len)| (lo, lo.saturating_add(len).min(HIGH))))),
        3 => (any::<usize>(), asker()).prop_map(|(i, a)| Op::Release(i, a)),
        1 => any::<usize>().prop_map(Op::ReleaseStale),
        1 => (0u8..3).prop_map(Op::ReleaseSession),
        2 => (protocol(), prop::collection::vec(LOW - 10..HIGH + 10, 1..6))
            .prop_map(|(p, ports)| Op::ToggleInUse(p, ports)),
        1 => (protocol(), LOW..HIGH - 8, 1u16..8)
            .prop_map(|(p, s, c)| Op::CreatePersistent(p, s, c)),
        1 => (any::<usize>(), any::<bool>(), protocol(), LOW..HIGH - 8, 1u16..8)
            .prop_map(|(i, pick, p, s, c)| Op::DeletePersistent(i, pick, p, s, c)),
        2 => (any::<usize>(), asker(), 0u8..3).prop_map(|(i, a, s)| Op::Reclaim(i, a, s)),
        2 => (any::<usize>(), asker(), 0u8..3).prop_map(|(i, a, k)| Op::Transfer(i, a, k)),
        1 => (exited, any::<bool>()).prop_map(|(pid, other)| Op::OwnerExited(pid, other)),
        1 => Just(Op::ReleaseUnclaimed),
        2 => Just(Op::RevertLast),
        3 => (any::<usize>(), -3i16..12, any::<bool>()).prop_map(|(i, o, u)| Op::NoteBound(i, o, u)),
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

/// `r` ordered as the table orders the changes of a bulk release.
fn by_place(mut rs: Vec<Reservation>) -> Vec<Reservation> {
    rs.sort_by_key(|r| (r.protocol, r.range.start()));
    rs
}

fn ended(rs: Vec<Reservation>, why: Ending) -> Vec<Change> {
    rs.into_iter()
        .map(|reservation| Change::Released { reservation, why })
        .collect()
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
    /// The last change of the previous operation, for [`Op::RevertLast`].
    last: Option<Change>,
    /// Live reservations that count against the shared range's cap.
    capped: HashSet<Token>,
    /// The shared range.
    shared: Option<PortRange>,
}

impl Model {
    /// A table that restored `rows` at start-up, in order.
    fn new(seed: u64, rows: &[Row]) -> Self {
        let mut model = Model {
            table: Table::new(pool()),
            tokens: SmallTokens(seed % 512),
            reserved: [vec![false; SPAN], vec![false; SPAN]],
            in_use: [BTreeSet::new(), BTreeSet::new()],
            live: Vec::new(),
            released: Vec::new(),
            cursor: [POOL_FIRST; 2],
            last: None,
            capped: HashSet::new(),
            shared: None,
        };
        for row in rows {
            model.restore(row);
            model.check();
        }
        model.last = None;
        model
    }

    fn find(&self, token: Token) -> Option<&Reservation> {
        self.live.iter().find(|r| r.token == token)
    }

    /// The live reservation of `protocol` overlapping `range` that starts lowest.
    fn lowest_overlap(&self, protocol: Protocol, range: PortRange) -> Option<&Reservation> {
        self.live
            .iter()
            .filter(|r| r.protocol == protocol && r.range.overlaps(range))
            .min_by_key(|r| r.range.start())
    }

    /// `uid`'s usage counted from scratch: a TCP+UDP twin (same ports, same process) is one
    /// reservation, a port number held in both protocols one port, held ports summed.
    fn usage(&self, uid: u32) -> Usage {
        let mine: Vec<&Reservation> = self
            .live
            .iter()
            .filter(|r| r.owner().is_some_and(|o| o.uid == uid))
            .collect();
        let twins = mine
            .iter()
            .filter(|r| {
                r.protocol == Protocol::Udp
                    && mine.iter().any(|t| {
                        t.protocol == Protocol::Tcp
                            && t.range == r.range
                            && t.owner().unwrap().same_process(r.owner().unwrap())
                    })
            })
            .count();
        let numbers: BTreeSet<u16> = mine.iter().flat_map(|r| r.range.ports()).collect();
        Usage {
            reservations: u32::try_from(mine.len() - twins).unwrap(),
            ports: u32::try_from(numbers.len()).unwrap(),
            held_ports: mine
                .iter()
                .filter(|r| r.held())
                .map(|r| u32::from(r.range.count()))
                .sum(),
        }
    }

    /// Numbers of the shared range held by capped reservations, counted from scratch.
    fn shared_used(&self) -> u32 {
        let Some(shared) = self.shared else {
            return 0;
        };
        let numbers: BTreeSet<u16> = self
            .live
            .iter()
            .filter(|r| self.capped.contains(&r.token))
            .flat_map(|r| r.range.ports())
            .filter(|p| shared.contains(*p))
            .collect();
        u32::try_from(numbers.len()).unwrap()
    }

    /// The refusal of the shared cap, if a capped grant of `range` in `protocol` would exceed
    /// it: what it adds is its numbers in the shared range that no capped reservation of the
    /// other protocol holds (the same protocol's would be a conflict).
    fn over_shared(
        &self,
        protocol: Protocol,
        range: PortRange,
        uid: u32,
        k: Constraints,
    ) -> Option<AcquireError> {
        let max = k.shared_max?;
        let shared = self.shared?;
        let taken: BTreeSet<u16> = self
            .live
            .iter()
            .filter(|r| r.protocol != protocol && self.capped.contains(&r.token))
            .flat_map(|r| r.range.ports())
            .collect();
        let more = range
            .ports()
            .filter(|p| shared.contains(*p) && !taken.contains(p))
            .count();
        let more = u32::try_from(more).unwrap();
        let used = self.shared_used();
        (more > 0 && used + more > max).then_some(AcquireError::QuotaExceeded {
            uid,
            what: QuotaKind::Shared,
            limit: max,
            used,
            asked: range.count(),
        })
    }

    fn usable(&self, protocol: Protocol, start: u16, count: u16) -> bool {
        let i = index(protocol);
        (start..start + count).all(|p| !self.reserved[i][slot(p)] && !self.in_use[i].contains(&p))
    }

    /// The block next-fit must grant: the first usable start at or above `lowest` in ring order
    /// from the cursor.
    fn expected_wildcard(&self, protocol: Protocol, count: u16, lowest: u16) -> Option<u16> {
        if count == 0 || count > POOL_LAST - POOL_FIRST + 1 {
            return None;
        }
        let cursor = self.cursor[index(protocol)];
        let last_start = POOL_LAST + 1 - count;
        (cursor..=last_start)
            .chain(POOL_FIRST..cursor.min(last_start + 1))
            .find(|&s| s >= lowest && self.usable(protocol, s, count))
    }

    /// The block a bounded wildcard must get: the first usable start at or above `lowest` in
    /// ring order over `bounds`, from the cursor when it lies in them, else from their start.
    fn expected_within(
        &self,
        protocol: Protocol,
        count: u16,
        bounds: PortRange,
        lowest: u16,
    ) -> Option<u16> {
        let cursor = self.cursor[index(protocol)];
        let from = if bounds.contains(cursor) {
            cursor
        } else {
            bounds.start()
        };
        let last_start = (bounds.end() + 1).checked_sub(count)?;
        (from..=last_start)
            .chain(bounds.start()..from.min(last_start + 1))
            .find(|&s| s >= lowest && self.usable(protocol, s, count))
    }

    /// Unreserved ports of the pool.
    fn free_in_pool(&self, protocol: Protocol) -> u32 {
        let reserved = (POOL_FIRST..=POOL_LAST)
            .filter(|&p| self.reserved[index(protocol)][slot(p)])
            .count();
        u32::try_from(usize::from(POOL_LAST - POOL_FIRST + 1) - reserved).unwrap()
    }

    fn mark(&mut self, r: &Reservation, value: bool) {
        for p in r.range.ports() {
            let flag = &mut self.reserved[index(r.protocol)][slot(p)];
            assert_ne!(*flag, value, "port {p} of {r:?} flipped twice");
            *flag = value;
        }
    }

    /// Applies changes the table was expected to make, and which it made, to the model.
    fn commit(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::Granted(r) | Change::Restored(r) | Change::PersistentCreated(r) => {
                    assert!(self.find(r.token).is_none(), "{change:?}: token live");
                    self.mark(r, true);
                    self.live.push(r.clone());
                }
                Change::Released { reservation: r, .. } | Change::PersistentDeleted(r) => {
                    let i = self.live.iter().position(|l| l == r).unwrap();
                    self.live.remove(i);
                    self.capped.remove(&r.token);
                    self.mark(r, false);
                    self.released.push(r.token);
                }
                Change::Rebound { before, after } => {
                    let i = self.live.iter().position(|l| l == before).unwrap();
                    self.live[i] = after.clone();
                }
                Change::NotRestored { .. } => {}
            }
        }
        self.last = changes.last().cloned();
    }

    fn restore(&mut self, row: &Row) {
        let range = PortRange::new(row.start, row.count).unwrap();
        let runtime = |bond| Lease::Runtime {
            owner: owner(100 + u32::from(row.pid), 1),
            bond,
            held: false,
        };
        let lease = match row.kind {
            RowKind::Persistent => Lease::Persistent {
                allowed: Allowed::default(),
                created_by: 0,
            },
            RowKind::Unclaimed => runtime(Bond::Unclaimed),
            RowKind::Process => runtime(Bond::Process),
        };
        let reservation = Reservation {
            token: Token::new(row.token).unwrap(),
            protocol: row.protocol,
            range,
            acquired_at_ms: 3,
            lease,
            label: None,
            name: None,
        };
        let in_the_way = self
            .find(reservation.token)
            .or_else(|| self.lowest_overlap(row.protocol, range))
            .cloned();
        let expected = match (in_the_way, reservation.kind()) {
            (None, _) => Ok(Change::Restored(reservation.clone())),
            (Some(_), Kind::Runtime) => Ok(Change::NotRestored {
                token: reservation.token,
                protocol: row.protocol,
                range,
            }),
            (Some(holder), Kind::Persistent) => Err(AcquireError::Conflict {
                protocol: row.protocol,
                requested: range,
                holder: Box::new(holder),
            }),
        };
        // Half the journaled owners are capped.
        let capped = row.pid.is_multiple_of(2);
        let got = self.table.restore(reservation, capped);
        assert_eq!(got, expected, "{row:?}");
        if let Ok(Change::Restored(r)) = &got {
            if capped && r.kind() == Kind::Runtime {
                self.capped.insert(r.token);
            }
        }
        self.commit(&Vec::from_iter(got.ok()));
    }

    fn acquire(
        &mut self,
        protocol: Protocol,
        request: RangeRequest,
        session: u8,
        hold: bool,
        k: Constraints,
    ) {
        let holder = Holder {
            owner: session_owner(session),
            session: SessionId(u64::from(session)),
            acquired_at_ms: 5,
            hold,
            label: None,
            name: None,
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
        let result = self.table.acquire(
            protocol,
            request,
            holder.clone(),
            k,
            &mut source,
            &mut probe,
        );

        let is_wildcard = !matches!(request, RangeRequest::Specific(_));
        if is_wildcard {
            // Every candidate offered to the probe was unreserved, inside the pool (or the
            // bounds) and at or above the lowest port, and the search visited each start at
            // most once.
            let area = request.bounds().unwrap_or(pool().range());
            assert!(probes.len() <= usize::from(area.count()));
            for r in &probes {
                assert!(
                    r.start() >= area.start() && r.end() <= area.end(),
                    "{r} off {area}"
                );
                assert!(r.start() >= k.lowest_port, "{r} below {}", k.lowest_port);
                assert!(r.ports().all(|p| !reserved[slot(p)]), "{r} reserved");
            }
        }
        // Refusals decided before the search probe nothing (the shared cap of a wildcard
        // block is decided once it is placed).
        let placed_first = is_wildcard
            && matches!(
                result,
                Err(AcquireError::QuotaExceeded {
                    what: QuotaKind::Shared,
                    ..
                })
            );
        if !placed_first
            && matches!(
                result,
                Err(AcquireError::QuotaExceeded { .. } | AcquireError::Privileged(_))
            )
        {
            assert!(probes.is_empty(), "probed {probes:?} for a refused request");
        }

        let expected = self.expected_acquire(protocol, request, &holder.owner, hold, k);
        let expected = expected.map(|range| {
            // The token is the table's to draw: new and not live.
            let token = match &result {
                Ok(Change::Granted(r)) => r.token,
                other => panic!("{request:?}: table gave {other:?}, model expected {range}"),
            };
            Change::Granted(Reservation {
                token,
                protocol,
                range,
                acquired_at_ms: 5,
                lease: Lease::Runtime {
                    owner: holder.owner.clone(),
                    bond: Bond::Session(holder.session),
                    held: holder.hold,
                },
                label: None,
                name: None,
            })
        });
        assert_eq!(result, expected, "{request:?} under {k:?}");
        if let Ok(Change::Granted(r)) = &result {
            if k.shared_max.is_some() {
                self.capped.insert(r.token);
            }
            let in_pool = r.range.start() >= POOL_FIRST && r.range.end() <= POOL_LAST;
            if is_wildcard && (request.bounds().is_none() || in_pool) {
                self.cursor[index(protocol)] = if r.range.end() == POOL_LAST {
                    POOL_FIRST
                } else {
                    r.range.end() + 1
                };
            }
        }
        self.commit(&Vec::from_iter(result.ok()));
    }

    /// What an acquire must give: the block granted, or the error.
    fn expected_acquire(
        &self,
        protocol: Protocol,
        request: RangeRequest,
        who: &Owner,
        hold: bool,
        k: Constraints,
    ) -> Result<PortRange, AcquireError> {
        let (asked, uid) = (request.count(), who.uid);
        if let Some(quota) = k.quota {
            let used = self.usage(uid);
            // What the request adds: a specific one exactly, a wildcard one at most.
            let more = match request {
                RangeRequest::Specific(range) => {
                    let other = protocol.other();
                    let twin = self.live.iter().any(|r| {
                        r.protocol == other
                            && r.range == range
                            && r.owner().is_some_and(|o| o.same_process(who))
                    });
                    let theirs: BTreeSet<u16> = self
                        .live
                        .iter()
                        .filter(|r| r.protocol == other && r.owner().is_some_and(|o| o.uid == uid))
                        .flat_map(|r| r.range.ports())
                        .collect();
                    Usage {
                        reservations: u32::from(!twin),
                        ports: u32::try_from(range.ports().filter(|p| !theirs.contains(p)).count())
                            .unwrap(),
                        held_ports: if hold { u32::from(asked) } else { 0 },
                    }
                }
                RangeRequest::Wildcard { count } | RangeRequest::Within { count, .. } => Usage {
                    reservations: 1,
                    ports: u32::from(count),
                    held_ports: if hold { u32::from(count) } else { 0 },
                },
            };
            let over = |used: u32, more: u32, limit: u32| more > 0 && used + more > limit;
            let over = if over(used.reservations, more.reservations, quota.max_reservations) {
                Some((
                    QuotaKind::Reservations,
                    quota.max_reservations,
                    used.reservations,
                ))
            } else if over(used.ports, more.ports, quota.max_ports) {
                Some((QuotaKind::Ports, quota.max_ports, used.ports))
            } else if over(used.held_ports, more.held_ports, quota.max_held_ports) {
                Some((QuotaKind::HeldPorts, quota.max_held_ports, used.held_ports))
            } else {
                None
            };
            if let Some((what, limit, used)) = over {
                return Err(AcquireError::QuotaExceeded {
                    uid,
                    what,
                    limit,
                    used,
                    asked,
                });
            }
        }
        if let RangeRequest::Specific(range) = request {
            if let Some(refused) = self.over_shared(protocol, range, uid, k) {
                return Err(refused);
            }
        }
        match request {
            RangeRequest::Specific(range) if range.start() < k.lowest_port => {
                Err(AcquireError::Privileged(PrivilegedDenied {
                    protocol,
                    range,
                    unprivileged_start: k.lowest_port,
                    uid,
                }))
            }
            RangeRequest::Specific(range) => self.expected_specific(protocol, range),
            RangeRequest::Within { bounds, .. } if bounds.end() < k.lowest_port => {
                Err(AcquireError::Privileged(PrivilegedDenied {
                    protocol,
                    range: bounds,
                    unprivileged_start: k.lowest_port,
                    uid,
                }))
            }
            RangeRequest::Within { count, bounds } => {
                let range = self
                    .expected_within(protocol, count, bounds, k.lowest_port)
                    .map(|s| PortRange::new(s, count).unwrap())
                    .ok_or(AcquireError::PoolExhausted {
                        protocol,
                        count,
                        pool: pool(),
                        free_ports: u32::try_from(
                            bounds
                                .ports()
                                .filter(|&p| !self.reserved[index(protocol)][slot(p)])
                                .count(),
                        )
                        .unwrap(),
                        skipped_privileged: bounds.start() < k.lowest_port,
                        bounds: Some(bounds),
                    })?;
                match self.over_shared(protocol, range, uid, k) {
                    Some(refused) => Err(refused),
                    None => Ok(range),
                }
            }
            RangeRequest::Wildcard { count } => {
                let range = self
                    .expected_wildcard(protocol, count, k.lowest_port)
                    .map(|s| PortRange::new(s, count).unwrap())
                    .ok_or(AcquireError::PoolExhausted {
                        protocol,
                        count,
                        pool: pool(),
                        free_ports: self.free_in_pool(protocol),
                        skipped_privileged: POOL_FIRST < k.lowest_port,
                        bounds: None,
                    })?;
                match self.over_shared(protocol, range, uid, k) {
                    Some(refused) => Err(refused),
                    None => Ok(range),
                }
            }
        }
    }

    fn set_shared(&mut self, range: Option<(u16, u16)>) {
        let range = range.map(|(lo, hi)| PortRange::from_bounds(lo, hi).unwrap());
        self.table.set_shared_range(range);
        self.shared = range;
        assert_eq!(self.table.shared_range(), range);
        self.last = None;
    }

    fn expected_specific(
        &self,
        protocol: Protocol,
        range: PortRange,
    ) -> Result<PortRange, AcquireError> {
        if let Some(holder) = self.lowest_overlap(protocol, range) {
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

    /// The process `asker` stands for, for an operation on `r`.
    fn asking(r: &Reservation, asker: Asker) -> Requester {
        let owner = r.owner().cloned().unwrap_or_else(|| session_owner(0));
        let (process, is_admin) = match asker {
            Asker::Owner => (owner, false),
            Asker::Impostor => (
                Owner {
                    start_time: owner.start_time + 1,
                    ..owner
                },
                false,
            ),
            Asker::Stranger => (session_owner(7), false),
            Asker::Admin => (session_owner(8), true),
        };
        Requester { process, is_admin }
    }

    fn pick(&self, pick: usize) -> Option<Reservation> {
        (!self.live.is_empty()).then(|| self.live[pick % self.live.len()].clone())
    }

    fn release(&mut self, pick: usize, asker: Asker) {
        let Some(r) = self.pick(pick) else {
            return;
        };
        let requester = Self::asking(&r, asker);
        let expected = if r.kind() == Kind::Persistent {
            Err(ReleaseError::Persistent(Box::new(r.clone())))
        } else if requester.is_admin || r.is_owned_by(&requester.process) {
            Ok(Change::Released {
                reservation: r.clone(),
                why: Ending::Released,
            })
        } else {
            Err(ReleaseError::PermissionDenied(Box::new(r.clone())))
        };
        let before = self.table.reserved_ports(r.protocol);
        let got = self.table.release(r.token, &requester);
        assert_eq!(got, expected, "{asker:?}");
        if got.is_ok() {
            let after = self.table.reserved_ports(r.protocol);
            assert_eq!(after + u32::from(r.range.count()), before);
        }
        self.commit(&Vec::from_iter(got.ok()));
    }

    fn release_stale(&mut self, pick: usize) {
        if self.released.is_empty() {
            return;
        }
        let token = self.released[pick % self.released.len()];
        if self.find(token).is_some() {
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
        let me = session_owner(0);
        assert_eq!(
            self.table.reclaim(token, &me, SessionId(0)),
            Err(UseError::NotFound(token))
        );
        assert_eq!(
            self.table.transfer(token, &me, me.clone()),
            Err(UseError::NotFound(token))
        );
        self.last = None;
    }

    /// Runs a bulk release and checks it against the model's choice of what ends.
    fn release_where(
        &mut self,
        got: Vec<Change>,
        why: Ending,
        pick: impl Fn(&Reservation) -> bool,
    ) {
        let gone: Vec<_> = self.live.iter().filter(|r| pick(r)).cloned().collect();
        let expected = ended(by_place(gone), why);
        assert_eq!(got, expected, "{why:?}");
        self.commit(&got);
    }

    fn release_session(&mut self, session: u8) {
        let id = SessionId(u64::from(session));
        let got = self.table.release_session(id);
        self.release_where(got, Ending::SessionEnded, |r| r.session() == Some(id));
    }

    fn owner_exited(&mut self, pid: u32, other: bool) {
        let gone = owner(pid, if other { 2 } else { 1 });
        let got = self.table.release_owner_exited(&gone);
        self.release_where(got, Ending::OwnerExited, |r| {
            r.is_owned_by(&gone) && matches!(r.bond(), Some(Bond::Process | Bond::Unclaimed))
        });
    }

    fn release_unclaimed(&mut self) {
        let got = self.table.release_unclaimed();
        self.release_where(got, Ending::NotReclaimed, |r| {
            r.bond() == Some(Bond::Unclaimed)
        });
    }

    fn create_persistent(&mut self, protocol: Protocol, start: u16, count: u16) {
        let range = PortRange::new(start, count).unwrap();
        let tokens = &mut self.tokens;
        let token = self.table.new_token(&mut || tokens.draw());
        assert!(self.find(token).is_none(), "new_token gave live {token}");
        let in_use = &self.in_use[index(protocol)];
        let got = self.table.create_persistent(
            token,
            protocol,
            range,
            (Allowed::default(), None, None),
            0,
            9,
            &mut |_, r| r.ports().find(|p| in_use.contains(p)),
        );
        let expected = self.expected_specific(protocol, range).map(|range| {
            Change::PersistentCreated(Reservation {
                token,
                protocol,
                range,
                acquired_at_ms: 9,
                lease: Lease::Persistent {
                    allowed: Allowed::default(),
                    created_by: 0,
                },
                label: None,
                name: None,
            })
        });
        assert_eq!(got, expected);
        self.commit(&Vec::from_iter(got.ok()));
    }

    fn delete_persistent(
        &mut self,
        pick: usize,
        use_pick: bool,
        protocol: Protocol,
        range: PortRange,
    ) {
        let persistent: Vec<_> = self
            .live
            .iter()
            .filter(|r| r.kind() == Kind::Persistent)
            .collect();
        let (protocol, range) = match persistent.get(pick % persistent.len().max(1)) {
            Some(r) if use_pick => (r.protocol, r.range),
            _ => (protocol, range),
        };
        let expected = self
            .live
            .iter()
            .find(|r| r.kind() == Kind::Persistent && r.protocol == protocol && r.range == range)
            .cloned()
            .map(Change::PersistentDeleted);
        let got = self.table.delete_persistent(protocol, range);
        assert_eq!(got, expected);
        assert!(self.table.find_persistent(protocol, range).is_none());
        self.commit(&Vec::from_iter(got));
    }

    fn reclaim(&mut self, pick: usize, asker: Asker, session: u8) {
        let Some(r) = self.pick(pick) else {
            return;
        };
        let requester = Self::asking(&r, asker).process;
        let session = SessionId(u64::from(session));
        let expected = if r.bond() == Some(Bond::Unclaimed) && r.is_owned_by(&requester) {
            Ok(Change::Rebound {
                before: r.clone(),
                after: Reservation {
                    lease: Lease::Runtime {
                        owner: requester.clone(),
                        bond: Bond::Session(session),
                        held: r.held(),
                    },
                    ..r.clone()
                },
            })
        } else {
            Err(UseError::NotOwner {
                reservation: Box::new(r.clone()),
                requester_pid: requester.pid,
            })
        };
        let got = self.table.reclaim(r.token, &requester, session);
        assert_eq!(got, expected, "{asker:?}");
        self.commit(&Vec::from_iter(got.ok()));
    }

    fn transfer(&mut self, pick: usize, asker: Asker, k: u8) {
        let Some(r) = self.pick(pick) else {
            return;
        };
        let requester = Self::asking(&r, asker).process;
        let to = owner(200 + u32::from(k), 1);
        let expected = if r.kind() == Kind::Runtime && r.is_owned_by(&requester) {
            Ok(Change::Rebound {
                before: r.clone(),
                after: Reservation {
                    lease: Lease::Runtime {
                        owner: to.clone(),
                        bond: Bond::Process,
                        held: r.held(),
                    },
                    ..r.clone()
                },
            })
        } else {
            Err(UseError::NotOwner {
                reservation: Box::new(r.clone()),
                requester_pid: requester.pid,
            })
        };
        let got = self.table.transfer(r.token, &requester, to);
        assert_eq!(got, expected, "{asker:?}");
        self.commit(&Vec::from_iter(got.ok()));
    }

    /// Undoes the last change of the previous operation, as the daemon does when a consumer
    /// (the journal) refuses it.
    fn revert_last(&mut self) {
        let Some(change) = self.last.take() else {
            return;
        };
        let expected = match &change {
            Change::Granted(r) => vec![Change::Released {
                reservation: r.clone(),
                why: Ending::Undone,
            }],
            Change::PersistentCreated(r) => vec![Change::PersistentDeleted(r.clone())],
            Change::PersistentDeleted(r) => vec![Change::PersistentCreated(r.clone())],
            Change::Rebound { before, after } => vec![Change::Rebound {
                before: after.clone(),
                after: before.clone(),
            }],
            Change::Released { .. } | Change::Restored(_) | Change::NotRestored { .. } => {
                Vec::new()
            }
        };
        assert_eq!(change.refusable(), !expected.is_empty(), "{change:?}");
        let got = self.table.revert(&change);
        assert_eq!(got, Ok(expected), "reverting {change:?}");
        self.commit(&got.unwrap());
    }

    /// Bound state is the table's alone (no change is published): checked for agreement with
    /// itself in [`Model::check`].
    fn note_bound(&mut self, pick: usize, offset: i16, unbind: bool) {
        let Some(r) = self.pick(pick) else {
            return;
        };
        let Ok(port) = u16::try_from(i32::from(r.range.start()) + i32::from(offset)) else {
            return;
        };
        if unbind {
            self.table.note_unbound(r.token, port);
        } else {
            self.table.note_bound(r.token, port);
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
        // The index of reservations with a port bound agrees with their ports' states.
        let with_bound: HashSet<Token> = self.table.with_bound().map(|r| r.token).collect();
        for r in self.table.iter() {
            let marked = r
                .range
                .ports()
                .filter(|&p| self.table.port_use(r.token, p) == Some(berth_core::PortUse::Bound))
                .count();
            assert_eq!(self.table.bound_ports(r.token), marked, "{r:?}");
            assert_eq!(with_bound.contains(&r.token), marked > 0, "{r:?}");
        }
        assert!(with_bound.iter().all(|t| self.table.get(*t).is_some()));
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
            if r.kind() == Kind::Persistent {
                assert_eq!(self.table.find_persistent(r.protocol, r.range), Some(r));
            }
        }
        let order: Vec<_> = self
            .table
            .iter()
            .map(|r| (r.protocol, r.range.start()))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(self.table.shared_used(), self.shared_used(), "shared");
        let listed: Vec<(u32, Usage)> = {
            let mut all: Vec<_> = self.table.usages().collect();
            all.sort_by_key(|(uid, _)| *uid);
            all
        };
        let expected: Vec<(u32, Usage)> = uids()
            .map(|uid| (uid, self.usage(uid)))
            .filter(|(_, u)| *u != Usage::default())
            .collect();
        assert_eq!(listed, expected, "usages");
        // Usage per user, counted from scratch; every runtime reservation's user is counted.
        let mut total = Usage::default();
        for uid in uids() {
            let usage = self.table.usage(uid);
            assert_eq!(usage, self.usage(uid), "usage of uid {uid}");
            total.reservations += usage.reservations;
            total.ports += usage.ports;
        }
        let runtime = self
            .live
            .iter()
            .filter(|r| r.kind() == Kind::Runtime)
            .count();
        // Only twins count for less than one each.
        assert!(total.reservations as usize <= runtime);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn table_matches_model(
        seed in any::<u64>(),
        rows in prop::collection::vec(row(), 0..24),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let mut model = Model::new(seed, &rows);
        for op in ops {
            match op {
                Op::Specific(p, start, count, session, hold, k) => {
                    let range = PortRange::new(start, count).unwrap();
                    model.acquire(p, RangeRequest::Specific(range), session, hold, k);
                }
                Op::Wildcard(p, count, session, hold, k) => {
                    model.acquire(p, RangeRequest::Wildcard { count }, session, hold, k);
                }
                Op::Within(p, count, (first, last), session, hold, k) => {
                    let request = RangeRequest::from_start_count_within(0, count, Some((first, last)))
                        .unwrap();
                    model.acquire(p, request, session, hold, k);
                }
                Op::SetShared(range) => model.set_shared(range),
                Op::Release(pick, asker) => model.release(pick, asker),
                Op::ReleaseStale(pick) => model.release_stale(pick),
                Op::ReleaseSession(s) => model.release_session(s),
                Op::ToggleInUse(p, ports) => model.toggle(p, ports),
                Op::CreatePersistent(p, start, count) => model.create_persistent(p, start, count),
                Op::DeletePersistent(pick, use_pick, p, start, count) => {
                    let range = PortRange::new(start, count).unwrap();
                    model.delete_persistent(pick, use_pick, p, range);
                }
                Op::Reclaim(pick, asker, session) => model.reclaim(pick, asker, session),
                Op::Transfer(pick, asker, k) => model.transfer(pick, asker, k),
                Op::OwnerExited(pid, other) => model.owner_exited(pid, other),
                Op::ReleaseUnclaimed => model.release_unclaimed(),
                Op::RevertLast => model.revert_last(),
                Op::NoteBound(pick, offset, unbind) => model.note_bound(pick, offset, unbind),
            }
            model.check();
        }
    }
}

/// A source that first returns 0 and then tokens of live reservations: the table redraws.
#[test]
fn zero_and_duplicate_tokens_are_redrawn() {
    let mut table = Table::new(pool());
    let mut script = vec![0, 0, 9, 0, 9, 9, 0, 10, 9, 10, 11].into_iter();
    let mut source = move || script.next().unwrap_or(12);
    let holder = Holder {
        owner: session_owner(0),
        session: SessionId(0),
        acquired_at_ms: 0,
        hold: false,
        label: None,
        name: None,
    };
    let mut got = Vec::new();
    for _ in 0..4 {
        let change = table
            .acquire(
                Protocol::Tcp,
                RangeRequest::Wildcard { count: 1 },
                holder.clone(),
                Constraints::default(),
                &mut source,
                &mut |_, _| None,
            )
            .unwrap();
        got.push(change.reservation().unwrap().token.get());
    }
    assert_eq!(got, [9, 10, 11, 12]);
}
