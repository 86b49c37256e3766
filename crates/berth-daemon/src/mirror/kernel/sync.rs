//! Keeping `ip_local_reserved_ports` equal to (others' entries) ∪ (every reservation, both
//! protocols) ∪ (berth's deliberate extras), as a consumer of the table's changes. Which entries
//! are whose, and what to write, is decided by `berth_core::ListBooks` (pure); this module reads,
//! records and writes.
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
//! Each write re-reads the file first, since other tools may change it at any time; an idle
//! writer reads it again every [`RECHECK`], puts back berth's entries someone else's rewrite
//! took out, and takes out again stale write-backs of entries berth removed (the books' echoes).
//! Every value written fits one kernel chunk (the books list free ports between scattered
//! entries to make it fit, up to a bound), so a write never leaves a reserved port unlisted.
//!
//! Some ports of the pool are listed *ahead* of grants ([`Ahead`]; the table hands unheld
//! wildcard blocks out of them first): once a write has listed them, a change inside them is
//! acknowledged at once and needs no write — the list holds those ports whether reserved or
//! not. They cost like extras, so they are listed only while the room for extras covers their
//! free ports; the writer decides that as it takes each write's snapshot, and from that moment
//! a grant there waits for a write again.
//!
//! What the daemon wrote is recorded in its runtime journal before each write (the union of what
//! it wrote before and what it is about to write, so a crash between the record and the write
//! loses nothing), and narrowed when the writer is idle. The runtime journal is the right home:
//! like the kernel's list, it is forgotten at a reboot, and an append to it is one `write(2)`.
//! At start-up the entries recorded are the daemon's own: the first write — made once the
//! reservations of the database are back in the table ([`Writer::reconcile`]), never before, so
//! a live reservation is never unlisted for a moment — removes those no reservation needs any
//! more and keeps everyone else's. A clean stop takes the daemon's entries out, except those
//! it is told to keep (reservations whose owners still run, for the next daemon).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use berth_core::{Change, ListBooks, ListFigures, ListPlan, ListWrite, PortRange, PortSet};
use tokio::sync::oneshot;

use super::reserved_ports;
use crate::mirror::journal::Runtime;
use crate::mirror::{Ack, Consumer, MirrorError};

mod writer;

/// The database fact where earlier builds recorded what the daemon wrote (now in the runtime
/// journal; read once at start-up and moved).
pub(crate) const WRITTEN_KEY: &str = "kernel_reserved_ports";

/// How long the writer gathers changes nobody waits for (held grants, releases) before writing:
/// under load, one write then carries many of them. Each write re-reads the list (the kernel
/// walks all 65,536 ports) and wakes this thread: at 5 ms, tens of thousands of held pairs a
/// second paid ~0.8 µs each for the writes. A change someone waits for ends the gathering.
const DEFER: Duration = Duration::from_millis(20);

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
    /// What the books said after the last write, for `berth status`.
    figures: Mutex<ListFigures>,
    /// The list's file, and a buffer to read it into when a grant in the stripe is checked.
    path: PathBuf,
    check_buf: Mutex<Vec<u8>>,
    /// How long the list, once seen holding the stripe, is trusted to still hold it (a read
    /// costs the kernel a walk of all 65,536 ports, too much for every grant; another tool's
    /// rewrite is noticed by the next grant after this long, and berth's other entries are
    /// put back within [`RECHECK`]). See `Config::listed_ahead_trust`.
    trust: Duration,
}

/// What the writer needs besides the table's ports.
pub(crate) struct Setup {
    /// The list's file (`/proc/sys/net/ipv4/ip_local_reserved_ports`).
    pub(crate) path: PathBuf,
    /// Where the daemon's entries are recorded.
    pub(crate) record: Runtime,
    /// What an earlier daemon recorded having written (its entries).
    pub(crate) recorded: PortSet,
    /// The sysctl configuration files and directories whose `ip_local_reserved_ports` entries
    /// are an administrator's.
    pub(crate) configured_in: Vec<PathBuf>,
    /// How many free ports may be listed to make a value fit one chunk.
    pub(crate) extras: Arc<super::ExtrasRoom>,
    /// See `Config::listed_ahead_trust`.
    pub(crate) trust: Duration,
    /// While set, every write fails (fault injection for tests).
    pub(crate) faulty: Arc<std::sync::atomic::AtomicBool>,
    /// Where every write is kept while a test asks.
    pub(crate) log: crate::faults::KernelLog,
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
    /// Set at shutdown, with the ports whose entries stay for the next daemon.
    stop: Option<PortSet>,
    /// Set when the writer's handle is dropped without a stop (the daemon's run was dropped,
    /// as a crash would end it): the thread ends without a write, leaving the list and the
    /// record for the next daemon to reconcile — never putting entries back for a daemon that
    /// is gone.
    abandoned: bool,
    /// Whether the table holds what the database held: no write is made before.
    started: bool,
    /// The ports to list ahead of grants (see [`Ahead`]).
    ahead: PortSet,
    /// Whether the list holds every port of `ahead` and no write under way takes them out:
    /// then a change inside them needs no write.
    ahead_listed: bool,
    /// When the list was last seen holding every port of `ahead` (a write, or a grant's
    /// check): within `Inner::trust` of it a grant in the stripe needs no read.
    ahead_seen_at: Option<Instant>,
}

