//! One protocol's port space: its reservations by start port, its free map and its next-fit
//! cursor.

use std::collections::BTreeMap;

use crate::freemap::FreeMap;
use crate::range::{PortRange, Protocol};
use crate::token::Token;

/// A live reservation as its space sees it: the table keeps the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    /// Its ports.
    pub(super) range: PortRange,
    /// Its name, the key of the full record in the table.
    pub(super) token: Token,
}

/// The allocation state of one protocol.
#[derive(Debug)]
pub(super) struct Space {
    /// Live reservations keyed by first port. Because they never overlap, the one holding a
    /// port is the last one starting at or before it — an O(log n) lookup. Values are small
    /// on purpose: with tens of thousands of reservations the tree's nodes stay in cache.
    pub(super) by_start: BTreeMap<u16, Slot>,
    /// The same ports as `by_start`, in a form that finds free blocks in O(log 65,536).
    free: FreeMap,
    /// Where the next wildcard search starts: just past the last block granted, so a block
    /// that was just released is not handed out again at once (a late packet or a lingering
    /// peer aimed at the old owner should not reach a new one). Always inside the pool.
    cursor: u16,
    /// Where the next search of the stripe listed ahead starts (see `Table::set_stripe`):
    /// the stripe's ports are handed out in turn, not the lowest free one again and again.
    stripe_cursor: u16,
    /// Number of reserved ports, kept so that counting them is O(1).
    pub(super) reserved: u32,
}

impl Space {
    /// An empty space whose cursor sits at the start of `pool`.
    pub(super) fn new(pool: PortRange) -> Self {
        Space {
            by_start: BTreeMap::new(),
            free: FreeMap::new(),
            cursor: pool.start(),
            stripe_cursor: 0,
            reserved: 0,
        }
    }

    /// The reservation holding `port`, if any.
    pub(super) fn containing(&self, port: u16) -> Option<Slot> {
        self.by_start
            .range(..=port)
            .next_back()
            .map(|(_, slot)| *slot)
            .filter(|slot| slot.range.contains(port))
    }

    /// The lowest reservation that shares a port with `range`, if any.
    pub(super) fn first_overlap(&self, range: PortRange) -> Option<Slot> {
        // Only the last reservation starting at or before `range` can reach into it from the
        // left; failing that, the first one starting inside it is the lowest overlap.
        self.containing(range.start()).or_else(|| {
            self.by_start
                .range(range.start()..=range.end())
                .next()
                .map(|(_, slot)| *slot)
        })
    }

