//! Who has a port bound: the sockets from `NETLINK_SOCK_DIAG`, the processes from the
//! descriptor tables in `/proc`.
//!
//! Meant for where a person or a program asks, never a hot path: a dump walks a kernel hash
//! table (milliseconds on a busy host) and mapping sockets to processes reads every process's
//! descriptor table.
//!
//! The kernel filters by source port (an `INET_DIAG_REQ_BYTECODE` attribute), so a reply holds
//! only the port's sockets however many the host has. It sees the caller's network namespace
//! only, and works unprivileged; an unprivileged caller can read the descriptor tables of its
//! own user's processes only.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use berth_core::Protocol;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`): a connection.
pub const TCP_ESTABLISHED: u8 = 1;
/// A closed connection the kernel keeps for a while.
pub const TCP_TIME_WAIT: u8 = 6;
/// Closed (TCP) or unconnected (UDP); also how a bound-only TCP socket is reported.
pub const TCP_CLOSE: u8 = 7;
/// Listening.
pub const TCP_LISTEN: u8 = 10;
/// Bound, not listening (kernel 6.7+). Asked for with this state bit; reported as `CLOSE`.
const TCP_BOUND_INACTIVE: u8 = 13;

/// Every state, bound-but-inactive included (bits 0..=13).
const ALL_STATES: u32 = (1 << (TCP_BOUND_INACTIVE + 1)) - 1;
/// Receive room for one netlink read: the kernel sends dump parts of up to 32 KiB, and
/// `netlink_sys` reads into spare capacity only — a smaller buffer truncates silently.
const RECV_BUFFER: usize = 64 * 1024;
/// Restarts of a dump the kernel marks interrupted (the table changed under it).
const DUMP_TRIES: usize = 3;
/// Netlink reads of one dump before giving up: a bound for a port with very many sockets.
const MAX_READS: usize = 64;
/// `INET_DIAG_REQ_BYTECODE`.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// Bytecode operations (`include/uapi/linux/inet_diag.h`).
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;

/// The kernel's `idiag_cookie`: two 32-bit halves in host order, the low one first (what
/// `bpf_get_socket_cookie()` returns whole).
fn diag_cookie(bytes: [u8; 8]) -> u64 {
    let [a, b, c, d, e, f, g, h] = bytes;
    u64::from(u32::from_ne_bytes([a, b, c, d])) | u64::from(u32::from_ne_bytes([e, f, g, h])) << 32
}

/// One socket bound to the port, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The address and port it is bound to.
    pub local: SocketAddr,
    /// The kernel's TCP state number (UDP: `CLOSE` unconnected, `ESTABLISHED` connected).
    pub state: u8,
    /// The socket's inode; 0 for sockets no descriptor refers to (`TIME_WAIT`).
    pub inode: u64,
    /// The user that created the socket (its file's owner).
    pub uid: u32,
    /// The socket's cookie (what BPF programs name it by).
    pub cookie: u64,
    /// The kernel's full name of the socket (addresses, ports, cookie): what `SOCK_DESTROY`
    /// takes.
    id: SocketId,
}

impl Bound {
    /// The state in `ss`'s words.
    pub fn state_name(&self) -> &'static str {
        state_name(self.protocol, self.state)
    }

    /// A closed connection the kernel keeps for a while; no process holds it.
    pub fn is_time_wait(&self) -> bool {
        self.protocol == Protocol::Tcp && self.state == TCP_TIME_WAIT
    }
}

/// The kernel's name of a state, as `ss` prints it.
pub fn state_name(protocol: Protocol, state: u8) -> &'static str {
    match (protocol, state) {
        (Protocol::Udp, TCP_CLOSE) => "UNCONN",
        (Protocol::Udp, TCP_ESTABLISHED) => "ESTAB",
        (Protocol::Udp, _) => "UNKNOWN",
        (Protocol::Tcp, state) => match state {
            1 => "ESTABLISHED",
            2 => "SYN_SENT",
            3 => "SYN_RECV",
            4 => "FIN_WAIT1",
            5 => "FIN_WAIT2",
            6 => "TIME_WAIT",
            7 => "CLOSE",
            8 => "CLOSE_WAIT",
            9 => "LAST_ACK",
            10 => "LISTEN",
            11 => "CLOSING",
            12 => "NEW_SYN_RECV",
            _ => "UNKNOWN",
        },
    }
}

/// The sockets bound to `port` (IPv4 and IPv6), at most `limit` per address family, listening
/// and bound-only sockets first (the kernel walks those tables before the connections).
pub fn sockets_on(protocol: Protocol, port: u16, limit: usize) -> io::Result<Vec<Bound>> {
    let mut all = dump(AF_INET, protocol, port, ALL_STATES, limit)?;
    all.extend(dump(AF_INET6, protocol, port, ALL_STATES, limit)?);
    all.sort_by_key(|b| rank(b.state));
    Ok(all)
}

