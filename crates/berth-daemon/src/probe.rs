//! Whether a port is in use on the host, decided by the kernel: a test bind on the wildcard
//! address fails exactly when some socket holds the port.
//!
//! This is a point-in-time answer; hold mode (docs/decisions.md) will replace it with holder
//! sockets that keep the port.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use berth_core::{PortRange, Protocol};
use socket2::{Domain, Socket, Type};

/// Probes ports with one test bind each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prober {
    /// Whether the host has IPv6: then a dual-stack `[::]` bind sees IPv4 and IPv6 sockets at
    /// once.
    ipv6: bool,
}

impl Prober {
    /// Looks at the host once to decide how to probe.
    pub(crate) fn new() -> Self {
        let ipv6 = Socket::new(Domain::IPV6, Type::STREAM, None).is_ok();
        Prober { ipv6 }
    }

    /// The first port of `range` in use on the host, if any.
    pub(crate) fn first_in_use(&self, protocol: Protocol, range: PortRange) -> Option<u16> {
        range.ports().find(|&port| self.in_use(protocol, port))
    }

    /// Whether `port` is in use. Errors other than "address in use" (a privileged port the
    /// daemon may not bind, say) count as "not known to be in use".
    pub(crate) fn in_use(&self, protocol: Protocol, port: u16) -> bool {
        match self.try_bind(protocol, port) {
            Ok(()) => false,
            Err(e) => e.kind() == io::ErrorKind::AddrInUse,
        }
    }

    fn try_bind(&self, protocol: Protocol, port: u16) -> io::Result<()> {
        let ty = match protocol {
            Protocol::Tcp => Type::STREAM,
            Protocol::Udp => Type::DGRAM,
        };
        let (domain, addr) = if self.ipv6 {
            (
                Domain::IPV6,
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            )
        } else {
            (
                Domain::IPV4,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            )
        };
        let socket = Socket::new(domain, ty, None)?;
        if self.ipv6 {
            // Dual-stack: conflicts with IPv4 and IPv6 binds of the port alike.
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_bound_tcp_port_and_a_bound_udp_port() {
        let prober = Prober::new();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        assert!(prober.in_use(Protocol::Tcp, port));
        let range = PortRange::new(port, 1).unwrap();
        assert_eq!(prober.first_in_use(Protocol::Tcp, range), Some(port));

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let uport = udp.local_addr().unwrap().port();
        assert!(prober.in_use(Protocol::Udp, uport));
        drop(udp);
        assert!(!prober.in_use(Protocol::Udp, uport));
    }
}
