//! The messages of protocol version 1.
//!
//! Variant order is part of the wire format (postcard encodes the variant index): add new
//! variants at the end. Once version 1 is released, a new variant a peer must understand is a
//! new protocol version (see "Compatibility rules" in `docs/protocol.md`); the golden bytes in
//! `tests/integration/golden.rs` pin the shape of every message.

use std::net::IpAddr;

use berth_core::{ErrorKind, Kind, Pool, PortRange, Protocol, Token};
use serde::{Deserialize, Serialize};

use crate::detail::ErrorDetail;

/// The longest program or command name carried in a message, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// The first frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`crate::MAGIC`].
    pub magic: [u8; 4],
    /// The oldest protocol version the client speaks.
    pub min_version: u16,
    /// The newest protocol version the client speaks.
    pub max_version: u16,
    /// The client's name and version, for the daemon's log (at most [`MAX_NAME_LEN`] bytes
    /// are kept).
    pub client: String,
}

impl Hello {
    /// The hello of this build: all versions it speaks.
    pub fn current(client: &str) -> Self {
        Hello {
            magic: crate::MAGIC,
            min_version: crate::MIN_PROTOCOL_VERSION,
            max_version: crate::PROTOCOL_VERSION,
            client: berth_core::Owner::printable_command(client),
        }
    }
}

