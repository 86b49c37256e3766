//! The client's connection task across daemon restarts and under load: releases in flight when
//! the daemon dies are carried out after the restart, cancelled acquires release what they were
//! granted, a large burst of pipelined requests does not wedge the connection, and a daemon
//! that accepts but never answers does not hold the reconnection up past its window. A
//! reservation that cannot be re-claimed is reported lost on its handle, never dropped silently.
//!
//! | test | ports |
//! |---|---|
//! | `a_release_in_flight_when_the_daemon_dies_is_carried_out_after_the_restart` | 28000-28099 |
//! | `a_reservation_dropped_while_the_daemon_is_down_is_not_reclaimed` | 28100-28199 |
//! | `a_cancelled_acquire_leaves_nothing_reserved` | 28200-28299 |
//! | `an_acquired_answer_left_untaken_is_released` | 28300-28399 |
//! | `a_burst_of_pipelined_requests_is_answered` | 28400-28499 |
//! | `a_daemon_that_never_answers_does_not_outlast_the_reconnect_window` | 28500-28599 |
//! | `a_burst_with_large_answers_is_answered` | 28600-28999 |
//! | `a_reservation_not_given_back_after_a_restart_is_reported_lost` | 29000-29099 |
//! | `an_unclaimed_reservation_is_not_used_until_it_is_reclaimed` | 29100-29199 |
//! | `a_pair_acquired_together_is_reclaimed_after_a_restart` | 29200-29299 |
//! | `a_pair_left_untaken_is_released` | 29300-29399 |

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::common::tokens;
use berth::{Client, Error, Options, Protocol};
use berth_core::Pool;
use berth_daemon::{bind_socket, Config, SocketGuard};
use berth_protocol::{FrameCodec, Request};
use berth_testkit::{eventually, TestDaemon};
use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::codec::Encoder;

/// A daemon on a socket and database of the test's choosing, so that it can be stopped and
/// another started on the same socket and database (a restart).
struct Daemon {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    _guard: SocketGuard,
}

impl Daemon {
    fn start(socket: &Path, db: &Path, lo: u16, hi: u16) -> Self {
        let (listener, guard) = bind_socket(socket).expect("bind socket");
        let mut config = Config::new(
            socket.to_owned(),
            db.to_owned(),
            Pool::new(lo, hi).expect("pool"),
        );
        // Long enough that nothing is freed by the grace period while a test looks.
        config.grace = Duration::from_secs(120);
        // Several test daemons share this network namespace, each with a pool of its own.
        config.authority = None;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            berth_daemon::run(listener, config, async move {
                let _ = stopped.await;
            })
            .await
            .expect("daemon ran");
        });
        Daemon {
            stop,
            task,
            _guard: guard,
        }
    }

    /// Stops the daemon cleanly (the journal is kept) and waits until it has.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("daemon task");
    }
}

/// A relay between clients and a daemon, in this process (so the daemon sees this process as
/// the peer either way). While frozen it swallows what clients send: a request written then is
/// lost on its way, as if the daemon had died before reading it.
struct Relay {
    path: PathBuf,
    frozen: Arc<AtomicBool>,
    swallowed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Relay {
    fn start(path: PathBuf, upstream: PathBuf) -> Self {
        let listener = UnixListener::bind(&path).expect("bind the relay");
        let frozen = Arc::new(AtomicBool::new(false));
        let swallowed = Arc::new(AtomicUsize::new(0));
        let (f, s) = (frozen.clone(), swallowed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(relay(client, upstream.clone(), f.clone(), s.clone()));
            }
        });
        Relay {
            path,
            frozen,
            swallowed,
            task,
        }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    fn swallowed(&self) -> usize {
        self.swallowed.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection until either side closes it.
async fn relay(
    client: UnixStream,
    upstream: PathBuf,
    frozen: Arc<AtomicBool>,
    swallowed: Arc<AtomicUsize>,
) {
    let Ok(daemon) = UnixStream::connect(&upstream).await else {
        return;
    };
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut daemon_rd, mut daemon_wr) = daemon.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            if frozen.load(Ordering::SeqCst) {
                swallowed.fetch_add(n, Ordering::SeqCst);
            } else {
                daemon_wr.write_all(&buf[..n]).await?;
            }
        }
    };
    let down = tokio::io::copy(&mut daemon_rd, &mut client_wr);
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// The size of `request`'s frame on the wire.
fn frame_len(request: Request) -> usize {
    let mut buf = BytesMut::new();
    FrameCodec::client().encode(request, &mut buf).unwrap();
    buf.len()
}

