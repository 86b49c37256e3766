//! The same API without async: each call runs the async client on a private runtime with one
//! worker thread.
//!
//! Do not call these from inside an async runtime (tokio refuses to nest runtimes); use
//! [`crate::Client`] there.

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;

use berth_core::{Kind, PortRange, Protocol, Token};
use berth_protocol::{ReservationInfo, StatusInfo};
use tokio::runtime::Runtime;

use crate::error::Error;
use crate::sockets;

/// A blocking connection to the berth daemon. See [`crate::Client`].
#[derive(Debug, Clone)]
pub struct Client {
    inner: crate::Client,
    rt: Arc<Runtime>,
}

/// One worker thread, so that the connection keeps running between calls: it answers a
/// daemon restart by reconnecting and re-claiming reservations even while the program is busy
/// elsewhere.
fn runtime() -> Result<Arc<Runtime>, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("berth-client")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Unavailable(format!("cannot start the client runtime: {e}")))
}

impl Client {
    /// Connects by the search of `docs/cli.md` (see [`crate::Client::connect`]).
    pub fn connect() -> Result<Self, Error> {
        let rt = runtime()?;
        let inner = rt.block_on(crate::Client::connect())?;
        Ok(Client { inner, rt })
    }

    /// Connects, starting a per-user daemon when none answers (see
    /// [`crate::Client::connect_or_start`]):
    ///
    /// ```no_run
    /// let client = berth::blocking::Client::connect_or_start()?;
    /// let block = client.acquire(berth::Protocol::Tcp, 0, 2)?;
    /// let listener = block.tcp_listener("127.0.0.1".parse().unwrap())?;
    /// # Ok::<(), berth::Error>(())
    /// ```
    pub fn connect_or_start() -> Result<Self, Error> {
        Client::connect_or_start_with(crate::Options::default(), &crate::Starter::new())
    }

    /// [`Client::connect_or_start`] with `options` and `starter`.
    pub fn connect_or_start_with(
        options: crate::Options,
        starter: &crate::Starter,
    ) -> Result<Self, Error> {
        let rt = runtime()?;
        let inner = rt.block_on(crate::Client::connect_or_start_with(options, starter))?;
        Ok(Client { inner, rt })
    }

    /// Connects to the daemon on `path`.
    pub fn connect_to(path: impl AsRef<Path>) -> Result<Self, Error> {
        Client::connect_to_with(path, crate::Options::default())
    }

    /// [`Client::connect`] with `options`.
    pub fn connect_with(options: crate::Options) -> Result<Self, Error> {
        let rt = runtime()?;
        let inner = rt.block_on(crate::Client::connect_with(options))?;
        Ok(Client { inner, rt })
    }

    /// [`Client::connect_to`] with `options`.
    pub fn connect_to_with(path: impl AsRef<Path>, options: crate::Options) -> Result<Self, Error> {
        let rt = runtime()?;
        let inner = rt.block_on(crate::Client::connect_to_with(path, options))?;
        Ok(Client { inner, rt })
    }

    /// The daemon's release.
    pub fn daemon_version(&self) -> &str {
        self.inner.daemon_version()
    }

    /// See [`crate::Client::is_open`].
    pub fn is_open(&self) -> bool {
        self.inner.is_open()
    }

    /// See [`crate::Client::acquire_same_ports`].
    pub fn acquire_same_ports(
        &self,
        start: u16,
        count: u16,
    ) -> Result<(Reservation, Reservation), Error> {
        let (tcp, udp) = self
            .rt
            .block_on(self.inner.acquire_same_ports(start, count))?;
        Ok((self.blocking(tcp), self.blocking(udp)))
    }

    /// `inner` as a reservation of this blocking client (its calls run on this runtime).
    fn blocking(&self, inner: crate::Reservation) -> Reservation {
        Reservation {
            inner: Some(inner),
            rt: self.rt.clone(),
        }
    }

