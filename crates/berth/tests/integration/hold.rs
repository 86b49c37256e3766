//! Held reservations: other programs' explicit binds to a held port fail, associate hands over
//! exactly the port it binds, and a port whose owner's socket closed goes back into hold.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use berth::{Client, Protocol};
use berth_testkit::{eventually, TestDaemon};
use socket2::{Domain, Socket, Type};

/// Whether another program could bind `port` now — even with `SO_REUSEADDR` and
/// `SO_REUSEPORT`, as a stranger trying hard would — on IPv4 and on IPv6.
fn stranger_can_bind(protocol: Protocol, port: u16) -> bool {
    let ty = match protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let try_bind = |domain: Domain, ip: IpAddr| {
        let s = Socket::new(domain, ty, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_reuse_port(true).unwrap();
        if domain == Domain::IPV6 {
            s.set_only_v6(true).unwrap();
        }
        s.bind(&SocketAddr::new(ip, port).into()).is_ok()
    };
    try_bind(Domain::IPV4, Ipv4Addr::UNSPECIFIED.into())
        || try_bind(Domain::IPV4, Ipv4Addr::LOCALHOST.into())
        || try_bind(Domain::IPV6, Ipv6Addr::UNSPECIFIED.into())
}

#[tokio::test]
async fn held_ports_refuse_other_programs_until_released() {
    let daemon = TestDaemon::start(19000, 19099);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let block = client.acquire(protocol, 0, 3).await.unwrap();
        let ports: Vec<u16> = block.ports().collect();
        for &port in &ports {
            assert!(
                !stranger_can_bind(protocol, port),
                "{protocol} {port} is not held"
            );
        }
        let listed = client.list().await.unwrap();
        let row = listed.iter().find(|r| r.token == block.token()).unwrap();
        assert!(row.held);
        block.release().await.unwrap();
        for &port in &ports {
            assert!(
                stranger_can_bind(protocol, port),
                "{protocol} {port} stays held"
            );
        }
    }
}

#[tokio::test]
async fn an_unheld_reservation_is_not_held() {
    let daemon = TestDaemon::start(19100, 19199);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let block = client.acquire_unheld(Protocol::Tcp, 0, 1).await.unwrap();
    assert!(stranger_can_bind(Protocol::Tcp, block.start()));
    let listed = client.list().await.unwrap();
    assert!(!listed[0].held);
}

#[tokio::test]
async fn a_port_in_use_is_skipped_by_the_hold_and_refused_to_a_specific_request() {
    let daemon = TestDaemon::start(19200, 19209);
    let busy = std::net::TcpListener::bind("127.0.0.1:19200").unwrap();
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let block = client.acquire(Protocol::Tcp, 0, 2).await.unwrap();
    assert_eq!(
        block.start(),
        19201,
        "the hold's own bind is the in-use test"
    );
    let err = client.acquire(Protocol::Tcp, 19200, 1).await.unwrap_err();
    assert_eq!(err.kind(), berth::ErrorKind::Conflict);
    drop(busy);
}

#[tokio::test]
async fn associate_hands_over_one_port_and_takes_it_back_when_the_socket_closes() {
    let daemon = TestDaemon::start(19300, 19399);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let block = client.acquire(Protocol::Tcp, 0, 3).await.unwrap();
    let listener = block
        .tcp_listener(Ipv4Addr::LOCALHOST.into())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(block.ports().any(|p| p == port));
    // The owner's listener works on the port it was handed.
    let conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    drop((conn, accepted));
    // Every port stays closed to others: the handed one has the owner's socket, the rest are
    // held.
    for p in block.ports() {
        assert!(
            !stranger_can_bind(Protocol::Tcp, p),
            "port {p} is open to others"
        );
    }
    let bound = |client: Client, token| async move {
        let list = client.list().await.unwrap();
        list.into_iter()
            .find(|r| r.token == token)
            .map(|r| r.bound)
            .unwrap_or_default()
    };
    assert_eq!(bound(client.clone(), block.token()).await, vec![port]);

    // The owner closes its socket: the port goes back into hold (the re-hold pass).
    drop(listener);
    let token = block.token();
    let c = client.clone();
    assert!(
        eventually(10_000, || {
            let c = c.clone();
            async move { bound(c, token).await.is_empty() }
        })
        .await,
        "the port never went back into hold"
    );
    assert!(
        !stranger_can_bind(Protocol::Tcp, port),
        "port {port} left open after its socket closed"
    );
    // And the owner can bind it again.
    let again = block
        .tcp_listener(Ipv4Addr::LOCALHOST.into())
        .await
        .unwrap();
    assert!(block
        .ports()
        .any(|p| p == again.local_addr().unwrap().port()));
}

#[tokio::test]
async fn an_ipv4_and_an_ipv6_only_socket_share_one_held_port_in_either_order() {
    let daemon = TestDaemon::start(19400, 19499);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    for v4_first in [true, false] {
        let block = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();
        let v4 = || Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let v6only = || {
            let s = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
            s.set_only_v6(true).unwrap();
            s
        };
        let (first, second) = if v4_first {
            (v4(), v6only())
        } else {
            (v6only(), v4())
        };
        let a = block.bind(&first, None).await.unwrap();
        let b = block.bind(&second, None).await.unwrap();
        assert_eq!(
            (a, b),
            (block.start(), block.start()),
            "v4 first: {v4_first}"
        );
        block.release().await.unwrap();
    }
}

