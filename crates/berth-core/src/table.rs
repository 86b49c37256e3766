//! The allocation state of both protocols: live reservations, their owners, and the free
//! maps wildcard requests are served from.
//!
//! Every mutating operation returns the [`Change`]s it made, in the order it made them; the
//! daemon hands them to whoever mirrors the table (its journal, and later the kernel's
//! reserved-ports list and the hold sockets), and can undo one with [`Table::revert`].

use crate::error::{AcquireError, ReleaseError, UseError};
use crate::label::Label;
use crate::name::Name;
use crate::owner::{Holder, Owner, Requester, SessionId};
use crate::policy::PrivilegedDenied;
use crate::range::{Pool, PortRange, Protocol, RangeRequest};
use crate::token::{Token, TokenSource};

mod both;
mod change;
mod cooling;
mod found_in_use;
mod names;
mod pair;
mod ports;
mod records;
mod reservation;
mod space;
#[cfg(test)]
mod tests;
mod usage;

#[cfg(test)]
mod names_tests;
#[cfg(test)]
mod wildcard_tests;

pub use change::{Change, Ending};
pub use found_in_use::FoundInUse;
pub use names::NameScope;
pub use ports::PortUse;
pub use reservation::{Allowed, Bond, Kind, Lease, Reservation, UseRequest};
pub use usage::{Constraints, Quota, QuotaKind, Usage};

use records::Records;
use space::Space;
use usage::{intersection, shared_ports, Ledger, Weight};

/// A reservation an associate may bind from, and the order in which to try its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindPlan {
    /// The reservation's ports.
    pub range: PortRange,
    /// Its protocol.
    pub protocol: Protocol,
    /// Runtime or persistent.
    pub kind: Kind,
    /// Its ports, in the order to try them, with what the table knows of each.
    pub order: Vec<(u16, PortUse)>,
    /// Whether the daemon holds its free ports.
    pub held: bool,
}

/// How many blocks past the stripe a move looks at for one at least half usable.
const STRIPE_LOOKAHEAD: usize = 16;

/// How long a look-ahead that found no block to move the stripe to is not made again.
const STRIPE_RETRY_MS: u64 = 100;

/// The allocation state: every live reservation of both protocols.
///
/// Invariant: two reservations of one protocol never share a port.
#[derive(Debug)]
pub struct Table {
    /// Where wildcard blocks come from.
    pool: Pool,
    /// TCP's reservations, free map and cursor.
    tcp: Space,
    /// UDP's reservations, free map and cursor.
    udp: Space,
    /// Every live reservation by token and by session; the spaces index the same ones by port.
    records: Records,
    /// Runtime reservations and ports per uid, for quotas, and the shared count.
    usage: Ledger,
    /// The range whose ports capped reservations together may hold only so many of (the
    /// host's ephemeral range, which every program's `connect()` draws from).
    shared_range: Option<PortRange>,
    /// Ports of the pool the daemon keeps listed ahead of grants (see [`Table::set_stripe`]).
    stripe: Option<PortRange>,
    /// Ports freed recently, passed by while others fit (see [`Table::set_reuse_cool_down`]).
    cooling: cooling::Cooling,
    /// Live names, and blocks remembered for names (see [`Table::keep_for_name`]).
    names: names::Names,
    /// Before this time (ms) the stripe is not looked ahead for again (see
    /// [`Table::advance_stripe`]).
    stripe_retry_at_ms: u64,
    /// How many of the stripe's ports were usable when it was placed: it moves on once fewer
    /// than half of those are.
    stripe_fill: u32,
    /// How many live reservations are persistent.
    persistent: u32,
}

impl Table {
    /// An empty table whose wildcard requests draw from `pool`.
    pub fn new(pool: Pool) -> Self {
        Table {
            pool,
            tcp: Space::new(pool.range()),
            udp: Space::new(pool.range()),
            records: Records::default(),
            usage: Ledger::default(),
            shared_range: None,
            stripe: None,
            cooling: cooling::Cooling::default(),
            names: names::Names::default(),
            stripe_retry_at_ms: 0,
            stripe_fill: 0,
            persistent: 0,
        }
    }

    /// Prefers `stripe` for wildcard blocks that are not held: the daemon keeps those ports in
    /// the kernel's reserved-ports list ahead of any grant, so a grant there is protected from
    /// automatic port assignment at once, with no write to wait for. (Held blocks are
    /// protected by their hold sockets, and leave the stripe to others.) Its ports are handed
    /// out in turn; when none fits, the search goes on in the whole pool. `None`: no stripe.
    pub fn set_stripe(&mut self, stripe: Option<PortRange>) {
        self.stripe = stripe;
        self.stripe_retry_at_ms = 0;
        self.stripe_fill = stripe.map_or(0, |s| u32::from(s.count()));
    }

    /// Passes by, in wildcard searches, ports freed less than `window_ms` ago while other
    /// ports fit the request (the reuse cool-down; 0: none): a just-released port does not
    /// reach the next asker while the last owner's connections linger. Releases are noted by
    /// [`Table::note_freed`]; a search's "now" is its request's `acquired_at_ms`.
    pub fn set_reuse_cool_down(&mut self, window_ms: u64) {
        self.cooling.set_window(window_ms);
    }

    /// The reuse cool-down, in milliseconds (see [`Table::set_reuse_cool_down`]).
    pub fn reuse_cool_down_ms(&self) -> u64 {
        self.cooling.window_ms()
    }

    /// Notes the ports that `changes` (just made) freed at `now_ms`, for the cool-down: every
    /// reservation that ended, runtime or persistent.
    pub fn note_freed(&mut self, changes: &[Change], now_ms: u64) {
        for change in changes {
            let (protocol, range) = match change {
                Change::Released { reservation: r, .. } | Change::PersistentDeleted(r) => {
                    (r.protocol, r.range)
                }
                Change::NotRestored {
                    protocol, range, ..
                } => (*protocol, *range),
                _ => continue,
            };
            // Only wildcard searches pass cooling ports by: the pool's part is enough.
            if let Some(part) = intersection(range, self.pool.range()) {
                self.cooling.note(protocol, part, now_ms);
            }
        }
    }