/// [`sockets_on`] without the `TIME_WAIT` connections (which no process holds): the sockets
/// of programs that use the port now.
pub fn live_sockets_on(protocol: Protocol, port: u16, limit: usize) -> io::Result<Vec<Bound>> {
    let live = ALL_STATES & !(1 << TCP_TIME_WAIT);
    let mut all = dump(AF_INET, protocol, port, live, limit)?;
    all.extend(dump(AF_INET6, protocol, port, live, limit)?);
    all.sort_by_key(|b| rank(b.state));
    Ok(all)
}

/// The sockets whose local port lies in `first..=last` (IPv4 and IPv6), at most `limit` per
/// address family: one walk of the kernel's tables per family, however large the range.
pub fn sockets_in(
    protocol: Protocol,
    (first, last): (u16, u16),
    limit: usize,
) -> io::Result<Vec<Bound>> {
    let mut all = dump_range(AF_INET, protocol, (first, last), ALL_STATES, limit)?;
    all.extend(dump_range(
        AF_INET6,
        protocol,
        (first, last),
        ALL_STATES,
        limit,
    )?);
    all.sort_by_key(|b| rank(b.state));
    Ok(all)
}

/// Whether `port` has TIME_WAIT connections and nothing else (TCP): a server that restarts
/// may bind it again (with `SO_REUSEADDR`), where a listener or any live socket would make
/// the bind fail. False when the port has no socket at all, for UDP, and when the kernel
/// cannot be asked.
pub fn only_time_wait(protocol: Protocol, port: u16) -> bool {
    if protocol != Protocol::Tcp {
        return false;
    }
    let others = ALL_STATES & !(1 << TCP_TIME_WAIT);
    let time_wait = 1 << TCP_TIME_WAIT;
    let found = |states| -> io::Result<bool> {
        Ok(!dump(AF_INET, protocol, port, states, 1)?.is_empty()
            || !dump(AF_INET6, protocol, port, states, 1)?.is_empty())
    };
    matches!(found(others), Ok(false)) && matches!(found(time_wait), Ok(true))
}

/// Ends the TCP connections in `TIME_WAIT` whose local port is `port` (IPv4 and IPv6), as
/// `ss -K` does (`SOCK_DESTROY`, kernel 4.5+ with `CONFIG_INET_DIAG_DESTROY`): the port can
/// then be bound without `SO_REUSEADDR`, and held again. Only `TIME_WAIT` sockets are asked
/// for, so no live socket is ever touched. Returns how many were ended. Needs `CAP_NET_ADMIN`
/// in the network namespace (`PermissionDenied` otherwise).
///
/// What is given up is `TIME_WAIT`'s guard: a late segment of an ended connection could reach
/// a new one with the same addresses and ports. Those would be connections of the port's own
/// reservation, to the same peer, within the last minute.
pub fn destroy_time_wait(port: u16) -> io::Result<usize> {
    let time_wait = 1 << TCP_TIME_WAIT;
    let mut ended = 0;
    for family in [AF_INET, AF_INET6] {
        for socket in dump(family, Protocol::Tcp, port, time_wait, MAX_DESTROYED)? {
            match destroy(family, &socket.id) {
                Ok(()) => ended += 1,
                // Gone meanwhile (its time ran out): nothing to end.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(ended)
}

/// The most `TIME_WAIT` sockets of one port ended in one call.
const MAX_DESTROYED: usize = 4096;

/// One `SOCK_DESTROY` request, answered by the kernel's acknowledgement.
fn destroy(family: u8, id: &SocketId) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(SockDiagDestroy::new(SockDiagMessage::InetRequest(
            InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::from_bits_retain(1 << TCP_TIME_WAIT),
                socket_id: id.clone(),
            },
        ))),
    );
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    let mut socket = netlink_sys::Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    socket.send(&bytes, 0)?;
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
    let size = socket.recv(&mut buf, 0)?;
    let reply = NetlinkMessage::<SockDiagMessage>::deserialize(buf.get(..size).unwrap_or_default())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match reply.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        },
        other => Err(io::Error::other(format!(
            "sock_diag: SOCK_DESTROY answered {other:?}"
        ))),
    }
}

/// The order a report lists sockets in: what holds the port before its connections.
fn rank(state: u8) -> u8 {
    match state {
        TCP_LISTEN => 0,
        TCP_CLOSE => 1,
        TCP_TIME_WAIT => 3,
        _ => 2,
    }
}