/// A server that closes its connections first leaves them in TIME_WAIT on its port; when it
/// restarts, its 1-port reservation must let it listen again at once (held or not).
#[tokio::test]
async fn a_restarting_server_gets_its_only_port_back_despite_time_wait() {
    let daemon = TestDaemon::start(19500, 19599);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    for held in [true, false] {
        let block = if held {
            client.acquire(Protocol::Tcp, 0, 1).await.unwrap()
        } else {
            client.acquire_unheld(Protocol::Tcp, 0, 1).await.unwrap()
        };
        let listener = block
            .tcp_listener(Ipv4Addr::LOCALHOST.into())
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (served, _) = listener.accept().await.unwrap();
        // The server closes first: its side of the connection, on `port`, goes to TIME_WAIT.
        drop(served);
        drop(listener);
        drop(peer);
        let again = block
            .tcp_listener(Ipv4Addr::LOCALHOST.into())
            .await
            .unwrap_or_else(|e| panic!("held: {held}: {e}"));
        assert_eq!(again.local_addr().unwrap().port(), port);
        drop(again);
        block.release().await.unwrap();
    }
}

/// After a restart the daemon does not know which ports of a held reservation its owner had
/// bound; it learns it from the hold sockets it cannot bind, and takes each port back into
/// hold once the owner's socket closes.
#[tokio::test]
async fn after_a_restart_a_held_port_goes_back_into_hold_when_its_socket_closes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let first = TestDaemon::with_db(&db, 19700, 19709, |_| {});
    let client = Client::connect_to(&first.socket).await.unwrap();
    let block = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();
    let port = block.start();
    let listener = block
        .tcp_listener(Ipv4Addr::UNSPECIFIED.into())
        .await
        .unwrap();
    first.shutdown().await;

    // The next daemon holds the reservation for its owner (this process), unclaimed.
    let second = TestDaemon::with_db(&db, 19700, 19709, |_| {});
    let watcher = Client::connect_to(&second.socket).await.unwrap();
    let row =
        |list: Vec<berth::ReservationInfo>| list.into_iter().find(|r| r.range.start() == port);
    let listed = row(watcher.list().await.unwrap()).expect("restored");
    assert!(listed.held);
    // It learns that the owner's socket has the port …
    let w = watcher.clone();
    assert!(
        eventually(10_000, || {
            let w = w.clone();
            async move { row(w.list().await.unwrap()).is_some_and(|r| r.bound == vec![port]) }
        })
        .await,
        "the restarted daemon never saw the owner's socket on {port}"
    );
    // … and takes the port back into hold once that socket closes.
    drop(listener);
    let w = watcher.clone();
    assert!(
        eventually(10_000, || {
            let w = w.clone();
            async move { row(w.list().await.unwrap()).is_some_and(|r| r.bound.is_empty()) }
        })
        .await,
        "the port never went back into hold after the restart"
    );
    assert!(!stranger_can_bind(Protocol::Tcp, port));
    drop(block);
    drop(client);
}

/// Associate, then bind one exact port (the QUIC pattern): exactly that port, or an error.
#[tokio::test]
async fn associate_at_a_port_binds_exactly_that_port() {
    let daemon = TestDaemon::start(19800, 19899);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let block = client.acquire(Protocol::Udp, 0, 3).await.unwrap();
    let want = block.start() + 2;
    let first = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
    assert_eq!(block.bind_port(&first, None, want).await.unwrap(), want);
    let again = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
    let err = block.bind_port(&again, None, want).await.unwrap_err();
    assert_eq!(err.kind(), berth::ErrorKind::ReservationFull, "{err}");
    let outside = block
        .bind_port(&again, None, block.start() + 3)
        .await
        .unwrap_err();
    assert_eq!(
        outside.kind(),
        berth::ErrorKind::InvalidArgument,
        "{outside}"
    );
    // The other ports stay held, and any of them can still be had.
    assert!(!stranger_can_bind(Protocol::Udp, block.start()));
    assert_eq!(block.bind(&again, None).await.unwrap(), block.start());
}

/// An administrator may switch holding off (`hold = false`): what clients acquire with hold is
/// granted unheld, says so, and other programs can bind its ports; status tells why.
#[tokio::test]
async fn a_daemon_with_hold_switched_off_grants_unheld_and_says_why() {
    let daemon = TestDaemon::with_config(19900, 19909, |c| c.hold = false);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let block = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();
    let port = block.start();
    let listed = client.list().await.unwrap();
    let row = listed.iter().find(|r| r.token == block.token()).unwrap();
    assert!(!row.held, "granted held by a daemon with hold off: {row:?}");
    assert!(stranger_can_bind(Protocol::Tcp, port));
    let status = client.status().await.unwrap();
    assert!(!status.hold);
    assert_eq!(status.hold_sockets, 0);
    assert!(
        status.hold_off_because.contains("hold = false"),
        "{}",
        status.hold_off_because
    );
    block.release().await.unwrap();
    // And a daemon with the default holds.
    let holding = TestDaemon::start(19910, 19919);
    let client = Client::connect_to(&holding.socket).await.unwrap();
    let status = client.status().await.unwrap();
    assert!(status.hold && status.hold_off_because.is_empty());
}
