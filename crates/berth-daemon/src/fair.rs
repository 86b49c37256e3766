//! Fair shares of the daemon: at most `max_connections_per_uid` connections per user, so that
//! one user holding many connections cannot take every connection slot from the others. A
//! client over its user's limit is answered "busy", naming the limit and the use, and closed —
//! never left waiting without a word.
//!
//! Root and the daemon's own user are not counted: they administer the daemon, and a per-user
//! daemon has no other user to protect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Connections per uid.
pub(crate) struct PerUid {
    max: usize,
    exempt: [u32; 2],
    counts: Mutex<HashMap<u32, usize>>,
}

/// One counted connection; uncounted when dropped.
pub(crate) struct Slot {
    per_uid: Arc<PerUid>,
    uid: u32,
}

impl PerUid {
    /// At most `max` connections per uid (root and `daemon_uid` exempt).
    pub(crate) fn new(max: usize, daemon_uid: u32) -> Arc<Self> {
        Arc::new(PerUid {
            max,
            exempt: [0, daemon_uid],
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// The most connections a user may have.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Counts a connection of `uid`: `Ok(None)` when `uid` is exempt, `Err(in_use)` when the
    /// user is at the limit already.
    pub(crate) fn enter(self: &Arc<Self>, uid: u32) -> Result<Option<Slot>, usize> {
        if self.exempt.contains(&uid) {
            return Ok(None);
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(uid).or_insert(0);
        if *n >= self.max {
            return Err(*n);
        }
        *n += 1;
        Ok(Some(Slot {
            per_uid: self.clone(),
            uid,
        }))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .per_uid
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_max_connections_and_one_more_when_one_closes() {
        let per_uid = PerUid::new(2, 1000);
        let a = per_uid.enter(500).unwrap();
        let _b = per_uid.enter(500).unwrap();
        assert_eq!(per_uid.enter(500).err(), Some(2));
        // Others are not affected; root and the daemon's user are not counted.
        assert!(per_uid.enter(501).unwrap().is_some());
        for _ in 0..5 {
            assert!(per_uid.enter(0).unwrap().is_none());
            assert!(per_uid.enter(1000).unwrap().is_none());
        }
        drop(a);
        assert!(per_uid.enter(500).unwrap().is_some());
    }
}
