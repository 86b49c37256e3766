//! The `berth` command's integration tests, one binary (one link) for the crate: each module
//! drives the real `berth` binary against real daemons (`support`: running them, other users,
//! private namespaces).

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod authority;
mod cli;
mod crash;
mod daemonizes;
mod descriptors;
mod docs;
mod exit_codes;
mod idle;
mod kernel;
mod labels;
mod limits;
mod listen;
mod messages;
mod names;
mod not_berth;
mod observability;
mod persistent;
mod portserver;
mod privileged;
mod rendezvous;
mod restart;
mod same_ports;
mod systemd;
mod unprivileged;
mod why;
