//! `why` through the client library, and refusals over ports in use that name the process.
//!
//! The test daemon runs in this process, so the sockets the test binds belong to the daemon's
//! own pid, which the daemon counts as its own hold sockets until hold mode knows their
//! inodes: `held_by_berth` is not checked here (the CLI tests, with a daemon of its own, do).

use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};

use berth::{Client, ErrorKind, Protocol};
use berth_protocol::{ErrorDetail, FrameCodec, Request, Response};
use berth_testkit::raw::{frame, shaken_hands};
use berth_testkit::TestDaemon;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Decoder;

async fn ask(stream: &mut UnixStream, request: Request) -> Response {
    stream.write_all(&frame(request)).await.unwrap();
    let mut codec = FrameCodec::<Response, Request>::client();
    let mut buf = BytesMut::new();
    loop {
        if let Some(response) = codec.decode(&mut buf).unwrap() {
            return response;
        }
        let n = stream.read_buf(&mut buf).await.unwrap();
        assert!(n > 0, "the daemon closed the connection");
    }
}

#[tokio::test]
async fn why_explains_a_reserved_port_bound_by_its_owner() {
    let daemon = TestDaemon::start(16310, 16319);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let reservation = client.acquire(Protocol::Tcp, 0, 2).await.unwrap();
    let listener = reservation
        .tcp_listener(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();

    let report = client.why(Protocol::Tcp, port).await.unwrap();
    assert_eq!((report.protocol, report.port), (Protocol::Tcp, port));
    assert!(report.in_pool);
    let shown = report.reservation.expect("the reservation");
    assert_eq!(shown.token, reservation.token());
    assert_eq!(shown.bound, vec![port]);
    assert_eq!(
        shown.owner.map(|o| o.pid),
        Some(std::process::id()),
        "the same user sees the owner"
    );
    let socket = report
        .sockets
        .iter()
        .find(|s| s.local == format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("the listener is not in {:?}", report.sockets));
    assert_eq!(socket.state, "LISTEN");
    assert_eq!(
        socket.owner.as_ref().map(|o| o.pid),
        Some(std::process::id())
    );

    // The other port of the block: reserved, not bound.
    let other = reservation.ports().find(|&p| p != port).unwrap();
    let report = client.why(Protocol::Tcp, other).await.unwrap();
    assert!(report.reservation.unwrap().bound == vec![port]);
}

#[tokio::test]
async fn why_lists_sockets_bound_outside_berth() {
    let daemon = TestDaemon::start(16320, 16329);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = udp.local_addr().unwrap().port();

    let report = client.why(Protocol::Udp, port).await.unwrap();
    assert!(report.reservation.is_none());
    assert!(!report.in_pool);
    let socket = report
        .sockets
        .iter()
        .find(|s| s.local == format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("the socket is not in {:?}", report.sockets));
    assert_eq!(socket.state, "UNCONN");
    let owner = socket
        .owner
        .as_ref()
        .expect("the same user sees the process");
    assert_eq!(owner.pid, std::process::id());
    assert!(!owner.command.is_empty());

    // Nothing is bound to it in the other port space.
    let report = client.why(Protocol::Tcp, port).await.unwrap();
    assert!(report
        .sockets
        .iter()
        .all(|s| s.local != format!("127.0.0.1:{port}")));
}

#[tokio::test]
async fn why_port_zero_is_an_invalid_argument() {
    let daemon = TestDaemon::start(16330, 16339);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let e = client.why(Protocol::Tcp, 0).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn the_blocking_client_asks_why_too() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let daemon = rt.block_on(async { TestDaemon::start(16340, 16349) });
    let client = berth::blocking::Client::connect_to(&daemon.socket).unwrap();
    let report = client.why(Protocol::Tcp, 16341).unwrap();
    assert!(report.in_pool);
    assert!(report.reservation.is_none());
    drop(client);
    rt.block_on(daemon.shutdown());
}

#[tokio::test]
async fn a_specific_acquire_over_a_port_in_use_names_the_process() {
    let daemon = TestDaemon::start(16350, 16359);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();

    // Through the library: the message names the pid and the socket.
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let e = client.acquire(Protocol::Tcp, port, 1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    let me = std::process::id();
    assert!(
        e.message().contains(&format!("pid {me} (")),
        "{}",
        e.message()
    );
    assert!(
        e.message().contains(&format!("LISTEN on 127.0.0.1:{port}")),
        "{}",
        e.message()
    );

    // In the detail: the process, and no reservation.
    let mut raw = shaken_hands(&daemon.socket, "raw").await;
    let request = Request::Acquire {
        protocol: Protocol::Tcp,
        start: port,
        count: 1,
    };
    let Response::Error(refused) = ask(&mut raw, request).await else {
        panic!("a port in use was granted");
    };
    let ErrorDetail::Ports(ports) = refused.detail else {
        panic!("no ports in the detail");
    };
    assert_eq!(ports.port, Some(port));
    let holder = ports.holder.expect("the process that has the port");
    assert_eq!((holder.token, holder.kind), (None, None));
    let owner = holder.owner.expect("the same user sees it");
    assert_eq!(owner.pid, me);
    assert!(!owner.command.is_empty());
}

/// A persistent reservation's port that a program bound through associate and then closed is
/// "bound" no more: `why` says so at once, and `list` within a re-hold pass or two — never
/// "bound" for a socket that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_socket_is_not_reported_bound() {
    let daemon = TestDaemon::start(16360, 16369);
    let admin = Client::connect_to(&daemon.socket).await.unwrap();
    let persistent = admin
        .create_persistent(Protocol::Tcp, 27240, 2, &berth::Allow::default())
        .await
        .unwrap();
    let bind = || async {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let port = admin
            .associate(persistent.token, std::os::fd::AsFd::as_fd(&socket), None)
            .await
            .unwrap();
        (socket, port)
    };
    let (socket, port) = bind().await;
    let report = admin.why(Protocol::Tcp, port).await.unwrap();
    assert_eq!(report.reservation.unwrap().bound, vec![port]);
    drop(socket);
    let report = admin.why(Protocol::Tcp, port).await.unwrap();
    assert!(report.reservation.unwrap().bound.is_empty(), "why, at once");

    // `list`, after the socket of another bind is closed.
    let (socket, port) = bind().await;
    let bound_in_list = || async {
        admin
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.token == persistent.token)
            .unwrap()
            .bound
    };
    assert_eq!(bound_in_list().await, vec![port]);
    drop(socket);
    let deadline = tokio::time::Instant::now() + berth_testkit::deadline::DEADLINE;
    while !bound_in_list().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "list still says bound"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
