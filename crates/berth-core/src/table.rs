//! The allocation state of both protocols: live reservations, their owners, and the free
//! maps wildcard requests are served from.

use serde::{Deserialize, Serialize};

use crate::error::{AcquireError, ReleaseError, UseError};
use crate::owner::{Holder, Owner, Requester, SessionId};
use crate::range::{Pool, PortRange, Protocol, RangeRequest};
use crate::token::{Token, TokenSource};

mod records;
mod space;
#[cfg(test)]
mod tests;

use records::Records;
use space::Space;

/// How long a reservation lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Until released, or until its session ends.
    Runtime,
    /// Until deleted; survives restarts.
    Persistent,
}

impl Kind {
    /// `"runtime"` or `"persistent"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Runtime => "runtime",
            Kind::Persistent => "persistent",
        }
    }
}

/// One live reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Its name.
    pub token: Token,
    /// Which port space.
    pub protocol: Protocol,
    /// The ports.
    pub range: PortRange,
    /// Runtime or persistent.
    pub kind: Kind,
    /// The owning process (runtime) — `None` for persistent reservations.
    pub owner: Option<Owner>,
    /// The session it dies with (runtime only).
    pub session: Option<SessionId>,
    /// Acquisition (or creation) time, milliseconds since the Unix epoch.
    pub acquired_at_ms: u64,
    /// Persistent only: who may bind sockets from it besides administrators.
    pub allowed: Allowed,
}

/// The users and groups a persistent reservation was created for (SPEC §2: consumed by
/// administrators and by the users/groups it was created for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// User ids.
    pub users: Vec<u32>,
    /// Group ids (primary or supplementary membership counts).
    pub groups: Vec<u32>,
}

impl Allowed {
    /// Whether `uid` with groups `gids` is named.
    pub fn admits(&self, uid: u32, gids: &[u32]) -> bool {
        self.users.contains(&uid) || gids.iter().any(|g| self.groups.contains(g))
    }
}

/// The asker of an associate: process, administrator status, and groups (for persistent
/// reservations' allow lists).
#[derive(Debug, Clone, Copy)]
pub struct UseRequest<'a> {
    /// The asking process.
    pub process: &'a Owner,
    /// Whether it is an administrator.
    pub is_admin: bool,
    /// Its primary and supplementary groups.
    pub gids: &'a [u32],
}

impl Reservation {
    /// "pid 4121 (nginx, uid 1000)" — for messages.
    pub fn holder_description(&self) -> String {
        match &self.owner {
            Some(o) => format!("pid {} ({}, uid {})", o.pid, o.command, o.uid),
            None if self.kind == Kind::Persistent => "a persistent reservation".to_owned(),
            None => "an unknown process".to_owned(),
        }
    }
}

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
}

impl Table {
    /// An empty table whose wildcard requests draw from `pool`.
    pub fn new(pool: Pool) -> Self {
        Table {
            pool,
            tcp: Space::new(pool.range()),
            udp: Space::new(pool.range()),
            records: Records::default(),
        }
    }

