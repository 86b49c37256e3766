//! Closing what clients sent, away from the runtime's threads, each user on threads of its
//! own.
//!
//! `close(2)` can block for as long as a client likes: a TCP socket with `SO_LINGER` on and a
//! send queue its peer never drains waits up to the linger time (non-blocking or not), and a
//! file on a FUSE file system waits for its server's `FLUSH`. When the daemon holds the last
//! reference — the client closed its own copy after sending it — that wait would fall on the
//! tokio worker that dropped the descriptor, and one such request per worker would stall every
//! client. So every descriptor a client sent is a [`Received`], whose drop hands it to a closer
//! thread, and [`Lane::dispose`] does the same for anything else whose drop may close one (a
//! connection whose receive queue may still hold descriptors in flight).
//!
//! # One user's closes wait only for that user's
//! What a client sends is disposed of in its user's *lane* (by uid, the kernel's word for who
//! connected): a user who sends descriptors whose close blocks delays only that user's later
//! closes. A lane runs at most [`PER_UID_CLOSERS`] closes at once, so such a user occupies at
//! most that many threads; every other lane gets threads of its own. Per user rather than per
//! connection, because one user may open many connections: a per-connection budget would
//! multiply with them, a per-user one does not.
//!
//! Queues stay bounded by back-pressure, not by dropping anything: once a lane has
//! [`PER_UID_BACKLOG`] closes outstanding (queued or running), the daemon stops reading from
//! that user's connections ([`Lane::uncongested`]) until some finish; what the user sends
//! meanwhile waits in the kernel, counted against the sender. A connection's slot (the
//! daemon's connection limits) is given back only once its own descriptor is closed (see
//! [`Lane::dispose`]), so the connections waiting in a lane are bounded by those limits too.
//! Threads: at most [`PER_UID_CLOSERS`] per user with outstanding closes and
//! [`MAX_CLOSERS`] in all, plus [`ADMIN_CLOSERS`] that only administrators' closes start once
//! the others are all held; idle threads beyond [`KEEP_IDLE`] end after a while.
//!
//! A close on another thread happens a little later than the drop. Whoever must know that the
//! daemon's copy is gone (a client that closes its socket expects its port to be free) waits,
//! without blocking, on [`Received::closing`].
//!
//! One thing, hence one file: the closer threads, their per-user lanes and the back-pressure
//! they put on reading are one mechanism, and its invariants are read together.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::Notify;

/// Closes one user runs at once, at most: a user whose closes all block holds this many
/// threads and no more.
pub(crate) const PER_UID_CLOSERS: usize = 4;

/// Closes of one user outstanding (queued or running) at which the daemon stops reading from
/// that user's connections until some finish.
pub(crate) const PER_UID_BACKLOG: usize = 16;

/// Closer threads in all, at most.
pub(crate) const MAX_CLOSERS: usize = 256;

/// Closer threads beyond [`MAX_CLOSERS`] that only administrators' closes start: when users'
/// blocking closes hold every other thread (64 users × [`PER_UID_CLOSERS`]), root's still run.
pub(crate) const ADMIN_CLOSERS: usize = 4;

/// How long a lane's closes may all make no progress before the daemon says they block.
const SLOW_CLOSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Idle closer threads kept for the next close; more end after [`IDLE_CHECK`].
const KEEP_IDLE: usize = 2;

/// How long an idle closer thread waits before it checks whether it is still needed.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// A descriptor a client sent (`SCM_RIGHTS`). Dropping it closes it on a closer thread of its
/// sender's lane.
#[derive(Debug)]
pub(crate) struct Received {
    /// `None` once dropped.
    fd: Option<OwnedFd>,
    state: Arc<CloseState>,
    /// The lane that closes it.
    lane: Lane,
}

impl Received {
    pub(crate) fn new(fd: OwnedFd, lane: &Lane) -> Self {
        Received {
            lane: lane.clone(),
            fd: Some(fd),
            state: Arc::new(CloseState {
                stage: AtomicU8::new(HELD),
                closed: Notify::new(),
            }),
        }
    }

    /// A handle that tells when this descriptor, once dropped, is closed.
    pub(crate) fn closing(&self) -> Closing {
        Closing(Arc::clone(&self.state))
    }
}

