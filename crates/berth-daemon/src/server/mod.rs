//! The accept loop, and the daemon process around it.

pub(crate) mod authority;
pub(crate) mod db_lock;
pub(crate) mod fair;
pub(crate) mod limits;
pub mod listener;
pub(crate) mod notify;
pub(crate) mod refusals;
pub(crate) mod rights;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use berth_protocol::authority::Announcement;
use thiserror::Error;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::mirror::store_thread::{self, StoreHandle};
use crate::server::listener::{bind_socket, ListenError};
use crate::session::netns::NetnsCheck;
use crate::session::{serve_connection, Control};
use crate::state::{check_csprng, Shared};

/// Why the daemon stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The socket could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Anything else the daemon needs failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Serves clients on `listener` until `shutdown` completes, then stops accepting, lets every
/// session finish the request it is on, and returns once all have closed.
///
/// At most `config.max_connections` connections are served at once, and at most
/// `config.max_connections_per_uid` of one user (root and the daemon's own user are not
/// counted); a client past either is answered "busy" at once and closed, holding no place.
pub async fn run(
    listener: UnixListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_with_ready(listener, config, shutdown, || {}).await
}

/// Opens the runtime journal beside the database at `db` and moves into it what an earlier
/// berth journaled in the database itself (`legacy`), so that nothing a running owner holds is
/// forgotten across the upgrade.
fn open_runtime_journal(
    db: &std::path::Path,
    boot_id: &str,
    legacy: Vec<berth_store::JournalRow>,
    store: &mut berth_store::Store,
) -> io::Result<berth_store::RuntimeJournal> {
    let path = berth_store::runtime_journal_path(db);
    let (mut runtime, loaded) =
        berth_store::RuntimeJournal::open(&path, boot_id).map_err(io::Error::other)?;
    if loaded.other_boot {
        tracing::info!(
            "the runtime journal {} was written before a reboot; it was cleared",
            path.display()
        );
    }
    if loaded.dropped_bytes > 0 {
        tracing::warn!(
            "the runtime journal {} ended in {} bytes that are not a whole record (the daemon \
             was killed during a write?); they were dropped",
            path.display(),
            loaded.dropped_bytes
        );
    }
    // What an earlier build recorded of its entries in the kernel's list: kept with what the
    // journal records (either may be the daemon's).
    let legacy_kernel = crate::mirror::kernel::recorded(store);
    if !legacy.is_empty() || !legacy_kernel.is_empty() {
        // Into the file first: a crash before the database is cleared leaves the rows in both,
        // and the next start moves them again (an insert replaces a row with the same token).
        for row in legacy {
            runtime
                .apply(&berth_store::JournalOp::Insert(row))
                .map_err(io::Error::other)?;
        }
        let recorded = berth_core::PortSet::parse(runtime.kernel())
            .unwrap_or_default()
            .union(&legacy_kernel);
        runtime
            .set_kernel(&recorded.to_string())
            .map_err(io::Error::other)?;
        store.clear_journal().map_err(io::Error::other)?;
        store
            .set_meta(crate::mirror::kernel::sync::WRITTEN_KEY, None)
            .map_err(io::Error::other)?;
        tracing::info!(
            "the runtime journal moved from the database to {}",
            path.display()
        );
    }
    Ok(runtime)
}

