//! Error kinds (docs/errors.md) and the core's typed errors.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::policy::PrivilegedDenied;
use crate::range::{Pool, PortRange, Protocol};
use crate::table::{Kind, QuotaKind, Reservation};

/// The kinds of failure (docs/errors.md). Every error berth reports has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Count 0, range past 65535, wildcard persistent, token 0, malformed request.
    InvalidArgument,
    /// Socket is not TCP/UDP, or its type does not match the protocol.
    NotSupported,
    /// A specific range overlaps a reservation or a port in use.
    Conflict,
    /// No block of that size is free in the pool.
    PoolExhausted,
    /// Every port of the reservation is bound.
    ReservationFull,
    /// Unknown token, or no exact persistent match.
    NotFound,
    /// Not the owner, not an administrator, or a privileged port not allowed.
    PermissionDenied,
    /// The user's reservation or port quota is used up.
    QuotaExceeded,
    /// No daemon answers.
    Unavailable,
    /// Client and daemon speak no common protocol version.
    Incompatible,
}

impl ErrorKind {
    /// Every kind, in the order of docs/errors.md.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotSupported,
        ErrorKind::Conflict,
        ErrorKind::PoolExhausted,
        ErrorKind::ReservationFull,
        ErrorKind::NotFound,
        ErrorKind::PermissionDenied,
        ErrorKind::QuotaExceeded,
        ErrorKind::Unavailable,
        ErrorKind::Incompatible,
    ];

    /// The name of the kind, e.g. `"pool-exhausted"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::NotSupported => "not-supported",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PoolExhausted => "pool-exhausted",
            ErrorKind::ReservationFull => "reservation-full",
            ErrorKind::NotFound => "not-found",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::QuotaExceeded => "quota-exceeded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Incompatible => "incompatible",
        }
    }

    /// The Linux errno the C ABI reports for this kind (docs/errors.md).
    pub fn errno(self) -> i32 {
        // Linux values; the core has no libc dependency.
        match self {
            ErrorKind::InvalidArgument => 22,  // EINVAL
            ErrorKind::NotSupported => 95,     // EOPNOTSUPP
            ErrorKind::Conflict => 98,         // EADDRINUSE
            ErrorKind::PoolExhausted => 99,    // EADDRNOTAVAIL
            ErrorKind::ReservationFull => 98,  // EADDRINUSE
            ErrorKind::NotFound => 2,          // ENOENT
            ErrorKind::PermissionDenied => 13, // EACCES
            ErrorKind::QuotaExceeded => 122,   // EDQUOT
            ErrorKind::Unavailable => 111,     // ECONNREFUSED
            ErrorKind::Incompatible => 71,     // EPROTO
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port value that is not acceptable (all invalid-argument).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RangeError {
    /// Port 0 cannot start a specific range.
    #[error("port 0 is never reservable; give a start port from 1 to 65535, or 0 only to ask for any free block")]
    ZeroStart,
    /// A range must hold at least one port.
    #[error("a reservation needs at least one port; ask for a count from 1 to 65535")]
    ZeroCount,
    /// The range would run past 65535.
    #[error("ports {start} plus {count} run past 65535; lower the start or the count")]
    PastEnd {
        /// First port asked for.
        start: u16,
        /// Number of ports asked for.
        count: u32,
    },
    /// `last` before `first`.
    #[error("range {first}-{last} ends before it starts; write it as LOW-HIGH")]
    Reversed {
        /// First port given.
        first: u16,
        /// Last port given.
        last: u16,
    },
    /// Not `LO-HI`.
    #[error("{0:?} is not a port range; write it as LOW-HIGH, e.g. 32768-60999")]
    BadPool(String),
    /// Bounds (within LO-HI) that start at port 0.
    #[error("port 0 cannot bound a search (within LO-HI); give bounds from 1 to 65535")]
    ZeroBound,
    /// A wildcard pool that starts at port 0.
    #[error("a pool cannot start at port 0; give one from 1 to 65535, e.g. 32768-60999")]
    ZeroPool,
    /// A bounded wildcard that also names its start.
    #[error("start port {start} and bounds (within LO-HI) cannot be combined: give the start for exactly that block, or the bounds for any free block inside them")]
    StartWithin {
        /// The start port given.
        start: u16,
    },
    /// Bounds too narrow for the block asked for.
    #[error("{count} ports do not fit within {bounds} ({} ports); widen the bounds or ask for fewer ports", .bounds.count())]
    WithinTooSmall {
        /// Ports asked for.
        count: u16,
        /// The bounds given.
        bounds: PortRange,
    },
    /// Not `tcp` or `udp`.
    #[error("{0:?} is not a protocol; use tcp or udp")]
    UnknownProtocol(String),
    /// Not a token.
    #[error("{0:?} is not a token; tokens look like 0x0123456789abcdef (see `berth list`)")]
    BadToken(String),
    /// Token 0 names nothing.
    #[error("token 0 names no reservation; tokens are non-zero (see `berth list`)")]
    ZeroToken,
}

impl RangeError {
    /// Always [`ErrorKind::InvalidArgument`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// Why an acquire failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AcquireError {
    /// The specific range overlaps a live reservation.
    #[error("cannot reserve {protocol} {}: {}", describe(*requested), in_the_way(holder))]
    Conflict {
        /// Protocol asked for.
        protocol: Protocol,
        /// The range asked for.
        requested: PortRange,
        /// The first reservation found in the way.
        holder: Box<Reservation>,
    },
    /// The name is held by another live reservation of the same scope and protocol.
    #[error("cannot reserve the name {name} in {protocol}: reservation {} ({} {}) of {} has it; {}", .holder.token, .holder.protocol, describe(.holder.range), .holder.holder_description(), to_free(holder, "name"))]
    NameTaken {
        /// Protocol asked for.
        protocol: Protocol,
        /// The name asked for.
        name: crate::name::Name,
        /// The reservation that has it.
        holder: Box<Reservation>,
    },
    /// A port of the specific range is in use by a socket on the host.
    #[error("{protocol} port {port} (of the requested {}) is in use by a socket on this host; choose another range, or stop the program using it (`ss -anp '( sport = :{port} )'` shows it)", describe(*requested))]
    InUse {
        /// Protocol asked for.
        protocol: Protocol,
        /// The range asked for.
        requested: PortRange,
        /// The first port found in use.
        port: u16,
    },
    /// No block of `count` contiguous ports is usable in the pool.
    #[error("{}", exhausted_message(*protocol, *count, *pool, *free_ports, *skipped_privileged, *bounds))]
    PoolExhausted {
        /// Protocol asked for.
        protocol: Protocol,
        /// Ports asked for.
        count: u16,
        /// The pool searched.
        pool: Pool,
        /// Unreserved ports left in the pool (some may be in use on the host): at least
        /// `count` means the pool is fragmented rather than full.
        free_ports: u32,
        /// Whether privileged ports of the pool were skipped because the asker may not use
        /// them.
        skipped_privileged: bool,
        /// The bounds searched instead of the pool (a bounded wildcard); `free_ports` counts
        /// theirs.
        bounds: Option<PortRange>,
    },
    /// The specific range has privileged ports the asker may not use.
    #[error(transparent)]
    Privileged(PrivilegedDenied),
    /// The asker's user is at its quota.
    #[error("{}", quota_message(*uid, *what, *limit, *used, *asked))]
    QuotaExceeded {
        /// The user.
        uid: u32,
        /// Which quota.
        what: QuotaKind,
        /// Its limit.
        limit: u32,
        /// What the user holds now.
        used: u32,
        /// Ports asked for.
        asked: u16,
    },
}

impl AcquireError {
    /// This error as `viewer_uid` may read it: the holder's owner hidden unless the viewer is
    /// an administrator or the same user (see `Reservation::seen_by`).
    pub fn seen_by(&self, viewer_uid: u32, is_admin: bool) -> Self {
        match self {
            AcquireError::Conflict {
                protocol,
                requested,
                holder,
            } => AcquireError::Conflict {
                protocol: *protocol,
                requested: *requested,
                holder: Box::new(holder.seen_by(viewer_uid, is_admin)),
            },
            AcquireError::NameTaken {
                protocol,
                name,
                holder,
            } => AcquireError::NameTaken {
                protocol: *protocol,
                name: name.clone(),
                holder: Box::new(holder.seen_by(viewer_uid, is_admin)),
            },
            other => other.clone(),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AcquireError::Conflict { .. }
            | AcquireError::InUse { .. }
            | AcquireError::NameTaken { .. } => ErrorKind::Conflict,
            AcquireError::PoolExhausted { .. } => ErrorKind::PoolExhausted,
            AcquireError::Privileged(_) => ErrorKind::PermissionDenied,
            AcquireError::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
        }
    }
}

/// "reservation 0x… (tcp ports 8080-8081) held by pid 4121 (…) is in the way; …" with what to
/// do about it.
fn in_the_way(holder: &Reservation) -> String {
    format!(
        "reservation {} ({} {}) held by {} is in the way; {}",
        holder.token,
        holder.protocol,
        describe(holder.range),
        holder.holder_description(),
        to_free(holder, "range")
    )
}

/// What to do about `holder` being in the way of a request, which depends on its kind:
/// "choose another `what`, or …" have it deleted (persistent) or wait for its release.
fn to_free(holder: &Reservation, what: &str) -> String {
    match holder.kind() {
        Kind::Persistent => format!(
            "choose another {what}, or have an administrator delete it (`berth persistent delete --{} --start {} --count {}`)",
            holder.protocol,
            holder.range.start(),
            holder.range.count()
        ),
        Kind::Runtime => format!(
            "choose another {what}, or wait until its owner releases it (its owner or an administrator can `berth release {}`)",
            holder.token
        ),
    }
}

fn exhausted_message(
    protocol: Protocol,
    count: u16,
    pool: Pool,
    free_ports: u32,
    skipped_privileged: bool,
    bounds: Option<PortRange>,
) -> String {
    let mut text = match bounds {
        None => format!(
            "no block of {count} contiguous usable {protocol} ports is left in the pool {pool}"
        ),
        Some(bounds) => format!(
            "no block of {count} contiguous usable {protocol} ports is left within {}-{}",
            bounds.start(),
            bounds.end()
        ),
    };
    if skipped_privileged {
        text.push_str(" (its privileged ports were skipped: your user may not use them)");
    }
    if free_ports >= u32::from(count) {
        text.push_str(&format!(
            "; {free_ports} of its ports are unreserved, but they are in use on the host or not contiguous (the pool is fragmented)"
        ));
    }
    text.push_str(match bounds {
        None => "; ask for fewer ports, release reservations (`berth list`), or widen the pool (`berth daemon --pool LO-HI`)",
        Some(_) => "; ask for fewer ports, release reservations (`berth list`), or widen the bounds",
    });
    text
}

/// Why a release failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReleaseError {
    /// No live reservation has this token.
    #[error("no reservation has token {0}; it was released already or never existed (`berth list` shows the live ones)")]
    NotFound(crate::token::Token),
    /// Persistent reservations are deleted, not released.
    #[error("reservation {} ({} {}) is persistent: it is not released but deleted, by an administrator, with `berth persistent delete --{} --start {} --count {}`", .0.token, .0.protocol, describe(.0.range), .0.protocol, .0.range.start(), .0.range.count())]
    Persistent(Box<Reservation>),
    /// The asker is neither the owning process nor an administrator.
    #[error("reservation {} ({} {}) belongs to {}; only that process or an administrator may release it", .0.token, .0.protocol, describe(.0.range), .0.holder_description())]
    PermissionDenied(Box<Reservation>),
}

impl ReleaseError {
    /// This error as `viewer_uid` may read it: another user's owner hidden unless the viewer
    /// is an administrator (see `Reservation::seen_by`).
    pub fn seen_by(self, viewer_uid: u32, is_admin: bool) -> Self {
        match self {
            ReleaseError::PermissionDenied(r) => {
                ReleaseError::PermissionDenied(Box::new(r.seen_by(viewer_uid, is_admin)))
            }
            other => other,
        }
    }

    /// The kind of failure (docs/errors.md).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReleaseError::NotFound(_) => ErrorKind::NotFound,
            ReleaseError::Persistent(_) => ErrorKind::InvalidArgument,
            ReleaseError::PermissionDenied(_) => ErrorKind::PermissionDenied,
        }
    }
}

