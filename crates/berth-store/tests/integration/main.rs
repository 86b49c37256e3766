//! The store's integration tests, one binary (one link) for the crate: the SQLite store, the
//! runtime journal, a model test, and crash rounds (`crash`).

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod crash;
mod model;
mod runtime;
mod store;