/// A client's frame.
///
/// Deliberately not `#[non_exhaustive]`: the daemon must match every variant, so that adding
/// one fails to compile until the daemon answers it, instead of falling into a catch-all arm
/// and reaching clients as a silent invalid-argument. (Clients only construct requests, which
/// exhaustiveness does not affect.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The handshake; must be the first frame, and only the first. Frozen across versions.
    Hello(Hello),
    /// Reserve ports. `start == 0` asks for any free block of `count` ports from the pool. The values are sent raw so that the daemon can answer a bad range with an
    /// invalid-argument error rather than a decoding failure.
    Acquire {
        /// Which port space.
        protocol: Protocol,
        /// First port, or 0 for "any block".
        start: u16,
        /// Number of ports, at least 1.
        count: u16,
    },
    /// Release a reservation by token (the owning process or an administrator).
    Release {
        /// The reservation's token (0 is answered with invalid-argument).
        token: u64,
    },
    /// List reservations.
    List,
    /// The daemon's status.
    Status,
    /// Bind the socket sent with this frame (`SCM_RIGHTS`, exactly one descriptor) to a free
    /// port of the reservation `token`, on `address` (default: the unspecified address of the
    /// socket's family).
    Associate {
        /// The reservation's token.
        token: u64,
        /// The local address to bind; its family must match the socket's.
        address: Option<IpAddr>,
    },
    /// Create a persistent reservation (administrators only). `start` must not be 0.
    CreatePersistent {
        /// Which port space.
        protocol: Protocol,
        /// First port.
        start: u16,
        /// Number of ports.
        count: u16,
        /// Users (uids) who may bind from it besides administrators; at most
        /// [`MAX_ALLOW_LIST`].
        allow_users: Vec<u32>,
        /// Groups (gids) whose members may bind from it; at most [`MAX_ALLOW_LIST`].
        allow_groups: Vec<u32>,
        /// What it is for, shown to everyone ("" for none; see [`AcquireOptions::label`]).
        label: String,
        /// Its host-wide name ("" for none; see [`AcquireOptions::name`]).
        name: String,
    },
    /// Delete the persistent reservation of exactly this range (administrators only).
    DeletePersistent {
        /// Which port space.
        protocol: Protocol,
        /// First port.
        start: u16,
        /// Number of ports.
        count: u16,
    },
    /// The token of the persistent reservation of exactly this range (open to everyone).
    LookupPersistent {
        /// Which port space.
        protocol: Protocol,
        /// First port.
        start: u16,
        /// Number of ports.
        count: u16,
    },
    /// After a daemon restart: take back a runtime reservation this process held, by token.
    /// The daemon checks the sender's credentials against the journaled owner.
    Reclaim {
        /// The reservation's token.
        token: u64,
    },
    /// Stop the daemon gracefully, as SIGTERM would (administrators only: root, the daemon's
    /// own user, members of its admin groups). Answered before the daemon stops accepting.
    Stop,
    /// Hand the sender's runtime reservation `token` to process `pid` — a child of the sender
    /// with the same user — which owns it from then on: it lives exactly as long as that
    /// process. `berth run` hands its reservation to the command it starts, so that the ports
    /// stay reserved while the command runs even if `berth run` itself is killed.
    Transfer {
        /// The reservation's token.
        token: u64,
        /// The process that becomes its owner.
        pid: u32,
    },
    /// [`Request::Acquire`] with options. `hold`: the daemon keeps every port of the block
    /// that its owner has not bound bound itself (a non-listening socket without
    /// `SO_REUSEADDR`/`SO_REUSEPORT`), so that every other program's explicit bind to them
    /// fails; the owner binds its sockets through [`Request::Associate`]. A reservation that is
    /// not held (plain `Acquire`) is only hidden from automatic port assignment: its owner binds
    /// its ports by number. The options also carry a label and a wildcard's bounds.
    AcquireWith {
        /// Which port space.
        protocol: Protocol,
        /// First port, or 0 for "any block".
        start: u16,
        /// Number of ports, at least 1.
        count: u16,
        /// Hold, label, bounds.
        options: AcquireOptions,
    },
    /// Explain one port: reserved (by whom, held or bound), bound by a process on the host,
    /// in the pool or the ephemeral range, or free.
    Why {
        /// Which port space.
        protocol: Protocol,
        /// The port (0 is answered with invalid-argument).
        port: u16,
    },
    /// The same ports in TCP and in UDP, granted together or not at all (for a service that
    /// listens on both): two reservations, answered with [`Response::AcquiredBoth`].
    AcquireBoth {
        /// First port, or 0 for any block free in both protocols.
        start: u16,
        /// Number of ports, at least 1.
        count: u16,
        /// Hold, label, bounds (for both reservations).
        options: AcquireOptions,
    },
    /// [`Request::Associate`] on exactly `port` of the reservation (the Windows pattern of
    /// associating, then binding one exact port): answered with that port or an error, never
    /// another port. The socket travels as with `Associate`.
    AssociateAt {
        /// The reservation's token.
        token: u64,
        /// The local address to bind; its family must match the socket's.
        address: Option<IpAddr>,
        /// The port, which must lie in the reservation.
        port: u16,
    },
    /// [`Request::Stop`], saying what becomes of the daemon's entries in the kernel's
    /// reserved-ports list. `restore: false` is a plain stop: entries of runtime reservations
    /// whose owners still run stay listed for the next daemon, the rest go. `restore: true`
    /// takes every entry of the daemon's out (before an uninstall, say).
    StopWith {
        /// Take out every entry the daemon wrote, those of live owners too.
        restore: bool,
    },
    /// The live reservations of a name (open to everyone; owner details as in a list):
    /// `user`'s runtime ones, or — with `user: None` — the asker's own, else the host's
    /// persistent ones. Answered with [`Response::Named`], or not-found.
    LookupName {
        /// Whose name: a uid, or `None` for the asker's (then the host's).
        user: Option<u32>,
        /// The name.
        name: String,
    },
    /// [`Request::LookupName`], answered once the name exists — and, with `bound`, once a
    /// socket is bound to a port of each of its reservations, as the kernel reports it — or
    /// with not-found when `timeout_ms` passes first (at most [`MAX_WAIT_MS`]).
    WaitName {
        /// Whose name (see [`Request::LookupName`]).
        user: Option<u32>,
        /// The name.
        name: String,
        /// Wait for a bound socket too.
        bound: bool,
        /// How long to wait, in milliseconds.
        timeout_ms: u32,
    },
    /// The asker's remembered names: the block each was last given ([`Response::Names`]).
    ListNames,
    /// Forget the asker's name: its remembered blocks in both protocols (a live reservation
    /// keeps its name until it ends). Answered with [`Response::Names`], what was forgotten;
    /// not-found when there was nothing.
    ForgetName {
        /// The name.
        name: String,
    },
    /// Name a port that a process of the asker's user has bound already, by other means: it
    /// becomes a runtime reservation of that port, owned by that process (found through the
    /// kernel: the socket bound to the port, and the process that holds it — the asker itself
    /// when it is one of them) and living as long as it does. Answered with
    /// [`Response::Acquired`].
    Publish {
        /// The name.
        name: String,
        /// Which port space.
        protocol: Protocol,
        /// The port (0 is answered with invalid-argument).
        port: u16,
    },
    /// The persistent reservation of exactly this range, for an asker allowed to use it (an
    /// administrator, or a user or group member of its allow list): answered with
    /// [`Response::PersistentFound`], permission-denied for anyone else. Nothing is reserved:
    /// the asker's programs bind its ports by number, alongside any other allowed user's.
    UsePersistent {
        /// Which port space.
        protocol: Protocol,
        /// First port.
        start: u16,
        /// Number of ports.
        count: u16,
    },
    /// Administrators: switches enforce mode off at once (`on: false`: the programs are
    /// detached and unpinned; enforced requests are refused until it is switched on again or
    /// the daemon restarts; cgroup-owned reservations stay, kept by the kernel's reserved-ports
    /// list only) or on again (re-attached for the cgroup-owned reservations there are).
    /// Answered with [`Response::Status`].
    SetEnforce {
        /// On or off.
        on: bool,
    },
}

