//! Where wildcard searches look: the stripe listed ahead (unheld blocks come from it first, in
//! turn; held blocks, specific requests and a full stripe go to the rest of the pool; it moves
//! on once half of it is taken), and the reuse cool-down (ports freed a moment ago are passed
//! by while others fit); bounded wildcards (within LO-HI).

use super::*;
use crate::error::RangeError;

fn holder(hold: bool) -> Holder {
    Holder {
        owner: Owner {
            pid: 1,
            uid: 1000,
            gid: 1000,
            start_time: 7,
            command: "test".into(),
        },
        session: SessionId(1),
        acquired_at_ms: 0,
        hold,
        label: None,
        name: None,
    }
}

fn range(start: u16, count: u16) -> PortRange {
    PortRange::new(start, count).unwrap()
}

/// A pool of 1000-1099 whose stripe is 1050-1053.
fn table() -> Table {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    t.set_stripe(Some(range(1050, 4)));
    t
}

struct Asker {
    tokens: u64,
}

impl Asker {
    fn wildcard(&mut self, t: &mut Table, count: u16, hold: bool) -> Reservation {
        self.acquire(t, RangeRequest::Wildcard { count }, hold)
            .unwrap()
    }

    fn acquire(
        &mut self,
        t: &mut Table,
        request: RangeRequest,
        hold: bool,
    ) -> Result<Reservation, AcquireError> {
        let tokens = &mut self.tokens;
        let mut next = || {
            *tokens += 1;
            *tokens
        };
        let change = t.acquire(
            Protocol::Tcp,
            request,
            holder(hold),
            Constraints::default(),
            &mut next,
            &mut |_, _| None,
        )?;
        match change {
            Change::Granted(r) => Ok(r),
            other => panic!("expected a grant, got {other:?}"),
        }
    }
}

fn admin() -> Requester {
    Requester {
        process: holder(false).owner,
        is_admin: true,
    }
}

#[test]
fn unheld_wildcards_come_from_the_stripe_in_turn_then_from_the_pool() {
    let mut t = table();
    let mut a = Asker { tokens: 0 };
    let starts: Vec<u16> = (0..4)
        .map(|_| a.wildcard(&mut t, 1, false).range.start())
        .collect();
    assert_eq!(starts, [1050, 1051, 1052, 1053]);
    // The stripe is full: the pool's own cursor, from its start.
    assert_eq!(a.wildcard(&mut t, 1, false).range.start(), 1000);
    // A port of the stripe released is handed out again only in its turn.
    let freed = t.find_port(Protocol::Tcp, 1051).unwrap().token;
    t.release(freed, &admin()).unwrap();
    assert_eq!(a.wildcard(&mut t, 1, false).range.start(), 1051);
}

#[test]
fn the_stripe_is_handed_out_round_robin_not_lowest_first() {
    let mut t = table();
    let mut a = Asker { tokens: 0 };
    let first = a.wildcard(&mut t, 1, false);
    t.release(first.token, &admin()).unwrap();
    // 1050 is free again, but the next one in turn is 1051.
    assert_eq!(a.wildcard(&mut t, 1, false).range.start(), 1051);
}

#[test]
fn held_blocks_and_specific_requests_leave_the_stripe_alone() {
    let mut t = table();
    let mut a = Asker { tokens: 0 };
    assert_eq!(a.wildcard(&mut t, 1, true).range.start(), 1000);
    let specific = a
        .acquire(&mut t, RangeRequest::Specific(range(1052, 1)), false)
        .unwrap();
    assert_eq!(specific.range, range(1052, 1));
    // An unheld block of 2 fits the stripe around the specific one.
    assert_eq!(a.wildcard(&mut t, 2, false).range, range(1050, 2));
    // One of 3 no longer does.
    assert_eq!(a.wildcard(&mut t, 3, false).range, range(1001, 3));
}

#[test]
fn pairs_come_from_the_stripe_too() {
    let mut t = table();
    let mut tokens = 0u64;
    let mut next = || {
        tokens += 1;
        tokens
    };
    let pair = t
        .acquire_both(
            RangeRequest::Wildcard { count: 1 },
            holder(false),
            Constraints::default(),
            &mut next,
            &mut |_, _| None,
        )
        .unwrap();
    for change in pair {
        let Change::Granted(r) = change else {
            panic!("expected a grant")
        };
        assert_eq!(r.range, range(1050, 1));
    }
}

