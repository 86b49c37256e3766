//! The berth daemon: serves port reservations to local clients over a Unix socket.
//!
//! The daemon is a thin shell around [`berth_core::Table`]: it accepts connections, learns
//! each client's identity from the kernel, decodes requests with [`berth_protocol`], asks the
//! table, and answers. A client's connection is its session: when it closes — the program
//! released its handle, exited, or was killed — its runtime reservations are released.
//!
//! # Layout
//! - [`config`]: [`Config`], what a daemon is told at start-up; [`config_file`] reads the
//!   TOML configuration file into it.
//! - [`listener`]: binding the socket (stale-socket handling, permissions, removal), or
//!   taking the one systemd passed (socket activation); `notify`: `sd_notify` readiness,
//!   status and stopping.
//! - [`server`]: [`run`], the accept loop with a connection limit and a draining shutdown, and
//!   [`serve`], which adds the socket file and signals around it.
//! - `session`: one connection: handshake, requests in order, release on close.
//! - `state`: the shared allocation state and the answer to each request.
//! - `peer`: who is on the other end (`SO_PEERCRED` and `/proc`); `owner_watch`: a pidfd
//!   that ends the session when its owner exits, even if a child keeps the connection.
//! - `inbound`: reading frames with `recvmsg` (descriptors and per-message credentials).
//! - `associate`: checking and binding a client's socket from a reservation.
//! - `netns`: which network namespace a socket belongs to.
//! - `fair`: the per-user connection limit (a "busy" answer past it), counted for every socket
//!   the daemon serves before any shared place; `refusals`: rate-limited log lines about
//!   refused clients.
//! - `rights`: which sockets take descriptors (`SO_PASSRIGHTS`): only admitted sessions of the
//!   main socket.
//! - `closer`: closing received descriptors on threads of their own, per user (a close can
//!   block; one user's blocked closes hold up only that user's).
//! - `store_thread`, `db_lock`: the database's own thread, and one daemon per database.
//! - [`portserver`]: Google's portpicker protocol on a socket of its own (one number in TCP and
//!   UDP per request, owned by the asking process); `state/portserver.rs` grants it.
//! - `probe`: whether a port is in use on the host; `diag`: which sockets and processes have a
//!   port bound (sock_diag and `/proc`), for `berth why` and error messages.

pub mod accounts;
mod associate;
mod authority;
mod changes;
mod closer;
pub mod config;
pub mod config_file;
mod db_lock;
mod diag;
mod fair;
mod faults;
#[cfg(feature = "fuzzing")]
pub mod fuzz_support;
mod hold;
mod inbound;
mod journal;
pub mod kernel;
mod limits;
mod lineage;
pub mod listener;
mod netns;
mod notify;
mod owner_watch;
mod peer;
pub mod portserver;
mod probe;
mod refusals;
mod rights;
pub mod server;
mod session;
mod state;
mod store_thread;

pub use config::Config;
pub use config_file::{ConfigError, ConfigFile};
pub use faults::Faults;
pub use kernel::KernelSync;
pub use listener::{activated, bind_socket, ListenError, SocketGuard};
pub use server::{run, run_with_ready, serve, ServeError};
