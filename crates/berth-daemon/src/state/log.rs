//! One log line per change of the table, at the level its kind deserves.

use super::*;

/// One log line per change, for operators: what clients do every moment (grants, releases,
/// hand-overs) at DEBUG, with the owner's pid and uid as fields, so that a busy
/// daemon's log can be turned down to INFO; what changes the daemon's lasting state
/// (persistent reservations, what a restart restored, re-claimed or could not restore) at INFO.
pub(super) fn log_changes(changes: &[Change]) {
    for change in changes {
        match change {
            Change::Granted(r) => {
                let (pid, uid) = owner_ids(r);
                tracing::debug!(token = %r.token, pid, uid, "{} {} granted to {}", r.protocol, berth_core::describe(r.range), r.holder_description());
            }
            Change::Released {
                reservation: r,
                why,
            } => {
                let (pid, uid) = owner_ids(r);
                if matches!(
                    why,
                    berth_core::Ending::NotReclaimed | berth_core::Ending::Undone
                ) {
                    // The end of a restart's grace period, or a change the store refused.
                    tracing::info!(token = %r.token, pid, uid, "{} {} of {} ended: {}", r.protocol, berth_core::describe(r.range), r.holder_description(), why.as_str());
                } else {
                    tracing::debug!(token = %r.token, pid, uid, "{} {} of {} ended: {}", r.protocol, berth_core::describe(r.range), r.holder_description(), why.as_str());
                }
            }
            Change::Rebound { before, after: r } => {
                let (pid, uid) = owner_ids(r);
                if before.bond() == Some(berth_core::Bond::Unclaimed) {
                    // Only after a restart, once per reservation: part of the restart's story.
                    tracing::info!(token = %r.token, pid, uid, "{} {} re-claimed by pid {pid}", r.protocol, berth_core::describe(r.range));
                } else {
                    tracing::debug!(token = %r.token, pid, uid, "{} {} handed to pid {pid} ({}); it lives as long as that process", r.protocol, berth_core::describe(r.range), r.holder_description());
                }
            }
            Change::Restored(r) => {
                tracing::debug!(token = %r.token, "{} {} restored", r.protocol, berth_core::describe(r.range));
            }
            Change::NotRestored {
                token,
                protocol,
                range,
            } => {
                tracing::info!(%token, "{protocol} {} not restored: its owner is gone or its ports are taken", berth_core::describe(*range));
            }
            Change::PersistentCreated(r) => {
                tracing::info!(token = %r.token, "persistent {} {} created", r.protocol, berth_core::describe(r.range));
            }
            Change::PersistentDeleted(r) => {
                tracing::info!(token = %r.token, "persistent {} {} deleted", r.protocol, berth_core::describe(r.range));
            }
        }
    }
}

/// The owner's pid and uid for a log line (0, 0 for a persistent reservation).
fn owner_ids(r: &Reservation) -> (u32, u32) {
    r.owner().map_or((0, 0), |o| (o.pid, o.uid))
}
