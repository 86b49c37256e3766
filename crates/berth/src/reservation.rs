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
///
/// A reservation can be **lost**: when the daemon restarts and does not give it back (the
/// re-claim is refused — this process was paused past the grace period — or no daemon comes
/// back within [`crate::Options::reconnect_window`]). The loss is logged (`tracing`, warn) when
/// it happens; from then on every method reports it as an error, [`Reservation::is_lost`]
/// says so, and [`Reservation::lost`] — which a program can `select!` on beside its work —
/// resolves with it. Stop using the ports then: the daemon may hand them to others.
#[derive(Debug)]
#[must_use = "dropping a Reservation releases its ports at once"]
pub struct Reservation {
    client: Client,
    info: ReservationInfo,
    state: State,
}

/// Whether this handle still stands for a reservation of this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Held: `Drop` releases it.
    Held,
    /// Released through [`Reservation::release`].
    Released,
    /// Handed to process `pid` ([`Reservation::transfer_to`]): it is that process's now.
    Transferred(u32),
    /// Owned by a cgroup (acquired with [`berth_protocol::AcquireOptions::enforce`]): it
    /// lives until the cgroup has no process left, so `Drop` leaves it alone.
    InCgroup,
}

impl Reservation {
    pub(crate) fn new(client: Client, info: ReservationInfo) -> Self {
        let state = if info.cgroup.is_some() {
            State::InCgroup
        } else {
            State::Held
        };
        Reservation {
            client,
            info,
            state,
        }
    }

    /// Whether the daemon lost this reservation (see the type's documentation).
    pub fn is_lost(&self) -> bool {
        self.client.losses().get(self.info.token).is_some()
    }

    /// Resolves when this reservation is lost, with the error that says why; never while it
    /// is held.
    pub async fn lost(&self) -> Error {
        self.client.losses().wait(self.info.token).await
    }

    /// Fails when this handle no longer stands for a reservation of this session.
    fn usable(&self) -> Result<(), Error> {
        if let Some(e) = self.client.losses().get(self.info.token) {
            return Err(e);
        }
        match self.state {
            State::Held | State::InCgroup => Ok(()),
            State::Released => Err(Error::NotFound(format!(
                "reservation {} was released",
                self.info.token
            ))),
            State::Transferred(pid) => Err(Error::PermissionDenied(format!(
                "reservation {} was handed to process {pid}, which owns it now",
                self.info.token
            ))),
        }
    }

    /// Hands this reservation to process `pid` — a child of this process, of the same user —
    /// which owns it from then on: it lives exactly as long as that process, whatever becomes
    /// of this one and of this session (`berth run` hands its ports to its command this way).
    /// Afterwards this handle neither releases it on drop nor can use it.
    pub async fn transfer_to(&mut self, pid: u32) -> Result<ReservationInfo, Error> {
        self.usable()?;
        let info = self.client.transfer(self.info.token, pid).await?;
        self.state = State::Transferred(pid);
        Ok(info)
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

    /// The cgroup that owns it (enforce mode), by its path below the root of the cgroup v2
    /// hierarchy: it lives until that cgroup has no process left, whatever becomes of this
    /// handle (dropping it does not release it; [`Reservation::release`] does).
    pub fn cgroup(&self) -> Option<&str> {
        self.info.cgroup.as_deref()
    }

    /// What it is for, as its label says (see [`crate::AcquireOptions::label`]).
    pub fn label(&self) -> Option<&str> {
        self.info.label.as_deref()
    }

    /// Its name, if it has one (see [`crate::AcquireOptions::name`]).
    pub fn name(&self) -> Option<&str> {
        self.info.name.as_deref()
    }

    /// For a reservation acquired for a name: the block the name had before, when it could
    /// not be given again (something else took a port of it, or a block of another size was
    /// asked for) and moved to this one.
    pub fn moved_from(&self) -> Option<PortRange> {
        self.info.moved_from
    }

    /// Everything the daemon said about it when it was granted.
    pub fn info(&self) -> &ReservationInfo {
        &self.info
    }

    /// Binds the caller's own unbound `socket` to a free port of this reservation on `ip`
    /// (default: the unspecified address of the socket's family) and returns the port. See
    /// [`Client::associate`].
    pub async fn bind(&self, socket: &impl AsFd, ip: Option<IpAddr>) -> Result<u16, Error> {
        self.usable()?;
        self.client
            .associate(self.info.token, socket.as_fd(), ip)
            .await
    }

    /// Binds `socket` to exactly `port` of this reservation on `ip` (default: the wildcard
    /// address of the socket's family); fails rather than bind another port.
    pub async fn bind_port(
        &self,
        socket: &impl AsFd,
        ip: Option<IpAddr>,
        port: u16,
    ) -> Result<u16, Error> {
        self.usable()?;
        self.client
            .associate_port(self.info.token, socket.as_fd(), ip, port)
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
        self.usable()?;
        self.state = State::Released;
        self.client.release(self.info.token).await.map(|_| ())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let losses = self.client.losses();
        if losses.get(self.info.token).is_some() {
            losses.forget(self.info.token);
        } else if self.state == State::Held {
            self.client.release_detached(self.info.token);
        }
    }
}
