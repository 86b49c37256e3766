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

impl PortserverRefusal {
    /// The refusal's kind, worded for the rate-limited INFO line of the log (a fixed text per
    /// kind: the line is counted per user and text); the particulars are logged at DEBUG.
    pub(crate) fn summary(&self) -> &'static str {
        match self {
            PortserverRefusal::Owner(_) => {
                "portserver: refused requests naming a pid the asker may not reserve for (not its own or its user's process, exited, a thread, or invisible to the daemon; see the log at debug)"
            }
            PortserverRefusal::Table(e) => match e.kind() {
                berth_core::ErrorKind::QuotaExceeded => {
                    "portserver: refused requests over the user's quota (see `berth status` and the log at debug)"
                }
                berth_core::ErrorKind::PoolExhausted => {
                    "portserver: refused requests: no port of the pool is free in both TCP and UDP (see `berth status`)"
                }
                _ => "portserver: refused requests the table could not grant (see the log at debug)",
            },
            PortserverRefusal::Shortage(_) => {
                "portserver: refused requests: the daemon is short of descriptors or memory to test ports (see `berth status`)"
            }
            PortserverRefusal::NotRecorded(_) | PortserverRefusal::Missing => {
                "portserver: refused requests the daemon could not record (see the log at debug)"
            }
            PortserverRefusal::Exposed(_) => {
                "portserver: refused requests: the pool lies in the ephemeral range and the daemon cannot hide its ports (see `berth status`)"
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use berth_core::{Pool, Protocol, QuotaKind};

    use super::*;

    /// The INFO line says which kind of refusal it counts: an administrator reading the log
    /// knows whether to look at the pids named, the quota or the pool.
    #[test]
    fn each_kind_of_refusal_has_its_own_line() {
        let lines = [
            PortserverRefusal::Owner(NotOwner::Unfit { named: 0 }),
            PortserverRefusal::Table(AcquireError::QuotaExceeded {
                uid: 1000,
                what: QuotaKind::Ports,
                limit: 10,
                used: 10,
                asked: 1,
            }),
            PortserverRefusal::Table(AcquireError::PoolExhausted {
                protocol: Protocol::Tcp,
                count: 1,
                pool: Pool::new(20000, 20001).unwrap(),
                free_ports: 0,
                skipped_privileged: false,
                bounds: None,
            }),
            PortserverRefusal::Shortage("out of descriptors".into()),
            PortserverRefusal::Missing,
            PortserverRefusal::Exposed("exposed".into()),
        ]
        .map(|refusal| refusal.summary());
        let distinct: std::collections::BTreeSet<_> = lines.iter().collect();
        assert_eq!(distinct.len(), lines.len(), "{lines:#?}");
        assert!(lines[0].contains("naming a pid"));
        assert!(lines[1].contains("quota"));
        assert!(lines[2].contains("no port of the pool is free"));
        assert!(lines
            .iter()
            .all(|line| line.starts_with("portserver: refused")));
    }
}
