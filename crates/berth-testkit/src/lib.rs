//! Test support for berth's crates — a development dependency only, never part of what ships.
//!
//! - [`TestDaemon`]: an in-process daemon on a temporary socket, bound before the server task
//!   starts, so a test can connect at once (no sleeps, no polling for readiness); its
//!   [`Faults`](berth_daemon::Faults) switch makes the store fail as a failing disk would;
//! - [`FakeDaemon`]: an impostor, for answers a real daemon of this release never gives;
//! - [`needs`]: what a test needs from the machine (other users, namespaces, Python,
//!   portpicker, a C compiler), and the visible skip when it is missing;
//! - [`namespaces`]: private namespaces as root or in a user namespace;
//! - [`deadline`]: waiting for another process, or its connection, with a deadline;
//! - [`raw`]: speaking the protocol by hand;
//! - [`time`]: paused tokio time, moved by the test alone.
//!
//! No `unsafe` here: the system calls without a safe wrapper are `berth-os`'s (its feature
//! `testing`).

#![forbid(unsafe_code)]
#![allow(
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "test support: a failure to set up is a failed test"
)]

mod daemon;
pub mod deadline;
mod fake;
pub mod namespaces;
pub mod needs;
pub mod raw;
pub mod time;

pub use daemon::{eventually, TestDaemon};
pub use fake::{Answer, FakeDaemon};
