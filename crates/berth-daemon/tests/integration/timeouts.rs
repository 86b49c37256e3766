//! The daemon's timeouts, on paused tokio time that only the test moves
//! ([`berth_testkit::time`]): the clock is frozen, and each test advances it explicitly, in
//! small steps, to just before a timeout and then past it. A test of a 10-second timeout takes
//! no time, and a slow machine cannot make it fail: the clock never moves while the daemon is
//! still busy with an exchange, and real waits for I/O have a real-time bound instead.

use std::time::Duration;

use berth_core::{Kind, Protocol};
use berth_protocol::{Request, ReservationInfo, Response};
use berth_testkit::raw::{frame, raw_frame, responses, shaken_hands};
use berth_testkit::time::{advance, advance_to, freeze, settle, within, within_real};
use berth_testkit::TestDaemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// How long a connection that should stay open is watched, in real time, for a close: the
/// daemon closes on its closer threads, which take microseconds.
const WATCH: Duration = Duration::from_millis(50);

/// Asserts that `stream` is still open at the clock's current time: nothing to read and no end
/// of stream after the daemon has had its chance to act on every timer due so far.
async fn assert_open(stream: &mut UnixStream, what: &str) {
    settle().await;
    let mut byte = [0u8; 1];
    let read = within(WATCH, stream.read(&mut byte)).await;
    assert!(read.is_none(), "{what}: {read:?}");
}

/// Sends `request` and reads its one answer.
async fn ask(stream: &mut UnixStream, request: Request) -> Response {
    stream.write_all(&frame(request)).await.unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).await.unwrap();
    let mut all = responses(&raw_frame(&payload));
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