    /// Every reservation that shares a port with `range`, lowest first.
    pub(super) fn overlapping(&self, range: PortRange) -> impl Iterator<Item = Slot> + '_ {
        // Only the last reservation starting before `range` can reach into it from the left.
        let left = self
            .by_start
            .range(..range.start())
            .next_back()
            .map(|(_, slot)| *slot)
            .filter(|slot| slot.range.overlaps(range));
        left.into_iter().chain(
            self.by_start
                .range(range.start()..=range.end())
                .map(|(_, slot)| *slot),
        )
    }

    /// Both cursors, to [`Space::rewind`] to when a search's block is refused after all.
    pub(super) fn marks(&self) -> (u16, u16) {
        (self.cursor, self.stripe_cursor)
    }

    /// Starts the next search of the stripe at `port`.
    pub(super) fn restart_stripe_at(&mut self, port: u16) {
        self.stripe_cursor = port;
    }

    /// Puts both cursors back where [`Space::marks`] saw them.
    pub(super) fn rewind(&mut self, marks: (u16, u16)) {
        (self.cursor, self.stripe_cursor) = marks;
    }

    /// Moves the next-fit cursor to `port`.
    pub(super) fn restart_at(&mut self, port: u16) {
        self.cursor = port;
    }

    /// How many reserved ports lie inside `within` (a walk over the reservations there: for
    /// error messages, not for hot paths).
    pub(super) fn reserved_in(&self, within: PortRange) -> u32 {
        let reaching_in = self.containing(within.start());
        let starting_in = self
            .by_start
            .range(within.start()..=within.end())
            .map(|(_, slot)| *slot)
            .filter(|slot| Some(*slot) != reaching_in);
        reaching_in
            .into_iter()
            .chain(starting_in)
            .map(|slot| {
                let first = slot.range.start().max(within.start());
                let last = slot.range.end().min(within.end());
                u32::from(last - first) + 1
            })
            .sum()
    }

    /// Adds a reservation of `range`, which must overlap none of the live ones.
    pub(super) fn insert(&mut self, range: PortRange, token: Token) {
        self.free.occupy(range);
        self.reserved += u32::from(range.count());
        self.by_start.insert(range.start(), Slot { range, token });
    }

    /// Removes the reservation starting at `start` and frees its ports.
    pub(super) fn remove(&mut self, start: u16) -> Option<Slot> {
        let slot = self.by_start.remove(&start)?;
        self.free.free(slot.range);
        self.reserved -= u32::from(slot.range.count());
        Some(slot)
    }

    /// Next-fit search of `pool` for `count` contiguous ports that are neither reserved nor,
    /// according to `in_use`, in use on the host. Starts at the cursor and wraps once to the
    /// start of the pool; a block never wraps past the pool's end. On success the cursor moves
    /// just past the block.
    ///
    /// Candidates are visited in ring order from the cursor, strictly moving forward, so the
    /// search ends after at most one pass however many ports are in use. It is complete: a
    /// start skipped is either not free in the map, or its block holds a port `in_use`
    /// reported (the first in use in a candidate at or before it, so also in its block).
    pub(super) fn next_fit(
        &mut self,
        protocol: Protocol,
        count: u16,
        pool: PortRange,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Option<PortRange> {
        next_fit(&self.free, &mut self.cursor, protocol, count, pool, in_use)
    }

    /// [`Space::next_fit`] inside `bounds` (a bounded wildcard's, which may lie outside the
    /// pool): from the cursor when it lies inside them, else from their first port. A block
    /// inside `pool` moves the cursor as a pool search's would; one outside leaves it there.
    pub(super) fn next_fit_bounded(
        &mut self,
        protocol: Protocol,
        count: u16,
        bounds: PortRange,
        pool: PortRange,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Option<PortRange> {
        let mut cursor = if bounds.contains(self.cursor) {
            self.cursor
        } else {
            bounds.start()
        };
        let found = next_fit(&self.free, &mut cursor, protocol, count, bounds, in_use)?;
        if pool.contains(found.start()) && pool.contains(found.end()) {
            self.cursor = if found.end() >= pool.end() {
                pool.start()
            } else {
                found.end() + 1
            };
        }
        Some(found)
    }

    /// [`Space::next_fit`] inside `stripe`, from the stripe's own cursor.
    pub(super) fn next_fit_in_stripe(
        &mut self,
        protocol: Protocol,
        count: u16,
        stripe: PortRange,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Option<PortRange> {
        next_fit(
            &self.free,
            &mut self.stripe_cursor,
            protocol,
            count,
            stripe,
            in_use,
        )
    }
}

/// See [`Space::next_fit`]; `cursor` is the one to start from and move.
fn next_fit(
    free: &FreeMap,
    cursor_at: &mut u16,
    protocol: Protocol,
    count: u16,
    pool: PortRange,
    in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
) -> Option<PortRange> {
    if count == 0 || count > pool.count() {
        return None;
    }
    let cursor = (*cursor_at).clamp(pool.start(), pool.end());
    let mut from = cursor;
    // After the wrap only starts before the cursor are new; the rest were seen already.
    let mut wrapped = false;
    loop {
        let found = free
            .find(count, from, pool)
            .filter(|&start| !wrapped || start < cursor);
        let Some(start) = found else {
            if wrapped {
                return None;
            }
            wrapped = true;
            from = pool.start();
            continue;
        };
        let candidate = PortRange::new(start, count).ok()?;
        let Some(busy) = in_use(protocol, candidate) else {
            *cursor_at = if candidate.end() >= pool.end() {
                pool.start()
            } else {
                candidate.end() + 1
            };
            return Some(candidate);
        };
        // Every start from `start` to `busy` has `busy` in its block. A probe that names a
        // port outside the candidate breaks its contract; step by one so the search still
        // moves forward and still ends.
        let next = if candidate.contains(busy) {
            u32::from(busy) + 1
        } else {
            u32::from(start) + 1
        };
        match u16::try_from(next) {
            Ok(next) if next <= pool.end() => from = next,
            _ if wrapped => return None,
            _ => {
                wrapped = true;
                from = pool.start();
            }
        }
    }
}
