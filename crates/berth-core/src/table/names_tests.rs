//! Names in the table: one live holder per user (or the host, for persistent reservations)
//! and protocol, freed with the reservation; blocks remembered for names passed by while other
//! ports fit.

use super::*;
use crate::error::ErrorKind;

fn owner(pid: u32, uid: u32) -> Owner {
    Owner {
        pid,
        uid,
        gid: uid,
        start_time: 7,
        command: "test".into(),
    }
}

fn named(pid: u32, uid: u32, name: &str) -> Holder {
    Holder {
        owner: owner(pid, uid),
        session: SessionId(u64::from(pid)),
        acquired_at_ms: 0,
        hold: false,
        label: None,
        name: Name::parse(name).unwrap(),
    }
}

fn range(start: u16, count: u16) -> PortRange {
    PortRange::new(start, count).unwrap()
}

struct Tokens(u64);

impl Tokens {
    fn acquire(
        &mut self,
        t: &mut Table,
        protocol: Protocol,
        request: RangeRequest,
        holder: Holder,
    ) -> Result<Reservation, AcquireError> {
        let counter = &mut self.0;
        let mut next = || {
            *counter += 1;
            *counter
        };
        let change = t.acquire(
            protocol,
            request,
            holder,
            Constraints::default(),
            &mut next,
            &mut |_, _| None,
        )?;
        Ok(change.reservation().unwrap().clone())
    }
}

fn any(count: u16) -> RangeRequest {
    RangeRequest::Wildcard { count }
}

#[test]
fn a_name_has_one_holder_per_user_and_protocol() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    let mut tokens = Tokens(0);
    let web = tokens
        .acquire(&mut t, Protocol::Tcp, any(1), named(1, 1000, "shop/web"))
        .unwrap();
    assert_eq!(web.name.as_ref().map(Name::as_str), Some("shop/web"));
    // The same user's second one is refused, naming the holder (a conflict).
    let err = tokens
        .acquire(&mut t, Protocol::Tcp, any(1), named(2, 1000, "shop/web"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        matches!(&err, AcquireError::NameTaken { holder, .. } if holder.token == web.token),
        "{err:?}"
    );
    assert!(err.to_string().contains("shop/web"), "{err}");
    // Another protocol, another user: their own.
    tokens
        .acquire(&mut t, Protocol::Udp, any(1), named(2, 1000, "shop/web"))
        .unwrap();
    tokens
        .acquire(&mut t, Protocol::Tcp, any(1), named(3, 2000, "shop/web"))
        .unwrap();
    let found = t.find_name(
        NameScope::User(1000),
        Protocol::Tcp,
        web.name.as_ref().unwrap(),
    );
    assert_eq!(found.map(|r| r.token), Some(web.token));
    // Released: the name is free again.
    let admin = Requester {
        process: owner(1, 1000),
        is_admin: false,
    };
    t.release(web.token, &admin).unwrap();
    assert!(t
        .find_name(
            NameScope::User(1000),
            Protocol::Tcp,
            web.name.as_ref().unwrap()
        )
        .is_none());
    tokens
        .acquire(&mut t, Protocol::Tcp, any(1), named(4, 1000, "shop/web"))
        .unwrap();
}

#[test]
fn a_pair_needs_the_name_free_in_both_protocols() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    let mut tokens = Tokens(0);
    tokens
        .acquire(&mut t, Protocol::Udp, any(1), named(1, 1000, "dns"))
        .unwrap();
    let mut next = || 99;
    let err = t
        .acquire_both(
            any(1),
            named(2, 1000, "dns"),
            Constraints::default(),
            &mut next,
            &mut |_, _| None,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            AcquireError::NameTaken {
                protocol: Protocol::Udp,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(t.len(), 1, "nothing granted");
}

#[test]
fn persistent_names_are_the_hosts() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    let name = Name::parse("ipp").unwrap();
    let create = |t: &mut Table, token: u64, start: u16| {
        t.create_persistent(
            Token::new(token).unwrap(),
            Protocol::Tcp,
            range(start, 1),
            (Allowed::default(), None, name.clone()),
            0,
            1,
            &mut |_, _| None,
        )
    };
    create(&mut t, 1, 631).unwrap();
    assert!(matches!(
        create(&mut t, 2, 632),
        Err(AcquireError::NameTaken { .. })
    ));
    // A user's runtime name of the same text is the user's own.
    Tokens(10)
        .acquire(&mut t, Protocol::Tcp, any(1), named(1, 1000, "ipp"))
        .unwrap();
}

#[test]
fn a_restored_duplicate_keeps_its_ports_and_loses_its_name() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    let mut tokens = Tokens(0);
    let first = tokens
        .acquire(&mut t, Protocol::Tcp, any(1), named(1, 1000, "db"))
        .unwrap();
    let mut twin = first.clone();
    twin.token = Token::new(500).unwrap();
    twin.range = range(1050, 1);
    let change = t.restore(twin, false).unwrap();
    let restored = change.reservation().unwrap();
    assert_eq!(
        (restored.range, restored.name.clone()),
        (range(1050, 1), None)
    );
}

