//! What a daemon is told at start-up.

use std::path::PathBuf;
use std::time::Duration;

use berth_core::{Pool, PrivilegedPorts, Quota};

/// The most connections served at once unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The most connections of one user (not root, not the daemon's own user) unless configured
/// otherwise.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 256;

/// The grace period after a restart unless configured otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// How long a session that holds nothing may stay silent unless configured otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Each non-administrator's limits unless configured otherwise: room for a busy developer or
/// CI user (a test runner's worker pool with a few ports per worker), far from what it takes
/// to starve the host — see docs/decisions.md, "Safe defaults".
pub const DEFAULT_QUOTA: Quota = Quota {
    max_reservations: 512,
    max_ports: 2048,
    max_held_ports: 1024,
};

/// The part of the host's ephemeral range, in percent, that non-administrators together may
/// reserve unless configured otherwise: the other half stays for every program's `connect()`.
pub const DEFAULT_EPHEMERAL_SHARE: u8 = 50;

/// A daemon's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Unix socket to listen on.
    pub socket: PathBuf,
    /// The database file: persistent reservations (and the runtime journal beside it, unless
    /// `runtime_dir` says otherwise).
    pub db: PathBuf,
    /// The daemon's runtime directory, where its runtime journal lives (named after the
    /// database: `berth_store::runtime_journal_in`): a tmpfs such as `/run` suits it, as its
    /// rows end with the boot anyway. `berth daemon` gives its socket's directory. `None`:
    /// beside the database, `<database>.runtime`. A journal found beside the database moves
    /// here at start-up.
    pub runtime_dir: Option<PathBuf>,
    /// Where wildcard blocks come from.
    pub pool: Pool,
    /// Connections served at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Connections of one user served at once (root and the daemon's own user are exempt);
    /// one more is answered "busy" and closed.
    pub max_connections_per_uid: usize,
    /// How long a new connection may take to send its hello before it is closed.
    pub handshake_timeout: Duration,
    /// How long a session may stay silent (no request) while it holds nothing — no reservation
    /// bound to it, no request unanswered — before the daemon closes it, with a last frame
    /// saying why (`ErrorDetail::Idle`). A session that holds a reservation is never closed for
    /// silence. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// How long writing one response may take before the client is deemed stuck and its
    /// connection closed.
    pub write_timeout: Duration,
    /// Who may reserve and bind privileged ports.
    pub privileged: PrivilegedPorts,
    /// Members of these groups are administrators (besides root and the daemon's user).
    pub admin_groups: Vec<u32>,
    /// After a restart, how long runtime reservations of the previous daemon are held for
    /// their owners to re-claim.
    pub grace: Duration,
    /// Each non-administrator's limits on runtime reservations ([`Quota::UNLIMITED`]: none);
    /// administrators are exempt.
    pub quota: Quota,
    /// The percentage of the host's ephemeral range (`ip_local_port_range`, read live) that
    /// non-administrators together may reserve; `None`: no such cap.
    pub ephemeral_share: Option<u8>,
    /// Fault injection (tests of what the daemon does when its disk fails): all off unless a
    /// caller turns a switch on.
    pub faults: crate::Faults,
    /// The authority beacon: an abstract Unix socket by this name (scoped by the network
    /// namespace) that only one daemon per network namespace can hold; a second daemon refuses
    /// to start, naming the first. `None` binds no beacon (in-process test daemons, many in one
    /// namespace, each with pools of its own).
    pub authority: Option<String>,
    /// Whether to keep `net.ipv4.ip_local_reserved_ports` (see `kernel`): off unless asked,
    /// so an embedded or test daemon never touches the host; `berth daemon` asks for `auto`.
    pub kernel_sync: crate::mirror::kernel::KernelSync,
    /// Where an administrator's `net.ipv4.ip_local_reserved_ports` entries are configured
    /// (sysctl files and directories): a port listed there is the administrator's whenever it
    /// is in the kernel's list, and stays listed when a reservation that covered it ends. The
    /// standard places unless a caller says otherwise.
    pub configured_reserved_ports: Vec<PathBuf>,
    /// Whether the pool is the default one, which follows the kernel's ephemeral range when
    /// it changes (`berth daemon` without `--pool` or a `pool` key); otherwise it is fixed.
    pub pool_follows_ephemeral: bool,
    /// The portserver endpoint (Google's portpicker protocol; see `portserver`), or `None`
    /// for none: off unless asked, like every other reach beyond the daemon's own socket;
    /// `berth daemon` turns it on for the system instance.
    pub portserver: Option<crate::portserver::Endpoint>,
    /// Whether the daemon holds the ports of reservations acquired with hold (binds them itself
    /// until their owner binds them, so that other programs' explicit binds fail). Off, every
    /// reservation is granted unheld (its `held` says so) and the daemon keeps no hold sockets.
    pub hold: bool,
    /// How many ports of the pool kernel sync lists ahead of grants (at its start): unheld
    /// wildcard blocks come from them first, protected at once with no write of the list to
    /// wait for, and released with none either. Within the room for extra entries (the unused
    /// ephemeral share); 0 for none.
    pub listed_ahead: u16,
    /// How long kernel sync trusts a list it saw holding the ports listed ahead before a grant
    /// there reads it again ([`DEFAULT_LISTED_AHEAD_TRUST`]): a read costs the kernel a walk of
    /// all 65,536 ports, and another tool's rewrite of the list is noticed by the first grant
    /// after this long. Zero: every grant there reads (tests that rewrite the list).
    pub listed_ahead_trust: Duration,
    /// The reuse cool-down: wildcard picks pass by ports freed less than this long ago while
    /// other ports fit, so that a port just released does not reach the next asker while the
    /// last owner's connections linger. Zero: none.
    pub reuse_cool_down: Duration,
    /// How many names each user's memory keeps (the block each was last given); past it the
    /// least recently given is forgotten.
    pub max_names_per_user: usize,
    /// Names not given for this long are forgotten (their blocks are then ordinary ports).
    pub forget_names_after: Duration,
    /// Enforce mode: whether it is allowed, where its programs attach, where `berth run
    /// --enforce` cgroups are made.
    pub enforce: crate::mirror::enforce::Settings,
}