/// The longest wait of a [`Request::WaitName`], in milliseconds (one hour).
pub const MAX_WAIT_MS: u32 = 3_600_000;

/// What an acquire asks for besides its ports ([`Request::AcquireWith`],
/// [`Request::AcquireBoth`]). The default: not held, no label, the pool.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AcquireOptions {
    /// Whether the daemon holds the ports its owner has not bound (see
    /// [`Request::AcquireWith`]).
    pub hold: bool,
    /// What the reservation is for, for people to read (the test or job): at most
    /// [`berth_core::MAX_LABEL_LEN`] bytes of UTF-8 without control characters; "" for none.
    /// Shown with the owner, to the same people.
    pub label: String,
    /// A wildcard request's bounds, `(first, last)` inclusive: any free block inside them,
    /// in the pool or not, instead of one from the pool. `start` must then be 0.
    pub within: Option<(u16, u16)>,
    /// The reservation's name: `[a-z0-9][a-z0-9._-]*` segments joined by `/`, at most
    /// [`berth_core::MAX_NAME_LEN`] bytes; "" for none. Unique among the asker's user's live
    /// runtime reservations of the protocol. A wildcard request for a name is given the block
    /// the name was last given when it is free (and inside `within`, if given).
    pub name: String,
    /// Enforce mode: the reservation is owned by a cgroup and the kernel keeps its ports for
    /// that cgroup's tasks (`bind(0)` there draws from it; everyone else's bind of its ports
    /// fails with `EADDRINUSE`); it lives until the cgroup has no process left. `None`: owned
    /// by the asking process, as usual. Refused with not-supported, naming the reason, where
    /// the daemon cannot enforce.
    pub enforce: Option<Enforce>,
}

/// Which cgroup owns an enforced reservation (see [`AcquireOptions::enforce`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enforce {
    /// A new cgroup the daemon makes for the asking process, which it moves there: the
    /// asker's children, and theirs, are born in it (`berth run --enforce`).
    NewCgroup,
    /// An existing cgroup (a service's, a container's), by its path below the root of the
    /// cgroup v2 hierarchy ("/system.slice/nginx.service"). Administrators only.
    Cgroup(String),
}

impl AcquireOptions {
    /// Held (the daemon holds the ports its owner has not bound), no label, the pool.
    pub fn held() -> Self {
        AcquireOptions {
            hold: true,
            ..AcquireOptions::default()
        }
    }

    /// The same options with `label` (see [`AcquireOptions::label`]).
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// The same options with `name` (see [`AcquireOptions::name`]).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The same options, owned by `enforce`'s cgroup (see [`AcquireOptions::enforce`]).
    #[must_use]
    pub fn enforce(mut self, enforce: Enforce) -> Self {
        self.enforce = Some(enforce);
        self
    }