/// The sockets of one family and protocol whose local port is `port` and whose state is in
/// `states`, at most `limit`. Retries a dump the kernel marks interrupted.
fn dump(
    family: u8,
    protocol: Protocol,
    port: u16,
    states: u32,
    limit: usize,
) -> io::Result<Vec<Bound>> {
    dump_range(family, protocol, (port, port), states, limit)
}

/// [`dump`] of the sockets whose local port lies in `first..=last`.
fn dump_range(
    family: u8,
    protocol: Protocol,
    ports: (u16, u16),
    states: u32,
    limit: usize,
) -> io::Result<Vec<Bound>> {
    let mut last = None;
    for _ in 0..DUMP_TRIES {
        match dump_once(family, protocol, ports, states, limit)? {
            Dumped::Complete(found) => return Ok(found),
            Dumped::Interrupted(found) => last = Some(found),
        }
    }
    // Still changing after every try: what the last walk saw is the best answer there is.
    Ok(last.unwrap_or_default())
}

enum Dumped {
    Complete(Vec<Bound>),
    Interrupted(Vec<Bound>),
}

fn dump_once(
    family: u8,
    protocol: Protocol,
    ports: (u16, u16),
    states: u32,
    limit: usize,
) -> io::Result<Dumped> {
    let mut socket = netlink_sys::Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    socket.send(&request(family, protocol, ports, states), 0)?;

    let mut found = Vec::new();
    let mut interrupted = false;
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
    for _ in 0..MAX_READS {
        buf.clear();
        buf.reserve(RECV_BUFFER);
        let room = buf.capacity();
        // MSG_TRUNC: the kernel says the datagram's real length, so truncation is seen.
        let size = socket.recv(&mut buf, libc::MSG_TRUNC)?;
        if size > room {
            return Err(io::Error::other(format!(
                "a sock_diag reply of {size} bytes did not fit in {room}"
            )));
        }
        let mut offset = 0;
        while offset < size {
            let bytes = buf.get(offset..size).unwrap_or_default();
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = message.header.length as usize;
            if message.header.flags & NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            match message.payload {
                NetlinkPayload::Done(_) => {
                    return Ok(if interrupted {
                        Dumped::Interrupted(found)
                    } else {
                        Dumped::Complete(found)
                    })
                }
                NetlinkPayload::Error(e) => {
                    return Err(e
                        .code
                        .map(|code| io::Error::from_raw_os_error(-code.get()))
                        .unwrap_or_else(|| io::Error::other("sock_diag: an empty error")))
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let header = &response.header;
                    // The kernel filtered by port; check anyway rather than trust it.
                    let port = header.socket_id.source_port;
                    if (ports.0..=ports.1).contains(&port) {
                        found.push(Bound {
                            protocol,
                            local: SocketAddr::new(
                                header.socket_id.source_address,
                                header.socket_id.source_port,
                            ),
                            state: header.state,
                            inode: u64::from(header.inode),
                            uid: header.uid,
                            cookie: diag_cookie(header.socket_id.cookie),
                            id: header.socket_id.clone(),
                        });
                        if found.len() >= limit {
                            // Enough: dropping the socket ends the dump.
                            return Ok(Dumped::Complete(found));
                        }
                    }
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
    Ok(Dumped::Complete(found))
}

/// A dump request for one family and protocol, with bytecode that keeps source port `port`
/// only (`S_GE port` then `S_LE port`, understood by every kernel with sock_diag).
fn request(family: u8, protocol: Protocol, (first, last): (u16, u16), states: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: match protocol {
                Protocol::Tcp => IPPROTO_TCP,
                Protocol::Udp => IPPROTO_UDP,
            },
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_retain(states),
            socket_id,
        })
        .into(),
    );
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);

    // struct inet_diag_bc_op { u8 code; u8 yes; u16 no; }, each comparison followed by an op
    // whose `no` carries the port. A `yes` that lands on the end accepts; a `no` that lands
    // 4 bytes past it rejects.
    let op = |code: u8, yes: u8, no: u16| {
        let mut op = vec![code, yes];
        op.extend_from_slice(&no.to_ne_bytes());
        op
    };
    let mut bytecode = op(INET_DIAG_BC_S_GE, 8, 20);
    bytecode.extend(op(0, 0, first));
    bytecode.extend(op(INET_DIAG_BC_S_LE, 8, 12));
    bytecode.extend(op(0, 0, last));
    let attribute_len = 4 + bytecode.len();
    bytes.extend_from_slice(&u16::try_from(attribute_len).unwrap_or(0).to_ne_bytes());
    bytes.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    bytes.extend(bytecode);
    let total = u32::try_from(bytes.len()).unwrap_or(0);
    if let Some(length) = bytes.get_mut(0..4) {
        length.copy_from_slice(&total.to_ne_bytes());
    }
    bytes
}

