//! The full records of live reservations, by token and by session.

use std::collections::{BTreeSet, HashMap};

use crate::owner::SessionId;
use crate::table::ports::PortStates;
use crate::table::Reservation;
use crate::token::Token;

/// A slab index or none, in four bytes (an `Option<u32>` takes eight: with tens of thousands
/// of reservations live, every byte of an entry counts).
#[derive(Debug, Clone, Copy)]
struct Link(u32);

impl Link {
    const NONE: Link = Link(u32::MAX);

    fn get(self) -> Option<u32> {
        (self.0 != u32::MAX).then_some(self.0)
    }
}

impl From<Option<u32>> for Link {
    fn from(index: Option<u32>) -> Self {
        // Slab indices stay far below u32::MAX (see `insert`).
        index.map_or(Link::NONE, Link)
    }
}

/// Slab indices by token: a hash map, rebuilt at its own size when removed entries, not live
/// ones, have used up its room.
///
/// hashbrown marks a removed entry with a tombstone when its neighbourhood is full, and a
/// tombstone takes room until the table is next rebuilt; a table that runs out of room while
/// more than half full grows (doubles) rather than clearing its tombstones in place. With
/// reservations coming and going by the thousand, 10,000 live ones ended up in 32,768 buckets
/// where 16,384 hold them. A B-tree has no tombstones, but costs ~50% more per acquire and
/// release with 30,000 live (measured with the core's criterion benchmark).
#[derive(Debug, Default)]
struct TokenIndex {
    map: HashMap<Token, u32>,
    /// The most the map has held without tombstones: its capacity when it last grew.
    room: usize,
}

impl TokenIndex {
    fn get(&self, token: &Token) -> Option<&u32> {
        self.map.get(token)
    }

    fn insert(&mut self, token: Token, index: u32) {
        let live = self.map.len();
        // `capacity()` counts the live entries and the room left, so `live == capacity()` is a
        // map that grows on this insert. Rebuilt instead when tombstones took the room and at
        // least a quarter of it comes back — so a rebuild (a pass over the live entries) is
        // paid for by at least room / 4 removals since the last. At most half full, hashbrown
        // clears its tombstones in place by itself, without a second table.
        if live == self.map.capacity() && self.room / 2 < live && live <= self.room / 4 * 3 {
            let mut fresh = HashMap::with_capacity(self.room);
            fresh.extend(self.map.drain());
            self.map = fresh;
        }
        self.map.insert(token, index);
        self.room = self.room.max(self.map.capacity());
    }

    fn remove(&mut self, token: &Token) -> Option<u32> {
        self.map.remove(token)
    }
}

/// A reservation and its neighbours in its session's list (indices into the slab).
#[derive(Debug)]
struct Entry {
    reservation: Reservation,
    /// The reservation acquired next on the same session, if still live.
    newer: Link,
    /// The reservation acquired before this one on the same session, if still live.
    older: Link,
    /// Which of its ports were bound through associate, and where the next one starts.
    ports: PortStates,
    /// Whether it counts against the shared range's cap (see `Constraints::shared_max`).
    capped: bool,
}

/// Every live reservation, findable by token and by session.
///
/// Records live in a slab whose vacated slots are reused newest-first; the token map holds
/// only slab indices, and each session's reservations are threaded through the slab as a
/// doubly linked list (newest first). So an acquire or release touches one small map entry,
/// its own slot and its neighbours' — which were acquired around the same time and are usually
/// still in cache. A set of tokens per session, or full records in the map, would each cost a
/// random memory access per operation once tens of thousands of reservations are live.
#[derive(Debug, Default)]
pub(super) struct Records {
    slab: Vec<Option<Entry>>,
    /// Vacant slab slots, most recently vacated last.
    vacant: Vec<u32>,
    by_token: TokenIndex,
    /// The newest live reservation of each session that has any.
    newest: HashMap<SessionId, u32>,
    /// The reservations with a port marked bound: what the daemon's periodic check of bound
    /// ports goes through, so that it costs what is bound, not what is live.
    bound: BTreeSet<Token>,
}

impl Records {
    pub(super) fn len(&self) -> usize {
        self.by_token.map.len()
    }

    pub(super) fn contains(&self, token: Token) -> bool {
        self.by_token.map.contains_key(&token)
    }

    pub(super) fn get(&self, token: Token) -> Option<&Reservation> {
        let index = *self.by_token.get(&token)?;
        self.entry(index).map(|e| &e.reservation)
    }

    /// The per-port state of `token`'s reservation.
    pub(super) fn ports(&self, token: Token) -> Option<&PortStates> {
        let index = *self.by_token.get(&token)?;
        self.entry(index).map(|e| &e.ports)
    }

    /// The per-port state of `token`'s reservation, to change.
    fn ports_mut(&mut self, token: Token) -> Option<&mut PortStates> {
        let index = *self.by_token.get(&token)?;
        self.entry_mut(index).map(|e| &mut e.ports)
    }

    /// Marks port `offset` of `token`'s reservation (of `count` ports) bound.
    pub(super) fn mark_bound(&mut self, token: Token, offset: u16, count: u16) {
        if let Some(ports) = self.ports_mut(token) {
            ports.bound(offset, count);
            if ports.bound_count() > 0 {
                self.bound.insert(token);
            }
        }
    }

    /// Marks port `offset` of `token`'s reservation free again.
    pub(super) fn mark_unbound(&mut self, token: Token, offset: u16) {
        if let Some(ports) = self.ports_mut(token) {
            ports.unbound(offset);
            if ports.bound_count() == 0 {
                self.bound.remove(&token);
            }
        }
    }

