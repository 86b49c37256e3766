//! The daemon's background tasks, each on the server's task tracker and ended by its
//! cancellation: owners' exits, the service manager's status line, the authority beacon's
//! answers, re-holding ports, following the ephemeral range, the end of the grace period, and
//! the portserver endpoint.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::Shared;

/// The portserver endpoint's socket, bound before the daemon changes anything (the kernel's
/// list, the database), so that a daemon that cannot serve the endpoint it must serve stops
/// having changed nothing.
pub(super) enum PortserverSocket {
    Bound(crate::portserver::Bound),
    /// An optional endpoint whose address another process holds (named): only logged.
    Held {
        holder: String,
        error: io::Error,
    },
}

/// Binds the portserver endpoint; an error when it is not optional and its address is taken
/// (naming the process that holds it), or it cannot be bound at all.
pub(super) fn bind_portserver(
    endpoint: &crate::portserver::Endpoint,
) -> io::Result<PortserverSocket> {
    match crate::portserver::bind(&endpoint.address) {
        Ok(bound) => Ok(PortserverSocket::Bound(bound)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let holder = crate::portserver::holder(&endpoint.address);
            if !endpoint.optional {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e}: it is held by {holder}"),
                ));
            }
            Ok(PortserverSocket::Held { holder, error: e })
        }
        Err(e) => Err(e),
    }
}

/// Serves the portserver endpoint on `socket` (from [`bind_portserver`]); an optional one
/// whose address is taken is only logged, and `berth status` says so.
pub(super) fn start_portserver(
    endpoint: &crate::portserver::Endpoint,
    socket: PortserverSocket,
    shared: &Arc<Shared>,
    per_uid: &Arc<crate::server::fair::PerUid>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let address = endpoint.address.to_string();
    match socket {
        PortserverSocket::Bound(bound) => {
            crate::portserver::spawn(
                bound,
                endpoint,
                shared.clone(),
                per_uid.clone(),
                tracker,
                cancel.clone(),
            )?;
            shared.set_portserver(berth_protocol::PortserverInfo {
                address,
                not_served_because: String::new(),
                answered: 0,
                refused: 0,
            });
        }
        PortserverSocket::Held { holder, error } => {
            tracing::warn!(
                "{error}: it is held by {holder}; serving without the portserver endpoint, and \
                 portpicker clients of this address reach that process instead"
            );
            shared.set_portserver(berth_protocol::PortserverInfo {
                address,
                not_served_because: format!("the address is held by {holder}"),
                answered: 0,
                refused: 0,
            });
        }
    }
    Ok(())
}

/// Tells the sessions and the owner watch of each owner process that exited (one epoll set
/// for all of them, see `berth_os::pidfd`), until the daemon stops.
pub(super) fn tell_owner_exits(
    tracker: &TaskTracker,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) {
    let (exits, cancel) = (shared.exits().clone(), cancel.clone());
    tracker.spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            Err(e) = exits.run() => {
                // Sessions still end when their connections close; reservations bound to a
                // process that left a connection to a child outlive it until then.
                tracing::error!("owner processes can no longer be watched for their exit: {e}");
            }
        }
    });
}

/// Watches every owner the change stream names (reservations that live as long as their
/// owner process: handed to it, or restored for it) and ends their reservations when it exits.
pub(super) fn watch_owners(
    tracker: &TaskTracker,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    owners: crate::mirror::owner_watch::Owners,
) {
    let (shared, cancel, tasks) = (shared.clone(), cancel.clone(), tracker.clone());
    let crate::mirror::owner_watch::Owners {
        rx: mut owners,
        watched,
    } = owners;
    tracker.spawn(async move {
        // Each owner arrives once while it is watched (see `owner_watch::Watched`).
        loop {
            let (owner, pinned) = tokio::select! {
                () = cancel.cancelled() => return,
                owner = owners.recv() => match owner {
                    Some(owner) => owner,
                    None => return,
                },
            };
            let (shared, cancel, watched) = (shared.clone(), cancel.clone(), watched.clone());
            tasks.spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = crate::mirror::owner_watch::owner_exit(shared.exits(), &owner, pinned) => {
                        // Forgotten first: a reservation granted to it from now on is watched
                        // anew (and ended at once), one granted before is ended here.
                        watched.remove(&owner);
                        shared.owner_exited(&owner);
                    }
                }
            });
        }
    });
}

