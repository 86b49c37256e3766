//! What each user holds, and what all capped users hold together in the shared range, kept so
//! that quota checks are O(1) and decided under the same lock as the grant.
//!
//! # Counting
//! A reservation's *weight* is what it adds to its owner's [`Usage`]:
//! - ports are counted as port *numbers*: a number a user holds in TCP and in UDP counts once,
//!   since the kernel's reserved-ports list (and the host's ephemeral range) has one entry per
//!   number for both protocols;
//! - a *twin* — a reservation of exactly the same ports as one in the other protocol owned by
//!   the same process (the two halves of a TCP+UDP grant, as the portpicker endpoint makes) —
//!   counts as no extra reservation;
//! - held ports are the ports of held reservations.
//!
//! The weight is computed against the *other* protocol's live reservations, on insert before
//! the reservation goes in and on removal after it went out, so that adding and removing in
//! any order sums to the count of distinct numbers (and pairs) held.

use std::collections::HashMap;

use crate::range::PortRange;

/// The runtime reservations one user (uid) holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live runtime reservations (a TCP+UDP twin counts once).
    pub reservations: u32,
    /// Port numbers in them (a number held in both protocols counts once).
    pub ports: u32,
    /// Ports of held reservations (the daemon keeps a hold socket per port and family).
    pub held_ports: u32,
}

/// A user's limits. Persistent reservations are made by administrators and do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Live runtime reservations at most.
    pub max_reservations: u32,
    /// Port numbers in them at most.
    pub max_ports: u32,
    /// Ports of held reservations at most.
    pub max_held_ports: u32,
}

impl Quota {
    /// No limit at all.
    pub const UNLIMITED: Quota = Quota {
        max_reservations: u32::MAX,
        max_ports: u32::MAX,
        max_held_ports: u32::MAX,
    };
}

/// What bounds one acquire, decided by the caller's policy (the core reads no configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Constraints {
    /// The lowest port the asker may get: ports below it (privileged ports the asker may not
    /// use) are skipped by a wildcard search and refused to a specific request. 0 = no bound.
    pub lowest_port: u16,
    /// The asker's quota, if one applies.
    pub quota: Option<Quota>,
    /// The most port numbers of the shared range (see [`crate::Table::set_shared_range`])
    /// that every *capped* reservation together may hold, when the asker is capped (the
    /// daemon caps non-administrators, so that together they cannot take the host's
    /// ephemeral ports). `None`: the asker is not capped, and its reservations do not count.
    pub shared_max: Option<u32>,
}

/// Which limit a request would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// The user's number of reservations.
    Reservations,
    /// The user's number of ports.
    Ports,
    /// The user's number of held ports.
    HeldPorts,
    /// The ports of the shared range that all capped users hold together.
    Shared,
}

impl QuotaKind {
    /// "reservations", "ports", "held ports" or "ports of the shared range".
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Reservations => "reservations",
            QuotaKind::Ports => "ports",
            QuotaKind::HeldPorts => "held ports",
            QuotaKind::Shared => "ports of the shared range",
        }
    }
}

/// What one reservation adds to its owner's usage and to the shared count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Weight {
    pub(super) usage: Usage,
    /// Port numbers of the shared range it adds (capped reservations only).
    pub(super) shared: u32,
}

/// Per-uid usage of runtime reservations, and the shared count.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    by_uid: HashMap<u32, Usage>,
    /// Port numbers of the shared range that capped reservations hold.
    shared: u32,
}

impl Ledger {
    pub(super) fn get(&self, uid: u32) -> Usage {
        self.by_uid.get(&uid).copied().unwrap_or_default()
    }

    /// Port numbers of the shared range held by capped reservations.
    pub(super) fn shared(&self) -> u32 {
        self.shared
    }

    /// Replaces the shared count (after the shared range moved and it was counted anew).
    pub(super) fn set_shared(&mut self, shared: u32) {
        self.shared = shared;
    }

    /// Counts `weight` in (`add`) or out of `uid`'s usage and the shared count.
    pub(super) fn count(&mut self, uid: u32, weight: Weight, add: bool) {
        let w = weight.usage;
        if add {
            let usage = self.by_uid.entry(uid).or_default();
            usage.reservations += w.reservations;
            usage.ports += w.ports;
            usage.held_ports += w.held_ports;
            self.shared += weight.shared;
        } else {
            if let Some(usage) = self.by_uid.get_mut(&uid) {
                usage.reservations = usage.reservations.saturating_sub(w.reservations);
                usage.ports = usage.ports.saturating_sub(w.ports);
                usage.held_ports = usage.held_ports.saturating_sub(w.held_ports);
                if *usage == Usage::default() {
                    self.by_uid.remove(&uid);
                }
            }
            self.shared = self.shared.saturating_sub(weight.shared);
        }
    }

    /// The first limit that adding `weight` to `uid`'s usage would exceed, with its value and
    /// current use.
    pub(super) fn exceeds(
        &self,
        uid: u32,
        quota: Quota,
        weight: Usage,
    ) -> Option<(QuotaKind, u32, u32)> {
        let usage = self.get(uid);
        let over = |used: u32, more: u32, limit: u32| more > 0 && used.saturating_add(more) > limit;
        if over(
            usage.reservations,
            weight.reservations,
            quota.max_reservations,
        ) {
            return Some((
                QuotaKind::Reservations,
                quota.max_reservations,
                usage.reservations,
            ));
        }
        if over(usage.ports, weight.ports, quota.max_ports) {
            return Some((QuotaKind::Ports, quota.max_ports, usage.ports));
        }
        if over(usage.held_ports, weight.held_ports, quota.max_held_ports) {
            return Some((QuotaKind::HeldPorts, quota.max_held_ports, usage.held_ports));
        }
        None
    }

    /// Every user with something counted, and what.
    pub(super) fn users(&self) -> impl Iterator<Item = (u32, Usage)> + '_ {
        self.by_uid.iter().map(|(&uid, &usage)| (uid, usage))
    }
}

/// How many ports `a` and `b` share.
pub(super) fn shared_ports(a: PortRange, b: PortRange) -> u32 {
    let (lo, hi) = (a.start().max(b.start()), a.end().min(b.end()));
    if lo > hi {
        0
    } else {
        u32::from(hi - lo) + 1
    }
}

/// The part of `a` inside `b`, if any.
pub(super) fn intersection(a: PortRange, b: PortRange) -> Option<PortRange> {
    PortRange::from_bounds(a.start().max(b.start()), a.end().min(b.end())).ok()
}
