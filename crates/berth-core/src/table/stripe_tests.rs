//! The stripe listed ahead: unheld wildcard blocks come from it first, in turn; held blocks,
//! specific requests and a full stripe go to the rest of the pool.

use super::*;

fn holder(hold: bool) -> Holder {
    Holder {
        owner: Owner {
            pid: 1,
            uid: 1000,
            gid: 1000,
            start_time: 7,
            command: "test".to_owned(),
        },
        session: SessionId(1),
        acquired_at_ms: 0,
        hold,
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
    assert_eq!(t.advance_stripe(), None, "half of it is still free");
    a.wildcard(&mut t, 1, false);
    assert_eq!(t.advance_stripe(), Some(range(1054, 4)));
    assert_eq!(a.wildcard(&mut t, 1, false).range.start(), 1054);
    // Past the pool's end it starts again at the pool's start.
    t.set_stripe(Some(range(1096, 4)));
    for _ in 0..3 {
        a.wildcard(&mut t, 1, false);
    }
    assert_eq!(t.advance_stripe(), Some(range(1000, 4)));
}
