//! A held block of ports.

use std::net::IpAddr;
use std::os::fd::AsFd;

use berth_core::{Kind, PortRange, Protocol, Token};
use berth_protocol::ReservationInfo;

use crate::client::Client;
use crate::error::Error;
use crate::sockets;

/// A block of ports reserved for this process. Dropping it releases the block (without
/// waiting); [`Reservation::release`] does the same and reports the outcome.
#[derive(Debug)]
#[must_use = "dropping a Reservation releases its ports at once"]
pub struct Reservation {
    client: Client,
    info: ReservationInfo,
    /// False once released, so `Drop` does not release twice.
    held: bool,
}

impl Reservation {
    pub(crate) fn new(client: Client, info: ReservationInfo) -> Self {
        Reservation {
            client,
            info,
            held: true,
        }
    }

    /// The reservation's token.
    pub fn token(&self) -> Token {
        self.info.token
    }

    /// Its protocol.
    pub fn protocol(&self) -> Protocol {
        self.info.protocol
    }

    /// Its ports.
    pub fn range(&self) -> PortRange {
        self.info.range
    }

    /// The first port.
    pub fn start(&self) -> u16 {
        self.info.range.start()
    }

    /// The number of ports.
    pub fn count(&self) -> u16 {
        self.info.range.count()
    }

    /// The last port.
    pub fn end(&self) -> u16 {
        self.info.range.end()
    }

    /// The ports, in order.
    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.info.range.ports()
    }

    /// Runtime or persistent.
    pub fn kind(&self) -> Kind {
        self.info.kind
    }

    /// Everything the daemon said about it when it was granted.
    pub fn info(&self) -> &ReservationInfo {
        &self.info
    }

    /// Binds the caller's own unbound `socket` to a free port of this reservation on `ip`
    /// (default: the wildcard address of the socket's family) and returns the port. See
    /// [`Client::associate`].
    pub async fn bind(&self, socket: &impl AsFd, ip: Option<IpAddr>) -> Result<u16, Error> {
        self.client
            .associate(self.info.token, socket.as_fd(), ip)
            .await
    }

    /// A TCP listener on `ip` and a free port of this (TCP) reservation. An IPv6 wildcard
    /// address gives a dual-stack listener.
    pub async fn tcp_listener(&self, ip: IpAddr) -> Result<tokio::net::TcpListener, Error> {
        let socket = sockets::new_socket(Protocol::Tcp, ip)?;
        self.bind(&socket, Some(ip)).await?;
        sockets::listen(&socket)?;
        let std: std::net::TcpListener = socket.into();
        std.set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std))
            .map_err(|e| Error::NotSupported(format!("cannot register the listener: {e}")))
    }

    /// A UDP socket bound to `ip` and a free port of this (UDP) reservation.
    pub async fn udp_socket(&self, ip: IpAddr) -> Result<tokio::net::UdpSocket, Error> {
        let socket = sockets::new_socket(Protocol::Udp, ip)?;
        self.bind(&socket, Some(ip)).await?;
        let std: std::net::UdpSocket = socket.into();
        std.set_nonblocking(true)
            .and_then(|()| tokio::net::UdpSocket::from_std(std))
            .map_err(|e| Error::NotSupported(format!("cannot register the socket: {e}")))
    }

    /// Releases the block and waits for the daemon to confirm.
    pub async fn release(mut self) -> Result<(), Error> {
        self.held = false;
        self.client.release(self.info.token).await.map(|_| ())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held {
            self.client.release_detached(self.info.token);
        }
    }
}
