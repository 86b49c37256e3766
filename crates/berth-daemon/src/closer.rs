//! Closing what clients sent, away from the runtime's threads.
//!
//! `close(2)` can block for as long as a client likes: a TCP socket with `SO_LINGER` on and a
//! send queue its peer never drains waits up to the linger time (non-blocking or not), and a
//! file on a FUSE file system waits for its server's `FLUSH`. When the daemon holds the last
//! reference — the client closed its own copy after sending it — that wait would fall on the
//! tokio worker that dropped the descriptor, and one such request per worker would stall every
//! client. So every descriptor a client sent is a [`Received`], whose drop hands it
//! to a closer thread, and [`dispose`] does the same for anything else whose drop may close
//! one (a connection whose receive queue still holds descriptors in flight).
//!
//! Closer threads start lazily: the first with the first disposal, another whenever something
//! is queued and no closer is idle, up to [`MAX_CLOSERS`]. So one close that blocks does not
//! hold back the others — such as another client's socket, whose port stays bound while the
//! daemon's copy is open. A client that blocks all of them only delays later closes until one
//! returns; nothing on the runtime ever waits.
//!
//! A close on another thread happens a little later than the drop. Whoever must know that the
//! daemon's copy is gone (a client that closes its socket expects its port to be free) waits,
//! without blocking, on [`Received::closing`].

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Closer threads at most; each is only started when every earlier one is busy.
const MAX_CLOSERS: usize = 16;

/// Queued disposals at which the daemon warns that closes are piling up.
const BACKLOG_WARNING: usize = 64;

/// A descriptor a client sent (`SCM_RIGHTS`). Dropping it closes it on a closer thread.
#[derive(Debug)]
pub(crate) struct Received {
    /// `None` once dropped.
    fd: Option<OwnedFd>,
    state: Arc<CloseState>,
    /// The daemon's closers, which close it.
    closers: Closers,
}

impl Received {
    pub(crate) fn new(fd: OwnedFd, closers: &Closers) -> Self {
        Received {
            closers: closers.clone(),
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
            self.closers.dispose(Close {
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

/// The daemon's closer threads and what waits for them. Cloning shares them; idle threads end
/// once every handle is gone (the daemon stopped).
#[derive(Clone, Debug)]
pub(crate) struct Closers(Arc<Pool>);

/// Whatever waits to be dropped, and the threads that drop it.
#[derive(Debug)]
struct Pool {
    queue: Mutex<Queue>,
    work: Condvar,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Box<dyn Send>>,
    /// Closer threads started.
    threads: usize,
    /// Closer threads waiting for work.
    idle: usize,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("items", &self.items.len())
            .field("threads", &self.threads)
            .field("idle", &self.idle)
            .finish()
    }
}

/// How long an idle closer thread waits before it checks whether the daemon is gone.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

impl Closers {
    pub(crate) fn new() -> Self {
        Closers(Arc::new(Pool {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
        }))
    }

    /// Drops `item` on a closer thread, never on the caller's.
    pub(crate) fn dispose<T: Send + 'static>(&self, item: T) {
        let pool = &self.0;
        let start_one = {
            let mut queue = pool.lock();
            queue.items.push_back(Box::new(item));
            if queue.items.len() == BACKLOG_WARNING {
                tracing::warn!(
                    "{BACKLOG_WARNING} descriptors wait to be closed; some client sends descriptors whose close blocks"
                );
            }
            let start_one = queue.items.len() > queue.idle && queue.threads < MAX_CLOSERS;
            if start_one {
                queue.threads += 1;
            }
            start_one
        };
        pool.work.notify_one();
        if start_one {
            let weak = Arc::downgrade(pool);
            let started = std::thread::Builder::new()
                .name("berth-closer".into())
                .spawn(move || Pool::run(&weak));
            if let Err(e) = started {
                // What is queued stays queued: the next disposal tries again.
                pool.lock().threads -= 1;
                tracing::error!("cannot start a thread to close client descriptors: {e}");
            }
        }
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; if something did, the queue is still whole.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A closer thread: drops queued items, one at a time, until the pool is idle and nobody
    /// but the closer threads holds it any more.
    fn run(weak: &std::sync::Weak<Pool>) {
        loop {
            let Some(pool) = weak.upgrade() else { return };
            let mut queue = pool.lock();
            match queue.items.pop_front() {
                Some(item) => {
                    drop(queue);
                    // The close, which may block for as long as the client arranged.
                    drop(item);
                }
                None => {
                    queue.idle += 1;
                    let (mut queue, _) = pool
                        .work
                        .wait_timeout(queue, IDLE_CHECK)
                        .unwrap_or_else(PoisonError::into_inner);
                    queue.idle -= 1;
                    // Only closer threads hold the pool: the daemon is gone.
                    if queue.items.is_empty() && Arc::strong_count(&pool) <= queue.threads {
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

    use crate::testing::raw::lingering_socket;

    /// One pool for the whole test module, as a daemon has one.
    fn closers() -> Closers {
        static POOL: std::sync::OnceLock<Closers> = std::sync::OnceLock::new();
        POOL.get_or_init(Closers::new).clone()
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
        (Received::new(write, &closers()), wait_eof)
    }

    #[test]
    fn a_received_descriptor_is_closed_on_a_closer_thread() {
        let (write, wait_eof) = pipe();
        assert!(write.as_fd().try_clone_to_owned().is_ok());
        drop(write);
        assert!(wait_eof(DEADLINE), "the write end stayed open");

        let (report, reports) = mpsc::channel();
        closers().dispose(Reporting {
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
            closers().dispose(Reporting {
                inner: Some(Received::new(socket, &closers())),
                report,
            });
            // Dropped on a closer directly too, to see the close itself block.
            closers().dispose(Reporting {
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

    #[tokio::test]
    async fn closing_tells_when_the_close_is_done() {
        let (read, write) = rustix::pipe::pipe().unwrap();
        rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::NONBLOCK).unwrap();
        let write = Received::new(write, &closers());
        let closing = write.closing();
        // Held: nothing to wait for.
        tokio::time::timeout(Duration::from_secs(1), closing.closed())
            .await
            .expect("a held descriptor has no close to wait for");
        for _ in 0..100 {
            let (r, w) = rustix::pipe::pipe().unwrap();
            rustix::fs::fcntl_setfl(&r, rustix::fs::OFlags::NONBLOCK).unwrap();
            let w = Received::new(w, &closers());
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
}
