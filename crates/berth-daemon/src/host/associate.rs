//! Binding a client's own socket to a port of its reservation (docs/associate.md).
//!
//! The client sends its unbound socket; the daemon checks that it suits the reservation,
//! then tries the reservation's ports in the order the table gives: ports no socket of the
//! reservation is bound to first, from its cursor, then the ports its owner has bound already.
//!
//! A port nobody bound from the reservation is first tested with a fresh socket that sets
//! neither `SO_REUSEADDR` nor `SO_REUSEPORT` but has the caller's family, `IPV6_V6ONLY` and
//! address: so a port another program holds is never handed out because the caller's socket
//! carries reuse options, while the layouts the kernel allows for one address family next to
//! another (an IPv4 socket and an IPv6-only one on one port) stay possible. A port the owner
//! has bound already is bound directly: the kernel's own rules between the owner's sockets
//! decide (a v4 and a v6-only socket, several `SO_REUSEPORT` sockets). The client's socket is
//! bound with its own options untouched.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::BorrowedFd;

use berth_core::{BindPlan, ErrorKind, PortUse, Protocol, Token};
use rustix::net::{sockopt, AddressFamily, SocketType};
use socket2::{Domain, Socket, Type};

use crate::mirror::hold::Holds;
use berth_os::netns::NetNs;

/// What the daemon learned about a client's socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketFacts {
    /// IPv4 or IPv6.
    pub(crate) ipv6: bool,
    /// An IPv6 socket with `IPV6_V6ONLY`: it does not take the port for IPv4.
    pub(crate) v6only: bool,
    /// The transport protocol its type implies.
    pub(crate) protocol: Protocol,
}

/// A refusal with its kind and message.
pub(crate) type Refusal = (ErrorKind, String);

/// Checks that `fd` is an unbound TCP or UDP socket of the daemon's network namespace.
pub(crate) fn inspect(fd: BorrowedFd<'_>, daemon_ns: NetNs) -> Result<SocketFacts, Refusal> {
    let not_socket = |e: rustix::io::Errno| {
        (
            ErrorKind::NotSupported,
            format!("the descriptor sent is not a socket ({e}); send a TCP or UDP socket"),
        )
    };
    let family = sockopt::socket_domain(fd).map_err(not_socket)?;
    let ipv6 = match family {
        AddressFamily::INET => false,
        AddressFamily::INET6 => true,
        _ => {
            return Err((
                ErrorKind::NotSupported,
                "the socket is not an IPv4 or IPv6 socket; only TCP and UDP sockets can be bound from a reservation".into(),
            ))
        }
    };
    let ty = sockopt::socket_type(fd).map_err(not_socket)?;
    let proto = sockopt::socket_protocol(fd).map_err(not_socket)?;
    let protocol = match (ty, proto) {
        (SocketType::STREAM, Some(p)) if p == rustix::net::ipproto::TCP => Protocol::Tcp,
        (SocketType::DGRAM, Some(p)) if p == rustix::net::ipproto::UDP => Protocol::Udp,
        _ => {
            return Err((
                ErrorKind::NotSupported,
                "the socket is neither TCP (SOCK_STREAM) nor UDP (SOCK_DGRAM); only those can be bound from a reservation".into(),
            ))
        }
    };
    match daemon_ns.holds(fd) {
        Ok(true) => {}
        Ok(false) => {
            return Err((
                ErrorKind::NotSupported,
                "the socket belongs to another network namespace than this daemon's; a reservation covers only the daemon's namespace — use the berth daemon of that namespace".into(),
            ))
        }
        Err(e) => {
            return Err((
                ErrorKind::NotSupported,
                format!("cannot tell the socket's network namespace ({e})"),
            ))
        }
    }
    if let Some(port) = local_port(fd).filter(|&p| p != 0) {
        return Err((
            ErrorKind::InvalidArgument,
            format!(
                "the socket is already bound to port {port}; send a socket that is not bound yet"
            ),
        ));
    }
    let v6only = ipv6 && sockopt::ipv6_v6only(fd).unwrap_or(false);
    Ok(SocketFacts {
        ipv6,
        v6only,
        protocol,
    })
}

