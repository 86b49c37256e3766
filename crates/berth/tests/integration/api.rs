//! The Rust client against a real daemon on a temporary socket: every error kind that applies
//! to runtime reservations, and the lifetime rules (release, drop, session end).

use berth::{Client, Error, ErrorKind, Kind, Protocol};
use berth_testkit::{eventually, TestDaemon};

#[tokio::test]
async fn wildcard_blocks_come_from_the_pool_and_are_listed_with_their_owner() {
    let daemon = TestDaemon::start(11000, 11099);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let tcp = client.acquire(Protocol::Tcp, 0, 10).await.unwrap();
    let udp = client.acquire(Protocol::Udp, 0, 3).await.unwrap();
    assert!(tcp.start() >= 11000 && tcp.end() <= 11099);
    assert_eq!(tcp.count(), 10);
    assert_eq!(tcp.ports().count(), 10);
    assert_eq!(udp.protocol(), Protocol::Udp);
    assert_eq!(tcp.kind(), Kind::Runtime);
    assert_ne!(tcp.token(), udp.token());

    let list = client.list().await.unwrap();
    assert_eq!(list.len(), 2);
    let row = list.iter().find(|r| r.token == tcp.token()).unwrap();
    let owner = row.owner.as_ref().unwrap();
    assert_eq!(owner.pid, std::process::id());
    assert_eq!(row.range, tcp.range());

    let status = client.status().await.unwrap();
    assert_eq!(status.reservations, 2);
    assert_eq!(status.tcp_ports, 10);
    assert_eq!(status.udp_ports, 3);
    assert_eq!(status.version, client.daemon_version());
}

#[tokio::test]
async fn successive_wildcards_move_on_instead_of_reusing_a_released_block() {
    let daemon = TestDaemon::start(11100, 11199);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let first = client.acquire(Protocol::Tcp, 0, 5).await.unwrap();
    let first_range = first.range();
    first.release().await.unwrap();
    let second = client.acquire(Protocol::Tcp, 0, 5).await.unwrap();
    assert!(
        !second.range().overlaps(first_range),
        "{first_range} was handed out again at once"
    );
}

#[tokio::test]
async fn a_specific_overlap_is_a_conflict_naming_the_holder() {
    let daemon = TestDaemon::start(11200, 11299);
    let holder = Client::connect_to(&daemon.socket).await.unwrap();
    let other = Client::connect_to(&daemon.socket).await.unwrap();
    let held = holder.acquire(Protocol::Tcp, 21000, 10).await.unwrap();
    let err = other.acquire(Protocol::Tcp, 21005, 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(err.errno(), 98);
    let msg = err.to_string();
    assert!(msg.contains(&held.token().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(msg.contains("21000-21009"), "{msg}");
    // The other protocol's space is separate.
    let _udp = other.acquire(Protocol::Udp, 21005, 10).await.unwrap();
}

#[tokio::test]
async fn a_port_in_use_on_the_host_is_a_conflict() {
    let daemon = TestDaemon::start(11300, 11399);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let err = client.acquire(Protocol::Tcp, port, 1).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(listener);
    let _now_free = client.acquire(Protocol::Tcp, port, 1).await.unwrap();
}

#[tokio::test]
async fn wildcards_skip_ports_in_use() {
    let daemon = TestDaemon::start(11400, 11402);
    let busy = std::net::UdpSocket::bind("0.0.0.0:11401").unwrap();
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let r = client.acquire(Protocol::Udp, 0, 1).await.unwrap();
    let s = client.acquire(Protocol::Udp, 0, 1).await.unwrap();
    let got = [r.start(), s.start()];
    assert!(!got.contains(&11401), "{got:?}");
    let err = client.acquire(Protocol::Udp, 0, 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PoolExhausted);
    drop(busy);
}

#[tokio::test]
async fn bad_ranges_and_tokens_are_invalid_arguments() {
    let daemon = TestDaemon::start(11500, 11599);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    for (start, count) in [(0, 0), (100, 0), (65535, 2), (65000, 1000)] {
        let err = client
            .acquire(Protocol::Tcp, start, count)
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidArgument,
            "{start}+{count}: {err}"
        );
        assert_eq!(err.errno(), 22);
    }
    let err = client.release_raw(0).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    // The session survives bad requests.
    let _last = client.acquire(Protocol::Tcp, 65535, 1).await.unwrap();
}

#[tokio::test]
async fn an_exhausted_pool_says_so() {
    let daemon = TestDaemon::start(11600, 11609);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let err = client.acquire(Protocol::Tcp, 0, 11).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PoolExhausted);
    assert_eq!(err.errno(), 99);
    assert!(err.to_string().contains("11600-11609"), "{err}");
    let _all = client.acquire(Protocol::Tcp, 0, 10).await.unwrap();
    let err = client.acquire(Protocol::Tcp, 0, 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PoolExhausted);
}

#[tokio::test]
async fn unknown_tokens_are_not_found() {
    let daemon = TestDaemon::start(11700, 11799);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let r = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();
    let token = r.token();
    r.release().await.unwrap();
    let err = client.release(token).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.errno(), 2);
    assert!(err.to_string().contains(&token.to_string()), "{err}");
}