    /// The same options bounded to `first..=last` (see [`AcquireOptions::within`]).
    #[must_use]
    pub fn within(mut self, first: u16, last: u16) -> Self {
        self.within = Some((first, last));
        self
    }
}

/// The longest allow list of a persistent reservation.
pub const MAX_ALLOW_LIST: usize = 64;

/// A daemon's frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Answer to [`Request::Hello`]. Frozen across versions.
    Welcome(Welcome),
    /// Any request failed. Frozen across versions.
    Error(WireError),
    /// Answer to [`Request::Acquire`].
    Acquired(ReservationInfo),
    /// Answer to [`Request::Release`]: the released reservation.
    Released(ReservationInfo),
    /// Answer to [`Request::List`], ordered by protocol then start port.
    List(Vec<ReservationInfo>),
    /// Answer to [`Request::Status`].
    Status(StatusInfo),
    /// Answer to [`Request::Associate`]: the socket is bound to this port.
    Associated {
        /// The port the socket was bound to.
        port: u16,
    },
    /// Answer to [`Request::CreatePersistent`]: durable when sent.
    PersistentCreated(ReservationInfo),
    /// Answer to [`Request::DeletePersistent`]: durable when sent.
    PersistentDeleted(ReservationInfo),
    /// Answer to [`Request::LookupPersistent`].
    PersistentFound(ReservationInfo),
    /// Answer to [`Request::Reclaim`]: the reservation belongs to this session now.
    Reclaimed(ReservationInfo),
    /// Answer to [`Request::Stop`]: the daemon (this pid) stops once the answer is sent; its
    /// socket closes when every session has drained.
    Stopping {
        /// The daemon's process id.
        pid: u32,
    },
    /// Answer to [`Request::Transfer`]: the reservation, with its new owner.
    Transferred(ReservationInfo),
    /// Answer to [`Request::Why`] (boxed only to keep every response small in memory; the
    /// wire shape is the report's).
    Why(Box<PortReport>),
    /// Answer to [`Request::AcquireBoth`]: the TCP and the UDP reservation of the same ports.
    AcquiredBoth {
        /// The TCP reservation (boxed, like the UDP one, to keep responses small in memory;
        /// the wire shape is the info's).
        tcp: Box<ReservationInfo>,
        /// The UDP reservation.
        udp: Box<ReservationInfo>,
    },
    /// Answer to [`Request::LookupName`] and [`Request::WaitName`]: the name's live
    /// reservations (one per protocol), TCP first.
    Named(Vec<ReservationInfo>),
    /// Answer to [`Request::ListNames`] and [`Request::ForgetName`], ordered by name then
    /// protocol.
    Names(Vec<NameInfo>),
}

/// What the daemon knows about one port (answer to [`Request::Why`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortReport {
    /// The port space.
    pub protocol: Protocol,
    /// The port.
    pub port: u16,
    /// The reservation that covers it, if any (owner details as in a list).
    pub reservation: Option<ReservationInfo>,
    /// Sockets bound to the port on the host, as the kernel lists them (at most
    /// [`MAX_SOCKETS_REPORTED`]).
    pub sockets: Vec<SocketInfo>,
    /// Whether it is in the daemon's wildcard pool.
    pub in_pool: bool,
    /// Whether it is in the kernel's ephemeral range (`ip_local_port_range`): then any
    /// `connect()` or `bind(0)` may be given it unless it is listed in `ip_local_reserved_ports`.
    pub in_ephemeral_range: bool,
    /// Whether `ip_local_reserved_ports` lists it (hidden from automatic assignment).
    pub kernel_reserved: bool,
    /// Binds of it the kernel refused (enforce mode: a cgroup owns it), if any.
    pub refusals: Option<RefusalInfo>,
}

/// The binds of a port that enforce mode's programs refused, counted since the port was owned,
/// and the last one (see [`PortReport::refusals`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalInfo {
    /// How many binds were refused.
    pub count: u64,
    /// When the last one was, in milliseconds since the Unix epoch.
    pub last_at_ms: u64,
    /// The process refused last, when the asker may see it (its own user's, or the asker is an
    /// administrator); `None` otherwise.
    pub last_by: Option<OwnerInfo>,
    /// That process's cgroup, below the cgroup v2 hierarchy's root (shown with `last_by`).
    pub last_cgroup: Option<String>,
}

