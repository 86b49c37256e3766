//! Log lines about refused clients, rate-limited per user and reason: a user who is refused a
//! thousand times a second (a flood, a retry loop) writes one line per [`EVERY`], with the
//! count of the refusals in between, and never floods the log for everyone else.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most one line per user and reason this often.
pub(crate) const EVERY: Duration = Duration::from_secs(10);

/// Users and reasons remembered at most; past it the oldest quiet ones are forgotten (a line
/// may then come sooner, never more often than once per reason for each new user).
const REMEMBERED: usize = 4096;

/// When a user and reason last logged, and how many refusals were not logged since.
struct Last {
    at: Instant,
    suppressed: u64,
}

static LAST: Mutex<Option<HashMap<(u32, &'static str), Last>>> = Mutex::new(None);

/// Logs `reason` (a fixed text) for a refusal of `uid`, unless one was logged for them within
/// [`EVERY`]; a line that follows quiet ones says how many there were.
pub(crate) fn log(uid: u32, reason: &'static str) {
    if let Some(suppressed) = due(uid, reason, Instant::now()) {
        if suppressed == 0 {
            tracing::info!(uid, "{reason}");
        } else {
            tracing::info!(
                uid,
                suppressed,
                "{reason} ({suppressed} more since the last line)"
            );
        }
    }
}

/// Whether a line for `uid` and `reason` is due at `now`, and how many were suppressed before
/// it; `None` when it is not due (it is counted instead).
fn due(uid: u32, reason: &'static str, now: Instant) -> Option<u64> {
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    let map = last.get_or_insert_with(HashMap::new);
    if let Some(entry) = map.get_mut(&(uid, reason)) {
        if now.saturating_duration_since(entry.at) < EVERY {
            entry.suppressed += 1;
            return None;
        }
        let suppressed = entry.suppressed;
        *entry = Last {
            at: now,
            suppressed: 0,
        };
        return Some(suppressed);
    }
    if map.len() >= REMEMBERED {
        map.retain(|_, l| now.saturating_duration_since(l.at) < EVERY);
    }
    if map.len() < REMEMBERED {
        map.insert(
            (uid, reason),
            Last {
                at: now,
                suppressed: 0,
            },
        );
    }
    Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_user_and_reason_per_interval_with_the_count_between() {
        let t0 = Instant::now();
        let reason = "test: refused (refusals unit test)";
        assert_eq!(due(4_000_001, reason, t0), Some(0));
        for i in 1..=5 {
            assert_eq!(due(4_000_001, reason, t0 + Duration::from_millis(i)), None);
        }
        // Another user, or another reason, is not held back.
        assert_eq!(due(4_000_002, reason, t0), Some(0));
        assert_eq!(due(4_000_001, "test: another reason", t0), Some(0));
        assert_eq!(due(4_000_001, reason, t0 + EVERY), Some(5));
        assert_eq!(due(4_000_001, reason, t0 + EVERY + EVERY), Some(0));
    }
}