    /// The reservations with at least one port marked bound, by token.
    pub(super) fn with_bound(&self) -> impl Iterator<Item = &Reservation> + '_ {
        self.bound.iter().filter_map(|&token| self.get(token))
    }

    /// Whether `token`'s reservation counts against the shared range's cap.
    pub(super) fn is_capped(&self, token: Token) -> bool {
        let Some(&index) = self.by_token.get(&token) else {
            return false;
        };
        self.entry(index).is_some_and(|e| e.capped)
    }

    /// Replaces `token`'s reservation by `after` (same token), keeping its per-port state and
    /// whether it is capped, and moving it to the session list `after` names. Returns the
    /// reservation as it was.
    pub(super) fn replace(&mut self, after: Reservation) -> Option<Reservation> {
        let ports = self.ports(after.token)?.clone();
        let capped = self.is_capped(after.token);
        let before = self.remove(after.token)?;
        let token = after.token;
        self.insert(after, capped);
        if ports.bound_count() > 0 {
            self.bound.insert(token);
        }
        if let Some(slot) = self.ports_mut(token) {
            *slot = ports;
        }
        Some(before)
    }

    fn entry(&self, index: u32) -> Option<&Entry> {
        self.slab.get(index as usize)?.as_ref()
    }

    fn entry_mut(&mut self, index: u32) -> Option<&mut Entry> {
        self.slab.get_mut(index as usize)?.as_mut()
    }

    /// Adds `reservation`, whose token must be new, at the head of its session's list.
    pub(super) fn insert(&mut self, reservation: Reservation, capped: bool) {
        let index = match self.vacant.pop() {
            Some(index) => index,
            None => {
                // More live reservations than u32 can count would need more memory than a
                // host has; the length cannot overflow in practice.
                let index = u32::try_from(self.slab.len()).unwrap_or(u32::MAX);
                self.slab.push(None);
                index
            }
        };
        let token = reservation.token;
        let older = reservation
            .session()
            .and_then(|session| self.newest.insert(session, index));
        if let Some(entry) = older.and_then(|i| self.entry_mut(i)) {
            entry.newer = Link(index);
        }
        if let Some(slot) = self.slab.get_mut(index as usize) {
            *slot = Some(Entry {
                reservation,
                newer: Link::NONE,
                older: older.into(),
                ports: PortStates::default(),
                capped,
            });
        }
        self.by_token.insert(token, index);
    }

    /// Empties slot `index`, returning its entry.
    fn take(&mut self, index: u32) -> Option<Entry> {
        let entry = self.slab.get_mut(index as usize)?.take()?;
        self.vacant.push(index);
        Some(entry)
    }

    /// Removes `token`'s reservation and closes the gap it leaves in its session's list.
    pub(super) fn remove(&mut self, token: Token) -> Option<Reservation> {
        let index = self.by_token.remove(&token)?;
        self.bound.remove(&token);
        let entry = self.take(index)?;
        if let Some(older) = entry.older.get().and_then(|i| self.entry_mut(i)) {
            older.newer = entry.newer;
        }
        match entry.newer.get() {
            Some(newer) => {
                if let Some(newer) = self.entry_mut(newer) {
                    newer.older = entry.older;
                }
            }
            // It was the newest: its predecessor (if any) heads the list now.
            None => {
                if let Some(session) = entry.reservation.session() {
                    match entry.older.get() {
                        Some(older) => self.newest.insert(session, older),
                        None => self.newest.remove(&session),
                    };
                }
            }
        }
        Some(entry.reservation)
    }

    /// Whether `session` has any live reservation.
    pub(super) fn has_session(&self, session: SessionId) -> bool {
        self.newest.contains_key(&session)
    }

    /// The tokens of every reservation of `session`, newest first.
    pub(super) fn session_tokens(&self, session: SessionId) -> Vec<Token> {
        let mut next = self.newest.get(&session).copied();
        let mut tokens = Vec::new();
        while let Some(entry) = next.and_then(|i| self.entry(i)) {
            tokens.push(entry.reservation.token);
            next = entry.older.get();
        }
        tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct, scattered non-zero tokens (splitmix64 of a counter).
    fn token(n: u64) -> Token {
        let mut z = n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Token::new((z ^ (z >> 31)) | 1).expect("non-zero")
    }

    #[test]
    fn token_index_churn_keeps_its_size_and_its_entries() {
        let mut index = TokenIndex::default();
        let mut model = std::collections::BTreeMap::new();
        let live = 10_000u64;
        for n in 0..live {
            index.insert(token(n), n as u32);
            model.insert(token(n), n as u32);
        }
        let filled = index.map.capacity();
        // Oldest out, newest in: 200,000 reservations come and go, 10,000 live throughout.
        for n in live..live + 200_000 {
            let gone = token(n - live);
            assert_eq!(index.remove(&gone), model.remove(&gone));
            index.insert(token(n), n as u32);
            model.insert(token(n), n as u32);
        }
        assert!(
            index.map.capacity() <= filled,
            "grew from {filled} to {} with as many live",
            index.map.capacity()
        );
        assert_eq!(index.map.len(), model.len());
        for (token, slot) in &model {
            assert_eq!(index.get(token), Some(slot));
        }
    }

    #[test]
    fn token_index_grows_when_the_entries_need_it() {
        let mut index = TokenIndex::default();
        for n in 0..50_000u64 {
            index.insert(token(n), n as u32);
        }
        assert_eq!(index.map.len(), 50_000);
        assert!(index.map.capacity() >= 50_000);
        assert!((0..50_000u64).all(|n| index.get(&token(n)) == Some(&(n as u32))));
    }
}