/// The most sockets a [`PortReport`] lists.
pub const MAX_SOCKETS_REPORTED: usize = 32;

/// One socket bound to a port, from `NETLINK_SOCK_DIAG` and `/proc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    /// The local address, e.g. `"0.0.0.0:8080"` or `"[::]:8080"`.
    pub local: String,
    /// The TCP state in the kernel's words (`LISTEN`, `ESTABLISHED`, `TIME_WAIT`, `CLOSE` for
    /// bound but not listening …), or `UNCONN`/`ESTAB` for UDP.
    pub state: String,
    /// The process that has it open, when the daemon may see it (another user's process is
    /// shown to administrators only); `None` also for sockets no process holds (`TIME_WAIT`).
    pub owner: Option<OwnerInfo>,
    /// The daemon's own hold socket for a reservation.
    pub held_by_berth: bool,
}

/// The daemon's side of the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version both sides speak from now on.
    pub version: u16,
    /// The daemon's release, e.g. `"0.1.0"`.
    pub daemon_version: String,
    /// The daemon's process id.
    pub daemon_pid: u32,
}

/// A failure: its kind, a message for people, and the same facts in numbers for programs.
///
/// Frozen across versions up to its trailing `detail`: a reader that knows only `kind` and
/// `message` ignores the bytes after them, and a reader that knows `detail` decodes
/// [`ErrorDetail::None`] when those bytes are missing (an older daemon) or name a detail it
/// does not know (a newer one). That leniency is sound only because a `WireError` is always the
/// last thing in its frame; keep it so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WireError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, with the values involved, and what to do.
    pub message: String,
    /// The values involved, for programs (the C library, scripts) that must not parse
    /// `message`.
    pub detail: ErrorDetail,
}

impl WireError {
    /// An error without detail.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
            detail: ErrorDetail::None,
        }
    }

    /// The same error with `detail`.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<ErrorDetail>) -> Self {
        self.detail = detail.into();
        self
    }
}

impl<'de> Deserialize<'de> for WireError {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = WireError;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an error: kind, message, detail")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<WireError, A::Error> {
                use serde::de::Error;
                let kind = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let message = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                // Missing (older daemon) or unknown (newer daemon): no detail, not a failure.
                // Whatever a failed attempt consumed is trailing bytes of the frame.
                let detail = seq.next_element().ok().flatten().unwrap_or_default();
                Ok(WireError {
                    kind,
                    message,
                    detail,
                })
            }
        }
        deserializer.deserialize_struct("WireError", &["kind", "message", "detail"], Fields)
    }
}

/// A reservation as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationInfo {
    /// Its name.
    pub token: Token,
    /// Which port space.
    pub protocol: Protocol,
    /// The ports.
    pub range: PortRange,
    /// Runtime or persistent.
    pub kind: Kind,
    /// The owning process; `None` for persistent reservations and for reservations of other
    /// users when the asker is not an administrator.
    pub owner: Option<OwnerInfo>,
    /// When it was acquired, in milliseconds since the Unix epoch.
    pub acquired_at_ms: u64,
    /// Its age when the daemon answered, in milliseconds.
    pub age_ms: u64,
    /// Whether the daemon holds its ports (see [`Request::AcquireWith`]).
    pub held: bool,
    /// The ports its owner has bound from it through associate, as far as the daemon knows.
    pub bound: Vec<u16>,
    /// What it is for, in its owner's words; `None` when it has no label or the asker may not
    /// see its owner.
    pub label: Option<String>,
    /// Its name (names are public: anyone may look one up).
    pub name: Option<String>,
    /// In the answer to an acquire for a name only: the block the name was given last time,
    /// when it could not be given again (something else took a port of it); the name's
    /// memory moved to this reservation's block.
    pub moved_from: Option<PortRange>,
    /// A persistent reservation's allow list: the users (uids) who may use it besides
    /// administrators (empty for a runtime reservation).
    pub allow_users: Vec<u32>,
    /// The groups (gids) whose members may use it.
    pub allow_groups: Vec<u32>,
    /// The cgroup that owns it (enforce mode), by its path below the root of the cgroup v2
    /// hierarchy; shown to whoever may see its owner.
    pub cgroup: Option<String>,
}