/// [`run`], calling `ready` once the daemon can answer: the database is locked and loaded and
/// the table rebuilt. (Clients that connect earlier wait in the socket's backlog.) A service
/// manager (`NOTIFY_SOCKET`) is told `READY=1` then, a `STATUS=` line while serving, and
/// `STOPPING=1` once shutdown begins.
pub async fn run_with_ready(
    listener: UnixListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> io::Result<()> {
    check_csprng()?;
    let open_files = crate::server::limits::raise_open_files();
    tracing::debug!(open_files, "descriptor limit");
    // Opens the descriptor the room checks duplicate, now rather than on first use.
    let _ = crate::server::limits::room_for(0);
    // Before the database: a second daemon of this namespace is told about the first, not
    // that a database is in use.
    let claim = match &config.authority {
        Some(name) => Some((name.clone(), crate::server::authority::claim(name).await?)),
        None => None,
    };
    let _db_lock = db_lock::acquire(&config.db)?;
    let mut store = store_thread::open(&config.db).map_err(io::Error::other)?;
    // Journaled owners cannot have survived a reboot; a pid and start time from an earlier
    // boot might name some other process now.
    // So can the kernel's reserved-ports list: what the daemon recorded having written there
    // is then forgotten too.
    let boot_id = berth_os::proc::read_file("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default();
    if !boot_id.is_empty() && store.begin_boot(&boot_id).map_err(io::Error::other)? {
        tracing::info!(
            "the database was written before a reboot; its runtime entries were cleared"
        );
        store
            .set_meta(crate::mirror::kernel::sync::WRITTEN_KEY, None)
            .map_err(io::Error::other)?;
    }
    let (persistent, journal) = store.load().map_err(io::Error::other)?;
    let runtime = open_runtime_journal(&config.db, &boot_id, journal, &mut store)?;
    let recorded = berth_core::PortSet::parse(runtime.kernel()).unwrap_or_default();
    let journal = runtime.rows();
    let (store, store_thread) = StoreHandle::spawn(store, config.faults.store())?;
    let (shared, owners) = Shared::new(&config, store, runtime, recorded)?;
    let shared = Arc::new(shared);
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    // Non-administrators together never take the places kept for administrators.
    let others = Arc::new(Semaphore::new(
        config.max_connections.max(1) - admin_reserve(config.max_connections.max(1)),
    ));
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    watch_owners(&tracker, &shared, &cancel, owners);
    shared.restore(persistent, journal);
    // Ready only once the kernel's list matches the restored table.
    if let Some(reconciled) = shared.reconcile_kernel() {
        match reconciled.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("cannot reconcile the kernel's reserved-ports list: {e}"),
            Err(_) => tracing::error!("the kernel-sync thread stopped before reconciling"),
        }
    }
    // One count of connections per user for every socket the daemon serves.
    let per_uid = crate::server::fair::PerUid::new(
        config.max_connections_per_uid.max(1),
        rustix::process::geteuid().as_raw(),
    );
    // The portserver endpoint: bound before `ready`, so its clients never find it missing.
    if let Some(endpoint) = &config.portserver {
        start_portserver(endpoint, &shared, &per_uid, &tracker, &cancel)?;
    }
    end_grace(&tracker, &shared, &cancel, config.grace);
    rehold(&tracker, &shared, &cancel);
    // The ephemeral share follows the range always; the pool only if it is the default one.
    follow_ephemeral(&tracker, &shared, &cancel, config.pool_follows_ephemeral);
    let control = Arc::new(Control {
        stop: CancellationToken::new(),
        netns: NetnsCheck::current(),
        per_uid: per_uid.clone(),
    });
    // Answers until the very end, so that no second daemon starts while this one drains.
    // The claim (its system lock, for root's daemon) is held until the daemon has stopped.
    let mut claim = claim;
    let beacon = claim.as_mut().map(|(name, claim)| {
        let line = Announcement {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            socket: config.socket.display().to_string(),
        }
        .to_line();
        let done = CancellationToken::new();
        let task = tokio::spawn(answer_beacon(
            claim.beacon.take(),
            name.clone(),
            line,
            shared.closers(),
            done.clone(),
        ));
        (task, done)
    });
    // Its reserve descriptor opened before anyone is told the daemon is ready.
    let mut accepting = Accepting::new();
    ready();
    let (reservations, clients) = shared.counts();
    crate::server::notify::ready(&crate::server::notify::serving(reservations, clients));
    report_status(&tracker, &shared, &cancel);
    let stop = control.stop.clone();
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            () = stop.cancelled() => tracing::info!("stopping at an administrator's request"),
        }
    };
    tokio::pin!(shutdown);
    tracing::info!(
        "serving on {} with the wildcard pool {}",
        config.socket.display(),
        config.pool
    );

    // Descriptors come only with an admitted session's requests (see `rights`): the listener
    // refuses them, and a session is allowed them once admitted.
    if let Err(e) = crate::server::rights::pass_rights(&listener, false) {
        tracing::warn!("cannot make the socket refuse descriptors (SO_PASSRIGHTS): {e}");
    }
    // Admission, the same for every socket the daemon serves: the user's limit first, then a
    // shared place; a client refused for either is answered at once and keeps nothing (see
    // `session::refuse_now`). Every connection is closed on its user's closer threads.
    let closers = shared.closers();
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accepting.accepted();
                    stream
                }
                Err(e) => {
                    accepting.failed(&e, &listener, &closers);
                    // Back off (the pending connection keeps the listener readable): until a
                    // descriptor may have been freed, without spinning.
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_RETRY) => {}
                    }
                    continue;
                }
            },
        };
        let uid = berth_os::peer::peer_credentials(&stream).map_or(u32::MAX, |c| c.uid);
        let lane = closers.lane(uid);
        // A connection never takes the room kept to receive descriptors from those served.
        if !crate::server::limits::room_for(1 + crate::session::inbound::KERNEL_MAX_FDS) {
            crate::server::limits::log_shortage("a new connection is answered busy: the room kept to receive descriptors is reached");
            let busy = crate::session::Busy {
                message: crate::server::limits::busy_message("cannot serve another connection now"),
                limit: berth_protocol::DaemonLimit::OpenFiles,
                max: usize::try_from(crate::server::limits::open_files_limit())
                    .unwrap_or(usize::MAX),
                in_use: usize::try_from(crate::server::limits::open_files_in_shortage())
                    .unwrap_or(usize::MAX),
            };
            crate::session::refuse_now(stream, busy, &lane, None);
            continue;
        }
        let slot = match control.per_uid.enter(uid) {
            Ok(slot) => slot,
            Err(in_use) => {
                let max = control.per_uid.max();
                crate::server::refusals::log(
                    uid,
                    "busy: a connection over the user's limit is refused (max_connections_per_uid)",
                );
                let busy = crate::session::Busy {
                    message: format!(
                        "busy: {in_use} of {max} connections in use by uid {uid} (max_connections_per_uid); close some of this user's berth connections, or have an administrator raise max_connections_per_uid in the daemon's configuration"
                    ),
                    limit: berth_protocol::DaemonLimit::Connections,
                    max,
                    in_use,
                };
                crate::session::refuse_now(stream, busy, &lane, None);
                continue;
            }
        };
        // A user's connection needs a place of those not kept for administrators too.
        let other = match &slot {
            None => None,
            Some(_) => match others.clone().try_acquire_owned() {
                Ok(place) => Some(place),
                Err(_) => {
                    let max = config.max_connections.max(1);
                    let kept = admin_reserve(max);
                    crate::server::refusals::log(
                        uid,
                        "busy: a connection over max_connections is refused",
                    );
                    let busy = crate::session::Busy {
                        message: format!(
                            "busy: the {} connections the daemon serves at once for users other than administrators are in use (max_connections {max}, of which {kept} are kept for administrators); retry shortly, or have an administrator raise max_connections in the daemon's configuration",
                            max - kept
                        ),
                        limit: berth_protocol::DaemonLimit::Connections,
                        max: max - kept,
                        in_use: max - kept,
                    };
                    crate::session::refuse_now(stream, busy, &lane, Some(Box::new(slot)));
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let max = config.max_connections.max(1);
            crate::server::refusals::log(uid, "busy: a connection over max_connections is refused");
            let busy = crate::session::Busy {
                message: format!(
                    "busy: all {max} connections the daemon serves at once are in use (max_connections); retry shortly, or have an administrator raise max_connections in the daemon's configuration"
                ),
                limit: berth_protocol::DaemonLimit::Connections,
                max,
                in_use: max,
            };
            crate::session::refuse_now(stream, busy, &lane, Some(Box::new((slot, other))));
            continue;
        };
        let (shared, config, control, cancel) = (
            shared.clone(),
            config.clone(),
            control.clone(),
            cancel.clone(),
        );
        tracker.spawn(async move {
            serve_connection(
                stream,
                shared,
                config,
                control,
                cancel,
                Box::new((permit, slot, other)),
            )
            .await;
        });
    }

    let draining = format!("stopping: draining {} connections", shared.counts().1);
    tracing::info!("{draining}");
    crate::server::notify::stopping(&draining);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    // Every session is done: the kernel's list loses the daemon's entries, then the store
    // thread finishes what is queued before the database lock is let go.
    let kernel = shared.clone();
    let _ = tokio::task::spawn_blocking(move || kernel.stop_kernel_sync()).await;
    shared.stop_store();
    let joined = tokio::task::spawn_blocking(move || store_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("the store thread did not finish cleanly");
    }
    if let Some((task, done)) = beacon {
        done.cancel();
        let _ = task.await;
    }
    drop(claim);
    tracing::info!("stopped: runtime reservations of running clients are kept for the next daemon");
    Ok(())
}

