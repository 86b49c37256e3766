//! The accept loop, and the daemon process around it.

mod accept;
pub(crate) mod authority;
mod background;

pub(crate) use accept::admin_reserve;
use accept::Accepting;
use background::{
    answer_beacon, end_grace, follow_ephemeral, rehold, report_status, resync, start_portserver,
    watch_cgroups, watch_owners,
};
pub use background::{EPHEMERAL_EVERY, REHOLD_EVERY};
pub(crate) mod db_lock;
pub(crate) mod fair;
pub(crate) mod limits;
pub mod listener;
pub(crate) mod memory;
pub(crate) mod notify;
pub(crate) mod refusals;
pub(crate) mod rights;

use std::future::Future;
use std::io;
use std::sync::Arc;

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
use crate::session::Control;
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

/// Where the daemon that serves this network namespace keeps the runtime journal of the
/// database at `db`: in `runtime_dir` when given and private to the daemon's user, else beside
/// the database; one file per network namespace ([`berth_store::for_namespace`]).
pub fn runtime_journal(
    db: &std::path::Path,
    runtime_dir: Option<&std::path::Path>,
) -> io::Result<std::path::PathBuf> {
    Ok(JournalPlaces::of(db, runtime_dir)?.path)
}

/// The runtime journal's file, and where earlier releases kept it.
struct JournalPlaces {
    /// This namespace's journal: in the runtime directory, or `beside`.
    path: std::path::PathBuf,
    /// This namespace's journal beside the database.
    beside: std::path::PathBuf,
    /// Where releases before network namespaces kept it in the runtime directory (when that
    /// directory is used), then beside the database.
    legacy: Vec<std::path::PathBuf>,
}

impl JournalPlaces {
    fn of(db: &std::path::Path, runtime_dir: Option<&std::path::Path>) -> io::Result<Self> {
        let netns = berth_os::netns::NetNs::current()?.id();
        let legacy_beside = berth_store::runtime_journal_path(db);
        let beside = berth_store::for_namespace(&legacy_beside, netns);
        let legacy_in = runtime_dir.and_then(|dir| journal_in(dir, db, &beside));
        let path = legacy_in
            .as_deref()
            .map_or_else(|| beside.clone(), |p| berth_store::for_namespace(p, netns));
        Ok(JournalPlaces {
            path,
            beside,
            legacy: legacy_in.into_iter().chain([legacy_beside]).collect(),
        })
    }
}