    /// `None` when no port of `protocol` is cooling; else whether a first, cool-down-respecting
    /// pass of a wildcard search can find anything: some free port of the pool is not cooling.
    /// O(1) unless nearly every free port is cooling (then a walk over the pool's reservations
    /// decides). Expires cooled ports first. (The count of cooling ports may include some that
    /// cooled within the last 1,024th of the window: see `cooling`.)
    fn cooling_state(&mut self, protocol: Protocol, now_ms: u64) -> Option<bool> {
        self.cooling.expire(now_ms);
        let cooling = u32::try_from(self.cooling.len(protocol)).unwrap_or(u32::MAX);
        if cooling == 0 {
            return None;
        }
        // A lower bound first (reservations outside the pool make it low), the count after.
        let pool = u32::from(self.pool.range().count());
        Some(
            pool.saturating_sub(self.space(protocol).reserved) > cooling
                || self.free_in_pool(protocol) > cooling,
        )
    }

    /// Moves the stripe on once fewer than half of the ports usable (free and not cooling down,
    /// in either protocol) when it was placed are: to the first block of the same size at
    /// least half usable among the next few past it (from the pool's start again past its
    /// end), so that grants keep finding listed ports while many reservations live or cool;
    /// failing those, among the next few at a wildcard search's cursor. Next-fit hands ports
    /// out in pool order, so the ports at a cursor are those used least recently: after a burst
    /// of grants elsewhere (held blocks, which pass the stripe by) has left every block near
    /// the stripe cooling, the cursor is where usable ports are. Failing those too, to the
    /// best block seen if it has more usable ports than the stripe and at least a thirty-second
    /// of it is (4 of 128): each grant outside the stripe costs a write of the list, each move
    /// one. When nothing is better it looks again once half of what is left is taken (when
    /// nothing is left, after a moment). A stripe placed at a cursor sends that cursor
    /// past it, leaving it to the grants it is listed for. Returns the new stripe when it
    /// moved. Walks over the reservations of the blocks it looks at, and looks at each of
    /// their ports for the cool-down: call it per change, not per port.
    pub fn advance_stripe(&mut self, now_ms: u64) -> Option<PortRange> {
        let stripe = self.stripe?;
        // A look-ahead that found nothing is not made again for a moment: under heavy churn
        // it would walk many blocks on every change.
        if now_ms < self.stripe_retry_at_ms {
            return None;
        }
        let count = stripe.count().min(self.pool.range().count());
        let current = self.usable_in(stripe, now_ms);
        // Ports that came back (their cool-down over, reservations released) count as placed.
        self.stripe_fill = self.stripe_fill.max(current);
        if current > 0 && current * 2 >= self.stripe_fill {
            return None;
        }
        let past_stripe = self.block_after(stripe, count);
        let (tcp, udp) = (self.tcp.marks().0, self.udp.marks().0);
        // One walk when both cursors are at the same place.
        let cursors = if tcp == udp {
            vec![tcp]
        } else {
            vec![tcp, udp]
        };
        let at_cursors = cursors
            .into_iter()
            .filter_map(|cursor| self.block_at(cursor, count));
        // The best block seen: (usable ports, block, placed at a cursor).
        let mut best: Option<(u32, PortRange, bool)> = None;
        for (first, from_cursor) in past_stripe
            .map(|b| (b, false))
            .into_iter()
            .chain(at_cursors.map(|b| (b, true)))
        {
            let mut at = first;
            for _ in 0..STRIPE_LOOKAHEAD {
                // The stripe itself is no candidate (a cursor may sit at its start).
                if at != stripe {
                    let usable = self.usable_in(at, now_ms);
                    if usable * 2 >= u32::from(count) {
                        return Some(self.move_stripe(at, usable, from_cursor));
                    }
                    if best.is_none_or(|(most, _, _)| usable > most) {
                        best = Some((usable, at, from_cursor));
                    }
                }
                let Some(next) = self.block_after(at, count) else {
                    break;
                };
                at = next;
            }
        }
        if let Some((usable, at, from_cursor)) = best {
            if usable > current && usable * 32 >= u32::from(count) {
                return Some(self.move_stripe(at, usable, from_cursor));
            }
        }
        // Nothing better: looked for again once half of what is left is taken, or — when
        // nothing is left — after a moment.
        self.stripe_fill = current;
        if current == 0 {
            self.stripe_retry_at_ms = now_ms.saturating_add(STRIPE_RETRY_MS);
        }
        None
    }

    /// The block of `count` ports starting at `start`, or at the pool's start when it would
    /// not fit before the pool's end.
    fn block_at(&self, start: u16, count: u16) -> Option<PortRange> {
        let pool = self.pool.range();
        let fits = start >= pool.start()
            && u32::from(start) + u32::from(count) <= u32::from(pool.end()) + 1;
        PortRange::new(if fits { start } else { pool.start() }, count).ok()
    }

    /// The block of `count` ports just past `block` (see [`Table::block_at`]).
    fn block_after(&self, block: PortRange, count: u16) -> Option<PortRange> {
        // Past port 65,535: port 0, never in a pool, so the pool's start.
        self.block_at(block.end().checked_add(1).unwrap_or(0), count)
    }

    /// Makes `at`, with `usable` ports usable, the stripe; `past_it` (found by a walk from the
    /// wildcard searches' cursors): a cursor inside it, or within the walk's reach before it,
    /// moves past it, so that held grants go on beside it rather than into it.
    fn move_stripe(&mut self, at: PortRange, usable: u32, past_it: bool) -> PortRange {
        self.stripe = Some(at);
        self.stripe_fill = usable;
        let after = self
            .block_at(at.end().checked_add(1).unwrap_or(0), 1)
            .map_or(self.pool.range().start(), |b| b.start());
        let reach = u32::from(at.count()) * STRIPE_LOOKAHEAD as u32;
        for space in [&mut self.tcp, &mut self.udp] {
            space.restart_stripe_at(at.start());
            let cursor = space.marks().0;
            let before = u32::from(at.start()).saturating_sub(u32::from(cursor));
            if past_it && cursor <= at.end() && (at.contains(cursor) || before <= reach) {
                space.restart_at(after);
            }
        }
        at
    }

    /// The ports of `range` neither reserved nor cooling down, in the protocol that has
    /// fewer (a cooling port is passed by while others fit, so it is as good as taken for
    /// the stripe's purpose). A walk over `range`'s reservations and a look at each of its
    /// ports for the cool-down.
    fn usable_in(&self, range: PortRange, now_ms: u64) -> u32 {
        let count = u32::from(range.count());
        let usable = |space: &Space, protocol| {
            count
                .saturating_sub(space.reserved_in(range))
                .saturating_sub(self.cooling.count_in(protocol, range, now_ms))
        };
        usable(&self.tcp, Protocol::Tcp).min(usable(&self.udp, Protocol::Udp))
    }

    /// The stripe listed ahead, if any (see [`Table::set_stripe`]).
    pub fn stripe(&self) -> Option<PortRange> {
        self.stripe
    }

