//! The daemon's shared state and the answer to each request.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_core::{
    Allowed, Change, ErrorKind, Owner, PrivilegedPorts, Protocol, Requester, Reservation,
    SessionId, Table, TokenSource,
};
use berth_protocol::{OwnerInfo, Request, ReservationInfo, Response, StatusInfo, WireError};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::host::probe::Prober;
use crate::mirror::journal::Journal;
use crate::mirror::owner_watch::Watcher;
use crate::mirror::store_thread::StoreHandle;
use crate::mirror::{Pending, Stream};
use crate::session::inbound::{Credentials, Inbound};
use crate::session::peer::{groups_of, process_owner};
use berth_os::netns::NetNs;

mod persistent;
mod portserver;
mod privileged;
mod quota;
mod restore;
mod runtime;
mod why;

/// State shared by every session.
pub(crate) struct Shared {
    /// The allocation state; locked for short, non-blocking sections only.
    table: Mutex<Table>,
    /// Where every change of the table goes, in the table's order (see `changes`).
    stream: Stream,
    prober: Prober,
    /// The socket path, for `status`.
    socket: String,
    started_at_ms: u64,
    /// The daemon's own user: an administrator of its own instance.
    daemon_uid: u32,
    sessions: AtomicU32,
    next_session: AtomicU64,
    /// Who may use ports below the unprivileged start.
    privileged: PrivilegedPorts,
    /// The privileged-port boundary as last read (see `privileged`).
    boundary: privileged::Boundary,
    /// The daemon's network namespace: sockets from any other are refused.
    netns: NetNs,
    /// Members of these groups are administrators.
    admin_groups: Vec<u32>,
    /// Each non-administrator's limits on runtime reservations.
    quota: berth_core::Quota,
    /// The percentage of the ephemeral range non-administrators may reserve together.
    ephemeral_share: Option<u8>,
    /// The database's thread: persistent reservations and the runtime journal.
    store: StoreHandle,
    /// Whether the kernel's reserved-ports list is kept, and its writer.
    kernel: KernelState,
    /// The hold sockets of held reservations (also a consumer of the change stream).
    holds: Arc<crate::mirror::hold::Holds>,
    /// Whether acquires with hold are held (`hold` in the configuration).
    hold_enabled: bool,
    /// The threads that close what clients send (a close can block).
    closers: crate::session::closer::Closers,
    /// Turns at handling requests, shared fairly between users.
    turns: crate::server::fair::Turns,
}

/// Requests handled at once, at most; more wait their user's turn (see `fair::Turns`). Enough
/// that the kernel-sync writer's group commits gather many grants, few enough that a user's
/// flood of requests cannot keep another user's waiting for long.
const REQUEST_TURNS: usize = 64;

/// The kernel-sync side of the daemon.
struct KernelState {
    /// `None` once stopped, or when sync is off.
    writer: Mutex<Option<crate::mirror::kernel::sync::Writer>>,
    /// Why sync is off, for `status`.
    off_because: Option<String>,
    /// The entries others wrote in the kernel's list (when sync is on): wildcard blocks skip
    /// them, since those ports are someone else's.
    foreign: Option<crate::mirror::kernel::sync::Foreign>,
    /// Waits until the kernel's list has caught up with the table (when sync is on).
    listing: Option<crate::mirror::kernel::sync::Listing>,
}

/// One connected client, as the kernel identified it.
pub(crate) struct Peer {
    pub(crate) owner: Owner,
    pub(crate) session: SessionId,
    pub(crate) is_admin: bool,
    /// The protocol version agreed in the handshake.
    pub(crate) version: u16,
}

