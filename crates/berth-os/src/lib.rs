//! The kernel-facing side of berth: what it asks Linux, and how, behind safe functions.
//!
//! Every `unsafe` block of berth outside its C API lives here, each in the module of the system
//! call it wraps and each with the reason it is sound. Nothing here knows the reservation
//! table, the wire protocol or sessions (of `berth-core` only the vocabulary: `Protocol`,
//! `PortSet`): callers decide, this crate asks the kernel.
//!
//! # Layout
//! Always built (the client library and libberth need these):
//! - [`peer`]: a Unix socket peer's credentials (`SO_PEERCRED`, pid 0 kept).
//! - [`beacon`]: the socket side of the authority beacon (an abstract name, asked who holds it).
//! - [`exec`]: what a spawned process inherits (`setsid`, `close_range` between fork and exec).
//! - [`inherited`]: descriptors inherited by number, each taken once.
//!
//! With the `tokio` feature (the client library's; `daemon` includes it):
//! - [`stream`]: a Unix stream registered with the reactor for reading only, written straight.
//!
//! With the `daemon` feature (netlink, tokio, socket2):
//! - [`proc`]: `/proc/PID/stat`, `status`, `comm`, namespaces and capabilities.
//! - [`recv`]: one `recvmsg` with descriptors and credentials.
//! - [`rights`]: `SO_PASSRIGHTS`, listeners that refuse descriptors.
//! - [`netns`]: network-namespace identity (`SO_NETNS_COOKIE`, `SIOCGSKNS`, `/proc/PID/ns/net`).
//! - [`memory`]: the C allocator's free memory given back to the system.
//! - [`pidfd`]: waiting for processes' exits, many through one epoll instance.
//! - [`diag`]: the sockets bound to a port (`NETLINK_SOCK_DIAG`) and their processes.
//! - [`hold`]: wildcard binds without reuse options (hold sockets, test binds).
//! - [`reserved_ports`]: the kernel's list of ports automatic assignment never picks
//!   (`ip_local_reserved_ports`).
//! - [`rlimit`]: the open-file limit and the descriptors in use.
//! - [`activation`]: systemd's socket activation.
//! - [`cgroup`]: cgroup v2 — the hierarchy, a cgroup's processes, waiting until it is empty.
//!
//! With the `enforce` feature (aya; clang at build time):
//! - [`enforce`]: the cgroup-BPF programs that keep a port for the cgroup owning it.
//!
//! With the `testing` feature, only for berth's tests (no shipped crate turns it on):
//! - [`at_exit`]: a handler run when the process exits (`atexit`);
//! - `exec::inherit_at`, `exec::limit_open_files`: a descriptor at a number and an open-file
//!   limit for a spawned child;
//! - `netns::enter_new_on_this_thread` (with `daemon`): a thread in a new network namespace.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod beacon;
pub mod exec;
pub mod inherited;
pub mod peer;
mod sockopt;

#[cfg(feature = "testing")]
pub mod at_exit;

#[cfg(feature = "daemon")]
pub mod accept;
#[cfg(feature = "daemon")]
pub mod activation;
#[cfg(feature = "daemon")]
pub mod cgroup;
#[cfg(feature = "daemon")]
pub mod diag;
#[cfg(feature = "enforce")]
pub mod enforce;
#[cfg(feature = "daemon")]
pub mod hold;
#[cfg(feature = "daemon")]
pub mod memory;
#[cfg(feature = "daemon")]
pub mod netns;
#[cfg(feature = "daemon")]
pub mod pidfd;
#[cfg(feature = "daemon")]
pub mod proc;
#[cfg(feature = "daemon")]
pub mod recv;
#[cfg(feature = "daemon")]
pub mod reserved_ports;
#[cfg(feature = "daemon")]
pub mod rights;
#[cfg(feature = "daemon")]
pub mod rlimit;
#[cfg(feature = "tokio")]
pub mod stream;