/// The ports listed ahead of grants: see the module's documentation.
#[derive(Clone)]
pub(crate) struct Ahead(Arc<Inner>);

impl Ahead {
    /// Lists `ports` ahead from the next write on (none: stop listing ahead).
    pub(crate) fn set(&self, ports: PortSet) {
        let mut state = self.0.lock();
        if state.ahead == ports {
            return;
        }
        state.ahead = ports;
        state.ahead_listed = false;
        state.dirty = true;
        drop(state);
        self.0.wake.notify_one();
    }
}

impl Sync {
    /// The ports listed ahead of grants, to set.
    pub(crate) fn ahead(&self) -> Ahead {
        Ahead(self.inner.clone())
    }

    /// The entries others wrote, for wildcard searches to skip.
    pub(crate) fn foreign(&self) -> Foreign {
        Foreign(self.inner.clone())
    }

    /// Starts the writer (see [`Setup`]).
    pub(crate) fn start(setup: Setup) -> std::io::Result<(Sync, Writer)> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                counts: vec![0; 65536],
                ours: PortSet::new(),
                // The first write reconciles what an earlier daemon left, even with nothing
                // to add.
                dirty: true,
                writing: false,
                waiters: Vec::new(),
                stop: None,
                abandoned: false,
                started: false,
                ahead: PortSet::new(),
                ahead_listed: false,
                ahead_seen_at: None,
            }),
            wake: Condvar::new(),
            foreign: Mutex::new(PortSet::new()),
            figures: Mutex::new(ListFigures::default()),
            path: setup.path.clone(),
            check_buf: Mutex::new(Vec::new()),
            trust: setup.trust,
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("berth-kernel-sync".into())
            .spawn(move || worker.run(&setup))?;
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
        let listed = state.ahead_listed && range.ports().all(|p| state.ahead.contains(p));
        // Inside the ports listed ahead the list is right already: for a release always; for a
        // grant once the list was seen holding the stripe within `trust`, or one read shows its
        // ports still there (another tool may have rewritten the list since the writer last
        // looked — then the writer puts them back, and the grant is answered after that write,
        // as outside the stripe).
        let fast = listed && (!add || self.inner.stripe_still_listed(&mut state, range));
        let State { counts, ours, .. } = &mut *state;
        count(counts, ours, range, add);
        if fast {
            return Ack::Done;
        }
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

    /// The ports counted again from the table, and a write if they differ from what was
    /// counted (a change lost between the table and this consumer): the writer then lists
    /// exactly the table's reservations again.
    fn resync(&self, table: &berth_core::Table) -> Result<(), MirrorError> {
        let mut counts = vec![0u8; 65536];
        let mut ours = PortSet::new();
        for r in table.iter() {
            count(&mut counts, &mut ours, r.range, true);
        }
        let mut state = self.inner.lock();
        if state.counts == counts {
            return Ok(());
        }
        tracing::info!("re-synchronising the kernel's reserved-ports list with the table");
        state.counts = counts;
        state.ours = ours;
        state.dirty = true;
        drop(state);
        self.inner.wake.notify_one();
        Ok(())
    }
}

impl Sync {
    /// What the books say of the list, as of the last write.
    pub(crate) fn figures(&self) -> Figures {
        Figures(self.inner.clone())
    }

    /// A handle to wait until the list has caught up with the table.
    pub(crate) fn listing(&self) -> Listing {
        Listing(self.inner.clone())
    }
}

/// See [`Sync::figures`].
#[derive(Clone)]
pub(crate) struct Figures(Arc<Inner>);

impl Figures {
    /// The figures of the last write.
    pub(crate) fn now(&self) -> ListFigures {
        *self
            .0
            .figures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
        self.abandoned || self.stop.is_some() || (self.dirty && self.started)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the list holds every port of `range` (in the stripe): seen so within
    /// `trust`, or now (one read of the file; `false` when it cannot be read).
    fn stripe_still_listed(&self, state: &mut State, range: PortRange) -> bool {
        if state
            .ahead_seen_at
            .is_some_and(|at| at.elapsed() < self.trust)
        {
            return true;
        }
        let mut buf = self
            .check_buf
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Ok(list) = reserved_ports::read_with(&self.path, &mut buf) else {
            return false;
        };
        if state.ahead.difference(&list).is_empty() {
            state.ahead_seen_at = Some(Instant::now());
        }
        range.ports().all(|p| list.contains(p))
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
}
