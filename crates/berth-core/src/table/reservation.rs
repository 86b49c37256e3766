//! A live reservation and what its kind adds to it.

use serde::{Deserialize, Serialize};

use crate::label::Label;
use crate::name::Name;
use crate::owner::{Owner, SessionId};
use crate::range::{PortRange, Protocol};
use crate::table::names::NameScope;
use crate::token::Token;

/// How long a reservation lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Until released, or until what it is bound to ends (its session or its process).
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
    /// Acquisition (or creation) time, milliseconds since the Unix epoch.
    pub acquired_at_ms: u64,
    /// What its kind adds: an owner and a lifetime (runtime), or an allow list (persistent).
    pub lease: Lease,
    /// What it is for, in its owner's words (shown where its owner is).
    pub label: Option<Label>,
    /// How programs find it: unique among its user's runtime reservations of its protocol, or
    /// among persistent ones of its protocol (see [`Reservation::name_scope`]).
    pub name: Option<Name>,
}

/// The kind-specific part of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// Owned by one process; ends with what it is bound to.
    Runtime {
        /// The owning process: the only one that may use or release it (besides
        /// administrators, who may release it).
        owner: Owner,
        /// What it lives as long as.
        bond: Bond,
        /// Whether the daemon holds the ports of the block its owner has not bound, so that
        /// every other program's explicit bind to them fails (the owner binds through
        /// associate). Otherwise the block is only hidden from automatic port assignment.
        held: bool,
    },
    /// Created by an administrator; lives until deleted.
    Persistent {
        /// Who may bind sockets from it besides administrators.
        allowed: Allowed,
        /// The administrator who created it (uid), for the record.
        created_by: u32,
    },
}

/// What a runtime reservation lives as long as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bond {
    /// The client connection it was acquired (or re-claimed) on: it ends when that closes.
    Session(SessionId),
    /// Restored from the journal after a daemon restart and not yet re-claimed by its owner:
    /// it ends when the owner re-claims it (then [`Bond::Session`]), exits, or the grace period
    /// ends.
    Unclaimed,
    /// Its owner process itself: it ends when that process exits (the daemon watches it). A
    /// reservation handed to a process (`berth run`'s command) lives so; it needs no re-claim
    /// after a restart.
    Process,
    /// A cgroup (v2), by its id (the inode number of its directory): it ends when the cgroup
    /// has no process left, so that daemonized descendants of a command keep the block. The
    /// kernel keeps its ports for that cgroup's tasks (enforce mode), so it is never held.
    Cgroup(u64),
}

/// The users and groups a persistent reservation was created for: besides administrators,
/// only they may bind sockets from it.
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

impl Reservation {
    /// Runtime or persistent.
    pub fn kind(&self) -> Kind {
        match self.lease {
            Lease::Runtime { .. } => Kind::Runtime,
            Lease::Persistent { .. } => Kind::Persistent,
        }
    }

    /// The owning process of a runtime reservation.
    pub fn owner(&self) -> Option<&Owner> {
        match &self.lease {
            Lease::Runtime { owner, .. } => Some(owner),
            Lease::Persistent { .. } => None,
        }
    }

    /// Whether the daemon holds its ports (runtime reservations that asked for it).
    pub fn held(&self) -> bool {
        matches!(self.lease, Lease::Runtime { held: true, .. })
    }

    /// What a runtime reservation lives as long as.
    pub fn bond(&self) -> Option<Bond> {
        match self.lease {
            Lease::Runtime { bond, .. } => Some(bond),
            Lease::Persistent { .. } => None,
        }
    }

    /// The session a runtime reservation ends with, if it is bound to one.
    pub fn session(&self) -> Option<SessionId> {
        match self.bond() {
            Some(Bond::Session(session)) => Some(session),
            _ => None,
        }
    }

    /// The cgroup a runtime reservation ends with, if it is bound to one.
    pub fn cgroup(&self) -> Option<u64> {
        match self.bond() {
            Some(Bond::Cgroup(id)) => Some(id),
            _ => None,
        }
    }

    /// Whether `process` owns this runtime reservation (same pid, same start time).
    pub fn is_owned_by(&self, process: &Owner) -> bool {
        self.owner().is_some_and(|o| o.same_process(process))
    }

    /// Whose names its name is among: its owner's user's, or the host's for a persistent one.
    pub fn name_scope(&self) -> NameScope {
        match &self.lease {
            Lease::Runtime { owner, .. } => NameScope::User(owner.uid),
            Lease::Persistent { .. } => NameScope::Host,
        }
    }

    /// "pid 4121 (nginx, uid 1000)" — for messages; "a process of another user" once
    /// [`Reservation::seen_by`] hid the owner.
    pub fn holder_description(&self) -> String {
        match &self.lease {
            Lease::Runtime { owner, .. } if owner.pid == 0 => {
                "a process of another user".to_owned()
            }
            Lease::Runtime { owner, .. } => match &self.label {
                Some(label) => format!(
                    "pid {} ({}, uid {}, label {:?})",
                    owner.pid,
                    owner.command,
                    owner.uid,
                    label.as_str()
                ),
                None => format!("pid {} ({}, uid {})", owner.pid, owner.command, owner.uid),
            },
            Lease::Persistent { .. } => match &self.label {
                Some(label) => format!("a persistent reservation (label {:?})", label.as_str()),
                None => "a persistent reservation".to_owned(),
            },
        }
    }

    /// This reservation as a user sees it in messages and listings: a runtime reservation's
    /// owner (pid, command, uid) only for administrators and for the owner's own user; anyone
    /// else sees its token, ports and kind, and "a process of another user" (one rule for
    /// `list`, `why` and every refusal that names a holder). A runtime reservation's label
    /// goes with its owner; a persistent one's, an administrator's note, is public.
    pub fn seen_by(&self, viewer_uid: u32, is_admin: bool) -> Reservation {
        let mut seen = self.clone();
        if let Lease::Runtime { owner, .. } = &mut seen.lease {
            if !is_admin && owner.uid != viewer_uid {
                seen.label = None;
                *owner = Owner {
                    pid: 0,
                    uid: u32::MAX,
                    gid: u32::MAX,
                    start_time: 0,
                    command: "".into(),
                };
            }
        }
        seen
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
