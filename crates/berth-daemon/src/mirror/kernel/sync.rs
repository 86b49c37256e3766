//! Keeping `ip_local_reserved_ports` equal to (entries the daemon did not write) ∪ (every
//! reservation, both protocols), as a consumer of the table's changes.
//!
//! A change that adds ports (a grant, a persistent create) is acknowledged once a write that
//! includes them is made, so a client never holds a reservation that `connect()` could still
//! be given — except a *held* grant: its hold sockets are bound to every port on the unspecified
//! address without reuse options, and the kernel's automatic port choice (`bind(0)`, and
//! `connect()`, which skips every port with a socket bound by `bind()`) never picks such a
//! port, so it is acknowledged at once and listed with the next write. Writes that nobody waits
//! for (held grants, releases) are gathered for [`DEFER`] first. Before a hold socket is given
//! up for its owner's socket (associate), [`Listing::caught_up`] waits until the list has caught
//! up.
//! One writer thread makes the writes; changes that arrive while it writes are written together
//! next time (group commit), so throughput is not bound by sysctl writes.
//! Each write re-reads the file first, since an administrator may change it at any time; an
//! idle writer reads it again every [`RECHECK`] and puts back what someone else's rewrite of
//! the whole list (`sysctl --system`, say) took out.
//!
//! What the daemon wrote is recorded in its runtime journal before each write (the union of what
//! it wrote before and what it is about to write, so a crash between the record and the write
//! loses nothing), and again after it. The runtime journal is the right home: like the kernel's
//! list, it is forgotten at a reboot, and an append to it is one `write(2)`. Only entries the daemon adds count as its own: a port
//! that was listed already when a reservation came to cover it stays someone else's, and stays
//! listed after the reservation ends. At start-up, after a crash, the entries recorded are the
//! daemon's own: the first write — made once the reservations of the database are back in the
//! table ([`Writer::reconcile`]), never before, so a live reservation is never unlisted for a
//! moment — removes those no reservation needs any more and keeps everyone else's. A clean
//! stop takes the daemon's entries out again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use berth_core::{Change, PortRange, PortSet};
use tokio::sync::oneshot;

use super::reserved_ports;
use crate::mirror::journal::Runtime;
use crate::mirror::{Ack, Consumer, MirrorError};

/// The database fact where earlier builds recorded what the daemon wrote (now in the runtime
/// journal; read once at start-up and moved).
pub(crate) const WRITTEN_KEY: &str = "kernel_reserved_ports";

/// How long the writer gathers changes nobody waits for (held grants, releases) before writing:
/// under load, one write then carries many of them.
const DEFER: Duration = Duration::from_millis(5);

/// How often an idle writer reads the list again, to put back entries someone else removed.
const RECHECK: Duration = Duration::from_secs(2);

/// The consumer: counts every reserved port and wakes the writer.
pub(crate) struct Sync {
    inner: Arc<Inner>,
}

/// The writer thread, to stop at shutdown.
pub(crate) struct Writer {
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Inner {
    state: Mutex<State>,
    wake: Condvar,
    /// The entries others wrote, as of the last write: wildcard searches leave them alone.
    foreign: Mutex<PortSet>,
}

/// The ports others listed in `ip_local_reserved_ports` (an administrator's own entries), as
/// the writer last saw them.
#[derive(Clone)]
pub(crate) struct Foreign(Arc<Inner>);

impl Foreign {
    /// The first port of `range` someone else listed, if any.
    pub(crate) fn first_in(&self, range: PortRange) -> Option<u16> {
        let foreign = self
            .0
            .foreign
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        range.ports().find(|&p| foreign.contains(p))
    }
}

struct State {
    /// Reservations covering each port, both protocols together (the list has no protocol).
    counts: Vec<u8>,
    /// The ports `counts` has above zero, kept as they change (a write copies it).
    ours: PortSet,
    /// Whether `counts` changed since the last write began.
    dirty: bool,
    /// Whether a write is being made now.
    writing: bool,
    /// Who waits for the next write to finish.
    waiters: Vec<oneshot::Sender<Result<(), MirrorError>>>,
    /// Set at shutdown.
    stop: bool,
    /// Whether the table holds what the database held: no write is made before.
    started: bool,
}

impl Sync {
    /// The entries others wrote, for wildcard searches to skip.
    pub(crate) fn foreign(&self) -> Foreign {
        Foreign(self.inner.clone())
    }