impl AsFd for Received {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.fd {
            Some(fd) => fd.as_fd(),
            // Only `drop` empties it, and nothing borrows it after that.
            None => unreachable!("a received descriptor used after it was dropped"),
        }
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            self.state.stage.store(DROPPED, Ordering::SeqCst);
            self.lane.dispose(Close {
                fd: Some(fd),
                state: Arc::clone(&self.state),
            });
        }
    }
}

/// Where a [`Received`] is: still held, dropped and waiting for a closer, or closed.
#[derive(Debug)]
struct CloseState {
    stage: AtomicU8,
    closed: Notify,
}

const HELD: u8 = 0;
const DROPPED: u8 = 1;
const CLOSED: u8 = 2;

/// A dropped [`Received`] on its way to a closer thread.
struct Close {
    fd: Option<OwnedFd>,
    state: Arc<CloseState>,
}

impl Drop for Close {
    fn drop(&mut self) {
        drop(self.fd.take());
        self.state.stage.store(CLOSED, Ordering::SeqCst);
        self.state.closed.notify_waiters();
    }
}

/// See [`Received::closing`].
#[derive(Debug)]
pub(crate) struct Closing(Arc<CloseState>);

impl Closing {
    /// Returns once the descriptor is closed, or at once while it is still held (someone kept
    /// it: there is no close to wait for). Cancel-safe.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.0.closed.notified();
            tokio::pin!(notified);
            // Registered before looking, so that a close in between is not missed.
            notified.as_mut().enable();
            if self.0.stage.load(Ordering::SeqCst) != DROPPED {
                return;
            }
            notified.await;
        }
    }
}

/// The daemon's closer threads and their lanes. Cloning shares them; idle threads end once
/// every handle is gone (the daemon stopped).
#[derive(Clone, Debug)]
pub(crate) struct Closers(Arc<Pool>);

/// One user's way to the closer threads: what it disposes of waits only for its own closes.
#[derive(Clone, Debug)]
pub(crate) struct Lane {
    pool: Arc<Pool>,
    uid: u32,
    /// The user's turn to read with room for descriptors (see [`Lane::read_turn`]).
    turn: Arc<tokio::sync::Semaphore>,
}

/// Whatever waits to be dropped, and the threads that drop it.
#[derive(Debug)]
struct Pool {
    queue: Mutex<Queue>,
    /// Idle threads wait here for work.
    work: Condvar,
    /// Told whenever a lane's outstanding closes drop below [`PER_UID_BACKLOG`].
    progress: Notify,
    /// Each user's read turn, shared by its lanes while any lives.
    turns: Mutex<HashMap<u32, Weak<tokio::sync::Semaphore>>>,
}

/// One user's closes.
#[derive(Default)]
struct LaneQueue {
    items: VecDeque<Box<dyn Send>>,
    /// Closes of this lane running now.
    running: usize,
    /// Whether the lane is in [`Queue::runnable`].
    listed: bool,
    /// Whether the daemon said that this lane's closes block (once until it empties).
    warned: bool,
    /// When a close of this lane last finished, or the lane started.
    progress: Option<std::time::Instant>,
}

impl LaneQueue {
    fn outstanding(&self) -> usize {
        self.items.len() + self.running
    }

    fn runnable(&self) -> bool {
        !self.items.is_empty() && self.running < PER_UID_CLOSERS
    }
}

#[derive(Default)]
struct Queue {
    lanes: HashMap<u32, LaneQueue>,
    /// Lanes with something queued and a close to spare, in turn.
    runnable: VecDeque<u32>,
    /// Closer threads started.
    threads: usize,
    /// Closes running now, in all lanes.
    running: usize,
    /// Closer threads waiting for work and not yet woken for some.
    idle: usize,
    /// Wake-ups given to idle threads and not yet taken.
    wakeups: usize,
    /// Whether the daemon said that every closer thread is busy (once until one is free).
    warned_full: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("lanes", &self.lanes.len())
            .field("threads", &self.threads)
            .field("idle", &self.idle)
            .finish()
    }
}

