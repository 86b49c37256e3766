//! The portserver endpoint's grant: one number in TCP and UDP for a process, through the table
//! and the change stream like every other grant (journaled, hidden from autobind when the
//! kernel's list is kept, watched through a pidfd).

use std::os::fd::{AsFd, OwnedFd};

use berth_core::{AcquireError, Owner};
use berth_os::peer::PeerCredentials;

use super::{now_ms, OsTokens, Shared};
use crate::mirror::Refused;
use crate::portserver::identity::{self, NotOwner};

/// Why a portserver request reserved nothing (logged; the client is told nothing).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PortserverRefusal {
    /// The pid named is not one the peer may reserve for.
    #[error(transparent)]
    Owner(#[from] NotOwner),
    /// Ports could not be tested (short of descriptors or memory): the prober's answer.
    #[error("{0}")]
    Shortage(String),
    /// The table refused the grant (no number free in both protocols, a quota, …).
    #[error(transparent)]
    Table(#[from] AcquireError),
    /// A consumer of the change stream refused the grant; it is undone.
    #[error("the daemon could not record the reservation: {0}")]
    NotRecorded(#[source] Refused),
    /// The table answered a grant without its reservation.
    #[error("the grant went missing")]
    Missing,
    /// The default pool lies in the ephemeral range and the daemon cannot hide its grants.
    #[error("{0}")]
    Exposed(String),
}

impl Shared {
    /// Answers the portpicker request naming `named`, asked by `peer` (pinned by `peer_pidfd`,
    /// its `SO_PEERPIDFD`): the port reserved, or why nothing was (the client is told nothing
    /// either way but the port).
    pub(crate) async fn portserver_request(
        &self,
        named: u32,
        peer: PeerCredentials,
        peer_pidfd: Option<OwnedFd>,
    ) -> Result<u16, PortserverRefusal> {
        let _turn = self.turns.enter(peer.uid).await;
        let (owner, named_pidfd) = identity::owner_for(
            named,
            peer,
            peer_pidfd.as_ref().map(|fd| fd.as_fd()),
            &self.described,
            |asker| self.is_admin(asker),
        )?;
        // The owner watch watches through the pidfd the owner was described through, never
        // one opened anew by its pid (see `owner_watch::Pins`).
        let _pinned = named_pidfd
            .or_else(|| peer_pidfd.map(berth_os::pidfd::PidFd::from))
            .map(|pidfd| self.pins.pin(&owner, pidfd));
        self.grant_both(owner).await
    }

    /// Reserves one number in TCP and UDP for `owner` until it exits, and answers once every
    /// consumer of the change stream has it.
    async fn grant_both(&self, owner: Owner) -> Result<u16, PortserverRefusal> {
        let is_admin = self.is_admin(&owner);
        let lowest_port = self.lowest_wildcard_port(&owner);
        let mut probes = self.prober.probes();
        let pid = owner.pid;
        let (port, pending) = {
            let mut table = self.table();
            if let Some(message) = self.exposed_refusal(table.pool().range()) {
                return Err(PortserverRefusal::Exposed(message));
            }
            let limits = self.constraints(&table, lowest_port, is_admin);
            // Probe binds are non-blocking syscalls; under the lock so that no other grant
            // takes the number between the probe and the insert.
            let mut in_use = |protocol, range| probes.first_in_use(protocol, range);
            let granted = table
                .acquire_for_process(owner, now_ms(), limits, &mut OsTokens, &mut in_use)
                .map_err(|e| {
                    probes
                        .shortage_answer()
                        .map_or(PortserverRefusal::Table(e), PortserverRefusal::Shortage)
                })?;
            let port = granted
                .first()
                .and_then(berth_core::Change::reservation)
                .map(|r| r.range.start());
            (port, self.publish(&mut table, granted.into()))
        };
        self.settle(pending)
            .await
            .map_err(PortserverRefusal::NotRecorded)?;
        let port = port.ok_or(PortserverRefusal::Missing)?;
        tracing::debug!(port, pid, "portserver: reserved in tcp and udp");
        Ok(port)
    }
}
