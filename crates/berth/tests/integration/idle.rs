//! What the daemon's idle timeout does to library clients: an idle `Client` that holds
//! nothing is closed by the daemon and reconnects on its next request without the caller
//! noticing; a `Client` that holds a reservation is never closed for silence; and a request
//! that crossed the daemon's idle notice is sent again, not failed.
//!
//! On paused tokio time that only the test moves (`berth_testkit::time`): the clock is frozen,
//! the test advances it past the idle timeout, and each request of a client — which may wait on
//! its own reconnect timers — is driven a step of the clock at a time, within a bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth::{Client, ErrorKind, Protocol};
use berth_protocol::{ErrorDetail, Request, Response, WireError};
use berth_testkit::time::{advance, driven, freeze};
use berth_testkit::{FakeDaemon, TestDaemon};
use tokio::time::Instant;

/// How much of the clock one client request may take, reconnecting included.
const REQUEST: Duration = Duration::from_secs(5);

/// Polls the daemon, through `observer`, until it serves `n` sessions.
async fn sessions_become(observer: &Client, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = driven("status", REQUEST, observer.status()).await.unwrap();
        if status.sessions == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} sessions, not {n}",
            status.sessions
        );
        advance(Duration::from_millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_is_closed_and_reconnects_while_a_holder_is_left_alone() {
    const IDLE: Duration = Duration::from_secs(60);
    let _frozen = freeze();
    let daemon = TestDaemon::with_config(16200, 16209, |c| c.idle_timeout = Some(IDLE));
    let idle = Client::connect_to(&daemon.socket).await.unwrap();
    let holder = Client::connect_to(&daemon.socket).await.unwrap();
    let held = holder.acquire(Protocol::Tcp, 0, 2).await.unwrap();
    // The observer asks often enough never to be idle.
    let observer = Client::connect_to(&daemon.socket).await.unwrap();
    sessions_become(&observer, 3).await;

    // Past the idle timeout, a few times over: the idle client's session is closed, the
    // holder's is not.
    advance(IDLE + Duration::from_secs(1)).await;
    sessions_become(&observer, 2).await;
    advance(2 * IDLE).await;
    assert!(!held.is_lost());
    assert!(holder.is_open());
    let list = driven("list", REQUEST, observer.list()).await.unwrap();
    let theirs = list.iter().find(|r| r.token == held.token()).unwrap();
    assert_eq!(theirs.range, held.range());

    // The idle client's next requests are served, on a new connection.
    assert!(idle.is_open());
    let status = driven("status", REQUEST, idle.status()).await.unwrap();
    assert_eq!(status.sessions, 3);
    let mine = driven("acquire", REQUEST, idle.acquire(Protocol::Tcp, 0, 1))
        .await
        .unwrap();
    assert!(driven("list", REQUEST, idle.list())
        .await
        .unwrap()
        .iter()
        .any(|r| r.token == mine.token()));
    // Holding now, it is left alone too.
    advance(2 * IDLE).await;
    assert!(!mine.is_lost());
    driven("release", REQUEST, mine.release()).await.unwrap();

    // The holder was served throughout and still is.
    driven("release", REQUEST, held.release()).await.unwrap();
    assert!(driven("list", REQUEST, holder.list())
        .await
        .unwrap()
        .is_empty());
}

/// A request written just as the daemon gave up on the silent connection is not read by it;
/// the daemon's last frame says so, and the client sends the request again on a new
/// connection rather than failing it (or taking the notice for its answer) — an associate too,
/// with a copy of its socket.
#[tokio::test]
async fn a_request_that_crossed_the_idle_notice_is_sent_again() {
    let asked = Arc::new(AtomicUsize::new(0));
    let fake = {
        let asked = asked.clone();
        FakeDaemon::answering(move |request| match request {
            Request::Hello(_) => Some(FakeDaemon::welcome()),
            Request::List if asked.fetch_add(1, Ordering::SeqCst) == 0 => Some(Response::Error(
                WireError::new(ErrorKind::Unavailable, "idle")
                    .with_detail(ErrorDetail::Idle { timeout_ms: 1000 }),
            )),
            Request::List => Some(Response::List(Vec::new())),
            // An associate crosses the notice too: sent again with (a copy of) its socket.
            Request::Associate { .. } if asked.fetch_add(1, Ordering::SeqCst) == 2 => {
                Some(Response::Error(
                    WireError::new(ErrorKind::Unavailable, "idle")
                        .with_detail(ErrorDetail::Idle { timeout_ms: 1000 }),
                ))
            }
            Request::Associate { .. } => Some(Response::Associated { port: 4242 }),
            _ => None,
        })
    };
    let client = Client::connect_to(&fake.socket).await.unwrap();
    assert_eq!(client.list().await.unwrap(), Vec::new());
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    assert!(client.is_open());

    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = client
        .associate_raw(7, std::os::fd::AsFd::as_fd(&socket), None)
        .await
        .unwrap();
    assert_eq!(port, 4242);
    assert_eq!(asked.load(Ordering::SeqCst), 4);
}