/// Why a reservation may not be used to bind a socket.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UseError {
    /// No live reservation has this token.
    #[error("no reservation has token {0}; it was released already or never existed (`berth list` shows the live ones)")]
    NotFound(crate::token::Token),
    /// A runtime reservation restored after a daemon restart, not re-claimed by its owner yet:
    /// it cannot be used until it is, or it would be lost when the grace period ends while
    /// its owner believes it holds it.
    #[error("reservation {0} came back after a restart of the berth daemon and waits for its owner to re-claim it; re-claim it first (the client libraries do when they reconnect), or it is released when the grace period ends")]
    Unclaimed(crate::token::Token),
    /// The asker may not use it: not the process that acquired a runtime reservation, or
    /// neither an administrator nor named by a persistent one.
    #[error("{}", not_owner_message(reservation, *requester_pid))]
    NotOwner {
        /// The reservation.
        reservation: Box<Reservation>,
        /// Who asked.
        requester_pid: u32,
    },
}

impl UseError {
    /// This error as `viewer_uid` may read it (see `Reservation::seen_by`).
    pub fn seen_by(self, viewer_uid: u32, is_admin: bool) -> Self {
        match self {
            UseError::NotOwner {
                reservation,
                requester_pid,
            } => UseError::NotOwner {
                reservation: Box::new(reservation.seen_by(viewer_uid, is_admin)),
                requester_pid,
            },
            other => other,
        }
    }

