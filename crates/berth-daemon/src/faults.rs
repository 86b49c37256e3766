//! Fault injection: switches that make one of the daemon's writers fail as a failing disk
//! would, so tests can see what clients are told and that nothing is lost. Every switch is off
//! unless a caller turns it on; a daemon started by `berth daemon` never does. The cost when
//! off is one relaxed atomic load per write.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

/// The daemon's fault switches; clones share them, so a test keeps one and flips it while the
/// daemon runs.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    store: Arc<StoreFault>,
    kernel: Arc<AtomicBool>,
}

/// The store's switch: every write fails while it is on, or from the n-th write on.
#[derive(Debug)]
pub(crate) struct StoreFault {
    fail: AtomicBool,
    /// Writes left before they fail; negative: no countdown.
    after: AtomicI64,
}

impl Default for StoreFault {
    fn default() -> Self {
        StoreFault {
            fail: AtomicBool::new(false),
            after: AtomicI64::new(-1),
        }
    }
}

impl StoreFault {
    /// Whether this write fails (and, with a countdown running, counts it).
    pub(crate) fn trips(&self) -> bool {
        if self.fail.load(Ordering::SeqCst) {
            return true;
        }
        let left = self.after.load(Ordering::SeqCst);
        if left < 0 {
            return false;
        }
        if left == 0 {
            self.fail.store(true, Ordering::SeqCst);
            self.after.store(-1, Ordering::SeqCst);
            return true;
        }
        self.after.store(left - 1, Ordering::SeqCst);
        false
    }
}

impl Faults {
    /// Makes every write to the daemon's database and runtime journal fail (`true`), or work
    /// again (`false`; a countdown is cancelled too).
    pub fn fail_store(&self, fail: bool) {
        self.store.after.store(-1, Ordering::SeqCst);
        self.store.fail.store(fail, Ordering::SeqCst);
    }

    /// Lets the next `writes` writes to the database and runtime journal succeed, and makes
    /// every one after them fail (until [`Faults::fail_store`]`(false)`): a disk that fails in
    /// the middle of a request's changes.
    pub fn fail_store_after(&self, writes: u32) {
        self.store.fail.store(false, Ordering::SeqCst);
        self.store.after.store(i64::from(writes), Ordering::SeqCst);
    }

    /// The store's switch, for the writers that check it.
    pub(crate) fn store(&self) -> Arc<StoreFault> {
        self.store.clone()
    }

    /// Makes every write to the kernel's reserved-ports list fail (`true`), as a kernel
    /// refusing the write would, or work again (`false`).
    pub fn fail_kernel(&self, fail: bool) {
        self.kernel.store(fail, Ordering::SeqCst);
    }

    /// The kernel list's switch, for kernel sync's writer.
    pub(crate) fn kernel(&self) -> Arc<AtomicBool> {
        self.kernel.clone()
    }
}
