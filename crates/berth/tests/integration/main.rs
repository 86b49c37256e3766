//! The client library's integration tests, one binary (one link) for the crate: each module
//! drives `berth::Client` (async and blocking) against a real in-process daemon
//! (`berth_testkit::TestDaemon`) or a fake one; `common`: shared helpers.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod api;
mod associate;
mod blocking;
mod bounds;
mod detail;
mod hold;
mod idle;
mod journal;
mod labels;
mod lifetime;
mod limits;
mod mirrors;
mod names;
mod persistent_use;
mod quota;
mod reconnect;
mod rollback;
mod why;
mod wire;
