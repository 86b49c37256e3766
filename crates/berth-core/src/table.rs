//! The allocation state of both protocols: live reservations, their owners, and the free
//! maps wildcard requests are served from.

use serde::{Deserialize, Serialize};

use crate::error::{AcquireError, ReleaseError};
use crate::owner::{Holder, Owner, Requester, SessionId};
use crate::range::{Pool, PortRange, Protocol, RangeRequest};
use crate::token::{Token, TokenSource};

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
    /// Acquisition time, milliseconds since the Unix epoch.
    pub acquired_at_ms: u64,
}

impl Reservation {
    /// "pid 4121 (nginx, uid 1000)" — for messages.
    pub fn holder_description(&self) -> String {
        match &self.owner {
            Some(o) => format!("pid {} ({}, uid {})", o.pid, o.command, o.uid),
            None => "a persistent reservation".to_owned(),
        }
    }
}

/// The allocation state: every live reservation of both protocols.
///
/// Invariant: two reservations of one protocol never share a port.
#[derive(Debug)]
pub struct Table {
    _todo: (),
}

impl Table {
    /// An empty table whose wildcard requests draw from `pool`.
    pub fn new(pool: Pool) -> Self {
        let _ = pool;
        todo!()
    }

    /// The wildcard pool.
    pub fn pool(&self) -> Pool {
        todo!()
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
    pub fn acquire(
        &mut self,
        protocol: Protocol,
        request: RangeRequest,
        holder: Holder,
        tokens: &mut dyn TokenSource,
        in_use: &mut dyn FnMut(Protocol, PortRange) -> Option<u16>,
    ) -> Result<Reservation, AcquireError> {
        let _ = (protocol, request, holder, tokens, in_use);
        todo!()
    }

    /// Releases `token` on behalf of `requester`: allowed for the owning process (same pid and
    /// start time) and for administrators.
    pub fn release(
        &mut self,
        token: Token,
        requester: &Requester,
    ) -> Result<Reservation, ReleaseError> {
        let _ = (token, requester);
        todo!()
    }

    /// Releases every runtime reservation of `session` (its connection closed), returning them.
    pub fn release_session(&mut self, session: SessionId) -> Vec<Reservation> {
        let _ = session;
        todo!()
    }

    /// The live reservation named `token`.
    pub fn get(&self, token: Token) -> Option<&Reservation> {
        let _ = token;
        todo!()
    }

    /// Every live reservation, ordered by protocol then start port.
    pub fn iter(&self) -> impl Iterator<Item = &Reservation> + '_ {
        std::iter::empty()
    }

    /// The reservation of `protocol` that contains `port`, if any.
    pub fn find_port(&self, protocol: Protocol, port: u16) -> Option<&Reservation> {
        let _ = (protocol, port);
        todo!()
    }

    /// Number of live reservations.
    pub fn len(&self) -> usize {
        todo!()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of reserved ports of `protocol`.
    pub fn reserved_ports(&self, protocol: Protocol) -> u32 {
        let _ = protocol;
        todo!()
    }
}