    /// The wildcard pool.
    pub fn pool(&self) -> Pool {
        self.pool
    }

    /// Serves wildcard requests from `pool` from now on (the kernel's ephemeral range
    /// changed, say). Live reservations stay where they are, inside the new pool or not; each
    /// protocol's next search starts at the new pool's start.
    pub fn set_pool(&mut self, pool: Pool) {
        if pool != self.pool {
            self.pool = pool;
            // What cools is counted inside the pool: start again.
            self.cooling.clear();
            self.tcp.restart_at(pool.range().start());
            self.udp.restart_at(pool.range().start());
        }
    }

    fn space(&self, protocol: Protocol) -> &Space {
        match protocol {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        }
    }

    fn space_mut(&mut self, protocol: Protocol) -> &mut Space {
        match protocol {
            Protocol::Tcp => &mut self.tcp,
            Protocol::Udp => &mut self.udp,
        }
    }

    /// Acquires a runtime reservation bound to `holder`'s session.
    ///
    /// `in_use(protocol, range)` is asked about each candidate block before it is granted and
    /// returns the first port of it that is in use on the host, if any; the core does no I/O of
    /// its own. `limits` carries the asker's policy: the lowest port it may get and its quota.
    ///
    /// A specific request fails with [`AcquireError::Privileged`] below the lowest port, with
    /// [`AcquireError::Conflict`] when it overlaps a live reservation and with
    /// [`AcquireError::InUse`] when a port is in use. A wildcard request searches next-fit from
    /// the protocol's cursor, skips blocks below the lowest port or with ports in use, and fails
    /// with [`AcquireError::PoolExhausted`] only when no block of `count` ports in the pool is
    /// usable. On success the cursor moves past the block. Either fails with
    /// [`AcquireError::QuotaExceeded`] first when the quota leaves no room.
    pub fn acquire(
        &mut self,
        protocol: Protocol,
        request: RangeRequest,
        holder: Holder,
        limits: Constraints,
        tokens: &mut dyn TokenSource,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Result<Change, AcquireError> {
        let uid = holder.owner.uid;
        let capped = limits.shared_max.is_some();
        // Before anything else, what the request may add at most (a wildcard block's exact
        // weight is known only once it is placed).
        let (upper, shared) = match request {
            RangeRequest::Specific(range) => {
                let weight = self.weight_of(protocol, range, &holder.owner, holder.hold, capped);
                (weight.usage, Some(weight.shared))
            }
            RangeRequest::Wildcard { count } | RangeRequest::Within { count, .. } => (
                Usage {
                    reservations: 1,
                    ports: u32::from(count),
                    held_ports: if holder.hold { u32::from(count) } else { 0 },
                },
                None,
            ),
        };
        self.check_quota(uid, limits, upper, request.count())?;
        if let Some(shared) = shared {
            self.check_shared(uid, limits, shared, request.count())?;
        }
        self.check_name(NameScope::User(uid), protocol, holder.name.as_ref())?;
        if let Some(denied) = below_lowest(protocol, request, limits, uid) {
            return Err(AcquireError::Privileged(denied));
        }
        let range = match request {
            RangeRequest::Specific(range) => {
                self.check_free(protocol, range, in_use)?;
                range
            }
            RangeRequest::Wildcard { count } | RangeRequest::Within { count, .. } => {
                let marks = self.space(protocol).marks();
                let range = self.search(
                    protocol,
                    (count, request.bounds()),
                    limits,
                    (!holder.hold, holder.acquired_at_ms),
                    in_use,
                )?;
                let weight = self.weight_of(protocol, range, &holder.owner, holder.hold, capped);
                if let Err(e) = self.check_shared(uid, limits, weight.shared, count) {
                    // Refused: the search leaves no trace.
                    self.space_mut(protocol).rewind(marks);
                    return Err(e);
                }
                range
            }
        };
        let reservation = Reservation {
            token: self.draw_token(tokens),
            protocol,
            range,
            acquired_at_ms: holder.acquired_at_ms,
            lease: Lease::Runtime {
                owner: holder.owner,
                bond: Bond::Session(holder.session),
                held: holder.hold,
            },
            label: holder.label,
            name: holder.name,
        };
        self.insert(reservation.clone(), capped);
        Ok(Change::Granted(reservation))
    }

    /// Registers `range`, which `owner` has bound already by other means, as a runtime
    /// reservation named `name` that lives as long as `owner` ([`Bond::Process`]) and is not
    /// held (its owner's socket is on it). Refused as a specific acquire would be — a
    /// reservation over the ports, the name taken, the quota, the ports below
    /// `limits.lowest_port` — except that the ports are not probed: the owner's socket is
    /// what makes them in use. (The daemon asks no privilege to name a port its owner bound
    /// itself: it passes a lowest port of 0.)
    pub fn publish(
        &mut self,
        protocol: Protocol,
        range: PortRange,
        (owner, name): (Owner, Name),
        (limits, acquired_at_ms): (Constraints, u64),
        tokens: &mut dyn TokenSource,
    ) -> Result<Change, AcquireError> {
        let holder = Holder {
            owner,
            // No session: sessions are numbered from 1.
            session: SessionId(0),
            acquired_at_ms,
            hold: false,
            label: None,
            name: Some(name),
        };
        let granted = self.acquire(
            protocol,
            RangeRequest::Specific(range),
            holder,
            limits,
            tokens,
            &mut |_, _| None,
        )?;
        let Change::Granted(mut r) = granted else {
            return Ok(granted);
        };
        // Bound to the process, not to a session, before anyone sees it.
        if let Lease::Runtime { bond, .. } = &mut r.lease {
            *bond = Bond::Process;
        }
        self.records.replace(r.clone());
        Ok(Change::Granted(r))
    }

    /// Fails when adding `weight` to `uid`'s usage would exceed its quota.
    fn check_quota(
        &self,
        uid: u32,
        limits: Constraints,
        weight: Usage,
        asked: u16,
    ) -> Result<(), AcquireError> {
        let Some(quota) = limits.quota else {
            return Ok(());
        };
        match self.usage.exceeds(uid, quota, weight) {
            Some((what, limit, used)) => Err(AcquireError::QuotaExceeded {
                uid,
                what,
                limit,
                used,
                asked,
            }),
            None => Ok(()),
        }
    }

    /// Fails when `shared` more ports of the shared range would put the capped reservations
    /// together past `limits.shared_max`.
    fn check_shared(
        &self,
        uid: u32,
        limits: Constraints,
        shared: u32,
        asked: u16,
    ) -> Result<(), AcquireError> {
        let Some(max) = limits.shared_max else {
            return Ok(());
        };
        let used = self.usage.shared();
        if shared > 0 && used.saturating_add(shared) > max {
            return Err(AcquireError::QuotaExceeded {
                uid,
                what: QuotaKind::Shared,
                limit: max,
                used,
                asked,
            });
        }
        Ok(())
    }

    /// What a runtime reservation of `range` in `protocol` for `owner` would add to its user's
    /// usage and to the shared count, given the other protocol's live reservations (see
    /// `usage` for the counting rules).
    fn weight_of(
        &self,
        protocol: Protocol,
        range: PortRange,
        owner: &Owner,
        held: bool,
        capped: bool,
    ) -> Weight {
        let shared_part = self
            .shared_range
            .filter(|_| capped)
            .and_then(|shared| intersection(range, shared));
        let (mut same_user, mut twin, mut shared_taken) = (0, false, 0);
        for slot in self.space(protocol.other()).overlapping(range) {
            let Some(other) = self.records.get(slot.token) else {
                continue;
            };
            if let Some(theirs) = other.owner().filter(|o| o.uid == owner.uid) {
                same_user += shared_ports(range, other.range);
                twin |= other.range == range && theirs.same_process(owner);
            }
            if let Some(part) = shared_part {
                if self.records.is_capped(other.token) {
                    shared_taken += shared_ports(part, other.range);
                }
            }
        }
        let count = u32::from(range.count());
        Weight {
            usage: Usage {
                reservations: u32::from(!twin),
                ports: count.saturating_sub(same_user),
                held_ports: if held { count } else { 0 },
            },
            shared: shared_part.map_or(0, |part| {
                u32::from(part.count()).saturating_sub(shared_taken)
            }),
        }
    }

    /// What the live reservation `r` adds to its user's usage and the shared count.
    fn weight(&self, r: &Reservation, capped: bool) -> Option<(u32, Weight)> {
        let owner = r.owner()?;
        Some((
            owner.uid,
            self.weight_of(r.protocol, r.range, owner, r.held(), capped),
        ))
    }

    /// A wildcard search of the pool — or of `bounds`, a bounded wildcard's — refusing ports
    /// below `limits.lowest_port` as if in use; in the stripe first when `striped`.
    /// `(striped, now_ms)`: ports freed less than the cool-down before `now_ms` are passed by
    /// in a first pass over the stripe and the pool, and taken only by a second pass when
    /// nothing else fits.
    fn search(
        &mut self,
        protocol: Protocol,
        (count, bounds): (u16, Option<PortRange>),
        limits: Constraints,
        (striped, now_ms): (bool, u64),
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Result<PortRange, AcquireError> {
        let pool = self.pool;
        let lowest = limits.lowest_port;
        let area = bounds.unwrap_or(pool.range());
        let skipped_privileged = area.start() < lowest;
        let usable = self.usable(lowest, bounds);
        let stripe = self.usable_stripe(usable, striped);
        // A first pass passes by cooling ports and blocks remembered for names, worth making
        // when some free port of the pool is neither.
        let cooling_matters = self.cooling_state(protocol, now_ms) == Some(true);
        // O(1): a first pass over a full pool costs one more failed search, which is rare;
        // counting the free ports would walk every reservation of the pool on every search.
        let kept_matters = self.names.keeps_any(protocol);
        let passes = passes(cooling_matters, kept_matters);
        let Table {
            tcp,
            udp,
            cooling,
            names,
            ..
        } = self;
        let space = match protocol {
            Protocol::Tcp => tcp,
            Protocol::Udp => udp,
        };
        let mut marked = 0;
        for &(cool, keep) in passes {
            let mut test = |proto, range| {
                cool.then(|| cooling.first_in(proto, range, now_ms))
                    .flatten()
                    .or_else(|| keep.then(|| names.first_kept_in(proto, range)).flatten())
                    .or_else(|| {
                        let port = in_use(proto, range)?;
                        mark_in_use(cooling, (pool, &mut marked), proto, port, now_ms);
                        Some(port)
                    })
            };
            if let Some(stripe) = stripe {
                if let Some(range) = space.next_fit_in_stripe(protocol, count, stripe, &mut test) {
                    return Ok(range);
                }
            }
            if let Some(within) = usable {
                let found = match bounds {
                    None => space.next_fit(protocol, count, within, &mut test),
                    Some(_) => {
                        space.next_fit_bounded(protocol, count, within, pool.range(), &mut test)
                    }
                };
                if let Some(range) = found {
                    // A block at the end of the pool sends the next search to the start of
                    // the whole pool, not of the part this asker could have (a bounded
                    // search placed the cursor itself).
                    if range.end() >= pool.range().end() && bounds.is_none() {
                        space.restart_at(pool.range().start());
                    }
                    return Ok(range);
                }
            }
        }
        let free = match bounds {
            None => self.free_in_pool(protocol),
            Some(bounds) => u32::from(bounds.count()) - self.space(protocol).reserved_in(bounds),
        };
        Err(AcquireError::PoolExhausted {
            protocol,
            count,
            pool,
            free_ports: free,
            skipped_privileged,
            bounds,
        })
    }

    /// The part of the pool — or of `bounds`, when a request gave them — that an asker whose
    /// lowest port is `lowest` may have: ports below it are never candidates.
    fn usable(&self, lowest: u16, bounds: Option<PortRange>) -> Option<PortRange> {
        let area = bounds.unwrap_or(self.pool.range());
        PortRange::from_bounds(area.start().max(lowest), area.end())
            .ok()
            .filter(|_| lowest <= area.end())
    }

    /// The part of the stripe inside `usable`, when a search should look there first.
    fn usable_stripe(&self, usable: Option<PortRange>, striped: bool) -> Option<PortRange> {
        intersection(self.stripe.filter(|_| striped)?, usable?)
    }

    /// Adds `r` to every index; `capped`: it counts against the shared range's cap.
    fn insert(&mut self, r: Reservation, capped: bool) {
        if let Some((uid, weight)) = self.weight(&r, capped) {
            self.usage.count(uid, weight, true);
        }
        self.space_mut(r.protocol).insert(r.range, r.token);
        self.cooling.forget(r.protocol, r.range);
        if r.kind() == Kind::Persistent {
            self.persistent += 1;
        }
        if let Some(name) = &r.name {
            self.names
                .insert(r.name_scope(), r.protocol, name.clone(), r.token);
        }
        self.records.insert(r, capped);
    }

    /// Removes `token`'s reservation from every index and frees its ports.
    fn remove(&mut self, token: Token) -> Option<Reservation> {
        let capped = self.records.is_capped(token);
        let r = self.records.remove(token)?;
        self.space_mut(r.protocol).remove(r.range.start());
        if let Some((uid, weight)) = self.weight(&r, capped) {
            self.usage.count(uid, weight, false);
        }
        if r.kind() == Kind::Persistent {
            self.persistent -= 1;
        }
        if let Some(name) = &r.name {
            self.names.remove(r.name_scope(), r.protocol, name, r.token);
        }
        Some(r)
    }

    /// Fails when `name` is held in `scope` and `protocol` already.
    fn check_name(
        &self,
        scope: NameScope,
        protocol: Protocol,
        name: Option<&Name>,
    ) -> Result<(), AcquireError> {
        let Some(name) = name else {
            return Ok(());
        };
        match self
            .names
            .holder(scope, protocol, name)
            .and_then(|token| self.records.get(token))
        {
            Some(holder) => Err(AcquireError::NameTaken {
                protocol,
                name: name.clone(),
                holder: Box::new(holder.clone()),
            }),
            None => Ok(()),
        }
    }

    /// The live reservation holding `name` in `scope` and `protocol`, if any.
    pub fn find_name(
        &self,
        scope: NameScope,
        protocol: Protocol,
        name: &Name,
    ) -> Option<&Reservation> {
        self.records.get(self.names.holder(scope, protocol, name)?)
    }

    /// Remembers `range` for a name: wildcard searches pass its ports by while other ports
    /// fit, so that the name finds its block free next time. Counted: call
    /// [`Table::unkeep_for_name`] once per call to forget it.
    pub fn keep_for_name(&mut self, protocol: Protocol, range: PortRange) {
        self.names.keep(protocol, range);
    }

    /// Forgets one [`Table::keep_for_name`] of `range`.
    pub fn unkeep_for_name(&mut self, protocol: Protocol, range: PortRange) {
        self.names.unkeep(protocol, range);
    }

    /// A fresh token: non-zero and naming no live reservation. Draws until it gets one.
    pub fn new_token(&self, tokens: &mut dyn TokenSource) -> Token {
        self.draw_token(tokens)
    }

    fn draw_token(&self, tokens: &mut dyn TokenSource) -> Token {
        loop {
            if let Some(token) = Token::new(tokens.draw()) {
                if !self.records.contains(token) {
                    return token;
                }
            }
        }
    }

    /// Releases `token` on behalf of `requester`: allowed for the owning process (same pid and
    /// start time) and for administrators.
    pub fn release(&mut self, token: Token, requester: &Requester) -> Result<Change, ReleaseError> {
        let reservation = self.get(token).ok_or(ReleaseError::NotFound(token))?;
        if reservation.kind() == Kind::Persistent {
            return Err(ReleaseError::Persistent(Box::new(reservation.clone())));
        }
        if !(reservation.is_owned_by(&requester.process) || requester.is_admin) {
            return Err(ReleaseError::PermissionDenied(Box::new(
                reservation.clone(),
            )));
        }
        let reservation = self.remove(token).ok_or(ReleaseError::NotFound(token))?;
        Ok(Change::Released {
            reservation,
            why: Ending::Released,
        })
    }

    /// Whether any reservation is bound to `session` (its connection's close would release
    /// something).
    pub fn session_holds(&self, session: SessionId) -> bool {
        self.records.has_session(session)
    }

    /// Releases every runtime reservation bound to `session` (its connection closed), ordered
    /// by protocol then start port.
    pub fn release_session(&mut self, session: SessionId) -> Vec<Change> {
        // One at a time, so that each one's weight is taken out against what is still live.
        let mut released: Vec<Reservation> = self
            .records
            .session_tokens(session)
            .into_iter()
            .filter_map(|token| self.remove(token))
            .collect();
        released.sort_by_key(|r| (r.protocol, r.range.start()));
        released
            .into_iter()
            .map(|reservation| Change::Released {
                reservation,
                why: Ending::SessionEnded,
            })
            .collect()
    }

    /// Releases the reservations that live as long as the process `owner` and are not bound to
    /// a session: those handed to it, and those restored for it after a restart (it exited).
    pub fn release_owner_exited(&mut self, owner: &Owner) -> Vec<Change> {
        self.release_where(Ending::OwnerExited, |r| {
            r.is_owned_by(owner) && matches!(r.bond(), Some(Bond::Process | Bond::Unclaimed))
        })
    }

    /// Releases every restored reservation nobody re-claimed (the grace period is over).
    pub fn release_unclaimed(&mut self) -> Vec<Change> {
        self.release_where(Ending::NotReclaimed, |r| r.bond() == Some(Bond::Unclaimed))
    }

    fn release_where(&mut self, why: Ending, pick: impl Fn(&Reservation) -> bool) -> Vec<Change> {
        let tokens: Vec<Token> = self.iter().filter(|r| pick(r)).map(|r| r.token).collect();
        tokens
            .into_iter()
            .filter_map(|t| self.remove(t))
            .map(|reservation| Change::Released { reservation, why })
            .collect()
    }

    /// Checks that `asker` may bind sockets from `token`'s reservation. A runtime reservation
    /// is usable only by the process that owns it (knowing the token grants nothing); a
    /// persistent one by administrators and the users/groups it was created for. Returns the
    /// ports to try, in order.
    pub fn authorize_use(&self, token: Token, asker: UseRequest<'_>) -> Result<BindPlan, UseError> {
        let reservation = self.get(token).ok_or(UseError::NotFound(token))?;
        let allowed = match &reservation.lease {
            Lease::Runtime { owner, .. } => owner.same_process(asker.process),
            Lease::Persistent { allowed, .. } => {
                asker.is_admin || allowed.admits(asker.process.uid, asker.gids)
            }
        };
        if !allowed {
            return Err(UseError::NotOwner {
                reservation: Box::new(reservation.clone()),
                requester_pid: asker.process.pid,
            });
        }
        if reservation.bond() == Some(Bond::Unclaimed) {
            return Err(UseError::Unclaimed(token));
        }
        let range = reservation.range;
        let order = self
            .records
            .ports(token)
            .map(|p| p.order(range.count()))
            .unwrap_or_default()
            .into_iter()
            .map(|(offset, state)| (range.start() + offset, state))
            .collect();
        Ok(BindPlan {
            range,
            protocol: reservation.protocol,
            kind: reservation.kind(),
            order,
            held: reservation.held(),
        })
    }

    /// Records that a socket was bound to `port` from `token`'s reservation: the port is
    /// [`PortUse::Bound`] and the next associate starts after it.
    pub fn note_bound(&mut self, token: Token, port: u16) {
        if let Some(range) = self.get(token).map(|r| r.range) {
            self.records
                .mark_bound(token, port.wrapping_sub(range.start()), range.count());
        }
    }

    /// Records that the socket bound to `port` from `token`'s reservation is gone.
    pub fn note_unbound(&mut self, token: Token, port: u16) {
        if let Some(range) = self.get(token).map(|r| r.range) {
            self.records
                .mark_unbound(token, port.wrapping_sub(range.start()));
        }
    }

    /// What the table knows of `port` of `token`'s reservation.
    pub fn port_use(&self, token: Token, port: u16) -> Option<PortUse> {
        let range = self.get(token)?.range;
        if !range.contains(port) {
            return None;
        }
        Some(self.records.ports(token)?.get(port - range.start()))
    }

    /// The ports of `token`'s reservation bound through associate, lowest first.
    pub fn bound_list(&self, token: Token) -> Vec<u16> {
        let Some(range) = self.get(token).map(|r| r.range) else {
            return Vec::new();
        };
        if self.bound_ports(token) == 0 {
            return Vec::new();
        }
        range
            .ports()
            .filter(|&p| self.port_use(token, p) == Some(PortUse::Bound))
            .collect()
    }

    /// How many ports of `token`'s reservation were bound through associate.
    pub fn bound_ports(&self, token: Token) -> usize {
        self.records.ports(token).map_or(0, |p| p.bound_count())
    }

    /// Adds a new persistent reservation named `token` (drawn with [`Table::new_token`]).
    /// Fails like a specific acquire when the range overlaps a live reservation or `in_use`
    /// reports a port of it in use.
    #[expect(
        clippy::too_many_arguments,
        reason = "the fields of a new persistent reservation"
    )]
    pub fn create_persistent(
        &mut self,
        token: Token,
        protocol: Protocol,
        range: PortRange,
        (allowed, label, name): (Allowed, Option<Label>, Option<Name>),
        created_by: u32,
        created_at_ms: u64,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Result<Change, AcquireError> {
        self.check_token_free(token, protocol, range)?;
        self.check_name(NameScope::Host, protocol, name.as_ref())?;
        self.check_free(protocol, range, in_use)?;
        let reservation = Reservation {
            token,
            protocol,
            range,
            acquired_at_ms: created_at_ms,
            lease: Lease::Persistent {
                allowed,
                created_by,
            },
            label,
            name,
        };
        self.insert(reservation.clone(), false);
        Ok(Change::PersistentCreated(reservation))
    }

    /// Deletes the persistent reservation of exactly `protocol` and `range`, if there is one.
    pub fn delete_persistent(&mut self, protocol: Protocol, range: PortRange) -> Option<Change> {
        let token = self.find_persistent(protocol, range)?.token;
        self.remove(token).map(Change::PersistentDeleted)
    }

    /// At start-up: takes back a reservation the store kept — a persistent one, or a runtime
    /// one from the journal of an earlier daemon (bound to [`Bond::Unclaimed`] until its owner
    /// re-claims it, or [`Bond::Process`] if it was handed to a process). A runtime one that
    /// overlaps what was restored before it is refused ([`Change::NotRestored`]), so the
    /// journal forgets it; a persistent one that overlaps is an error (only a database edited
    /// by hand holds such rows). `capped`: a runtime one counts against the shared range's
    /// cap (its owner is capped today; see [`Constraints::shared_max`]).
    pub fn restore(
        &mut self,
        mut reservation: Reservation,
        capped: bool,
    ) -> Result<Change, AcquireError> {
        let (token, protocol, range) = (reservation.token, reservation.protocol, reservation.range);
        // Only files edited by hand hold a name twice: the first keeps it.
        if let Some(name) = &reservation.name {
            if self
                .names
                .holder(reservation.name_scope(), protocol, name)
                .is_some()
            {
                reservation.name = None;
            }
        }
        let checked = self
            .check_token_free(token, protocol, range)
            .and_then(|()| self.check_free(protocol, range, &mut |_, _| None));
        match (checked, reservation.kind()) {
            (Ok(()), kind) => {
                self.insert(reservation.clone(), capped && kind == Kind::Runtime);
                Ok(Change::Restored(reservation))
            }
            (Err(_), Kind::Runtime) => Ok(Change::NotRestored {
                token,
                protocol,
                range,
            }),
            (Err(e), Kind::Persistent) => Err(e),
        }
    }

    /// At start-up: a journaled runtime reservation whose owner is gone is not taken back.
    pub fn forget(token: Token, protocol: Protocol, range: PortRange) -> Change {
        Change::NotRestored {
            token,
            protocol,
            range,
        }
    }

    /// Fails when `token` already names a live reservation (only a database edited by hand
    /// can ask for that): two records under one token would corrupt the indexes.
    fn check_token_free(
        &self,
        token: Token,
        protocol: Protocol,
        range: PortRange,
    ) -> Result<(), AcquireError> {
        match self.get(token) {
            Some(existing) => Err(AcquireError::Conflict {
                protocol,
                requested: range,
                holder: Box::new(existing.clone()),
            }),
            None => Ok(()),
        }
    }

    /// Fails when `range` overlaps a live reservation or has a port in use.
    fn check_free(
        &self,
        protocol: Protocol,
        range: PortRange,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Result<(), AcquireError> {
        if let Some(holder) = self
            .space(protocol)
            .first_overlap(range)
            .and_then(|slot| self.get(slot.token))
        {
            return Err(AcquireError::Conflict {
                protocol,
                requested: range,
                holder: Box::new(holder.clone()),
            });
        }
        if let Some(port) = in_use(protocol, range) {
            return Err(AcquireError::InUse {
                protocol,
                requested: range,
                port,
            });
        }
        Ok(())
    }

    /// Gives a restored runtime reservation ([`Bond::Unclaimed`]) to `session`, if `requester`
    /// is the process that acquired it.
    pub fn reclaim(
        &mut self,
        token: Token,
        requester: &Owner,
        session: SessionId,
    ) -> Result<Change, UseError> {
        let reservation = self.get(token).ok_or(UseError::NotFound(token))?;
        if reservation.bond() != Some(Bond::Unclaimed) || !reservation.is_owned_by(requester) {
            return Err(UseError::NotOwner {
                reservation: Box::new(reservation.clone()),
                requester_pid: requester.pid,
            });
        }
        let mut after = reservation.clone();
        after.lease = Lease::Runtime {
            owner: requester.clone(),
            bond: Bond::Session(session),
            held: reservation.held(),
        };
        self.rebind(after)
    }

    /// Hands the runtime reservation `token`, owned by `requester` and bound to its session, to
    /// the process `to`: from now on `to` owns it and it lives exactly as long as `to` does
    /// ([`Bond::Process`]). Whether `to` may receive it (a child of the requester, same user)
    /// is the caller's policy.
    pub fn transfer(
        &mut self,
        token: Token,
        requester: &Owner,
        to: Owner,
    ) -> Result<Change, UseError> {
        let held = self.movable(token, requester)?.held();
        self.rebind_runtime(token, to, Bond::Process, held)
    }

    /// Binds the runtime reservation `token`, owned by `requester` and bound to its session, to
    /// the cgroup `cgroup` ([`Bond::Cgroup`]): it lives until that cgroup has no process left,
    /// unheld (the kernel keeps its ports for the cgroup; a hold would refuse the owner's own
    /// bind). The owner stays `requester`, whose user it counts against. Whether the cgroup
    /// may own it is the caller's policy.
    pub fn give_to_cgroup(
        &mut self,
        token: Token,
        requester: &Owner,
        cgroup: u64,
    ) -> Result<Change, UseError> {
        let reservation = self.movable(token, requester)?;
        if cgroup == 0 {
            return Err(UseError::NotOwner {
                reservation: Box::new(reservation.clone()),
                requester_pid: requester.pid,
            });
        }
        self.rebind_runtime(token, requester.clone(), Bond::Cgroup(cgroup), false)
    }

    /// Releases the reservations bound to the cgroup `cgroup` (it has no process left).
    pub fn release_cgroup(&mut self, cgroup: u64) -> Vec<Change> {
        self.release_where(Ending::CgroupEmptied, |r| {
            r.bond() == Some(Bond::Cgroup(cgroup))
        })
    }

    /// The runtime reservation `token`, if `requester` owns it (what it may hand on).
    fn movable(&self, token: Token, requester: &Owner) -> Result<&Reservation, UseError> {
        let reservation = self.get(token).ok_or(UseError::NotFound(token))?;
        if reservation.kind() == Kind::Runtime && reservation.is_owned_by(requester) {
            Ok(reservation)
        } else {
            Err(UseError::NotOwner {
                reservation: Box::new(reservation.clone()),
                requester_pid: requester.pid,
            })
        }
    }

    /// Gives the runtime reservation `token` a new owner, bond and hold.
    fn rebind_runtime(
        &mut self,
        token: Token,
        owner: Owner,
        bond: Bond,
        held: bool,
    ) -> Result<Change, UseError> {
        let mut after = self.get(token).ok_or(UseError::NotFound(token))?.clone();
        after.lease = Lease::Runtime { owner, bond, held };
        self.rebind(after)
    }

    /// Replaces a reservation by `after` (same token, protocol and ports), keeping the usage
    /// counts and the name index right when its owner's user changes. (The daemon hands a
    /// reservation on only within a user; should that change, a name the new user already holds
    /// stays with its holder and `after` goes without it, as [`Table::restore`] does.)
    fn rebind(&mut self, mut after: Reservation) -> Result<Change, UseError> {
        let token = after.token;
        let before = self.get(token).ok_or(UseError::NotFound(token))?.clone();
        if before.name_scope() != after.name_scope() {
            if let Some(name) = &before.name {
                self.names
                    .remove(before.name_scope(), before.protocol, name, token);
            }
            if let Some(name) = after.name.clone() {
                if self
                    .names
                    .holder(after.name_scope(), after.protocol, &name)
                    .is_some()
                {
                    after.name = None;
                } else {
                    self.names
                        .insert(after.name_scope(), after.protocol, name, token);
                }
            }
        }
        let capped = self.records.is_capped(token);
        if let Some((uid, weight)) = self.weight(&before, capped) {
            self.usage.count(uid, weight, false);
        }
        if let Some((uid, weight)) = self.weight(&after, capped) {
            self.usage.count(uid, weight, true);
        }
        self.records.replace(after.clone());
        Ok(Change::Rebound { before, after })
    }

    /// Undoes `change`, which a consumer refused, and returns the changes the undoing made
    /// (empty when there was nothing left to undo). Undoing a deletion fails when its ports
    /// were taken meanwhile.
    pub fn revert(&mut self, change: &Change) -> Result<Vec<Change>, AcquireError> {
        Ok(match change {
            // Only the very reservation the change made: its token may name another by now.
            Change::Granted(r) if self.get(r.token) == Some(r) => self
                .remove(r.token)
                .map(|reservation| Change::Released {
                    reservation,
                    why: Ending::Undone,
                })
                .into_iter()
                .collect(),
            Change::PersistentCreated(r) if self.get(r.token) == Some(r) => self
                .remove(r.token)
                .map(Change::PersistentDeleted)
                .into_iter()
                .collect(),
            Change::PersistentDeleted(r) => {
                self.check_token_free(r.token, r.protocol, r.range)?;
                self.check_free(r.protocol, r.range, &mut |_, _| None)?;
                self.insert(r.clone(), false);
                vec![Change::PersistentCreated(r.clone())]
            }
            Change::Rebound { before, after } => {
                if self.get(after.token) == Some(after) {
                    self.rebind(before.clone())
                        .map(|c| vec![c])
                        .unwrap_or_default()
                } else {
                    Vec::new()
                }
            }
            Change::Granted(_)
            | Change::PersistentCreated(_)
            | Change::Released { .. }
            | Change::Restored(_)
            | Change::NotRestored { .. } => Vec::new(),
        })
    }

    /// Withdraws `granted`, a grant nobody has seen yet, because a port of it was found in
    /// use on the host after it was chosen (`in_use`: a held block's hold binds happen outside
    /// the daemon's table lock), and has the next wildcard search of its protocol start right
    /// after that port, as a search that had found it in use would; the port is passed by for
    /// the cool-down from the grant's time, as that search would have too. Whether it was
    /// withdrawn.
    pub fn withdraw(&mut self, granted: &Reservation, in_use: u16) -> bool {
        if self.get(granted.token) != Some(granted) {
            return false;
        }
        let withdrawn = self.remove(granted.token).is_some();
        self.space_mut(granted.protocol)
            .restart_at(in_use.wrapping_add(1));
        if let Some(one) = in_pool(self.pool, in_use) {
            self.cooling
                .note(granted.protocol, one, granted.acquired_at_ms);
        }
        withdrawn
    }

    /// The persistent reservation of exactly `protocol` and `range`.
    pub fn find_persistent(&self, protocol: Protocol, range: PortRange) -> Option<&Reservation> {
        self.space(protocol)
            .containing(range.start())
            .and_then(|slot| self.get(slot.token))
            .filter(|r| r.kind() == Kind::Persistent && r.range == range)
    }

    /// The live reservation named `token`.
    pub fn get(&self, token: Token) -> Option<&Reservation> {
        self.records.get(token)
    }

    /// Every live reservation, ordered by protocol then start port.
    pub fn iter(&self) -> impl Iterator<Item = &Reservation> + '_ {
        Protocol::ALL
            .into_iter()
            .flat_map(move |protocol| self.space(protocol).by_start.values())
            .filter_map(|slot| self.records.get(slot.token))
    }

    /// The live reservations with at least one port marked bound ([`PortUse::Bound`]), by
    /// token: a walk that costs what is bound, however many reservations are live.
    pub fn with_bound(&self) -> impl Iterator<Item = &Reservation> + '_ {
        self.records.with_bound()
    }

