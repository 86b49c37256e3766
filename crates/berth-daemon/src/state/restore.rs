//! Start-up after a stop or a crash: what the store kept comes back into the table.
//!
//! Persistent reservations return as they were. Journaled runtime reservations return only if
//! their owner still runs (same pid, same start time): a reservation handed to a process lives
//! on as long as that process; any other is *unclaimed* until its owner's client library
//! re-claims it, its owner exits, or the grace period ends. A cgroup's (enforce mode) returns
//! if its cgroup still has a process, and is kept for it again at once.

use berth_core::{Allowed, Bond, Change, Lease, Reservation, Table};
use berth_store::{JournalRow, PersistentRow};

use super::Shared;
use crate::session::peer::process_owner;

impl Shared {
    /// Loads the store's contents into the table, through the change stream (so the journal
    /// forgets what is not taken back, and the owners to watch are watched).
    pub(crate) fn restore(&self, persistent: Vec<PersistentRow>, journal: Vec<JournalRow>) {
        let mut table = self.table();
        let mut changes = Vec::with_capacity(persistent.len() + journal.len());
        for row in persistent {
            let token = row.token;
            let reservation = Reservation {
                token,
                protocol: row.protocol,
                range: row.range,
                acquired_at_ms: row.created_at_ms,
                lease: Lease::Persistent {
                    allowed: Allowed {
                        users: row.allow_users,
                        groups: row.allow_groups,
                    },
                    created_by: row.created_by_uid,
                },
                label: row.label,
                name: row.name,
            };
            match table.restore(reservation, false) {
                Ok(change) => changes.push(change),
                // Only a database edited by hand can hold overlapping rows.
                Err(e) => tracing::error!(%token, "persistent reservation not loaded: {e}"),
            }
        }
        let (mut held, mut dropped) = (0usize, 0usize);
        for row in journal {
            // A cgroup's lives while the cgroup has a process, whoever started it.
            let alive = match row.cgroup {
                Some(id) => self.enforcer.readopt(id),
                None => {
                    let now = process_owner(row.owner.pid, row.owner.uid, row.owner.gid);
                    now.start_time != 0 && now.start_time == row.owner.start_time
                }
            };
            let change = if alive {
                let capped = self.capped(&row.owner);
                let bond = match (row.cgroup, row.process) {
                    (Some(id), _) => Bond::Cgroup(id),
                    (None, true) => Bond::Process,
                    (None, false) => Bond::Unclaimed,
                };
                let reservation = Reservation {
                    token: row.token,
                    protocol: row.protocol,
                    range: row.range,
                    acquired_at_ms: row.acquired_at_ms,
                    lease: Lease::Runtime {
                        owner: row.owner,
                        bond,
                        held: row.held,
                    },
                    label: row.label,
                    name: row.name,
                };
                table
                    .restore(reservation, capped)
                    .unwrap_or_else(|_| Table::forget(row.token, row.protocol, row.range))
            } else {
                Table::forget(row.token, row.protocol, row.range)
            };
            if matches!(change, Change::Restored(_)) {
                held += 1;
            } else {
                dropped += 1;
            }
            changes.push(change);
        }
        if held + dropped > 0 {
            tracing::info!(
                "restart: holding {held} runtime reservations for their owners; freed {dropped} whose owners are gone"
            );
        }
        // Nobody waits: the journal's removals of the dropped rows need no answer.
        drop(self.publish(&mut table, changes));
        drop(table);
        self.enforcer.after_restore();
    }
}
