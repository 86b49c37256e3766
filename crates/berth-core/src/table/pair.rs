//! One number in both protocols: a TCP and a UDP reservation of the same ports, granted
//! together or not at all — for services that listen on both, and for the portpicker promise
//! of a port free for TCP and UDP alike.

use crate::error::AcquireError;
use crate::label::Label;
use crate::name::Name;
use crate::owner::Holder;
use crate::range::{PortRange, Protocol, RangeRequest};
use crate::table::usage::intersection;
use crate::table::{
    below_lowest, Bond, Change, Constraints, Lease, NameScope, Reservation, Table, Usage,
};
use crate::token::TokenSource;

impl Table {
    /// Acquires the same ports in TCP and in UDP: a specific range must be free in both
    /// (else the error of the first protocol it is not free in); a wildcard block is searched
    /// in TCP's pool order among blocks free in both. Counts as one reservation of `count`
    /// port numbers for the quota (twice the held ports, when held). Returns the TCP grant,
    /// then the UDP grant.
    pub fn acquire_both(
        &mut self,
        request: RangeRequest,
        holder: Holder,
        limits: Constraints,
        tokens: &mut dyn TokenSource,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Result<[Change; 2], AcquireError> {
        let lease = Lease::Runtime {
            owner: holder.owner,
            bond: Bond::Session(holder.session),
            held: holder.hold,
        };
        self.grant_both(
            request,
            (lease, holder.label, holder.name),
            holder.acquired_at_ms,
            limits,
            tokens,
            in_use,
        )
    }

    /// Both protocols' reservations of `request`'s ports, with `lease`, or neither.
    pub(super) fn grant_both(
        &mut self,
        request: RangeRequest,
        (lease, label, name): (Lease, Option<Label>, Option<Name>),
        acquired_at_ms: u64,
        limits: Constraints,
        tokens: &mut dyn TokenSource,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Result<[Change; 2], AcquireError> {
        let uid = match &lease {
            Lease::Runtime { owner, .. } => owner.uid,
            Lease::Persistent { created_by, .. } => *created_by,
        };
        // Both halves cover ports free in both protocols, so the pair adds exactly one
        // reservation (a twin counts once) and `count` port numbers; each half is held.
        let count = u32::from(request.count());
        let upper = Usage {
            reservations: 1,
            ports: count,
            held_ports: if matches!(lease, Lease::Runtime { held: true, .. }) {
                count * 2
            } else {
                0
            },
        };
        self.check_quota(uid, limits, upper, request.count())?;
        let scope = match &lease {
            Lease::Runtime { .. } => NameScope::User(uid),
            Lease::Persistent { .. } => NameScope::Host,
        };
        self.check_name(scope, Protocol::Tcp, name.as_ref())?;
        self.check_name(scope, Protocol::Udp, name.as_ref())?;
        let marks = self.tcp.marks();
        let striped = !matches!(lease, Lease::Runtime { held: true, .. });
        if let Some(denied) = below_lowest(Protocol::Tcp, request, limits, uid) {
            return Err(AcquireError::Privileged(denied));
        }
        let range = match request {
            RangeRequest::Specific(range) => {
                self.check_free(Protocol::Tcp, range, in_use)?;
                self.check_free(Protocol::Udp, range, in_use)?;
                range
            }
            RangeRequest::Wildcard { count } | RangeRequest::Within { count, .. } => self
                .search_both(
                    (count, request.bounds()),
                    limits,
                    (striped, acquired_at_ms),
                    in_use,
                )?,
        };
        let shared = self
            .shared_range
            .filter(|_| limits.shared_max.is_some())
            .and_then(|shared| intersection(range, shared))
            .map_or(0, |part| u32::from(part.count()));
        if let Err(e) = self.check_shared(uid, limits, shared, request.count()) {
            // Refused: the search leaves no trace.
            self.tcp.rewind(marks);
            return Err(e);
        }
        let capped = limits.shared_max.is_some();
        let mut grant = |table: &mut Table, protocol| {
            let reservation = Reservation {
                token: table.draw_token(tokens),
                protocol,
                range,
                acquired_at_ms,
                lease: lease.clone(),
                label: label.clone(),
                name: name.clone(),
            };
            table.insert(reservation.clone(), capped);
            Change::Granted(reservation)
        };
        let tcp = grant(self, Protocol::Tcp);
        let udp = grant(self, Protocol::Udp);
        Ok([tcp, udp])
    }

    /// TCP's next-fit search of the pool (above `limits.lowest_port`; in the stripe first when
    /// `striped`), with UDP's side of each candidate — a UDP reservation, or a port in use for
    /// UDP — folded into "in use".
    fn search_both(
        &mut self,
        (count, bounds): (u16, Option<PortRange>),
        limits: Constraints,
        (striped, now_ms): (bool, u64),
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Result<PortRange, AcquireError> {
        let pool = self.pool;
        let lowest = limits.lowest_port;
        let area = bounds.unwrap_or(pool.range());
        let within = self.usable(lowest, bounds);
        let stripe = self.usable_stripe(within, striped);
        // A pair needs a port free in both and cooling in neither: worth a first pass when
        // something cools and each protocol has a free port that does not.
        let (tcp_state, udp_state) = (
            self.cooling_state(Protocol::Tcp, now_ms),
            self.cooling_state(Protocol::Udp, now_ms),
        );
        let cool_pass = (tcp_state.is_some() || udp_state.is_some())
            && tcp_state.unwrap_or(true)
            && udp_state.unwrap_or(true);
        let kept = self.names.keeps_any(Protocol::Tcp) || self.names.keeps_any(Protocol::Udp);
        let passes = super::passes(cool_pass, kept);
        let Table {
            tcp,
            udp,
            cooling,
            names,
            ..
        } = self;
        let mut found = None;
        let mut marked = 0;
        for &(cool, keep) in passes {
            let mut both = |_: Protocol, candidate: PortRange| {
                if let Some(slot) = udp.first_overlap(candidate) {
                    return Some(slot.range.start().max(candidate.start()));
                }
                let cooling_port = cool
                    .then(|| {
                        cooling
                            .first_in(Protocol::Tcp, candidate, now_ms)
                            .or_else(|| cooling.first_in(Protocol::Udp, candidate, now_ms))
                    })
                    .flatten();
                let kept_port = keep
                    .then(|| {
                        names
                            .first_kept_in(Protocol::Tcp, candidate)
                            .or_else(|| names.first_kept_in(Protocol::Udp, candidate))
                    })
                    .flatten();
                if cooling_port.is_some() || kept_port.is_some() {
                    return cooling_port.or(kept_port);
                }
                let (protocol, port) = Protocol::ALL.into_iter().find_map(|protocol| {
                    in_use(protocol, candidate).map(|port| (protocol, port))
                })?;
                super::mark_in_use(cooling, (pool, &mut marked), protocol, port, now_ms);
                Some(port)
            };
            let in_stripe = stripe
                .and_then(|stripe| tcp.next_fit_in_stripe(Protocol::Tcp, count, stripe, &mut both));
            if let Some(range) = in_stripe {
                return Ok(range);
            }
            found = within.and_then(|within| match bounds {
                None => tcp.next_fit(Protocol::Tcp, count, within, &mut both),
                Some(_) => {
                    tcp.next_fit_bounded(Protocol::Tcp, count, within, pool.range(), &mut both)
                }
            });
            if found.is_some() {
                break;
            }
        }
        match found {
            Some(range) => {
                // A block at the end of the pool sends the next search to the pool's start.
                if range.end() >= pool.range().end() && bounds.is_none() {
                    self.tcp.restart_at(pool.range().start());
                }
                Ok(range)
            }
            None => Err(AcquireError::PoolExhausted {
                protocol: Protocol::Tcp,
                count,
                pool,
                free_ports: u32::from(area.count())
                    - self.tcp.reserved_in(area).max(self.udp.reserved_in(area)),
                skipped_privileged: area.start() < lowest,
                bounds,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::owner::{Owner, SessionId};
    use crate::range::Pool;
    use crate::table::Quota;

    fn holder() -> Holder {
        Holder {
            owner: Owner {
                pid: 7,
                uid: 1000,
                gid: 1000,
                start_time: 1,
                command: "t".into(),
            },
            session: SessionId(1),
            acquired_at_ms: 0,
            hold: false,
            label: None,
            name: None,
        }
    }

    fn ranges(changes: &[Change; 2]) -> [(Protocol, PortRange); 2] {
        changes.clone().map(|c| {
            let r = c.reservation().unwrap();
            (r.protocol, r.range)
        })
    }

    #[test]
    fn a_wildcard_pair_skips_ports_taken_in_either_protocol() {
        let mut t = Table::new(Pool::new(1000, 1009).unwrap());
        let mut next = 0u64;
        let mut tokens = move || {
            next += 1;
            next
        };
        let none = &mut |_: Protocol, _: PortRange| None;
        // UDP 1000-1001 and TCP 1002 are taken; a pair of 2 lands on 1003-1004.
        t.acquire(
            Protocol::Udp,
            RangeRequest::Specific(PortRange::new(1000, 2).unwrap()),
            holder(),
            Constraints::default(),
            &mut tokens,
            none,
        )
        .unwrap();
        t.acquire(
            Protocol::Tcp,
            RangeRequest::Specific(PortRange::new(1002, 1).unwrap()),
            holder(),
            Constraints::default(),
            &mut tokens,
            none,
        )
        .unwrap();
        let pair = t
            .acquire_both(
                RangeRequest::Wildcard { count: 2 },
                holder(),
                Constraints::default(),
                &mut tokens,
                none,
            )
            .unwrap();
        let at = PortRange::new(1003, 2).unwrap();
        assert_eq!(ranges(&pair), [(Protocol::Tcp, at), (Protocol::Udp, at)]);
        // A port in use in UDP only is skipped too.
        let pair = t
            .acquire_both(
                RangeRequest::Wildcard { count: 1 },
                holder(),
                Constraints::default(),
                &mut tokens,
                &mut |p, r| (p == Protocol::Udp && r.contains(1005)).then_some(1005),
            )
            .unwrap();
        let at = PortRange::new(1006, 1).unwrap();
        assert_eq!(ranges(&pair), [(Protocol::Tcp, at), (Protocol::Udp, at)]);
        // Two single reservations and two pairs, each pair counted once; ports by number.
        assert_eq!(t.usage(1000).reservations, 4);
        assert_eq!(t.usage(1000).ports, 6);
    }

    #[test]
    fn a_specific_pair_needs_both_free_and_counts_once_for_the_quota() {
        let mut t = Table::new(Pool::new(1000, 1009).unwrap());
        let mut next = 0u64;
        let mut tokens = move || {
            next += 1;
            next
        };
        let none = &mut |_: Protocol, _: PortRange| None;
        let at = RangeRequest::Specific(PortRange::new(1005, 2).unwrap());
        t.acquire(
            Protocol::Udp,
            RangeRequest::Specific(PortRange::new(1006, 1).unwrap()),
            holder(),
            Constraints::default(),
            &mut tokens,
            none,
        )
        .unwrap();
        let err = t
            .acquire_both(at, holder(), Constraints::default(), &mut tokens, none)
            .unwrap_err();
        assert!(
            matches!(
                err,
                AcquireError::Conflict {
                    protocol: Protocol::Udp,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            t.usage(1000).reservations,
            1,
            "nothing granted on a refusal"
        );
        let tight = Constraints {
            lowest_port: 0,
            quota: Some(Quota {
                max_reservations: 1,
                max_ports: 10,
                max_held_ports: 10,
            }),
            shared_max: None,
        };
        let err = t
            .acquire_both(
                RangeRequest::Wildcard { count: 1 },
                holder(),
                tight,
                &mut tokens,
                none,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                AcquireError::QuotaExceeded {
                    what: crate::QuotaKind::Reservations,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
