//! Edge cases of [`Table`]; the randomized comparison with a model is in `tests/model.rs`.

use super::*;

fn owner(pid: u32, start_time: u64) -> Owner {
    Owner {
        pid,
        uid: 1000,
        gid: 1000,
        start_time,
        command: "test".to_owned(),
    }
}

fn holder(pid: u32, session: u64) -> Holder {
    Holder {
        owner: owner(pid, 7),
        session: SessionId(session),
        acquired_at_ms: 42,
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

    fn wildcard(&mut self, count: u16) -> Result<Reservation, AcquireError> {
        self.table.acquire(
            Protocol::Tcp,
            RangeRequest::Wildcard { count },
            holder(1, 1),
            &mut self.tokens,
            &mut nothing_in_use,
        )
    }

    fn specific(&mut self, start: u16, count: u16) -> Result<Reservation, AcquireError> {
        self.table.acquire(
            Protocol::Tcp,
            RangeRequest::Specific(range(start, count)),
            holder(1, 1),
            &mut self.tokens,
            &mut nothing_in_use,
        )
    }

    fn release(&mut self, r: &Reservation) {
        let admin = Requester {
            process: owner(0, 0),
            is_admin: true,
        };
        self.table.release(r.token, &admin).unwrap();
    }
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
    let got = table
        .acquire(
            Protocol::Udp,
            RangeRequest::Wildcard { count: 5 },
            holder(1, 1),
            &mut tokens,
            &mut probe,
        )
        .unwrap();
    assert_eq!(got.range, range(1004, 5));
    assert_eq!(probes, 2);
    let mut busy = |_: Protocol, r: PortRange| Some(r.start());
    let none = table.acquire(
        Protocol::Udp,
        RangeRequest::Wildcard { count: 1 },
        holder(1, 1),
        &mut tokens,
        &mut busy,
    );
    assert!(exhausted(none));
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
        &mut tokens,
        &mut liar,
    );
    assert!(exhausted(none));
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
    assert_eq!(r.owner, Some(owner(1, 7)));
    assert_eq!(r.session, Some(SessionId(1)));
    assert_eq!((r.kind, r.acquired_at_ms), (Kind::Runtime, 42));
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
    assert_eq!(f.table.release(r.token, &ask(1, 7, false)), Ok(r.clone()));
    assert_eq!(
        f.table.release(r.token, &ask(1, 7, false)),
        Err(ReleaseError::NotFound(r.token))
    );
    let s = f.wildcard(1).unwrap();
    assert_eq!(f.table.release(s.token, &ask(9, 9, true)), Ok(s));
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
                &mut tokens,
                &mut nothing_in_use,
            )
            .unwrap();
    }
    let gone = table.release_session(SessionId(1));
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
        table
            .acquire(
                Protocol::Tcp,
                RangeRequest::Wildcard { count: 1 },
                holder(1, 1),
                &mut tokens,
                &mut nothing_in_use,
            )
            .unwrap()
            .token
            .get()
    };
    assert_eq!(take(&mut table), 5);
    assert_eq!(take(&mut table), 6);
    assert_eq!(take(&mut table), 7);
}

fn persistent(f: &mut Fixture, start: u16, count: u16, allowed: Allowed) -> Reservation {
    let token = f.table.new_token(&mut f.tokens);
    f.table
        .insert_persistent(
            token,
            Protocol::Tcp,
            range(start, count),
            allowed,
            1,
            &mut nothing_in_use,
        )
        .unwrap()
}

#[test]
fn persistent_reservations_conflict_are_found_exactly_and_are_not_released() {
    let mut f = Fixture::new(1000, 1999);
    let p = persistent(&mut f, 8000, 10, Allowed::default());
    assert_eq!(p.kind, Kind::Persistent);
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
    let admin = Requester {
        process: owner(9, 9),
        is_admin: true,
    };
    let err = f.table.release(p.token, &admin).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
    // A session ending does not touch it.
    assert!(f.table.release_session(SessionId(1)).is_empty());
    assert!(f.table.remove_persistent(p.token).is_some());
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
            .map(|_| ())
            .map_err(|e| e.kind())
    };
    assert_eq!(ask(&owner(5, 5), false, &[]), Ok(())); // uid 1000 is named
    assert_eq!(ask(&stranger, false, &[50]), Ok(())); // group 50 is named
    assert_eq!(ask(&stranger, true, &[]), Ok(())); // administrator
    assert_eq!(
        ask(&stranger, false, &[7]),
        Err(crate::ErrorKind::PermissionDenied)
    );
}

#[test]
fn restored_runtime_reservations_wait_for_their_owner() {
    let mut f = Fixture::new(1000, 1999);
    let token = Token::new(77).unwrap();
    let restored = f
        .table
        .restore_runtime(token, Protocol::Tcp, range(1500, 3), owner(1, 7), 5)
        .unwrap();
    assert_eq!(restored.session, None);
    // Held: nobody else gets the ports.
    assert!(f.specific(1501, 1).is_err());
    // Only the same process (pid and start time) may re-claim it.
    assert!(f.table.reclaim(token, &owner(1, 8), SessionId(3)).is_err());
    let r = f.table.reclaim(token, &owner(1, 7), SessionId(3)).unwrap();
    assert_eq!(r.session, Some(SessionId(3)));
    // Re-claimed: it now dies with that session, and is no longer unclaimed.
    assert!(f.table.release_unclaimed(None).is_empty());
    assert_eq!(f.table.release_session(SessionId(3)).len(), 1);
}

#[test]
fn unclaimed_reservations_are_released_all_or_by_owner() {
    let mut f = Fixture::new(1000, 1999);
    for (t, pid, start) in [(1, 1, 1100), (2, 2, 1200), (3, 2, 1300)] {
        f.table
            .restore_runtime(
                Token::new(t).unwrap(),
                Protocol::Udp,
                range(start, 1),
                owner(pid, 7),
                0,
            )
            .unwrap();
    }
    assert_eq!(f.table.release_unclaimed(Some(&owner(2, 7))).len(), 2);
    assert_eq!(f.table.release_unclaimed(None).len(), 1);
    assert!(f.table.is_empty());
}

#[test]
fn a_restored_reservation_that_overlaps_is_refused() {
    let mut f = Fixture::new(1000, 1999);
    f.specific(1500, 2).unwrap();
    let err = f
        .table
        .restore_runtime(
            Token::new(99).unwrap(),
            Protocol::Tcp,
            range(1501, 1),
            owner(3, 3),
            0,
        )
        .unwrap_err();
    assert!(matches!(err, AcquireError::Conflict { .. }));
}

#[test]
fn a_token_already_live_is_refused_on_insert() {
    let mut f = Fixture::new(1000, 1999);
    let r = f.specific(1500, 1).unwrap();
    let err = f
        .table
        .restore_runtime(r.token, Protocol::Udp, range(1600, 1), owner(3, 3), 0)
        .unwrap_err();
    assert!(matches!(err, AcquireError::Conflict { .. }));
    let err = f
        .table
        .insert_persistent(
            r.token,
            Protocol::Udp,
            range(1700, 1),
            Allowed::default(),
            0,
            &mut nothing_in_use,
        )
        .unwrap_err();
    assert!(matches!(err, AcquireError::Conflict { .. }));
    assert_eq!(f.table.len(), 1);
}