/// How many of `max_connections` places are kept for administrators (root and the daemon's
/// own user): however many users fill the others, an administrator can still connect — to see
/// what is going on and to stop it. A sixteenth, at most 64; none for a daemon of a handful.
pub(crate) fn admin_reserve(max_connections: usize) -> usize {
    (max_connections / 16).min(64)
}

/// Binds and serves the portserver endpoint; an optional one whose address is taken is only
/// logged.
fn start_portserver(
    endpoint: &crate::portserver::Endpoint,
    shared: &Arc<Shared>,
    per_uid: &Arc<crate::server::fair::PerUid>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> io::Result<()> {
    match crate::portserver::bind(&endpoint.address) {
        Ok(bound) => crate::portserver::spawn(
            bound,
            endpoint,
            shared.clone(),
            per_uid.clone(),
            tracker,
            cancel.clone(),
        ),
        Err(e) if endpoint.optional && e.kind() == io::ErrorKind::AddrInUse => {
            tracing::warn!(
                "{e}; serving without the portserver endpoint (is another portserver running?)"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Watches every owner the change stream names (reservations that live as long as their
/// owner process: handed to it, or restored for it) and ends their reservations when it exits.
fn watch_owners(
    tracker: &TaskTracker,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    mut owners: tokio::sync::mpsc::UnboundedReceiver<berth_core::Owner>,
) {
    let (shared, cancel, tasks) = (shared.clone(), cancel.clone(), tracker.clone());
    tracker.spawn(async move {
        // Owners watched now, by (pid, start time): one watcher each, however many of its
        // reservations arrive.
        let watched = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        loop {
            let owner = tokio::select! {
                () = cancel.cancelled() => return,
                owner = owners.recv() => match owner {
                    Some(owner) => owner,
                    None => return,
                },
            };
            let key = (owner.pid, owner.start_time);
            if !watched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key)
            {
                continue;
            }
            let (shared, cancel, watched) = (shared.clone(), cancel.clone(), watched.clone());
            tasks.spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = crate::mirror::owner_watch::owner_exit(&owner) => shared.owner_exited(&owner),
                }
                watched
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&key);
            });
        }
    });
}

/// Keeps the service manager's status line current, every [`crate::server::notify::STATUS_EVERY`]
/// (only when one listens, and only when the line changed).
fn report_status(tracker: &TaskTracker, shared: &Arc<Shared>, cancel: &CancellationToken) {
    if !crate::server::notify::enabled() {
        return;
    }
    let (shared, cancel) = (shared.clone(), cancel.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(crate::server::notify::STATUS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = String::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (reservations, clients) = shared.counts();
            let line = crate::server::notify::serving(reservations, clients);
            if line != last {
                crate::server::notify::status(&line);
                last = line;
            }
        }
    });
}

