//! The daemon's shared state and the answer to each request.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_core::{
    Allowed, Change, ErrorKind, Owner, PrivilegedPorts, Protocol, Requester, Reservation,
    SessionId, Table, TokenSource,
};
use berth_protocol::{
    AcquireOptions, KernelListInfo, OwnerInfo, Request, ReservationInfo, Response, StatusInfo,
    WireError,
};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::host::probe::Prober;
use crate::mirror::journal::Journal;
use crate::mirror::owner_watch::Watcher;
use crate::mirror::store_thread::StoreHandle;
use crate::mirror::{Pending, Refused, Stream};
use crate::session::inbound::{Inbound, Sender};
use crate::session::peer::{gone, groups_of, process_owner};
use berth_os::netns::NetNs;

mod exposure;
mod log;
mod names;
use log::log_changes;
pub(crate) use names::NameBook;
mod mirrors;
use mirrors::KernelState;
mod enforce;
mod persistent;
mod portserver;
mod privileged;
mod quota;
mod restore;
mod route;
mod runtime;
mod views;
use views::info;
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
    /// The owner processes watched for their exit: every session's and every process-bonded
    /// reservation's (see `mirror::owner_watch`).
    exits: Arc<berth_os::pidfd::Exits>,
    /// Whether acquires with hold are held (`hold` in the configuration).
    hold_enabled: bool,
    /// The threads that close what clients send (a close can block).
    closers: crate::session::closer::Closers,
    /// Turns at handling requests, shared fairly between users.
    turns: crate::server::fair::Turns,
    /// Processes the portserver endpoint described lately.
    described: crate::session::peer::Described,
    /// Owners pinned to the pidfds they were described through while their grants are
    /// published, for the owner watch.
    pins: crate::mirror::owner_watch::Pins,
    /// Turns at looking through every process's descriptors for a port's owner (`berth why`,
    /// a conflict's message): see [`HOST_SCANS`].
    pub(super) scans: crate::server::fair::Turns,
    /// The runtime journal's file, rewritten outside the table lock when it has outgrown its
    /// live rows (`Runtime::rewrite_if_due`).
    journal_file: crate::mirror::journal::Runtime,
    /// The portpicker endpoint as `berth status` shows it: set once it is bound, or found taken.
    portserver: Mutex<Option<berth_protocol::PortserverInfo>>,
    /// The endpoint's answers and refusals since start-up, for `berth status`.
    pub(crate) portserver_counts: PortserverCounts,
    /// The block each user's names were last given (locked after the table, never before).
    names: Mutex<NameBook>,
    /// Woken on every change of the table: waits for a name look again.
    changed: tokio::sync::Notify,
    /// Turns at asking the kernel which ports are bound, for waits (see `names::KERNEL_LOOKS`).
    kernel_looks: Arc<tokio::sync::Semaphore>,
    /// What the latest kernel looks found, shared by the waits of one block.
    looks: Mutex<names::Looks>,
    /// Enforce mode: cgroup owners and the programs that keep their ports (also a consumer of
    /// the change stream).
    enforcer: Arc<crate::mirror::enforce::Enforcer>,
    /// The cgroups to watch until they are empty, taken once by the background task.
    cgroups_to_watch: Mutex<Option<mpsc::UnboundedReceiver<crate::mirror::enforce::Watched>>>,
}

/// Requests handled at once, at most; more wait their user's turn (see `fair::Turns`). Enough
/// that the kernel-sync writer's group commits gather many grants, few enough that a user's
/// flood of requests cannot keep another user's waiting for long.
const REQUEST_TURNS: usize = 64;

/// Scans of every process's descriptors (`/proc/*/fd`) run at once, at most, daemon-wide; more
/// wait their user's turn. A scan costs milliseconds of CPU on a host of a hundred processes
/// and grows with their number (up to `berth_os::diag::SCAN_BUDGET`), and any user may ask
/// `berth why` in a loop over many connections: so such a loop takes at most one thread, and
/// another user's `why` waits about one scan behind it. `why` waits for its turn holding no
/// request turn; a conflict's message, answered in a request turn, names the port's process
/// only when a scan turn is free at once.
const HOST_SCANS: usize = 1;