/// Watches every cgroup that owns reservations (enforce mode) and ends its reservations when
/// it has no process left — woken by the kernel (one inotify instance for all of them, on
/// their `cgroup.events`), so within milliseconds; renews the enforcement programs' lease
/// meanwhile. A cgroup that cannot be watched is looked at with every renewal instead: its
/// reservations are never ended while it has a process.
pub(super) fn watch_cgroups(
    tracker: &TaskTracker,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) {
    let Some(mut cgroups) = shared.take_cgroups_to_watch() else {
        return;
    };
    let (shared, cancel) = (shared.clone(), cancel.clone());
    tracker.spawn(async move {
        let mut renew = tokio::time::interval(shared.enforcer().renew_every());
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One inotify instance, made when the first cgroup comes and closed when the last one
        // goes: a daemon whose users never ask for enforcement holds none (an ordinary user's
        // instances are few, 128 by default).
        let mut watches: Option<berth_os::cgroup::Watches> = None;
        // Watched, by watch number; and those looked at with each renewal.
        let mut watched: std::collections::HashMap<i32, (u64, std::path::PathBuf)> =
            std::collections::HashMap::new();
        let mut polled: Vec<(u64, std::path::PathBuf)> = Vec::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = renew.tick() => {
                    shared.enforcer().renew();
                    shared.enforcer().log_refusals();
                    // Socket dumps: on the blocking pool.
                    let enforcer = shared.enforcer_handle();
                    let _ = tokio::task::spawn_blocking(move || enforcer.reconcile_claims()).await;
                    polled.retain(|(id, dir)| {
                        let gone = emptied(dir);
                        if gone {
                            shared.cgroup_emptied(*id);
                        }
                        !gone
                    });
                }
                cgroup = cgroups.recv() => {
                    let Some(cgroup) = cgroup else { return };
                    let id = cgroup.id;
                    if watched.values().any(|(w, _)| *w == id) || polled.iter().any(|(p, _)| *p == id) {
                        continue;
                    }
                    if watches.is_none() {
                        watches = match berth_os::cgroup::Watches::new() {
                            Ok(w) => Some(w),
                            Err(e) => {
                                tracing::error!("enforce mode: cannot watch cgroups through inotify ({e}); looking at them every {:?} instead", shared.enforcer().renew_every());
                                None
                            }
                        };
                    }
                    match watches.as_ref().map(|w| w.watch(&cgroup.dir)) {
                        Some(Ok(wd)) => {
                            // Looked at after the watch: an exit before it is seen here.
                            if emptied(&cgroup.dir) {
                                if let Some(w) = &watches {
                                    w.unwatch(wd);
                                }
                                shared.cgroup_emptied(id);
                            } else {
                                watched.insert(wd, (id, cgroup.dir));
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!("enforce mode: cannot watch the cgroup {} ({e}); looking at it every {:?} instead", berth_core::text::printable(&cgroup.dir.display().to_string()), shared.enforcer().renew_every());
                            polled.push((id, cgroup.dir));
                        }
                        None => polled.push((id, cgroup.dir)),
                    }
                }
                wds = async {
                    match &watches {
                        Some(w) => w.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let wds = match wds {
                        Ok(wds) => wds,
                        Err(e) => {
                            tracing::error!("enforce mode: reading cgroup changes failed: {e}");
                            continue;
                        }
                    };
                    for wd in wds {
                        let Some((_, dir)) = watched.get(&wd) else { continue };
                        if emptied(dir) {
                            if let Some((id, _)) = watched.remove(&wd) {
                                if let Some(w) = &watches {
                                    w.unwatch(wd);
                                }
                                shared.cgroup_emptied(id);
                            }
                        }
                    }
                }
            }
            if watched.is_empty() {
                watches = None;
            }
        }
    });
}

