//! Hold sockets: a held reservation's ports that its owner has not bound are kept bound by
//! the daemon — one non-listening socket per port, with neither `SO_REUSEADDR` nor
//! `SO_REUSEPORT`, dual-stack `[::]` where the host has IPv6 (else `0.0.0.0`; the sockets
//! themselves are `berth_os::hold`'s) — so that every other program's explicit bind to them
//! fails. A listening socket would accept connections
//! meant for the owner; a socket with a reuse option could be shared by binders that set the
//! same option.
//!
//! The hold socket's own bind is the in-use test of a held acquire: while the table searches,
//! [`Holds::try_hold`] binds the candidate's ports and keeps the sockets (staged); the consumer
//! side ([`Holds`] as a [`Consumer`]) files them under the reservation once it is granted, and
//! drops them when it ends. On associate, the daemon gives up the hold of the chosen port
//! ([`Holds::give_up`]) and binds the owner's socket in its place, then holds what the owner's
//! socket leaves of the port ([`Holds::fill`]): an owner's IPv4 socket leaves IPv6 open, so
//! an IPv6-only hold socket takes it (and the other way round); a pass ([`Holds::rehold`])
//! takes back ports whose owner's socket has closed — the hold socket of the family it used
//! binds again.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use berth_core::{PortRange, Protocol, Reservation, Token};
use berth_os::hold::Cover;
use socket2::Socket;

use crate::mirror::MirrorError;

/// The hold sockets of every held reservation.
pub(crate) struct Holds {
    /// Whether the host has IPv6: then one dual-stack socket holds a port for both families.
    ipv6: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Held ports by reservation.
    held: HashMap<Token, Block>,
    /// Sockets bound by the in-use test of the acquire in progress (under the table lock):
    /// filed under the reservation if its block is granted, dropped otherwise.
    staged: Vec<Staged>,
}

/// Hold sockets bound for a candidate block.
struct Staged {
    protocol: Protocol,
    range: PortRange,
    sockets: Vec<(u16, Socket)>,
    /// The port whose bind failed for another reason than its use (out of descriptors …),
    /// and how: the block is incomplete, and its grant refused with this as the cause.
    failed: Option<(u16, Arc<io::Error>)>,
}

/// One held reservation's sockets, by port.
struct Block {
    protocol: Protocol,
    range: PortRange,
    sockets: HashMap<u16, Vec<Held>>,
    /// Ports an associate has given up and is binding the owner's socket on right now: the
    /// re-hold pass leaves them alone.
    binding: std::collections::HashSet<u16>,
}

/// One hold socket.
struct Held {
    cover: Cover,
    _socket: Socket,
}

impl Block {
    /// Whether `port` is held for both families (or IPv4 alone, on a host without IPv6).
    fn fully_held(&self, port: u16, ipv6: bool) -> bool {
        let covers: Vec<Cover> = self
            .sockets
            .get(&port)
            .map(|h| h.iter().map(|h| h.cover).collect())
            .unwrap_or_default();
        if !ipv6 {
            return covers.contains(&Cover::V4);
        }
        covers.contains(&Cover::Dual)
            || (covers.contains(&Cover::V4) && covers.contains(&Cover::V6))
    }
}

/// Why a port could not be held.
pub(crate) enum HoldError {
    /// Another socket has it.
    InUse,
    /// Anything else (out of descriptors …).
    Other(io::Error),
}

