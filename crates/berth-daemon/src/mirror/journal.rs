//! The store as a consumer of table changes: runtime reservations go to the runtime journal
//! (so a restarted daemon can hold them for their owners), persistent ones to their durable
//! table in the database.
//!
//! The runtime journal is written here, on the thread that made the change, while the table is
//! locked: one `write(2)` of a few dozen bytes to a file (`berth_store::RuntimeJournal`), done
//! once it returns — the bytes then survive a crash of the daemon, which is all a runtime
//! reservation needs (its owner does not survive a crash of the host). Persistent rows must
//! survive a power loss, so they go to the store thread, which commits them with an fsync.

use std::sync::{Arc, Mutex, PoisonError};

use berth_core::{Bond, Change, Lease, Reservation};
use berth_store::{JournalOp, JournalRow, PersistentRow, RuntimeJournal};

use crate::mirror::store_thread::{Queued, StoreHandle};
use crate::mirror::{Ack, Consumer, WriteError};

/// The runtime journal, shared by this consumer and the kernel-sync writer (which records
/// there which entries of the kernel's list are the daemon's).
#[derive(Clone)]
pub(crate) struct Runtime {
    journal: Arc<Mutex<RuntimeJournal>>,
    /// While it trips, writes fail (fault injection for tests).
    faulty: Arc<crate::faults::StoreFault>,
}

impl Runtime {
    pub(crate) fn new(mut journal: RuntimeJournal, faulty: Arc<crate::faults::StoreFault>) -> Self {
        // Appends happen while the table is locked: the file is rewritten outside that lock,
        // by `rewrite_if_due`, not by the append that makes it outgrow its live rows.
        journal.set_auto_rewrite(false);
        Runtime {
            journal: Arc::new(Mutex::new(journal)),
            faulty,
        }
    }