/// Opens the runtime journal of the database at `db` (see [`runtime_journal`]) and moves into
/// it what an earlier berth journaled elsewhere or in the database itself (`legacy`), so that
/// nothing a running owner holds is forgotten across the upgrade.
fn open_runtime_journal(
    db: &std::path::Path,
    runtime_dir: Option<&std::path::Path>,
    boot_id: &str,
    legacy: Vec<berth_store::JournalRow>,
    store: &mut berth_store::Store,
) -> io::Result<berth_store::RuntimeJournal> {
    let places = JournalPlaces::of(db, runtime_dir)?;
    let path = places.path.clone();
    let beside = places.beside.clone();
    // When the journal was last written: opening it writes it again.
    let written = modified(&path);
    let (mut runtime, loaded) = match berth_store::RuntimeJournal::open(&path, boot_id) {
        Ok(opened) => opened,
        // The runtime directory is not the daemon's to write (a read-only or another user's
        // directory): beside the database, as without one.
        Err(berth_store::StoreError::Io { source, .. }) if path != beside => {
            tracing::warn!(
                "cannot keep the runtime journal at {} ({source}); it stays at {}",
                path.display(),
                beside.display()
            );
            return open_runtime_journal(db, None, boot_id, legacy, store);
        }
        Err(e) => return Err(io::Error::other(e)),
    };
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
    // What was journaled elsewhere — this namespace's journal beside the database (by a daemon
    // that could not use the runtime directory), or a file of a release before network
    // namespaces — moved in oldest first: the newest file holds the last state, so each one
    // written since the newest so far replaces its rows, and an older one only adds what it
    // recorded of the kernel's list. (A release's file is taken for this namespace's, as far
    // as can be told.)
    let mut elsewhere: Vec<(std::time::SystemTime, &std::path::Path)> = places
        .legacy
        .iter()
        .map(std::path::PathBuf::as_path)
        .chain((path != beside).then_some(beside.as_path()))
        .filter_map(|p| Some((modified(p)?, p)))
        .collect();
    elsewhere.sort();
    let mut newest = written;
    for (at, old) in elsewhere {
        let newer = newest.is_none_or(|n| at >= n);
        let release = places.legacy.iter().any(|l| l == old);
        if move_journal(old, &mut runtime, boot_id, newer, release)? && newer {
            newest = Some(at);
        }
    }
    // What an earlier build recorded of its entries in the kernel's list: kept with what the
    // journal records (either may be the daemon's).
    let legacy_kernel = crate::mirror::kernel::recorded(store);
    if let Some(unlisted) = not_listed_here(&legacy_kernel) {
        tracing::warn!(
            "the database holds the runtime entries of an earlier release's daemon that listed \
             {unlisted} in ip_local_reserved_ports, none of which this network namespace \
             lists: they are taken for another namespace's, left for its daemon (its owners' \
             reservations are not restored here)"
        );
    } else if !legacy.is_empty() || !legacy_kernel.is_empty() {
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

/// Where releases before network namespaces kept the runtime journal of `db` in `dir`; `None`
/// (beside the database, at `beside`) when `dir` is not a directory only the daemon's user (or
/// root) can write — another user could plant a journal there under the predictable name — or
/// the database's path cannot be resolved.
fn journal_in(
    dir: &std::path::Path,
    db: &std::path::Path,
    beside: &std::path::Path,
) -> Option<std::path::PathBuf> {
    if let Err(why) = private_dir(dir) {
        tracing::info!(
            "the runtime journal stays beside the database, at {}: the socket's directory {}: {why}",
            beside.display(),
            dir.display()
        );
        return None;
    }
    match std::fs::canonicalize(db) {
        Ok(db) => Some(berth_store::runtime_journal_in(dir, &db)),
        Err(e) => {
            tracing::warn!(
                "cannot resolve the database's path {} ({e}); the runtime journal stays at {}",
                db.display(),
                beside.display()
            );
            None
        }
    }
}

/// Whether `dir` is a directory (not a symbolic link) of the daemon's user that nobody else
/// can write, in a directory that keeps it in place (the rules the clients apply to their
/// runtime directories); otherwise, why not.
fn private_dir(dir: &std::path::Path) -> Result<(), String> {
    use berth_protocol::paths::{check_parent_dir, check_private_dir, DirFacts};
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot be read ({e})"))?;
    let me = rustix::process::geteuid().as_raw();
    check_private_dir(dir, &DirFacts::of(&meta), me).map_err(|unsafe_dir| unsafe_dir.why)?;
    match dir
        .parent()
        .map(|parent| (parent, std::fs::metadata(parent)))
    {
        Some((parent, Ok(meta))) => {
            check_parent_dir(parent, &DirFacts::of(&meta), me).map_err(|unsafe_dir| unsafe_dir.why)
        }
        _ => Ok(()),
    }
}

/// Moves the journal at `from`, if there is one, into `runtime`, then removes it; whether it
/// did. When `from` is the `newer` (written last), its rows replace `runtime`'s (a release made
/// meanwhile must not come back); an older one's rows are dropped. What each recorded of its
/// entries in the kernel's list is kept. Into the new file first: a crash before the removal
/// leaves the rows in both, and the next start moves them again.
///
/// A file of a `release` before network namespaces names no namespace. One whose record of the
/// kernel's list names entries none of which this namespace lists is another namespace's (a
/// fresh namespace lists nothing): it is left for that namespace's daemon — taken here, its
/// record would make an administrator's entry of this namespace pass for berth's, removed when
/// unused.
fn move_journal(
    from: &std::path::Path,
    runtime: &mut berth_store::RuntimeJournal,
    boot_id: &str,
    newer: bool,
    release: bool,
) -> io::Result<bool> {
    if !from.exists() {
        return Ok(false);
    }
    if release {
        // Looked at without opening it, which would write it again.
        let record = berth_store::RuntimeJournal::peek_kernel(from, boot_id)
            .map_err(io::Error::other)?
            .unwrap_or_default();
        let record = berth_core::PortSet::parse(&record).unwrap_or_default();
        if let Some(unlisted) = not_listed_here(&record) {
            tracing::warn!(
                "the runtime journal {} of an earlier release records {unlisted} as listed in \
                 ip_local_reserved_ports, none of which this network namespace lists: it is \
                 taken for another namespace's, left for its daemon (its owners' reservations \
                 are not restored here)",
                from.display()
            );
            return Ok(false);
        }
    }
    // (Written before a reboot, it opens empty.)
    let (old, _) = berth_store::RuntimeJournal::open(from, boot_id).map_err(io::Error::other)?;
    let rows = old.rows();
    let moved = if newer { rows.len() } else { 0 };
    if newer {
        let changes = runtime.changes_to_hold(rows).map_err(io::Error::other)?;
        runtime.apply_all(&changes).map_err(io::Error::other)?;
    }
    let recorded = berth_core::PortSet::parse(runtime.kernel())
        .unwrap_or_default()
        .union(&berth_core::PortSet::parse(old.kernel()).unwrap_or_default());
    runtime
        .set_kernel(&recorded.to_string())
        .map_err(io::Error::other)?;
    drop(old);
    std::fs::remove_file(from)?;
    tracing::info!(
        "the runtime journal moved from {} to {} ({moved} reservations)",
        from.display(),
        runtime.path().display()
    );
    Ok(true)
}

/// Whether `record` (what a daemon recorded having listed in the kernel's reserved ports) is
/// another network namespace's: none of its ports is in this namespace's list. A record may
/// name more than the list holds — it is written before each write of the list, and a daemon
/// killed in between, a narrowing that failed or an administrator's `sysctl --system` leaves
/// some unlisted — so one port listed is taken for this namespace's. `None` (this
/// namespace's, as far as can be told) when the record is empty or the list cannot be read.
fn not_listed_here(record: &berth_core::PortSet) -> Option<berth_core::PortSet> {
    if record.is_empty() {
        return None;
    }
    let listed =
        berth_os::reserved_ports::read(std::path::Path::new(berth_os::reserved_ports::PATH))
            .ok()?;
    none_listed(record, &listed)
}

/// `record`, when none of its ports is in `listed` (see [`not_listed_here`]).
fn none_listed(
    record: &berth_core::PortSet,
    listed: &berth_core::PortSet,
) -> Option<berth_core::PortSet> {
    let unlisted = record.difference(listed);
    (!record.is_empty() && unlisted == *record).then_some(unlisted)
}

/// When the file at `path` was last written; `None` when there is none.
fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::symlink_metadata(path).ok()?.modified().ok()
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
        Some(name) => Some((
            name.clone(),
            crate::server::authority::claim(name, &config.socket).await?,
        )),
        None => None,
    };
    // Before the database and the kernel's list are touched: a daemon that cannot serve the
    // portserver endpoint it must serve stops having changed neither.
    let portserver = config
        .portserver
        .as_ref()
        .map(background::bind_portserver)
        .transpose()?;
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
    let names = store.load_names().map_err(io::Error::other)?;
    let runtime = open_runtime_journal(
        &config.db,
        config.runtime_dir.as_deref(),
        &boot_id,
        journal,
        &mut store,
    )?;
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
    watch_cgroups(&tracker, &shared, &cancel);
    shared.restore(persistent, journal);
    // After the table: a name with a live reservation is kept whatever its age.
    shared.load_names(names);
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
    // The portserver endpoint: served before `ready`, so its clients never find it missing.
    if let (Some(endpoint), Some(socket)) = (&config.portserver, portserver) {
        if let Err(e) = start_portserver(endpoint, socket, &shared, &per_uid, &tracker, &cancel) {
            // Its threads could not start, and nothing is served: the stop's own steps, here
            // (threads are what is short, so a blocking task might not start either) — the
            // kernel's list loses what this daemon listed, the store finishes what is queued,
            // an empty runtime journal goes.
            cancel.cancel();
            tracker.close();
            stop_kernel_sync_and_store(&shared, store_thread);
            let _ = shared.remove_journal_if_empty();
            return Err(e);
        }
    }
    end_grace(&tracker, &shared, &cancel, config.grace);
    rehold(&tracker, &shared, &cancel);
    resync(&tracker, &shared, &cancel);
    // The ephemeral share follows the range always; the pool only if it is the default one.
    follow_ephemeral(&tracker, &shared, &cancel, config.pool_follows_ephemeral);
    memory::give_back_after_waves(&tracker, &cancel);
    background::tell_owner_exits(&tracker, &shared, &cancel);
    let control = Arc::new(Control {
        stop: CancellationToken::new(),
        netns: NetnsCheck::current(),
        per_uid: per_uid.clone(),
        kept_boxes: crate::session::Kept::new(crate::session::KEPT_BOXES),
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

    let doors = accept::Doors {
        shared: shared.clone(),
        config: config.clone(),
        control: control.clone(),
        cancel: cancel.clone(),
        tracker: tracker.clone(),
        permits,
        others,
    };
    doors
        .accept_until(&listener, shutdown, &mut accepting)
        .await;

    let open = shared.counts().1;
    let draining = format!(
        "stopping: draining {open} {}",
        if open == 1 {
            "connection"
        } else {
            "connections"
        }
    );
    tracing::info!("{draining}");
    crate::server::notify::stopping(&draining);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    // Every session is done: a mirror a failed change left out of step is brought back in
    // step (a release whose journal removal failed must not come back after the restart),
    // the kernel's list loses the daemon's entries, then the store thread finishes what is
    // queued before the database lock is let go.
    if shared.mirrors_out_of_step() {
        shared.resync_mirrors();
    }
    let stopping = shared.clone();
    let _ =
        tokio::task::spawn_blocking(move || stop_kernel_sync_and_store(&stopping, store_thread))
            .await;
    if let Some((task, done)) = beacon {
        done.cancel();
        let _ = task.await;
    }
    drop(claim);
    // The cgroup it moved into for enforce mode is left empty behind it, not kept.
    shared.enforcer().leave_leaf();
    match shared.remove_journal_if_empty() {
        (true, _) => tracing::info!(
            "stopped: no runtime reservation left to keep; the runtime journal was removed"
        ),
        (false, 0) => tracing::info!("stopped"),
        (false, kept) => tracing::info!(
            "stopped: {kept} runtime reservations of running clients are kept for the next daemon"
        ),
    }
    Ok(())
}

/// The stop's blocking steps, once nothing is served: the kernel's list loses the daemon's
/// entries (those of running owners stay, for the next daemon), then the store thread finishes
/// what is queued.
fn stop_kernel_sync_and_store(shared: &Shared, store_thread: std::thread::JoinHandle<()>) {
    shared.stop_kernel_sync();
    shared.stop_store();
    if store_thread.join().is_err() {
        tracing::error!("the store thread did not finish cleanly");
    }
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
        Some(activated) => {
            let crate::server::listener::Activated {
                listener,
                path,
                portserver,
            } = activated;
            if path != config.socket {
                tracing::info!(
                    "serving on the socket systemd passed, {} (not {})",
                    path.display(),
                    config.socket.display()
                );
            }
            config.socket = path;
            if let Some((socket, name)) = portserver {
                adopt_portserver(&mut config, socket, name);
            }
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

/// Serves the portserver endpoint on the abstract socket systemd passed (`name`): the service
/// manager bound portpicker's address at boot, so no other process could take it first. A
/// daemon told of no endpoint serves it there; one told of another address names the passed
/// socket as not used.
fn adopt_portserver(config: &mut Config, socket: std::os::unix::net::UnixListener, name: String) {
    use crate::portserver::{Address, Endpoint};
    let passed = Address::Abstract(name);
    match &config.portserver {
        Some(endpoint) if endpoint.address != passed => {
            tracing::warn!(
                "the socket systemd passed on {passed} is not used: the portserver endpoint is configured on {}; it is closed",
                endpoint.address
            );
        }
        _ => {
            if config.portserver.is_none() {
                config.portserver = Some(Endpoint::new(passed.clone()));
            }
            crate::portserver::adopt(socket, passed);
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_core::PortSet;

    fn set(text: &str) -> PortSet {
        PortSet::parse(text).unwrap()
    }

    /// A release's record is another namespace's only when none of its entries is listed: one
    /// listed entry is enough to take it (a record may name more than the list holds).
    #[test]
    fn a_record_is_another_namespaces_only_when_none_of_it_is_listed() {
        assert_eq!(
            super::none_listed(&set("40000-40002"), &set("")),
            Some(set("40000-40002"))
        );
        assert_eq!(
            super::none_listed(&set("40000-40002"), &set("8080")),
            Some(set("40000-40002"))
        );
        assert_eq!(super::none_listed(&set("40000-40002"), &set("40001")), None);
        assert_eq!(
            super::none_listed(&set("40000-40002"), &set("40000-40002")),
            None
        );
        assert_eq!(super::none_listed(&set(""), &set("")), None);
    }
}