/// The address to bind: the one asked for, or the unspecified address of the socket's family.
pub(crate) fn choose_address(facts: SocketFacts, asked: Option<IpAddr>) -> Result<IpAddr, Refusal> {
    match (asked, facts.ipv6) {
        (None, false) => Ok(Ipv4Addr::UNSPECIFIED.into()),
        (None, true) => Ok(Ipv6Addr::UNSPECIFIED.into()),
        (Some(ip @ IpAddr::V4(_)), false) | (Some(ip @ IpAddr::V6(_)), true) => Ok(ip),
        (Some(ip), _) => Err((
            ErrorKind::InvalidArgument,
            format!(
                "address {ip} does not fit an {} socket; pass an address of the socket's family",
                if facts.ipv6 { "IPv6" } else { "IPv4" }
            ),
        )),
    }
}

/// The port `fd` is bound to, if it is an IP socket.
fn local_port(fd: BorrowedFd<'_>) -> Option<u16> {
    let addr = rustix::net::getsockname(fd).ok()?;
    SocketAddr::try_from(addr).ok().map(|a| a.port())
}

/// Binds `fd` to the first port of `plan` it can have, in the plan's order. Returns the port,
/// or a refusal (reservation-full when no port of the block can be had).
///
/// For a held reservation (`held`: its hold sockets and token), a free port is held by the
/// daemon: its hold socket is given up and the caller's socket bound in its place (the hold
/// was the in-use test); if that bind fails the port is held again.
///
/// The common path is a few non-blocking system calls on the serving thread. The rare ones
/// that ask the kernel's socket table (a netlink dump, milliseconds) run on the blocking pool,
/// and the retries after a hold is given up wait on tokio's timer: a serving thread never
/// blocks here.
pub(crate) async fn bind_from(
    fd: BorrowedFd<'_>,
    facts: SocketFacts,
    plan: &BindPlan,
    address: IpAddr,
    held: Option<(&Holds, Token)>,
    uid: u32,
) -> Result<u16, Refusal> {
    // Ports found in use, to look at again should none be free (see `bind_when_released`).
    let mut busy: Vec<(u16, PortUse)> = Vec::new();
    let mut patience = Patience::of(uid);
    for &(port, known) in &plan.order {
        let target = SocketAddr::new(address, port);
        // A held port: its hold sockets go (all of them: the owner's earlier sockets there
        // may have left one family held), the caller's socket is bound, and whatever it leaves
        // of the port is held again — whether the bind worked or not.
        let given_up = held.is_some_and(|(holds, token)| holds.give_up(token, port));
        if known == PortUse::Free && !given_up {
            if let Err(e) = probe(facts, target) {
                // A port only TIME_WAIT connections keep (a server that just restarted) is the
                // caller's to bind if its socket allows it (SO_REUSEADDR): the kernel decides.
                let lingering = e.kind() == io::ErrorKind::AddrInUse
                    && only_time_wait(plan.protocol, port).await;
                if e.kind() == io::ErrorKind::AddrInUse && !lingering {
                    busy.push((port, known));
                    continue;
                }
                if !lingering {
                    return Err(bind_refusal(&e, target));
                }
            }
        }
        let mut bound = rustix::net::bind(fd, &target);
        if given_up && bound == Err(rustix::io::Errno::ADDRINUSE) {
            bound = bind_after_release(fd, plan.protocol, target, &mut patience).await;
        }
        // The owner's earlier connections on its own port, lingering in TIME_WAIT, keep a
        // socket without SO_REUSEADDR out: a daemon that may ends them (as `ss -K` does), so
        // that the owner's restarted server gets its port back.
        if bound == Err(rustix::io::Errno::ADDRINUSE)
            && only_time_wait(plan.protocol, port).await
            && end_time_wait(port).await
        {
            bound = rustix::net::bind(fd, &target);
        }
        if let Some((holds, token)) = held {
            holds.fill(token, plan.protocol, port);
        }
        match bound {
            Ok(()) => return Ok(port),
            Err(rustix::io::Errno::ADDRINUSE) => {
                // A held port given up was waited for already (`bind_after_release`).
                if !given_up {
                    busy.push((port, known));
                }
                continue;
            }
            Err(e) => return Err(bind_refusal(&e.into(), target)),
        }
    }
    if let Some(port) =
        bind_when_released(fd, (facts, plan.protocol, address), &busy, &mut patience).await
    {
        if let Some((holds, token)) = held {
            holds.fill(token, plan.protocol, port);
        }
        return Ok(port);
    }
    Err((
        ErrorKind::ReservationFull,
        format!(
            "every {} port of the reservation ({}) is bound on {address}, by sockets of yours or of other programs; close a socket bound from it, or reserve more ports",
            facts.protocol, plan.range
        ),
    ))
}