#[tokio::test]
async fn a_release_in_flight_when_the_daemon_dies_is_carried_out_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("berth.sock");
    let db = dir.path().join("berth.db");
    let daemon = Daemon::start(&socket, &db, 28000, 28099);
    let relay = Relay::start(dir.path().join("relay.sock"), socket.clone());
    let client = Client::connect_to(&relay.path).await.unwrap();
    let dropped = client.acquire(Protocol::Tcp, 28010, 2).await.unwrap();
    let awaited = client.acquire(Protocol::Tcp, 28020, 2).await.unwrap();
    let kept = client.acquire(Protocol::Tcp, 28030, 2).await.unwrap();
    let (dropped_token, awaited_token) = (dropped.token(), awaited.token());

    // Both releases are written, and lost on their way to the daemon, which then stops.
    relay.freeze(true);
    drop(dropped);
    let releasing = tokio::spawn(awaited.release());
    let both = frame_len(Request::Release {
        token: dropped_token.get(),
    }) + frame_len(Request::Release {
        token: awaited_token.get(),
    });
    assert!(
        eventually(10_000, || async { relay.swallowed() >= both }).await,
        "the client did not write both releases"
    );
    assert_eq!(relay.swallowed(), both);
    relay.freeze(false);
    daemon.stop().await;
    let daemon = Daemon::start(&socket, &db, 28000, 28099);

    // The awaited release saw the connection go; the client then reconnected on its own.
    let outcome = tokio::time::timeout(Duration::from_secs(20), releasing)
        .await
        .expect("the release must end")
        .unwrap();
    assert!(matches!(outcome, Err(Error::Unavailable(_))), "{outcome:?}");
    // Answered after the reconnection, which repeats the releases before re-claiming.
    client.status().await.unwrap();

    let other = Client::connect_to(&socket).await.unwrap();
    let live = tokens(&other).await;
    assert!(!live.contains(&dropped_token), "{live:?}");
    assert!(!live.contains(&awaited_token), "{live:?}");
    assert_eq!(live, vec![kept.token()], "the kept block is re-claimed");
    let a = other.acquire(Protocol::Tcp, 28010, 2).await.unwrap();
    let b = other.acquire(Protocol::Tcp, 28020, 2).await.unwrap();
    assert!(matches!(
        other.acquire(Protocol::Tcp, 28030, 2).await,
        Err(Error::Conflict(_))
    ));
    kept.release().await.unwrap();
    drop((a, b));
    daemon.stop().await;
}

#[tokio::test]
async fn a_reservation_dropped_while_the_daemon_is_down_is_not_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("berth.sock");
    let db = dir.path().join("berth.db");
    let daemon = Daemon::start(&socket, &db, 28100, 28199);
    let client = Client::connect_to(&socket).await.unwrap();
    let dropped = client.acquire(Protocol::Tcp, 28110, 3).await.unwrap();
    let kept = client.acquire(Protocol::Udp, 28120, 1).await.unwrap();
    let token = dropped.token();

    daemon.stop().await;
    drop(dropped);
    let daemon = Daemon::start(&socket, &db, 28100, 28199);

    // A call made before the client noticed the daemon went may fail; one made after the
    // reconnection succeeds, and the release was queued before it.
    assert!(eventually(20_000, || async { client.status().await.is_ok() }).await);
    let other = Client::connect_to(&socket).await.unwrap();
    let live = tokens(&other).await;
    assert_eq!(live, vec![kept.token()], "dropped {token} must be gone");
    let again = other.acquire(Protocol::Tcp, 28110, 3).await.unwrap();
    assert_eq!(again.start(), 28110);
    drop((again, kept));
    daemon.stop().await;
}

#[tokio::test]
async fn a_cancelled_acquire_leaves_nothing_reserved() {
    let daemon = TestDaemon::start(28200, 28299);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let other = Client::connect_to(&daemon.socket).await.unwrap();
    let mut cancelled = 0;
    for i in 0..20u16 {
        let acquire = client.acquire(Protocol::Tcp, 28200 + i * 2, 2);
        if i % 2 == 0 {
            // The first poll hands the request to the connection; the caller gives up soon
            // after (the timer's resolution may let the answer arrive first).
            match tokio::time::timeout(Duration::ZERO, acquire).await {
                Ok(granted) => drop(granted.unwrap()),
                Err(_) => cancelled += 1,
            }
        } else {
            // Polled once — the request is on its way — and dropped.
            assert!(acquire.now_or_never().is_none());
            cancelled += 1;
        }
    }
    assert!(cancelled >= 10);
    // Every answer has come back by the time a later call is answered.
    client.status().await.unwrap();
    assert!(
        eventually(10_000, || async { other.list().await.unwrap().is_empty() }).await,
        "left reserved: {:?}",
        other.list().await.unwrap()
    );
    // The ports are free again.
    let block = other.acquire(Protocol::Tcp, 28200, 40).await.unwrap();
    assert_eq!(block.count(), 40);
    assert!(client.is_open());
}