/// The longest one [`owners`] looks. A socket no process holds (its last reference in a
/// message nobody read) is searched for in every process, and the host's descriptors are as
/// many as its users like: past this, what was found is the answer.
pub const SCAN_BUDGET: std::time::Duration = std::time::Duration::from_millis(250);

/// The processes holding the sockets `inodes`, from their descriptor tables: this process
/// first (its own sockets are the likeliest), then every process in `/proc` this one may read,
/// stopping once each inode has a process or `at_most` have one, or after [`SCAN_BUDGET`].
pub fn owners(inodes: &[u64], at_most: usize) -> HashMap<u64, u32> {
    let mut found = HashMap::new();
    let wanted: Vec<u64> = inodes.iter().copied().filter(|&i| i != 0).collect();
    if wanted.is_empty() {
        return found;
    }
    let enough = wanted.len().min(at_most);
    let me = std::process::id();
    let deadline = std::time::Instant::now() + SCAN_BUDGET;
    scan_fds(me, &wanted, &mut found, deadline);
    if found.len() >= enough {
        return found;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        scan_fds(pid, &wanted, &mut found, deadline);
        if found.len() >= enough || std::time::Instant::now() >= deadline {
            break;
        }
    }
    found
}

/// Notes which of `wanted` process `pid` has open, until `deadline` (looked at every 1,024
/// descriptors). A process this one may not look into (another user's, for an unprivileged
/// caller) or that has gone is skipped.
fn scan_fds(pid: u32, wanted: &[u64], found: &mut HashMap<u64, u32>, deadline: std::time::Instant) {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return;
    };
    for (n, fd) in fds.flatten().enumerate() {
        if n % 1024 == 1023 && std::time::Instant::now() >= deadline {
            return;
        }
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        if wanted.contains(&inode) {
            found.entry(inode).or_insert(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_follow_ss() {
        assert_eq!(state_name(Protocol::Tcp, TCP_LISTEN), "LISTEN");
        assert_eq!(state_name(Protocol::Tcp, TCP_CLOSE), "CLOSE");
        assert_eq!(state_name(Protocol::Tcp, TCP_TIME_WAIT), "TIME_WAIT");
        assert_eq!(state_name(Protocol::Udp, TCP_CLOSE), "UNCONN");
        assert_eq!(state_name(Protocol::Udp, TCP_ESTABLISHED), "ESTAB");
        assert_eq!(rank(TCP_LISTEN), 0);
    }

    #[test]
    fn the_request_carries_a_port_filter() {
        let bytes = request(AF_INET, Protocol::Tcp, (8080, 8089), ALL_STATES);
        let total = u32::from_ne_bytes(bytes[0..4].try_into().unwrap());
        assert_eq!(usize::try_from(total).unwrap(), bytes.len());
        // The bytecode attribute ends the message: S_GE 8080, S_LE 8089.
        let tail = &bytes[bytes.len() - 20..];
        assert_eq!(u16::from_ne_bytes([tail[0], tail[1]]), 20);
        assert_eq!(
            u16::from_ne_bytes([tail[2], tail[3]]),
            INET_DIAG_REQ_BYTECODE
        );
        assert_eq!(tail[4], INET_DIAG_BC_S_GE);
        assert_eq!(u16::from_ne_bytes([tail[10], tail[11]]), 8080);
        assert_eq!(tail[12], INET_DIAG_BC_S_LE);
        assert_eq!(u16::from_ne_bytes([tail[18], tail[19]]), 8089);
    }

    #[test]
    fn a_listener_of_ours_is_found_with_its_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let found: Vec<Bound> = sockets_on(Protocol::Tcp, local.port(), 16)
            .unwrap()
            .into_iter()
            .filter(|b| b.local == local)
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].state_name(), "LISTEN");
        let owners = owners(&[found[0].inode], 16);
        assert_eq!(owners.get(&found[0].inode), Some(&std::process::id()));
    }

    #[test]
    fn a_range_walk_finds_the_sockets_of_its_ports_only() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        let low = port.saturating_sub(3).max(1);
        let found = sockets_in(Protocol::Tcp, (low, port), 64).unwrap();
        assert!(found.iter().any(|b| b.local.port() == port), "{found:?}");
        assert!(found.iter().all(|b| (low..=port).contains(&b.local.port())));
        // A range that stops short of the port does not list it.
        if port > 1 {
            let below = sockets_in(Protocol::Tcp, (low.min(port - 1), port - 1), 64).unwrap();
            assert!(below.iter().all(|b| b.local.port() != port), "{below:?}");
        }
    }
}