    /// The kind of failure (docs/errors.md).
    pub fn kind(&self) -> ErrorKind {
        match self {
            UseError::NotFound(_) | UseError::Unclaimed(_) => ErrorKind::NotFound,
            UseError::NotOwner { .. } => ErrorKind::PermissionDenied,
        }
    }
}

/// "port 8080" or "ports 8080-8089", for messages.
pub fn describe(range: PortRange) -> String {
    if range.count() == 1 {
        format!("port {range}")
    } else {
        format!("ports {range}")
    }
}

fn not_owner_message(r: &Reservation, requester_pid: u32) -> String {
    match r.kind() {
        Kind::Runtime => format!(
            "reservation {} ({} {}) belongs to {}, and only that process may use it (pid {requester_pid} asked); acquire a reservation of your own",
            r.token,
            r.protocol,
            describe(r.range),
            r.holder_description()
        ),
        Kind::Persistent => format!(
            "persistent reservation {} ({} {}) may be used by administrators and by the users and groups it was created for, and pid {requester_pid} is neither; ask an administrator to recreate it with --allow-user/--allow-group",
            r.token,
            r.protocol,
            describe(r.range)
        ),
    }
}

/// "uid 1000 holds 2000 ports of its quota of 2048, and this request asks for 2000 more
/// ports; …" — or, for the shared range, what all capped users hold together.
fn quota_message(uid: u32, what: QuotaKind, limit: u32, used: u32, asked: u16) -> String {
    let ask = quota_ask(what, asked);
    match what {
        QuotaKind::Shared => format!(
            "users without administrator rights together hold {used} ports of the shared range, whose limit is {limit}, and this request of uid {uid} {ask}; release reservations you no longer need (`berth list`), or ask an administrator"
        ),
        _ => format!(
            "uid {uid} holds {used} {} of its quota of {limit}, and this request {ask}; release reservations you no longer need (`berth list`), or ask an administrator for a larger quota",
            what.as_str()
        ),
    }
}

/// What a request over a quota asks for, in the quota's own unit: "would need another
/// reservation", "asks for 4 more ports".
fn quota_ask(what: QuotaKind, asked_ports: u16) -> String {
    let plural = if asked_ports == 1 { "" } else { "s" };
    match what {
        QuotaKind::Reservations => "would need another reservation".to_owned(),
        QuotaKind::Ports | QuotaKind::Shared => {
            format!("asks for {asked_ports} more port{plural}")
        }
        QuotaKind::HeldPorts => format!("asks for {asked_ports} more held port{plural}"),
    }
}
