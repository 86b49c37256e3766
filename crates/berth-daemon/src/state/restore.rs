//! Start-up after a stop or a crash: what the store kept comes back into the table.
//!
//! Persistent reservations return as they were. Journaled runtime reservations return only if
//! their owner still runs (same pid, same start time); they are then held without a session
//! until the owner's client library re-claims them, its owner exits, or the grace period ends.

use berth_core::{Allowed, Owner};
use berth_store::{JournalOp, JournalRow, PersistentRow};

use super::Shared;
use crate::peer::process_owner;

impl Shared {
    /// Loads the store's contents; returns the owners of the held runtime reservations, to be
    /// watched.
    pub(crate) fn restore(
        &self,
        persistent: Vec<PersistentRow>,
        journal: Vec<JournalRow>,
    ) -> Vec<Owner> {
        let mut table = self.table();
        for row in persistent {
            let allowed = Allowed {
                users: row.allow_users,
                groups: row.allow_groups,
            };
            if let Err(e) = table.insert_persistent(
                row.token,
                row.protocol,
                row.range,
                allowed,
                row.created_at_ms,
                &mut |_, _| None,
            ) {
                // Only a database edited by hand can hold overlapping rows.
                tracing::error!(token = %row.token, "persistent reservation not loaded: {e}");
            }
        }
        let mut owners: Vec<Owner> = Vec::new();
        let (mut held, mut dropped) = (0usize, 0usize);
        for row in journal {
            let now = process_owner(row.owner.pid, row.owner.uid, row.owner.gid);
            let alive = now.start_time != 0 && now.start_time == row.owner.start_time;
            if !alive {
                dropped += 1;
                self.store.journal_detached(JournalOp::Remove(row.token));
                continue;
            }
            match table.restore_runtime(
                row.token,
                row.protocol,
                row.range,
                row.owner.clone(),
                row.acquired_at_ms,
            ) {
                Ok(_) => {
                    held += 1;
                    if !owners.iter().any(|o| o.same_process(&row.owner)) {
                        owners.push(row.owner);
                    }
                }
                Err(e) => {
                    dropped += 1;
                    tracing::warn!(token = %row.token, "journaled reservation not restored: {e}");
                    self.store.journal_detached(JournalOp::Remove(row.token));
                }
            }
        }
        if held + dropped > 0 {
            tracing::info!(
                "restart: holding {held} runtime reservations for their owners to re-claim; freed {dropped} whose owners are gone"
            );
        }
        owners
    }

    /// Releases the held reservations nobody re-claimed: all of them (the grace period is
    /// over) or those of `owner` (it exited).
    pub(crate) fn release_unclaimed(&self, owner: Option<&Owner>) {
        let released = {
            let mut table = self.table();
            let released = table.release_unclaimed(owner);
            for r in &released {
                self.store.journal_detached(JournalOp::Remove(r.token));
            }
            released
        };
        for r in &released {
            tracing::info!(token = %r.token, "{} {} released: not re-claimed by {}", r.protocol, berth_core::describe(r.range), r.holder_description());
        }
    }
}