    /// The wildcard pool.
    pub fn pool(&self) -> Pool {
        self.pool
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

    /// Acquires a runtime reservation.
    ///
    /// `in_use(protocol, range)` is asked about each candidate block before it is granted and
    /// returns the first port of it that is in use on the host, if any; the core does no I/O of
    /// its own. A specific request fails with [`AcquireError::Conflict`] when it overlaps a
    /// live reservation and with [`AcquireError::InUse`] when a port is in use. A wildcard
    /// request searches next-fit from the protocol's cursor, skips blocks with ports in use,
    /// and fails with [`AcquireError::PoolExhausted`] only when no block of `count` ports in
    /// the pool is both unreserved and not in use. On success the cursor moves past the block.
    ///
    /// A wildcard request for 0 ports (which [`RangeRequest::from_start_count`] never makes)
    /// fails with [`AcquireError::PoolExhausted`].
    pub fn acquire(
        &mut self,
        protocol: Protocol,
        request: RangeRequest,
        holder: Holder,
        tokens: &mut dyn TokenSource,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Result<Reservation, AcquireError> {
        let range = match request {
            RangeRequest::Specific(range) => {
                self.check_free(protocol, range, in_use)?;
                range
            }
            RangeRequest::Wildcard { count } => {
                let pool = self.pool;
                self.space_mut(protocol)
                    .next_fit(protocol, count, pool.range(), in_use)
                    .ok_or(AcquireError::PoolExhausted {
                        protocol,
                        count,
                        pool,
                    })?
            }
        };
        let token = self.draw_token(tokens);
        let reservation = Reservation {
            token,
            protocol,
            range,
            kind: Kind::Runtime,
            owner: Some(holder.owner),
            session: Some(holder.session),
            acquired_at_ms: holder.acquired_at_ms,
            allowed: Allowed::default(),
        };
        self.space_mut(protocol).insert(range, token);
        self.records.insert(reservation.clone());
        Ok(reservation)
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
    pub fn release(
        &mut self,
        token: Token,
        requester: &Requester,
    ) -> Result<Reservation, ReleaseError> {
        let reservation = self.get(token).ok_or(ReleaseError::NotFound(token))?;
        if reservation.kind == Kind::Persistent {
            return Err(ReleaseError::Persistent(Box::new(reservation.clone())));
        }
        let owns = reservation
            .owner
            .as_ref()
            .is_some_and(|owner| owner.same_process(&requester.process));
        if !(owns || requester.is_admin) {
            return Err(ReleaseError::PermissionDenied(Box::new(
                reservation.clone(),
            )));
        }
        self.remove(token).ok_or(ReleaseError::NotFound(token))
    }

    /// Checks that `asker` may bind sockets from `token`'s reservation. A runtime reservation
    /// is usable only by the process that acquired it (SPEC §2: knowing the token grants
    /// nothing); a persistent one by administrators and the users/groups it was created for.
    /// Returns the reservation and the port its next bind should start from.
    pub fn authorize_use(
        &self,
        token: Token,
        asker: UseRequest<'_>,
    ) -> Result<(&Reservation, u16), UseError> {
        let reservation = self.get(token).ok_or(UseError::NotFound(token))?;
        let allowed = match reservation.kind {
            Kind::Runtime => reservation
                .owner
                .as_ref()
                .is_some_and(|owner| owner.same_process(asker.process)),
            Kind::Persistent => {
                asker.is_admin || reservation.allowed.admits(asker.process.uid, asker.gids)
            }
        };
        if !allowed {
            return Err(UseError::NotOwner {
                reservation: Box::new(reservation.clone()),
                requester_pid: asker.process.pid,
            });
        }
        let cursor = self
            .records
            .bind_cursor(token)
            .unwrap_or(reservation.range.start());
        Ok((reservation, cursor))
    }

    /// Records that a socket was bound to `port` from `token`'s reservation: the next bind
    /// starts after it (wrapping to the block's start).
    pub fn note_bound(&mut self, token: Token, port: u16) {
        if let Some(range) = self.get(token).map(|r| r.range) {
            let next = if port >= range.end() {
                range.start()
            } else {
                port + 1
            };
            self.records.set_bind_cursor(token, next);
        }
    }

    /// Adds a persistent reservation named `token` (drawn with [`Table::new_token`] for a new
    /// one, or loaded from the store). Fails like a specific acquire when the range overlaps a
    /// live reservation or `in_use` reports a port of it in use.
    pub fn insert_persistent(
        &mut self,
        token: Token,
        protocol: Protocol,
        range: PortRange,
        allowed: Allowed,
        created_at_ms: u64,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Result<Reservation, AcquireError> {
        self.check_token_free(token, protocol, range)?;
        self.check_free(protocol, range, in_use)?;
        let reservation = Reservation {
            token,
            protocol,
            range,
            kind: Kind::Persistent,
            owner: None,
            session: None,
            acquired_at_ms: created_at_ms,
            allowed,
        };
        self.space_mut(protocol).insert(range, token);
        self.records.insert(reservation.clone());
        Ok(reservation)
    }

    /// Adds a runtime reservation from the journal of an earlier daemon: it has no session
    /// until its owner re-claims it ([`Table::reclaim`]).
    pub fn restore_runtime(
        &mut self,
        token: Token,
        protocol: Protocol,
        range: PortRange,
        owner: Owner,
        acquired_at_ms: u64,
    ) -> Result<Reservation, AcquireError> {
        self.check_token_free(token, protocol, range)?;
        self.check_free(protocol, range, &mut |_, _| None)?;
        let reservation = Reservation {
            token,
            protocol,
            range,
            kind: Kind::Runtime,
            owner: Some(owner),
            session: None,
            acquired_at_ms,
            allowed: Allowed::default(),
        };
        self.space_mut(protocol).insert(range, token);
        self.records.insert(reservation.clone());
        Ok(reservation)
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

    /// Gives a held runtime reservation (restored, no session) to `session`, if `requester`
    /// is the process that acquired it.
    pub fn reclaim(
        &mut self,
        token: Token,
        requester: &Owner,
        session: SessionId,
    ) -> Result<Reservation, UseError> {
        let reservation = self.get(token).ok_or(UseError::NotFound(token))?;
        let owns = reservation.kind == Kind::Runtime
            && reservation.session.is_none()
            && reservation
                .owner
                .as_ref()
                .is_some_and(|owner| owner.same_process(requester));
        if !owns {
            return Err(UseError::NotOwner {
                reservation: Box::new(reservation.clone()),
                requester_pid: requester.pid,
            });
        }
        let mut reservation = self
            .records
            .remove(token)
            .ok_or(UseError::NotFound(token))?;
        reservation.session = Some(session);
        self.records.insert(reservation.clone());
        Ok(reservation)
    }

    /// The persistent reservation of exactly `protocol` and `range`.
    pub fn find_persistent(&self, protocol: Protocol, range: PortRange) -> Option<&Reservation> {
        self.space(protocol)
            .containing(range.start())
            .and_then(|slot| self.get(slot.token))
            .filter(|r| r.kind == Kind::Persistent && r.range == range)
    }

    /// Removes the persistent reservation `token`.
    pub fn remove_persistent(&mut self, token: Token) -> Option<Reservation> {
        if self.get(token)?.kind != Kind::Persistent {
            return None;
        }
        self.remove(token)
    }

    /// Releases the runtime reservations that have no session (restored and not re-claimed),
    /// or only those of `owner` when given; returns them.
    pub fn release_unclaimed(&mut self, owner: Option<&Owner>) -> Vec<Reservation> {
        let tokens: Vec<Token> = self
            .iter()
            .filter(|r| r.kind == Kind::Runtime && r.session.is_none())
            .filter(|r| match (owner, &r.owner) {
                (Some(want), Some(have)) => want.same_process(have),
                (Some(_), None) => false,
                (None, _) => true,
            })
            .map(|r| r.token)
            .collect();
        tokens.into_iter().filter_map(|t| self.remove(t)).collect()
    }

    /// Removes `token`'s reservation from every index and frees its ports.
    fn remove(&mut self, token: Token) -> Option<Reservation> {
        let reservation = self.records.remove(token)?;
        self.space_mut(reservation.protocol)
            .remove(reservation.range.start());
        Some(reservation)
    }

    /// Releases every runtime reservation of `session` (its connection closed), returning them
    /// ordered by protocol then start port.
    pub fn release_session(&mut self, session: SessionId) -> Vec<Reservation> {
        let mut released = self.records.remove_session(session);
        for r in &released {
            self.space_mut(r.protocol).remove(r.range.start());
        }
        released.sort_by_key(|r| (r.protocol, r.range.start()));
        released
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
}