/// How many portpicker requests the endpoint answered with a port, and how many it refused
/// (closed without one), since start-up.
#[derive(Debug, Default)]
pub(crate) struct PortserverCounts {
    answered: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

impl PortserverCounts {
    /// Counts a request answered with a port.
    pub(crate) fn answered(&self) {
        self.answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a request or connection refused.
    pub(crate) fn refused(&self) {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
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
    /// Records what `berth status` says of the portpicker endpoint.
    pub(crate) fn set_portserver(&self, info: berth_protocol::PortserverInfo) {
        *self
            .portserver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(info);
    }

    /// What `berth status` says of the portpicker endpoint, with its counts; `None` when
    /// there is none.
    pub(crate) fn portserver_info(&self) -> Option<berth_protocol::PortserverInfo> {
        let info = self
            .portserver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        let counts = &self.portserver_counts;
        Some(berth_protocol::PortserverInfo {
            answered: counts.answered.load(std::sync::atomic::Ordering::Relaxed),
            refused: counts.refused.load(std::sync::atomic::Ordering::Relaxed),
            ..info
        })
    }

    /// The shared state over an empty table; also returns where the owners to watch arrive
    /// (see `owner_watch`).
    pub(crate) fn new(
        config: &Config,
        store: StoreHandle,
        runtime: berth_store::RuntimeJournal,
        recorded: berth_core::PortSet,
    ) -> std::io::Result<(Self, crate::mirror::owner_watch::Owners)> {
        if !config.hold {
            tracing::info!("hold is off: every reservation is granted unheld, and the daemon keeps no hold sockets");
        }
        let runtime = crate::mirror::journal::Runtime::new(runtime, config.faults.store());
        let (watcher, owners) = Watcher::new();
        let pins = watcher.pins();
        let holds = Arc::new(crate::mirror::hold::Holds::new());
        let (enforcer, cgroups_to_watch) =
            crate::mirror::enforce::Enforcer::new(config.enforce.clone());
        let mut consumers: Vec<Box<dyn crate::mirror::Consumer>> = vec![
            Box::new(Journal::new(runtime.clone(), store.clone())),
            Box::new(watcher),
            Box::new(crate::mirror::hold::Consumer(holds.clone())),
            Box::new(crate::mirror::enforce::EnforceConsumer(enforcer.clone())),
        ];
        let journal_file = runtime.clone();
        let kernel = KernelState::start(config, runtime, recorded, &mut consumers)?;
        let stream = Stream::new(consumers);
        let mut table = Table::new(config.pool);
        table.set_reuse_cool_down(
            u64::try_from(config.reuse_cool_down.as_millis()).unwrap_or(u64::MAX),
        );
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
            described: crate::session::peer::Described::default(),
            pins,
            scans: crate::server::fair::Turns::new(HOST_SCANS),
            journal_file,
            portserver: Mutex::new(None),
            portserver_counts: PortserverCounts::default(),
            names: Mutex::new(NameBook::new(
                config.max_names_per_user,
                config.forget_names_after,
            )),
            changed: tokio::sync::Notify::new(),
            kernel_looks: Arc::new(tokio::sync::Semaphore::new(names::KERNEL_LOOKS)),
            looks: Mutex::new(names::Looks::new()),
            enforcer,
            cgroups_to_watch: Mutex::new(Some(cgroups_to_watch)),
            exits: berth_os::pidfd::Exits::new()?,
        };
        shared.reset_extras_room(&shared.table(), crate::config::ephemeral_pool().range());
        shared.place_stripe(&mut shared.table());
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

    /// The latest kernel looks of waits (no other lock is taken while it is held).
    fn looks(&self) -> MutexGuard<'_, names::Looks> {
        self.looks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The names' memory; take it after the table's lock, if both.
    fn names(&self) -> MutexGuard<'_, NameBook> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the names the database remembers (after the table is restored); forgets, there
    /// too, those too old or over a user's count.
    pub(crate) fn load_names(&self, rows: Vec<berth_store::NameRow>) {
        let forgotten = {
            let mut table = self.table();
            self.names().load(rows, &mut table, now_ms())
        };
        for (uid, name, protocol) in forgotten {
            self.store.forget_name(uid, name, protocol);
        }
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
        self.update_extras_room(table);
        log_changes(&changes);
        table.note_freed(&changes, now_ms());
        let pending = self.stream.publish(changes);
        // After the changes: a grant that was in the stripe stays answered without a write.
        self.advance_stripe(table);
        self.changed.notify_waiters();
        pending
    }

    /// Waits until every consumer has acknowledged what `pending` published. When one refused
    /// a change, the batch's refusable changes are undone in the table, and each undo published
    /// to the consumers that applied the change it undoes (see the stream's "Transactions");
    /// `Err` then says which consumer refused and why, for the client's answer.
    async fn settle(&self, pending: Pending) -> Result<(), Refused> {
        let Err(refused) = pending.acknowledged(&self.stream).await else {
            return Ok(());
        };
        tracing::error!("undoing a change: {}", refused.refused);
        let undoing = {
            let mut table = self.table();
            let mut undone: Vec<(Change, Vec<usize>)> = Vec::new();
            for (change, unapplied) in refused.changes.iter().rev() {
                match table.revert(change) {
                    Ok(changes) => {
                        undone.extend(changes.into_iter().map(|c| (c, unapplied.clone())));
                    }
                    Err(e) => tracing::error!("cannot undo {change:?}: {e}"),
                }
            }
            let logged: Vec<Change> = undone.iter().map(|(c, _)| c.clone()).collect();
            log_changes(&logged);
            self.stream.publish_each(undone)
        };
        if let Err(again) = undoing.acknowledged(&self.stream).await {
            tracing::error!("the undo was refused too: {}", again.refused);
        }
        Err(refused.refused)
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

    /// The set that watches owner processes for their exit.
    pub(crate) fn exits(&self) -> &Arc<berth_os::pidfd::Exits> {
        &self.exits
    }

    /// Ends what lived as long as the process `owner` (handed to it, or held for it after a
    /// restart): it exited.
    pub(crate) fn owner_exited(&self, owner: &Owner) {
        let mut table = self.table();
        let released = table.release_owner_exited(owner);
        drop(self.publish(&mut table, released));
    }

    /// Ends what the cgroup `id` owned: it has no process left. A cgroup the daemon made is
    /// removed.
    pub(crate) fn cgroup_emptied(&self, id: u64) {
        {
            let mut table = self.table();
            let released = table.release_cgroup(id);
            drop(self.publish(&mut table, released));
        }
        self.enforcer.forget(id);
    }

    /// Enforce mode's state (the background tasks renew its lease).
    pub(crate) fn enforcer(&self) -> &crate::mirror::enforce::Enforcer {
        &self.enforcer
    }

    /// The enforcer, to hand to the blocking pool.
    pub(crate) fn enforcer_handle(&self) -> std::sync::Arc<crate::mirror::enforce::Enforcer> {
        self.enforcer.clone()
    }

    /// The cgroups to watch (the first call only).
    pub(crate) fn take_cgroups_to_watch(
        &self,
    ) -> Option<mpsc::UnboundedReceiver<crate::mirror::enforce::Watched>> {
        self.cgroups_to_watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Ends the hold on restored reservations nobody re-claimed: the grace period is over.
    pub(crate) fn grace_over(&self) {
        let mut table = self.table();
        let released = table.release_unclaimed();
        drop(self.publish(&mut table, released));
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

    /// Answers one request (not the hello, which the session handles), in its user's turn —
    /// but `why`, whose look through the host's processes waits for a turn of its own
    /// ([`HOST_SCANS`]): waiting for it holding a request turn, a loop of them would keep
    /// other users' requests waiting behind each look.
    pub(crate) async fn handle(&self, inbound: Inbound, peer: &Peer) -> Response {
        if matches!(inbound.request, Request::Why { .. }) {
            return self.answer(inbound, peer).await;
        }
        let uid = inbound.sender.map_or(peer.owner.uid, |s| s.cred.uid);
        let _turn = self.turns.enter(uid).await;
        self.answer(inbound, peer).await
    }

    /// A request that waits (`WaitName`) without taking a turn: its looks at the table are
    /// short, and its waiting must not keep other requests from theirs.
    pub(crate) async fn wait(&self, inbound: Inbound, peer: &Peer) -> Response {
        self.answer(inbound, peer).await
    }
}

fn zero_token() -> Response {
    error(
        ErrorKind::InvalidArgument,
        "token 0 names no reservation; tokens are non-zero (see `berth list`)".into(),
    )
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
