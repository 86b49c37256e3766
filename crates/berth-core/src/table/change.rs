//! What the table's mutating operations report: every change they made, in the order they
//! made it, so that whoever mirrors the table (the journal today; the kernel's reserved-ports
//! list and the hold sockets later) sees exactly the table's history.

use crate::range::{PortRange, Protocol};
use crate::table::Reservation;
use crate::token::Token;

/// One change to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A runtime reservation was granted.
    Granted(Reservation),
    /// A runtime reservation ended; its ports are free again.
    Released {
        /// The reservation as it was.
        reservation: Reservation,
        /// Why it ended.
        why: Ending,
    },
    /// A runtime reservation changed what it lives as long as, or its owner: re-claimed by its
    /// owner's new session after a restart, or handed to another process.
    Rebound {
        /// As it was.
        before: Reservation,
        /// As it is now (same token, protocol and ports).
        after: Reservation,
    },
    /// At start-up: a reservation the store kept came back into the table (the store has it
    /// already).
    Restored(Reservation),
    /// At start-up: a journaled runtime reservation was not taken back (its owner is gone, or
    /// its ports overlap a reservation restored first); the journal should forget it.
    NotRestored {
        /// Its token.
        token: Token,
        /// Its protocol.
        protocol: Protocol,
        /// Its ports.
        range: PortRange,
    },
    /// A persistent reservation was created.
    PersistentCreated(Reservation),
    /// A persistent reservation was deleted; its ports are free again.
    PersistentDeleted(Reservation),
}

/// Why a runtime reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its owner (or an administrator) released it.
    Released,
    /// The session it was bound to closed.
    SessionEnded,
    /// The process it was bound to exited.
    OwnerExited,
    /// Restored after a restart, it was not re-claimed within the grace period.
    NotReclaimed,
    /// It was granted, then taken back because a consumer of the change refused it.
    Undone,
    /// The cgroup it was bound to has no process left.
    CgroupEmptied,
}

impl Ending {
    /// For the daemon's log: "released by its owner", "its session ended", ….
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Released => "released",
            Ending::SessionEnded => "its session ended",
            Ending::OwnerExited => "its owner exited",
            Ending::NotReclaimed => "not re-claimed after the restart",
            Ending::Undone => "undone",
            Ending::CgroupEmptied => "its cgroup has no process left",
        }
    }
}

impl Change {
    /// The reservation the change is about, as it is after the change (or was, when it ended).
    pub fn reservation(&self) -> Option<&Reservation> {
        match self {
            Change::Granted(r)
            | Change::Restored(r)
            | Change::PersistentCreated(r)
            | Change::PersistentDeleted(r)
            | Change::Released { reservation: r, .. }
            | Change::Rebound { after: r, .. } => Some(r),
            Change::NotRestored { .. } => None,
        }
    }

    /// Whether a consumer may refuse this change, so that the table undoes it. Ends of runtime
    /// reservations cannot be refused (the session or process they belonged to is gone), nor
    /// can what start-up restores.
    pub fn refusable(&self) -> bool {
        matches!(
            self,
            Change::Granted(_)
                | Change::Rebound { .. }
                | Change::PersistentCreated(_)
                | Change::PersistentDeleted(_)
        )
    }
}