    /// See [`crate::Client::acquire_unheld`].
    pub fn acquire_unheld(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<Reservation, Error> {
        let inner = self
            .rt
            .block_on(self.inner.acquire_unheld(protocol, start, count))?;
        Ok(self.blocking(inner))
    }

    /// See [`crate::Client::acquire_with`].
    pub fn acquire_with(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        options: &crate::AcquireOptions,
    ) -> Result<Reservation, Error> {
        let inner = self
            .rt
            .block_on(self.inner.acquire_with(protocol, start, count, options))?;
        Ok(self.blocking(inner))
    }

    /// See [`crate::Client::acquire_same_ports_with`].
    pub fn acquire_same_ports_with(
        &self,
        start: u16,
        count: u16,
        options: &crate::AcquireOptions,
    ) -> Result<(Reservation, Reservation), Error> {
        let (tcp, udp) = self
            .rt
            .block_on(self.inner.acquire_same_ports_with(start, count, options))?;
        Ok((self.blocking(tcp), self.blocking(udp)))
    }

    /// See [`crate::Client::lookup_name`].
    pub fn lookup_name(
        &self,
        user: Option<u32>,
        name: &str,
    ) -> Result<Vec<ReservationInfo>, Error> {
        self.rt.block_on(self.inner.lookup_name(user, name))
    }

    /// See [`crate::Client::wait_name`].
    pub fn wait_name(
        &self,
        user: Option<u32>,
        name: &str,
        bound: bool,
        timeout: std::time::Duration,
    ) -> Result<Vec<ReservationInfo>, Error> {
        self.rt
            .block_on(self.inner.wait_name(user, name, bound, timeout))
    }

    /// See [`crate::Client::publish`].
    pub fn publish(
        &self,
        name: &str,
        protocol: Protocol,
        port: u16,
    ) -> Result<ReservationInfo, Error> {
        self.rt.block_on(self.inner.publish(name, protocol, port))
    }

    /// See [`crate::Client::publish_socket`].
    pub fn publish_socket(
        &self,
        name: &str,
        socket: BorrowedFd<'_>,
    ) -> Result<ReservationInfo, Error> {
        self.rt.block_on(self.inner.publish_socket(name, socket))
    }

    /// See [`crate::Client::use_persistent`].
    pub fn use_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<ReservationInfo, Error> {
        self.rt
            .block_on(self.inner.use_persistent(protocol, start, count))
    }

    /// See [`crate::Client::names`].
    pub fn names(&self) -> Result<Vec<crate::NameInfo>, Error> {
        self.rt.block_on(self.inner.names())
    }

    /// See [`crate::Client::forget_name`].
    pub fn forget_name(&self, name: &str) -> Result<Vec<crate::NameInfo>, Error> {
        self.rt.block_on(self.inner.forget_name(name))
    }

    /// See [`crate::Client::acquire`].
    pub fn acquire(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<Reservation, Error> {
        let inner = self
            .rt
            .block_on(self.inner.acquire(protocol, start, count))?;
        Ok(self.blocking(inner))
    }

    /// See [`crate::Client::associate`].
    pub fn associate(
        &self,
        token: Token,
        socket: BorrowedFd<'_>,
        address: Option<IpAddr>,
    ) -> Result<u16, Error> {
        self.rt
            .block_on(self.inner.associate(token, socket, address))
    }

    /// See [`crate::Client::associate_port_raw`].
    pub fn associate_port_raw(
        &self,
        token: u64,
        socket: BorrowedFd<'_>,
        address: Option<IpAddr>,
        port: Option<u16>,
    ) -> Result<u16, Error> {
        self.rt
            .block_on(self.inner.associate_port_raw(token, socket, address, port))
    }

    /// See [`crate::Client::create_persistent`].
    pub fn create_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        allow: &crate::Allow,
    ) -> Result<ReservationInfo, Error> {
        self.rt
            .block_on(self.inner.create_persistent(protocol, start, count, allow))
    }

    /// See [`crate::Client::create_persistent_labeled`].
    pub fn create_persistent_labeled(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        allow: &crate::Allow,
        label: &str,
    ) -> Result<ReservationInfo, Error> {
        self.rt.block_on(
            self.inner
                .create_persistent_labeled(protocol, start, count, allow, label),
        )
    }

    /// See [`crate::Client::delete_persistent`].
    pub fn delete_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<ReservationInfo, Error> {
        self.rt
            .block_on(self.inner.delete_persistent(protocol, start, count))
    }

    /// See [`crate::Client::lookup_persistent`].
    pub fn lookup_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<Token, Error> {
        self.rt
            .block_on(self.inner.lookup_persistent(protocol, start, count))
    }

    /// See [`crate::Client::list_persistent`].
    pub fn list_persistent(&self) -> Result<Vec<ReservationInfo>, Error> {
        self.rt.block_on(self.inner.list_persistent())
    }

    /// See [`crate::Client::reclaim`].
    pub fn reclaim(&self, token: Token) -> Result<Reservation, Error> {
        let inner = self.rt.block_on(self.inner.reclaim(token))?;
        Ok(self.blocking(inner))
    }

    /// See [`crate::Client::release`].
    pub fn release(&self, token: Token) -> Result<ReservationInfo, Error> {
        self.rt.block_on(self.inner.release(token))
    }

    /// See [`crate::Client::list`].
    pub fn list(&self) -> Result<Vec<ReservationInfo>, Error> {
        self.rt.block_on(self.inner.list())
    }

    /// See [`crate::Client::why`].
    pub fn why(&self, protocol: Protocol, port: u16) -> Result<crate::PortReport, Error> {
        self.rt.block_on(self.inner.why(protocol, port))
    }

    /// See [`crate::Client::status`].
    pub fn status(&self) -> Result<StatusInfo, Error> {
        self.rt.block_on(self.inner.status())
    }
}

/// A held block of ports; dropping it releases the block (without waiting for the daemon;
/// [`Reservation::release`] waits and reports the outcome).
#[derive(Debug)]
#[must_use = "dropping a Reservation releases its ports at once"]
pub struct Reservation {
    /// `None` only after release.
    inner: Option<crate::Reservation>,
    rt: Arc<Runtime>,
}

impl Reservation {
    fn get(&self) -> &crate::Reservation {
        // Always Some until `release` or `drop` takes it, and both consume `self`.
        match &self.inner {
            Some(r) => r,
            None => unreachable_reservation(),
        }
    }

