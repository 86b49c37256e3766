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
//! [`MAX_CLOSERS`] in all; idle threads beyond [`KEEP_IDLE`] end after a while.
//!
//! A close on another thread happens a little later than the drop. Whoever must know that the
//! daemon's copy is gone (a client that closes its socket expects its port to be free) waits,
//! without blocking, on [`Received::closing`].

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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::io::Read;
    use std::sync::mpsc;
    use std::time::Duration;

    use berth_testkit::raw::lingering_socket;

    /// One pool for the whole test module, as a daemon has one.
    fn closers() -> Closers {
        static POOL: std::sync::OnceLock<Closers> = std::sync::OnceLock::new();
        POOL.get_or_init(Closers::new).clone()
    }

    /// The lane of user `uid` in that pool: each test uses users of its own.
    fn lane(uid: u32) -> Lane {
        closers().lane(uid)
    }

    /// How long a close of the lingering sockets below blocks, at most (or until the test
    /// drops their peers, which resets them).
    const LINGER: Duration = Duration::from_secs(120);

    /// How long anything that must not wait for those closes may take: generous for a busy
    /// machine, and far shorter than [`LINGER`].
    const DEADLINE: Duration = Duration::from_secs(30);

    /// Reports, once dropped, on which thread its drop ran.
    struct Reporting<T> {
        inner: Option<T>,
        report: mpsc::Sender<Option<String>>,
    }

    impl<T> Drop for Reporting<T> {
        fn drop(&mut self) {
            drop(self.inner.take());
            let thread = std::thread::current().name().map(str::to_owned);
            let _ = self.report.send(thread);
        }
    }

    /// A pipe whose write end is `Received`; `wait_eof` says whether the read end saw it
    /// closed within `limit`.
    fn pipe() -> (Received, impl FnOnce(Duration) -> bool) {
        let (read, write) = rustix::pipe::pipe().unwrap();
        let (tx, rx) = mpsc::channel();
        let wait_eof = move |limit: Duration| {
            std::thread::spawn(move || {
                let mut file = std::fs::File::from(read);
                let mut byte = [0u8; 1];
                let _ = tx.send(file.read(&mut byte).unwrap());
            });
            rx.recv_timeout(limit) == Ok(0)
        };
        (Received::new(write, &lane(0)), wait_eof)
    }

    #[test]
    fn a_received_descriptor_is_closed_on_a_closer_thread() {
        let (write, wait_eof) = pipe();
        assert!(write.as_fd().try_clone_to_owned().is_ok());
        drop(write);
        assert!(wait_eof(DEADLINE), "the write end stayed open");

        let (report, reports) = mpsc::channel();
        lane(0).dispose(Reporting {
            inner: Some(()),
            report,
        });
        let thread = reports.recv_timeout(DEADLINE).unwrap();
        assert_eq!(thread.as_deref(), Some("berth-closer"));
    }

    /// Every wait below is a condition with a deadline far shorter than the blocked closes:
    /// had anything waited for one of them, it would miss its deadline.
    #[test]
    fn a_close_that_blocks_holds_up_neither_the_caller_nor_other_closes() {
        let (socket, peer) = lingering_socket(LINGER);
        let (direct, direct_peer) = lingering_socket(LINGER);
        let (report, reports) = mpsc::channel();
        let (direct_report, direct_reports) = mpsc::channel();
        // The caller: on a thread of its own, which must be done long before the closes are.
        let (disposed, caller_done) = mpsc::channel();
        std::thread::spawn(move || {
            // `Reporting` drops the `Received` on a closer thread, which hands the socket to
            // another closer.
            lane(0).dispose(Reporting {
                inner: Some(Received::new(socket, &lane(0))),
                report,
            });
            // Dropped on a closer directly too, to see the close itself block.
            lane(0).dispose(Reporting {
                inner: Some(direct),
                report: direct_report,
            });
            let _ = disposed.send(());
        });
        caller_done
            .recv_timeout(DEADLINE)
            .expect("dispose waited for a close");
        // The hand-over of the `Received` is done, although its close is not.
        let handed_over = reports
            .recv_timeout(DEADLINE)
            .expect("dropping a Received waited for its close");
        assert_eq!(handed_over.as_deref(), Some("berth-closer"));

        // Another descriptor is closed at once, while those closes still wait.
        let (write, wait_eof) = pipe();
        drop(write);
        assert!(wait_eof(DEADLINE), "a blocked close held up another one");
        assert_eq!(
            direct_reports.try_recv(),
            Err(mpsc::TryRecvError::Empty),
            "the test's close did not block: it proves nothing"
        );

        // Their peers go, which resets the sockets and ends the closes.
        drop((peer, direct_peer));
        let thread = direct_reports
            .recv_timeout(DEADLINE)
            .expect("the close ends once the peer resets the connection");
        assert_eq!(thread.as_deref(), Some("berth-closer"));
    }

    /// A user whose closes all block holds its own budget of threads and no more: its next
    /// close waits, another user's does not, and once the user's closes back up, reading from
    /// it would wait (`uncongested`) while another user's would not.
    #[tokio::test]
    async fn a_user_whose_closes_block_delays_only_its_own() {
        const HOSTILE: u32 = 70_001;
        const OTHER: u32 = 70_002;
        let mut peers = Vec::new();
        let (report, reports) = mpsc::channel();
        for _ in 0..PER_UID_BACKLOG {
            let (socket, peer) = lingering_socket(LINGER);
            peers.push(peer);
            lane(HOSTILE).dispose(Reporting {
                inner: Some(socket),
                report: report.clone(),
            });
        }
        // Queued behind the blocked closes of its own lane: not closed while they block.
        let (queued, queued_eof) = {
            let (read, write) = rustix::pipe::pipe().unwrap();
            (Received::new(write, &lane(HOSTILE)), read)
        };
        let queued_closing = queued.closing();
        drop(queued);
        // Another user's close is done at once.
        let (write, wait_eof) = {
            let (read, write) = rustix::pipe::pipe().unwrap();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                let _ = tx.send(rustix::io::read(&read, &mut byte[..]).unwrap());
            });
            (Received::new(write, &lane(OTHER)), rx)
        };
        drop(write);
        assert_eq!(
            wait_eof.recv_timeout(DEADLINE),
            Ok(0),
            "another user's close waited"
        );
        tokio::time::timeout(DEADLINE, lane(OTHER).uncongested())
            .await
            .expect("another user is not held back");
        // The hostile lane: its budget of closes runs (and blocks), the rest waits.
        let deadline = std::time::Instant::now() + DEADLINE;
        let running = || closers().0.lock().lanes.get(&HOSTILE).map(|l| l.running);
        while running() != Some(PER_UID_CLOSERS) {
            assert!(
                std::time::Instant::now() < deadline,
                "the lane's closes never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(reports.try_recv(), Err(mpsc::TryRecvError::Empty));
        assert_eq!(lane(HOSTILE).outstanding(), PER_UID_BACKLOG + 1);
        let mut byte = [0u8; 1];
        rustix::fs::fcntl_setfl(&queued_eof, rustix::fs::OFlags::NONBLOCK).unwrap();
        assert_eq!(
            rustix::io::read(&queued_eof, &mut byte[..]),
            Err(rustix::io::Errno::AGAIN),
            "a close queued behind its user's blocked closes happened anyway"
        );
        let congested = lane(HOSTILE);
        let wait = congested.uncongested();
        tokio::pin!(wait);
        // Polled once: pending.
        assert!(tokio::time::timeout(Duration::ZERO, wait.as_mut())
            .await
            .is_err());
        // The peers go: the closes end, the lane drains, reading may go on.
        drop(peers);
        for _ in 0..PER_UID_BACKLOG {
            reports
                .recv_timeout(DEADLINE)
                .expect("a blocked close ended");
        }
        tokio::time::timeout(DEADLINE, wait)
            .await
            .expect("the lane drains");
        tokio::time::timeout(DEADLINE, queued_closing.closed())
            .await
            .expect("the queued close is done");
        assert_eq!(rustix::io::read(&queued_eof, &mut byte[..]), Ok(0));
    }

    #[tokio::test]
    async fn closing_tells_when_the_close_is_done() {
        let (read, write) = rustix::pipe::pipe().unwrap();
        rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::NONBLOCK).unwrap();
        let write = Received::new(write, &lane(0));
        let closing = write.closing();
        // Held: nothing to wait for.
        tokio::time::timeout(Duration::from_secs(1), closing.closed())
            .await
            .expect("a held descriptor has no close to wait for");
        for _ in 0..100 {
            let (r, w) = rustix::pipe::pipe().unwrap();
            rustix::fs::fcntl_setfl(&r, rustix::fs::OFlags::NONBLOCK).unwrap();
            let w = Received::new(w, &lane(0));
            let closing = w.closing();
            drop(w);
            tokio::time::timeout(Duration::from_secs(10), closing.closed())
                .await
                .expect("closed");
            // Closed means closed: the read end sees the end at once.
            let mut byte = [0u8; 1];
            assert_eq!(rustix::io::read(&r, &mut byte[..]), Ok(0));
        }
        drop((read, write));
    }

    #[tokio::test]
    async fn one_read_turn_per_user_whatever_its_connections() {
        let closers = Closers::new();
        let (a, b, other) = (closers.lane(7), closers.lane(7), closers.lane(8));
        let turn = a.read_turn().await;
        // Another connection of the same user waits for the turn; another user does not.
        let waiting = tokio::time::timeout(Duration::from_millis(50), b.read_turn()).await;
        assert!(waiting.is_err(), "two reads of one user at once");
        drop(other.read_turn().await);
        drop(turn);
        drop(b.read_turn().await);
        // A user whose closes back up gets no turn until they drain.
        struct Blocks(Arc<Mutex<mpsc::Receiver<()>>>);
        impl Drop for Blocks {
            fn drop(&mut self) {
                let _ = self.0.lock().unwrap().recv();
            }
        }
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        for _ in 0..PER_UID_BACKLOG {
            a.dispose(Blocks(gate.clone()));
        }
        let backed_up = tokio::time::timeout(Duration::from_millis(50), a.read_turn()).await;
        assert!(backed_up.is_err(), "a turn while the user's closes back up");
        drop(release);
        let turn = tokio::time::timeout(Duration::from_secs(10), a.read_turn())
            .await
            .expect("a turn once the user's closes drained");
        drop(turn);
    }
}
