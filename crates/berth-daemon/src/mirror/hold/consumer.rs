//! [`Holds`] as a consumer of the change stream: a held grant's staged sockets filed, a
//! restored reservation held again, a released one's sockets closed; and the blocks made to
//! match the table when the stream is out of step.

use std::collections::HashMap;

use berth_core::{Change, PortRange, Protocol, Token};

use super::{Block, Holds};
use crate::mirror::{Ack, Consumer as ChangeConsumer, MirrorError};

/// [`Holds`] as a consumer of the change stream (the daemon's state keeps the other handle).
pub(crate) struct Consumer(pub(crate) std::sync::Arc<Holds>);

impl ChangeConsumer for Consumer {
    fn name(&self) -> &'static str {
        "the hold sockets"
    }

    fn accept(&self, change: &Change) -> Ack {
        let holds = &self.0;
        match change {
            Change::Granted(r) if r.held() => {
                if let Err(why) = holds.file(r, true) {
                    return Ack::Failed(why);
                }
            }
            Change::Restored(r) if r.held() => {
                let _ = holds.file(r, false);
            }
            Change::Released { reservation: r, .. } => {
                holds.lock().held.remove(&r.token);
            }
            _ => {}
        }
        Ack::Done
    }

    /// The held blocks made to match the table's held reservations: the sockets of a block the
    /// table no longer has are closed (the daemon's own unconnected sockets: a close that never
    /// blocks), and a held reservation with no block gets an empty one, which the re-hold pass
    /// fills (its binds are not made under the table lock).
    fn resync(&self, table: &berth_core::Table) -> Result<(), MirrorError> {
        let wanted: HashMap<Token, (Protocol, PortRange)> = table
            .iter()
            .filter(|r| r.held())
            .map(|r| (r.token, (r.protocol, r.range)))
            .collect();
        let mut state = self.0.lock();
        let before = state.held.len();
        state.held.retain(|token, _| wanted.contains_key(token));
        let dropped = before - state.held.len();
        let mut added = 0;
        for (token, (protocol, range)) in wanted {
            state.held.entry(token).or_insert_with(|| {
                added += 1;
                Block {
                    protocol,
                    range,
                    sockets: HashMap::new(),
                    binding: std::collections::HashSet::new(),
                }
            });
        }
        if dropped + added > 0 {
            tracing::info!(
                dropped,
                added,
                "re-synchronising the hold sockets with the table"
            );
        }
        Ok(())
    }
}
