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

/// Dropping it waits until its gate opens: a close that blocks, without a socket.
struct Blocking(Arc<(Mutex<bool>, Condvar)>);

impl Drop for Blocking {
    fn drop(&mut self) {
        let (open, opened) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = opened.wait(open).unwrap();
        }
    }
}

#[test]
fn an_administrators_close_runs_when_users_hold_every_closer_thread() {
    // A pool of its own: this test holds all of its threads.
    let pool = Closers::new();
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let users = u32::try_from(MAX_CLOSERS / PER_UID_CLOSERS).unwrap();
    for uid in 0..users {
        let lane = pool.lane(30_000 + uid);
        for _ in 0..PER_UID_CLOSERS {
            lane.dispose(Blocking(gate.clone()));
        }
    }
    let deadline = std::time::Instant::now() + DEADLINE;
    while pool.0.lock().running < MAX_CLOSERS {
        assert!(
            std::time::Instant::now() < deadline,
            "the blocking closes never all ran"
        );
        std::thread::yield_now();
    }
    // Every thread is held; root's close still runs, on a thread kept for administrators.
    let (report, reported) = mpsc::channel();
    pool.lane(0).dispose(Reporting {
        inner: Some(()),
        report,
    });
    let thread = reported
        .recv_timeout(DEADLINE)
        .expect("root's close waited for users' blocked closes");
    assert_eq!(thread.as_deref(), Some("berth-closer"));
    assert!(pool.0.lock().threads <= MAX_CLOSERS + ADMIN_CLOSERS);
    // Let the users' closes finish.
    let (open, opened) = &*gate;
    *open.lock().unwrap() = true;
    opened.notify_all();
}