impl Shared {
    /// The shared state over an empty table; also returns where the owners to watch arrive
    /// (see `owner_watch`).
    pub(crate) fn new(
        config: &Config,
        store: StoreHandle,
        runtime: berth_store::RuntimeJournal,
        recorded: berth_core::PortSet,
    ) -> std::io::Result<(Self, mpsc::UnboundedReceiver<Owner>)> {
        if !config.hold {
            tracing::info!("hold is off: every reservation is granted unheld, and the daemon keeps no hold sockets");
        }
        let runtime = crate::mirror::journal::Runtime::new(runtime, config.faults.store());
        let (watcher, owners) = Watcher::new();
        let holds = Arc::new(crate::mirror::hold::Holds::new());
        let mut consumers: Vec<Box<dyn crate::mirror::Consumer>> = vec![
            Box::new(Journal::new(runtime.clone(), store.clone())),
            Box::new(watcher),
            Box::new(crate::mirror::hold::Consumer(holds.clone())),
        ];
        let kernel = match crate::mirror::kernel::decide(config.kernel_sync) {
            Ok(()) => {
                let (sync, writer) = crate::mirror::kernel::sync::Sync::start(
                    crate::mirror::kernel::reserved_ports::PATH.into(),
                    runtime,
                    recorded,
                )?;
                let foreign = sync.foreign();
                let listing = sync.listing();
                consumers.push(Box::new(sync));
                tracing::info!(
                    "keeping {} with every reservation",
                    crate::mirror::kernel::reserved_ports::PATH
                );
                KernelState {
                    writer: Mutex::new(Some(writer)),
                    off_because: None,
                    foreign: Some(foreign),
                    listing: Some(listing),
                }
            }
            Err(why) if config.kernel_sync == crate::mirror::kernel::KernelSync::On => {
                return Err(std::io::Error::other(format!(
                    "kernel sync was asked for, but {why}"
                )))
            }
            Err(why) => {
                tracing::info!("kernel sync is off: {why}");
                let ephemeral = crate::config::ephemeral_pool();
                if config.pool.range().overlaps(ephemeral.range()) {
                    tracing::warn!(
                        "the wildcard pool {} overlaps the kernel's ephemeral range {ephemeral} and kernel sync is off: other programs' connect() and bind(0) may be given reserved ports; choose a pool outside the ephemeral range, or let the daemon keep ip_local_reserved_ports (docs/kernel.md)",
                        config.pool
                    );
                }
                KernelState {
                    writer: Mutex::new(None),
                    off_because: Some(why),
                    foreign: None,
                    listing: None,
                }
            }
        };
        let stream = Stream::new(consumers);
        let mut table = Table::new(config.pool);
        if config.ephemeral_share.is_some() {
            table.set_shared_range(Some(crate::config::ephemeral_pool().range()));
        }
        let shared = Shared {
            table: Mutex::new(table),
            stream,
            prober: Prober::new(),
            socket: config.socket.display().to_string(),
            started_at_ms: now_ms(),
            daemon_uid: rustix::process::geteuid().as_raw(),
            sessions: AtomicU32::new(0),
            next_session: AtomicU64::new(1),
            privileged: config.privileged.clone(),
            boundary: privileged::Boundary::default(),
            netns: NetNs::current()?,
            admin_groups: config.admin_groups.clone(),
            quota: config.quota,
            ephemeral_share: config.ephemeral_share,
            store,
            kernel,
            holds,
            hold_enabled: config.hold,
            closers: crate::session::closer::Closers::new(),
            turns: crate::server::fair::Turns::new(REQUEST_TURNS),
        };
        Ok((shared, owners))
    }

