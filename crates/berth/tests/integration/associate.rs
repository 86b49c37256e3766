//! Binding the caller's own sockets from a reservation, through the Rust API: ports, cursor,
//! fullness, families and addresses, preserved options, and every refusal.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use berth::{Client, Error, ErrorKind, Protocol};
use berth_testkit::deadline::{output_within, DEADLINE};
use berth_testkit::needs::{self, AS_NOBODY, PYTHON3};
use berth_testkit::raw::{response_from_hex, PY_PRELUDE};
use berth_testkit::TestDaemon;
use socket2::{Domain, Socket, Type};

const V4_ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const V4_LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6_LO: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn socket(domain: Domain, ty: Type) -> Socket {
    Socket::new(domain, ty, None).unwrap()
}

fn local_port(s: &Socket) -> u16 {
    s.local_addr().unwrap().as_socket().unwrap().port()
}

#[tokio::test]
async fn a_tcp_listener_from_a_reservation_accepts_connections() {
    let daemon = TestDaemon::start(14000, 14099);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let r = client.acquire(Protocol::Tcp, 0, 3).await.unwrap();
    let listener = r.tcp_listener(V4_LO).await.unwrap();
    let addr = listener.local_addr().unwrap();
    assert!(r.range().contains(addr.port()), "{addr}");
    assert_eq!(addr.ip(), V4_LO);

    let mut out = std::net::TcpStream::connect(addr).unwrap();
    out.write_all(b"hi").unwrap();
    let (mut accepted, _) = listener.accept().await.unwrap();
    let mut got = [0u8; 2];
    tokio::io::AsyncReadExt::read_exact(&mut accepted, &mut got)
        .await
        .unwrap();
    assert_eq!(&got, b"hi");
}

#[tokio::test]
async fn successive_binds_spread_over_the_block_until_it_is_full() {
    let daemon = TestDaemon::start(14100, 14199);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let r = client.acquire(Protocol::Udp, 0, 3).await.unwrap();
    let mut sockets = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let s = socket(Domain::IPV4, Type::DGRAM);
        let port = r.bind(&s, None).await.unwrap();
        assert_eq!(local_port(&s), port);
        ports.push(port);
        sockets.push(s);
    }
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        r.ports().collect::<Vec<_>>(),
        "each port once: {ports:?}"
    );

    let extra = socket(Domain::IPV4, Type::DGRAM);
    let err = r.bind(&extra, None).await.unwrap_err();
    assert!(matches!(err, Error::ReservationFull(_)), "{err:?}");
    assert_eq!(err.errno(), 98); // EADDRINUSE

    // Closing one frees exactly its port for the next bind.
    let freed = ports[1];
    drop(sockets.remove(1));
    let again = socket(Domain::IPV4, Type::DGRAM);
    assert_eq!(r.bind(&again, None).await.unwrap(), freed);
}

#[tokio::test]
async fn ipv6_ipv4_and_explicit_loopback_addresses() {
    let daemon = TestDaemon::start(14200, 14299);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let tcp = client.acquire(Protocol::Tcp, 0, 4).await.unwrap();
    let udp = client.acquire(Protocol::Udp, 0, 2).await.unwrap();

    // Wildcard of the socket's family by default.
    let v6 = socket(Domain::IPV6, Type::STREAM);
    tcp.bind(&v6, None).await.unwrap();
    let addr = v6.local_addr().unwrap().as_socket().unwrap();
    assert_eq!(addr.ip(), IpAddr::V6(Ipv6Addr::UNSPECIFIED));

    let v4 = socket(Domain::IPV4, Type::STREAM);
    tcp.bind(&v4, Some(V4_LO)).await.unwrap();
    assert_eq!(v4.local_addr().unwrap().as_socket().unwrap().ip(), V4_LO);

    let lo6 = tcp.tcp_listener(V6_LO).await.unwrap();
    assert_eq!(lo6.local_addr().unwrap().ip(), V6_LO);

    let u6 = udp.udp_socket(V6_LO).await.unwrap();
    let u4 = udp.udp_socket(V4_ANY).await.unwrap();
    let p6 = u6.local_addr().unwrap().port();
    let p4 = u4.local_addr().unwrap().port();
    assert!(udp.range().contains(p6) && udp.range().contains(p4));
    assert_ne!(p6, p4);

    // A datagram really arrives on the reserved port.
    let sender = std::net::UdpSocket::bind("[::1]:0").unwrap();
    sender.send_to(b"ping", SocketAddr::new(V6_LO, p6)).unwrap();
    let mut buf = [0u8; 4];
    let (n, _) = u6.recv_from(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"ping");
}