#[test]
fn a_stripe_below_the_askers_lowest_port_is_skipped() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    t.set_stripe(Some(range(1000, 4)));
    let mut tokens = 0u64;
    let mut next = || {
        tokens += 1;
        tokens
    };
    let limits = Constraints {
        lowest_port: 1002,
        ..Constraints::default()
    };
    let got = t
        .acquire(
            Protocol::Tcp,
            RangeRequest::Wildcard { count: 1 },
            holder(false),
            limits,
            &mut next,
            &mut |_, _| None,
        )
        .unwrap();
    let Change::Granted(r) = got else {
        panic!("expected a grant")
    };
    assert_eq!(r.range.start(), 1002);
}

#[test]
fn the_stripe_moves_on_once_half_of_it_is_taken() {
    let mut t = table();
    let mut a = Asker { tokens: 0 };
    a.wildcard(&mut t, 1, false);
    a.wildcard(&mut t, 1, false);
    assert_eq!(t.advance_stripe(0), None, "half of it is still free");
    a.wildcard(&mut t, 1, false);
    assert_eq!(t.advance_stripe(0), Some(range(1054, 4)));
    assert_eq!(a.wildcard(&mut t, 1, false).range.start(), 1054);
    // A block no better is passed over: 1058-1061 is taken, 1062-1065 is free.
    a.acquire(&mut t, RangeRequest::Specific(range(1058, 4)), true)
        .unwrap();
    a.wildcard(&mut t, 1, false);
    a.wildcard(&mut t, 1, false);
    assert_eq!(t.advance_stripe(0), Some(range(1062, 4)));
    // Past the pool's end it starts again at the pool's start.
    t.set_stripe(Some(range(1096, 4)));
    for _ in 0..3 {
        a.wildcard(&mut t, 1, false);
    }
    assert_eq!(t.advance_stripe(0), Some(range(1000, 4)));
}

/// Acquires a wildcard block of one unheld TCP port at `now_ms` and releases it at once,
/// noting the release for the cool-down; returns its port.
fn take_and_free(t: &mut Table, a: &mut Asker, now_ms: u64) -> u16 {
    take_and_free_as(t, a, now_ms, false)
}

/// [`take_and_free`] of a held block (`hold`) or an unheld one.
fn take_and_free_as(t: &mut Table, a: &mut Asker, now_ms: u64, hold: bool) -> u16 {
    let tokens = &mut a.tokens;
    let mut next = || {
        *tokens += 1;
        *tokens
    };
    let holder = Holder {
        acquired_at_ms: now_ms,
        ..holder(hold)
    };
    let Change::Granted(r) = t
        .acquire(
            Protocol::Tcp,
            RangeRequest::Wildcard { count: 1 },
            holder,
            Constraints::default(),
            &mut next,
            &mut |_, _| None,
        )
        .unwrap()
    else {
        panic!("expected a grant")
    };
    let released = t.release(r.token, &admin()).unwrap();
    t.note_freed(&[released], now_ms);
    r.range.start()
}

#[test]
fn ports_freed_within_the_cool_down_are_passed_by_while_others_fit() {
    let mut t = Table::new(Pool::new(1000, 1009).unwrap());
    t.set_stripe(Some(range(1000, 2)));
    t.set_reuse_cool_down(60_000);
    let mut a = Asker { tokens: 0 };
    assert_eq!(take_and_free(&mut t, &mut a, 0), 1000);
    assert_eq!(take_and_free(&mut t, &mut a, 1), 1001);
    // Both stripe ports are cooling down: the pool's next port, not the stripe's in turn.
    assert_eq!(take_and_free(&mut t, &mut a, 2), 1002);
    // A minute later they are cool again.
    assert_eq!(take_and_free(&mut t, &mut a, 60_001), 1000);
    // With no cool-down, the stripe is handed out in turn at once.
    t.set_reuse_cool_down(0);
    assert_eq!(take_and_free(&mut t, &mut a, 60_002), 1001);
    assert_eq!(take_and_free(&mut t, &mut a, 60_003), 1000);
}

