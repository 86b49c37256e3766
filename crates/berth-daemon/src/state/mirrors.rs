//! The table's side of its mirrors, for the server's start-up, background tasks and stop: the
//! kernel's list reconciled and caught up, ports taken back into hold, the pool and the
//! ephemeral share following the kernel's range.

use super::*;

/// The kernel-sync side of the daemon.
pub(super) struct KernelState {
    /// `None` once stopped, or when sync is off.
    pub(super) writer: Mutex<Option<crate::mirror::kernel::sync::Writer>>,
    /// Why sync is off, for `status`.
    pub(super) off_because: Option<crate::mirror::kernel::SyncOff>,
    /// The entries others wrote in the kernel's list (when sync is on): wildcard blocks skip
    /// them, since those ports are someone else's.
    pub(super) foreign: Option<crate::mirror::kernel::sync::Foreign>,
    /// Waits until the kernel's list has caught up with the table (when sync is on).
    pub(super) listing: Option<crate::mirror::kernel::sync::Listing>,
    /// Whose entries the kernel's list holds, for `status` (when sync is on).
    pub(super) figures: Option<crate::mirror::kernel::sync::Figures>,
    /// Whether the stop takes every entry out (`berth stop --restore`).
    pub(super) restore: std::sync::atomic::AtomicBool,
    /// The room kernel sync has for extras, kept with the share's use.
    pub(super) extras: Arc<crate::mirror::kernel::ExtrasRoom>,
    /// The pool's exposure when sync is off.
    pub(super) exposure: super::exposure::Exposure,
    /// The ports listed ahead of grants (when sync is on), and how many to list.
    pub(super) ahead: Option<crate::mirror::kernel::sync::Ahead>,
    listed_ahead: u16,
}

impl KernelState {
    /// Starts keeping the kernel's list when the configuration and the daemon's rights allow
    /// (its writer is then one of `consumers`), or says why not.
    pub(super) fn start(
        config: &Config,
        runtime: crate::mirror::journal::Runtime,
        recorded: berth_core::PortSet,
        consumers: &mut Vec<Box<dyn crate::mirror::Consumer>>,
    ) -> std::io::Result<KernelState> {
        let exposure = super::exposure::Exposure::new(
            config.pool_follows_ephemeral,
            crate::config::ephemeral_pool().range(),
        );
        let extras = Arc::new(crate::mirror::kernel::ExtrasRoom::default());
        Ok(match crate::mirror::kernel::decide(config.kernel_sync) {
            Ok(()) => {
                let (sync, writer) =
                    crate::mirror::kernel::sync::Sync::start(crate::mirror::kernel::sync::Setup {
                        path: crate::mirror::kernel::reserved_ports::PATH.into(),
                        record: runtime,
                        recorded,
                        configured_in: config.configured_reserved_ports.clone(),
                        extras: extras.clone(),
                        trust: config.listed_ahead_trust,
                        faulty: config.faults.kernel(),
                        log: config.faults.kernel_log(),
                    })?;
                let foreign = sync.foreign();
                let listing = sync.listing();
                let figures = sync.figures();
                let ahead = sync.ahead();
                consumers.push(Box::new(sync));
                tracing::info!(
                    "keeping {} with every reservation",
                    crate::mirror::kernel::reserved_ports::PATH
                );
                KernelState {
                    writer: Mutex::new(Some(writer)),
                    off_because: None,
                    foreign: Some(foreign),
                    listing: Some(listing),
                    figures: Some(figures),
                    restore: Default::default(),
                    extras,
                    exposure,
                    ahead: Some(ahead),
                    listed_ahead: config.listed_ahead,
                }
            }
            Err(why) if config.kernel_sync == crate::mirror::kernel::KernelSync::On => {
                return Err(std::io::Error::other(format!(
                    "kernel sync was asked for, but {why}"
                )))
            }
            Err(why) => {
                // The pool's exposure is warned about by the first look at the ephemeral range
                // (`Shared::follow_ephemeral`), and again whenever it changes.
                tracing::info!("kernel sync is off: {why}");
                KernelState {
                    writer: Mutex::new(None),
                    off_because: Some(why),
                    foreign: None,
                    listing: None,
                    figures: None,
                    restore: Default::default(),
                    extras,
                    exposure,
                    ahead: None,
                    listed_ahead: 0,
                }
            }
        })
    }
}

