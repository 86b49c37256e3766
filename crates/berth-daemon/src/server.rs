//! The accept loop, and the daemon process around it.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::db_lock;
use crate::listener::{bind_socket, ListenError};
use crate::session::serve_connection;
use crate::state::{check_csprng, Shared};
use crate::store_thread::{self, StoreHandle};

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
/// At most `config.max_connections` connections are served at once; a permit is taken before
/// accepting, so excess clients wait in the kernel's backlog instead of costing memory.
pub async fn run(
    listener: UnixListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_with_ready(listener, config, shutdown, || {}).await
}

/// [`run`], calling `ready` once the daemon can answer: the database is locked and loaded and
/// the table rebuilt. (Clients that connect earlier wait in the socket's backlog.)
pub async fn run_with_ready(
    listener: UnixListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> io::Result<()> {
    check_csprng()?;
    let open_files = crate::limits::raise_open_files();
    tracing::debug!(open_files, "descriptor limit");
    let _db_lock = db_lock::acquire(&config.db)?;
    let mut store = store_thread::open(&config.db).map_err(io::Error::other)?;
    // Journaled owners cannot have survived a reboot; a pid and start time from an earlier
    // boot might name some other process now.
    if let Ok(boot_id) = crate::peer::read_proc("/proc/sys/kernel/random/boot_id") {
        if store.begin_boot(boot_id.trim()).map_err(io::Error::other)? {
            tracing::info!("the runtime journal was written before a reboot; it was cleared");
        }
    }
    let (persistent, journal) = store.load().map_err(io::Error::other)?;
    let (store, store_thread) = StoreHandle::spawn(store, config.store_faults.clone())?;
    let (shared, owners) = Shared::new(&config, store)?;
    let shared = Arc::new(shared);
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    watch_owners(&tracker, &shared, &cancel, owners);
    shared.restore(persistent, journal);
    end_grace(&tracker, &shared, &cancel, config.grace);
    ready();
    tokio::pin!(shutdown);
    tracing::info!(
        "serving on {} with the wildcard pool {}",
        config.socket.display(),
        config.pool
    );

    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Typically EMFILE: back off briefly rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (shared, config, cancel) = (shared.clone(), config.clone(), cancel.clone());
        tracker.spawn(async move {
            serve_connection(stream, shared, config, cancel).await;
            drop(permit);
        });
    }

    tracing::info!("shutting down: draining {} connections", tracker.len());
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    // Every session is done: the store thread finishes what is queued before the database
    // lock is let go.
    shared.stop_store();
    let joined = tokio::task::spawn_blocking(move || store_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("the store thread did not finish cleanly");
    }
    Ok(())
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
                    () = crate::owner_watch::owner_exit(&owner) => shared.owner_exited(&owner),
                }
                watched
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&key);
            });
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

/// Runs a daemon process: binds `config.socket`, calls `ready` once clients are served,
/// serves until SIGTERM or SIGINT, and removes the socket on the way out.
pub async fn serve(config: Config, ready: impl FnOnce()) -> Result<(), ServeError> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // Installing a handler is what matters: an on-demand daemon must outlive the terminal
    // of the command that started it.
    let _sighup = signal(SignalKind::hangup())?;
    let (listener, _guard) = bind_socket(&config.socket)?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received"),
            _ = sigint.recv() => tracing::info!("SIGINT received"),
        }
    };
    run_with_ready(listener, config, shutdown, ready).await?;
    Ok(())
}