#[test]
fn a_cooling_port_is_handed_out_when_nothing_else_fits() {
    let mut t = Table::new(Pool::new(1000, 1000).unwrap());
    t.set_reuse_cool_down(60_000);
    let mut a = Asker { tokens: 0 };
    assert_eq!(take_and_free(&mut t, &mut a, 0), 1000);
    assert_eq!(take_and_free(&mut t, &mut a, 1), 1000);
}

#[test]
fn pairs_pass_by_ports_cooling_in_either_protocol() {
    let mut t = Table::new(Pool::new(1000, 1009).unwrap());
    t.set_stripe(Some(range(1000, 1)));
    t.set_reuse_cool_down(60_000);
    // UDP 1000 was freed a moment ago.
    let freed = Change::Released {
        reservation: Reservation {
            token: Token::new(99).unwrap(),
            protocol: Protocol::Udp,
            range: range(1000, 1),
            acquired_at_ms: 0,
            lease: Lease::Persistent {
                created_by: 0,
                allowed: Default::default(),
            },
            label: None,
            name: None,
        },
        why: Ending::Released,
    };
    t.note_freed(&[freed], 5);
    let mut tokens = 0u64;
    let mut next = || {
        tokens += 1;
        tokens
    };
    let holder = Holder {
        acquired_at_ms: 10,
        ..holder(false)
    };
    let [tcp, _] = t
        .acquire_both(
            RangeRequest::Wildcard { count: 1 },
            holder,
            Constraints::default(),
            &mut next,
            &mut |_, _| None,
        )
        .unwrap();
    assert_eq!(tcp.reservation().unwrap().range, range(1001, 1));
}

#[test]
fn the_stripe_moves_on_once_half_of_it_is_cooling() {
    let mut t = table();
    t.set_reuse_cool_down(60_000);
    let mut a = Asker { tokens: 0 };
    for now in 0..2 {
        take_and_free(&mut t, &mut a, now);
    }
    assert_eq!(t.advance_stripe(3), None, "half of it is still free");
    take_and_free(&mut t, &mut a, 4);
    assert_eq!(t.advance_stripe(5), Some(range(1054, 4)));
}

/// A pool of 1000-1999 whose stripe is 1000-1003, after 200 held blocks taken and freed at
/// once: held blocks pass the stripe by and go on from the cursor, leaving the stripe and
/// every block the look-ahead past it reaches cooling, and the cursor at 1200.
fn cooled_around_the_stripe() -> (Table, Asker) {
    let mut t = Table::new(Pool::new(1000, 1999).unwrap());
    t.set_stripe(Some(range(1000, 4)));
    t.set_reuse_cool_down(60_000);
    let mut a = Asker { tokens: 0 };
    for now in 0..200 {
        take_and_free_as(&mut t, &mut a, now, true);
    }
    (t, a)
}

#[test]
fn a_stripe_whose_neighbourhood_cools_moves_to_the_cursor_and_the_cursor_past_it() {
    let (mut t, mut a) = cooled_around_the_stripe();
    assert_eq!(t.advance_stripe(300), Some(range(1200, 4)));
    // Unheld grants come from the new stripe; held ones go on past it.
    assert_eq!(take_and_free(&mut t, &mut a, 301), 1200);
    assert_eq!(take_and_free_as(&mut t, &mut a, 302, true), 1204);
}

#[test]
fn a_pool_whose_free_ports_all_cool_is_not_searched_twice() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    t.set_reuse_cool_down(60_000);
    let mut a = Asker { tokens: 0 };
    for now in 0..100 {
        take_and_free(&mut t, &mut a, now);
    }
    // Every port of the pool cools: no first pass walks them all; the second pass takes the
    // port at the cursor with one probe.
    let mut probes = 0;
    let mut tokens = 1000u64;
    let mut next = || {
        tokens += 1;
        tokens
    };
    let holder = Holder {
        acquired_at_ms: 200,
        ..holder(false)
    };
    t.acquire(
        Protocol::Tcp,
        RangeRequest::Wildcard { count: 1 },
        holder,
        Constraints::default(),
        &mut next,
        &mut |_, _| {
            probes += 1;
            None
        },
    )
    .unwrap();
    assert_eq!(probes, 1);
}