    /// The reservation's token.
    pub fn token(&self) -> Token {
        self.get().token()
    }

    /// Its protocol.
    pub fn protocol(&self) -> Protocol {
        self.get().protocol()
    }

    /// Its ports.
    pub fn range(&self) -> PortRange {
        self.get().range()
    }

    /// The first port.
    pub fn start(&self) -> u16 {
        self.get().start()
    }

    /// The number of ports.
    pub fn count(&self) -> u16 {
        self.get().count()
    }

    /// The last port.
    pub fn end(&self) -> u16 {
        self.get().end()
    }

    /// The ports, in order.
    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.get().range().ports()
    }

    /// Runtime or persistent.
    pub fn kind(&self) -> Kind {
        self.get().kind()
    }

    /// Binds the caller's own unbound `socket` to a free port of this reservation; see
    /// [`crate::Reservation::bind`].
    pub fn bind(&self, socket: &impl AsFd, ip: Option<IpAddr>) -> Result<u16, Error> {
        self.rt.block_on(self.get().bind(socket, ip))
    }

    /// A blocking TCP listener on `ip` and a free port of this (TCP) reservation.
    pub fn tcp_listener(&self, ip: IpAddr) -> Result<std::net::TcpListener, Error> {
        let socket = sockets::new_socket(Protocol::Tcp, ip)?;
        self.bind(&socket, Some(ip))?;
        sockets::listen(&socket)?;
        Ok(socket.into())
    }

    /// A blocking UDP socket bound to `ip` and a free port of this (UDP) reservation.
    pub fn udp_socket(&self, ip: IpAddr) -> Result<std::net::UdpSocket, Error> {
        let socket = sockets::new_socket(Protocol::Udp, ip)?;
        self.bind(&socket, Some(ip))?;
        Ok(socket.into())
    }

    /// See [`crate::Reservation::is_lost`].
    pub fn is_lost(&self) -> bool {
        self.get().is_lost()
    }

    /// Blocks until this reservation is lost (see [`crate::Reservation::lost`]).
    pub fn wait_lost(&self) -> Error {
        self.rt.block_on(self.get().lost())
    }

    /// See [`crate::Reservation::transfer_to`].
    pub fn transfer_to(&mut self, pid: u32) -> Result<ReservationInfo, Error> {
        match self.inner.as_mut() {
            Some(r) => self.rt.block_on(r.transfer_to(pid)),
            None => unreachable_reservation(),
        }
    }

    /// Releases the block and waits for the daemon to confirm.
    pub fn release(mut self) -> Result<(), Error> {
        match self.inner.take() {
            Some(r) => self.rt.block_on(r.release()),
            None => Ok(()),
        }
    }
}

#[expect(
    clippy::panic,
    reason = "an invariant of Reservation, not reachable from input"
)]
fn unreachable_reservation() -> ! {
    panic!("blocking::Reservation used after release")
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // The async reservation's drop queues the release without waiting: the client's worker
        // thread sends it. Waiting here could hang a destructor for the whole reconnection
        // window while the daemon restarts.
        drop(self.inner.take());
    }
}
