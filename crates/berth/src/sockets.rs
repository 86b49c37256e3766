//! Sockets made for the caller and bound from a reservation.

use std::net::{IpAddr, SocketAddr};

use berth_core::Protocol;
use socket2::{Domain, Socket, Type};

use crate::error::Error;

/// How many pending connections a listener made here queues.
pub(crate) const LISTEN_BACKLOG: i32 = 1024;

/// A new unbound socket of `protocol` for `ip`'s family. An IPv6 wildcard socket is made
/// dual-stack, so that it serves IPv4 too, as a caller of `tcp_listener(::)` expects.
pub(crate) fn new_socket(protocol: Protocol, ip: IpAddr) -> Result<Socket, Error> {
    let domain = Domain::for_address(SocketAddr::new(ip, 0));
    let ty = match protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let socket = Socket::new(domain, ty, None).map_err(|e| {
        Error::NotSupported(format!("cannot create a {protocol} socket for {ip}: {e}"))
    })?;
    if protocol == Protocol::Tcp {
        // As std's TcpListener does: a server that restarts can bind its port again while
        // connections of its previous run linger in TIME_WAIT.
        let _ = socket.set_reuse_address(true);
    }
    if ip.is_ipv6() && ip.is_unspecified() {
        // Best effort: some hosts force IPV6_V6ONLY; the socket then serves IPv6 only.
        let _ = socket.set_only_v6(false);
    }
    Ok(socket)
}

/// Puts a bound TCP socket into listening state.
pub(crate) fn listen(socket: &Socket) -> Result<(), Error> {
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|e| Error::NotSupported(format!("cannot listen on the bound socket: {e}")))
}

/// The protocol and port of the bound TCP or UDP socket `fd`.
pub(crate) fn bound_port(fd: std::os::fd::BorrowedFd<'_>) -> Result<(Protocol, u16), Error> {
    let socket = socket2::SockRef::from(&fd);
    let protocol = match socket.r#type() {
        Ok(Type::STREAM) => Protocol::Tcp,
        Ok(Type::DGRAM) => Protocol::Udp,
        Ok(_) => {
            return Err(Error::NotSupported(
                "the socket is neither TCP (SOCK_STREAM) nor UDP (SOCK_DGRAM)".into(),
            ))
        }
        Err(e) => {
            return Err(Error::InvalidArgument(format!(
                "the descriptor given is not a socket: {e}"
            )))
        }
    };
    let port = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .filter(|&port| port != 0)
        .ok_or_else(|| {
            Error::InvalidArgument(
                "the socket is not bound to an IP port; bind it (to port 0 for any) first".into(),
            )
        })?;
    Ok((protocol, port))
}