#[tokio::test]
async fn an_acquired_answer_left_untaken_is_released() {
    let daemon = TestDaemon::start(28300, 28399);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let other = Client::connect_to(&daemon.socket).await.unwrap();
    let mut acquire = Box::pin(client.acquire(Protocol::Tcp, 28310, 4));
    // One poll hands the request to the connection.
    let first = std::future::poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx))).await;
    assert!(first.is_pending());
    // Answers come in order: once this is answered, the acquire's answer waits in its slot,
    // delivered but not taken.
    client.status().await.unwrap();
    assert_eq!(other.list().await.unwrap().len(), 1);
    drop(acquire);
    assert!(
        eventually(10_000, || async { other.list().await.unwrap().is_empty() }).await,
        "left reserved: {:?}",
        other.list().await.unwrap()
    );
    let block = other.acquire(Protocol::Tcp, 28310, 4).await.unwrap();
    assert_eq!(block.start(), 28310);
}

#[tokio::test]
async fn a_burst_of_pipelined_requests_is_answered() {
    let daemon = TestDaemon::start(28400, 28499);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let held = client.acquire(Protocol::Tcp, 0, 3).await.unwrap();
    let calls = (0..20_000).map(|_| client.status());
    let answers = futures_util::future::join_all(calls).await;
    assert_eq!(answers.len(), 20_000);
    for answer in answers {
        let status = answer.unwrap();
        assert_eq!(status.reservations, 1);
        assert_eq!(status.tcp_ports, 3);
    }
    held.release().await.unwrap();
    assert!(client.is_open());
}

#[tokio::test]
async fn a_burst_with_large_answers_is_answered() {
    let daemon = TestDaemon::start(28600, 28999);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let mut blocks = Vec::new();
    for _ in 0..300 {
        blocks.push(client.acquire(Protocol::Udp, 0, 1).await.unwrap());
    }
    // Each answer lists 300 reservations: the answers fill the socket buffers long before
    // the requests do.
    let calls = (0..2_000).map(|_| client.list());
    let answers = futures_util::future::join_all(calls).await;
    for answer in answers {
        assert_eq!(answer.unwrap().len(), 300);
    }
    // Dropping them all pipelines as many releases at once.
    drop(blocks);
    assert_eq!(client.status().await.unwrap().reservations, 0);
}

#[tokio::test]
async fn a_daemon_that_never_answers_does_not_outlast_the_reconnect_window() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("berth.sock");
    let db = dir.path().join("berth.db");
    let daemon = Daemon::start(&socket, &db, 28500, 28599);
    let options = Options::default().reconnect_window(Duration::from_millis(500));
    let client = Client::connect_to_with(&socket, options).await.unwrap();
    let block = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();

    // Something that accepts on the daemon's socket and never says a word takes its place
    // before it stops, so every reconnection attempt reaches it.
    std::fs::remove_file(&socket).unwrap();
    let mute = UnixListener::bind(&socket).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let mute_task = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = mute.accept().await {
            open.push(stream);
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    daemon.stop().await;
    assert!(
        eventually(10_000, || async { accepted.load(Ordering::SeqCst) > 0 }).await,
        "the client never tried to reconnect"
    );

    let outcome = tokio::time::timeout(Duration::from_secs(20), client.status())
        .await
        .expect("the call must not wait forever");
    assert!(matches!(outcome, Err(Error::Unavailable(_))), "{outcome:?}");
    assert!(eventually(20_000, || async { !client.is_open() }).await);
    assert!(matches!(client.status().await, Err(Error::Unavailable(_))));
    // Its reservation is lost, and says so.
    assert!(block.is_lost());
    let lost = block.lost().await;
    assert!(matches!(lost, Error::Unavailable(_)), "{lost:?}");
    assert!(lost.to_string().contains("did not come back"), "{lost}");
    mute_task.abort();
}