/// A name as the daemon remembers it (see [`Request::ListNames`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameInfo {
    /// The name.
    pub name: String,
    /// Which port space.
    pub protocol: Protocol,
    /// The block it was last given (and gets again while free).
    pub range: PortRange,
    /// When it was last given, in milliseconds since the Unix epoch.
    pub last_used_ms: u64,
    /// Whether a live reservation has it now.
    pub live: bool,
}

/// The owner of a runtime reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerInfo {
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Command name.
    pub command: String,
}

/// What `berth status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The daemon's release.
    pub version: String,
    /// The protocol version of this connection.
    pub protocol_version: u16,
    /// The daemon's process id.
    pub pid: u32,
    /// The socket it listens on.
    pub socket: String,
    /// When it started, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// The wildcard pool.
    pub pool: Pool,
    /// Live reservations.
    pub reservations: u32,
    /// Reserved TCP ports.
    pub tcp_ports: u32,
    /// Reserved UDP ports.
    pub udp_ports: u32,
    /// Of the live reservations, the persistent ones (the rest are runtime).
    pub persistent: u32,
    /// Ports of the wildcard pool no reservation covers: `(tcp, udp)`.
    pub pool_free: (u32, u32),
    /// Open client connections.
    pub sessions: u32,
    /// The daemon's descriptor limit (soft `RLIMIT_NOFILE`, raised to the hard limit at
    /// start-up; `u64::MAX` = unlimited): connections and owner watches each take one.
    pub open_files_limit: u64,
    /// Whether the daemon keeps `net.ipv4.ip_local_reserved_ports` (reservations hidden from
    /// automatic port assignment).
    pub kernel_sync: bool,
    /// Why not, when it does not; empty otherwise.
    pub kernel_sync_off_because: String,
    /// Hold sockets the daemon keeps open (one per held port and family); with the
    /// connections, they count against `open_files_limit`.
    pub hold_sockets: u32,
    /// Whether the daemon holds the ports of reservations acquired with hold.
    pub hold: bool,
    /// Why not, when it does not; empty otherwise.
    pub hold_off_because: String,
    /// Descriptors the daemon has open (`/proc/self/fd`, counted at most once a second).
    pub open_files: u32,
    /// The asker's quota, when one applies to it (administrators have none).
    pub quota: Option<QuotaInfo>,
    /// The asker's own runtime use, counted by the daemon.
    pub usage: UsageInfo,
    /// The part of the host's ephemeral range that users without administrator rights may
    /// reserve together, and what they hold; `None` when no such cap applies.
    pub ephemeral_share: Option<ShareInfo>,
    /// Runtime use per user: every user's for an administrator, the asker's own otherwise;
    /// ordered by uid.
    pub users: Vec<UserUsage>,
    /// Whose entries `ip_local_reserved_ports` holds, as of the daemon's last write; `None`
    /// when the daemon does not keep the list.
    pub kernel_list: Option<KernelListInfo>,
    /// The wildcard pool's ports inside the kernel's ephemeral range while the daemon does not
    /// keep the list (exposed to every program's `connect()`); `None` when none are.
    pub exposure: Option<ExposureInfo>,
    /// The reuse cool-down, in seconds: wildcard picks pass by ports freed less than this
    /// long ago while other ports fit (0: none).
    pub reuse_cool_down_s: u32,
    /// Which mode keeps reservations now: `"enforce"` (enforce mode's programs are attached:
    /// a cgroup owns a reservation), `"hold"` (hold sockets), or `"advisory"` (neither; the
    /// kernel's reserved-ports list only, when kernel sync runs).
    pub mode: String,
    /// Where enforce mode's programs are attached (a cgroup v2 directory), while they are.
    pub enforce_attached_at: Option<String>,
    /// Why a request for enforce mode would be refused here; empty when it would be honoured.
    pub enforce_unavailable_because: String,
    /// The portpicker endpoint, when the daemon is configured with one; `None` otherwise.
    pub portserver: Option<PortserverInfo>,
}

