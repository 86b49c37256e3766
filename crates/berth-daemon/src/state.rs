//! The daemon's shared state and the answer to each request.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_core::{
    Allowed, ErrorKind, Owner, PrivilegedPorts, Protocol, Requester, Reservation, SessionId, Table,
    TokenSource,
};
use berth_protocol::{OwnerInfo, Request, ReservationInfo, Response, StatusInfo, WireError};
use berth_store::JournalOp;
use rustix::net::UCred;

use crate::config::Config;
use crate::inbound::Inbound;
use crate::netns::NetNs;
use crate::peer::{groups_of, process_owner};
use crate::probe::Prober;
use crate::store_thread::StoreHandle;

mod persistent;
mod restore;
mod runtime;

/// State shared by every session.
pub(crate) struct Shared {
    /// The allocation state; locked for short, non-blocking sections only.
    table: Mutex<Table>,
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
    /// Whether the wildcard pool reaches below the unprivileged start (fixed at start-up).
    pool_is_privileged: bool,
    /// The daemon's network namespace: sockets from any other are refused.
    netns: NetNs,
    /// Members of these groups are administrators.
    admin_groups: Vec<u32>,
    /// The database: persistent reservations and the runtime journal.
    store: StoreHandle,
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
    pub(crate) fn new(config: &Config, store: StoreHandle) -> std::io::Result<Self> {
        Ok(Shared {
            table: Mutex::new(Table::new(config.pool)),
            prober: Prober::new(),
            socket: config.socket.display().to_string(),
            started_at_ms: now_ms(),
            daemon_uid: rustix::process::geteuid().as_raw(),
            sessions: AtomicU32::new(0),
            next_session: AtomicU64::new(1),
            privileged: config.privileged.clone(),
            pool_is_privileged: config.privileged.touches(config.pool.range()),
            netns: NetNs::current()?,
            admin_groups: config.admin_groups.clone(),
            store,
        })
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

    /// Ends a session: its runtime reservations are released.
    pub(crate) fn close_session(&self, peer: &Peer) {
        let released = {
            let mut table = self.table();
            let released = table.release_session(peer.session);
            for r in &released {
                self.store.journal_detached(JournalOp::Remove(r.token));
            }
            released
        };
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        for r in &released {
            tracing::info!(token = %r.token, "{} {} released: session of pid {} ended", r.protocol, berth_core::describe(r.range), peer.owner.pid);
        }
    }

    /// Tells the store thread to finish what is queued and stop.
    pub(crate) fn stop_store(&self) {
        self.store.stop();
    }

    /// Leaves a session because the daemon stops: its reservations stay in the journal, for
    /// the next daemon to hold until their owner re-claims them.
    pub(crate) fn leave_session(&self, _peer: &Peer) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Answers one request (not the hello, which the session handles).
    pub(crate) async fn handle(&self, inbound: Inbound, peer: &Peer) -> Response {
        let Inbound {
            request,
            sender,
            fd,
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
                self.acquire(protocol, start, count, &requester, peer).await
            }
            Request::Release { token } => self.release(token, &self.requester(peer, sender)).await,
            Request::Associate { token, address } => {
                self.associate(token, address, fd, &self.requester(peer, sender))
            }
            Request::Reclaim { token } => self.reclaim(token, &self.requester(peer, sender), peer),
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
            _ => error(
                ErrorKind::InvalidArgument,
                "this request is not supported by the daemon's protocol version".into(),
            ),
        }
    }

    /// Who sent a request: the session's owner, unless the kernel says another process sent
    /// it (a forked child writing on an inherited connection).
    fn requester(&self, peer: &Peer, sender: Option<UCred>) -> Requester {
        let process = match sender {
            Some(cred) => {
                let pid = u32::try_from(cred.pid.as_raw_nonzero().get()).unwrap_or(0);
                if pid == peer.owner.pid {
                    peer.owner.clone()
                } else {
                    process_owner(pid, cred.uid.as_raw(), cred.gid.as_raw())
                }
            }
            None => peer.owner.clone(),
        };
        let is_admin = if process.pid == peer.owner.pid {
            peer.is_admin
        } else {
            self.is_admin(&process)
        };
        Requester { process, is_admin }
    }

    /// Refuses privileged ports to users the policy does not allow.
    fn check_privileged(
        &self,
        protocol: Protocol,
        range: berth_core::PortRange,
        who: &Owner,
    ) -> Result<(), Response> {
        if !self.privileged.touches(range) {
            return Ok(());
        }
        self.privileged
            .check(protocol, range, who.uid, &groups_of(who))
            .map_err(|e| error(e.kind(), e.to_string()))
    }

    /// Whether `who` may use privileged ports at all.
    fn may_use_privileged(&self, who: &Owner) -> bool {
        self.privileged.allows(who.uid, &groups_of(who))
    }

    fn list(&self, peer: &Peer) -> Response {
        let now = now_ms();
        let table = self.table();
        Response::List(
            table
                .iter()
                .map(|r| info(r, &peer.owner, peer.is_admin, now))
                .collect(),
        )
    }

    fn status(&self, peer: &Peer) -> Response {
        let table = self.table();
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
            sessions: self.sessions.load(Ordering::Relaxed),
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
        .owner
        .as_ref()
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
        kind: r.kind,
        owner,
        acquired_at_ms: r.acquired_at_ms,
        age_ms: now.saturating_sub(r.acquired_at_ms),
    }
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

/// Tokens from the OS CSPRNG (`getrandom(2)`).
struct OsTokens;

impl TokenSource for OsTokens {
    fn draw(&mut self) -> u64 {
        // The server checks at start-up that the CSPRNG answers; a later failure yields 0,
        // which the table refuses and draws again.
        getrandom::u64().unwrap_or(0)
    }
}

/// Whether the OS CSPRNG answers; the daemon refuses to start without it.
pub(crate) fn check_csprng() -> std::io::Result<()> {
    getrandom::u64()
        .map(|_| ())
        .map_err(|e| std::io::Error::other(format!("the OS random generator fails: {e}")))
}