impl Queue {
    /// Closes that could start now: what runnable lanes have queued, within their budgets.
    fn claimable(&self) -> usize {
        self.runnable
            .iter()
            .filter_map(|uid| self.lanes.get(uid))
            .map(|lane| {
                lane.items
                    .len()
                    .min(PER_UID_CLOSERS.saturating_sub(lane.running))
            })
            .sum()
    }

    /// Lists `uid` as runnable if it is and is not listed yet.
    fn list(&mut self, uid: u32) {
        if let Some(lane) = self.lanes.get_mut(&uid) {
            if !lane.listed && lane.runnable() {
                lane.listed = true;
                self.runnable.push_back(uid);
            }
        }
    }

    /// Moves `uid`, if listed, to the head of the runnable lanes.
    fn first(&mut self, uid: u32) {
        if let Some(at) = self.runnable.iter().position(|&u| u == uid) {
            self.runnable.remove(at);
            self.runnable.push_front(uid);
        }
    }

    /// The next item to drop, round-robin over runnable lanes; counts it as running.
    fn take(&mut self) -> Option<(u32, Box<dyn Send>)> {
        while let Some(uid) = self.runnable.pop_front() {
            let Some(lane) = self.lanes.get_mut(&uid) else {
                continue;
            };
            lane.listed = false;
            if !lane.runnable() {
                continue;
            }
            let Some(item) = lane.items.pop_front() else {
                continue;
            };
            lane.running += 1;
            self.running += 1;
            self.list(uid);
            return Some((uid, item));
        }
        None
    }

    /// One close of `uid`'s is done; whether the lane is below its backlog.
    fn done(&mut self, uid: u32) -> bool {
        self.running = self.running.saturating_sub(1);
        let Some(lane) = self.lanes.get_mut(&uid) else {
            return false;
        };
        lane.running = lane.running.saturating_sub(1);
        lane.progress = Some(std::time::Instant::now());
        let relieved = lane.outstanding() < PER_UID_BACKLOG;
        if lane.outstanding() == 0 {
            self.lanes.remove(&uid);
        } else {
            self.list(uid);
        }
        relieved
    }
}

impl Closers {
    pub(crate) fn new() -> Self {
        Closers(Arc::new(Pool {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            progress: Notify::new(),
            turns: Mutex::new(HashMap::new()),
        }))
    }

    /// The lane of user `uid`.
    pub(crate) fn lane(&self, uid: u32) -> Lane {
        let turn = {
            let mut turns = self.0.turns.lock().unwrap_or_else(PoisonError::into_inner);
            match turns.get(&uid).and_then(Weak::upgrade) {
                Some(turn) => turn,
                None => {
                    // Users whose lanes are all gone are forgotten now and then.
                    if turns.len() >= 1024 {
                        turns.retain(|_, t| t.strong_count() > 0);
                    }
                    let turn = Arc::new(tokio::sync::Semaphore::new(1));
                    turns.insert(uid, Arc::downgrade(&turn));
                    turn
                }
            }
        };
        Lane {
            pool: Arc::clone(&self.0),
            uid,
            turn,
        }
    }
}