    /// Whether `who` administers this daemon: root, the daemon's own user, or a member of an
    /// admin group.
    fn is_admin(&self, who: &Owner) -> bool {
        if who.uid == 0 || who.uid == self.daemon_uid {
            return true;
        }
        if self.admin_groups.is_empty() {
            return false;
        }
        groups_of(who).iter().any(|g| self.admin_groups.contains(g))
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // matters more than stopping service would; keep serving.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new session for `owner`.
    pub(crate) fn open_session(&self, owner: Owner) -> Peer {
        let session = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let is_admin = self.is_admin(&owner);
        Peer {
            owner,
            session,
            is_admin,
            version: 0,
        }
    }

    /// Hands `changes`, just made to `table`, to every consumer. Taking the locked table proves
    /// the caller still holds the lock, so consumers see changes in the table's order.
    fn publish(&self, table: &mut Table, changes: Vec<Change>) -> Pending {
        let _ = table;
        log_changes(&changes);
        self.stream.publish(changes)
    }

    /// Waits until every consumer has acknowledged what `pending` published. A refused change
    /// is undone in the table (and the undoing published to the consumers that had accepted
    /// it); `Err` then says why, for the client's answer.
    async fn settle(&self, pending: Pending) -> Result<(), String> {
        let Err(refused) = pending.acknowledged(&self.stream).await else {
            return Ok(());
        };
        tracing::error!("undoing a change: {}", refused.reason);
        let undoing = {
            let mut table = self.table();
            let mut undone = Vec::new();
            for change in refused.undo.iter().rev() {
                match table.revert(change) {
                    Ok(changes) => undone.extend(changes),
                    Err(e) => tracing::error!("cannot undo {change:?}: {e}"),
                }
            }
            log_changes(&undone);
            self.stream.publish_except(undone, &refused.refusers)
        };
        if let Err(again) = undoing.acknowledged(&self.stream).await {
            tracing::error!("the undo was refused too: {}", again.reason);
        }
        Err(refused.reason)
    }

    /// Ends a session: its runtime reservations are released.
    pub(crate) fn close_session(&self, peer: &Peer) {
        {
            let mut table = self.table();
            let released = table.release_session(peer.session);
            // Nobody waits: the client is gone.
            drop(self.publish(&mut table, released));
        }
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Ends what lived as long as the process `owner` (handed to it, or held for it after a
    /// restart): it exited.
    pub(crate) fn owner_exited(&self, owner: &Owner) {
        let mut table = self.table();
        let released = table.release_owner_exited(owner);
        drop(self.publish(&mut table, released));
    }

    /// Ends the hold on restored reservations nobody re-claimed: the grace period is over.
    pub(crate) fn grace_over(&self) {
        let mut table = self.table();
        let released = table.release_unclaimed();
        drop(self.publish(&mut table, released));
    }

    /// Starts keeping the kernel's list once the table is restored: the receiver answers when
    /// the list is reconciled with the table (`None` when sync is off).
    pub(crate) fn reconcile_kernel(
        &self,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), String>>> {
        self.kernel
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(crate::mirror::kernel::sync::Writer::reconcile)
    }

    /// Waits until the kernel's list holds every reservation granted so far (sync on only):
    /// held grants are listed a moment after they are answered, and a hold socket must not be
    /// given up before its port is listed.
    pub(crate) async fn kernel_caught_up(&self) {
        let Some(wait) = self.kernel.listing.as_ref().and_then(|l| l.caught_up()) else {
            return;
        };
        match wait.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("the kernel's reserved-ports list did not catch up: {e}"),
            Err(_) => tracing::warn!("the kernel-sync thread stopped"),
        }
    }

    /// The first port of a wildcard candidate `range` someone else listed in the kernel's
    /// reserved-ports list (sync on only).
    pub(crate) fn listed_by_others(&self, range: berth_core::PortRange) -> Option<u16> {
        self.kernel.foreign.as_ref()?.first_in(range)
    }

    /// Stops keeping the kernel's list: the daemon's entries are taken out (blocks until done).
    pub(crate) fn stop_kernel_sync(&self) {
        let writer = self
            .kernel
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            writer.stop();
        }
    }

    /// One pass of taking back into hold the ports of held reservations whose owner's socket
    /// has closed: binds are tried outside the table lock, then the table learns which ports
    /// are free (held) again.
    pub(crate) fn rehold_pass(&self) {
        for (token, protocol) in self.holds.blocks() {
            // Every port not wholly held: those its owner bound, and those a restarted daemon
            // found taken (the table does not know them as bound after a restart).
            let uncovered = self.holds.uncovered(token);
            if uncovered.is_empty() {
                continue;
            }
            let taken = self.holds.rehold(token, protocol, &uncovered);
            let mut table = self.table();
            for port in uncovered {
                if taken.contains(&port) {
                    table.note_unbound(token, port);
                } else if table.port_use(token, port) == Some(berth_core::PortUse::Free) {
                    // Someone has it — its owner's socket, most likely — so the table shows
                    // it bound and associate tries it last.
                    table.note_bound(token, port);
                }
            }
            if !taken.is_empty() {
                tracing::debug!(%token, ?taken, held = self.holds.count(), "ports back in hold");
            }
        }
    }

    /// Follows a change of the kernel's ephemeral range (`ip_local_port_range`) with the
    /// default pool: the range itself while the daemon keeps the reserved-ports list, else the
    /// part of the dynamic range outside it.
    pub(crate) fn follow_ephemeral(&self, pool_follows: bool) {
        let ephemeral = crate::config::ephemeral_pool();
        let pool =
            crate::mirror::kernel::safe_default_pool(self.kernel.off_because.is_none(), ephemeral);
        let mut table = self.table();
        if self.ephemeral_share.is_some() && table.shared_range() != Some(ephemeral.range()) {
            tracing::info!(
                "the ephemeral range is {ephemeral} now: non-administrators' share of it is counted anew"
            );
            table.set_shared_range(Some(ephemeral.range()));
        }
        if pool_follows && table.pool() != pool {
            tracing::info!(
                "the ephemeral range is {ephemeral} now: the wildcard pool follows, {} → {pool}",
                table.pool()
            );
            table.set_pool(pool);
        }
    }

    /// The threads that close what clients send.
    pub(crate) fn closers(&self) -> crate::session::closer::Closers {
        self.closers.clone()
    }

    /// Live reservations and open client connections (for the service manager's status line).
    pub(crate) fn counts(&self) -> (usize, u32) {
        let reservations = self.table().len();
        (reservations, self.sessions.load(Ordering::Relaxed))
    }

    /// Tells the store thread to finish what is queued and stop.
    pub(crate) fn stop_store(&self) {
        self.store.stop();
    }

    /// Leaves a session because the daemon stops: its reservations stay in the journal, for
    /// the next daemon to hold until their owner re-claims them.
    /// Whether a reservation is bound to `peer`'s session, so that closing its connection
    /// would release something.
    pub(crate) fn session_holds(&self, peer: &Peer) -> bool {
        self.table().session_holds(peer.session)
    }

    pub(crate) fn leave_session(&self, _peer: &Peer) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Answers one request (not the hello, which the session handles), in its user's turn.
    pub(crate) async fn handle(&self, inbound: Inbound, peer: &Peer) -> Response {
        let uid = inbound.sender.map_or(peer.owner.uid, |c| c.uid);
        let _turn = self.turns.enter(uid).await;
        self.answer(inbound, peer).await
    }

    async fn answer(&self, inbound: Inbound, peer: &Peer) -> Response {
        let Inbound {
            request,
            sender,
            fd,
            lost_fd: _,
        } = inbound;
        match request {
            Request::Acquire {
                protocol,
                start,
                count,
            } => {
                // The reservation belongs to the process that sent the request — a forked
                // child writing on its parent's connection acquires for itself.
                let requester = self.requester(peer, sender);
                let response = self
                    .acquire(protocol, start, count, false, &requester, peer)
                    .await;
                self.name_port_user(response, &requester).await
            }
            Request::AcquireWith {
                protocol,
                start,
                count,
                hold,
            } => {
                let requester = self.requester(peer, sender);
                let response = self
                    .acquire(protocol, start, count, hold, &requester, peer)
                    .await;
                self.name_port_user(response, &requester).await
            }
            Request::AcquireBoth { start, count, hold } => {
                let requester = self.requester(peer, sender);
                self.acquire_both(start, count, hold, &requester, peer)
                    .await
            }
            Request::Why { protocol, port } => self.why(protocol, port, peer).await,
            Request::Release { token } => self.release(token, &self.requester(peer, sender)).await,
            Request::Associate { token, address } => {
                self.associate(token, address, None, fd, &self.requester(peer, sender))
                    .await
            }
            Request::AssociateAt {
                token,
                address,
                port,
            } => {
                self.associate(
                    token,
                    address,
                    Some(port),
                    fd,
                    &self.requester(peer, sender),
                )
                .await
            }
            Request::Reclaim { token } => {
                self.reclaim(token, &self.requester(peer, sender), peer)
                    .await
            }
            Request::Transfer { token, pid } => {
                self.transfer(token, pid, &self.requester(peer, sender))
                    .await
            }
            Request::CreatePersistent {
                protocol,
                start,
                count,
                allow_users,
                allow_groups,
            } => {
                let allowed = Allowed {
                    users: allow_users,
                    groups: allow_groups,
                };
                let requester = self.requester(peer, sender);
                self.create_persistent(protocol, start, count, allowed, &requester)
                    .await
            }
            Request::DeletePersistent {
                protocol,
                start,
                count,
            } => {
                let requester = self.requester(peer, sender);
                self.delete_persistent(protocol, start, count, &requester)
                    .await
            }
            Request::LookupPersistent {
                protocol,
                start,
                count,
            } => self.lookup_persistent(protocol, start, count, &self.requester(peer, sender)),
            Request::List => self.list(peer),
            Request::Status => self.status(peer),
            Request::Hello(_) => error(
                ErrorKind::InvalidArgument,
                "the handshake was already done on this connection; send Hello only once, first"
                    .into(),
            ),
            // The session answers it: stopping is the server's business, not the table's.
            Request::Stop => error(
                ErrorKind::InvalidArgument,
                "a stop request reached the table; it is answered by the session".into(),
            ),
        }
    }

    /// Who sent a request: the session's owner, unless the kernel says another process sent
    /// it (a forked child writing on an inherited connection).
    fn requester(&self, peer: &Peer, sender: Option<Credentials>) -> Requester {
        let process = match sender {
            // pid 0: the kernel could not name the sender in our pid namespace; the session's
            // owner (whom the kernel named at connect time) answers for the connection.
            Some(cred) if cred.pid != 0 && cred.pid != peer.owner.pid => {
                process_owner(cred.pid, cred.uid, cred.gid)
            }
            _ => peer.owner.clone(),
        };
        let is_admin = if process.pid == peer.owner.pid {
            peer.is_admin
        } else {
            self.is_admin(&process)
        };
        Requester { process, is_admin }
    }

    fn list(&self, peer: &Peer) -> Response {
        let now = now_ms();
        let table = self.table();
        Response::List(
            table
                .iter()
                .map(|r| {
                    let mut shown = info(r, &peer.owner, peer.is_admin, now);
                    shown.bound = table.bound_list(r.token);
                    shown
                })
                .collect(),
        )
    }

    fn status(&self, peer: &Peer) -> Response {
        let table = self.table();
        let (quota, usage, ephemeral_share, users) =
            self.limits_view(&table, peer.owner.uid, peer.is_admin);
        Response::Status(StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: peer.version,
            pid: std::process::id(),
            socket: self.socket.clone(),
            started_at_ms: self.started_at_ms,
            pool: table.pool(),
            reservations: u32::try_from(table.len()).unwrap_or(u32::MAX),
            tcp_ports: table.reserved_ports(Protocol::Tcp),
            udp_ports: table.reserved_ports(Protocol::Udp),
            persistent: table.persistent_count(),
            pool_free: (
                table.free_in_pool(Protocol::Tcp),
                table.free_in_pool(Protocol::Udp),
            ),
            sessions: self.sessions.load(Ordering::Relaxed),
            open_files_limit: crate::server::limits::open_files_limit(),
            kernel_sync: self.kernel.off_because.is_none(),
            kernel_sync_off_because: self.kernel.off_because.clone().unwrap_or_default(),
            hold_sockets: u32::try_from(self.holds.count()).unwrap_or(u32::MAX),
            hold: self.hold_enabled,
            hold_off_because: if self.hold_enabled {
                String::new()
            } else {
                "hold is switched off (hold = false in the configuration, or --no-hold)".to_owned()
            },
            open_files: crate::server::limits::open_files(),
            quota,
            usage,
            ephemeral_share,
            users,
        })
    }
}