/// Names remembered per user by default ([`Config::max_names_per_user`]).
pub const DEFAULT_MAX_NAMES_PER_USER: usize = 64;

/// The most names a user may be allowed to keep ([`Config::max_names_per_user`]).
pub const MAX_NAMES_PER_USER: usize = 4096;

/// How long an unused name is remembered by default ([`Config::forget_names_after`]): 90 days.
pub const DEFAULT_FORGET_NAMES_AFTER: Duration = Duration::from_secs(90 * 24 * 3600);

/// The default reuse cool-down ([`Config::reuse_cool_down`]): Linux's `TIME_WAIT` length.
pub const DEFAULT_REUSE_COOL_DOWN: Duration = Duration::from_secs(60);

/// Ports listed ahead by default ([`Config::listed_ahead`]): enough for a busy test suite's
/// portpicker ports at once, and under half a percent of Linux's default ephemeral range.
pub const DEFAULT_LISTED_AHEAD: u16 = 128;

/// See [`Config::listed_ahead_trust`].
pub const DEFAULT_LISTED_AHEAD_TRUST: Duration = Duration::from_millis(10);

/// The most ports a configuration may list ahead.
pub const MAX_LISTED_AHEAD: u16 = 1024;

impl Config {
    /// Settings with the given socket, database and pool, and defaults for the rest.
    pub fn new(socket: PathBuf, db: PathBuf, pool: Pool) -> Self {
        Config {
            socket,
            db,
            pool,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            privileged: PrivilegedPorts {
                unprivileged_start: unprivileged_port_start(),
                ..PrivilegedPorts::default()
            },
            admin_groups: Vec::new(),
            grace: DEFAULT_GRACE,
            quota: DEFAULT_QUOTA,
            ephemeral_share: Some(DEFAULT_EPHEMERAL_SHARE),
            faults: crate::Faults::default(),
            kernel_sync: crate::mirror::kernel::KernelSync::Off,
            configured_reserved_ports: berth_os::reserved_ports::CONFIG_PLACES
                .iter()
                .map(PathBuf::from)
                .collect(),
            pool_follows_ephemeral: false,
            authority: Some(berth_protocol::authority::DEFAULT_NAME.to_owned()),
            portserver: None,
            hold: true,
            runtime_dir: None,
            listed_ahead: DEFAULT_LISTED_AHEAD,
            listed_ahead_trust: DEFAULT_LISTED_AHEAD_TRUST,
            reuse_cool_down: DEFAULT_REUSE_COOL_DOWN,
            max_names_per_user: DEFAULT_MAX_NAMES_PER_USER,
            forget_names_after: DEFAULT_FORGET_NAMES_AFTER,
            enforce: crate::mirror::enforce::Settings::default(),
        }
    }
}

/// The kernel's ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`), the default
/// wildcard pool. Falls back to Linux's default 32768-60999 when it cannot be read.
pub fn ephemeral_pool() -> Pool {
    let parsed = berth_os::proc::read_file("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|w| w.parse::<u16>());
            match (it.next(), it.next()) {
                (Some(Ok(lo)), Some(Ok(hi))) => Pool::new(lo, hi).ok(),
                _ => None,
            }
        });
    parsed.unwrap_or_else(|| {
        tracing::warn!(
            "cannot read ip_local_port_range; using the pool {}",
            Pool::LINUX_DEFAULT
        );
        Pool::LINUX_DEFAULT
    })
}

/// `net.ipv4.ip_unprivileged_port_start` of the daemon's network namespace (1024 when it
/// cannot be read).
pub fn unprivileged_port_start() -> u16 {
    berth_os::proc::read_file("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1024)
}
