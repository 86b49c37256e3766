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
    let (store, store_thread) = StoreHandle::spawn(store)?;
    let shared = Arc::new(Shared::new(&config, store)?);
    let held_owners = shared.restore(persistent, journal);
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    hold_for_reclaim(&tracker, &shared, &cancel, held_owners, config.grace);
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

/// Ends the hold on restored reservations: for each owner when it exits, and for all at the
/// end of the grace period.
fn hold_for_reclaim(
    tracker: &TaskTracker,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    owners: Vec<berth_core::Owner>,
    grace: Duration,
) {
    if owners.is_empty() {
        return;
    }
    for owner in owners {
        let (shared, cancel) = (shared.clone(), cancel.clone());
        tracker.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = crate::owner_watch::owner_exit(&owner) => shared.release_unclaimed(Some(&owner)),
            }
        });
    }
    let (shared, cancel) = (shared.clone(), cancel.clone());
    tracker.spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(grace) => shared.release_unclaimed(None),
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
