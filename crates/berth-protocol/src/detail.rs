//! The structured detail of an error: the values a program needs to act on a failure without
//! parsing the English message.
//!
//! [`WireError::detail`](crate::WireError::detail) is the last field of the last thing in a
//! [`Response::Error`](crate::Response::Error) frame, which is what lets it evolve:
//!
//! - a reader that does not know the field (an older client, a raw client that reads `kind` and
//!   `message` only) stops before it and ignores the trailing bytes;
//! - a reader that finds no bytes for it (an older daemon) or a variant it does not know (a
//!   newer daemon) decodes [`ErrorDetail::None`] instead of failing — see
//!   [`WireError`](crate::WireError)'s `Deserialize`;
//! - new variants are appended at the end of [`ErrorDetail`], and new fields only at the end of
//!   a variant (a reader ignores what follows the fields it knows).

use berth_core::{Kind, Pool, Protocol, Token};
use serde::{Deserialize, Serialize};

use crate::message::OwnerInfo;

/// What an error is about, in numbers. The English message says the same for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum ErrorDetail {
    /// No detail: the kind and the message say everything (or the reader could not decode the
    /// detail the daemon sent).
    #[default]
    None,
    /// The ports a request was refused for: a conflict, a privileged port, a full
    /// reservation.
    Ports(PortsDetail),
    /// A per-user quota is used up.
    Quota(QuotaDetail),
    /// The wildcard pool has no free block of the size asked.
    Pool(PoolDetail),
    /// The daemon is at one of its limits (connections, descriptors …); retry later or raise
    /// the limit.
    Busy(BusyDetail),
    /// The client is in another network namespace than the daemon: ports granted here would
    /// be checked in the wrong place.
    Namespaces(NamespacesDetail),
    /// The reservation a request named by token (unknown, not the asker's …).
    Token {
        /// The token as the request gave it.
        token: u64,
    },
    /// Not an answer: the daemon's last frame on a connection it closes because the client
    /// said nothing for `timeout_ms` and held nothing (no reservation bound to the session, no
    /// request unanswered). Every request written after the last answer was not read, so a
    /// client may send it again on a new connection.
    Idle {
        /// The daemon's idle timeout, in milliseconds.
        timeout_ms: u64,
    },
    /// The name asked for is held by another live reservation (the asker's user's, or a
    /// persistent one's): a conflict, whatever ports are free.
    Name(NameDetail),
}

/// See [`ErrorDetail::Name`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameDetail {
    /// The port space.
    pub protocol: Protocol,
    /// The name.
    pub name: String,
    /// The reservation that has it (its owner as the asker may see it).
    pub holder: Holder,
}

/// See [`ErrorDetail::Ports`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortsDetail {
    /// The port space.
    pub protocol: Protocol,
    /// The first port asked for, as the request gave it (0 = any block).
    pub start: u16,
    /// The number of ports asked for, as the request gave it.
    pub count: u16,
    /// The first port at fault, where one is known.
    pub port: Option<u16>,
    /// Who holds that port, where the daemon knows and may tell.
    pub holder: Option<Holder>,
}

/// Who holds a port: a reservation, a process with a socket bound to it, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The reservation that covers the port; `None` when the port is merely in use on the
    /// host (a socket bound outside berth).
    pub token: Option<Token>,
    /// That reservation's kind.
    pub kind: Option<Kind>,
    /// The process: the reservation's owner, or the process with the port bound. `None` when
    /// the asker may not see it (another user's process, and the asker is no administrator) or
    /// nobody knows (a persistent reservation).
    pub owner: Option<OwnerInfo>,
}

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum QuotaWhat {
    /// Live reservations of the user.
    Reservations,
    /// Reserved ports of the user.
    Ports,
    /// Held ports of the user (the daemon keeps a hold socket per port and family).
    HeldPorts,
    /// Ports of the host's ephemeral range that all users without administrator rights
    /// reserve together (`limit` is their share, `used` what they hold).
    EphemeralShare,
}

/// See [`ErrorDetail::Quota`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaDetail {
    /// Which quota.
    pub what: QuotaWhat,
    /// The user's limit.
    pub limit: u32,
    /// What the user holds now.
    pub used: u32,
    /// What the request would have added.
    pub asked: u32,
}

/// See [`ErrorDetail::Pool`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDetail {
    /// The port space.
    pub protocol: Protocol,
    /// The wildcard pool.
    pub pool: Pool,
    /// The size of block asked for.
    pub count: u16,
    /// The pool has that many free ports, just not in one block: smaller blocks would do.
    pub fragmented: bool,
    /// Privileged ports of the pool were skipped because this user may not have them.
    pub privileged_skipped: bool,
    /// The bounds searched instead of the pool (a request's `within`), `(first, last)`.
    pub within: Option<(u16, u16)>,
}

/// A limit of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DaemonLimit {
    /// Connections served at once (`max_connections`).
    Connections,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    OpenFiles,
}

/// See [`ErrorDetail::Busy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusyDetail {
    /// Which limit.
    pub limit: DaemonLimit,
    /// Its value.
    pub max: u64,
    /// How much of it is in use.
    pub in_use: u64,
}

/// See [`ErrorDetail::Namespaces`]. A namespace is named by the inode number of its
/// `/proc/PID/ns/net` file, as `ip netns identify` and `ls -l /proc/PID/ns` show it
/// (`net:[4026531840]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacesDetail {
    /// The daemon's network namespace.
    pub daemon_netns: u64,
    /// The client's network namespace.
    pub peer_netns: u64,
}