async fn list(stream: &mut UnixStream) -> Vec<ReservationInfo> {
    match ask(stream, Request::List).await {
        Response::List(list) => list,
        other => panic!("list: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_no_hello_is_closed_after_the_handshake_timeout() {
    const HANDSHAKE: Duration = Duration::from_secs(10);
    let _frozen = freeze();
    let daemon = TestDaemon::with_config(18200, 18209, |c| c.handshake_timeout = HANDSHAKE);
    let connected = Instant::now();
    let mut silent = UnixStream::connect(&daemon.socket).await.unwrap();
    let mut polite = shaken_hands(&daemon.socket, "polite").await;

    // Open until the timeout: the daemon starts counting when it accepts, after `connected`.
    advance_to(connected + HANDSHAKE - Duration::from_millis(20)).await;
    assert_open(&mut silent, "closed before the handshake timeout").await;
    // Closed, without a word, right after it.
    advance_to(connected + HANDSHAKE + Duration::from_secs(1)).await;
    let mut byte = [0u8; 1];
    let read = within_real(
        "the close after the handshake timeout",
        silent.read(&mut byte),
    )
    .await;
    assert_eq!(read.unwrap(), 0, "the daemon said something");

    // A client that said hello in time is served on.
    let status = ask(&mut polite, Request::Status).await;
    assert!(matches!(status, Response::Status(_)), "{status:?}");
}

#[tokio::test(start_paused = true)]
async fn a_held_reservation_nobody_reclaims_is_released_when_the_grace_period_ends() {
    const GRACE: Duration = Duration::from_secs(30);
    let _frozen = freeze();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");

    // The first daemon grants this process a block, and stops while the connection is still
    // open: its journal keeps the block for its owner.
    let first = TestDaemon::with_db(&db, 18300, 18309, |_| {});
    let mut owner = shaken_hands(&first.socket, "owner").await;
    let acquire = Request::Acquire {
        protocol: Protocol::Tcp,
        start: 0,
        count: 2,
    };
    let Response::Acquired(granted) = ask(&mut owner, acquire).await else {
        panic!("acquire failed")
    };
    first.shutdown().await;
    drop(owner);

    // The next daemon holds it for its owner, which is alive but never re-claims it.
    let restarted = Instant::now();
    let second = TestDaemon::with_db(&db, 18300, 18309, |c| c.grace = GRACE);
    let mut observer = shaken_hands(&second.socket, "observer").await;
    let is_held = |list: &[ReservationInfo]| {
        list.iter().any(|r| {
            r.token == granted.token && r.range == granted.range && r.kind == Kind::Runtime
        })
    };
    let held = list(&mut observer).await;
    assert!(is_held(&held), "{held:?}");
    let taken = ask(
        &mut observer,
        Request::Acquire {
            protocol: Protocol::Tcp,
            start: granted.range.start(),
            count: 1,
        },
    )
    .await;
    assert!(matches!(taken, Response::Error(_)), "{taken:?}");

    // Still held just before the grace period ends (the daemon starts counting once it has
    // restored the journal, after `restarted`).
    advance_to(restarted + GRACE - Duration::from_millis(20)).await;
    let held = list(&mut observer).await;
    assert!(
        is_held(&held),
        "released before the grace period ended: {held:?}"
    );

    // Released right after it.
    let deadline = restarted + GRACE + Duration::from_secs(1);
    loop {
        let now = list(&mut observer).await;
        if !is_held(&now) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still held a second after the grace period: {now:?}"
        );
        advance(Duration::from_millis(10)).await;
    }
    let again = Request::Acquire {
        protocol: Protocol::Tcp,
        start: granted.range.start(),
        count: 2,
    };
    let again = ask(&mut observer, again).await;
    assert!(matches!(again, Response::Acquired(_)), "{again:?}");
}

/// A client that sends requests but never reads the answers is disconnected once an answer
/// cannot be written for `write_timeout`, while other clients are served meanwhile.
#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_is_closed_after_the_write_timeout() {
    const WRITE: Duration = Duration::from_secs(5);
    let _frozen = freeze();
    let daemon = TestDaemon::with_config(18400, 18999, |c| c.write_timeout = WRITE);
    // Many reservations make every List answer large.
    let mut owner = shaken_hands(&daemon.socket, "owner").await;
    for _ in 0..300 {
        let granted = ask(
            &mut owner,
            Request::Acquire {
                protocol: Protocol::Tcp,
                start: 0,
                count: 1,
            },
        )
        .await;
        assert!(matches!(granted, Response::Acquired(_)), "{granted:?}");
    }
    // The stubborn client asks for lists worth several socket buffers and reads none.
    let mut stubborn = shaken_hands(&daemon.socket, "stubborn").await;
    let mut requests = Vec::new();
    for _ in 0..200 {
        requests.extend(frame(Request::List));
    }
    stubborn.write_all(&requests).await.unwrap();
    // Others are served while its answers are stuck.
    assert_eq!(list(&mut owner).await.len(), 300);
    advance(WRITE + Duration::from_secs(1)).await;
    // Reading now finds what the daemon wrote before it gave up, then the end: closed.
    let mut sink = Vec::new();
    let read = within_real(
        "the close of a client that does not read",
        stubborn.read_to_end(&mut sink),
    )
    .await;
    assert!(read.is_ok(), "{read:?}");
    assert!(
        sink.len() < 200 * 12_000,
        "all {} bytes were written: the socket never filled",
        sink.len()
    );
    assert_eq!(list(&mut owner).await.len(), 300);
}

