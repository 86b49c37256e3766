//! Ports freed recently, which wildcard searches pass by while other ports fit (the reuse
//! cool-down): a port just released does not reach the next asker while the last owner's
//! connections linger (`TIME_WAIT`) or its peers still send to it. Pure: times come in as
//! milliseconds.
//!
//! Each protocol's freed times are an array with one slot a port, made at its first release:
//! 256 KiB whatever the churn. (A record per release, kept in order to forget it once cool,
//! took up to 2 MiB when tens of thousands of ports were released within a cool-down.) Which
//! ports cool is exact. How many cool is counted per slice of the window (a 1,024th of it), a
//! slice forgotten at once when it has cooled whole: the count may include ports of the slice
//! cooling right now (released 59 ms apart, for a minute's window), never fewer than cool. It
//! only decides whether a first, cool-down-respecting search pass is worth making; near that
//! edge a wildcard search may take a port that has a few milliseconds of its cool-down left
//! rather than one that has just cooled.
//!
//! Times are the wall clock's: one that steps back is taken as standing still (a release then
//! counts from the latest time seen), so that releases stay in order.

use std::collections::VecDeque;

use crate::range::{PortRange, Protocol};

/// Slices of the window that cooling ports are counted in: the count is exact but for the
/// slice cooling right now, whose ports are still counted until it has cooled whole.
const SLICES: u64 = 1024;

/// The longest window: times are kept as 32-bit milliseconds from a base that moves once they
/// near 2^31 (about 25 days), which must leave the window behind. (The configuration allows an
/// hour.)
const MAX_WINDOW_MS: u64 = 1 << 30;

/// When each recently freed port was freed.
#[derive(Debug, Default)]
pub(super) struct Cooling {
    /// How long a freed port is passed by; 0: never.
    window_ms: u64,
    /// The time slots are counted from (the first release's).
    base_ms: u64,
    /// The latest time a release was noted at (times never go back).
    last_ms: u64,
    /// Per protocol (TCP, UDP): for each port, 1 + when it was last freed (milliseconds after
    /// `base_ms`), or 0; made at the protocol's first release.
    freed: [Option<Box<[u32]>>; 2],
    /// Cooling ports per slice of the window (by absolute slice number, oldest first; only
    /// slices in which something was freed), per protocol.
    slices: VecDeque<(u64, [u32; 2])>,
    /// The sum of `slices`' counts, per protocol.
    counted: [u32; 2],
}

