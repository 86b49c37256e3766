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

/// Turns at handling requests, shared fairly between users: at most `width` requests are
/// handled at once, and when more wait, the next turn goes to the next user in round-robin
/// order rather than to whichever request came first — so one user's request loop over many
/// connections delays another user's request by about one turn, not by its whole backlog.
pub(crate) struct Turns {
    width: usize,
    state: Mutex<TurnState>,
}

#[derive(Default)]
struct TurnState {
    running: usize,
    /// Requests waiting, per user, oldest first.
    waiting: HashMap<u32, std::collections::VecDeque<tokio::sync::oneshot::Sender<()>>>,
    /// Users with requests waiting, in turn order.
    order: std::collections::VecDeque<u32>,
}

/// A turn being taken; the next one is handed on when it is dropped.
pub(crate) struct Turn<'a>(&'a Turns);

impl Turns {
    /// At most `width` requests handled at once.
    pub(crate) fn new(width: usize) -> Self {
        Turns {
            width: width.max(1),
            state: Mutex::new(TurnState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A turn now, if one is free and nobody waits for one; `None` otherwise.
    pub(crate) fn try_enter(&self) -> Option<Turn<'_>> {
        let mut state = self.lock();
        (state.running < self.width && state.order.is_empty()).then(|| {
            state.running += 1;
            Turn(self)
        })
    }

    /// Waits for a turn of user `uid`'s. Cancel-safe: a turn handed to a request that no
    /// longer waits goes to the next one.
    pub(crate) async fn enter(&self, uid: u32) -> Turn<'_> {
        let waiting = {
            let mut state = self.lock();
            if state.running < self.width && state.order.is_empty() {
                state.running += 1;
                return Turn(self);
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let state = &mut *state;
            let queue = state.waiting.entry(uid).or_default();
            if queue.is_empty() {
                state.order.push_back(uid);
            }
            queue.push_back(tx);
            rx
        };
        // A request that stops waiting (its future dropped) after its turn was handed to it
        // hands the turn on (see `Ticket`); one that gets it takes it.
        let mut ticket = Ticket {
            rx: Some(waiting),
            turns: self,
        };
        if let Some(rx) = ticket.rx.as_mut() {
            let _ = rx.await;
        }
        ticket.rx = None;
        Turn(self)
    }

    /// One turn is over: hands it to the next user's oldest waiting request, if any.
    fn leave(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.running = state.running.saturating_sub(1);
        while let Some(uid) = state.order.pop_front() {
            let Some(queue) = state.waiting.get_mut(&uid) else {
                continue;
            };
            let mut handed = false;
            while let Some(tx) = queue.pop_front() {
                if tx.send(()).is_ok() {
                    handed = true;
                    break;
                }
            }
            if queue.is_empty() {
                state.waiting.remove(&uid);
            } else {
                state.order.push_back(uid);
            }
            if handed {
                state.running += 1;
                return;
            }
        }
    }
}

/// A request waiting for its turn. Dropped while waiting, it makes sure that a turn handed to
/// it meanwhile is not lost: it refuses further hand-overs, and passes on one it already got.
struct Ticket<'a> {
    rx: Option<tokio::sync::oneshot::Receiver<()>>,
    turns: &'a Turns,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.turns.leave();
            }
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

#[cfg(test)]
mod turn_tests {
    use super::*;

    #[tokio::test]
    async fn turns_go_round_the_users_not_first_come() {
        let turns = Arc::new(Turns::new(1));
        let first = turns.enter(1).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // User 1 queues three requests, then user 2 one: user 2 is served second, not last.
        for (uid, name) in [(1, "a1"), (1, "a2"), (1, "a3"), (2, "b1")] {
            let (mine, tx) = (turns.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let turn = mine.enter(uid).await;
                tx.send(name).unwrap();
                drop(turn);
            }));
            // Each is queued before the next is spawned.
            while turns
                .lock()
                .waiting
                .values()
                .map(|q| q.len())
                .sum::<usize>()
                < tasks.len()
            {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        let mut served = Vec::new();
        for _ in 0..4 {
            served.push(rx.recv().await.unwrap());
        }
        assert_eq!(served, ["a1", "b1", "a2", "a3"]);
        // A request that stops waiting loses no turn: its turn goes on to the next.
        let held = turns.enter(3).await;
        let gone = tokio::spawn({
            let turns = turns.clone();
            async move {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(1), turns.enter(4)).await;
            }
        });
        gone.await.unwrap();
        drop(held);
        drop(turns.enter(5).await);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(turns.lock().running, 0);
    }

    #[tokio::test]
    async fn a_turn_is_tried_without_waiting_and_never_ahead_of_those_waiting() {
        let turns = Arc::new(Turns::new(1));
        let first = turns.try_enter().expect("free");
        assert!(turns.try_enter().is_none(), "taken");
        let waiting = tokio::spawn({
            let turns = turns.clone();
            async move { drop(turns.enter(7).await) }
        });
        while turns.lock().order.is_empty() {
            tokio::task::yield_now().await;
        }
        drop(first);
        // Handed to the waiting request, not to a try.
        assert!(turns.try_enter().is_none());
        waiting.await.unwrap();
        assert!(turns.try_enter().is_some());
        assert_eq!(turns.lock().running, 0);
    }
}