/// Moves the clock to `by`, then reads one frame and the end of the stream: the daemon's last
/// word on a connection.
async fn last_word(stream: &mut UnixStream, by: Instant) -> Response {
    advance_to(by).await;
    let mut rest = Vec::new();
    let read = within_real("the daemon's last word", stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "{read:?}");
    let mut all = responses(&rest);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn assert_idle_notice(response: &Response, idle: Duration) {
    match response {
        Response::Error(e) => {
            assert_eq!(e.kind, berth_core::ErrorKind::Unavailable, "{e:?}");
            assert_eq!(
                e.detail,
                berth_protocol::ErrorDetail::Idle {
                    timeout_ms: u64::try_from(idle.as_millis()).unwrap()
                },
                "{e:?}"
            );
            assert!(e.message.contains("idle_timeout_s"), "{e:?}");
        }
        other => panic!("not an idle notice: {other:?}"),
    }
}

/// A session that says nothing after its hello and holds nothing is closed once the idle
/// timeout has passed, with a last frame saying why; one that holds a reservation is left
/// open however long it is silent, and is closed for silence only once it has released it.
#[tokio::test(start_paused = true)]
async fn a_silent_session_is_closed_only_while_it_holds_nothing() {
    const IDLE: Duration = Duration::from_secs(60);
    let _frozen = freeze();
    let daemon = TestDaemon::with_config(16100, 16109, |c| c.idle_timeout = Some(IDLE));
    let before = Instant::now();
    let mut silent = shaken_hands(&daemon.socket, "silent").await;
    let mut holder = shaken_hands(&daemon.socket, "holder").await;
    let acquire = Request::Acquire {
        protocol: Protocol::Tcp,
        start: 0,
        count: 2,
    };
    let Response::Acquired(granted) = ask(&mut holder, acquire).await else {
        panic!("acquire failed")
    };
    let after = Instant::now();

    // Open until the idle timeout (counted from after its welcome, so after `before`).
    advance_to(before + IDLE - Duration::from_millis(100)).await;
    assert_open(&mut silent, "closed before the idle timeout").await;
    let notice = last_word(&mut silent, after + IDLE + Duration::from_secs(1)).await;
    assert_idle_notice(&notice, IDLE);

    // Several idle timeouts later, the holder is still served and still holds its block.
    advance_to(after + 3 * IDLE).await;
    let now = list(&mut holder).await;
    assert!(now.iter().any(|r| r.token == granted.token), "{now:?}");
    // A request resets the count; once it holds nothing, silence ends it too.
    let released = ask(
        &mut holder,
        Request::Release {
            token: granted.token.get(),
        },
    )
    .await;
    assert!(matches!(released, Response::Released(_)), "{released:?}");
    let released_at = Instant::now();
    advance_to(released_at + IDLE - Duration::from_millis(100)).await;
    assert_open(&mut holder, "closed before the idle timeout").await;
    let notice = last_word(&mut holder, released_at + IDLE + Duration::from_secs(2)).await;
    assert_idle_notice(&notice, IDLE);
}

/// A request that arrives before the idle timeout keeps the session open: silence is counted
/// from the last request, not from the hello.
#[tokio::test(start_paused = true)]
async fn each_request_restarts_the_idle_count() {
    const IDLE: Duration = Duration::from_secs(60);
    let _frozen = freeze();
    let daemon = TestDaemon::with_config(16110, 16119, |c| c.idle_timeout = Some(IDLE));
    let mut chatty = shaken_hands(&daemon.socket, "chatty").await;
    for _ in 0..5 {
        advance(IDLE - Duration::from_secs(5)).await;
        let status = ask(&mut chatty, Request::Status).await;
        assert!(matches!(status, Response::Status(_)), "{status:?}");
    }
}

/// Connections stalled in the middle of a frame — half a length prefix, or a length and part
/// of the body — hold nothing: each is closed once the idle timeout has passed, while a
/// client holding a reservation is served throughout and keeps it.
#[tokio::test(start_paused = true)]
async fn connections_stalled_mid_frame_are_closed_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_secs(30);
    let _frozen = freeze();
    let daemon = TestDaemon::with_config(16120, 16129, |c| c.idle_timeout = Some(IDLE));
    let mut holder = shaken_hands(&daemon.socket, "holder").await;
    let acquire = Request::Acquire {
        protocol: Protocol::Tcp,
        start: 0,
        count: 1,
    };
    let Response::Acquired(granted) = ask(&mut holder, acquire).await else {
        panic!("acquire failed")
    };
    // Long enough for "a length and part of the body".
    let whole = frame(Request::Hello(berth_protocol::Hello::current(
        &"x".repeat(40),
    )));
    let mut stalled = Vec::new();
    for i in 0..100 {
        let mut conn = shaken_hands(&daemon.socket, "stalled").await;
        let part = if i % 2 == 0 { 2 } else { whole.len() - 3 };
        conn.write_all(&whole[..part]).await.unwrap();
        stalled.push(conn);
    }
    let started = Instant::now();
    let status = ask(&mut holder, Request::Status).await;
    let Response::Status(status) = status else {
        panic!("{status:?}")
    };
    assert_eq!(status.sessions, 101, "{status:?}");
    for conn in &mut stalled {
        let notice = last_word(conn, started + IDLE + Duration::from_secs(2)).await;
        assert_idle_notice(&notice, IDLE);
    }
    let now = list(&mut holder).await;
    assert!(now.iter().any(|r| r.token == granted.token), "{now:?}");
    // The sessions end just after their sockets close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Response::Status(status) = ask(&mut holder, Request::Status).await else {
            panic!("status failed")
        };
        if status.sessions == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{status:?}");
        advance(Duration::from_millis(1)).await;
    }
}