/// The waits before each new try of a port that only a closing socket may keep: 31 ms in all,
/// for one request however many of its ports are tried (see [`Patience`]).
const RELEASE_DELAYS_MS: [u64; 5] = [1, 2, 4, 8, 16];

/// The most ports of a block [`bind_when_released`] waits for.
const RELEASE_PORTS: usize = 8;

/// What one request may still wait for sockets on their way out ([`bind_after_release`],
/// [`bind_when_released`]): [`RELEASE_DELAYS_MS`] once, shared by every port it tries, so a
/// request that ends in reservation-full waits at most 31 ms, and only for sockets of its own
/// user.
struct Patience {
    /// The requester's user: only its sockets may be the closing ones it waits for.
    uid: u32,
    /// The delays used so far.
    used: usize,
}

impl Patience {
    fn of(uid: u32) -> Self {
        Patience { uid, used: 0 }
    }

    /// Waits the next delay; `false` (at once) when none is left.
    async fn wait(&mut self) -> bool {
        let Some(&ms) = RELEASE_DELAYS_MS.get(self.used) else {
            return false;
        };
        self.used += 1;
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        true
    }

    fn exhausted(&self) -> bool {
        self.used >= RELEASE_DELAYS_MS.len()
    }
}

/// Which of `ports` may be kept only by a socket of `uid`'s on its way out: the kernel lists no
/// socket on it, or only `uid`'s bound sockets that neither listen nor are connected — what a
/// closed socket looks like while its last reference is being dropped (kernel 6.7 and later
/// list such sockets; earlier ones list nothing). Another user's socket is never waited for.
/// Looked at once per request (two netlink dumps a port, on the blocking pool), not once per
/// try: the tries are binds, which cost the daemon next to nothing.
async fn only_closing(protocol: Protocol, ports: Vec<u16>, uid: u32) -> Vec<u16> {
    tokio::task::spawn_blocking(move || {
        ports
            .into_iter()
            .filter(|&port| {
                crate::host::diag::sockets_on(protocol, port, 16).is_ok_and(|sockets| {
                    sockets
                        .iter()
                        .all(|s| s.state == berth_os::diag::TCP_CLOSE && s.uid == uid)
                })
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Binds again after a hold socket was given up and the first bind found the port in use. A
/// closed descriptor keeps its port while a copy lives on, and a process that forks (a test
/// process running an in-process daemon and spawning a child, say) has copies of every
/// descriptor until the child calls exec — a millisecond or so. When the kernel lists only
/// sockets of the requester's that may be closing on the port, that may be what happened: try
/// again a few times, briefly, within the request's [`Patience`].
async fn bind_after_release(
    fd: BorrowedFd<'_>,
    protocol: Protocol,
    target: SocketAddr,
    patience: &mut Patience,
) -> rustix::io::Result<()> {
    // The kernel's socket list alone: no /proc scan for owners is needed here.
    if patience.exhausted()
        || only_closing(protocol, vec![target.port()], patience.uid)
            .await
            .is_empty()
    {
        return Err(rustix::io::Errno::ADDRINUSE);
    }
    while patience.wait().await {
        match rustix::net::bind(fd, &target) {
            Err(rustix::io::Errno::ADDRINUSE) => continue,
            other => return other,
        }
    }
    Err(rustix::io::Errno::ADDRINUSE)
}

/// When no port of the block could be bound: the first of `busy` that comes free within the
/// request's [`Patience`] while only the requester's sockets that may be closing keep it. A
/// socket closed by its owner keeps its port until its last reference goes, and that reference
/// may be another process's for a moment — a child forked before it was closed, or a process
/// reading `/proc/PID/fd` (listing a process's descriptors takes a reference to each) — so an
/// owner that closes a socket and at once asks for its port again may find it taken. A port
/// the owner never bound is tested again first, as on the first pass. Only on the way to
/// reservation-full, and for at most [`RELEASE_PORTS`] ports.
async fn bind_when_released(
    fd: BorrowedFd<'_>,
    (facts, protocol, address): (SocketFacts, Protocol, IpAddr),
    busy: &[(u16, PortUse)],
    patience: &mut Patience,
) -> Option<u16> {
    let ports: Vec<u16> = busy
        .iter()
        .map(|&(port, _)| port)
        .take(RELEASE_PORTS)
        .collect();
    if ports.is_empty() || patience.exhausted() {
        return None;
    }
    let closing = only_closing(protocol, ports, patience.uid).await;
    let waiting: Vec<(u16, PortUse)> = busy
        .iter()
        .copied()
        .filter(|(port, _)| closing.contains(port))
        .collect();
    if waiting.is_empty() {
        return None;
    }
    while patience.wait().await {
        for &(port, known) in &waiting {
            let target = SocketAddr::new(address, port);
            if known == PortUse::Free && probe(facts, target).is_err() {
                continue;
            }
            if rustix::net::bind(fd, &target).is_ok() {
                return Some(port);
            }
        }
    }
    None
}

/// Ends the TIME_WAIT connections of TCP `port` (on the blocking pool); whether any were.
/// A daemon without `CAP_NET_ADMIN` cannot: the owner's socket then needs `SO_REUSEADDR`.
async fn end_time_wait(port: u16) -> bool {
    tokio::task::spawn_blocking(move || berth_os::diag::destroy_time_wait(port))
        .await
        .is_ok_and(|ended| ended.is_ok_and(|n| n > 0))
}

/// Whether only TIME_WAIT connections keep `port` (a netlink dump: on the blocking pool).
async fn only_time_wait(protocol: Protocol, port: u16) -> bool {
    tokio::task::spawn_blocking(move || crate::host::diag::only_time_wait(protocol, port))
        .await
        .unwrap_or(false)
}

/// Test-binds `target` with a fresh socket of the caller's family and `IPV6_V6ONLY`, without
/// reuse options: fails with "address in use" exactly when a socket the caller's could not
/// sit beside holds the port there.
fn probe(facts: SocketFacts, target: SocketAddr) -> io::Result<()> {
    let domain = if facts.ipv6 {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let ty = match facts.protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let socket = Socket::new(domain, ty, None)?;
    if facts.ipv6 {
        socket.set_only_v6(facts.v6only)?;
    }
    // Closed on return: the probe only asks, it does not keep the port.
    socket.bind(&target.into())
}

fn bind_refusal(e: &io::Error, target: SocketAddr) -> Refusal {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::ACCESS.raw_os_error() => (
            ErrorKind::PermissionDenied,
            format!("the daemon may not bind {target} (a privileged port needs a daemon running as root or with CAP_NET_BIND_SERVICE)"),
        ),
        // The daemon's shortage (a test bind needs a socket of its own), not the caller's.
        _ if crate::server::limits::is_shortage(e) => (
            ErrorKind::Unavailable,
            crate::server::limits::busy_message(&format!("could not bind the socket to {target}")),
        ),
        Some(code) if code == rustix::io::Errno::ADDRNOTAVAIL.raw_os_error() => (
            ErrorKind::InvalidArgument,
            format!("{} is not an address of this host; bind to one of its addresses or the wildcard", target.ip()),
        ),
        _ => (
            ErrorKind::InvalidArgument,
            format!("binding the socket to {target} failed: {e}"),
        ),
    }
}