    /// Starts the writer over `path`. `recorded` is what an earlier daemon recorded having
    /// written (its entries, to be removed unless a reservation still needs them).
    pub(crate) fn start(
        path: PathBuf,
        record: Runtime,
        recorded: PortSet,
    ) -> std::io::Result<(Sync, Writer)> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                counts: vec![0; 65536],
                ours: PortSet::new(),
                // The first write reconciles what an earlier daemon left, even with nothing
                // to add.
                dirty: true,
                writing: false,
                waiters: Vec::new(),
                stop: false,
                started: false,
            }),
            wake: Condvar::new(),
            foreign: Mutex::new(PortSet::new()),
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("berth-kernel-sync".into())
            .spawn(move || worker.run(&path, &record, recorded))?;
        Ok((
            Sync {
                inner: inner.clone(),
            },
            Writer {
                inner,
                thread: Some(thread),
            },
        ))
    }
}

impl Consumer for Sync {
    fn name(&self) -> &'static str {
        "the kernel's reserved-ports list"
    }

    fn accept(&self, change: &Change) -> Ack {
        let (range, add, wait) = match change {
            // A held grant's hold sockets keep automatic port choice off its ports meanwhile.
            Change::Granted(r) => (r.range, true, !is_held(r)),
            Change::PersistentCreated(r) => (r.range, true, true),
            Change::Restored(r) => (r.range, true, false),
            Change::Released { reservation: r, .. } | Change::PersistentDeleted(r) => {
                (r.range, false, false)
            }
            Change::Rebound { .. } | Change::NotRestored { .. } => return Ack::Done,
        };
        let mut state = self.inner.lock();
        let State { counts, ours, .. } = &mut *state;
        count(counts, ours, range, add);
        // The writer needs waking when someone waits, or to start gathering the first change
        // since its last write; otherwise it is awake already.
        let wake = wait || !state.dirty;
        state.dirty = true;
        let ack = if wait {
            let (tx, rx) = oneshot::channel();
            state.waiters.push(tx);
            Ack::Later(rx)
        } else {
            Ack::Done
        };
        drop(state);
        if wake {
            self.inner.wake.notify_one();
        }
        ack
    }
}

impl Sync {
    /// A handle to wait until the list has caught up with the table.
    pub(crate) fn listing(&self) -> Listing {
        Listing(self.inner.clone())
    }
}

/// See [`Sync::listing`].
#[derive(Clone)]
pub(crate) struct Listing(Arc<Inner>);

impl Listing {
    /// Answers once the kernel's list holds every reservation granted so far; `None` when it
    /// does already. Call before giving up a hold socket.
    pub(crate) fn caught_up(&self) -> Option<oneshot::Receiver<Result<(), MirrorError>>> {
        self.0.caught_up()
    }
}

/// Whether `r` is a runtime reservation whose ports the daemon holds.
fn is_held(r: &berth_core::Reservation) -> bool {
    matches!(r.lease, berth_core::Lease::Runtime { held: true, .. })
}

fn count(counts: &mut [u8], ours: &mut PortSet, range: PortRange, add: bool) {
    for port in range.ports() {
        if let Some(c) = counts.get_mut(usize::from(port)) {
            *c = if add {
                c.saturating_add(1)
            } else {
                c.saturating_sub(1)
            };
            if *c == 0 {
                ours.remove(port);
            } else {
                ours.insert(port);
            }
        }
    }
}