    /// Rewrites the journal once it has outgrown its live rows, without holding its lock (nor
    /// the table's) while the new file is written: the rows are encoded under the journal's
    /// lock, written outside it, and what was appended meanwhile is copied over under it
    /// again. Blocking (a file write): run it off the serving threads.
    pub(crate) fn rewrite_if_due(&self) {
        let lock = || self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        let job = {
            let mut journal = lock();
            if !journal.rewrite_due() {
                return;
            }
            journal.begin_rewrite()
        };
        let prepared = job.and_then(berth_store::RewriteJob::prepare);
        let mut journal = lock();
        let done = match prepared {
            Ok(prepared) => journal.finish_rewrite(prepared),
            Err(e) => {
                journal.abandon_rewrite();
                Err(e)
            }
        };
        if let Err(e) = done {
            tracing::warn!(
                "cannot rewrite the runtime journal (it keeps growing until a rewrite works): {e}"
            );
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, RuntimeJournal>, WriteError> {
        if self.faulty.trips() {
            return Err(WriteError::Faulty);
        }
        Ok(self.read())
    }

    /// The journal, to read: not a write, so the store's fault switch is not asked (a check
    /// that writes nothing must not use up a test's allowance of writes).
    fn read(&self) -> std::sync::MutexGuard<'_, RuntimeJournal> {
        self.journal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a write may be made now (the store's fault switch): call once per write made
    /// through [`Runtime::read`]'s guard.
    fn may_write(&self) -> Result<(), WriteError> {
        if self.faulty.trips() {
            return Err(WriteError::Faulty);
        }
        Ok(())
    }

    /// At a clean stop: removes the journal file when it holds nothing for the next daemon (no
    /// reservation, no entry of the kernel's list), so that the runtime directory, which every
    /// network namespace's daemon shares, does not keep a file per namespace ever served.
    /// Whether it did; the reservations kept otherwise.
    pub(crate) fn remove_if_empty(&self) -> (bool, usize) {
        let journal = self.read();
        let kept = journal.rows().len();
        if kept > 0 || !journal.kernel().is_empty() {
            return (false, kept);
        }
        match std::fs::remove_file(journal.path()) {
            Ok(()) => (true, 0),
            Err(e) => {
                tracing::debug!(
                    "cannot remove the empty runtime journal {}: {e}",
                    journal.path().display()
                );
                (false, 0)
            }
        }
    }

    /// Records which entries of `ip_local_reserved_ports` the daemon may have written.
    pub(crate) fn set_kernel(&self, list: &str) -> Result<(), WriteError> {
        self.lock()?
            .set_kernel(list)
            .map_err(|e| WriteError::Journal(Arc::new(e)))
    }
}

/// Mirrors the table into the runtime journal and the store thread's queue, in the table's
/// order.
pub(crate) struct Journal {
    runtime: Runtime,
    store: StoreHandle,
}

impl Journal {
    pub(crate) fn new(runtime: Runtime, store: StoreHandle) -> Self {
        Journal { runtime, store }
    }

    /// Records a runtime journal operation now.
    fn journal(&self, op: &JournalOp) -> Ack {
        self.journal_all(std::slice::from_ref(op))
    }

    /// Records runtime journal operations now, with one write; the acknowledgement of each.
    fn journal_all(&self, ops: &[JournalOp]) -> Ack {
        let mut runtime = match self.runtime.lock() {
            Ok(runtime) => runtime,
            Err(why) => return Ack::Failed(why.into()),
        };
        match runtime.apply_all(ops) {
            Ok(()) => Ack::Done,
            Err(e) => {
                tracing::error!("cannot write the runtime journal: {e}");
                Ack::Failed(WriteError::Journal(Arc::new(e)).into())
            }
        }
    }

    /// Where `change` is recorded.
    fn record(change: &Change) -> Record {
        let op = match change {
            Change::Granted(r) => journal_row(r).map(JournalOp::Insert),
            Change::Released { reservation, .. } => Some(JournalOp::Remove(reservation.token)),
            // A re-claim changes only the session, which the journal does not record; a
            // hand-over changes the owner and makes it live as long as the new one.
            Change::Rebound { before, after } => (before.owner() != after.owner()
                || before.bond().map(is_process) != after.bond().map(is_process)
                || before.cgroup() != after.cgroup())
            .then(|| journal_row(after))
            .flatten()
            .map(JournalOp::Insert),
            Change::Restored(_) => None,
            Change::NotRestored { token, .. } => Some(JournalOp::Remove(*token)),
            Change::PersistentCreated(_) | Change::PersistentDeleted(_) => return Record::Store,
        };
        op.map_or(Record::Nowhere, Record::Runtime)
    }

    /// A persistent change, queued for the store thread (committed there).
    fn store(&self, change: &Change) -> Ack {
        let queued = match change {
            Change::PersistentCreated(r) => persistent_row(r).map(|row| self.store.create(row)),
            Change::PersistentDeleted(r) => Some(self.store.delete(r.token)),
            _ => None,
        };
        match queued {
            Some(Queued(rx)) => Ack::Later(rx),
            None => Ack::Done,
        }
    }
}

/// Where a change is recorded.
enum Record {
    /// In the runtime journal, with this operation.
    Runtime(JournalOp),
    /// By the store thread: a persistent row.
    Store,
    /// Nowhere (a re-claim; a restored row the journal has already).
    Nowhere,
}

impl Consumer for Journal {
    fn name(&self) -> &'static str {
        "the database"
    }

    fn accept(&self, change: &Change) -> Ack {
        match Self::record(change) {
            Record::Runtime(op) => self.journal(&op),
            Record::Store => self.store(change),
            Record::Nowhere => Ack::Done,
        }
    }

    /// The batch's runtime records with one write (a portserver answer's pair: one record
    /// write, not two); persistent changes to the store thread as one by one.
    fn accept_batch(&self, batch: crate::mirror::Batch<'_>, ack: &mut dyn FnMut(usize, Ack)) {
        let mut ops = Vec::new();
        let mut recorded = Vec::new();
        for (i, change) in batch {
            match Self::record(change) {
                Record::Runtime(op) => {
                    ops.push(op);
                    recorded.push(i);
                }
                Record::Store => ack(i, self.store(change)),
                Record::Nowhere => {}
            }
        }
        if ops.is_empty() {
            return;
        }
        // Written, nothing more to wait for; or failed, each of them.
        if let Ack::Failed(why) = self.journal_all(&ops) {
            for i in recorded {
                ack(i, Ack::Failed(why.clone()));
            }
        }
    }

    /// The runtime journal made to hold exactly the table's runtime reservations: a row the
    /// table no longer has (a release whose removal failed: it would come back after a
    /// restart) is removed, a missing or different one written. A record each, only for what
    /// differs. (Persistent rows are refusable changes, undone when their commit fails.)
    fn resync(&self, table: &berth_core::Table) -> Result<(), crate::mirror::MirrorError> {
        // Read first; a write (and the fault switch's say) only when something differs.
        let mut runtime = self.runtime.read();
        let wanted: Vec<JournalRow> = table.iter().filter_map(journal_row).collect();
        let ops = runtime
            .changes_to_hold(wanted)
            .map_err(|e| WriteError::Journal(Arc::new(e)))?;
        if ops.is_empty() {
            return Ok(());
        }
        tracing::info!(
            records = ops.len(),
            "re-synchronising the runtime journal with the table"
        );
        self.runtime.may_write()?;
        for op in &ops {
            runtime
                .apply(op)
                .map_err(|e| WriteError::Journal(Arc::new(e)))?;
        }
        Ok(())
    }
}

fn is_process(bond: Bond) -> bool {
    bond == Bond::Process
}

/// The journal's row for a runtime reservation.
fn journal_row(r: &Reservation) -> Option<JournalRow> {
    let Lease::Runtime { owner, bond, held } = &r.lease else {
        return None;
    };
    Some(JournalRow {
        token: r.token,
        protocol: r.protocol,
        range: r.range,
        owner: owner.clone(),
        acquired_at_ms: r.acquired_at_ms,
        process: *bond == Bond::Process,
        held: *held,
        label: r.label.clone(),
        name: r.name.clone(),
        cgroup: r.cgroup(),
    })
}

/// The durable row of a persistent reservation.
fn persistent_row(r: &Reservation) -> Option<PersistentRow> {
    let Lease::Persistent {
        allowed,
        created_by,
    } = &r.lease
    else {
        return None;
    };
    Some(PersistentRow {
        token: r.token,
        protocol: r.protocol,
        range: r.range,
        allow_users: allowed.users.clone(),
        allow_groups: allowed.groups.clone(),
        created_at_ms: r.acquired_at_ms,
        created_by_uid: *created_by,
        label: r.label.clone(),
        name: r.name.clone(),
    })
}