/// A churned pool, 1000-1099 — every port but 1098 and 1099 freed a moment ago — in which port
/// 1098 is in use on the host in `busy` (a connection in TIME_WAIT, say): `grant` runs three
/// times at later moments, with an in-use test that counts its probes of 1098, and what it
/// grants is released. How many times 1098 was probed.
fn probes_of_a_port_in_use(
    busy: Protocol,
    mut grant: impl FnMut(
        &mut Table,
        Holder,
        &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Vec<Reservation>,
) -> u32 {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    t.set_reuse_cool_down(60_000);
    let mut a = Asker { tokens: 0 };
    for now in 0..98 {
        take_and_free(&mut t, &mut a, now);
    }
    let mut probes = 0;
    for now in 100..103 {
        let holder = Holder {
            acquired_at_ms: now,
            ..holder(false)
        };
        let granted = grant(&mut t, holder, &mut |protocol, range| {
            (protocol == busy && range.contains(1098)).then(|| {
                probes += 1;
                1098
            })
        });
        for r in granted {
            assert_ne!(r.range.start(), 1098);
            t.release(r.token, &admin()).unwrap();
        }
    }
    probes
}

#[test]
fn a_port_found_in_use_is_passed_by_for_the_cool_down_like_a_freed_one() {
    let mut tokens = 1000u64;
    let probes = probes_of_a_port_in_use(Protocol::Tcp, |t, holder, in_use| {
        let mut next = || {
            tokens += 1;
            tokens
        };
        let change = t.acquire(
            Protocol::Tcp,
            RangeRequest::Wildcard { count: 1 },
            holder,
            Constraints::default(),
            &mut next,
            in_use,
        );
        let Ok(Change::Granted(r)) = change else {
            panic!("expected a grant, got {change:?}")
        };
        vec![r]
    });
    // Found in use once; the searches after it pass it by with the cooling ports.
    assert_eq!(probes, 1);
}

/// The same for pairs (the portserver endpoint's grants), the port in use in UDP.
#[test]
fn a_pair_search_passes_a_port_found_in_use_by_for_the_cool_down() {
    let mut tokens = 1000u64;
    let probes = probes_of_a_port_in_use(Protocol::Udp, |t, holder, in_use| {
        let mut next = || {
            tokens += 1;
            tokens
        };
        let changes = t.acquire_both(
            RangeRequest::Wildcard { count: 1 },
            holder,
            Constraints::default(),
            &mut next,
            in_use,
        );
        let Ok([Change::Granted(tcp), Change::Granted(udp)]) = changes else {
            panic!("expected a pair of grants, got {changes:?}")
        };
        vec![tcp, udp]
    });
    assert_eq!(probes, 1);
}

/// A search whose every test says "in use" — a daemon short of descriptors cannot test, and
/// says so — marks a bounded number of ports as cooling, not the whole pool.
#[test]
fn a_search_that_finds_every_port_in_use_marks_a_bounded_number_cooling() {
    let mut t = Table::new(Pool::new(1000, 1999).unwrap());
    t.set_reuse_cool_down(60_000);
    let mut a = Asker { tokens: 0 };
    let refused = t.acquire(
        Protocol::Tcp,
        RangeRequest::Wildcard { count: 1 },
        holder(false),
        Constraints::default(),
        &mut || 1,
        &mut |_, range| Some(range.start()),
    );
    assert!(refused.is_err());
    // Ports cooling are passed by while others fit: a first pass still finds one that is not.
    let got = a.wildcard(&mut t, 1, false).range.start();
    assert!(
        got >= 1000 + 64,
        "port {got}: the first {} ports of the pool were marked",
        64
    );
    let marked = (1000..2000)
        .filter(|&p| t.cooling.first_in(Protocol::Tcp, range(p, 1), 0).is_some())
        .count();
    assert_eq!(marked, 64);
}

#[test]
fn a_port_a_withdrawn_grant_found_in_use_is_passed_by_for_the_cool_down() {
    let mut t = Table::new(Pool::new(1000, 1003).unwrap());
    t.set_reuse_cool_down(60_000);
    let mut a = Asker { tokens: 0 };
    assert_eq!(a.wildcard(&mut t, 1, true).range.start(), 1000);
    // A held block of 1001, whose hold found it in use on the host.
    let chosen = a
        .acquire(&mut t, RangeRequest::Specific(range(1001, 1)), true)
        .unwrap();
    assert!(t.withdraw(&chosen, 1001));
    assert_eq!(a.wildcard(&mut t, 1, true).range.start(), 1002);
    let last = a.wildcard(&mut t, 1, true);
    assert_eq!(last.range.start(), 1003);
    // 1003 is freed without a cool-down; the cursor is back at the pool's start. A search
    // passes 1001 by while 1003 fits.
    t.release(last.token, &admin()).unwrap();
    assert_eq!(a.wildcard(&mut t, 1, true).range.start(), 1003);
}

#[test]
fn another_users_owner_is_seen_only_by_administrators_and_the_same_user() {
    let mut t = table();
    let mut a = Asker { tokens: 0 };
    let r = a.wildcard(&mut t, 1, false);
    assert!(r
        .seen_by(1000, false)
        .holder_description()
        .starts_with("pid 1 (test"));
    assert!(r
        .seen_by(0, true)
        .holder_description()
        .starts_with("pid 1 (test"));
    let hidden = r.seen_by(2000, false);
    assert_eq!(hidden.holder_description(), "a process of another user");
    assert_eq!((hidden.token, hidden.range), (r.token, r.range));
}

#[test]
fn a_label_goes_with_its_owner() {
    let mut t = table();
    let mut next = || 77;
    let labelled = Holder {
        label: Label::parse("tests::login").unwrap(),
        ..holder(false)
    };
    let change = t
        .acquire(
            Protocol::Tcp,
            RangeRequest::Wildcard { count: 1 },
            labelled,
            Constraints::default(),
            &mut next,
            &mut |_, _| None,
        )
        .unwrap();
    let r = change.reservation().unwrap().clone();
    assert_eq!(r.label.as_ref().map(Label::as_str), Some("tests::login"));
    assert_eq!(
        r.seen_by(0, true).holder_description(),
        "pid 1 (test, uid 1000, label \"tests::login\")"
    );
    assert_eq!(r.seen_by(2000, false).label, None);
    // A persistent reservation's label is an administrator's note for everyone.
    let mut persistent = r.clone();
    persistent.lease = Lease::Persistent {
        allowed: Allowed::default(),
        created_by: 0,
    };
    assert_eq!(persistent.seen_by(2000, false).label, r.label);
    assert_eq!(
        persistent.holder_description(),
        "a persistent reservation (label \"tests::login\")"
    );
}

fn within(count: u16, first: u16, last: u16) -> RangeRequest {
    RangeRequest::from_start_count_within(0, count, Some((first, last))).unwrap()
}

#[test]
fn bounded_wildcards_search_their_bounds_lowest_first_outside_the_pool() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    let mut asker = Asker { tokens: 0 };
    // Outside the pool: the lowest free block of the bounds, whatever the cursor.
    let a = asker.acquire(&mut t, within(2, 2000, 2009), false).unwrap();
    assert_eq!(a.range, range(2000, 2));
    let b = asker.acquire(&mut t, within(2, 2000, 2009), true).unwrap();
    assert_eq!(b.range, range(2002, 2));
    // The pool's cursor did not move: the next pool block is still its first.
    assert_eq!(asker.wildcard(&mut t, 1, false).range, range(1000, 1));
    // Across the pool's edge, and inside it from the cursor.
    let c = asker.acquire(&mut t, within(3, 1098, 1100), false).unwrap();
    assert_eq!(c.range, range(1098, 3));
    let d = asker.acquire(&mut t, within(1, 1000, 1009), false).unwrap();
    assert_eq!(d.range, range(1001, 1));
    assert_eq!(asker.wildcard(&mut t, 1, false).range, range(1002, 1));
}