/// Answers every connection to the beacon with `line` and closes it, until `done`. The write
/// never waits: the line is far smaller than a new connection's empty socket buffer, and a
/// peer that is gone simply gets nothing. Each connection is closed on its user's closer
/// threads, like every connection the daemon accepts (see `rights`). A system daemon that
/// serves without its beacon (`listener` is `None`: an unprivileged process holds the name)
/// tries to bind `name` every [`crate::server::authority::RETRY_EVERY`] until it can.
async fn answer_beacon(
    listener: Option<std::os::unix::net::UnixListener>,
    name: String,
    line: String,
    closers: crate::session::closer::Closers,
    done: CancellationToken,
) {
    let listener = match listener {
        Some(listener) => listener,
        None => loop {
            tokio::select! {
                () = done.cancelled() => return,
                () = tokio::time::sleep(crate::server::authority::RETRY_EVERY) => {}
            }
            if let Some(listener) = crate::server::authority::retake(&name).await {
                tracing::info!("the authority beacon @{name} is this daemon's again");
                break listener;
            }
        },
    };
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            // Only without a reactor; the name is let go with the listener.
            tracing::warn!("cannot answer on the authority beacon: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.try_write(line.as_bytes());
                    // The beacon never takes descriptors: where the kernel refuses them at the
                    // socket, none are queued and the close cannot block — closed here, so a
                    // flood of connections never queues behind a user's blocked closes.
                    if crate::server::rights::refused_at_socket() {
                        drop(stream);
                    } else {
                        crate::session::discard(stream, &closers, None);
                    }
                }
                Err(e) => {
                    if crate::server::limits::is_shortage(&e) {
                        crate::server::limits::log_shortage("the authority beacon cannot accept");
                    } else {
                        crate::server::refusals::log(u32::MAX, "accept on the authority beacon failed");
                    }
                    tokio::select! {
                        () = done.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            },
        }
    }
}

