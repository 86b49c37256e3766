//! Edge cases of [`Table`]; the randomized comparison with a model is in `tests/model.rs`.

use std::collections::BTreeMap;

use super::*;

fn owner(pid: u32, start_time: u64) -> Owner {
    Owner {
        pid,
        uid: 1000,
        gid: 1000,
        start_time,
        command: "test".into(),
    }
}

/// Process `pid` (started at tick 7) of user `uid`.
fn user_process(pid: u32, uid: u32) -> Owner {
    Owner {
        uid,
        gid: uid,
        ..owner(pid, 7)
    }
}

fn holder(pid: u32, session: u64) -> Holder {
    Holder {
        owner: owner(pid, 7),
        session: SessionId(session),
        acquired_at_ms: 42,
        hold: false,
        label: None,
        name: None,
    }
}

fn range(start: u16, count: u16) -> PortRange {
    PortRange::new(start, count).unwrap()
}

/// Tokens 1, 2, 3, …
fn counter() -> impl FnMut() -> u64 {
    let mut next = 0;
    move || {
        next += 1;
        next
    }
}

fn nothing_in_use(_: Protocol, _: PortRange) -> Option<u16> {
    None
}

fn admin() -> Requester {
    Requester {
        process: owner(0, 0),
        is_admin: true,
    }
}

