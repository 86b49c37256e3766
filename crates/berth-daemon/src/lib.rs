//! The berth daemon: serves port reservations to local clients over a Unix socket.
//!
//! The daemon is a thin shell around [`berth_core::Table`]: it accepts connections, learns
//! each client's identity from the kernel, decodes requests with [`berth_protocol`], asks the
//! table, and answers. A client's connection is its session: when it closes — the program
//! released its handle, exited, or was killed — its runtime reservations are released.
//!
//! # Layout
//! One folder per concern; a request's path runs `server` → `session` → `state` → `mirror`.
//! - [`config`]: [`Config`], what a daemon is told at start-up; [`config_file`] reads the
//!   TOML configuration file into it; `faults`: fault switches for tests.
//! - [`server`]`/`: the daemon process — start-up as the composition root ([`run`], [`serve`]),
//!   accept and admission for every socket (`accept`: the connection limits, the places kept
//!   for administrators, the room to receive descriptors), the authority beacon
//!   (`authority`), background tasks (`background`), the socket file or systemd's
//!   ([`listener`]), `sd_notify` (`notify`), one daemon per database (`db_lock`), per-user
//!   fairness (`fair`), rate-limited refusal logs (`refusals`), which sockets take
//!   descriptors (`rights`), the descriptor budget (`limits`).
//! - `session/`: one connection — handshake, requests in order, release on close (`mod`);
//!   reading frames with `recvmsg` and attributing descriptors to them (`inbound`,
//!   `inbound/ledger`); closing what clients sent on threads of their own (`closer`); who is on
//!   the other end (`peer`, `lineage`) and in which network namespace (`netns`).
//! - `state/`: the table's owner (`Shared`), the one dispatch of a request (`route`), and one
//!   module per request family (`runtime`, `persistent`, `portserver`, `why`, `views`), with
//!   the policy they apply (`privileged`, `quota`) and start-up restore (`restore`).
//! - `mirror/`: the change stream (`mod`) and its consumers — the runtime journal and the
//!   store thread (`journal`, `store_thread`), owner pidfds (`owner_watch`), hold sockets
//!   (`hold`), the kernel's reserved-ports list ([`kernel`], `kernel/sync`).
//! - `host/`: what the daemon asks the host about ports — whether one is in use (`probe`),
//!   who has it bound (`diag`), checking and binding a client's socket (`associate`).
//! - [`portserver`]: Google's portpicker protocol on a socket of its own (one number in TCP and
//!   UDP per request, owned by the asking process); `state/portserver.rs` grants it.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod config;
pub mod config_file;
mod faults;
mod host;
mod mirror;
pub mod portserver;
pub mod server;
mod session;
mod state;

pub use mirror::kernel;
pub use server::listener;

pub use config::Config;
pub use config_file::{ConfigError, ConfigFile};
pub use faults::{Faults, KernelWrite};
pub use kernel::KernelSync;
pub use listener::{activated, bind_socket, Activated, ListenError, SocketGuard};
pub use server::{run, run_with_ready, runtime_journal, serve, ServeError};
