//! The table's side of its mirrors, for the server's start-up, background tasks and stop: the
//! kernel's list reconciled and caught up, ports taken back into hold, the pool and the
//! ephemeral share following the kernel's range.

use super::*;

impl Shared {
    /// Starts keeping the kernel's list once the table is restored: the receiver answers when
    /// the list is reconciled with the table (`None` when sync is off).
    pub(crate) fn reconcile_kernel(
        &self,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), crate::mirror::MirrorError>>> {
        self.kernel
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(crate::mirror::kernel::sync::Writer::reconcile)
    }

    /// Waits until the kernel's list holds every reservation granted so far (sync on only):
    /// held grants are listed a moment after they are answered, and a hold socket must not be
    /// given up before its port is listed.
    pub(crate) async fn kernel_caught_up(&self) {
        let Some(wait) = self.kernel.listing.as_ref().and_then(|l| l.caught_up()) else {
            return;
        };
        match wait.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("the kernel's reserved-ports list did not catch up: {e}"),
            Err(_) => tracing::warn!("the kernel-sync thread stopped"),
        }
    }

    /// The first port of a wildcard candidate `range` someone else listed in the kernel's
    /// reserved-ports list (sync on only).
    pub(crate) fn listed_by_others(&self, range: berth_core::PortRange) -> Option<u16> {
        self.kernel.foreign.as_ref()?.first_in(range)
    }

    /// Stops keeping the kernel's list: the daemon's entries are taken out (blocks until done).
    pub(crate) fn stop_kernel_sync(&self) {
        let writer = self
            .kernel
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            writer.stop();
        }
    }

    /// One pass of taking back into hold the ports of held reservations whose owner's socket
    /// has closed: binds are tried outside the table lock, then the table learns which ports
    /// are free (held) again.
    pub(crate) fn rehold_pass(&self) {
        for (token, protocol) in self.holds.blocks() {
            // Every port not wholly held: those its owner bound, and those a restarted daemon
            // found taken (the table does not know them as bound after a restart).
            let uncovered = self.holds.uncovered(token);
            if uncovered.is_empty() {
                continue;
            }
            let taken = self.holds.rehold(token, protocol, &uncovered);
            let mut table = self.table();
            for port in uncovered {
                if taken.contains(&port) {
                    table.note_unbound(token, port);
                } else if table.port_use(token, port) == Some(berth_core::PortUse::Free) {
                    // Someone has it — its owner's socket, most likely — so the table shows
                    // it bound and associate tries it last.
                    table.note_bound(token, port);
                }
            }
            if !taken.is_empty() {
                tracing::debug!(%token, ?taken, held = self.holds.count(), "ports back in hold");
            }
        }
    }

    /// Follows a change of the kernel's ephemeral range (`ip_local_port_range`) with the
    /// default pool: the range itself while the daemon keeps the reserved-ports list, else the
    /// part of the dynamic range outside it.
    pub(crate) fn follow_ephemeral(&self, pool_follows: bool) {
        let ephemeral = crate::config::ephemeral_pool();
        let pool =
            crate::mirror::kernel::safe_default_pool(self.kernel.off_because.is_none(), ephemeral);
        let mut table = self.table();
        if self.ephemeral_share.is_some() && table.shared_range() != Some(ephemeral.range()) {
            tracing::info!(
                "the ephemeral range is {ephemeral} now: non-administrators' share of it is counted anew"
            );
            table.set_shared_range(Some(ephemeral.range()));
        }
        if pool_follows && table.pool() != pool {
            tracing::info!(
                "the ephemeral range is {ephemeral} now: the wildcard pool follows, {} → {pool}",
                table.pool()
            );
            table.set_pool(pool);
        }
    }
}
