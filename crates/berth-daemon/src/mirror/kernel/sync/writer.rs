//! The writer thread of kernel sync: reads the list, asks the books what to write, records,
//! writes; and at a clean stop, takes the daemon's entries out but those it is told to keep.

use super::*;

impl Inner {
    pub(super) fn run(&self, setup: &Setup) {
        let clock = Instant::now();
        let now_ms = || u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut books = ListBooks::new(setup.recorded.clone(), now_ms());
        books.configure(reserved_ports::configured(&setup.configured_in));
        // One read buffer for the thread's life: the list can be hundreds of KiB.
        let mut buf = Vec::new();
        loop {
            let (ours, ahead, room, waiters) = {
                let mut state = self.lock();
                while !state.has_work() {
                    let (next, waited) = self
                        .wake
                        .wait_timeout(state, RECHECK)
                        .unwrap_or_else(PoisonError::into_inner);
                    state = next;
                    // Someone may have rewritten the list meanwhile (`sysctl --system` does),
                    // or changed the configuration: look again.
                    if waited.timed_out() && state.started {
                        state.dirty = true;
                        drop(state);
                        books.configure(reserved_ports::configured(&setup.configured_in));
                        state = self.lock();
                    }
                }
                if state.abandoned {
                    return;
                }
                if !state.dirty && state.stop.is_some() {
                    break;
                }
                // Nobody waits: gather what else comes for a moment, unless someone starts
                // waiting or the daemon stops.
                let until = Instant::now() + DEFER;
                while state.waiters.is_empty() && state.stop.is_none() && !state.abandoned {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    state = self
                        .wake
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if state.abandoned {
                    return;
                }
                state.dirty = false;
                state.writing = true;
                let (ahead, room) = affordable(&state.ahead, &state.ours, setup.extras.get());
                if ahead.is_empty() {
                    // Not listed by this write: changes there wait for a write from now on.
                    state.ahead_listed = false;
                }
                (
                    state.ours.clone(),
                    ahead,
                    room,
                    std::mem::take(&mut state.waiters),
                )
            };
            books.set_ahead(ahead.clone());
            let result = self.write(setup, &mut books, &ours, room, &mut buf, now_ms());
            if result.is_ok() && !ahead.is_empty() {
                let mut state = self.lock();
                // Unless the ports to list ahead changed meanwhile.
                state.ahead_listed = state.ahead == ahead;
                if state.ahead_listed {
                    state.ahead_seen_at = Some(Instant::now());
                }
            }
            if result.is_ok() && !self.lock().dirty {
                narrow(&setup.record, &mut books);
            }
            self.lock().writing = false;
            if let Err(e) = &result {
                tracing::error!("cannot update {}: {e}", setup.path.display());
            }
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
        // A clean stop: take the daemon's entries out, but those it was told to keep; keep
        // everyone else's.
        let keep = self.lock().stop.take().unwrap_or_default();
        match self.write_final(setup, &mut books, &keep, &mut buf, now_ms()) {
            Ok(()) => {
                narrow(&setup.record, &mut books);
                if !keep.is_empty() {
                    let n = keep.len();
                    tracing::info!(
                        "left {n} {} of reservations whose owners still run in {} for the next daemon",
                        if n == 1 { "port" } else { "ports" },
                        reserved_ports::PATH
                    );
                }
            }
            Err(e) => tracing::error!(
                "cannot take the daemon's entries out of {}: {e}",
                setup.path.display()
            ),
        }
    }

    /// One write: the list made equal to `ours`, others' entries and the extras the books
    /// decide; the record widened first.
    fn write(
        &self,
        setup: &Setup,
        books: &mut ListBooks,
        ours: &PortSet,
        room: berth_core::Extras,
        buf: &mut Vec<u8>,
        now_ms: u64,
    ) -> Result<(), MirrorError> {
        if setup.faulty.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(MirrorError::kernel_write(std::io::Error::other(
                "the kernel's list was made to fail (test fault injection)",
            )));
        }
        let current =
            reserved_ports::read_with(&setup.path, buf).map_err(MirrorError::kernel_read)?;
        let plan = books.plan(&current, ours, room, now_ms);
        self.carry_out(setup, books, plan, now_ms, false)
    }

    /// The stop's write: exactly others' entries and `keep` (see `ListBooks::plan_stop`).
    fn write_final(
        &self,
        setup: &Setup,
        books: &mut ListBooks,
        keep: &PortSet,
        buf: &mut Vec<u8>,
        now_ms: u64,
    ) -> Result<(), MirrorError> {
        let current =
            reserved_ports::read_with(&setup.path, buf).map_err(MirrorError::kernel_read)?;
        let plan = books.plan_stop(&current, keep, setup.extras.get(), now_ms);
        self.carry_out(setup, books, plan, now_ms, true)
    }

    /// Records, writes and books `plan` (`stopping`: the stop's write).
    fn carry_out(
        &self,
        setup: &Setup,
        books: &mut ListBooks,
        plan: ListPlan,
        now_ms: u64,
        stopping: bool,
    ) -> Result<(), MirrorError> {
        // Record first what the daemon may have written once this write is made, so a crash
        // between the two cannot leave entries nobody knows are the daemon's.
        if let Some(superset) = &plan.record_first {
            setup
                .record
                .set_kernel(&superset.to_string())
                .map_err(MirrorError::KernelRecord)?;
        }
        match &plan.write {
            ListWrite::Nothing => {}
            ListWrite::Add(ports) => {
                reserved_ports::add(&setup.path, ports).map_err(MirrorError::kernel_write)?;
                // Every write, at DEBUG: what an operator (or a test) checks the writes by.
                tracing::debug!("kernel list write: add {ports}");
            }
            ListWrite::Replace(value) => {
                reserved_ports::write(&setup.path, value).map_err(MirrorError::kernel_write)?;
                tracing::debug!(
                    "kernel list write: replace, {} bytes: {value}",
                    berth_core::reserved_list::text_len(value)
                );
            }
        }
        if let ListWrite::Add(value) | ListWrite::Replace(value) = &plan.write {
            setup.log.note(|| crate::faults::KernelWrite {
                replaced: matches!(plan.write, ListWrite::Replace(_)),
                bytes: berth_core::reserved_list::text_len(value),
                list: plan.list.clone(),
            });
        }
        let fitted_before = books.figures().one_chunk;
        books.written(&plan, now_ms);
        // The stop's write may take several chunks, and says nothing of the list's fit.
        report(&plan, (!stopping).then_some(fitted_before));
        *self.foreign.lock().unwrap_or_else(PoisonError::into_inner) = plan.foreign;
        *self.figures.lock().unwrap_or_else(PoisonError::into_inner) = books.figures();
        Ok(())
    }
}

/// The ports to list ahead in this write, and the room left for the extras that make a value
/// fit one chunk: all of `ahead` when the room covers its free ports where they cost, else
/// none (and the whole room).
fn affordable(
    ahead: &PortSet,
    ours: &PortSet,
    room: berth_core::Extras,
) -> (PortSet, berth_core::Extras) {
    let cost = berth_core::reserved_list::costly(&ahead.difference(ours), room);
    if ahead.is_empty() || cost > room.max {
        return (PortSet::new(), room);
    }
    let left = berth_core::Extras {
        max: room.max - cost,
        ..room
    };
    (ahead.clone(), left)
}

/// Says what a write repaired, and when the list stops (or starts again) fitting one chunk
/// (once per episode: `fitted_before` is the last write's; `None` says nothing of it).
fn report(plan: &ListPlan, fitted_before: Option<bool>) {
    if !plan.echoes.is_empty() {
        tracing::info!(
            ports = %plan.echoes,
            "took entries out of {} again: another tool's rewrite of the list brought back ports berth had released (a stale read-modify-write)",
            reserved_ports::PATH
        );
    }
    if !plan.restored.is_empty() {
        tracing::info!(
            ports = %plan.restored,
            "put entries of live reservations back into {}: another tool's rewrite took them out",
            reserved_ports::PATH
        );
    }
    let Some(fitted_before) = fitted_before else {
        return;
    };
    if fitted_before && !plan.one_chunk {
        tracing::warn!(
            extras = plan.extras.len(),
            "the reserved-ports list is too scattered for one kernel write within the room for extra ports: released ports stay listed until it fits (a longer replacing write would leave a gap)"
        );
    } else if !fitted_before && plan.one_chunk {
        tracing::info!("the reserved-ports list fits one kernel write again");
    }
}

/// Narrows the record to the daemon's entries now. Only a narrowing: if it is lost, the wider
/// record is still right. Done when the writer is idle, so that under load a grant in ports
/// already recorded needs no journal write at all.
fn narrow(record: &Runtime, books: &mut ListBooks) {
    if let Some(mine) = books.narrowing() {
        match record.set_kernel(&mine.to_string()) {
            Ok(()) => books.narrowed(mine),
            Err(e) => tracing::warn!("cannot narrow the record of the kernel's entries: {e}"),
        }
    }
}

impl Writer {
    /// Lets the writer start, once the table holds every reservation of the database: the
    /// first write reconciles the list with them (removing what an earlier daemon left for
    /// reservations that are gone). The receiver answers when that write is made.
    pub(crate) fn reconcile(&self) -> oneshot::Receiver<Result<(), MirrorError>> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.inner.lock();
        state.started = true;
        state.dirty = true;
        state.waiters.push(tx);
        drop(state);
        self.inner.wake.notify_one();
        rx
    }

    /// Finishes what is queued, takes the daemon's entries out of the list except those of
    /// `keep`, and waits for the writer thread.
    pub(crate) fn stop(mut self, keep: PortSet) {
        self.inner.lock().stop = Some(keep);
        self.inner.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the kernel-sync thread panicked");
            }
        }
    }
}

impl Drop for Writer {
    /// A writer dropped without [`Writer::stop`] (its daemon's run was dropped): the thread
    /// ends at once, writing nothing more, and is waited for.
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.inner.lock().abandoned = true;
        self.inner.wake.notify_one();
        if thread.join().is_err() {
            tracing::error!("the kernel-sync thread panicked");
        }
    }
}