    /// The reservation of `protocol` that contains `port`, if any.
    pub fn find_port(&self, protocol: Protocol, port: u16) -> Option<&Reservation> {
        let slot = self.space(protocol).containing(port)?;
        self.records.get(slot.token)
    }

    /// Number of live reservations.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of reserved ports of `protocol`.
    pub fn reserved_ports(&self, protocol: Protocol) -> u32 {
        self.space(protocol).reserved
    }

    /// Ports of the wildcard pool no reservation of `protocol` covers (O(reservations in the
    /// pool)).
    pub fn free_in_pool(&self, protocol: Protocol) -> u32 {
        let pool = self.pool.range();
        u32::from(pool.count()) - self.space(protocol).reserved_in(pool)
    }

    /// How many live reservations are persistent (O(1)); the rest are runtime ones.
    pub fn persistent_count(&self) -> u32 {
        self.persistent
    }

    /// The runtime reservations and ports user `uid` holds (O(1)).
    pub fn usage(&self, uid: u32) -> Usage {
        self.usage.get(uid)
    }

    /// Every user holding runtime reservations, and what it holds (in no particular order).
    pub fn usages(&self) -> impl Iterator<Item = (u32, Usage)> + '_ {
        self.usage.users()
    }

    /// The shared range (see [`Table::set_shared_range`]), if one is set.
    pub fn shared_range(&self) -> Option<PortRange> {
        self.shared_range
    }

    /// Port numbers of the shared range that capped reservations hold together (O(1)).
    pub fn shared_used(&self) -> u32 {
        self.usage.shared()
    }

    /// Counts capped reservations against `range` from now on (the host's ephemeral range,
    /// which moved, say): what they hold in it is counted anew (O(capped ports)). Live
    /// reservations stay; a range that shrinks below what they hold refuses capped asks until
    /// enough are released.
    pub fn set_shared_range(&mut self, range: Option<PortRange>) {
        if range == self.shared_range {
            return;
        }
        self.shared_range = range;
        let Some(range) = range else {
            self.usage.set_shared(0);
            return;
        };
        let mut numbers = vec![false; usize::from(range.count())];
        for r in self.iter().filter(|r| self.records.is_capped(r.token)) {
            if let Some(part) = intersection(r.range, range) {
                for port in part.ports() {
                    if let Some(seen) = numbers.get_mut(usize::from(port - range.start())) {
                        *seen = true;
                    }
                }
            }
        }
        let held = numbers.iter().filter(|&&seen| seen).count();
        self.usage
            .set_shared(u32::try_from(held).unwrap_or(u32::MAX));
    }
}

