//! Fault injection: switches that make one of the daemon's writers fail as a failing disk
//! would, so tests can see what clients are told and that nothing is lost — and a log of
//! kernel sync's writes, so tests can check each one rather than sample the list. Every switch
//! is off unless a caller turns it on; a daemon started by `berth daemon` never does. The cost
//! when off is one relaxed atomic load per write.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The daemon's fault switches; clones share them, so a test keeps one and flips it while the
/// daemon runs.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    store: Arc<StoreFault>,
    kernel: Arc<AtomicBool>,
    kernel_log: KernelLog,
}

/// One write kernel sync made to the reserved-ports list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelWrite {
    /// Whether it replaced the list; otherwise it only added to it.
    pub replaced: bool,
    /// The bytes of its value, newline included (a replacing one must fit one kernel chunk).
    pub bytes: usize,
    /// The list after it, as the daemon planned it.
    pub list: berth_core::PortSet,
}

/// Where kernel sync's writes are kept while a test asks for them.
#[derive(Debug, Clone, Default)]
pub(crate) struct KernelLog {
    on: Arc<AtomicBool>,
    writes: Arc<Mutex<Vec<KernelWrite>>>,
}

impl KernelLog {
    /// Keeps `write`, if asked to.
    pub(crate) fn note(&self, write: impl FnOnce() -> KernelWrite) {
        if self.on.load(Ordering::Relaxed) {
            self.writes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(write());
        }
    }
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

    /// Keeps every write kernel sync makes to the reserved-ports list from now on (see
    /// [`Faults::kernel_writes`]).
    pub fn log_kernel_writes(&self) {
        self.kernel_log.on.store(true, Ordering::SeqCst);
    }

    /// The writes kept since [`Faults::log_kernel_writes`], in order.
    pub fn kernel_writes(&self) -> Vec<KernelWrite> {
        self.kernel_log
            .writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The log of kernel sync's writes, for its writer.
    pub(crate) fn kernel_log(&self) -> KernelLog {
        self.kernel_log.clone()
    }
}