#[tokio::test]
async fn no_daemon_is_unavailable_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let err = Client::connect_to(dir.path().join("nothing.sock"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(err.errno(), 111);
    assert!(err.to_string().contains("berth daemon"), "{err}");
}

#[tokio::test]
async fn dropping_a_reservation_releases_it() {
    let daemon = TestDaemon::start(11800, 11899);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let r = client.acquire(Protocol::Tcp, 22000, 3).await.unwrap();
    drop(r);
    // Requests are answered in order, so the release is done before this list.
    assert!(client.list().await.unwrap().is_empty());
    let _again = client.acquire(Protocol::Tcp, 22000, 3).await.unwrap();
}

#[tokio::test]
async fn ending_the_session_releases_everything_it_held() {
    let daemon = TestDaemon::start(11900, 11999);
    let watcher = Client::connect_to(&daemon.socket).await.unwrap();
    // A session opened by hand never sends a release: only its end can free the block.
    let raw = raw_session(&daemon.socket).await;
    let _mine = watcher.acquire(Protocol::Udp, 0, 2).await.unwrap();
    assert_eq!(watcher.list().await.unwrap().len(), 2);
    drop(raw);
    assert!(
        eventually(5000, || async { watcher.list().await.unwrap().len() == 1 }).await,
        "the raw session's reservation outlived its connection"
    );
}

/// Opens a session by hand, acquires one block on it, and returns the open stream.
async fn raw_session(path: &std::path::Path) -> tokio::net::UnixStream {
    use berth_protocol::{FrameCodec, Hello, Request, Response};
    use futures_util::{SinkExt, StreamExt};
    use tokio_util::codec::Framed;

    let stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::client());
    framed
        .send(Request::Hello(Hello::current("raw")))
        .await
        .unwrap();
    assert!(matches!(
        framed.next().await,
        Some(Ok(Response::Welcome(_)))
    ));
    framed
        .send(Request::Acquire {
            protocol: Protocol::Tcp,
            start: 22200,
            count: 1,
        })
        .await
        .unwrap();
    assert!(matches!(
        framed.next().await,
        Some(Ok(Response::Acquired(_)))
    ));
    framed.into_inner()
}

#[tokio::test]
async fn shutdown_drains_sessions() {
    let daemon = TestDaemon::start(12000, 12099);
    // No reconnection window: once the daemon is gone, calls fail at once.
    let options = berth::Options::default().reconnect_window(std::time::Duration::ZERO);
    let client = Client::connect_to_with(&daemon.socket, options)
        .await
        .unwrap();
    let _r = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();
    daemon.shutdown().await;
    let err = client.list().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(!client.is_open());
}