#[tokio::test]
async fn the_callers_socket_options_are_kept() {
    let daemon = TestDaemon::start(14300, 14399);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let r = client.acquire(Protocol::Tcp, 0, 2).await.unwrap();
    let s = socket(Domain::IPV6, Type::STREAM);
    s.set_nonblocking(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.set_only_v6(true).unwrap();
    r.bind(&s, None).await.unwrap();
    assert!(s.reuse_port().unwrap());
    assert!(s.only_v6().unwrap());
    // Still non-blocking: accept on a listener with no pending connection returns at once.
    s.listen(8).unwrap();
    let err = s.accept().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
}

#[tokio::test]
async fn sockets_that_do_not_fit_are_refused() {
    let daemon = TestDaemon::start(14400, 14499);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let tcp = client.acquire(Protocol::Tcp, 0, 2).await.unwrap();

    // A datagram socket for a TCP reservation.
    let udp = socket(Domain::IPV4, Type::DGRAM);
    let err = tcp.bind(&udp, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");
    assert_eq!(err.errno(), 95);
    assert!(err.to_string().contains("tcp"), "{err}");

    // Not an IP socket at all.
    let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = tcp.bind(&unix, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");

    // Not a socket.
    let file = std::fs::File::open("/dev/null").unwrap();
    let err = tcp.bind(&file, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");

    // Already bound.
    let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = tcp.bind(&bound, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("already bound"), "{err}");

    // An address of the other family.
    let v4 = socket(Domain::IPV4, Type::STREAM);
    let err = tcp.bind(&v4, Some(V6_LO)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    // An address this host does not have.
    let err = tcp
        .bind(&v4, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    // Unknown and zero tokens.
    let token = tcp.token();
    let s = socket(Domain::IPV4, Type::STREAM);
    let err = client.associate_raw(0, s.as_fd(), None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    drop(tcp);
    let err = client.associate(token, s.as_fd(), None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.errno(), 2);

    // The session is still fine after every refusal.
    let r = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();
    r.bind(&s, None).await.unwrap();
}

#[tokio::test]
async fn a_socket_from_another_network_namespace_is_refused() {
    let Some(ns) = needs::namespaces() else {
        return;
    };
    let Some(foreign) = ns.socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
    ) else {
        return;
    };
    let daemon = TestDaemon::start(14500, 14599);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let r = client.acquire(Protocol::Tcp, 0, 1).await.unwrap();
    let err = r.bind(&foreign, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");
    assert!(err.to_string().contains("network namespace"), "{err}");
}

/// Another process writing on the owner's connection — what a forked child does with an
/// inherited session — is told apart by its kernel credentials and refused.
// Blocking I/O below: the daemon needs worker threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_on_the_owners_connection_is_refused() {
    use berth_protocol::{FrameCodec, Hello, Request, Response};
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    // The child must be another user than the daemon's: its owner is an administrator.
    if !needs::users() || !needs::python3() {
        return;
    }
    let daemon = TestDaemon::start(14600, 14699);
    let mut conn = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut codec = FrameCodec::client();
    let mut exchange = |conn: &mut std::os::unix::net::UnixStream, req: Request| -> Response {
        let mut out = BytesMut::new();
        codec.encode(req, &mut out).unwrap();
        conn.write_all(&out).unwrap();
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).unwrap();
        let mut buf = BytesMut::from(&len[..]);
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        conn.read_exact(&mut payload).unwrap();
        buf.extend_from_slice(&payload);
        codec.decode(&mut buf).unwrap().unwrap()
    };
    assert!(matches!(
        exchange(&mut conn, Request::Hello(Hello::current("owner"))),
        Response::Welcome(_)
    ));
    let Response::Acquired(info) = exchange(
        &mut conn,
        Request::Acquire {
            protocol: Protocol::Tcp,
            start: 0,
            count: 1,
        },
    ) else {
        panic!("acquire failed")
    };
    let token = info.token.get();

    // Hand the connection to a child process (python3, as user nobody so that it is no
    // administrator either) that sends, on it, a release and an associate of the owner's
    // token, and prints the raw answers.
    rustix::io::fcntl_setfd(&conn, rustix::io::FdFlags::empty()).unwrap();
    let script = r#"
fd, token = int(sys.argv[1]), int(sys.argv[2])
conn = socket.socket(fileno=fd)
conn.sendall(frame(bytes([2]) + varint(token)))            # Release { token }
print(answer(conn).hex())
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
socket.send_fds(conn, [frame(bytes([5]) + varint(token) + bytes([0]))], [s.fileno()])  # Associate
print(answer(conn).hex())
"#;
    let script = format!("{PY_PRELUDE}{script}");
    let out = output_within(
        std::process::Command::new(AS_NOBODY[0])
            .args(&AS_NOBODY[1..])
            .args([
                PYTHON3,
                "-c",
                &script,
                &conn.as_fd().as_raw_fd().to_string(),
                &token.to_string(),
            ]),
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for line in stdout.lines() {
        match response_from_hex(line) {
            Response::Error(e) => {
                assert_eq!(e.kind, ErrorKind::PermissionDenied, "{}", e.message);
                assert!(e.message.contains(&info.token.to_string()), "{}", e.message);
            }
            other => panic!("the child was not refused: {other:?}"),
        }
    }
    assert_eq!(stdout.lines().count(), 2, "{stdout}");

    // The owner itself still may release it on the same connection.
    assert!(matches!(
        exchange(&mut conn, Request::Release { token }),
        Response::Released(_)
    ));
}

/// A socket its owner closed keeps its port while another reference to it lives for a moment
/// (a child forked before the close, a process listing the owner's descriptors in
/// `/proc/PID/fd`): an associate made right after the close gets the port once that reference
/// goes, not reservation-full. (Two ports, both in use that way, for TCP and UDP.)
#[tokio::test]
async fn a_port_kept_a_moment_by_a_closing_socket_is_bound_once_it_is_released() {
    let daemon = TestDaemon::start(14700, 14799);
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    for ty in [Type::STREAM, Type::DGRAM] {
        let protocol = if ty == Type::STREAM {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let r = client.acquire_unheld(protocol, 0, 1).await.unwrap();
        let first = socket(Domain::IPV4, ty);
        let port = r.bind(&first, None).await.unwrap();
        // Another reference to the same socket, dropped a moment after the owner's close (a
        // thread standing for the forked child or the /proc reader).
        let copy = first.try_clone().unwrap();
        drop(first);
        let lingering = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            drop(copy);
        });
        let again = socket(Domain::IPV4, ty);
        assert_eq!(r.bind(&again, None).await.unwrap(), port, "{protocol}");
        lingering.join().unwrap();
    }
}