/// Whether the cgroup at `dir` has no process left (or is gone); a cgroup that cannot be read
/// for another reason counts as populated — its reservations are not ended on a doubt.
fn emptied(dir: &std::path::Path) -> bool {
    match berth_os::cgroup::populated(dir) {
        Ok(populated) => !populated,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// Keeps the service manager's status line current, every [`crate::server::notify::STATUS_EVERY`]
/// (only when one listens, and only when the line changed).
pub(super) fn report_status(
    tracker: &TaskTracker,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) {
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
pub(super) async fn answer_beacon(
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
/// socket has closed. A port its owner's connections in `TIME_WAIT` still keep cannot be held
/// (the hold socket has no `SO_REUSEADDR`), while a stranger with that option could bind and
/// listen on it: a daemon that may (`CAP_NET_ADMIN`) ends those connections, as `ss -K` does,
/// and holds the port (docs/kernel.md, "TIME_WAIT").
pub(super) fn rehold(tracker: &TaskTracker, shared: &Arc<Shared>, cancel: &CancellationToken) {
    let (shared, cancel) = (shared.clone(), cancel.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(REHOLD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ender = TimeWaitEnder::default();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let lingering = shared.rehold_pass();
                    if ender.end(lingering).await {
                        shared.rehold_pass();
                    }
                    let pass = shared.clone();
                    let _ = tokio::task::spawn_blocking(move || pass.stale_bound_pass()).await;
                }
            }
        }
    });
}

/// Ends the `TIME_WAIT` connections that keep held ports from their hold, off the serving
/// threads (a netlink dump per port), at most once per [`TIME_WAIT_RETRY`] for a port whose
/// connections could not all be ended; gives up for good, saying so once, when the daemon may
/// not (no `CAP_NET_ADMIN`: a per-user daemon).
#[derive(Default)]
struct TimeWaitEnder {
    /// When each port was last tried.
    tried: std::collections::HashMap<u16, tokio::time::Instant>,
    /// The kernel refused: never again.
    denied: bool,
}

/// How long a port whose `TIME_WAIT` connections were tried is left alone.
const TIME_WAIT_RETRY: Duration = Duration::from_secs(5);

impl TimeWaitEnder {
    /// Ends the connections of `ports` not tried lately; whether any was ended.
    async fn end(&mut self, ports: Vec<u16>) -> bool {
        let now = tokio::time::Instant::now();
        self.tried
            .retain(|_, at| now.saturating_duration_since(*at) < TIME_WAIT_RETRY);
        let due: Vec<u16> = ports
            .into_iter()
            .filter(|p| !self.tried.contains_key(p))
            .collect();
        if self.denied || due.is_empty() {
            return false;
        }
        for &port in &due {
            self.tried.insert(port, now);
        }
        let ended = tokio::task::spawn_blocking(move || {
            let mut ended = 0;
            for port in due {
                match berth_os::diag::destroy_time_wait(port) {
                    Ok(n) => ended += n,
                    Err(e) => return Err((port, e)),
                }
            }
            Ok(ended)
        })
        .await;
        match ended {
            Ok(Ok(n)) => {
                if n > 0 {
                    tracing::debug!(connections = n, "ended TIME_WAIT connections on held ports");
                }
                n > 0
            }
            Ok(Err((port, e))) => {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    self.denied = true;
                    tracing::info!(
                        "tcp port {port} of a held reservation is kept only by its owner's connections in TIME_WAIT, and the daemon may not end them (it needs CAP_NET_ADMIN): until they time out (about 60 s), a program using SO_REUSEADDR could bind it (docs/kernel.md)"
                    );
                } else {
                    tracing::warn!("cannot end TIME_WAIT connections on tcp port {port}: {e}");
                }
                false
            }
            Err(_) => false,
        }
    }
}

/// How often the mirrors are checked for a change they failed (then re-synchronised at once).
pub const RESYNC_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How often every mirror is re-synchronised with the table anyway.
pub const RESYNC_EVERY: Duration = Duration::from_secs(60);

/// Keeps the mirrors (the runtime journal, the kernel's list) in step with the table: at once
/// after a consumer failed a change it could not refuse (a release whose journal removal
/// failed would bring the reservation back after a restart), and every [`RESYNC_EVERY`] in
/// case. The work is a diff under the table lock, a record per difference. It also rewrites
/// the runtime journal once it has outgrown its live rows, outside the table lock.
pub(super) fn resync(tracker: &TaskTracker, shared: &Arc<Shared>, cancel: &CancellationToken) {
    let (shared, cancel) = (shared.clone(), cancel.clone());
    tracker.spawn(async move {
        let mut check = tokio::time::interval(RESYNC_CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut anyway = tokio::time::interval(RESYNC_EVERY);
        anyway.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = anyway.tick() => shared.resync_mirrors(),
                _ = check.tick() => {
                    if shared.mirrors_out_of_step() {
                        shared.resync_mirrors();
                    }
                    // The journal's rewrite, once it has outgrown its live rows: off the
                    // serving threads and outside the table lock.
                    let rewrite = shared.clone();
                    let _ = tokio::task::spawn_blocking(move || rewrite.rewrite_journal_if_due()).await;
                }
            }
        }
    });
}

/// How often the kernel's ephemeral range is looked at, for a default pool to follow it.
pub const EPHEMERAL_EVERY: Duration = Duration::from_secs(2);

/// Follows the kernel's ephemeral range, looked at every [`EPHEMERAL_EVERY`]: the ephemeral share
/// is counted against the range in force, and a default pool (`pool_follows`) moves with it.
pub(super) fn follow_ephemeral(
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
pub(super) fn end_grace(
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
