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
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

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
}

impl Received {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Received {
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
            dispose(Close {
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

/// Drops `item` on a closer thread, never on the caller's.
pub(crate) fn dispose<T: Send + 'static>(item: T) {
    let closers = closers();
    let start_one = {
        let mut queue = closers.lock();
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
    closers.work.notify_one();
    if start_one {
        let started = std::thread::Builder::new()
            .name("berth-closer".into())
            .spawn(move || closers.run());
        if let Err(e) = started {
            // What is queued stays queued: the next disposal tries again.
            closers.lock().threads -= 1;
            tracing::error!("cannot start a thread to close client descriptors: {e}");
        }
    }
}

/// Whatever waits to be dropped, and the threads that drop it.
struct Closers {
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

fn closers() -> &'static Closers {
    static CLOSERS: OnceLock<Closers> = OnceLock::new();
    CLOSERS.get_or_init(|| Closers {
        queue: Mutex::new(Queue::default()),
        work: Condvar::new(),
    })
}

impl Closers {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; if something did, the queue is still whole.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A closer thread: drops queued items, one at a time, for ever.
    fn run(&self) {
        let mut queue = self.lock();
        loop {
            match queue.items.pop_front() {
                Some(item) => {
                    drop(queue);
                    // The close, which may block for as long as the client arranged.
                    drop(item);
                    queue = self.lock();
                }
                None => {
                    queue.idle += 1;
                    queue = self
                        .work
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                    queue.idle -= 1;
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
        (Received::new(write), wait_eof)
    }

    #[test]
    fn a_received_descriptor_is_closed_on_a_closer_thread() {
        let (write, wait_eof) = pipe();
        assert!(write.as_fd().try_clone_to_owned().is_ok());
        drop(write);
        assert!(wait_eof(DEADLINE), "the write end stayed open");

        let (report, reports) = mpsc::channel();
        dispose(Reporting {
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
            dispose(Reporting {
                inner: Some(Received::new(socket)),
                report,
            });
            // Dropped on a closer directly too, to see the close itself block.
            dispose(Reporting {
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
        let write = Received::new(write);
        let closing = write.closing();
        // Held: nothing to wait for.
        tokio::time::timeout(Duration::from_secs(1), closing.closed())
            .await
            .expect("a held descriptor has no close to wait for");
        for _ in 0..100 {
            let (r, w) = rustix::pipe::pipe().unwrap();
            rustix::fs::fcntl_setfl(&r, rustix::fs::OFlags::NONBLOCK).unwrap();
            let w = Received::new(w);
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