#[test]
fn bounded_wildcards_fail_naming_their_bounds() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    let mut asker = Asker { tokens: 0 };
    asker.acquire(&mut t, within(3, 3000, 3004), false).unwrap();
    let err = asker
        .acquire(&mut t, within(3, 3000, 3004), false)
        .unwrap_err();
    assert!(
        matches!(
            err,
            AcquireError::PoolExhausted {
                free_ports: 2,
                bounds: Some(b),
                ..
            } if b == range(3000, 5)
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("within 3000-3004"), "{message}");
    assert!(message.contains("widen the bounds"), "{message}");
}

#[test]
fn bounds_below_the_lowest_port_are_privileged_and_straddling_ones_clipped() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    let holder = holder(false);
    let limits = Constraints {
        lowest_port: 1024,
        ..Constraints::default()
    };
    let mut tokens = || 9;
    let mut free = |_: Protocol, _: PortRange| None;
    let err = t
        .acquire(
            Protocol::Tcp,
            within(1, 80, 1023),
            holder.clone(),
            limits,
            &mut tokens,
            &mut free,
        )
        .unwrap_err();
    assert!(
        matches!(&err, AcquireError::Privileged(d) if d.range == range(80, 944)),
        "{err:?}"
    );
    let got = t
        .acquire(
            Protocol::Tcp,
            within(2, 1000, 1030),
            holder,
            limits,
            &mut tokens,
            &mut free,
        )
        .unwrap();
    assert_eq!(got.reservation().unwrap().range, range(1024, 2));
}

