//! What each user holds, kept so that quota checks are O(1) and decided under the same lock
//! as the grant.

use std::collections::HashMap;

use crate::table::{Lease, Reservation};

/// The runtime reservations one user (uid) holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live runtime reservations.
    pub reservations: u32,
    /// Ports in them.
    pub ports: u32,
}

/// A user's limits. Persistent reservations are made by administrators and do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Live runtime reservations at most.
    pub max_reservations: u32,
    /// Ports in them at most.
    pub max_ports: u32,
}

/// What bounds one acquire, decided by the caller's policy (the core reads no configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Constraints {
    /// The lowest port the asker may get: ports below it (privileged ports the asker may not
    /// use) are skipped by a wildcard search and refused to a specific request. 0 = no bound.
    pub lowest_port: u16,
    /// The asker's quota, if one applies.
    pub quota: Option<Quota>,
}

/// Which quota a request would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// The number of reservations.
    Reservations,
    /// The number of ports.
    Ports,
}

impl QuotaKind {
    /// "reservations" or "ports".
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Reservations => "reservations",
            QuotaKind::Ports => "ports",
        }
    }
}

/// Per-uid usage of runtime reservations.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    by_uid: HashMap<u32, Usage>,
}

impl Ledger {
    pub(super) fn get(&self, uid: u32) -> Usage {
        self.by_uid.get(&uid).copied().unwrap_or_default()
    }

    /// Counts `r` in (`add`) or out of its owner's usage.
    pub(super) fn count(&mut self, r: &Reservation, add: bool) {
        let Lease::Runtime { owner, .. } = &r.lease else {
            return;
        };
        let ports = u32::from(r.range.count());
        let usage = self.by_uid.entry(owner.uid).or_default();
        if add {
            usage.reservations += 1;
            usage.ports += ports;
        } else {
            usage.reservations = usage.reservations.saturating_sub(1);
            usage.ports = usage.ports.saturating_sub(ports);
            if usage.reservations == 0 {
                self.by_uid.remove(&owner.uid);
            }
        }
    }

    /// The first quota that `asking` more ports in one more reservation would exceed, with its
    /// limit and current use.
    pub(super) fn exceeds(
        &self,
        uid: u32,
        quota: Quota,
        asking: u16,
    ) -> Option<(QuotaKind, u32, u32)> {
        let usage = self.get(uid);
        if usage.reservations >= quota.max_reservations {
            return Some((
                QuotaKind::Reservations,
                quota.max_reservations,
                usage.reservations,
            ));
        }
        if usage.ports.saturating_add(u32::from(asking)) > quota.max_ports {
            return Some((QuotaKind::Ports, quota.max_ports, usage.ports));
        }
        None
    }
}