fn slot(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

/// Ports of one protocol: the length of a `freed` array.
const PORTS: usize = 1 << 16;

impl Cooling {
    /// Passes freed ports by for `window_ms` from now on (0: not at all; at most about 12
    /// days). A new window forgets what was freed: the slices it was counted in were the old
    /// window's.
    pub(super) fn set_window(&mut self, window_ms: u64) {
        let window_ms = window_ms.min(MAX_WINDOW_MS);
        if window_ms != self.window_ms {
            self.clear();
        }
        self.window_ms = window_ms;
    }

    /// Forgets every freed port (the window stays), and the memory that held them.
    pub(super) fn clear(&mut self) {
        self.freed = Default::default();
        self.slices = VecDeque::new();
        self.counted = [0; 2];
    }

    /// The window, in milliseconds.
    pub(super) fn window_ms(&self) -> u64 {
        self.window_ms
    }

    fn slice_ms(&self) -> u64 {
        (self.window_ms / SLICES).max(1)
    }

    /// The slot value of a release at `now_ms`.
    fn stamp(&mut self, now_ms: u64) -> u32 {
        if self.freed.iter().all(Option::is_none) {
            self.base_ms = now_ms;
        }
        let mut offset = now_ms.saturating_sub(self.base_ms);
        if offset >= u64::from(u32::MAX >> 1) {
            // About 25 days after the base: move it, dropping what has cooled since.
            self.rebase(now_ms);
            offset = now_ms.saturating_sub(self.base_ms);
        }
        u32::try_from(offset + 1).unwrap_or(u32::MAX)
    }

    /// Counts times from `now_ms` minus the window: every slot older than that has cooled.
    fn rebase(&mut self, now_ms: u64) {
        let base = now_ms.saturating_sub(self.window_ms);
        let delta = base.saturating_sub(self.base_ms);
        for at in self.freed.iter_mut().flatten().flat_map(|a| a.iter_mut()) {
            *at = match u64::from(*at) {
                0 => 0,
                v if v - 1 < delta => 0,
                v => u32::try_from(v - delta).unwrap_or(0),
            };
        }
        self.base_ms = base;
    }

    /// When slot value `at` (non-zero) was freed.
    fn freed_ms(&self, at: u32) -> u64 {
        self.base_ms + u64::from(at) - 1
    }

    /// Takes a port freed at slot value `at` out of its slice's count, if the slice is still
    /// counted.
    fn uncount(&mut self, protocol: usize, at: u32) {
        let slice = self.freed_ms(at) / self.slice_ms();
        let Some(&(first, _)) = self.slices.front() else {
            return;
        };
        if slice < first {
            return;
        }
        // Slices are few (about SLICES + 1: one a SLICES-th of the window, at least a
        // millisecond each) and sorted.
        if let Ok(i) = self.slices.binary_search_by_key(&slice, |&(s, _)| s) {
            if let Some((_, counts)) = self.slices.get_mut(i) {
                counts[protocol] = counts[protocol].saturating_sub(1);
                self.counted[protocol] = self.counted[protocol].saturating_sub(1);
            }
        }
    }

    /// Notes that `range` was freed in `protocol` at `now_ms` (the caller passes only the part
    /// inside the pool: only wildcard searches pass cooling ports by).
    pub(super) fn note(&mut self, protocol: Protocol, range: PortRange, now_ms: u64) {
        if self.window_ms == 0 {
            return;
        }
        let now_ms = now_ms.max(self.last_ms);
        self.last_ms = now_ms;
        self.expire(now_ms);
        let p = slot(protocol);
        let stamp = self.stamp(now_ms);
        let mut freed = self.freed[p]
            .take()
            .unwrap_or_else(|| vec![0; PORTS].into_boxed_slice());
        for port in range.ports() {
            if let Some(at) = freed.get_mut(usize::from(port)) {
                if *at != 0 {
                    // Freed again: counted in this release's slice from now on.
                    self.uncount(p, *at);
                }
                *at = stamp;
            }
        }
        self.freed[p] = Some(freed);
        let slice = now_ms / self.slice_ms();
        if self.slices.back().is_none_or(|&(s, _)| s < slice) {
            self.slices.push_back((slice, [0; 2]));
        }
        if let Some((_, counts)) = self.slices.back_mut() {
            counts[p] += u32::from(range.count());
        }
        self.counted[p] += u32::from(range.count());
    }

    /// How many ports of `protocol` are cooling (after [`Cooling::expire`]; ports reserved
    /// again are taken out by [`Cooling::forget`], so none of them is reserved). Ports of the
    /// slice cooling right now count until it has cooled whole: never fewer than cool.
    pub(super) fn len(&self, protocol: Protocol) -> usize {
        self.counted[slot(protocol)] as usize
    }

    /// Stops counting `range` in `protocol` (reserved again: no longer a free port to pass by).
    pub(super) fn forget(&mut self, protocol: Protocol, range: PortRange) {
        let p = slot(protocol);
        let Some(mut freed) = self.freed[p].take() else {
            return;
        };
        for port in range.ports() {
            if let Some(at) = freed.get_mut(usize::from(port)) {
                if *at != 0 {
                    self.uncount(p, *at);
                    *at = 0;
                }
            }
        }
        self.freed[p] = Some(freed);
    }

    /// The first port of `range` freed in `protocol` less than the window before `now_ms`.
    pub(super) fn first_in(
        &self,
        protocol: Protocol,
        range: PortRange,
        now_ms: u64,
    ) -> Option<u16> {
        let freed = self.freed[slot(protocol)].as_ref()?;
        range.ports().find(|&port| {
            freed
                .get(usize::from(port))
                .is_some_and(|&at| self.cooling(at, now_ms))
        })
    }

    /// How many ports of `range` were freed in `protocol` less than the window before
    /// `now_ms`.
    pub(super) fn count_in(&self, protocol: Protocol, range: PortRange, now_ms: u64) -> u32 {
        let Some(freed) = self.freed[slot(protocol)].as_ref() else {
            return 0;
        };
        let n = range
            .ports()
            .filter(|&port| {
                freed
                    .get(usize::from(port))
                    .is_some_and(|&at| self.cooling(at, now_ms))
            })
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether a port with slot value `at` is cooling at `now_ms`.
    fn cooling(&self, at: u32, now_ms: u64) -> bool {
        at != 0 && now_ms.saturating_sub(self.freed_ms(at)) < self.window_ms
    }

    /// Stops counting the slices that have cooled whole by `now_ms`; once nothing is counted,
    /// gives the arrays back too.
    pub(super) fn expire(&mut self, now_ms: u64) {
        let slice_ms = self.slice_ms();
        while let Some(&(slice, counts)) = self.slices.front() {
            let cooled_at = (slice + 1)
                .saturating_mul(slice_ms)
                .saturating_add(self.window_ms);
            if now_ms < cooled_at {
                break;
            }
            self.slices.pop_front();
            for (counted, n) in self.counted.iter_mut().zip(counts) {
                *counted = counted.saturating_sub(n);
            }
        }
        if self.slices.is_empty() && self.freed.iter().any(Option::is_some) {
            // Every port noted has cooled: nothing to remember.
            self.freed = Default::default();
            self.counted = [0; 2];
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn range(start: u16, count: u16) -> PortRange {
        PortRange::new(start, count).unwrap()
    }

    /// One step of the model test: time passes, then a range of a protocol is freed or
    /// reserved again.
    #[derive(Debug, Clone)]
    struct Step {
        after_ms: u64,
        udp: bool,
        start: u16,
        count: u16,
        forget: bool,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            0u64..300,
            any::<bool>(),
            1000u16..1200,
            1u16..5,
            prop::bool::weighted(0.3),
        )
            .prop_map(|(after_ms, udp, start, count, forget)| Step {
                after_ms,
                udp,
                start,
                count,
                forget,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against the obvious model: a map of port to when it was freed, a port cooling while
        /// less than the window has passed. Which ports cool is exact; the count is never below
        /// the model's, nor above it by more than the ports freed in the slice cooling now.
        /// A window later everything has cooled, and the arrays are given back.
        #[test]
        fn matches_a_map_of_release_times(steps in prop::collection::vec(step(), 1..300)) {
            let window = 6_400;
            let mut c = Cooling::default();
            c.set_window(window);
            let mut model: std::collections::BTreeMap<(usize, u16), u64> = Default::default();
            let mut now = 1_000_000u64;
            for s in steps {
                now += s.after_ms;
                let protocol = if s.udp { Protocol::Udp } else { Protocol::Tcp };
                let p = slot(protocol);
                let r = range(s.start, s.count);
                if s.forget {
                    c.forget(protocol, r);
                    for port in r.ports() {
                        model.remove(&(p, port));
                    }
                } else {
                    c.note(protocol, r, now);
                    for port in r.ports() {
                        model.insert((p, port), now);
                    }
                }
                c.expire(now);
                for (q, proto) in [(0, Protocol::Tcp), (1, Protocol::Udp)] {
                    let cooling: Vec<u16> = model
                        .iter()
                        .filter(|(&(mp, _), &at)| mp == q && now - at < window)
                        .map(|(&(_, port), _)| port)
                        .collect();
                    let probe = range(1000, 210);
                    prop_assert_eq!(c.first_in(proto, probe, now), cooling.first().copied());
                    prop_assert_eq!(c.count_in(proto, probe, now) as usize, cooling.len());
                    prop_assert!(c.len(proto) >= cooling.len());
                    // Counted but cooled: only ports of the slice cooling now.
                    let slice_start = (now.saturating_sub(window) / c.slice_ms()) * c.slice_ms();
                    let recent = model
                        .iter()
                        .filter(|(&(mp, _), &at)| mp == q && at >= slice_start)
                        .count();
                    prop_assert!(c.len(proto) <= recent.max(cooling.len()));
                }
            }
            c.expire(now + window + c.slice_ms());
            prop_assert_eq!((c.len(Protocol::Tcp), c.len(Protocol::Udp)), (0, 0));
            prop_assert!(c.freed.iter().all(Option::is_none));
        }
    }

    /// A clock that steps back is taken as standing still: the release counts from the latest
    /// time seen, and the counts stay right when it is freed again or reserved.
    #[test]
    fn a_clock_that_steps_back_stands_still() {
        let mut c = Cooling::default();
        c.set_window(60_000);
        c.note(Protocol::Tcp, range(3000, 1), 100_000);
        c.note(Protocol::Tcp, range(3001, 1), 40_000);
        assert_eq!(c.len(Protocol::Tcp), 2);
        assert_eq!(c.count_in(Protocol::Tcp, range(3000, 2), 159_999), 2);
        assert_eq!(c.count_in(Protocol::Tcp, range(3000, 2), 160_000), 0);
        c.note(Protocol::Tcp, range(3001, 1), 30_000);
        assert_eq!(c.len(Protocol::Tcp), 2);
        c.forget(Protocol::Tcp, range(3000, 2));
        assert_eq!(c.len(Protocol::Tcp), 0);
    }

    /// Times far apart (weeks) move the base, and what is cooling stays so.
    #[test]
    fn a_base_weeks_old_is_moved() {
        let mut c = Cooling::default();
        c.set_window(60_000);
        c.note(Protocol::Tcp, range(2000, 1), 0);
        let later = 30 * 24 * 3600 * 1000;
        c.note(Protocol::Tcp, range(2001, 1), later);
        c.expire(later);
        assert_eq!(c.first_in(Protocol::Tcp, range(2000, 2), later), Some(2001));
        assert_eq!(
            c.first_in(Protocol::Tcp, range(2000, 2), later + 59_999),
            Some(2001)
        );
        assert_eq!(
            c.first_in(Protocol::Tcp, range(2000, 2), later + 60_000),
            None
        );
        assert_eq!(c.len(Protocol::Tcp), 1);
    }
}