#[tokio::test]
async fn a_reservation_not_given_back_after_a_restart_is_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("berth.sock");
    let daemon = Daemon::start(&socket, &dir.path().join("a.db"), 29000, 29099);
    let client = Client::connect_to(&socket).await.unwrap();
    let held = client.acquire(Protocol::Tcp, 0, 2).await.unwrap();
    assert!(!held.is_lost());
    let token = held.token().to_string();

    // The next daemon knows nothing of it (another database: as if the grace period had
    // passed while this process was paused), so the re-claim is refused.
    daemon.stop().await;
    let daemon = Daemon::start(&socket, &dir.path().join("b.db"), 29000, 29099);
    let lost = tokio::time::timeout(Duration::from_secs(20), held.lost())
        .await
        .expect("the loss is reported, not kept quiet");
    assert!(matches!(lost, Error::NotFound(_)), "{lost:?}");
    for needle in [token.as_str(), "is lost", "did not give it back"] {
        assert!(lost.to_string().contains(needle), "{needle:?}: {lost}");
    }
    // Every use says so too; the session itself goes on.
    assert!(held.is_lost());
    let socket2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = held.bind(&socket2, None).await.unwrap_err();
    assert!(refused.to_string().contains("is lost"), "{refused}");
    assert!(matches!(held.release().await, Err(Error::NotFound(_))));
    client.status().await.unwrap();
    daemon.stop().await;
}

/// After a restart, a restored reservation is usable only once its owner re-claimed it: a
/// session that names it without re-claiming it first (a program that kept only its token) is
/// told so; the re-claim, through `Client::reclaim`, makes it this session's, usable again.
#[tokio::test]
async fn an_unclaimed_reservation_is_not_used_until_it_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("berth.sock");
    let db = dir.path().join("berth.db");
    let daemon = Daemon::start(&socket, &db, 29100, 29199);
    // A client that gives up at once when the daemon goes: it re-claims nothing by itself.
    let options = Options::default().reconnect_window(Duration::ZERO);
    let first = Client::connect_to_with(&socket, options).await.unwrap();
    let held = first.acquire(Protocol::Tcp, 0, 1).await.unwrap();
    let token = held.token();
    daemon.stop().await;
    let daemon = Daemon::start(&socket, &db, 29100, 29199);
    let second = Client::connect_to(&socket).await.unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let refused = second
        .associate(token, std::os::fd::AsFd::as_fd(&sock), None)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::NotFound(_)), "{refused:?}");
    assert!(refused.to_string().contains("re-claim"), "{refused}");
    let reclaimed = second.reclaim(token).await.unwrap();
    let port = second
        .associate(token, std::os::fd::AsFd::as_fd(&sock), None)
        .await
        .unwrap();
    assert_eq!(port, reclaimed.start());
    reclaimed.release().await.unwrap();
    drop((held, first));
    daemon.stop().await;
}

/// A TCP+UDP pair (`acquire_same_ports`) is this session's like any block: re-claimed after a
/// restart, so that its owner keeps using it (a restored block nobody re-claimed is refused).
#[tokio::test]
async fn a_pair_acquired_together_is_reclaimed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("berth.sock");
    let db = dir.path().join("berth.db");
    let daemon = Daemon::start(&socket, &db, 29200, 29299);
    let client = Client::connect_to(&socket).await.unwrap();
    let (tcp, udp) = client.acquire_same_ports(0, 2).await.unwrap();

    daemon.stop().await;
    let daemon = Daemon::start(&socket, &db, 29200, 29299);
    assert!(eventually(20_000, || async { client.status().await.is_ok() }).await);
    assert!(!tcp.is_lost() && !udp.is_lost());
    let listener = tokio::net::TcpSocket::new_v4().unwrap();
    assert_eq!(tcp.bind(&listener, None).await.unwrap(), tcp.start());
    let datagram = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    assert_eq!(udp.bind(&datagram, None).await.unwrap(), udp.start());
    drop((listener, datagram));
    tcp.release().await.unwrap();
    udp.release().await.unwrap();
    daemon.stop().await;
}

/// A pair whose caller went away before taking the answer is released, both halves.
#[tokio::test]
async fn a_pair_left_untaken_is_released() {
    let daemon = TestDaemon::start(29300, 29399);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let other = Client::connect_to(&daemon.socket).await.unwrap();
    let mut acquire = Box::pin(client.acquire_same_ports(29310, 4));
    let first = std::future::poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx))).await;
    assert!(first.is_pending());
    client.status().await.unwrap();
    assert_eq!(other.list().await.unwrap().len(), 2);
    drop(acquire);
    assert!(
        eventually(10_000, || async { other.list().await.unwrap().is_empty() }).await,
        "left reserved: {:?}",
        other.list().await.unwrap()
    );
    let (tcp, udp) = other.acquire_same_ports(29310, 4).await.unwrap();
    assert_eq!((tcp.start(), udp.start()), (29310, 29310));
}