/// The portpicker endpoint (see `berth status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortserverInfo {
    /// Its address: `@name` (an abstract socket) or a socket path.
    pub address: String,
    /// Why the daemon does not answer there (another process holds the address — named when
    /// the daemon can tell — so portpicker clients reach that process); empty while it does.
    pub not_served_because: String,
    /// Requests answered with a port since the daemon started.
    pub answered: u64,
    /// Requests and connections refused since the daemon started (closed without a port: a
    /// malformed or missing request, a pid the asker may not name, the quota, the pool, the
    /// endpoint's connection limits).
    pub refused: u64,
}

/// A wildcard pool exposed to other programs' automatic port choice (see `berth status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureInfo {
    /// The pool's ports inside the ephemeral range.
    pub ports: PortRange,
    /// The kernel's ephemeral range (`net.ipv4.ip_local_port_range`), as last read.
    pub ephemeral: PortRange,
    /// Whether wildcard requests are refused for it (the default pool, which had no room
    /// outside the range); otherwise they are served (a pool an administrator chose).
    pub refused: bool,
}

/// The kernel's reserved-ports list as the daemon keeps it (see `berth status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelListInfo {
    /// Listed ports that are the daemon's, for its reservations.
    pub reserved: u32,
    /// Other ports the daemon listed: free ports listed ahead of grants, free ports joining
    /// scattered entries so that the list's value fits one kernel write (about 4 KiB), and
    /// released ports that stay listed while it does not (see `one_chunk`).
    pub extras: u32,
    /// Listed ports that are other tools' or an administrator's entries.
    pub foreign: u32,
    /// Entries repaired since the daemon started: stale write-backs of released ports taken
    /// out again, and the daemon's entries put back after another tool's rewrite took them
    /// out.
    pub repaired: u64,
    /// Whether the exact list fit one kernel write at the last write; if not, released ports
    /// stay listed until it does (a longer replacing write would leave a gap).
    pub one_chunk: bool,
}

/// A user's limits on runtime reservations (see `berth status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaInfo {
    /// Live runtime reservations at most (a TCP+UDP pair of the same ports counts once).
    pub max_reservations: u32,
    /// Port numbers in them at most (a number reserved in both protocols counts once).
    pub max_ports: u32,
    /// Ports of held reservations at most.
    pub max_held_ports: u32,
}

/// What a user holds, counted as its quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageInfo {
    /// Live runtime reservations.
    pub reservations: u32,
    /// Port numbers in them.
    pub ports: u32,
    /// Ports of held reservations.
    pub held_ports: u32,
}

/// One user's runtime use, in `StatusInfo::users`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUsage {
    /// The user.
    pub uid: u32,
    /// What it holds.
    pub usage: UsageInfo,
}

/// The ephemeral share: how much of the host's ephemeral range users without administrator
/// rights may reserve together, so that every program's `connect()` keeps ports to draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInfo {
    /// The ephemeral range (`net.ipv4.ip_local_port_range`) as the daemon last read it.
    pub range: PortRange,
    /// The share, in percent of the range.
    pub percent: u8,
    /// The share in ports: those users together hold at most this many port numbers of it.
    pub max_ports: u32,
    /// Port numbers of it they hold now.
    pub used: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handshake frames must keep their variant numbers in every version.
    #[test]
    fn handshake_variants_are_frozen() {
        let hello = postcard::to_allocvec(&Request::Hello(Hello::current("x"))).unwrap();
        assert_eq!(hello.first(), Some(&0));
        let welcome = postcard::to_allocvec(&Response::Welcome(Welcome {
            version: 1,
            daemon_version: String::new(),
            daemon_pid: 1,
        }))
        .unwrap();
        assert_eq!(welcome.first(), Some(&0));
        let error = postcard::to_allocvec(&Response::Error(WireError::new(
            ErrorKind::Incompatible,
            "",
        )))
        .unwrap();
        assert_eq!(error.first(), Some(&1));
    }
}
