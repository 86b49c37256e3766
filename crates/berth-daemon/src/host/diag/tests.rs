//! Real sockets on loopback, read back through sock_diag in the caller's own namespace.

use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::*;

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return false;
    };
    (a, b) >= (major, minor)
}

/// A TCP socket bound to `addr`, not listening.
fn bound_only(addr: SocketAddr) -> Option<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).ok()?;
    socket.bind(&addr.into()).ok()?;
    Some(socket)
}

fn port_of(socket: &Socket) -> u16 {
    socket
        .local_addr()
        .unwrap()
        .as_socket()
        .map(|a| a.port())
        .unwrap()
}

fn find(protocol: Protocol, local: SocketAddr) -> Vec<Bound> {
    sockets_on(protocol, local.port(), MAX_SOCKETS_REPORTED)
        .unwrap()
        .into_iter()
        .filter(|b| b.local == local)
        .collect()
}

/// Checks that the one socket at `local` has `state` and this process as its owner.
fn check(protocol: Protocol, local: SocketAddr, state: &str) {
    let found = find(protocol, local);
    assert_eq!(found.len(), 1, "{protocol} {local}: {found:?}");
    assert_eq!(found[0].state_name(), state);
    assert_ne!(found[0].inode, 0);
    let me = std::process::id();
    let report = report(protocol, local.port(), 0, true, &|_| false).unwrap();
    let shown = report
        .iter()
        .find(|s| s.local == local.to_string())
        .unwrap_or_else(|| panic!("{local} not in {report:?}"));
    assert_eq!(shown.state, state);
    let owner = shown
        .owner
        .as_ref()
        .expect("this process is visible to itself");
    assert_eq!(owner.pid, me);
    assert!(!owner.command.is_empty());
    // Only the daemon's hold sockets (named by inode) count as berth's, not every socket of
    // its process.
    assert!(!shown.held_by_berth);
}

#[test]
fn finds_tcp_listeners_v4_and_v6() {
    let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    check(Protocol::Tcp, v4.local_addr().unwrap(), "LISTEN");
    if let Ok(v6) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
        check(Protocol::Tcp, v6.local_addr().unwrap(), "LISTEN");
    }
}

#[test]
fn finds_bound_but_not_listening_tcp_sockets() {
    if !kernel_at_least(6, 7) {
        berth_testkit::needs::skip(
            berth_testkit::needs::Need::Kernel,
            "needs kernel 6.7 or later: bound-only TCP sockets are listed from 6.7 on",
        );
        return;
    }
    let v4 = bound_only(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    check(
        Protocol::Tcp,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port_of(&v4))),
        "CLOSE",
    );
    if let Some(v6) = bound_only(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))) {
        check(
            Protocol::Tcp,
            SocketAddr::from((Ipv6Addr::LOCALHOST, port_of(&v6))),
            "CLOSE",
        );
    }
}

#[test]
fn finds_udp_sockets_v4_and_v6() {
    let v4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    check(Protocol::Udp, v4.local_addr().unwrap(), "UNCONN");
    if let Ok(v6) = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) {
        check(Protocol::Udp, v6.local_addr().unwrap(), "UNCONN");
    }
}

#[test]
fn the_port_filter_keeps_other_ports_out() {
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = a.local_addr().unwrap().port();
    let found = sockets_on(Protocol::Tcp, port, MAX_SOCKETS_REPORTED).unwrap();
    assert!(found.iter().all(|s| s.local.port() == port), "{found:?}");
    assert!(!found.iter().any(|s| s.local == b.local_addr().unwrap()));
    // The other protocol's space is separate.
    assert!(sockets_on(Protocol::Udp, port, MAX_SOCKETS_REPORTED)
        .unwrap()
        .iter()
        .all(|s| s.local.port() == port));
}

#[test]
fn connections_are_listed_after_their_listener() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = TcpStream::connect(addr).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let found = sockets_on(Protocol::Tcp, addr.port(), MAX_SOCKETS_REPORTED).unwrap();
    let states: Vec<&str> = found.iter().map(Bound::state_name).collect();
    assert_eq!(states.first(), Some(&"LISTEN"), "{states:?}");
    assert!(states.contains(&"ESTABLISHED"), "{states:?}");
    assert!(!only_time_wait(Protocol::Tcp, addr.port()));
}

#[test]
fn a_port_with_only_time_wait_connections_is_told_apart() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    assert!(
        !only_time_wait(Protocol::Tcp, addr.port()),
        "a listener is live"
    );
    // The side that closes first ends in TIME_WAIT: the server's, whose local port is the
    // listener's.
    drop(server);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    drop(client);
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = find(Protocol::Tcp, addr);
        if only_time_wait(Protocol::Tcp, addr.port()) {
            assert!(
                found.iter().all(|s| s.state_name() == "TIME_WAIT"),
                "{found:?}"
            );
            assert!(found.iter().all(|s| s.inode == 0));
            // Nobody holds a TIME_WAIT socket: no owner, not berth's.
            let shown = report(Protocol::Tcp, addr.port(), 0, true, &|_| false).unwrap();
            assert!(shown.iter().all(|s| s.owner.is_none() && !s.held_by_berth));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the port never showed TIME_WAIT only: {found:?}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn a_free_port_has_no_sockets_and_no_time_wait() {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = socket.local_addr().unwrap().port();
    drop(socket);
    // Nothing of ours is on it in TCP (another program might be, so only check the answer's
    // consistency).
    let found = sockets_on(Protocol::Tcp, port, MAX_SOCKETS_REPORTED).unwrap();
    assert_eq!(
        only_time_wait(Protocol::Tcp, port),
        !found.is_empty() && found.iter().all(Bound::is_time_wait)
    );
    assert!(!only_time_wait(Protocol::Udp, port));
}

#[test]
fn other_users_processes_are_hidden_from_non_administrators() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let me = process(std::process::id()).unwrap();
    let stranger = me.uid.wrapping_add(1);
    let shown = report(Protocol::Tcp, port, stranger, false, &|_| false).unwrap();
    assert!(!shown.is_empty());
    assert!(shown.iter().all(|s| s.owner.is_none()));
    let shown = report(Protocol::Tcp, port, me.uid, false, &|_| false).unwrap();
    assert!(shown
        .iter()
        .any(|s| s.owner.as_ref().map(|o| o.pid) == Some(me.pid)));
}

#[test]
fn the_hook_marks_sockets_by_inode() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let inode = find(Protocol::Tcp, addr)[0].inode;
    let shown = report(Protocol::Tcp, addr.port(), 0, true, &|i| i == inode).unwrap();
    assert!(shown.iter().any(|s| s.held_by_berth));
}
