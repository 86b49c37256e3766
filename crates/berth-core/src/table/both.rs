//! One port number reserved in TCP and UDP at once, for a process: what the portpicker
//! protocol promises (a port free for both), granted as two runtime reservations of the same
//! number that live exactly as long as their owner process ([`Bond::Process`]).

use super::{Bond, Change, Constraints, Lease, Table};
use crate::error::AcquireError;
use crate::owner::Owner;
use crate::range::{PortRange, Protocol, RangeRequest};
use crate::token::TokenSource;

impl Table {
    /// Reserves one port of the wildcard pool in TCP and UDP alike for `owner`, as two runtime
    /// reservations of that number (TCP first), not held, that end when `owner` exits.
    ///
    /// A candidate is a port free in TCP's free map that no UDP reservation covers and that
    /// `in_use` reports free for both protocols; the search is TCP's next-fit from its cursor,
    /// so it ends after one pass. Both are granted or neither: a port whose UDP side is taken
    /// is skipped, never half-reserved. Fails with [`AcquireError::QuotaExceeded`] when the
    /// owner's quota has no room for two reservations of one port each, and with
    /// [`AcquireError::PoolExhausted`] (for TCP) when no port of the pool is free in both.
    pub fn acquire_for_process(
        &mut self,
        owner: Owner,
        acquired_at_ms: u64,
        limits: Constraints,
        tokens: &mut dyn TokenSource,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Result<[Change; 2], AcquireError> {
        let lease = Lease::Runtime {
            owner,
            bond: Bond::Process,
            held: false,
        };
        self.grant_both(
            RangeRequest::Wildcard { count: 1 },
            (lease, None, None),
            acquired_at_ms,
            limits,
            tokens,
            in_use,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::{Holder, Requester, SessionId};
    use crate::range::{Pool, RangeRequest};
    use crate::{Ending, Quota};

    fn process(pid: u32) -> Owner {
        Owner {
            pid,
            uid: 1000,
            gid: 1000,
            start_time: 7,
            command: "pytest".into(),
        }
    }

    fn counter() -> impl FnMut() -> u64 {
        let mut next = 0;
        move || {
            next += 1;
            next
        }
    }

    fn free(_: Protocol, _: PortRange) -> Option<u16> {
        None
    }

    fn ports(changes: &[Change; 2]) -> [(Protocol, PortRange, Option<Bond>, bool); 2] {
        changes.clone().map(|c| match c {
            Change::Granted(r) => (r.protocol, r.range, r.bond(), r.held()),
            other => panic!("not a grant: {other:?}"),
        })
    }

    #[test]
    fn grants_one_number_in_both_protocols_bound_to_the_process() {
        let mut table = Table::new(Pool::new(2000, 2009).unwrap());
        let mut tokens = counter();
        let got = table
            .acquire_for_process(
                process(40),
                1,
                Constraints::default(),
                &mut tokens,
                &mut free,
            )
            .unwrap();
        let one = PortRange::new(2000, 1).unwrap();
        assert_eq!(
            ports(&got),
            [
                (Protocol::Tcp, one, Some(Bond::Process), false),
                (Protocol::Udp, one, Some(Bond::Process), false),
            ]
        );
        // The next one is another number (next-fit), and both end when the owner exits.
        let next = table
            .acquire_for_process(
                process(40),
                1,
                Constraints::default(),
                &mut tokens,
                &mut free,
            )
            .unwrap();
        assert_eq!(ports(&next)[0].1.start(), 2001);
        let ended = table.release_owner_exited(&process(40));
        assert_eq!(ended.len(), 4);
        assert!(ended.iter().all(|c| matches!(
            c,
            Change::Released {
                why: Ending::OwnerExited,
                ..
            }
        )));
        assert!(table.is_empty());
    }

    #[test]
    fn skips_numbers_taken_in_either_protocol_or_in_use() {
        let mut table = Table::new(Pool::new(3000, 3009).unwrap());
        let mut tokens = counter();
        let session = Holder {
            owner: process(9),
            session: SessionId(1),
            acquired_at_ms: 0,
            hold: false,
            label: None,
            name: None,
        };
        let specific = |p| RangeRequest::Specific(PortRange::new(p, 1).unwrap());
        // 3000 is UDP's, 3001 TCP's; 3002 is bound by someone in UDP, 3003 in TCP.
        table
            .acquire(
                Protocol::Udp,
                specific(3000),
                session.clone(),
                Constraints::default(),
                &mut tokens,
                &mut free,
            )
            .unwrap();
        table
            .acquire(
                Protocol::Tcp,
                specific(3001),
                session,
                Constraints::default(),
                &mut tokens,
                &mut free,
            )
            .unwrap();
        let mut probe = |protocol, range: PortRange| match (protocol, range.start()) {
            (Protocol::Udp, 3002) | (Protocol::Tcp, 3003) => Some(range.start()),
            _ => None,
        };
        let got = table
            .acquire_for_process(
                process(40),
                1,
                Constraints::default(),
                &mut tokens,
                &mut probe,
            )
            .unwrap();
        assert_eq!(ports(&got)[0].1.start(), 3004);
        assert_eq!(ports(&got)[1].1.start(), 3004);
        assert_eq!(table.len(), 4);
    }

    #[test]
    fn a_pool_free_in_only_one_protocol_is_exhausted_and_nothing_is_kept() {
        let mut table = Table::new(Pool::new(4000, 4001).unwrap());
        let mut tokens = counter();
        let mut udp_busy =
            |protocol, range: PortRange| (protocol == Protocol::Udp).then_some(range.start());
        let err = table
            .acquire_for_process(
                process(40),
                1,
                Constraints::default(),
                &mut tokens,
                &mut udp_busy,
            )
            .unwrap_err();
        assert!(matches!(err, AcquireError::PoolExhausted { .. }), "{err:?}");
        assert!(table.is_empty());
        assert_eq!(table.usage(1000).reservations, 0);
    }

    #[test]
    fn the_quota_counts_the_pair_once() {
        let mut table = Table::new(Pool::new(5000, 5099).unwrap());
        let mut tokens = counter();
        let limits = Constraints {
            lowest_port: 0,
            quota: Some(Quota {
                max_reservations: 1,
                max_ports: 100,
                max_held_ports: 0,
            }),
            shared_max: None,
        };
        table
            .acquire_for_process(process(40), 1, limits, &mut tokens, &mut free)
            .unwrap();
        // One number in TCP and UDP: one reservation, one port, nothing held.
        assert_eq!(
            table.usage(1000),
            crate::Usage {
                reservations: 1,
                ports: 1,
                held_ports: 0
            }
        );
        let err = table
            .acquire_for_process(process(40), 1, limits, &mut tokens, &mut free)
            .unwrap_err();
        assert!(
            matches!(err, AcquireError::QuotaExceeded { asked: 1, .. }),
            "{err:?}"
        );
        // An administrator may release them like any runtime reservation.
        let admin = Requester {
            process: process(0),
            is_admin: true,
        };
        let tokens: Vec<_> = table.iter().map(|r| r.token).collect();
        for token in tokens {
            table.release(token, &admin).unwrap();
        }
        assert!(table.is_empty());
    }
}
