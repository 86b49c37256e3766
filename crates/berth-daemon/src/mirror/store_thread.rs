//! The store's own thread: one owner for the SQLite connection, fed by messages in the order
//! the allocation state changed, so the database never disagrees with the table about what
//! happened first. It writes what must be durable (persistent reservations, with an fsync); the
//! runtime journal is a file of its own, written without this thread
//! (`journal.rs`).

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use berth_core::{Name, Protocol, Token};
use berth_store::{NameRow, PersistentRow, Store, StoreError};
use tokio::sync::oneshot;

use crate::mirror::{MirrorError, WriteError};

/// A request to the store thread.
enum Msg {
    /// Record a persistent reservation durably.
    Create(PersistentRow, oneshot::Sender<Result<(), MirrorError>>),
    /// Delete a persistent reservation durably.
    Delete(Token, oneshot::Sender<Result<(), MirrorError>>),
    /// Remember the block a name was given (best effort: a failure is logged).
    Remember(NameRow),
    /// Forget what a user's name was given in a protocol (best effort).
    Forget(u32, Name, Protocol),
    /// Finish: everything queued before this is applied, nothing after.
    Stop,
}

/// A store operation on its way: queued at once, answered once written (and synced, for
/// persistent rows) or failed. Once the store thread has stopped, it answers
/// [`MirrorError::Stopped`] (the message is dropped unanswered).
pub(crate) struct Queued(pub(crate) oneshot::Receiver<Result<(), MirrorError>>);

/// A handle to the store thread. Cloning shares the thread; it ends when every handle is gone.
#[derive(Clone)]
pub(crate) struct StoreHandle {
    tx: mpsc::Sender<Msg>,
}

impl StoreHandle {
    /// Starts the thread that owns `store`; while `faulty` is set, every write fails without
    /// touching the database (fault injection for tests). The thread ends once every handle is dropped;
    /// join it before letting go of the database lock, so that nothing is still writing.
    pub(crate) fn spawn(
        store: Store,
        faulty: Arc<crate::faults::StoreFault>,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel();
        let fault = faulty.clone();
        let thread = std::thread::Builder::new()
            .name("berth-store".into())
            .spawn(move || serve(store, rx, &fault))?;
        Ok((StoreHandle { tx }, thread))
    }

    /// Asks the thread to finish once what is queued is applied.
    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }

    /// Queues the record of a persistent reservation (call it under the table lock, so that
    /// operations reach the store in the table's order; await the answer after dropping the
    /// lock); it is done once durable.
    pub(crate) fn create(&self, row: PersistentRow) -> Queued {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Create(row, done)).is_err() {
            tracing::error!("{}", WriteError::StoreGone);
        }
        Queued(rx)
    }

    /// Queues the deletion of a persistent reservation (under the table lock, like
    /// [`StoreHandle::create`]); it is done once durable. A row already gone counts as done.
    pub(crate) fn delete(&self, token: Token) -> Queued {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Delete(token, done)).is_err() {
            tracing::error!("{}", WriteError::StoreGone);
        }
        Queued(rx)
    }
}

impl StoreHandle {
    /// Queues the memory of a name's block; nobody waits for it (a name's memory is a
    /// convenience: a failure is logged, and costs the name its block next time at worst).
    pub(crate) fn remember_name(&self, row: NameRow) {
        if self.tx.send(Msg::Remember(row)).is_err() {
            tracing::error!("{}", WriteError::StoreGone);
        }
    }

    /// Queues forgetting `uid`'s `name` in `protocol`, as [`StoreHandle::remember_name`].
    pub(crate) fn forget_name(&self, uid: u32, name: Name, protocol: Protocol) {
        if self.tx.send(Msg::Forget(uid, name, protocol)).is_err() {
            tracing::error!("{}", WriteError::StoreGone);
        }
    }
}

/// Opens the store at `path`, reporting which file failed.
pub(crate) fn open(path: &Path) -> Result<Store, StoreError> {
    Store::open(path)
}

/// How long the store stays idle before it checkpoints what it wrote. The store checkpoints by
/// itself every so many commits too, but that fsync then lands on a request's path; a quiet
/// moment is the better time.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);

fn serve(mut store: Store, rx: mpsc::Receiver<Msg>, faulty: &crate::faults::StoreFault) {
    // Whether anything was committed since the last checkpoint.
    let mut dirty = false;
    loop {
        let msg = match rx.recv_timeout(IDLE_CHECKPOINT) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if dirty {
                    if let Err(e) = store.checkpoint() {
                        tracing::warn!("checkpoint of the database failed: {e}");
                    }
                    dirty = false;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        dirty = true;
        match msg {
            Msg::Create(row, done) => {
                let created = if faulty.trips() {
                    Err(WriteError::Faulty)
                } else {
                    store.create_persistent(&row).map_err(database)
                };
                let _ = done.send(created.map_err(MirrorError::from));
            }
            Msg::Delete(token, done) => {
                let deleted = if faulty.trips() {
                    Err(WriteError::Faulty)
                } else {
                    store.delete_persistent(token).map(|_| ()).map_err(database)
                };
                let _ = done.send(deleted.map_err(MirrorError::from));
            }
            Msg::Remember(row) => {
                if let Err(e) = store.remember_name(&row) {
                    tracing::warn!(name = %row.name, "cannot remember the name's block: {e}");
                }
            }
            Msg::Forget(uid, name, protocol) => {
                if let Err(e) = store.forget_name(uid, &name, protocol) {
                    tracing::warn!(%name, "cannot forget the name's block: {e}");
                }
            }
            Msg::Stop => return,
        }
    }
}

/// A failed commit of the database.
fn database(e: StoreError) -> WriteError {
    WriteError::Database(Arc::new(e))
}