impl Lane {
    /// Drops `item` on a closer thread of this lane, never on the caller's. Whatever must live
    /// until the close is done (a connection's slot) goes in `item` after the descriptor: a
    /// tuple drops its fields in order.
    pub(crate) fn dispose<T: Send + 'static>(&self, item: T) {
        let pool = &self.pool;
        let start_one = {
            let mut queue = pool.lock();
            let lane = queue.lanes.entry(self.uid).or_default();
            lane.items.push_back(Box::new(item));
            let progress = *lane.progress.get_or_insert_with(std::time::Instant::now);
            // Backed up because its closes block, not merely because many came at once.
            let stuck = lane.running == PER_UID_CLOSERS && progress.elapsed() >= SLOW_CLOSE;
            if lane.outstanding() >= PER_UID_BACKLOG && stuck && !lane.warned {
                lane.warned = true;
                tracing::warn!(
                    uid = self.uid,
                    "{PER_UID_BACKLOG} descriptors of uid {} wait to be closed: it sends descriptors whose close blocks (SO_LINGER sockets, FUSE files); its connections are read no further until some close, other users are not affected",
                    self.uid
                );
            }
            queue.list(self.uid);
            // Nothing claimable: its lane is at its budget, and one of its closes, when done,
            // takes this one.
            let claimable = queue.claimable();
            if claimable > 0 && queue.idle > 0 {
                queue.idle -= 1;
                queue.wakeups += 1;
                pool.work.notify_one();
            }
            // Threads not running a close: idle, just woken, or just started.
            let free = queue.threads.saturating_sub(queue.running);
            if claimable <= free {
                false
            } else if queue.threads < MAX_CLOSERS {
                queue.threads += 1;
                true
            } else if is_admin(self.uid) && queue.threads < MAX_CLOSERS + ADMIN_CLOSERS {
                // Every thread is held by closes that block: an administrator's close gets one
                // of the threads kept for administrators, and goes first.
                queue.first(self.uid);
                queue.threads += 1;
                true
            } else {
                if !queue.warned_full {
                    queue.warned_full = true;
                    tracing::error!(
                        "all {MAX_CLOSERS} closer threads are busy with closes that block; closes of users without one wait for a thread"
                    );
                }
                false
            }
        };
        if start_one {
            let weak = Arc::downgrade(pool);
            let started = std::thread::Builder::new()
                .name("berth-closer".into())
                .spawn(move || Pool::run(&weak));
            if let Err(e) = started {
                // What is queued stays queued: the next disposal or close tries again.
                pool.lock().threads -= 1;
                tracing::error!("cannot start a thread to close client descriptors: {e}");
            }
        }
    }

    /// The user's turn to read from one of its connections with room for descriptors: one
    /// read at a time per user, and only once its closes do not back up. So one user holds at
    /// most [`PER_UID_BACKLOG`] closes plus one message's descriptors (253) received and not
    /// yet closed, however many connections it opens — never enough to take the daemon's room
    /// to receive from everyone else. Hold the turn across the `recvmsg` only.
    pub(crate) async fn read_turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        loop {
            // Never closed: acquire fails only on a closed semaphore.
            let Ok(turn) = self.turn.acquire().await else {
                std::future::pending::<()>().await;
                continue;
            };
            if self.outstanding() < PER_UID_BACKLOG {
                return turn;
            }
            drop(turn);
            self.uncongested().await;
        }
    }

    /// Closes of this lane outstanding (queued or running).
    pub(crate) fn outstanding(&self) -> usize {
        self.pool
            .lock()
            .lanes
            .get(&self.uid)
            .map_or(0, LaneQueue::outstanding)
    }

    /// Returns once this lane has fewer than [`PER_UID_BACKLOG`] closes outstanding: at once
    /// unless the user's closes back up. Cancel-safe.
    pub(crate) async fn uncongested(&self) {
        loop {
            let notified = self.pool.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.outstanding() < PER_UID_BACKLOG {
                return;
            }
            notified.await;
        }
    }
}

/// Root and the daemon's own user: their closes may start the threads kept for them.
fn is_admin(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; if something did, the queue is still whole.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A closer thread: drops queued items, one at a time, from whichever lane may run one,
    /// until it has been idle a while and is not needed (or nobody but the closer threads
    /// holds the pool any more).
    fn run(weak: &Weak<Pool>) {
        loop {
            let Some(pool) = weak.upgrade() else { return };
            let mut queue = pool.lock();
            match queue.take() {
                Some((uid, item)) => {
                    drop(queue);
                    // The close, which may block for as long as the client arranged.
                    drop(item);
                    let mut queue = pool.lock();
                    queue.warned_full = false;
                    if queue.done(uid) {
                        pool.progress.notify_waiters();
                    }
                }
                None => {
                    queue.idle += 1;
                    let (mut queue, _) = pool
                        .work
                        .wait_timeout(queue, IDLE_CHECK)
                        .unwrap_or_else(PoisonError::into_inner);
                    if queue.wakeups > 0 {
                        queue.wakeups -= 1;
                        continue;
                    }
                    // A timeout (or a spurious wake-up): no longer idle on the books.
                    queue.idle = queue.idle.saturating_sub(1);
                    let gone = Arc::strong_count(&pool) <= queue.threads;
                    if queue.runnable.is_empty() && (gone || queue.idle >= KEEP_IDLE) {
                        queue.threads -= 1;
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
