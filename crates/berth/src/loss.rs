//! Reservations this session lost: the daemon restarted and did not give them back (the
//! re-claim was refused, or no daemon came back within the reconnection window). The
//! connection task records each loss here, at once and in the log; each [`crate::Reservation`]
//! reports its own as an error from then on, and [`crate::Reservation::lost`] waits for it.

use std::collections::HashMap;
use std::sync::Mutex;

use berth_core::{ErrorKind, Token};
use tokio::sync::watch;

use crate::error::Error;

/// The losses of one session.
#[derive(Debug)]
pub(crate) struct Losses {
    lost: Mutex<HashMap<Token, (ErrorKind, String)>>,
    /// Bumped on every loss, for waiters.
    changed: watch::Sender<u64>,
}

impl Default for Losses {
    fn default() -> Self {
        Losses {
            lost: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl Losses {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Token, (ErrorKind, String)>> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `token` is lost, and why (a full sentence).
    pub(crate) fn mark(&self, token: Token, kind: ErrorKind, why: String) {
        tracing::warn!(target: "berth::loss", "{why}");
        self.map().insert(token, (kind, why));
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The error a lost `token` reports.
    pub(crate) fn get(&self, token: Token) -> Option<Error> {
        self.map()
            .get(&token)
            .map(|(kind, why)| Error::new(*kind, why.clone()))
    }

    /// Forgets `token` (its handle is gone).
    pub(crate) fn forget(&self, token: Token) {
        self.map().remove(&token);
    }

    /// Waits until `token` is lost.
    pub(crate) async fn wait(&self, token: Token) -> Error {
        let mut changes = self.changed.subscribe();
        loop {
            if let Some(e) = self.get(token) {
                return e;
            }
            // The sender lives as long as `self`: this only ends by a change.
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
