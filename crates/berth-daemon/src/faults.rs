//! Fault injection: switches that make one of the daemon's writers fail as a failing disk
//! would, so tests can see what clients are told and that nothing is lost. Every switch is off
//! unless a caller turns it on; a daemon started by `berth daemon` never does. The cost when
//! off is one relaxed atomic load per write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The daemon's fault switches; clones share them, so a test keeps one and flips it while the
/// daemon runs.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    store: Arc<AtomicBool>,
}

impl Faults {
    /// Makes every write to the daemon's database and runtime journal fail (`true`), or work
    /// again (`false`).
    pub fn fail_store(&self, fail: bool) {
        self.store.store(fail, Ordering::SeqCst);
    }

    /// The store's switch, for the writers that check it.
    pub(crate) fn store(&self) -> Arc<AtomicBool> {
        self.store.clone()
    }
}