impl State {
    /// Whether the writer has something to do: a write (once started), or the stop.
    fn has_work(&self) -> bool {
        self.stop || (self.dirty && self.started)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// See [`Listing::caught_up`].
    fn caught_up(&self) -> Option<oneshot::Receiver<Result<(), MirrorError>>> {
        let mut state = self.lock();
        if !state.dirty && !state.writing {
            return None;
        }
        // A write under way may have begun before the last change: ask for one more.
        state.dirty = true;
        let (tx, rx) = oneshot::channel();
        state.waiters.push(tx);
        drop(state);
        self.wake.notify_one();
        Some(rx)
    }

    fn run(&self, path: &Path, record: &Runtime, mut recorded: PortSet) {
        // One read buffer for the thread's life: the list can be hundreds of KiB.
        let mut buf = Vec::new();
        loop {
            let (ours, waiters) = {
                let mut state = self.lock();
                while !state.has_work() {
                    let (next, waited) = self
                        .wake
                        .wait_timeout(state, RECHECK)
                        .unwrap_or_else(PoisonError::into_inner);
                    state = next;
                    // Someone may have rewritten the list meanwhile (`sysctl --system` does):
                    // look again, and put back what is missing.
                    if waited.timed_out() && state.started {
                        state.dirty = true;
                    }
                }
                if !state.dirty && state.stop {
                    break;
                }
                // Nobody waits: gather what else comes for a moment, unless someone starts
                // waiting or the daemon stops.
                let until = Instant::now() + DEFER;
                while state.waiters.is_empty() && !state.stop {
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
                state.dirty = false;
                state.writing = true;
                (state.ours.clone(), std::mem::take(&mut state.waiters))
            };
            let result =
                write(path, record, &mut recorded, &ours, &mut buf).map(|(mine, foreign)| {
                    *self.foreign.lock().unwrap_or_else(PoisonError::into_inner) = foreign;
                    if !self.lock().dirty {
                        narrow(record, &mut recorded, mine);
                    }
                });
            self.lock().writing = false;
            if let Err(e) = &result {
                tracing::error!("cannot update {}: {e}", path.display());
            }
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
        // A clean stop: take the daemon's entries out, keep everyone else's.
        let cleared = reserved_ports::read(path)
            .and_then(|current| reserved_ports::write(path, &current.difference(&recorded)));
        match cleared {
            Ok(()) => {
                if let Err(e) = record.set_kernel("") {
                    tracing::warn!("cannot record that the daemon's entries are out: {e}");
                }
            }
            Err(e) => tracing::error!(
                "cannot take the daemon's entries out of {}: {e}",
                path.display()
            ),
        }
    }
}

/// One write: `ours` plus what others put there. `recorded` is what the database says the
/// daemon may have written; it is widened first if needed. Returns the daemon's entries now.
fn write(
    path: &Path,
    record: &Runtime,
    recorded: &mut PortSet,
    ours: &PortSet,
    buf: &mut Vec<u8>,
) -> Result<(PortSet, PortSet), MirrorError> {
    let current = reserved_ports::read_with(path, buf).map_err(MirrorError::kernel_read)?;
    let foreign = current.difference(recorded);
    let wanted = foreign.union(ours);
    // The daemon's own entries: what it adds. A port someone else listed stays theirs.
    let mine = ours.difference(&foreign);
    // Record first what the daemon may have written once this write is made, so a crash
    // between the two cannot leave entries nobody knows are the daemon's.
    let superset = recorded.union(&mine);
    if &superset != recorded {
        record
            .set_kernel(&superset.to_string())
            .map_err(MirrorError::KernelRecord)?;
        *recorded = superset;
    }
    if wanted != current {
        reserved_ports::write(path, &wanted).map_err(MirrorError::kernel_write)?;
    }
    Ok((mine, foreign))
}

/// Narrows the record to `mine`, what the daemon has in the list now. Only a narrowing: if it
/// is lost, the wider record is still right. Done when the writer is idle, so that under load
/// a grant in ports already recorded needs no database write at all.
fn narrow(record: &Runtime, recorded: &mut PortSet, mine: PortSet) {
    if &mine != recorded {
        match record.set_kernel(&mine.to_string()) {
            Ok(()) => *recorded = mine,
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

    /// Finishes what is queued, takes the daemon's entries out of the list, and waits for the
    /// writer thread.
    pub(crate) fn stop(mut self) {
        self.inner.lock().stop = true;
        self.inner.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the kernel-sync thread panicked");
            }
        }
    }
}
