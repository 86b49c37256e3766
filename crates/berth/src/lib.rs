//! Client library for berth, the Linux port-reservation service.
//!
//! A program asks the berth daemon for a block of TCP or UDP ports and keeps it for as long as
//! it holds the [`Reservation`] — or until it exits, however it exits. Nobody else is handed
//! those ports meanwhile.
//!
//! ```no_run
//! # async fn demo() -> Result<(), berth::Error> {
//! use berth::{Client, Protocol};
//!
//! let client = Client::connect().await?;
//! let block = client.acquire(Protocol::Tcp, 0, 4).await?; // any 4 free ports
//! println!("got ports {}..={}", block.start(), block.end());
//! block.release().await?; // or just drop it
//! # Ok(()) }
//! ```
//!
//! [`blocking::Client`] offers the same calls for programs without an async runtime.
//!
//! # Layout
//! - [`client`]: [`Client`], the async handle; finding the daemon.
//! - [`reservation`]: [`Reservation`], a held block that releases itself when dropped.
//! - [`blocking`]: the same API without async.
//! - [`autostart`]: starting a per-user daemon on demand (opt-in: [`Client::connect_or_start`]).
//! - [`rendezvous`]: meeting the daemon safely (private fallback directory, `SO_PEERCRED`).
//! - [`error`]: [`Error`], one variant per error kind of `docs/protocol.md`.
//! - `connection`: the background task that owns the socket (its I/O, its books, its
//!   reconnection).
//! - `loss`: reservations lost across a daemon restart, reported on their handles.

#![forbid(unsafe_code)]

pub mod autostart;
pub mod blocking;
pub mod client;
mod connection;
pub mod error;
mod loss;
pub mod rendezvous;
pub mod reservation;
mod sockets;

pub use autostart::{Started, Starter};
pub use berth_core::{ErrorKind, Kind, PortRange, Protocol, Token};
pub use berth_protocol::{
    AcquireOptions, Enforce, ExposureInfo, KernelListInfo, NameInfo, OwnerInfo, PortReport,
    QuotaInfo, ReservationInfo, ShareInfo, SocketInfo, StatusInfo, UsageInfo, UserUsage,
};
pub use client::{Allow, Client, ForeignNamespace, Options};
pub use error::Error;
pub use reservation::Reservation;

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