/// How often ports whose owner's socket has closed are taken back into hold.
pub const REHOLD_EVERY: Duration = Duration::from_millis(500);

/// Takes back into hold, every [`REHOLD_EVERY`], the ports of held reservations whose owner's
/// socket has closed.
fn rehold(tracker: &TaskTracker, shared: &Arc<Shared>, cancel: &CancellationToken) {
    let (shared, cancel) = (shared.clone(), cancel.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(REHOLD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => shared.rehold_pass(),
            }
        }
    });
}

/// How long the accept loop waits after a failed accept (typically: out of descriptors) before
/// it tries again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The accept loop's state when `accept` fails: one log line per episode, and a reserve
/// descriptor (the "spare descriptor" trick) to accept one waiting client at a time while the
/// daemon is out of descriptors, answer it "busy" and close it, rather than leave it waiting
/// without a word.
struct Accepting {
    /// `/dev/null`, opened at start and given up to accept a client when nothing else is left;
    /// opened again as soon as that client's descriptor is closed (see [`Refill`]).
    reserve: Reserve,
    /// The shortage going on, if any.
    episode: Option<Episode>,
}

/// A time in which accepting fails: one line when it starts, one when it is over, with the
/// true count of clients answered busy in between — not a pair of lines per refused client
/// (an accept works now and then in a shortage: with the reserve descriptor's help, or when a
/// descriptor was freed for a moment).
struct Episode {
    since: std::time::Instant,
    /// The last failed accept.
    last: std::time::Instant,
    answered: u64,
}

/// How long accepting must have worked before a shortage counts as over.
const EPISODE_QUIET: Duration = Duration::from_secs(10);

impl Accepting {
    fn new() -> Self {
        let reserve = Reserve::default();
        reserve.refill();
        Accepting {
            reserve,
            episode: None,
        }
    }

    /// An accept worked: the episode, if any, is over once no accept has failed for
    /// [`EPISODE_QUIET`].
    fn accepted(&mut self) {
        let over = self
            .episode
            .as_ref()
            .is_some_and(|e| e.last.elapsed() >= EPISODE_QUIET);
        if over {
            if let Some(e) = self.episode.take() {
                tracing::info!(
                    answered = e.answered,
                    "accepting connections again after {}s out of descriptors, in which {} clients were answered busy ({} descriptors open)",
                    e.last.saturating_duration_since(e.since).as_secs(),
                    e.answered,
                    crate::server::limits::in_use()
                );
            }
        }
        self.reserve.refill();
    }

    /// An accept failed with `e`: logs once per episode, and when the daemon is out of
    /// descriptors answers one waiting client with the reserve descriptor.
    fn failed(
        &mut self,
        e: &io::Error,
        listener: &UnixListener,
        closers: &crate::session::closer::Closers,
    ) {
        let shortage = crate::server::limits::is_shortage(e);
        let now = std::time::Instant::now();
        if let Some(episode) = &mut self.episode {
            episode.last = now;
        } else {
            if shortage {
                tracing::warn!(
                    open = crate::server::limits::open_files_in_shortage(),
                    limit = crate::server::limits::open_files_limit(),
                    "cannot accept connections: the daemon is out of file descriptors ({} open); new clients are answered busy until some are freed, existing ones keep their reservations (raise LimitNOFILE= if this recurs)",
                    crate::server::limits::in_use()
                );
            } else {
                tracing::warn!("accept failed: {e}; retrying every {ACCEPT_RETRY:?}");
            }
        }
        let episode = self.episode.get_or_insert(Episode {
            since: now,
            last: now,
            answered: 0,
        });
        let answered = &mut episode.answered;
        if !shortage {
            return;
        }
        // The reserve's descriptor is this client's for a moment.
        if !self.reserve.give_up() {
            // Given up earlier and not yet back: maybe a descriptor was freed since.
            self.reserve.refill();
            return;
        }
        match rustix::net::acceptfrom_with(
            listener,
            rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        ) {
            Ok((fd, _)) => {
                *answered += 1;
                let stream = std::os::unix::net::UnixStream::from(fd);
                let busy = berth_protocol::WireError::new(
                    berth_core::ErrorKind::Unavailable,
                    crate::server::limits::busy_message("cannot serve another connection now"),
                )
                .with_detail(berth_protocol::ErrorDetail::Busy(
                    berth_protocol::BusyDetail {
                        limit: berth_protocol::DaemonLimit::OpenFiles,
                        max: crate::server::limits::open_files_limit(),
                        in_use: crate::server::limits::open_files_in_shortage(),
                    },
                ));
                let mut frame = bytes::BytesMut::new();
                let encoded = tokio_util::codec::Encoder::encode(
                    &mut berth_protocol::FrameCodec::<
                        berth_protocol::Request,
                        berth_protocol::Response,
                    >::daemon(),
                    berth_protocol::Response::Error(busy),
                    &mut frame,
                );
                if encoded.is_ok() {
                    // A new connection's buffer is empty: the answer fits, or the client is
                    // gone. Never waits.
                    let _ = rustix::net::send(
                        &stream,
                        &frame,
                        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
                    );
                }
                // Its receive queue may hold descriptors in flight: closed on a closer thread,
                // which then takes the descriptor back for the reserve.
                let uid = berth_os::peer::peer_credentials(&stream).map_or(u32::MAX, |c| c.uid);
                closers
                    .lane(uid)
                    .dispose((stream, Refill(self.reserve.clone())));
            }
            Err(e) => {
                tracing::debug!("accept with the reserve descriptor failed: {e}");
                self.reserve.refill();
            }
        }
    }
}

