//! Names in the table: which live reservation holds a name (one per scope and protocol), and
//! the blocks remembered for names, which wildcard searches pass by while other ports fit so
//! that a name finds its block free again.

use std::collections::{BTreeMap, HashMap};

use crate::name::Name;
use crate::range::{PortRange, Protocol};
use crate::token::Token;

/// Whose names a name is among: a user's (runtime reservations) or the host's (persistent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NameScope {
    /// Runtime reservations of this uid.
    User(u32),
    /// Persistent reservations.
    Host,
}

/// The live names and the remembered blocks.
#[derive(Debug, Default)]
pub(super) struct Names {
    /// (scope, protocol, name) → the live reservation that has it.
    live: HashMap<(NameScope, Protocol, Name), Token>,
    /// Per protocol (TCP, UDP): port → how many remembered blocks cover it.
    kept: [BTreeMap<u16, u32>; 2],
}

fn slot(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

impl Names {
    /// The live reservation holding `name` in `scope` and `protocol`.
    pub(super) fn holder(
        &self,
        scope: NameScope,
        protocol: Protocol,
        name: &Name,
    ) -> Option<Token> {
        self.live.get(&(scope, protocol, name.clone())).copied()
    }

    /// Notes that `token` holds `name`.
    pub(super) fn insert(
        &mut self,
        scope: NameScope,
        protocol: Protocol,
        name: Name,
        token: Token,
    ) {
        self.live.insert((scope, protocol, name), token);
    }

    /// Notes that `token` no longer holds `name` (a no-op if another holds it).
    pub(super) fn remove(
        &mut self,
        scope: NameScope,
        protocol: Protocol,
        name: &Name,
        token: Token,
    ) {
        let key = (scope, protocol, name.clone());
        if self.live.get(&key) == Some(&token) {
            self.live.remove(&key);
        }
    }

    /// Remembers `range` for a name: passed by while other ports fit.
    pub(super) fn keep(&mut self, protocol: Protocol, range: PortRange) {
        for port in range.ports() {
            *self.kept[slot(protocol)].entry(port).or_insert(0) += 1;
        }
    }

    /// Forgets one remembering of `range` (see [`Names::keep`]).
    pub(super) fn unkeep(&mut self, protocol: Protocol, range: PortRange) {
        let kept = &mut self.kept[slot(protocol)];
        for port in range.ports() {
            if let Some(n) = kept.get_mut(&port) {
                *n -= 1;
                if *n == 0 {
                    kept.remove(&port);
                }
            }
        }
    }

    /// Whether any block of `protocol` is remembered.
    pub(super) fn keeps_any(&self, protocol: Protocol) -> bool {
        !self.kept[slot(protocol)].is_empty()
    }

    /// The first remembered port of `range` in `protocol`.
    pub(super) fn first_kept_in(&self, protocol: Protocol, range: PortRange) -> Option<u16> {
        self.kept[slot(protocol)]
            .range(range.start()..=range.end())
            .next()
            .map(|(&port, _)| port)
    }
}