fn zero_token() -> Response {
    error(
        ErrorKind::InvalidArgument,
        "token 0 names no reservation; tokens are non-zero (see `berth list`)".into(),
    )
}

/// What `viewer` may see of `r`: owner details only for administrators and the owner's own
/// user.
fn info(r: &Reservation, viewer: &Owner, is_admin: bool, now: u64) -> ReservationInfo {
    let owner = r
        .owner()
        .filter(|o| is_admin || o.uid == viewer.uid)
        .map(|o| OwnerInfo {
            pid: o.pid,
            uid: o.uid,
            command: o.command.clone(),
        });
    ReservationInfo {
        token: r.token,
        protocol: r.protocol,
        range: r.range,
        kind: r.kind(),
        held: r.held(),
        bound: Vec::new(),
        owner,
        acquired_at_ms: r.acquired_at_ms,
        age_ms: now.saturating_sub(r.acquired_at_ms),
    }
}

/// One log line per change, for operators: what clients do every moment (grants, releases,
/// hand-overs) at DEBUG, with the owner's pid and uid as fields, so that a busy
/// daemon's log can be turned down to INFO; what changes the daemon's lasting state
/// (persistent reservations, what a restart restored, re-claimed or could not restore) at INFO.
fn log_changes(changes: &[Change]) {
    for change in changes {
        match change {
            Change::Granted(r) => {
                let (pid, uid) = owner_ids(r);
                tracing::debug!(token = %r.token, pid, uid, "{} {} granted to {}", r.protocol, berth_core::describe(r.range), r.holder_description());
            }
            Change::Released {
                reservation: r,
                why,
            } => {
                let (pid, uid) = owner_ids(r);
                if matches!(
                    why,
                    berth_core::Ending::NotReclaimed | berth_core::Ending::Undone
                ) {
                    // The end of a restart's grace period, or a change the store refused.
                    tracing::info!(token = %r.token, pid, uid, "{} {} of {} ended: {}", r.protocol, berth_core::describe(r.range), r.holder_description(), why.as_str());
                } else {
                    tracing::debug!(token = %r.token, pid, uid, "{} {} of {} ended: {}", r.protocol, berth_core::describe(r.range), r.holder_description(), why.as_str());
                }
            }
            Change::Rebound { before, after: r } => {
                let (pid, uid) = owner_ids(r);
                if before.bond() == Some(berth_core::Bond::Unclaimed) {
                    // Only after a restart, once per reservation: part of the restart's story.
                    tracing::info!(token = %r.token, pid, uid, "{} {} re-claimed by pid {pid}", r.protocol, berth_core::describe(r.range));
                } else {
                    tracing::debug!(token = %r.token, pid, uid, "{} {} handed to pid {pid} ({}); it lives as long as that process", r.protocol, berth_core::describe(r.range), r.holder_description());
                }
            }
            Change::Restored(r) => {
                tracing::debug!(token = %r.token, "{} {} restored", r.protocol, berth_core::describe(r.range));
            }
            Change::NotRestored {
                token,
                protocol,
                range,
            } => {
                tracing::info!(%token, "{protocol} {} not restored: its owner is gone or its ports are taken", berth_core::describe(*range));
            }
            Change::PersistentCreated(r) => {
                tracing::info!(token = %r.token, "persistent {} {} created", r.protocol, berth_core::describe(r.range));
            }
            Change::PersistentDeleted(r) => {
                tracing::info!(token = %r.token, "persistent {} {} deleted", r.protocol, berth_core::describe(r.range));
            }
        }
    }
}

