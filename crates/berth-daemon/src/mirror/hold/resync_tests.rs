//! The hold sockets re-synchronised with the table.
use super::*;
use crate::mirror::Consumer as _;
use berth_core::{Holder, Owner, Pool, RangeRequest, SessionId, Table};

struct Counter(u64);

impl berth_core::TokenSource for Counter {
    fn draw(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

#[test]
fn holds_follow_the_table_when_resynchronised() {
    let mut table = Table::new(Pool::new(17700, 17799).unwrap());
    let holder = Holder {
        owner: Owner {
            pid: std::process::id(),
            uid: 0,
            gid: 0,
            start_time: 1,
            command: "t".into(),
        },
        session: SessionId(1),
        acquired_at_ms: 0,
        hold: true,
        label: None,
        name: None,
    };
    let change = table
        .acquire(
            Protocol::Tcp,
            RangeRequest::Wildcard { count: 2 },
            holder,
            berth_core::Constraints::default(),
            &mut Counter(0),
            &mut |_, _| None,
        )
        .unwrap();
    let r = change.reservation().unwrap().clone();
    let holds = Arc::new(Holds::new());
    let consumer = Consumer(holds.clone());
    // A held reservation the hold sockets never heard of (a change they missed): an empty
    // block, for the re-hold pass to fill.
    consumer.resync(&table).unwrap();
    assert_eq!(holds.blocks(), vec![(r.token, Protocol::Tcp)]);
    assert_eq!(
        holds.uncovered(r.token),
        r.range.ports().collect::<Vec<_>>()
    );
    assert_eq!(
        holds
            .rehold(r.token, Protocol::Tcp, &holds.uncovered(r.token))
            .len(),
        2
    );
    assert_eq!(holds.count(), 2);
    // The table lets it go without telling them: its sockets close.
    let empty = Table::new(Pool::new(17700, 17799).unwrap());
    consumer.resync(&empty).unwrap();
    assert!(holds.blocks().is_empty());
    assert_eq!(holds.count(), 0);
}
