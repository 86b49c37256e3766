//! Sockets bound to the wildcard address of one port with neither `SO_REUSEADDR` nor
//! `SO_REUSEPORT`: while one is open, every other explicit bind of the port fails. Kept open,
//! it holds the port (a hold socket); dropped at once, its bind was a test of whether the port
//! is in use.
//!
//! They never listen: a listening socket would accept connections meant for the port's owner.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use berth_core::Protocol;
use socket2::{Domain, Socket, Type};

/// What one wildcard socket covers of its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cover {
    /// `[::]` dual-stack: IPv4 and IPv6.
    Dual,
    /// `0.0.0.0`.
    V4,
    /// `[::]` with `IPV6_V6ONLY`.
    V6,
}

impl Cover {
    /// The whole port: dual-stack where the host has IPv6, else IPv4.
    pub fn all(ipv6: bool) -> Self {
        if ipv6 {
            Cover::Dual
        } else {
            Cover::V4
        }
    }
}

/// Whether the host has IPv6 (an IPv6 socket can be made): then one dual-stack socket covers
/// a port for both families.
pub fn ipv6_available() -> bool {
    Socket::new(Domain::IPV6, Type::STREAM, None).is_ok()
}

/// A socket of `protocol` bound to `port` on the wildcard address `cover` names. Fails with
/// `AddrInUse` when another socket has the port.
pub fn bind(protocol: Protocol, port: u16, cover: Cover) -> io::Result<Socket> {
    bind_with(protocol, port, cover, false)
}

/// Whether a TCP `port` is kept only by sockets a bind with `SO_REUSEADDR` may sit beside —
/// connections in `TIME_WAIT`, in practice — where a bind without it fails: a test bind with
/// the option on the wildcard address `cover` names, closed at once. A listener, or a socket
/// bound without the option, makes it fail.
pub fn free_but_for_lingering(port: u16, cover: Cover) -> bool {
    bind_with(Protocol::Tcp, port, cover, true).is_ok()
}

fn bind_with(protocol: Protocol, port: u16, cover: Cover, reuse: bool) -> io::Result<Socket> {
    let ty = match protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let (domain, addr) = match cover {
        Cover::V4 => (
            Domain::IPV4,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        ),
        Cover::Dual | Cover::V6 => (
            Domain::IPV6,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        ),
    };
    let socket = Socket::new(domain, ty, None)?;
    if domain == Domain::IPV6 {
        socket.set_only_v6(cover == Cover::V6)?;
    }
    if reuse {
        socket.set_reuse_address(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_cannot_be_bound_again_and_is_free_once_dropped() {
        let cover = Cover::all(ipv6_available());
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        assert_eq!(
            bind(Protocol::Tcp, port, cover).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(free);
        let held = bind(Protocol::Tcp, port, cover).unwrap();
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
        drop(held);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let uport = udp.local_addr().unwrap().port();
        assert!(bind(Protocol::Udp, uport, cover).is_err());
        drop(udp);
        assert!(bind(Protocol::Udp, uport, cover).is_ok());
    }
}