/// The owner's pid and uid for a log line (0, 0 for a persistent reservation).
fn owner_ids(r: &Reservation) -> (u32, u32) {
    r.owner().map_or((0, 0), |o| (o.pid, o.uid))
}

pub(crate) fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error(WireError::new(kind, message))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Tokens from the OS CSPRNG (`getrandom(2)`), fetched [`TOKEN_BATCH`] at a time per thread:
/// the same kernel-generated bytes, one system call per batch instead of one per grant.
struct OsTokens;

/// Tokens fetched from the OS CSPRNG with one `getrandom(2)`.
const TOKEN_BATCH: usize = 32;

thread_local! {
    /// Unused random values of this thread's last batch; each is handed out once.
    static TOKENS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl TokenSource for OsTokens {
    fn draw(&mut self) -> u64 {
        TOKENS.with(|tokens| {
            let mut tokens = tokens.borrow_mut();
            if tokens.is_empty() {
                let mut bytes = [0u8; TOKEN_BATCH * 8];
                // The server checks at start-up that the CSPRNG answers; a later failure
                // yields 0, which the table refuses and draws again.
                if getrandom::fill(&mut bytes).is_err() {
                    return 0;
                }
                tokens.extend(
                    bytes
                        .chunks_exact(8)
                        .filter_map(|c| <[u8; 8]>::try_from(c).ok())
                        .map(u64::from_ne_bytes),
                );
            }
            tokens.pop().unwrap_or(0)
        })
    }
}

/// Whether the OS CSPRNG answers; the daemon refuses to start without it.
pub(crate) fn check_csprng() -> std::io::Result<()> {
    getrandom::u64()
        .map(|_| ())
        .map_err(|e| std::io::Error::other(format!("the OS random generator fails: {e}")))
}
