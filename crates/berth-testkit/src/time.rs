//! Paused tokio time, moved by the test alone.
//!
//! On a paused clock tokio *auto-advances*: whenever the runtime has nothing to do, the clock
//! jumps to the next timer — also while the runtime merely waits for a socket, or for one of the
//! daemon's own threads (its store thread, its closers). A timer could then fire while the
//! daemon is still busy elsewhere, and a test would fail on a slow machine. So these tests
//! [`freeze`] the clock (tokio does not auto-advance while a blocking task runs) and move it
//! themselves with [`advance`] and [`advance_to`], in small steps, letting every task the step
//! woke run before the next one. Waits on real I/O get a real-time bound with [`within`].

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use tokio::time::Instant;

/// The size of one step of [`advance_to`]: the daemon's timers fire within this much of their
/// due time.
pub const STEP: Duration = Duration::from_millis(10);

/// How long [`within_real`] waits by default for I/O that is on its way: far longer than any
/// exchange on a loopback socket takes, even on a loaded machine.
pub const REAL_DEADLINE: Duration = Duration::from_secs(30);

/// While alive, the paused clock moves only when the test moves it. Dropping it lets the clock
/// auto-advance again.
#[must_use = "the clock is frozen only while the guard lives"]
pub struct Frozen {
    _release: mpsc::Sender<()>,
}

/// Freezes the paused clock of the current runtime (which must be a `current_thread` runtime
/// with time paused, as `#[tokio::test(start_paused = true)]` makes): a blocking task that waits
/// until the returned guard is dropped keeps tokio from auto-advancing.
pub fn freeze() -> Frozen {
    let (release, released) = mpsc::channel::<()>();
    // Ends when the guard (the only sender) is dropped; its result is of no interest.
    drop(tokio::task::spawn_blocking(move || {
        let _ = released.recv();
    }));
    Frozen { _release: release }
}

/// Lets every task that is ready run, and the I/O driver deliver what has arrived, before the
/// caller goes on.
pub async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Moves the clock to `to` (nothing if it is there already) in steps of [`STEP`], settling
/// after each, so the timers due on the way fire in order.
pub async fn advance_to(to: Instant) {
    settle().await;
    loop {
        let now = Instant::now();
        if now >= to {
            return;
        }
        tokio::time::advance(STEP.min(to - now)).await;
        settle().await;
    }
}

/// Moves the clock `by` forward; see [`advance_to`].
pub async fn advance(by: Duration) {
    advance_to(Instant::now() + by).await;
}

/// Awaits `future` for at most `real` of wall-clock time — the paused clock stands still — and
/// returns `None` if it did not finish: a bound on a wait for real I/O, never a wait for
/// readiness.
pub async fn within<F: Future>(real: Duration, future: F) -> Option<F::Output> {
    let (expired, expiry) = tokio::sync::oneshot::channel::<()>();
    let (cancel, cancelled) = mpsc::channel::<()>();
    let timer = std::thread::spawn(move || {
        if cancelled.recv_timeout(real) == Err(mpsc::RecvTimeoutError::Timeout) {
            let _ = expired.send(());
        }
    });
    let outcome = tokio::select! {
        done = future => Some(done),
        _ = expiry => None,
    };
    drop(cancel);
    let _ = timer.join();
    outcome
}

/// [`within`] with [`REAL_DEADLINE`], panicking with `what` if `future` does not finish.
pub async fn within_real<F: Future>(what: &str, future: F) -> F::Output {
    within(REAL_DEADLINE, future)
        .await
        .unwrap_or_else(|| panic!("{what}: not done within {REAL_DEADLINE:?} of real time"))
}

/// Awaits `future` while moving the clock a [`STEP`] at a time whenever everything is waiting,
/// for at most `limit` of clock time: for an operation that waits on timers of its own (a
/// client's reconnect backoff) as well as on I/O. Panics with `what` past the limit.
pub async fn driven<F: Future>(what: &str, limit: Duration, future: F) -> F::Output {
    let until = Instant::now() + limit;
    tokio::pin!(future);
    loop {
        tokio::select! {
            biased;
            done = &mut future => return done,
            () = settle() => {}
        }
        assert!(
            Instant::now() < until,
            "{what}: not done within {limit:?} of clock time"
        );
        tokio::time::advance(STEP).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_frozen_clock_moves_only_when_advanced() {
        let _frozen = freeze();
        let start = Instant::now();
        // Left to itself, a paused clock would jump to this timer at once.
        let slept = within(
            Duration::from_millis(100),
            tokio::time::sleep(Duration::from_secs(3600)),
        )
        .await;
        assert!(slept.is_none(), "the clock auto-advanced");
        assert_eq!(Instant::now(), start);
        advance(Duration::from_secs(2)).await;
        assert_eq!(Instant::now(), start + Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn driven_moves_the_clock_for_a_timer_and_stops_at_its_bound() {
        let _frozen = freeze();
        let start = Instant::now();
        driven(
            "a sleep",
            Duration::from_secs(1),
            tokio::time::sleep(Duration::from_millis(500)),
        )
        .await;
        let elapsed = Instant::now() - start;
        assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(600), "{elapsed:?}");
    }
}