#[test]
fn a_published_port_lives_with_its_process_under_its_name() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    let mut next = || 7;
    let name = Name::parse("dev/api").unwrap().unwrap();
    let change = t
        .publish(
            Protocol::Tcp,
            range(5000, 1),
            (owner(40, 1000), name.clone()),
            (Constraints::default(), 1),
            &mut next,
        )
        .unwrap();
    let r = change.reservation().unwrap().clone();
    assert_eq!(
        (r.bond(), r.held(), r.name.clone()),
        (Some(Bond::Process), false, Some(name.clone()))
    );
    // Its session is nobody's: no session's end releases it; its process's does.
    assert!(!t.session_holds(SessionId(0)));
    let again = t.publish(
        Protocol::Tcp,
        range(5001, 1),
        (owner(41, 1000), name),
        (Constraints::default(), 1),
        &mut next,
    );
    assert!(
        matches!(again, Err(AcquireError::NameTaken { .. })),
        "{again:?}"
    );
    assert_eq!(t.release_owner_exited(&owner(40, 1000)).len(), 1);
    assert!(t.is_empty());
}

#[test]
fn remembered_blocks_are_passed_by_while_others_fit() {
    let mut t = Table::new(Pool::new(1000, 1003).unwrap());
    let mut tokens = Tokens(0);
    t.keep_for_name(Protocol::Tcp, range(1000, 2));
    let plain = |pid| Holder {
        name: None,
        ..named(pid, 1000, "x")
    };
    let a = tokens
        .acquire(&mut t, Protocol::Tcp, any(1), plain(1))
        .unwrap();
    let b = tokens
        .acquire(&mut t, Protocol::Tcp, any(1), plain(2))
        .unwrap();
    assert_eq!((a.range.start(), b.range.start()), (1002, 1003));
    // Nothing else fits: a remembered port is better than none.
    let c = tokens
        .acquire(&mut t, Protocol::Tcp, any(1), plain(3))
        .unwrap();
    assert_eq!(c.range.start(), 1000);
    // UDP remembers nothing.
    let u = tokens
        .acquire(&mut t, Protocol::Udp, any(1), plain(4))
        .unwrap();
    assert_eq!(u.range.start(), 1000);
    // Forgotten: an ordinary port again.
    t.unkeep_for_name(Protocol::Tcp, range(1000, 2));
    let admin = Requester {
        process: owner(1, 0),
        is_admin: true,
    };
    for r in [&a, &b, &c] {
        t.release(r.token, &admin).unwrap();
    }
    // Next-fit from past 1000: 1001 was remembered, and is no longer passed by.
    let d = tokens
        .acquire(&mut t, Protocol::Tcp, any(2), plain(5))
        .unwrap();
    assert_eq!(d.range, range(1001, 2));
    // A specific request for a remembered block is served as any other.
    t.keep_for_name(Protocol::Tcp, range(1003, 1));
    let e = tokens
        .acquire(
            &mut t,
            Protocol::Tcp,
            RangeRequest::Specific(range(1003, 1)),
            plain(6),
        )
        .unwrap();
    assert_eq!(e.range.start(), 1003);
}

#[test]
fn a_remembered_block_is_taken_before_a_cooling_port() {
    let mut t = Table::new(Pool::new(1000, 1001).unwrap());
    t.set_reuse_cool_down(60_000);
    let mut tokens = Tokens(0);
    let plain = Holder {
        name: None,
        ..named(1, 1000, "x")
    };
    let first = tokens
        .acquire(&mut t, Protocol::Tcp, any(1), plain.clone())
        .unwrap();
    assert_eq!(first.range.start(), 1000);
    let admin = Requester {
        process: owner(1, 0),
        is_admin: true,
    };
    let freed = t.release(first.token, &admin).unwrap();
    t.note_freed(&[freed], 0);
    t.keep_for_name(Protocol::Tcp, range(1001, 1));
    // 1000 cools, 1001 is remembered: the remembered port, whose owner is not lingering.
    let next = tokens
        .acquire(&mut t, Protocol::Tcp, any(1), plain)
        .unwrap();
    assert_eq!(next.range.start(), 1001);
}

#[test]
fn a_reservation_handed_to_another_user_takes_its_name_along_unless_that_user_has_it() {
    let mut t = Table::new(Pool::new(1000, 1099).unwrap());
    let mut tokens = Tokens(0);
    let web = tokens
        .acquire(&mut t, Protocol::Tcp, any(1), named(1, 1000, "web"))
        .unwrap();
    let name = web.name.clone().unwrap();
    // The core does not forbid a hand-over across users (the daemon's policy does).
    t.transfer(web.token, &owner(1, 1000), owner(5, 2000))
        .unwrap();
    let under = |t: &Table, uid| {
        t.find_name(NameScope::User(uid), Protocol::Tcp, &name)
            .map(|r| r.token)
    };
    assert_eq!(under(&t, 1000), None, "the old user still finds it");
    assert_eq!(under(&t, 2000), Some(web.token));
    // The old user's name is free again.
    tokens
        .acquire(&mut t, Protocol::Tcp, any(1), named(2, 1000, "web"))
        .unwrap();
    // Handed to a user who holds the name already: the holder keeps it.
    let other = tokens
        .acquire(&mut t, Protocol::Tcp, any(1), named(3, 3000, "web"))
        .unwrap();
    let change = t
        .transfer(web.token, &owner(5, 2000), owner(6, 3000))
        .unwrap();
    assert_eq!(under(&t, 3000), Some(other.token));
    assert_eq!(under(&t, 2000), None);
    assert_eq!(change.reservation().and_then(|r| r.name.clone()), None);
    assert_eq!(t.get(web.token).and_then(|r| r.name.clone()), None);
    // Released, the holder's name is untouched.
    t.release(
        web.token,
        &Requester {
            process: owner(6, 3000),
            is_admin: false,
        },
    )
    .unwrap();
    assert_eq!(under(&t, 3000), Some(other.token));
}