impl Holds {
    pub(crate) fn new() -> Self {
        Holds {
            ipv6: berth_os::hold::ipv6_available(),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Binds a hold socket on `port` covering all of it (both families where the host has
    /// IPv6).
    pub(crate) fn bind(&self, protocol: Protocol, port: u16) -> Result<Socket, HoldError> {
        self.bind_cover(protocol, port, Cover::all(self.ipv6))
    }

    fn bind_cover(&self, protocol: Protocol, port: u16, cover: Cover) -> Result<Socket, HoldError> {
        match berth_os::hold::bind(protocol, port, cover) {
            Ok(socket) => Ok(socket),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(HoldError::InUse),
            Err(e) => Err(HoldError::Other(e)),
        }
    }

    /// The in-use test of a held acquire: binds a hold socket on every port of `range` and
    /// stages them; returns the first port some other socket has. Called outside the table
    /// lock, for a block the table has already given this request (nobody else can choose it).
    pub(crate) fn try_hold(&self, protocol: Protocol, range: PortRange) -> Option<u16> {
        let mut sockets = Vec::with_capacity(usize::from(range.count()));
        // Hold sockets never take the room the daemon keeps to receive descriptors (two per
        // port at most: a family each where one dual-stack socket will not do). Without it the
        // block is staged incomplete, and the grant refused as a shortage.
        let room = usize::from(range.count()) * 2 + crate::session::inbound::KERNEL_MAX_FDS;
        let roomy = crate::server::limits::room_for(room);
        if !roomy {
            crate::server::limits::log_shortage(
                "ports are not held: that would take the room kept to receive descriptors",
            );
        }
        let mut failed = None;
        for port in range.ports().take_while(|_| roomy) {
            match self.bind(protocol, port) {
                Ok(socket) => sockets.push((port, socket)),
                Err(HoldError::InUse) => return Some(port),
                // Out of descriptors, say: the port is not known to be in use. The consumer
                // finds the block incompletely staged and refuses the grant with the reason.
                Err(HoldError::Other(e)) => {
                    tracing::warn!("cannot hold {protocol} port {port}: {e}");
                    failed = Some((port, Arc::new(e)));
                    break;
                }
            }
        }
        let mut state = self.lock();
        // Requests hold their chosen blocks side by side (outside the table lock); a block is
        // only ever one request's choice, and a choice staged again replaces the old one.
        state
            .staged
            .retain(|s| !(s.protocol == protocol && s.range == range));
        state.staged.push(Staged {
            protocol,
            range,
            sockets,
            failed,
        });
        None
    }

    /// Drops what the in-use test staged for `range` (a choice that was not granted).
    pub(crate) fn unstage(&self, protocol: Protocol, range: PortRange) {
        self.lock()
            .staged
            .retain(|s| !(s.protocol == protocol && s.range == range));
    }

    /// Gives up every hold socket on `port` of `token`'s reservation, so its owner's socket
    /// can be bound there; `false` when there was none.
    pub(crate) fn give_up(&self, token: Token, port: u16) -> bool {
        let mut state = self.lock();
        let Some(block) = state.held.get_mut(&token) else {
            return false;
        };
        block.binding.insert(port);
        block.sockets.remove(&port).is_some_and(|h| !h.is_empty())
    }

    /// Holds what nobody has of `port` of `token`'s reservation: all of it when no socket is
    /// bound there, else the family the sockets there leave open. Returns whether the port is
    /// now wholly held (its owner's sockets, if any, are gone).
    pub(crate) fn fill(&self, token: Token, protocol: Protocol, port: u16) -> bool {
        let have: Vec<Cover> = {
            let state = self.lock();
            let Some(block) = state.held.get(&token) else {
                return false;
            };
            block
                .sockets
                .get(&port)
                .map(|h| h.iter().map(|h| h.cover).collect())
                .unwrap_or_default()
        };
        let wanted: &[Cover] = match (self.ipv6, have.as_slice()) {
            (false, _) => &[Cover::V4],
            (true, []) => &[Cover::Dual, Cover::V4, Cover::V6],
            (true, _) => &[Cover::V4, Cover::V6],
        };
        let mut new = Vec::new();
        for &cover in wanted {
            let covered = have.contains(&cover)
                || have.contains(&Cover::Dual)
                || new
                    .iter()
                    .any(|h: &Held| h.cover == cover || h.cover == Cover::Dual);
            if covered {
                continue;
            }
            if let Ok(socket) = self.bind_cover(protocol, port, cover) {
                new.push(Held {
                    cover,
                    _socket: socket,
                });
            }
        }
        let mut state = self.lock();
        let Some(block) = state.held.get_mut(&token) else {
            // Released meanwhile: the new sockets close here.
            return false;
        };
        block.binding.remove(&port);
        block.sockets.entry(port).or_default().extend(new);
        block.fully_held(port, self.ipv6)
    }

    /// Tries to hold again each of `ports` (the owner had bound them): those whose owner's
    /// sockets have all closed are wholly held from now on and returned. Call outside the table
    /// lock, then tell the table which ports are free again.
    pub(crate) fn rehold(&self, token: Token, protocol: Protocol, ports: &[u16]) -> Vec<u16> {
        ports
            .iter()
            .copied()
            .filter(|&port| self.fill(token, protocol, port))
            .collect()
    }

    /// Whether TCP `port`, which could not be held, is kept only by sockets a bind with
    /// `SO_REUSEADDR` may sit beside (its owner's connections in `TIME_WAIT`): then a stranger
    /// with that option could bind it, and the daemon ends those connections to hold it.
    pub(crate) fn lingering(&self, port: u16) -> bool {
        // Family by family: the hold may cover one already (an IPv6-only socket beside an
        // IPv4 connection's TIME_WAIT), and a dual-stack test bind would meet it.
        let covers: &[Cover] = if self.ipv6 {
            &[Cover::V4, Cover::V6]
        } else {
            &[Cover::V4]
        };
        covers.iter().any(|&cover| {
            self.bind_cover(Protocol::Tcp, port, cover).is_err()
                && berth_os::hold::free_but_for_lingering(port, cover)
        })
    }

    /// The inodes of every hold socket (how `why` tells the daemon's own sockets from the
    /// owner's in the kernel's socket list).
    pub(crate) fn inodes(&self) -> std::collections::HashSet<u64> {
        self.lock()
            .held
            .values()
            .flat_map(|b| b.sockets.values())
            .flatten()
            .filter_map(|h| rustix::fs::fstat(&h._socket).ok())
            .map(|st| st.st_ino)
            .collect()
    }

    /// Hold sockets open now, all reservations together.
    pub(crate) fn count(&self) -> usize {
        self.lock()
            .held
            .values()
            .flat_map(|b| b.sockets.values())
            .map(Vec::len)
            .sum()
    }

    /// Files a granted or restored held reservation: the staged sockets if they are its block,
    /// else new ones. Ports another socket has (its owner's, after a restart) stay unheld.
    fn file(&self, r: &Reservation, from_stage: bool) -> Result<(), MirrorError> {
        let staged = if from_stage {
            let mut state = self.lock();
            let at = state
                .staged
                .iter()
                .position(|s| s.protocol == r.protocol && s.range == r.range);
            at.map(|i| state.staged.swap_remove(i))
        } else {
            None
        };
        let full = Cover::all(self.ipv6);
        let held = |(port, socket): (u16, Socket)| {
            (
                port,
                vec![Held {
                    cover: full,
                    _socket: socket,
                }],
            )
        };
        let sockets: HashMap<u16, Vec<Held>> = match staged {
            Some(staged) if staged.sockets.len() == usize::from(r.range.count()) => {
                staged.sockets.into_iter().map(held).collect()
            }
            Some(staged) => {
                let (port, source) = staged.failed.unzip();
                return Err(MirrorError::NotHeld {
                    count: r.range.count(),
                    port,
                    source,
                });
            }
            None => r
                .range
                .ports()
                .filter_map(|port| self.bind(r.protocol, port).ok().map(|s| held((port, s))))
                .collect(),
        };
        self.lock().held.insert(
            r.token,
            Block {
                protocol: r.protocol,
                range: r.range,
                sockets,
                binding: std::collections::HashSet::new(),
            },
        );
        Ok(())
    }

    /// The held reservations' tokens and protocols, for the re-hold pass.
    pub(crate) fn blocks(&self) -> Vec<(Token, Protocol)> {
        self.lock()
            .held
            .iter()
            .map(|(t, b)| (*t, b.protocol))
            .collect()
    }

    /// The ports of `token`'s block that are not wholly held (its owner's sockets, or sockets
    /// the daemon could not displace, have them), except those an associate is binding now.
    pub(crate) fn uncovered(&self, token: Token) -> Vec<u16> {
        let state = self.lock();
        let Some(block) = state.held.get(&token) else {
            return Vec::new();
        };
        block
            .range
            .ports()
            .filter(|p| !block.binding.contains(p) && !block.fully_held(*p, self.ipv6))
            .collect()
    }
}

mod consumer;
pub(crate) use consumer::Consumer;

#[cfg(test)]
mod resync_tests;