impl Shared {
    /// Lists the first ports of the pool ahead of grants (sync on only; `listed_ahead` of the
    /// configuration), and has the table hand unheld wildcard blocks out of them first. At
    /// start-up and whenever the pool moves.
    pub(super) fn place_stripe(&self, table: &mut Table) {
        let Some(ahead) = &self.kernel.ahead else {
            return;
        };
        let pool = table.pool().range();
        let stripe =
            berth_core::PortRange::new(pool.start(), self.kernel.listed_ahead.min(pool.count()))
                .ok();
        table.set_stripe(stripe);
        let mut ports = berth_core::PortSet::new();
        if let Some(stripe) = stripe {
            ports.insert_range(stripe);
        }
        ahead.set(ports);
    }

    /// Moves the stripe listed ahead on when most of it is taken (see
    /// `Table::advance_stripe`): the new one is listed by the next write, and grants there wait
    /// for that write until it is made.
    pub(super) fn advance_stripe(&self, table: &mut Table) {
        let Some(ahead) = &self.kernel.ahead else {
            return;
        };
        if let Some(next) = table.advance_stripe(now_ms()) {
            let mut ports = berth_core::PortSet::new();
            ports.insert_range(next);
            ahead.set(ports);
        }
    }

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

    /// Stops keeping the kernel's list (blocks until done). The entries of runtime
    /// reservations whose owners still run stay listed, so that no `connect()` takes their
    /// ports before the next daemon reconciles the list — unless an administrator asked for the
    /// list restored ([`Shared::restore_list_on_stop`]); the daemon's other entries go.
    pub(crate) fn stop_kernel_sync(&self) {
        let writer = self
            .kernel
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            let keep = if self.kernel.restore.load(Ordering::SeqCst) {
                berth_core::PortSet::new()
            } else {
                self.live_owners_ports()
            };
            writer.stop(keep);
        }
    }

    /// Makes the stop take every entry of the daemon's out of the kernel's list
    /// (`berth stop --restore`).
    pub(crate) fn restore_list_on_stop(&self) {
        self.kernel.restore.store(true, Ordering::SeqCst);
    }

    /// The ports of runtime reservations whose owners still run (pid and start time), which
    /// the next daemon will hold for them.
    fn live_owners_ports(&self) -> berth_core::PortSet {
        let runtime: Vec<(Owner, berth_core::PortRange)> = self
            .table()
            .iter()
            .filter_map(|r| match &r.lease {
                berth_core::Lease::Runtime { owner, .. } => Some((owner.clone(), r.range)),
                berth_core::Lease::Persistent { .. } => None,
            })
            .collect();
        // `/proc` is read outside the table lock.
        let mut keep = berth_core::PortSet::new();
        for (owner, range) in runtime {
            let now = process_owner(owner.pid, owner.uid, owner.gid);
            if owner.start_time != 0 && now.start_time == owner.start_time {
                keep.insert_range(range);
            }
        }
        keep
    }

    /// Whose entries the kernel's list holds, as of the last write (sync on only).
    pub(crate) fn kernel_list_figures(&self) -> Option<berth_core::ListFigures> {
        self.kernel.figures.as_ref().map(|f| f.now())
    }

    /// One pass of taking back into hold the ports of held reservations whose owner's socket
    /// has closed: binds are tried outside the table lock, then the table learns which ports
    /// are free (held) again. Returns the TCP ports that could not be held because only
    /// their owner's connections in `TIME_WAIT` keep them (see `Holds::lingering`).
    pub(crate) fn rehold_pass(&self) -> Vec<u16> {
        let mut lingering = Vec::new();
        for (token, protocol) in self.holds.blocks() {
            // Every port not wholly held: those its owner bound, and those a restarted daemon
            // found taken (the table does not know them as bound after a restart).
            let uncovered = self.holds.uncovered(token);
            if uncovered.is_empty() {
                continue;
            }
            let taken = self.holds.rehold(token, protocol, &uncovered);
            if protocol == berth_core::Protocol::Tcp {
                lingering.extend(
                    uncovered
                        .iter()
                        .filter(|p| !taken.contains(p) && self.holds.lingering(**p)),
                );
            }
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
        lingering
    }

    /// Re-synchronises every mirror of the table from the table (see `Consumer::resync`):
    /// after a consumer failed a change it could not refuse, and now and then in case.
    pub(crate) fn resync_mirrors(&self) {
        let table = self.table();
        for (consumer, why) in self.stream.resync(&table) {
            tracing::warn!("cannot re-synchronise {consumer} with the table: {why}");
        }
    }

    /// Rewrites the runtime journal if it has outgrown its live rows, outside the table lock
    /// (blocking: a file write).
    pub(crate) fn rewrite_journal_if_due(&self) {
        self.journal_file.rewrite_if_due();
    }

    /// At a clean stop, the runtime journal removed when it holds nothing (see
    /// `journal::Runtime::remove_if_empty`).
    pub(crate) fn remove_journal_if_empty(&self) -> (bool, usize) {
        self.journal_file.remove_if_empty()
    }

    /// Whether a mirror fell out of step with the table since the last look.
    pub(crate) fn mirrors_out_of_step(&self) -> bool {
        self.stream.out_of_step()
    }

    /// Forgets that `port` of `token` is bound (its socket is gone), for a reservation the
    /// daemon does not hold — a held one's ports are the re-hold pass's.
    pub(crate) fn forget_bound(&self, token: berth_core::Token, port: u16) {
        let mut table = self.table();
        if table.get(token).is_some_and(|r| !r.held()) {
            table.note_unbound(token, port);
        }
    }

    /// One pass over the ports of reservations the daemon does not hold that the table
    /// remembers bound: each is tested (a bind with `SO_REUSEADDR`, which only a live socket
    /// refuses) outside the table lock, and those with no socket left are bound no more — so
    /// that `list` and `why` never say "bound" for a socket that is gone. Blocking: run it off
    /// the serving threads.
    pub(crate) fn stale_bound_pass(&self) {
        let bound: Vec<(berth_core::Token, berth_core::Protocol, Vec<u16>)> = {
            let table = self.table();
            table
                .with_bound()
                .filter(|r| !r.held())
                .map(|r| (r.token, r.protocol, table.bound_list(r.token)))
                .filter(|(_, _, ports)| !ports.is_empty())
                .collect()
        };
        for (token, protocol, ports) in bound {
            let gone: Vec<u16> = ports
                .into_iter()
                .filter(|&port| matches!(self.prober.in_use(protocol, port, true), Ok(false)))
                .collect();
            for port in gone {
                self.forget_bound(token, port);
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
        self.reset_extras_room(&table, ephemeral.range());
        // No safe place (the range leaves nothing outside it): the pool stays where it is, and
        // wildcard requests are refused while it is exposed.
        match pool {
            Some(pool) if pool_follows && table.pool() != pool => {
                tracing::info!(
                    "the ephemeral range is {ephemeral} now: the wildcard pool follows, {} → {pool}",
                    table.pool()
                );
                table.set_pool(pool);
                self.place_stripe(&mut table);
            }
            _ => {}
        }
        let pool = table.pool().range();
        drop(table);
        self.note_ephemeral(ephemeral.range(), pool);
    }
}
