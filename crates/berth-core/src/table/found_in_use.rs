//! Ports one request found in use on the host after the table chose them, so that its next
//! choices pass them by.
//!
//! A held block's in-use test is its hold sockets' own binds, made outside the daemon's table
//! lock; a port found in use withdraws the choice ([`Table::withdraw`](super::Table::withdraw))
//! and the request chooses again. The table's cursor alone does not keep the request off that
//! port: another request's withdrawal, of a port before it, sends the cursor back over it.
//! Without this memory the request could choose the same port again, and a request that took
//! "the same port again" for "the whole pool tried" refused with the pool exhausted while
//! thousands of ports were free.

use std::collections::BTreeSet;

use crate::range::{PortRange, Protocol};

/// The ports one request found in use, by protocol.
#[derive(Debug, Default)]
pub struct FoundInUse {
    ports: BTreeSet<(Protocol, u16)>,
}

impl FoundInUse {
    /// Notes that `port` of `protocol` was found in use.
    pub fn note(&mut self, protocol: Protocol, port: u16) {
        self.ports.insert((protocol, port));
    }

    /// The first port of `range` found in use, if any: what an in-use test of the table's
    /// search returns, so that the search moves past it.
    pub fn first_in(&self, protocol: Protocol, range: PortRange) -> Option<u16> {
        if self.ports.is_empty() {
            return None;
        }
        self.ports
            .range((protocol, range.start())..=(protocol, range.end()))
            .next()
            .map(|&(_, port)| port)
    }

    /// How many ports were found in use.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}
