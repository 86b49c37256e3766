//! Who holds a reservation and who is asking.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest command name kept for an owner, in bytes; longer names are cut.
pub const MAX_COMMAND_LEN: usize = 64;

/// A process as the kernel identified it (`SO_PEERCRED` plus `/proc`). Never a pid the client
/// claimed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Start time of the process in clock ticks since boot (field 22 of `/proc/PID/stat`):
    /// together with the pid it names one process, even after the pid is reused.
    pub start_time: u64,
    /// The command name (`/proc/PID/comm`), for messages; at most [`MAX_COMMAND_LEN`] bytes of
    /// printable text ([`Owner::printable_command`]).
    /// Shared: every reservation of a process names it, and a copy each would be an
    /// allocation each.
    pub command: Arc<str>,
}

impl Owner {
    /// Whether `self` and `other` are the same process (same pid, same start time).
    pub fn same_process(&self, other: &Owner) -> bool {
        self.pid == other.pid && self.start_time == other.start_time
    }

    /// A command name as berth keeps and shows it: each unprintable character
    /// ([`crate::text::is_unprintable`]: an escape, a newline, an invisible character …)
    /// replaced by `?`, as `ps` shows it, then cut to [`MAX_COMMAND_LEN`] bytes on a character
    /// boundary. Any process may give itself any name, and another user reads it in
    /// `berth list`.
    pub fn printable_command(command: &str) -> String {
        let command = crate::text::printable(command);
        let mut end = command.len().min(MAX_COMMAND_LEN);
        while !command.is_char_boundary(end) {
            end -= 1;
        }
        command.get(..end).unwrap_or_default().to_owned()
    }
}

/// Identifies one client connection (session). Runtime reservations die with their session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// The holder of a new runtime reservation: the owning process, its session, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The owning process.
    pub owner: Owner,
    /// The session the reservation is bound to.
    pub session: SessionId,
    /// Acquisition time in milliseconds since the Unix epoch (supplied by the caller: the core
    /// reads no clock).
    pub acquired_at_ms: u64,
    /// Whether the daemon holds the ports its owner has not bound (see
    /// [`crate::Lease::Runtime`]'s `held`).
    pub hold: bool,
    /// What the reservation is for (see [`crate::Reservation::label`]).
    pub label: Option<crate::label::Label>,
    /// Its name (see [`crate::Reservation::name`]).
    pub name: Option<crate::name::Name>,
}

/// Who is asking for an operation on an existing reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// The asking process.
    pub process: Owner,
    /// Whether the asker is an administrator of this daemon (root, the daemon's own user, or a
    /// member of the configured group).
    pub is_admin: bool,
}
