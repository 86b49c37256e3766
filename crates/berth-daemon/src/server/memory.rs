//! Memory back to the system after a wave of clients: once connections have come and then
//! stopped coming for a while, the allocator's free pages are returned (`malloc_trim`, through
//! `berth_os::memory`). Not during a wave: the pages would only be faulted in again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections accepted since the daemon started, on every socket it serves.
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

/// How often the count is looked at: free memory is given back after a look that saw
/// connections come, followed by one that saw none.
pub(crate) const QUIET_AFTER: Duration = Duration::from_secs(2);

/// Counts a connection accepted.
pub(crate) fn accepted() {
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
}

/// Gives free memory back once a wave of connections is over (see the module's text).
pub(super) fn give_back_after_waves(tracker: &TaskTracker, cancel: &CancellationToken) {
    let cancel = cancel.clone();
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(QUIET_AFTER);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = ACCEPTED.load(Ordering::Relaxed);
        let mut wave = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = ACCEPTED.load(Ordering::Relaxed);
            if now != seen {
                (seen, wave) = (now, true);
            } else if wave {
                wave = false;
                // Off the serving threads: it takes each arena's lock in turn.
                let _ = tokio::task::spawn_blocking(berth_os::memory::give_back_free_memory).await;
            }
        }
    });
}
