//! The database as a consumer of table changes: runtime reservations go to the journal (so a
//! restarted daemon can hold them for their owners), persistent ones to their durable table.

use berth_core::{Bond, Change, Lease, Reservation};
use berth_store::{JournalOp, JournalRow, PersistentRow};

use crate::changes::{Ack, Consumer};
use crate::store_thread::{Queued, StoreHandle};

/// Mirrors the table into the store thread's queue, in the table's order.
pub(crate) struct Journal {
    store: StoreHandle,
}

impl Journal {
    pub(crate) fn new(store: StoreHandle) -> Self {
        Journal { store }
    }
}

impl Consumer for Journal {
    fn name(&self) -> &'static str {
        "the database"
    }

    fn accept(&self, change: &Change) -> Ack {
        let queued = match change {
            Change::Granted(r) => {
                journal_row(r).map(|row| self.store.journal(JournalOp::Insert(row)))
            }
            Change::Released { reservation, .. } => {
                Some(self.store.journal(JournalOp::Remove(reservation.token)))
            }
            // A re-claim changes only the session, which the journal does not record; a
            // hand-over changes the owner and makes it live as long as the new one.
            Change::Rebound { before, after } => (before.owner() != after.owner()
                || before.bond().map(is_process) != after.bond().map(is_process))
            .then(|| journal_row(after))
            .flatten()
            .map(|row| self.store.journal(JournalOp::Insert(row))),
            Change::Restored(_) => None,
            Change::NotRestored { token, .. } => {
                Some(self.store.journal(JournalOp::Remove(*token)))
            }
            Change::PersistentCreated(r) => persistent_row(r).map(|row| self.store.create(row)),
            Change::PersistentDeleted(r) => Some(self.store.delete(r.token)),
        };
        match queued {
            Some(Queued(rx)) => Ack::Later(rx),
            None => Ack::Done,
        }
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
    })
}