/// The reservation a grant made; fails the test on anything else.
fn granted(change: Change) -> Reservation {
    match change {
        Change::Granted(r) => r,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// The reservations a list of releases ended, checking why they ended.
fn released(changes: Vec<Change>, expected: Ending) -> Vec<Reservation> {
    changes
        .into_iter()
        .map(|change| match change {
            Change::Released { reservation, why } if why == expected => reservation,
            other => panic!("expected a release ({expected:?}), got {other:?}"),
        })
        .collect()
}

/// A runtime reservation as the journal gives it back at start-up.
fn journaled(
    token: u64,
    protocol: Protocol,
    r: PortRange,
    owner: Owner,
    bond: Bond,
) -> Reservation {
    Reservation {
        token: Token::new(token).unwrap(),
        protocol,
        range: r,
        acquired_at_ms: 5,
        lease: Lease::Runtime {
            owner,
            bond,
            held: false,
        },
        label: None,
        name: None,
    }
}

/// A table over `first..=last` with a token counter, acquiring for pid 1, session 1.
struct Fixture {
    table: Table,
    tokens: Box<dyn FnMut() -> u64>,
}

impl Fixture {
    fn new(first: u16, last: u16) -> Self {
        Fixture {
            table: Table::new(Pool::new(first, last).unwrap()),
            tokens: Box::new(counter()),
        }
    }

    /// Acquires for `holder` under `limits`, nothing being in use on the host.
    fn acquire_as(
        &mut self,
        request: RangeRequest,
        holder: Holder,
        limits: Constraints,
    ) -> Result<Reservation, AcquireError> {
        self.table
            .acquire(
                Protocol::Tcp,
                request,
                holder,
                limits,
                &mut self.tokens,
                &mut nothing_in_use,
            )
            .map(granted)
    }

    fn wildcard(&mut self, count: u16) -> Result<Reservation, AcquireError> {
        self.acquire_as(
            RangeRequest::Wildcard { count },
            holder(1, 1),
            Constraints::default(),
        )
    }

    fn specific(&mut self, start: u16, count: u16) -> Result<Reservation, AcquireError> {
        self.acquire_as(
            RangeRequest::Specific(range(start, count)),
            holder(1, 1),
            Constraints::default(),
        )
    }

    fn release(&mut self, r: &Reservation) {
        self.table.release(r.token, &admin()).unwrap();
    }

    fn restore(&mut self, r: Reservation) -> Change {
        self.table.restore(r, false).unwrap()
    }

    /// Every live reservation by token, to compare before and after an operation.
    fn snapshot(&self) -> BTreeMap<Token, Reservation> {
        self.table.iter().map(|r| (r.token, r.clone())).collect()
    }
}

/// `before` with `changes` applied the way a mirror of the table (the journal) applies them.
fn replay(
    mut before: BTreeMap<Token, Reservation>,
    changes: &[Change],
) -> BTreeMap<Token, Reservation> {
    for change in changes {
        match change {
            Change::Granted(r) | Change::Restored(r) | Change::PersistentCreated(r) => {
                assert!(before.insert(r.token, r.clone()).is_none(), "{change:?}");
            }
            Change::Released { reservation: r, .. } | Change::PersistentDeleted(r) => {
                assert_eq!(before.remove(&r.token).as_ref(), Some(r), "{change:?}");
            }
            Change::Rebound { before: was, after } => {
                assert_eq!(
                    (was.token, was.protocol, was.range),
                    (after.token, after.protocol, after.range)
                );
                assert_eq!(
                    before.insert(after.token, after.clone()).as_ref(),
                    Some(was)
                );
            }
            Change::NotRestored { .. } => {}
        }
    }
    before
}

fn start_of(result: Result<Reservation, AcquireError>) -> u16 {
    result.unwrap().range.start()
}

fn exhausted(result: Result<Reservation, AcquireError>) -> bool {
    matches!(result, Err(AcquireError::PoolExhausted { .. }))
}

#[test]
fn top_port_and_range_ending_at_65535() {
    let mut f = Fixture::new(65530, 65535);
    let top = f.specific(65535, 1).unwrap();
    assert_eq!(f.table.find_port(Protocol::Tcp, 65535), Some(&top));
    assert!(f.specific(65535, 1).is_err());
    assert_eq!(start_of(f.wildcard(5)), 65530);
    assert!(exhausted(f.wildcard(1)));
    f.release(&top);
    let block = f.specific(65526, 10).unwrap_err();
    assert!(
        matches!(block, AcquireError::Conflict { holder, .. } if holder.range.start() == 65530)
    );
    assert_eq!(start_of(f.wildcard(1)), 65535);
    assert_eq!(f.table.reserved_ports(Protocol::Tcp), 6);
    assert_eq!(f.table.find_port(Protocol::Tcp, 65529), None);
}

#[test]
fn wildcard_does_not_reuse_a_block_at_once() {
    let mut f = Fixture::new(1000, 1009);
    let first = f.wildcard(2).unwrap();
    assert_eq!(first.range, range(1000, 2));
    f.release(&first);
    assert_eq!(start_of(f.wildcard(2)), 1002);
    assert_eq!(start_of(f.wildcard(1)), 1004);
}

#[test]
fn cursor_wraps_to_the_pool_start() {
    let mut f = Fixture::new(1000, 1004);
    let granted: Vec<_> = (0..5).map(|_| f.wildcard(1).unwrap()).collect();
    let starts: Vec<_> = granted.iter().map(|r| r.range.start()).collect();
    assert_eq!(starts, [1000, 1001, 1002, 1003, 1004]);
    assert!(exhausted(f.wildcard(1)));
    f.release(&granted[3]);
    f.release(&granted[1]);
    // The cursor wrapped to 1000 after 1004; 1001 is the first free port from there.
    assert_eq!(start_of(f.wildcard(1)), 1001);
    assert_eq!(start_of(f.wildcard(1)), 1003);
}

#[test]
fn a_block_never_wraps_past_the_pool_end() {
    let mut f = Fixture::new(1000, 1009);
    let singles: Vec<_> = (0..8).map(|_| f.wildcard(1).unwrap()).collect();
    f.release(&singles[0]);
    f.release(&singles[1]);
    // Free: 1008, 1009 (at the cursor) and 1000, 1001 — four ports, but not contiguous.
    assert!(exhausted(f.wildcard(3)));
    assert_eq!(start_of(f.wildcard(2)), 1008);
    assert_eq!(start_of(f.wildcard(2)), 1000);
}

#[test]
fn pool_of_one_port() {
    let mut f = Fixture::new(5000, 5000);
    let only = f.wildcard(1).unwrap();
    assert_eq!(only.range, range(5000, 1));
    assert!(exhausted(f.wildcard(1)));
    f.release(&only);
    assert_eq!(start_of(f.wildcard(1)), 5000);
    assert!(exhausted(f.wildcard(2)));
}

#[test]
fn count_bigger_than_the_pool_or_zero() {
    let mut f = Fixture::new(1000, 1009);
    assert!(exhausted(f.wildcard(11)));
    assert!(exhausted(f.wildcard(u16::MAX)));
    assert!(exhausted(f.wildcard(0)));
    assert_eq!(f.wildcard(10).unwrap().range, range(1000, 10));
    assert!(!f.table.is_empty() && f.table.len() == 1);
}

#[test]
fn whole_port_space_as_pool() {
    let mut f = Fixture::new(1, 65535);
    assert_eq!(f.wildcard(65535).unwrap().range, range(1, 65535));
    assert!(exhausted(f.wildcard(1)));
    assert_eq!(f.table.reserved_ports(Protocol::Tcp), 65535);
    assert_eq!(f.table.reserved_ports(Protocol::Udp), 0);
}

#[test]
fn wildcard_skips_ports_in_use() {
    let mut table = Table::new(Pool::new(1000, 1009).unwrap());
    let mut tokens = counter();
    let mut probes = 0;
    let mut probe = |_: Protocol, r: PortRange| {
        probes += 1;
        [1003u16, 1009].into_iter().find(|&p| r.contains(p))
    };
    let got = granted(
        table
            .acquire(
                Protocol::Udp,
                RangeRequest::Wildcard { count: 5 },
                holder(1, 1),
                Constraints::default(),
                &mut tokens,
                &mut probe,
            )
            .unwrap(),
    );
    assert_eq!(got.range, range(1004, 5));
    assert_eq!(probes, 2);
    let mut busy = |_: Protocol, r: PortRange| Some(r.start());
    let none = table.acquire(
        Protocol::Udp,
        RangeRequest::Wildcard { count: 1 },
        holder(1, 1),
        Constraints::default(),
        &mut tokens,
        &mut busy,
    );
    assert!(exhausted(none.map(granted)));
}

#[test]
fn a_probe_outside_the_candidate_still_ends() {
    let mut table = Table::new(Pool::new(1000, 1099).unwrap());
    let mut tokens = counter();
    let mut probes = 0;
    let mut liar = |_: Protocol, _: PortRange| {
        probes += 1;
        Some(1)
    };
    let none = table.acquire(
        Protocol::Tcp,
        RangeRequest::Wildcard { count: 10 },
        holder(1, 1),
        Constraints::default(),
        &mut tokens,
        &mut liar,
    );
    assert!(exhausted(none.map(granted)));
    assert_eq!(probes, 91);
}

#[test]
fn specific_conflicts_name_the_lowest_holder_and_keep_the_cursor() {
    let mut f = Fixture::new(1000, 1009);
    let a = f.specific(1002, 2).unwrap();
    let _b = f.specific(1005, 1).unwrap();
    match f.specific(1001, 6) {
        Err(AcquireError::Conflict {
            holder, requested, ..
        }) => {
            assert_eq!(*holder, a);
            assert_eq!(requested, range(1001, 6));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(
        matches!(f.specific(1003, 1), Err(AcquireError::Conflict { holder, .. }) if *holder == a)
    );
    // Outside the pool is fine, and specific grants do not move the cursor.
    assert_eq!(start_of(f.specific(80, 1)), 80);
    assert_eq!(start_of(f.wildcard(1)), 1000);
}

#[test]
fn specific_in_use_is_reported() {
    let mut table = Table::new(Pool::new(1000, 1009).unwrap());
    let mut tokens = counter();
    let mut probe = |_: Protocol, r: PortRange| r.ports().find(|&p| p == 8081);
    let err = table
        .acquire(
            Protocol::Tcp,
            RangeRequest::Specific(range(8080, 4)),
            holder(1, 1),
            Constraints::default(),
            &mut tokens,
            &mut probe,
        )
        .unwrap_err();
    assert!(matches!(err, AcquireError::InUse { port: 8081, .. }));
    assert!(table.is_empty());
}

#[test]
fn release_permissions() {
    let mut f = Fixture::new(1000, 1009);
    let r = f.wildcard(1).unwrap();
    assert_eq!(r.owner(), Some(&owner(1, 7)));
    assert_eq!(r.session(), Some(SessionId(1)));
    assert_eq!(r.bond(), Some(Bond::Session(SessionId(1))));
    assert_eq!((r.kind(), r.acquired_at_ms), (Kind::Runtime, 42));
    let ask = |pid, start_time, is_admin| Requester {
        process: owner(pid, start_time),
        is_admin,
    };
    // Same pid, other start time: a different process that reused the pid.
    let denied = f.table.release(r.token, &ask(1, 8, false)).unwrap_err();
    assert!(matches!(denied, ReleaseError::PermissionDenied(ref held) if **held == r));
    assert!(matches!(
        f.table.release(r.token, &ask(2, 7, false)),
        Err(ReleaseError::PermissionDenied(_))
    ));
    assert_eq!(
        f.table.release(r.token, &ask(1, 7, false)),
        Ok(Change::Released {
            reservation: r.clone(),
            why: Ending::Released
        })
    );
    assert_eq!(
        f.table.release(r.token, &ask(1, 7, false)),
        Err(ReleaseError::NotFound(r.token))
    );
    let s = f.wildcard(1).unwrap();
    assert_eq!(
        f.table.release(s.token, &ask(9, 9, true)),
        Ok(Change::Released {
            reservation: s,
            why: Ending::Released
        })
    );
    assert!(f.table.is_empty());
    assert_eq!(f.table.reserved_ports(Protocol::Tcp), 0);
}

#[test]
fn release_session_takes_only_that_session() {
    let mut table = Table::new(Pool::new(1000, 1099).unwrap());
    let mut tokens = counter();
    for (protocol, session) in [
        (Protocol::Udp, 1),
        (Protocol::Tcp, 2),
        (Protocol::Tcp, 1),
        (Protocol::Udp, 1),
    ] {
        table
            .acquire(
                protocol,
                RangeRequest::Wildcard { count: 3 },
                holder(1, session),
                Constraints::default(),
                &mut tokens,
                &mut nothing_in_use,
            )
            .unwrap();
    }
    let gone = released(table.release_session(SessionId(1)), Ending::SessionEnded);
    let shape: Vec<_> = gone.iter().map(|r| (r.protocol, r.range.start())).collect();
    assert_eq!(
        shape,
        [
            (Protocol::Tcp, 1003),
            (Protocol::Udp, 1000),
            (Protocol::Udp, 1003)
        ]
    );
    assert_eq!(table.len(), 1);
    assert!(table.release_session(SessionId(1)).is_empty());
    assert_eq!(table.release_session(SessionId(2)).len(), 1);
    assert!(table.is_empty());
    assert_eq!(table.reserved_ports(Protocol::Udp), 0);
}

#[test]
fn iter_orders_by_protocol_then_start_and_get_finds_tokens() {
    let mut table = Table::new(Pool::new(1000, 1099).unwrap());
    let mut tokens = counter();
    for (protocol, start) in [
        (Protocol::Udp, 300),
        (Protocol::Tcp, 200),
        (Protocol::Udp, 100),
        (Protocol::Tcp, 100),
    ] {
        table
            .acquire(
                protocol,
                RangeRequest::Specific(range(start, 1)),
                holder(1, 1),
                Constraints::default(),
                &mut tokens,
                &mut nothing_in_use,
            )
            .unwrap();
    }
    let order: Vec<_> = table
        .iter()
        .map(|r| (r.protocol, r.range.start()))
        .collect();
    assert_eq!(
        order,
        [
            (Protocol::Tcp, 100),
            (Protocol::Tcp, 200),
            (Protocol::Udp, 100),
            (Protocol::Udp, 300)
        ]
    );
    for r in table.iter() {
        assert_eq!(table.get(r.token), Some(r));
    }
    assert_eq!(table.get(Token::new(99).unwrap()), None);
}

#[test]
fn tokens_zero_and_live_duplicates_are_redrawn() {
    let mut table = Table::new(Pool::new(1000, 1099).unwrap());
    let mut values = [0u64, 5, 0, 5, 5, 6].into_iter();
    let mut tokens = move || values.next().unwrap_or(7);
    let mut take = |table: &mut Table| {
        granted(
            table
                .acquire(
                    Protocol::Tcp,
                    RangeRequest::Wildcard { count: 1 },
                    holder(1, 1),
                    Constraints::default(),
                    &mut tokens,
                    &mut nothing_in_use,
                )
                .unwrap(),
        )
        .token
        .get()
    };
    assert_eq!(take(&mut table), 5);
    assert_eq!(take(&mut table), 6);
    assert_eq!(take(&mut table), 7);
}

fn persistent(f: &mut Fixture, start: u16, count: u16, allowed: Allowed) -> Reservation {
    let token = f.table.new_token(&mut f.tokens);
    match f
        .table
        .create_persistent(
            token,
            Protocol::Tcp,
            range(start, count),
            (allowed, None, None),
            0,
            1,
            &mut nothing_in_use,
        )
        .unwrap()
    {
        Change::PersistentCreated(r) => r,
        other => panic!("expected a creation, got {other:?}"),
    }
}

#[test]
fn persistent_reservations_conflict_are_found_exactly_and_are_not_released() {
    let mut f = Fixture::new(1000, 1999);
    let p = persistent(&mut f, 8000, 10, Allowed::default());
    assert_eq!(p.kind(), Kind::Persistent);
    assert_eq!((p.owner(), p.bond(), p.session()), (None, None, None));
    assert!(!p.is_owned_by(&owner(1, 7)));
    assert!(matches!(
        f.specific(8005, 1),
        Err(AcquireError::Conflict { .. })
    ));
    assert_eq!(
        f.table
            .find_persistent(Protocol::Tcp, range(8000, 10))
            .map(|r| r.token),
        Some(p.token)
    );
    assert!(f
        .table
        .find_persistent(Protocol::Tcp, range(8000, 9))
        .is_none());
    assert!(f
        .table
        .find_persistent(Protocol::Udp, range(8000, 10))
        .is_none());
    let err = f.table.release(p.token, &admin()).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
    // A session ending does not touch it, nor does its "owner" exiting or the grace period.
    assert!(f.table.release_session(SessionId(1)).is_empty());
    assert!(f.table.release_unclaimed().is_empty());
    // Deleted only by exact protocol and range.
    assert_eq!(
        f.table.delete_persistent(Protocol::Tcp, range(8000, 9)),
        None
    );
    assert_eq!(
        f.table.delete_persistent(Protocol::Udp, range(8000, 10)),
        None
    );
    assert_eq!(
        f.table.delete_persistent(Protocol::Tcp, range(8000, 10)),
        Some(Change::PersistentDeleted(p))
    );
    assert!(f.specific(8005, 1).is_ok());
}

#[test]
fn persistent_use_is_for_admins_and_the_named() {
    let mut f = Fixture::new(1000, 1999);
    let p = persistent(
        &mut f,
        8000,
        2,
        Allowed {
            users: vec![1000],
            groups: vec![50],
        },
    );
    let stranger = Owner {
        uid: 2000,
        ..owner(5, 5)
    };
    let ask = |process: &Owner, is_admin: bool, gids: &[u32]| {
        f.table
            .authorize_use(
                p.token,
                UseRequest {
                    process,
                    is_admin,
                    gids,
                },
            )
            .map(|plan| plan.kind)
            .map_err(|e| e.kind())
    };
    assert_eq!(ask(&owner(5, 5), false, &[]), Ok(Kind::Persistent)); // uid 1000 is named
    assert_eq!(ask(&stranger, false, &[50]), Ok(Kind::Persistent)); // group 50 is named
    assert_eq!(ask(&stranger, true, &[]), Ok(Kind::Persistent)); // administrator
    assert_eq!(
        ask(&stranger, false, &[7]),
        Err(crate::ErrorKind::PermissionDenied)
    );
}

#[test]
fn restored_runtime_reservations_wait_for_their_owner() {
    let mut f = Fixture::new(1000, 1999);
    let row = journaled(
        77,
        Protocol::Tcp,
        range(1500, 3),
        owner(1, 7),
        Bond::Unclaimed,
    );
    assert_eq!(f.restore(row.clone()), Change::Restored(row.clone()));
    assert_eq!(f.table.get(row.token), Some(&row));
    assert_eq!(row.session(), None);
    // Held: nobody else gets the ports.
    assert!(f.specific(1501, 1).is_err());
    // Only the same process (pid and start time) may re-claim it.
    assert!(f
        .table
        .reclaim(row.token, &owner(1, 8), SessionId(3))
        .is_err());
    let change = f
        .table
        .reclaim(row.token, &owner(1, 7), SessionId(3))
        .unwrap();
    let Change::Rebound { before, after } = change else {
        panic!("expected a rebinding, got {change:?}");
    };
    assert_eq!(before, row);
    assert_eq!(after.session(), Some(SessionId(3)));
    assert_eq!(f.table.get(row.token), Some(&after));
    // Re-claimed: it now dies with that session, and is no longer unclaimed.
    assert!(f.table.release_unclaimed().is_empty());
    assert!(f.table.release_owner_exited(&owner(1, 7)).is_empty());
    assert_eq!(
        released(f.table.release_session(SessionId(3)), Ending::SessionEnded),
        [after]
    );
}

#[test]
fn unclaimed_reservations_are_released_by_owner_or_all() {
    let mut f = Fixture::new(1000, 1999);
    for (t, pid, start) in [(1, 1, 1100), (2, 2, 1300), (3, 2, 1200)] {
        let row = journaled(
            t,
            Protocol::Udp,
            range(start, 1),
            owner(pid, 7),
            Bond::Unclaimed,
        );
        f.restore(row);
    }
    let gone = released(
        f.table.release_owner_exited(&owner(2, 7)),
        Ending::OwnerExited,
    );
    let starts: Vec<_> = gone.iter().map(|r| r.range.start()).collect();
    assert_eq!(starts, [1200, 1300]);
    let rest = released(f.table.release_unclaimed(), Ending::NotReclaimed);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].range, range(1100, 1));
    assert!(f.table.is_empty());
    assert_eq!(f.table.usage(1000), Usage::default());
}

#[test]
fn a_restored_reservation_that_overlaps_is_refused() {
    let mut f = Fixture::new(1000, 1999);
    let held = f.specific(1500, 2).unwrap();
    let row = journaled(
        99,
        Protocol::Tcp,
        range(1501, 1),
        owner(3, 3),
        Bond::Process,
    );
    assert_eq!(
        f.restore(row),
        Change::NotRestored {
            token: Token::new(99).unwrap(),
            protocol: Protocol::Tcp,
            range: range(1501, 1)
        }
    );
    assert_eq!(f.table.len(), 1);
    // The same ports in the other protocol are free.
    let udp = Reservation {
        protocol: Protocol::Udp,
        ..journaled(
            99,
            Protocol::Tcp,
            range(1501, 1),
            owner(3, 3),
            Bond::Process,
        )
    };
    assert_eq!(f.restore(udp.clone()), Change::Restored(udp));
    // A persistent row that overlaps is an error: only a database edited by hand has one.
    let persistent = Reservation {
        token: Token::new(100).unwrap(),
        protocol: Protocol::Tcp,
        range: range(1499, 2),
        acquired_at_ms: 0,
        lease: Lease::Persistent {
            allowed: Allowed::default(),
            created_by: 0,
        },
        label: None,
        name: None,
    };
    let err = f.table.restore(persistent, false).unwrap_err();
    assert!(matches!(err, AcquireError::Conflict { holder, .. } if *holder == held));
    assert_eq!(f.table.len(), 2);
    // Forgetting a row names it without touching the table.
    assert_eq!(
        Table::forget(Token::new(5).unwrap(), Protocol::Udp, range(7, 1)),
        Change::NotRestored {
            token: Token::new(5).unwrap(),
            protocol: Protocol::Udp,
            range: range(7, 1)
        }
    );
}

#[test]
fn a_token_already_live_is_refused_on_insert() {
    let mut f = Fixture::new(1000, 1999);
    let r = f.specific(1500, 1).unwrap();
    let row = journaled(
        r.token.get(),
        Protocol::Udp,
        range(1600, 1),
        owner(3, 3),
        Bond::Unclaimed,
    );
    assert!(matches!(f.restore(row), Change::NotRestored { .. }));
    let err = f
        .table
        .create_persistent(
            r.token,
            Protocol::Udp,
            range(1700, 1),
            (Allowed::default(), None, None),
            0,
            0,
            &mut nothing_in_use,
        )
        .unwrap_err();
    assert!(matches!(err, AcquireError::Conflict { holder, .. } if *holder == r));
    let as_persistent = Reservation {
        lease: Lease::Persistent {
            allowed: Allowed::default(),
            created_by: 0,
        },
        ..journaled(
            r.token.get(),
            Protocol::Udp,
            range(1800, 1),
            owner(3, 3),
            Bond::Unclaimed,
        )
    };
    assert!(matches!(
        f.table.restore(as_persistent, false),
        Err(AcquireError::Conflict { .. })
    ));
    assert_eq!(f.table.len(), 1);
}

fn quota(max_reservations: u32, max_ports: u32) -> Constraints {
    Constraints {
        lowest_port: 0,
        quota: Some(Quota {
            max_reservations,
            max_ports,
            max_held_ports: u32::MAX,
        }),
        shared_max: None,
    }
}

fn usage(reservations: u32, ports: u32) -> Usage {
    Usage {
        reservations,
        ports,
        held_ports: 0,
    }
}

#[test]
fn quota_limits_reservations_then_ports() {
    let mut f = Fixture::new(1000, 1099);
    let limits = quota(2, 5);
    let wildcard = |count| RangeRequest::Wildcard { count };
    let a = f.acquire_as(wildcard(2), holder(1, 1), limits).unwrap();
    assert_eq!(f.table.usage(1000), usage(1, 2));
    f.acquire_as(wildcard(3), holder(1, 1), limits).unwrap();
    assert_eq!(f.table.usage(1000), usage(2, 5));
    assert_eq!(
        f.acquire_as(wildcard(1), holder(1, 1), limits),
        Err(AcquireError::QuotaExceeded {
            uid: 1000,
            what: QuotaKind::Reservations,
            limit: 2,
            used: 2,
            asked: 1
        })
    );
    f.release(&a);
    assert_eq!(f.table.usage(1000), usage(1, 3));
    let err = f
        .acquire_as(RangeRequest::Specific(range(2000, 3)), holder(1, 1), limits)
        .unwrap_err();
    assert_eq!(
        err,
        AcquireError::QuotaExceeded {
            uid: 1000,
            what: QuotaKind::Ports,
            limit: 5,
            used: 3,
            asked: 3
        }
    );
    assert_eq!(err.kind(), crate::ErrorKind::QuotaExceeded);
    assert!(
        err.to_string()
            .contains("uid 1000 holds 3 ports of its quota of 5"),
        "{err}"
    );
    // Exactly at the limit is allowed.
    f.acquire_as(RangeRequest::Specific(range(2000, 2)), holder(1, 1), limits)
        .unwrap();
    assert_eq!(f.table.usage(1000), usage(2, 5));
    // The quota is per user: another uid starts from nothing; no quota means no limit.
    let other = Holder {
        owner: user_process(5, 2000),
        session: SessionId(2),
        acquired_at_ms: 0,
        hold: false,
        label: None,
        name: None,
    };
    f.acquire_as(wildcard(5), other.clone(), limits).unwrap();
    assert_eq!(f.table.usage(2000), usage(1, 5));
    f.acquire_as(wildcard(50), holder(1, 1), Constraints::default())
        .unwrap();
    assert_eq!(f.table.usage(1000), usage(3, 55));
    assert_eq!(f.table.usage(3000), Usage::default());
}

#[test]
fn quota_is_checked_before_anything_else_and_failures_count_nothing() {
    let mut f = Fixture::new(1000, 1099);
    let held = f.specific(1500, 1).unwrap();
    let limits = Constraints {
        lowest_port: 1024,
        ..quota(1, 10)
    };
    // Over quota, and also privileged, conflicting or exhausting: the quota is reported.
    for request in [
        RangeRequest::Specific(range(80, 1)),
        RangeRequest::Specific(range(1500, 1)),
        RangeRequest::Wildcard { count: 500 },
    ] {
        let err = f.acquire_as(request, holder(1, 1), limits).unwrap_err();
        assert!(
            matches!(
                err,
                AcquireError::QuotaExceeded {
                    what: QuotaKind::Reservations,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    f.release(&held);
    // Within quota, the other failures count nothing.
    assert!(f
        .acquire_as(RangeRequest::Specific(range(80, 1)), holder(1, 1), limits)
        .is_err());
    assert!(f
        .acquire_as(
            RangeRequest::Wildcard { count: 500 },
            holder(1, 1),
            quota(1, 1000)
        )
        .is_err());
    assert_eq!(f.table.usage(1000), Usage::default());
    // A zero quota refuses everything.
    assert!(matches!(
        f.acquire_as(
            RangeRequest::Wildcard { count: 1 },
            holder(1, 1),
            quota(0, 10)
        ),
        Err(AcquireError::QuotaExceeded {
            what: QuotaKind::Reservations,
            limit: 0,
            used: 0,
            ..
        })
    ));
    assert!(matches!(
        f.acquire_as(
            RangeRequest::Wildcard { count: 1 },
            holder(1, 1),
            quota(10, 0)
        ),
        Err(AcquireError::QuotaExceeded {
            what: QuotaKind::Ports,
            limit: 0,
            used: 0,
            asked: 1,
            ..
        })
    ));
}

#[test]
fn usage_follows_every_way_a_reservation_comes_and_goes() {
    let mut f = Fixture::new(1000, 1099);
    let a = f.wildcard(3).unwrap();
    let b = f.wildcard(4).unwrap();
    f.acquire_as(
        RangeRequest::Wildcard { count: 5 },
        holder(1, 2),
        Constraints::default(),
    )
    .unwrap();
    assert_eq!(f.table.usage(1000), usage(3, 12));
    // Persistent reservations count for nobody.
    persistent(
        &mut f,
        5000,
        100,
        Allowed {
            users: vec![1000],
            groups: vec![],
        },
    );
    assert_eq!(f.table.usage(1000), usage(3, 12));
    // Release.
    f.table
        .release(
            a.token,
            &Requester {
                process: owner(1, 7),
                is_admin: false,
            },
        )
        .unwrap();
    assert_eq!(f.table.usage(1000), usage(2, 9));
    // Transfer to another user moves the counts.
    let to = user_process(9, 2000);
    f.table.transfer(b.token, &owner(1, 7), to.clone()).unwrap();
    assert_eq!(f.table.usage(1000), usage(1, 5));
    assert_eq!(f.table.usage(2000), usage(1, 4));
    // A session ending.
    assert_eq!(f.table.release_session(SessionId(2)).len(), 1);
    assert_eq!(f.table.usage(1000), Usage::default());
    // The owner exiting.
    assert_eq!(f.table.release_owner_exited(&to).len(), 1);
    assert_eq!(f.table.usage(2000), Usage::default());
    // Restored rows count, and so does their end.
    f.restore(journaled(
        500,
        Protocol::Udp,
        range(1000, 6),
        user_process(3, 3000),
        Bond::Unclaimed,
    ));
    f.restore(journaled(
        501,
        Protocol::Udp,
        range(1010, 2),
        user_process(4, 3000),
        Bond::Process,
    ));
    assert_eq!(f.table.usage(3000), usage(2, 8));
    // A row refused at start-up counts nothing.
    f.restore(journaled(
        502,
        Protocol::Udp,
        range(1011, 2),
        user_process(4, 3000),
        Bond::Process,
    ));
    assert_eq!(f.table.usage(3000), usage(2, 8));
    assert_eq!(f.table.release_unclaimed().len(), 1);
    assert_eq!(f.table.usage(3000), usage(1, 2));
    // Re-claimed: still the same user's.
    f.restore(journaled(
        503,
        Protocol::Udp,
        range(1020, 1),
        user_process(3, 3000),
        Bond::Unclaimed,
    ));
    f.table
        .reclaim(
            Token::new(503).unwrap(),
            &user_process(3, 3000),
            SessionId(9),
        )
        .unwrap();
    assert_eq!(f.table.usage(3000), usage(2, 3));
    // A grant undone.
    let c = f.wildcard(7).unwrap();
    assert_eq!(f.table.usage(1000), usage(1, 7));
    f.table.revert(&Change::Granted(c)).unwrap();
    assert_eq!(f.table.usage(1000), Usage::default());
}

#[test]
fn a_specific_request_below_the_lowest_port_is_privileged() {
    let mut f = Fixture::new(30000, 30099);
    let limits = Constraints {
        lowest_port: 1024,
        quota: None,
        shared_max: None,
    };
    let specific = |start, count| RangeRequest::Specific(range(start, count));
    let err = f
        .acquire_as(specific(80, 1), holder(1, 1), limits)
        .unwrap_err();
    assert_eq!(
        err,
        AcquireError::Privileged(PrivilegedDenied {
            protocol: Protocol::Tcp,
            range: range(80, 1),
            unprivileged_start: 1024,
            uid: 1000
        })
    );
    assert_eq!(err.kind(), crate::ErrorKind::PermissionDenied);
    // A block that starts below the boundary is privileged even if it ends above it.
    assert!(matches!(
        f.acquire_as(specific(1020, 10), holder(1, 1), limits),
        Err(AcquireError::Privileged(_))
    ));
    assert!(f.table.is_empty());
    assert_eq!(
        start_of(f.acquire_as(specific(1024, 10), holder(1, 1), limits)),
        1024
    );
    // Without a bound (root, or an allowed user) privileged ports are fine.
    assert_eq!(
        start_of(f.acquire_as(specific(80, 1), holder(1, 1), Constraints::default())),
        80
    );
}

#[test]
fn a_wildcard_search_skips_ports_below_the_lowest_port() {
    let mut table = Table::new(Pool::new(1000, 1099).unwrap());
    let mut tokens = counter();
    let mut probed = Vec::new();
    let limits = Constraints {
        lowest_port: 1050,
        quota: None,
        shared_max: None,
    };
    let mut acquire = |table: &mut Table, count, limits, probed: &mut Vec<PortRange>| {
        table
            .acquire(
                Protocol::Tcp,
                RangeRequest::Wildcard { count },
                holder(1, 1),
                limits,
                &mut tokens,
                &mut |_, r| {
                    probed.push(r);
                    None
                },
            )
            .map(granted)
    };
    // The cursor is at 1000; the first block at or above 1050 is granted.
    assert_eq!(
        acquire(&mut table, 10, limits, &mut probed).unwrap().range,
        range(1050, 10)
    );
    // The probe is never asked about a block below the lowest port.
    assert_eq!(probed, [range(1050, 10)]);
    // 40 ports are left above 1050: 41 do not fit, though 90 ports of the pool are free.
    assert_eq!(
        acquire(&mut table, 41, limits, &mut probed),
        Err(AcquireError::PoolExhausted {
            protocol: Protocol::Tcp,
            count: 41,
            pool: Pool::new(1000, 1099).unwrap(),
            free_ports: 90,
            skipped_privileged: true,
            bounds: None,
        })
    );
    assert!(probed.iter().all(|r| r.start() >= 1050), "{probed:?}");
    let err = acquire(&mut table, 41, limits, &mut probed).unwrap_err();
    assert!(
        err.to_string().contains("privileged ports were skipped"),
        "{err}"
    );
    assert_eq!(
        acquire(&mut table, 40, limits, &mut probed).unwrap().range,
        range(1060, 40)
    );
    // Without the bound, the same request is served from below 1050.
    assert_eq!(
        acquire(&mut table, 41, Constraints::default(), &mut probed)
            .unwrap()
            .range,
        range(1000, 41)
    );
    // A lowest port inside a block moves the block up; at the pool start, nothing is skipped.
    let mut table = Table::new(Pool::new(1000, 1009).unwrap());
    let at = |lowest_port| Constraints {
        lowest_port,
        quota: None,
        shared_max: None,
    };
    assert_eq!(
        acquire(&mut table, 3, at(1002), &mut probed).unwrap().range,
        range(1002, 3)
    );
    assert!(matches!(
        acquire(&mut table, 6, at(1000), &mut probed),
        Err(AcquireError::PoolExhausted {
            skipped_privileged: false,
            free_ports: 7,
            ..
        })
    ));
    // A lowest port above the whole pool leaves nothing.
    assert!(matches!(
        acquire(&mut table, 1, at(2000), &mut probed),
        Err(AcquireError::PoolExhausted {
            skipped_privileged: true,
            free_ports: 7,
            ..
        })
    ));
}

#[test]
fn pool_exhausted_counts_free_ports_when_fragmented() {
    let mut f = Fixture::new(1000, 1009);
    for start in [1000, 1002, 1004, 1006, 1008] {
        f.specific(start, 1).unwrap();
    }
    let err = f.wildcard(2).unwrap_err();
    assert_eq!(
        err,
        AcquireError::PoolExhausted {
            protocol: Protocol::Tcp,
            count: 2,
            pool: Pool::new(1000, 1009).unwrap(),
            free_ports: 5,
            skipped_privileged: false,
            bounds: None,
        }
    );
    assert!(
        err.to_string().contains("5 of its ports are unreserved"),
        "{err}"
    );
    assert!(err.to_string().contains("fragmented"), "{err}");
    assert!(!err.to_string().contains("privileged"), "{err}");

    // Reservations reaching into the pool from either side count only their ports inside it,
    // and reservations outside it not at all.
    let mut f = Fixture::new(1000, 1009);
    f.specific(996, 6).unwrap(); // 1000-1001 inside
    f.specific(1008, 5).unwrap(); // 1008-1009 inside
    f.specific(2000, 50).unwrap();
    let err = f.wildcard(7).unwrap_err();
    assert!(
        matches!(err, AcquireError::PoolExhausted { free_ports: 6, .. }),
        "{err:?}"
    );
    // Fewer free ports than asked for: full, not fragmented.
    assert!(!err.to_string().contains("fragmented"), "{err}");
    assert_eq!(f.wildcard(6).unwrap().range, range(1002, 6));
    assert!(matches!(
        f.wildcard(1),
        Err(AcquireError::PoolExhausted { free_ports: 0, .. })
    ));

    // Ports in use on the host are unreserved: they count as free.
    let mut table = Table::new(Pool::new(1000, 1009).unwrap());
    let err = table
        .acquire(
            Protocol::Udp,
            RangeRequest::Wildcard { count: 1 },
            holder(1, 1),
            Constraints::default(),
            &mut counter(),
            &mut |_, r| Some(r.start()),
        )
        .unwrap_err();
    assert!(
        matches!(err, AcquireError::PoolExhausted { free_ports: 10, .. }),
        "{err:?}"
    );
}

#[test]
fn bind_plans_try_free_ports_from_the_cursor_then_bound_ones() {
    use PortUse::{Bound, Free};
    let mut f = Fixture::new(1000, 1099);
    let r = f.wildcard(4).unwrap();
    let me = owner(1, 7);
    let ask = |table: &Table, process: &Owner, is_admin| {
        table.authorize_use(
            r.token,
            UseRequest {
                process,
                is_admin,
                gids: &[],
            },
        )
    };
    let order = |table: &Table| ask(table, &me, false).unwrap().order;
    assert_eq!(
        ask(&f.table, &me, false),
        Ok(BindPlan {
            range: range(1000, 4),
            protocol: Protocol::Tcp,
            kind: Kind::Runtime,
            order: vec![(1000, Free), (1001, Free), (1002, Free), (1003, Free)],
            held: false,
        })
    );
    // Only the owning process: not a reused pid, not another process, not an administrator.
    for (process, is_admin) in [
        (owner(1, 8), false),
        (owner(2, 7), false),
        (owner(0, 0), true),
    ] {
        assert!(matches!(
            ask(&f.table, &process, is_admin),
            Err(UseError::NotOwner { requester_pid, .. }) if requester_pid == process.pid
        ));
    }
    let unknown = Token::new(999).unwrap();
    assert_eq!(
        f.table.authorize_use(
            unknown,
            UseRequest {
                process: &me,
                is_admin: false,
                gids: &[]
            }
        ),
        Err(UseError::NotFound(unknown))
    );

    let with_bound =
        |table: &Table| -> Vec<Token> { table.with_bound().map(|r| r.token).collect() };
    assert_eq!(with_bound(&f.table), []);
    f.table.note_bound(r.token, 1001);
    assert_eq!(f.table.port_use(r.token, 1001), Some(Bound));
    assert_eq!(f.table.port_use(r.token, 1002), Some(Free));
    assert_eq!(f.table.bound_ports(r.token), 1);
    assert_eq!(with_bound(&f.table), [r.token]);
    // From just past the last bind, wrapping; the bound port last.
    assert_eq!(
        order(&f.table),
        [(1002, Free), (1003, Free), (1000, Free), (1001, Bound)]
    );
    // Binding the last port moves the cursor back to the first.
    f.table.note_bound(r.token, 1003);
    assert_eq!(
        order(&f.table),
        [(1000, Free), (1002, Free), (1001, Bound), (1003, Bound)]
    );
    assert_eq!(f.table.bound_ports(r.token), 2);
    // A socket closed: its port is free again, the cursor stays.
    f.table.note_unbound(r.token, 1001);
    assert_eq!(
        order(&f.table),
        [(1000, Free), (1001, Free), (1002, Free), (1003, Bound)]
    );
    assert_eq!(f.table.bound_ports(r.token), 1);
    assert_eq!(with_bound(&f.table), [r.token]);
    // Its last bound port freed: no longer among those with a port bound.
    f.table.note_unbound(r.token, 1003);
    assert_eq!(with_bound(&f.table), []);
    f.table.note_bound(r.token, 1003);
    // Ports outside the reservation, and unknown tokens, are ignored.
    f.table.note_bound(r.token, 999);
    f.table.note_bound(r.token, 1004);
    f.table.note_unbound(r.token, 1004);
    f.table.note_bound(unknown, 1000);
    assert_eq!(f.table.bound_ports(r.token), 1);
    assert_eq!(f.table.port_use(r.token, 999), None);
    assert_eq!(f.table.port_use(r.token, 1004), None);
    assert_eq!(f.table.port_use(unknown, 1000), None);
    assert_eq!(f.table.bound_ports(unknown), 0);
    // Every port bound: the plan is all bound ports, from the cursor on.
    for port in [1000, 1001, 1002] {
        f.table.note_bound(r.token, port);
    }
    assert_eq!(
        order(&f.table),
        [(1003, Bound), (1000, Bound), (1001, Bound), (1002, Bound)]
    );

    // The state stays with the reservation when it is handed on…
    let to = owner(2, 7);
    f.table.transfer(r.token, &me, to.clone()).unwrap();
    assert!(ask(&f.table, &me, false).is_err());
    assert_eq!(
        ask(&f.table, &to, false).unwrap().order.first(),
        Some(&(1003, Bound))
    );
    assert_eq!(f.table.bound_ports(r.token), 4);
    assert_eq!(with_bound(&f.table), [r.token]);
    // …and goes with it: the same ports re-acquired start fresh.
    f.table.release(r.token, &admin()).unwrap();
    assert_eq!(f.table.port_use(r.token, 1000), None);
    assert_eq!(with_bound(&f.table), []);
    let again = f.specific(1000, 4).unwrap();
    assert_eq!(f.table.bound_ports(again.token), 0);
    assert_eq!(f.table.port_use(again.token, 1003), Some(Free));
}

#[test]
fn only_the_owning_process_transfers_and_the_reservation_then_lives_with_the_recipient() {
    let mut f = Fixture::new(1000, 1099);
    let r = f.specific(1500, 2).unwrap();
    let p = persistent(&mut f, 1600, 1, Allowed::default());
    let me = owner(1, 7);
    let to = user_process(9, 2000);
    let before = f.snapshot();
    for requester in [owner(1, 8), owner(2, 7), owner(0, 0)] {
        assert!(matches!(
            f.table.transfer(r.token, &requester, to.clone()),
            Err(UseError::NotOwner { requester_pid, .. }) if requester_pid == requester.pid
        ));
    }
    assert!(matches!(
        f.table.transfer(p.token, &me, to.clone()),
        Err(UseError::NotOwner { .. })
    ));
    let unknown = Token::new(999).unwrap();
    assert_eq!(
        f.table.transfer(unknown, &me, to.clone()),
        Err(UseError::NotFound(unknown))
    );
    assert_eq!(f.snapshot(), before);

    let after = Reservation {
        lease: Lease::Runtime {
            owner: to.clone(),
            bond: Bond::Process,
            held: r.held(),
        },
        ..r.clone()
    };
    assert_eq!(
        f.table.transfer(r.token, &me, to.clone()),
        Ok(Change::Rebound {
            before: r.clone(),
            after: after.clone()
        })
    );
    assert_eq!(f.table.get(r.token), Some(&after));
    assert_eq!((after.bond(), after.session()), (Some(Bond::Process), None));
    assert!(after.is_owned_by(&to) && !after.is_owned_by(&me));
    // Its session ending, or the old owner exiting, no longer frees it.
    assert!(f.table.release_session(SessionId(1)).is_empty());
    assert!(f.table.release_owner_exited(&me).is_empty());
    assert!(f.table.release_unclaimed().is_empty());
    // The old owner has no more say in it.
    assert!(matches!(
        f.table.release(
            r.token,
            &Requester {
                process: me.clone(),
                is_admin: false
            }
        ),
        Err(ReleaseError::PermissionDenied(_))
    ));
    assert!(f.table.transfer(r.token, &me, me.clone()).is_err());
    // Another process of the recipient's pid does not end it; the recipient exiting does.
    assert!(f
        .table
        .release_owner_exited(&Owner {
            start_time: 8,
            ..to.clone()
        })
        .is_empty());
    assert_eq!(
        f.table.release_owner_exited(&to),
        [Change::Released {
            reservation: after,
            why: Ending::OwnerExited
        }]
    );
    assert_eq!(f.table.len(), 1);
    assert!(f.table.release_owner_exited(&to).is_empty());
}

#[test]
fn only_the_owner_reclaims_and_only_what_is_unclaimed() {
    let mut f = Fixture::new(1000, 1099);
    let me = owner(1, 7);
    let unclaimed = journaled(
        50,
        Protocol::Tcp,
        range(1200, 2),
        me.clone(),
        Bond::Unclaimed,
    );
    let process = journaled(51, Protocol::Tcp, range(1210, 2), me.clone(), Bond::Process);
    f.restore(unclaimed.clone());
    f.restore(process.clone());
    let session = f.specific(1300, 1).unwrap();
    let p = persistent(&mut f, 1400, 1, Allowed::default());
    let before = f.snapshot();
    for token in [process.token, session.token, p.token] {
        assert!(matches!(
            f.table.reclaim(token, &me, SessionId(4)),
            Err(UseError::NotOwner { .. })
        ));
    }
    for requester in [owner(1, 8), owner(2, 7)] {
        assert!(matches!(
            f.table.reclaim(unclaimed.token, &requester, SessionId(4)),
            Err(UseError::NotOwner { .. })
        ));
    }
    let unknown = Token::new(999).unwrap();
    assert_eq!(
        f.table.reclaim(unknown, &me, SessionId(4)),
        Err(UseError::NotFound(unknown))
    );
    assert_eq!(f.snapshot(), before);

    let after = Reservation {
        lease: Lease::Runtime {
            owner: me.clone(),
            bond: Bond::Session(SessionId(4)),
            held: unclaimed.held(),
        },
        ..unclaimed.clone()
    };
    assert_eq!(
        f.table.reclaim(unclaimed.token, &me, SessionId(4)),
        Ok(Change::Rebound {
            before: unclaimed.clone(),
            after: after.clone()
        })
    );
    // Once only.
    assert!(f.table.reclaim(unclaimed.token, &me, SessionId(5)).is_err());
    assert!(f.table.release_unclaimed().is_empty());
    assert_eq!(
        f.table.release_session(SessionId(4)),
        [Change::Released {
            reservation: after,
            why: Ending::SessionEnded
        }]
    );
}

#[test]
fn reverting_a_grant_or_a_creation_takes_it_back() {
    let mut f = Fixture::new(1000, 1099);
    let grant = f
        .table
        .acquire(
            Protocol::Udp,
            RangeRequest::Wildcard { count: 3 },
            holder(1, 1),
            Constraints::default(),
            &mut f.tokens,
            &mut nothing_in_use,
        )
        .unwrap();
    assert!(grant.refusable());
    let r = grant.reservation().unwrap().clone();
    assert_eq!(
        f.table.revert(&grant),
        Ok(vec![Change::Released {
            reservation: r.clone(),
            why: Ending::Undone
        }])
    );
    assert!(f.table.is_empty());
    assert_eq!(f.table.reserved_ports(Protocol::Udp), 0);
    assert_eq!(f.table.usage(1000), Usage::default());
    assert!(f.table.release_session(SessionId(1)).is_empty());
    // Nothing left to undo.
    assert_eq!(f.table.revert(&grant), Ok(vec![]));

    let p = persistent(&mut f, 8000, 4, Allowed::default());
    let created = Change::PersistentCreated(p.clone());
    assert!(created.refusable());
    assert_eq!(
        f.table.revert(&created),
        Ok(vec![Change::PersistentDeleted(p.clone())])
    );
    assert_eq!(f.table.find_persistent(Protocol::Tcp, range(8000, 4)), None);
    assert!(f.table.is_empty());
    assert_eq!(f.table.revert(&created), Ok(vec![]));
}

#[test]
fn reverting_a_deletion_recreates_it_unless_its_ports_were_taken() {
    let mut f = Fixture::new(1000, 1099);
    let p = persistent(
        &mut f,
        8000,
        4,
        Allowed {
            users: vec![7],
            groups: vec![],
        },
    );
    let deleted = f
        .table
        .delete_persistent(Protocol::Tcp, range(8000, 4))
        .unwrap();
    assert!(deleted.refusable());
    assert_eq!(deleted, Change::PersistentDeleted(p.clone()));
    assert_eq!(
        f.table.revert(&deleted),
        Ok(vec![Change::PersistentCreated(p.clone())])
    );
    // Same token, same allow list.
    assert_eq!(f.table.get(p.token), Some(&p));
    assert_eq!(
        f.table.find_persistent(Protocol::Tcp, range(8000, 4)),
        Some(&p)
    );
    // Undoing it again fails: it is live again, under its own token.
    assert!(matches!(
        f.table.revert(&deleted),
        Err(AcquireError::Conflict { holder, .. }) if *holder == p
    ));

    // Deleted, then a port of it granted meanwhile: the deletion stands.
    let deleted = f
        .table
        .delete_persistent(Protocol::Tcp, range(8000, 4))
        .unwrap();
    let taker = f.specific(8003, 1).unwrap();
    let before = f.snapshot();
    assert_eq!(
        f.table.revert(&deleted),
        Err(AcquireError::Conflict {
            protocol: Protocol::Tcp,
            requested: range(8000, 4),
            holder: Box::new(taker)
        })
    );
    assert_eq!(f.snapshot(), before);
}

#[test]
fn reverting_a_rebinding_restores_the_reservation_as_it_was() {
    let mut f = Fixture::new(1000, 1099);
    let me = owner(1, 7);
    let r = f.specific(1500, 2).unwrap();
    let to = user_process(9, 2000);
    let moved = f.table.transfer(r.token, &me, to.clone()).unwrap();
    assert!(moved.refusable());
    let Change::Rebound { before, after } = moved.clone() else {
        panic!("expected a rebinding, got {moved:?}");
    };
    assert_eq!(
        f.table.revert(&moved),
        Ok(vec![Change::Rebound {
            before: after.clone(),
            after: before.clone()
        }])
    );
    assert_eq!(f.table.get(r.token), Some(&r));
    assert_eq!(f.table.usage(2000), Usage::default());
    assert_eq!(f.table.usage(1000), usage(1, 2));
    // Bound to its session again.
    assert_eq!(f.table.release_session(SessionId(1)).len(), 1);
    // The reservation changed (here: ended) meanwhile: nothing to undo.
    assert_eq!(f.table.revert(&moved), Ok(vec![]));

    // A re-claim undone is unclaimed again.
    let row = journaled(
        60,
        Protocol::Udp,
        range(1600, 1),
        me.clone(),
        Bond::Unclaimed,
    );
    f.restore(row.clone());
    let reclaimed = f.table.reclaim(row.token, &me, SessionId(3)).unwrap();
    let undone = f.table.revert(&reclaimed).unwrap();
    assert!(matches!(&undone[..], [Change::Rebound { after, .. }] if *after == row));
    assert_eq!(f.table.get(row.token), Some(&row));
    assert!(f.table.release_session(SessionId(3)).is_empty());
    assert_eq!(f.table.release_unclaimed().len(), 1);
}

#[test]
fn changes_that_cannot_be_refused_are_not_reverted() {
    let mut f = Fixture::new(1000, 1099);
    let r = f.specific(1500, 2).unwrap();
    let row = journaled(
        60,
        Protocol::Udp,
        range(1600, 1),
        owner(1, 7),
        Bond::Unclaimed,
    );
    let restored = f.restore(row.clone());
    let not_restored = f.restore(journaled(
        61,
        Protocol::Udp,
        range(1600, 1),
        owner(1, 7),
        Bond::Unclaimed,
    ));
    let ended = Change::Released {
        reservation: r.clone(),
        why: Ending::SessionEnded,
    };
    let before = f.snapshot();
    for change in [restored, not_restored, ended] {
        assert!(!change.refusable(), "{change:?}");
        assert_eq!(f.table.revert(&change), Ok(vec![]), "{change:?}");
    }
    assert_eq!(f.snapshot(), before);
}

/// Runs `op` and checks that the changes it returns, replayed on the table as it was, give the
/// table as it is: nothing more, nothing less.
fn exactly(f: &mut Fixture, op: impl FnOnce(&mut Fixture) -> Vec<Change>) -> Vec<Change> {
    let before = f.snapshot();
    let changes = op(f);
    assert_eq!(replay(before, &changes), f.snapshot(), "{changes:?}");
    changes
}

#[test]
fn every_mutating_method_returns_exactly_the_changes_it_made() {
    let mut f = Fixture::new(1000, 1099);
    let me = owner(1, 7);
    let to = user_process(9, 2000);
    let acquire = |request, session| {
        move |f: &mut Fixture| -> Vec<Change> {
            f.table
                .acquire(
                    Protocol::Tcp,
                    request,
                    holder(1, session),
                    Constraints::default(),
                    &mut f.tokens,
                    &mut nothing_in_use,
                )
                .into_iter()
                .collect()
        }
    };
    let kinds = |changes: &[Change]| -> Vec<&'static str> {
        changes
            .iter()
            .map(|c| match c {
                Change::Granted(_) => "granted",
                Change::Released { .. } => "released",
                Change::Rebound { .. } => "rebound",
                Change::Restored(_) => "restored",
                Change::NotRestored { .. } => "not restored",
                Change::PersistentCreated(_) => "created",
                Change::PersistentDeleted(_) => "deleted",
            })
            .collect()
    };
    let restore =
        |r: Reservation| move |f: &mut Fixture| f.table.restore(r, false).into_iter().collect();
    let c = exactly(
        &mut f,
        restore(journaled(
            70,
            Protocol::Tcp,
            range(1200, 3),
            me.clone(),
            Bond::Unclaimed,
        )),
    );
    assert_eq!(kinds(&c), ["restored"]);
    let c = exactly(
        &mut f,
        restore(journaled(
            71,
            Protocol::Tcp,
            range(1202, 3),
            me.clone(),
            Bond::Unclaimed,
        )),
    );
    assert_eq!(kinds(&c), ["not restored"]);
    let c = exactly(
        &mut f,
        restore(journaled(
            72,
            Protocol::Tcp,
            range(1300, 1),
            to.clone(),
            Bond::Process,
        )),
    );
    assert_eq!(kinds(&c), ["restored"]);

    let c = exactly(&mut f, acquire(RangeRequest::Wildcard { count: 2 }, 1));
    assert_eq!(kinds(&c), ["granted"]);
    let a = c[0].reservation().unwrap().clone();
    let c = exactly(&mut f, acquire(RangeRequest::Specific(range(1201, 1)), 1));
    assert!(c.is_empty(), "a conflict changes nothing");
    let c = exactly(&mut f, acquire(RangeRequest::Specific(range(1400, 5)), 2));
    assert_eq!(kinds(&c), ["granted"]);
    let b = c[0].reservation().unwrap().clone();
    exactly(&mut f, acquire(RangeRequest::Wildcard { count: 1 }, 1));

    let c = exactly(&mut f, |f| {
        f.table
            .reclaim(Token::new(70).unwrap(), &me, SessionId(1))
            .into_iter()
            .collect()
    });
    assert_eq!(kinds(&c), ["rebound"]);
    let c = exactly(&mut f, |f| {
        f.table
            .transfer(a.token, &me, to.clone())
            .into_iter()
            .collect()
    });
    assert_eq!(kinds(&c), ["rebound"]);
    let c = exactly(&mut f, |f| f.table.revert(&c[0]).unwrap());
    assert_eq!(kinds(&c), ["rebound"]);
    let c = exactly(&mut f, |f| {
        f.table
            .transfer(a.token, &me, to.clone())
            .into_iter()
            .collect()
    });
    assert_eq!(kinds(&c), ["rebound"]);

    let p = exactly(&mut f, |f| {
        let token = f.table.new_token(&mut f.tokens);
        f.table
            .create_persistent(
                token,
                Protocol::Udp,
                range(1500, 2),
                (Allowed::default(), None, None),
                0,
                0,
                &mut nothing_in_use,
            )
            .into_iter()
            .collect()
    });
    assert_eq!(kinds(&p), ["created"]);
    let c = exactly(&mut f, |f| {
        let token = f.table.new_token(&mut f.tokens);
        f.table
            .create_persistent(
                token,
                Protocol::Udp,
                range(1501, 2),
                (Allowed::default(), None, None),
                0,
                0,
                &mut nothing_in_use,
            )
            .into_iter()
            .collect()
    });
    assert!(c.is_empty());
    let c = exactly(&mut f, |f| f.table.revert(&p[0]).unwrap());
    assert_eq!(kinds(&c), ["deleted"]);
    let c = exactly(&mut f, |f| f.table.revert(&c[0]).unwrap());
    assert_eq!(kinds(&c), ["created"]);
    let d = exactly(&mut f, |f| {
        f.table
            .delete_persistent(Protocol::Udp, range(1500, 2))
            .into_iter()
            .collect()
    });
    assert_eq!(kinds(&d), ["deleted"]);
    let c = exactly(&mut f, |f| {
        f.table
            .delete_persistent(Protocol::Udp, range(1500, 2))
            .into_iter()
            .collect()
    });
    assert!(c.is_empty());
    exactly(&mut f, |f| f.table.revert(&d[0]).unwrap());

    let c = exactly(&mut f, |f| {
        f.table
            .release(
                b.token,
                &Requester {
                    process: me.clone(),
                    is_admin: false,
                },
            )
            .into_iter()
            .collect()
    });
    assert_eq!(kinds(&c), ["released"]);
    // Session 1: the wildcard single and the re-claimed row (the transferred one is not).
    let c = exactly(&mut f, |f| f.table.release_session(SessionId(1)));
    assert_eq!(kinds(&c), ["released", "released"]);
    exactly(&mut f, |f| {
        f.table.note_bound(a.token, a.range.start());
        f.table.note_unbound(a.token, a.range.start());
        Vec::new()
    });
    // The transferred block and the restored row handed to `to`.
    let c = exactly(&mut f, |f| f.table.release_owner_exited(&to));
    assert_eq!(kinds(&c), ["released", "released"]);
    exactly(&mut f, |f| {
        vec![f.restore(journaled(
            80,
            Protocol::Udp,
            range(1000, 1),
            me.clone(),
            Bond::Unclaimed,
        ))]
    });
    let c = exactly(&mut f, |f| f.table.release_unclaimed());
    assert_eq!(kinds(&c), ["released"]);
    // Only the persistent reservation is left.
    assert_eq!(f.table.len(), 1);
    assert_eq!(
        f.table.iter().next().map(Reservation::kind),
        Some(Kind::Persistent)
    );
}

/// Reverting a grant should undo that grant only. When the granted reservation already ended
/// and its token now names another reservation (a token source may repeat a value once it is no
/// longer live), the revert removes that other reservation. `revert` of a rebinding checks that
/// the reservation is still as the change left it; a grant's (and a creation's) does not.
#[test]
fn reverting_a_grant_that_already_ended_leaves_a_reuse_of_its_token_alone() {
    let mut table = Table::new(Pool::new(1000, 1099).unwrap());
    let mut tokens = || 1;
    let mut acquire = |table: &mut Table, session| {
        table
            .acquire(
                Protocol::Tcp,
                RangeRequest::Wildcard { count: 1 },
                holder(1, session),
                Constraints::default(),
                &mut tokens,
                &mut nothing_in_use,
            )
            .unwrap()
    };
    let first = acquire(&mut table, 1);
    assert_eq!(table.release_session(SessionId(1)).len(), 1);
    let second = granted(acquire(&mut table, 2));
    assert_eq!(second.token, first.reservation().unwrap().token);
    assert_eq!(table.revert(&first), Ok(vec![]));
    assert_eq!(table.get(second.token), Some(&second));
}

#[test]
fn status_counts_free_pool_ports_per_protocol_and_persistent_reservations() {
    let mut f = Fixture::new(1000, 1009);
    assert_eq!(f.table.free_in_pool(Protocol::Tcp), 10);
    let runtime = f.wildcard(3).unwrap();
    // Partly inside the pool: only its ports in the pool count.
    let kept = persistent(&mut f, 1008, 4, Allowed::default());
    assert_eq!(f.table.free_in_pool(Protocol::Tcp), 5);
    assert_eq!(f.table.free_in_pool(Protocol::Udp), 10);
    assert_eq!(f.table.persistent_count(), 1);
    assert_eq!(f.table.len(), 2);
    f.release(&runtime);
    assert_eq!(f.table.free_in_pool(Protocol::Tcp), 8);
    f.table
        .delete_persistent(Protocol::Tcp, kept.range)
        .unwrap();
    assert_eq!(f.table.persistent_count(), 0);
    assert_eq!(f.table.free_in_pool(Protocol::Tcp), 10);
}

#[test]
fn held_ports_have_a_quota_of_their_own() {
    let mut f = Fixture::new(1000, 1099);
    let limits = Constraints {
        quota: Some(Quota {
            max_held_ports: 3,
            ..Quota::UNLIMITED
        }),
        ..Constraints::default()
    };
    let held = || Holder {
        hold: true,
        ..holder(1, 1)
    };
    let wildcard = |count| RangeRequest::Wildcard { count };
    f.acquire_as(wildcard(2), held(), limits).unwrap();
    assert_eq!(f.table.usage(1000).held_ports, 2);
    assert_eq!(
        f.acquire_as(wildcard(2), held(), limits),
        Err(AcquireError::QuotaExceeded {
            uid: 1000,
            what: QuotaKind::HeldPorts,
            limit: 3,
            used: 2,
            asked: 2
        })
    );
    // Unheld blocks do not count against it.
    f.acquire_as(wildcard(10), holder(1, 1), limits).unwrap();
    assert_eq!(
        f.table.usage(1000),
        Usage {
            reservations: 2,
            ports: 12,
            held_ports: 2
        }
    );
}

#[test]
fn a_port_number_held_in_both_protocols_counts_once() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    let mut tokens = counter();
    let mut grant = |t: &mut Table, protocol, start, count, who: Holder| {
        t.acquire(
            protocol,
            RangeRequest::Specific(range(start, count)),
            who,
            Constraints::default(),
            &mut tokens,
            &mut nothing_in_use,
        )
        .map(granted)
        .unwrap()
    };
    // TCP 1000-1003 and UDP 1002-1005 of one user: six numbers, two reservations.
    let tcp = grant(&mut t, Protocol::Tcp, 1000, 4, holder(1, 1));
    let udp = grant(&mut t, Protocol::Udp, 1002, 4, holder(2, 2));
    assert_eq!(t.usage(1000), usage(2, 6));
    // The same ports in both protocols for one process: a twin, one reservation.
    let twin = grant(&mut t, Protocol::Udp, 1010, 2, holder(1, 1));
    let first = grant(&mut t, Protocol::Tcp, 1010, 2, holder(1, 1));
    assert_eq!(t.usage(1000), usage(3, 8));
    // Released in any order, the counts come back to nothing.
    t.release(first.token, &admin()).unwrap();
    assert_eq!(t.usage(1000), usage(3, 8));
    t.release(tcp.token, &admin()).unwrap();
    assert_eq!(t.usage(1000), usage(2, 6));
    t.release(twin.token, &admin()).unwrap();
    t.release(udp.token, &admin()).unwrap();
    assert_eq!(t.usage(1000), Usage::default());
}

#[test]
fn capped_users_share_at_most_the_shared_cap_of_the_shared_range() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    t.set_shared_range(Some(range(1000, 50)));
    let mut tokens = counter();
    let capped = Constraints {
        shared_max: Some(10),
        ..Constraints::default()
    };
    let other_user = |pid| Holder {
        owner: user_process(pid, 2000 + pid),
        session: SessionId(u64::from(pid)),
        acquired_at_ms: 0,
        hold: false,
        label: None,
        name: None,
    };
    let mut ask = |t: &mut Table, protocol, request, who: Holder, limits| {
        t.acquire(
            protocol,
            request,
            who,
            limits,
            &mut tokens,
            &mut nothing_in_use,
        )
        .map(granted)
    };
    // Two users, six and four numbers of the shared range: the cap is reached.
    let a = ask(
        &mut t,
        Protocol::Tcp,
        RangeRequest::Specific(range(1000, 6)),
        other_user(1),
        capped,
    )
    .unwrap();
    ask(
        &mut t,
        Protocol::Tcp,
        RangeRequest::Wildcard { count: 4 },
        other_user(2),
        capped,
    )
    .unwrap();
    assert_eq!(t.shared_used(), 10);
    // A third user is refused, naming the shared limit, and the refusal leaves no trace.
    let refused = ask(
        &mut t,
        Protocol::Tcp,
        RangeRequest::Wildcard { count: 1 },
        other_user(3),
        capped,
    )
    .unwrap_err();
    assert_eq!(
        refused,
        AcquireError::QuotaExceeded {
            uid: 2003,
            what: QuotaKind::Shared,
            limit: 10,
            used: 10,
            asked: 1
        }
    );
    assert!(
        refused.to_string().contains("together hold 10"),
        "{refused}"
    );
    // The same numbers in UDP add nothing; outside the range nothing counts; an uncapped
    // asker (an administrator) is not limited and not counted.
    ask(
        &mut t,
        Protocol::Udp,
        RangeRequest::Specific(range(1000, 6)),
        other_user(4),
        capped,
    )
    .unwrap();
    ask(
        &mut t,
        Protocol::Tcp,
        RangeRequest::Specific(range(1060, 20)),
        other_user(5),
        capped,
    )
    .unwrap();
    ask(
        &mut t,
        Protocol::Tcp,
        RangeRequest::Specific(range(1020, 20)),
        holder(9, 9),
        Constraints::default(),
    )
    .unwrap();
    assert_eq!(t.shared_used(), 10);
    // A release makes room; moving the range counts anew.
    t.release(a.token, &admin()).unwrap();
    assert_eq!(t.shared_used(), 10, "UDP 1000-1005 still holds the numbers");
    t.set_shared_range(Some(range(1060, 40)));
    assert_eq!(t.shared_used(), 20);
    t.set_shared_range(None);
    assert_eq!(t.shared_used(), 0);
}

#[test]
fn a_withdrawn_grant_is_gone_and_the_next_search_starts_past_the_port_in_use() {
    let mut f = Fixture::new(1000, 1009);
    let first = f.wildcard(2).unwrap();
    assert_eq!(first.range.start(), 1000);
    // Port 1000 turned out to be in use on the host after the block was chosen.
    assert!(f.table.withdraw(&first, 1000));
    assert!(f.table.get(first.token).is_none());
    assert!(!f.table.withdraw(&first, 1000), "only once");
    let next = f.wildcard(2).unwrap();
    assert_eq!(next.range.start(), 1001);
}

#[test]
fn a_reservation_given_to_a_cgroup_lives_until_the_cgroup_empties() {
    let mut f = Fixture::new(1000, 1999);
    let r = f.wildcard(3).unwrap();
    let me = holder(1, 1).owner;
    // Only its owner gives it, and never to cgroup 0.
    assert!(f.table.give_to_cgroup(r.token, &owner(2, 7), 77).is_err());
    assert!(f.table.give_to_cgroup(r.token, &me, 0).is_err());
    let Change::Rebound { before, after } = f.table.give_to_cgroup(r.token, &me, 77).unwrap()
    else {
        panic!("expected a rebinding");
    };
    assert_eq!(before, r);
    assert_eq!(after.cgroup(), Some(77));
    assert_eq!(after.session(), None);
    assert!(
        !after.held(),
        "the kernel keeps a cgroup's ports; a hold would refuse the owner"
    );
    assert_eq!(after.owner(), Some(&me));
    // Its session, its owner process, another cgroup: none of them ends it.
    assert!(f.table.release_session(SessionId(1)).is_empty());
    assert!(f.table.release_owner_exited(&me).is_empty());
    assert!(f.table.release_cgroup(78).is_empty());
    // The cgroup emptying does, and it counted against its owner's user until then.
    assert_eq!(f.table.usage(me.uid).reservations, 1);
    assert_eq!(
        released(f.table.release_cgroup(77), Ending::CgroupEmptied),
        [after]
    );
    assert_eq!(f.table.usage(me.uid), Usage::default());
}

#[test]
fn a_request_never_chooses_again_a_port_it_found_in_use_though_the_cursor_goes_back() {
    // Two held requests chose at once: B port 1000, then A port 1001. Both ports turn out to be
    // in use on the host; A finds out first, then B, whose withdrawal sends the cursor back to
    // 1001. Then A chooses again, through `found` (`None`: the cursor alone).
    let choose_again = |found: Option<&FoundInUse>| {
        let mut f = Fixture::new(1000, 1009);
        let b = f.wildcard(1).unwrap();
        let a = f.wildcard(1).unwrap();
        assert_eq!((b.range.start(), a.range.start()), (1000, 1001));
        assert!(f.table.withdraw(&a, 1001));
        assert!(f.table.withdraw(&b, 1000));
        f.table
            .acquire(
                Protocol::Tcp,
                RangeRequest::Wildcard { count: 1 },
                holder(1, 1),
                Constraints::default(),
                &mut f.tokens,
                &mut |protocol, range| found.and_then(|found| found.first_in(protocol, range)),
            )
            .map(granted)
            .unwrap()
            .range
            .start()
    };
    assert_eq!(
        choose_again(None),
        1001,
        "the cursor alone went back over it"
    );
    let mut found = FoundInUse::default();
    found.note(Protocol::Tcp, 1001);
    assert_eq!(choose_again(Some(&found)), 1002);
}

#[test]
fn ports_found_in_use_are_told_by_protocol_and_range() {
    let mut found = FoundInUse::default();
    assert!(found.is_empty());
    assert_eq!(found.first_in(Protocol::Tcp, range(1, 65535)), None);
    found.note(Protocol::Udp, 2000);
    found.note(Protocol::Tcp, 2003);
    found.note(Protocol::Tcp, 2001);
    found.note(Protocol::Tcp, 2001);
    assert_eq!(found.len(), 3);
    assert_eq!(found.first_in(Protocol::Tcp, range(2000, 4)), Some(2001));
    assert_eq!(found.first_in(Protocol::Tcp, range(2002, 2)), Some(2003));
    assert_eq!(found.first_in(Protocol::Tcp, range(2004, 10)), None);
    assert_eq!(found.first_in(Protocol::Udp, range(2000, 1)), Some(2000));
    assert_eq!(found.first_in(Protocol::Udp, range(2001, 3)), None);
}