/// The most ports one search marks as cooling for being in use (see [`mark_in_use`]): enough
/// that a churned pool's ports in use are all marked within a few searches, few enough that a
/// search whose tests all fail for another reason — a daemon short of descriptors cannot test,
/// and says "in use" — does not mark the whole pool.
const MARKED_PER_SEARCH: u32 = 64;

/// Notes `port` of `protocol`, found in use on the host by a search, as cooling from `now_ms`
/// — passed by for the cool-down like a port just freed — unless the search has marked
/// [`MARKED_PER_SEARCH`] already (`marked` counts them) or it lies outside `pool`. A port in
/// use (a connection in TIME_WAIT, say) is likely still in use a moment later, and once every
/// free port of a churned pool is cooling, the ports not cooling would be exactly those in use,
/// which a first pass would then test one by one on every search.
fn mark_in_use(
    cooling: &mut cooling::Cooling,
    (pool, marked): (Pool, &mut u32),
    protocol: Protocol,
    port: u16,
    now_ms: u64,
) {
    if *marked >= MARKED_PER_SEARCH {
        return;
    }
    if let Some(one) = in_pool(pool, port) {
        cooling.note(protocol, one, now_ms);
        *marked += 1;
    }
}

/// `port` as a block of one, if it lies in `pool` (only the pool's ports cool down: only
/// wildcard searches pass cooling ports by).
fn in_pool(pool: Pool, port: u16) -> Option<PortRange> {
    PortRange::new(port, 1)
        .ok()
        .filter(|_| pool.range().contains(port))
}