#[test]
fn bounds_are_checked_before_any_search() {
    let bad = |start, count, bounds| RangeRequest::from_start_count_within(start, count, bounds);
    assert_eq!(
        bad(5000, 1, Some((5000, 5010))),
        Err(RangeError::StartWithin { start: 5000 })
    );
    assert_eq!(bad(0, 1, Some((0, 10))), Err(RangeError::ZeroBound));
    assert!(matches!(
        bad(0, 1, Some((10, 5))),
        Err(RangeError::Reversed { .. })
    ));
    assert_eq!(
        bad(0, 6, Some((10, 14))),
        Err(RangeError::WithinTooSmall {
            count: 6,
            bounds: range(10, 5)
        })
    );
    assert_eq!(bad(0, 5, None), Ok(RangeRequest::Wildcard { count: 5 }));
    assert_eq!(
        bad(0, 5, Some((10, 14))),
        Ok(RangeRequest::Within {
            count: 5,
            bounds: range(10, 5)
        })
    );
}

#[test]
fn with_no_block_half_usable_the_stripe_moves_to_a_better_one_and_waits_for_half_of_it_to_go() {
    let mut t = Table::new(Pool::new(1000, 1063).unwrap());
    t.set_stripe(Some(range(1000, 8)));
    let mut a = Asker { tokens: 0 };
    // Outside the stripe every block of 8 has one port left, but 1016-1023 (two) and
    // 1024-1031 (three).
    for block in (1008..1064).step_by(8) {
        let taken = match block {
            1016 => 6,
            1024 => 5,
            _ => 7,
        };
        a.acquire(&mut t, RangeRequest::Specific(range(block, taken)), true)
            .unwrap();
    }
    for _ in 0..5 {
        a.wildcard(&mut t, 1, false);
    }
    // Three ports of the stripe are left: no block is better.
    assert_eq!(t.advance_stripe(0), None);
    // Two: not fewer than half of those three, so no look.
    a.wildcard(&mut t, 1, false);
    assert_eq!(t.advance_stripe(0), None);
    // One: 1024-1031 is better, with three.
    a.wildcard(&mut t, 1, false);
    assert_eq!(t.advance_stripe(0), Some(range(1024, 8)));
    assert_eq!(a.wildcard(&mut t, 1, false).range.start(), 1029);
}

#[test]
fn a_stripe_found_a_few_blocks_past_the_cursor_sends_the_cursor_past_it() {
    let (mut t, mut a) = cooled_around_the_stripe();
    // The cursor's own block is mostly taken: the stripe goes to the next one.
    a.acquire(&mut t, RangeRequest::Specific(range(1200, 3)), true)
        .unwrap();
    assert_eq!(t.advance_stripe(300), Some(range(1204, 4)));
    // Held grants go on past the stripe, not into it.
    assert_eq!(take_and_free_as(&mut t, &mut a, 301, true), 1208);
}