/// The reserve descriptor, shared with the closer that gives it back.
#[derive(Clone, Default)]
struct Reserve(Arc<std::sync::Mutex<Option<std::os::fd::OwnedFd>>>);

impl Reserve {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<std::os::fd::OwnedFd>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens it again (`/dev/null`, whose close never blocks) if it was given up.
    fn refill(&self) {
        let mut reserve = self.lock();
        if reserve.is_none() {
            *reserve = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok();
        }
    }

    /// Closes it, freeing one descriptor; `false` when there was none.
    fn give_up(&self) -> bool {
        self.lock().take().is_some()
    }
}

/// Dropped after the client accepted with the reserve's descriptor is closed: opens the
/// reserve again with the descriptor just freed.
struct Refill(Reserve);

impl Drop for Refill {
    fn drop(&mut self) {
        self.0.refill();
    }
}

/// How often the kernel's ephemeral range is looked at, for a default pool to follow it.
pub const EPHEMERAL_EVERY: Duration = Duration::from_secs(2);

/// Follows the kernel's ephemeral range, looked at every [`EPHEMERAL_EVERY`]: the ephemeral share
/// is counted against the range in force, and a default pool (`pool_follows`) moves with it.
fn follow_ephemeral(
    tracker: &TaskTracker,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    pool_follows: bool,
) {
    let (shared, cancel) = (shared.clone(), cancel.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(EPHEMERAL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => shared.follow_ephemeral(pool_follows),
            }
        }
    });
}

/// Ends the hold on restored reservations nobody re-claimed once the grace period is over.
fn end_grace(
    tracker: &TaskTracker,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    grace: Duration,
) {
    let (shared, cancel) = (shared.clone(), cancel.clone());
    tracker.spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(grace) => shared.grace_over(),
        }
    });
}

/// Runs a daemon process: serves on the socket systemd passed (socket activation), or else
/// binds `config.socket`; calls `ready` once clients are served, serves until SIGTERM or
/// SIGINT, and removes the socket on the way out — only the one it bound itself: a socket
/// systemd passed stays, for the next daemon it starts.
pub async fn serve(mut config: Config, ready: impl FnOnce()) -> Result<(), ServeError> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // Installing a handler is what matters: an on-demand daemon must outlive the terminal
    // of the command that started it.
    let _sighup = signal(SignalKind::hangup())?;
    let (listener, _guard) = match crate::server::listener::activated()? {
        Some((listener, path)) => {
            if path != config.socket {
                tracing::info!(
                    "serving on the socket systemd passed, {} (not {})",
                    path.display(),
                    config.socket.display()
                );
            }
            config.socket = path;
            (listener, None)
        }
        None => {
            let (listener, guard) = bind_socket(&config.socket)?;
            (listener, Some(guard))
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received"),
            _ = sigint.recv() => tracing::info!("SIGINT received"),
        }
    };
    run_with_ready(listener, config, shutdown, ready).await?;
    Ok(())
}