/// The passes of a wildcard search, as (pass cooling ports by, pass remembered blocks by):
/// both first, then only the cool-down (a remembered block is better than a port whose last
/// owner's connections linger), then neither — each only when it can matter.
pub(super) fn passes(cooling: bool, kept: bool) -> &'static [(bool, bool)] {
    match (cooling, kept) {
        (true, true) => &[(true, true), (true, false), (false, false)],
        (true, false) => &[(true, false), (false, false)],
        (false, true) => &[(false, true), (false, false)],
        (false, false) => &[(false, false)],
    }
}

/// The refusal of a request that reaches below `limits.lowest_port`: a specific block that
/// starts there, or bounds that lie wholly there (bounds that only start there are searched
/// from the lowest port up, as the pool is).
pub(super) fn below_lowest(
    protocol: Protocol,
    request: RangeRequest,
    limits: Constraints,
    uid: u32,
) -> Option<PrivilegedDenied> {
    let (range, refused) = match request {
        RangeRequest::Specific(range) => (range, range.start() < limits.lowest_port),
        RangeRequest::Within { bounds, .. } => (bounds, bounds.end() < limits.lowest_port),
        RangeRequest::Wildcard { .. } => return None,
    };
    refused.then_some(PrivilegedDenied {
        protocol,
        range,
        unprivileged_start: limits.lowest_port,
        uid,
    })
}
