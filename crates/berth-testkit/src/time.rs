//! Paused tokio time.

/// A task with a timer due every millisecond, for tests on paused tokio time: the clock jumps
/// to the next timer whenever the runtime has nothing to do — also while it merely waits for
/// socket I/O already on its way — so a ticker keeps each jump to a millisecond, and every
/// socket exchange finishes long before the daemon's own timers. Aborted when dropped.
pub struct Ticker(tokio::task::JoinHandle<()>);

/// Starts a [`Ticker`] on the current runtime.
pub fn ticker() -> Ticker {
    Ticker(tokio::spawn(async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }))
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}
