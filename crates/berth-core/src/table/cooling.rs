//! Ports freed recently, which wildcard searches pass by while other ports fit (the reuse
//! cool-down): a port just released does not reach the next asker while the last owner's
//! connections linger (`TIME_WAIT`) or its peers still send to it. Pure: times come in as
//! milliseconds.

use std::collections::{BTreeMap, VecDeque};

use crate::range::{PortRange, Protocol};

/// The most releases remembered in order; past it the oldest are forgotten early (each
/// protocol has 65,535 ports, so this bounds the memory under any churn).
const MAX_REMEMBERED: usize = 2 * 65_536;

/// When each recently freed port was freed.
#[derive(Debug, Default)]
pub(super) struct Cooling {
    /// How long a freed port is passed by; 0: never.
    window_ms: u64,
    /// Per protocol (TCP, UDP): port → when it was last freed.
    freed: [BTreeMap<u16, u64>; 2],
    /// The releases in the order they came, to forget their ports once cool.
    order: VecDeque<(u64, Protocol, PortRange)>,
}

fn slot(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

impl Cooling {
    /// Passes freed ports by for `window_ms` from now on (0: not at all, and forgets).
    pub(super) fn set_window(&mut self, window_ms: u64) {
        self.window_ms = window_ms;
        if window_ms == 0 {
            self.clear();
        }
    }

    /// Forgets every freed port (the window stays).
    pub(super) fn clear(&mut self) {
        self.freed = Default::default();
        self.order.clear();
    }

    /// The window, in milliseconds.
    pub(super) fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Notes that `range` was freed in `protocol` at `now_ms` (the caller passes only the part
    /// inside the pool: only wildcard searches pass cooling ports by).
    pub(super) fn note(&mut self, protocol: Protocol, range: PortRange, now_ms: u64) {
        if self.window_ms == 0 {
            return;
        }
        self.expire(now_ms);
        let freed = &mut self.freed[slot(protocol)];
        for port in range.ports() {
            freed.insert(port, now_ms);
        }
        if self.order.len() >= MAX_REMEMBERED {
            self.forget_oldest();
        }
        self.order.push_back((now_ms, protocol, range));
    }

    /// How many ports of `protocol` are cooling (after [`Cooling::expire`]; ports reserved
    /// again are taken out by [`Cooling::forget`], so none of them is reserved).
    pub(super) fn len(&self, protocol: Protocol) -> usize {
        self.freed[slot(protocol)].len()
    }

    /// Stops counting `range` in `protocol` (reserved again: no longer a free port to pass by).
    pub(super) fn forget(&mut self, protocol: Protocol, range: PortRange) {
        let freed = &mut self.freed[slot(protocol)];
        // Only the cooling ports of the range: a large block reserved over few of them costs
        // what they are, not what it is.
        let cooling: Vec<u16> = freed
            .range(range.start()..=range.end())
            .map(|(&port, _)| port)
            .collect();
        for port in cooling {
            freed.remove(&port);
        }
    }

    /// The first port of `range` freed in `protocol` less than the window before `now_ms`.
    pub(super) fn first_in(
        &self,
        protocol: Protocol,
        range: PortRange,
        now_ms: u64,
    ) -> Option<u16> {
        self.freed[slot(protocol)]
            .range(range.start()..=range.end())
            .find(|(_, &at)| self.cooling(at, now_ms))
            .map(|(&port, _)| port)
    }

    /// How many ports of `range` were freed in `protocol` less than the window before
    /// `now_ms`.
    pub(super) fn count_in(&self, protocol: Protocol, range: PortRange, now_ms: u64) -> u32 {
        let n = self.freed[slot(protocol)]
            .range(range.start()..=range.end())
            .filter(|(_, &at)| self.cooling(at, now_ms))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn cooling(&self, freed_at: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(freed_at) < self.window_ms
    }

    /// Forgets the releases that have cooled down by `now_ms`.
    pub(super) fn expire(&mut self, now_ms: u64) {
        while let Some(&(at, _, _)) = self.order.front() {
            if self.cooling(at, now_ms) {
                break;
            }
            self.forget_oldest();
        }
    }

    /// Forgets the oldest release (its ports, unless freed again since).
    fn forget_oldest(&mut self) {
        let Some((at, protocol, range)) = self.order.pop_front() else {
            return;
        };
        let freed = &mut self.freed[slot(protocol)];
        for port in range.ports() {
            if freed.get(&port) == Some(&at) {
                freed.remove(&port);
            }
        }
    }
}
