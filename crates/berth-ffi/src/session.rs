//! The process-wide session: one connection to the daemon, opened on first use, and the
//! reservations acquired through the C API, which live in it until they are released or the
//! process exits.
//!
//! A forked child is another process: it is not the owner of its parent's reservations, and
//! the connection and runtime it inherited are not its own (the runtime's other threads did not
//! survive the fork). On its first call the child leaves the inherited session alone — never
//! drops it, which would release the parent's reservations or touch the dead runtime — and
//! opens a session of its own. The session lives in a per-process [`Slot`] rather than in a
//! plain `static Mutex`, so that a child forked while another thread held the lock does not
//! wait forever for a lock no thread of its own will release.
//!
//! # After an outage
//! The client reconnects by itself across daemon restarts and re-claims what it holds. Only a
//! daemon unreachable for longer than the reconnection window ends the session — found by the
//! call that fails meanwhile, or, when the process made none, by the next call, which sees the
//! client has given up (`Slot::end`). The tokens it held are remembered (`Slot::orphaned`), and
//! the call that opens the next session re-claims them all before it does anything else,
//! whether it names one or not (the daemon keeps a restarted journal's reservations for their
//! owners for a grace period, and refuses their use until they are re-claimed). One that
//! cannot be re-claimed is reported lost by the next call that names it (not-found, `ENOENT`,
//! with a message that says so) — never "ok" for a reservation this process no longer holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use berth::blocking::{Client, Reservation};
use berth::{Protocol, Token};
use rustix::process::{getpid, Pid};

use crate::error::Failure;

/// The session and what was acquired through it.
struct State {
    /// Tells this session from a later one (after a lost connection), so that an outcome is
    /// never recorded in a session other than the one it happened in.
    generation: u64,
    client: Client,
    /// Reservations acquired through the C API, by token value. They are released on
    /// `berth_release_port_reservation`; at exit the kernel closes the connection and the
    /// daemon releases them.
    held: HashMap<u64, Reservation>,
}

/// One process's session. Never freed: a forked child leaks its parent's slot.
struct Slot {
    /// The process this slot belongs to; any other pid means we are a forked child.
    pid: Pid,
    /// `None` until the first call that needs the daemon. Locked only for short sections,
    /// never across a daemon call (except those that open a session: the connect, so that a
    /// process opens one session at a time, and the re-claims of the last one's tokens). A
    /// poisoned lock is used as is: every section leaves the state whole.
    state: Mutex<Option<State>>,
    /// Reservations held by a session that ended (see "After an outage"), by token value, until
    /// the next session re-claims them or a call names a lost one. Bounded by what the process
    /// acquired.
    orphaned: Mutex<HashMap<u64, Orphan>>,
}

/// A reservation of a session that ended.
enum Orphan {
    /// Not re-claimed yet: re-claimed before its next use.
    Unclaimed,
    /// The daemon would not give it back: the failure the next call that names it reports.
    Lost(Failure),
}

/// The current process's slot: null until the first call, and a leaked `Box<Slot>` after.
static SLOT: AtomicPtr<Slot> = AtomicPtr::new(ptr::null_mut());

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// This process's slot, made on its first call (and on a forked child's first call).
fn slot() -> &'static Slot {
    let pid = getpid();
    loop {
        let current = SLOT.load(Ordering::Acquire);
        // SAFETY: SLOT holds null or a pointer from `Box::into_raw` below, never freed, so it
        // is valid for 'static; a Slot is only read through shared references.
        if let Some(slot) = unsafe { current.as_ref() } {
            if slot.pid == pid {
                return slot;
            }
        }
        let fresh = Box::into_raw(Box::new(Slot {
            pid,
            state: Mutex::new(None),
            orphaned: Mutex::new(HashMap::new()),
        }));
        match SLOT.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: `fresh` came from Box::into_raw just above and is never freed.
            Ok(_) => return unsafe { &*fresh },
            Err(_) => {
                // Another thread of this process installed a slot first: use that one.
                // SAFETY: `fresh` came from Box::into_raw above and nobody else has seen it.
                drop(unsafe { Box::from_raw(fresh) });
            }
        }
    }
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<State>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn orphaned(&self) -> MutexGuard<'_, HashMap<u64, Orphan>> {
        self.orphaned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the session `generation`, whose client gave up on its daemon, unless a later one
    /// replaced it already: its tokens are re-claimed when the next session opens.
    fn end(&self, generation: u64) {
        let dead = {
            let mut guard = self.lock();
            if guard.as_ref().is_some_and(|s| s.generation == generation) {
                guard.take()
            } else {
                None
            }
        };
        // Outside the lock: each held reservation's release fails at once on the closed
        // connection.
        if let Some(dead) = &dead {
            let mut orphaned = self.orphaned();
            for &token in dead.held.keys() {
                orphaned.insert(token, Orphan::Unclaimed);
            }
        }
        drop(dead);
    }
}

/// A session as one call sees it: the client to call through, without the lock held.
struct Session {
    slot: &'static Slot,
    client: Client,
    generation: u64,
}

/// The longest reconnection window `BERTH_RECONNECT_WINDOW_S` may set: an hour.
const MAX_RECONNECT_WINDOW_S: u64 = 3600;

/// The client's options: the defaults, with the reconnection window from
/// `BERTH_RECONNECT_WINDOW_S` (seconds, at most an hour) when set — a C program has no other
/// way to choose it.
fn options() -> berth::Options {
    let window = std::env::var("BERTH_RECONNECT_WINDOW_S")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| std::time::Duration::from_secs(s.min(MAX_RECONNECT_WINDOW_S)));
    match window {
        Some(window) => berth::Options::default().reconnect_window(window),
        None => berth::Options::default(),
    }
}

/// This process's session, opened if there is none yet or its client gave up on its daemon
/// (see "After an outage").
fn session() -> Result<Session, Failure> {
    let slot = slot();
    let mut guard = loop {
        let guard = slot.lock();
        match guard.as_ref() {
            Some(state) if state.client.is_open() => {
                return Ok(Session {
                    slot,
                    client: state.client.clone(),
                    generation: state.generation,
                })
            }
            // The daemon stayed away while this process made no call: end the session as a
            // call that failed meanwhile would have, and open the next.
            Some(state) => {
                let generation = state.generation;
                drop(guard);
                slot.end(generation);
            }
            None => break guard,
        }
    };
    // No daemon autostart from a library: the CLI's on-demand start is the CLI's business.
    let client = Client::connect_with(options())?;
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    // Re-claim what the last session held before any call of this one, under the lock like
    // the connect, so that no other thread uses a token before it is re-claimed and the grace
    // period does not pass while the process makes calls that name none. A failure that may
    // pass leaves the token for its next use to try again.
    let mut held = HashMap::new();
    let unclaimed: Vec<u64> = slot
        .orphaned()
        .iter()
        .filter(|(_, orphan)| matches!(orphan, Orphan::Unclaimed))
        .map(|(&token, _)| token)
        .collect();
    for token in unclaimed.into_iter().filter_map(Token::new) {
        match client.reclaim(token) {
            Ok(reservation) => {
                slot.orphaned().remove(&token.get());
                held.insert(token.get(), reservation);
            }
            Err(e) => {
                if let Some(lost) = lost(token, &e) {
                    slot.orphaned().insert(token.get(), Orphan::Lost(lost));
                }
            }
        }
    }
    *guard = Some(State {
        generation,
        client: client.clone(),
        held,
    });
    Ok(Session {
        slot,
        client,
        generation,
    })
}

impl Session {
    /// Turns a client error into a failure. A client that gave up on its daemon (the client
    /// reconnects by itself across daemon restarts, and gives up only when none answers for
    /// long) also ends this session, so that the next call connects afresh.
    fn fail(&self, e: berth::Error) -> Failure {
        if matches!(e, berth::Error::Unavailable(_)) && !self.client.is_open() {
            self.slot.end(self.generation);
        }
        Failure::from(e)
    }

    /// Re-claims `token` on this session first if it belonged to a session that ended and the
    /// opening of this one did not re-claim it (see "After an outage"); the failure when it is
    /// lost.
    fn adopt(&self, token: Token) -> Result<(), Failure> {
        let orphan = self.slot.orphaned().remove(&token.get());
        match orphan {
            None => return Ok(()),
            Some(Orphan::Lost(failure)) => return Err(failure),
            Some(Orphan::Unclaimed) => {}
        }
        match self.client.reclaim(token) {
            Ok(reservation) => {
                let mut guard = self.slot.lock();
                match guard.as_mut() {
                    Some(state) if state.generation == self.generation => {
                        state.held.insert(token.get(), reservation);
                    }
                    _ => {
                        // This session ended too meanwhile: the token waits for the next.
                        drop(guard);
                        self.orphan_again(token);
                        drop(reservation);
                    }
                }
                Ok(())
            }
            Err(e) => match lost(token, &e) {
                Some(lost) => Err(lost),
                None => {
                    self.orphan_again(token);
                    Err(self.fail(e))
                }
            },
        }
    }

    /// Puts `token` back among those to re-claim, unless the session open now holds it: a
    /// session opened by another thread meanwhile may have re-claimed it (this thread had
    /// taken it out of the orphans only for a moment), and a token marked unclaimed there
    /// would be re-claimed again — refused as not this session's to take, and reported lost.
    fn orphan_again(&self, token: Token) {
        let guard = self.slot.lock();
        let held_now = guard
            .as_ref()
            .is_some_and(|state| state.held.contains_key(&token.get()));
        if !held_now {
            self.slot.orphaned().insert(token.get(), Orphan::Unclaimed);
        }
    }
}

/// The failure that reports `token` lost when `e`, the daemon's answer to its re-claim, says
/// the reservation is gone (its owner is this process, so a refusal means that too); `None`
/// for a failure that may pass.
fn lost(token: Token, e: &berth::Error) -> Option<Failure> {
    matches!(
        e,
        berth::Error::NotFound(_) | berth::Error::PermissionDenied(_)
    )
    .then(|| {
        Failure::new(
            berth::ErrorKind::NotFound,
            format!(
                "reservation {token} was lost while the berth daemon could not be reached (longer than the client's reconnection window): {}; its ports may be handed to others — acquire again",
                e.message()
            ),
        )
    })
}

/// What an acquire returns to C: start, count, token.
pub(crate) struct Acquired {
    pub(crate) start: u16,
    pub(crate) count: u16,
    pub(crate) token: u64,
}

/// Acquires a held block with `options` (label, bounds) and keeps it in the session.
pub(crate) fn acquire(
    protocol: Protocol,
    start: u16,
    count: u16,
    options: &berth::AcquireOptions,
) -> Result<Acquired, Failure> {
    let session = session()?;
    let reservation = session
        .client
        .acquire_with(protocol, start, count, options)
        .map_err(|e| session.fail(e))?;
    let acquired = Acquired {
        start: reservation.start(),
        count: reservation.count(),
        token: reservation.token().get(),
    };
    let mut guard = session.slot.lock();
    match guard.as_mut() {
        Some(state) if state.generation == session.generation => {
            state.held.insert(acquired.token, reservation);
            Ok(acquired)
        }
        _ => {
            // The session ended while we waited (its connection was lost): so did the
            // reservation. Release outside the lock.
            drop(guard);
            drop(reservation);
            Err(Failure::from(berth::Error::Unavailable(
                "the connection to the berth daemon was lost during the call; retry".into(),
            )))
        }
    }
}

/// Binds `fd` from the reservation `token` (held here or not: the daemon decides).
pub(crate) fn associate(
    token: Token,
    fd: BorrowedFd<'_>,
    address: Option<IpAddr>,
    port: Option<u16>,
) -> Result<u16, Failure> {
    let session = session()?;
    session.adopt(token)?;
    session
        .client
        .associate_port_raw(token.get(), fd, address, port)
        .map_err(|e| session.fail(e))
}

/// Releases `token`: one acquired here is taken out of the session and released; any other
/// goes to the daemon as is, which answers not-found or permission-denied as the case is.
pub(crate) fn release(token: Token) -> Result<(), Failure> {
    let session = session()?;
    session.adopt(token)?;
    let held = {
        let mut guard = session.slot.lock();
        guard
            .as_mut()
            .filter(|state| state.generation == session.generation)
            .and_then(|state| state.held.remove(&token.get()))
    };
    let result = match held {
        Some(reservation) => reservation.release(),
        None => session.client.release(token).map(drop),
    };
    result.map_err(|e| session.fail(e))
}

/// Creates a persistent reservation; returns its token.
pub(crate) fn create_persistent(
    protocol: Protocol,
    start: u16,
    count: u16,
) -> Result<u64, Failure> {
    let session = session()?;
    session
        .client
        .create_persistent(protocol, start, count, &berth::Allow::default())
        .map(|info| info.token.get())
        .map_err(|e| session.fail(e))
}

/// Deletes the persistent reservation of exactly this range.
pub(crate) fn delete_persistent(protocol: Protocol, start: u16, count: u16) -> Result<(), Failure> {
    let session = session()?;
    session
        .client
        .delete_persistent(protocol, start, count)
        .map(drop)
        .map_err(|e| session.fail(e))
}

/// The token of the persistent reservation of exactly this range.
pub(crate) fn lookup_persistent(
    protocol: Protocol,
    start: u16,
    count: u16,
) -> Result<u64, Failure> {
    let session = session()?;
    session
        .client
        .lookup_persistent(protocol, start, count)
        .map(Token::get)
        .map_err(|e| session.fail(e))
}

/// Publishes the port the bound socket `fd` has under `name` (see `Client::publish_socket`).
pub(crate) fn publish(fd: BorrowedFd<'_>, name: &str) -> Result<Acquired, Failure> {
    let session = session()?;
    let r = session
        .client
        .publish_socket(name, fd)
        .map_err(|e| session.fail(e))?;
    Ok(Acquired {
        start: r.range.start(),
        count: r.range.count(),
        token: r.token.get(),
    })
}

/// The reservation of `protocol` named `name` (see `Client::lookup_name`), once it exists —
/// with `bound`, once a socket is bound to it — when `wait` is given; at once otherwise.
pub(crate) fn named(
    protocol: Protocol,
    name: &str,
    wait: Option<(bool, std::time::Duration)>,
) -> Result<Acquired, Failure> {
    let session = session()?;
    let found = match wait {
        None => session.client.lookup_name(None, name),
        Some((bound, timeout)) => session.client.wait_name(None, name, bound, timeout),
    }
    .map_err(|e| session.fail(e))?;
    let r = found
        .iter()
        .find(|r| r.protocol == protocol)
        .ok_or_else(|| {
            Failure::from(berth::Error::NotFound(format!(
                "the name {name} has no {protocol} reservation; ask for its other protocol"
            )))
        })?;
    Ok(Acquired {
        start: r.range.start(),
        count: r.range.count(),
        token: r.token.get(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use berth_core::Pool;
    use berth_daemon::{bind_socket, Config, SocketGuard};
    use tokio::sync::oneshot;

    use crate::{
        berth_acquire_port_reservation, berth_port_range, berth_port_reservation_instance,
    };

    /// The pool of every daemon of these tests.
    const POOL: (u16, u16) = (26300, 26309);

    /// A daemon the test started: the sender that stops it, its task, its socket.
    type Daemon = (
        oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
        SocketGuard,
    );

    /// A daemon on `socket` and the database beside it, served by `rt` until [`stop`]ped.
    fn daemon(rt: &tokio::runtime::Runtime, socket: &Path) -> Daemon {
        daemon_on(rt, socket, &socket.with_extension("db"), |_| {})
    }

    /// [`daemon`] on the database `db`, its configuration changed by `configure`.
    fn daemon_on(
        rt: &tokio::runtime::Runtime,
        socket: &Path,
        db: &Path,
        configure: impl FnOnce(&mut Config),
    ) -> Daemon {
        let (listener, guard) = rt.block_on(async { bind_socket(socket) }).unwrap();
        let mut config = Config::new(
            socket.to_owned(),
            db.to_owned(),
            Pool::new(POOL.0, POOL.1).unwrap(),
        );
        // Several test daemons share this network namespace, each with a pool of its own.
        config.authority = None;
        configure(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = rt.spawn(async move {
            berth_daemon::run(listener, config, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        (stop, task, guard)
    }

    /// Stops `daemon` and takes its socket away: no daemon answers until the next starts.
    fn stop(rt: &tokio::runtime::Runtime, (stop, task, guard): Daemon) {
        let _ = stop.send(());
        rt.block_on(task).unwrap();
        drop(guard);
    }

    /// Waits until the session's client has given up on its daemon — the reconnection window
    /// passed with no daemon — while this process makes no call.
    fn until_the_client_gives_up() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while super::slot()
            .lock()
            .as_ref()
            .is_some_and(|state| state.client.is_open())
        {
            assert!(Instant::now() < deadline, "the client never gave up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn acquire() -> (i32, Option<i32>, u64) {
        let range = berth_port_range {
            start_port: 0,
            number_of_ports: 1,
        };
        let mut out = berth_port_reservation_instance {
            reservation: range,
            token: 0,
        };
        // SAFETY: both pointers point to live locals.
        let rc = unsafe { berth_acquire_port_reservation(libc::IPPROTO_TCP, &range, &mut out) };
        (
            rc,
            std::io::Error::last_os_error().raw_os_error(),
            out.token,
        )
    }

    /// `berth_associate_port_reservation` of a fresh TCP socket from `token`: its result and
    /// errno.
    fn associate(token: u64) -> (i32, Option<i32>) {
        let socket = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )
        .unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        // SAFETY: a null address is allowed (the wildcard address of the socket's family).
        let rc = unsafe { crate::berth_associate_port_reservation(fd, token, std::ptr::null(), 0) };
        (rc, std::io::Error::last_os_error().raw_os_error())
    }

    /// The last error message of this thread.
    fn last_message() -> String {
        // SAFETY: the message is a NUL-terminated string valid until the next call.
        unsafe { std::ffi::CStr::from_ptr(crate::berth_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    /// The only test in this binary that uses the process-wide session (and BERTH_SOCKET).
    #[test]
    fn a_daemon_restart_keeps_the_session_and_its_reservations() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("berth.sock");
        std::env::set_var("BERTH_SOCKET", &socket);
        // Outages longer than this end the session (read when it is opened).
        std::env::set_var("BERTH_RECONNECT_WINDOW_S", "1");

        let running = daemon(&rt, &socket);
        let (rc, _, token) = acquire();
        assert_eq!(rc, 0);
        stop(&rt, running);

        // A new daemon on the same socket and database: the client reconnects by itself and
        // re-claims the reservation; the next call simply works.
        let running = daemon(&rt, &socket);
        assert_eq!(acquire().0, 0);
        // The first reservation is still this process's: releasing it succeeds.
        assert_eq!(crate::berth_release_port_reservation(token), 0);

        // An outage longer than the reconnection window ends the session: the call made
        // meanwhile fails as unavailable. The next daemon keeps the reservation for its owner,
        // and the next call re-claims it before using it.
        let (rc, _, token) = acquire();
        assert_eq!(rc, 0);
        stop(&rt, running);
        assert_eq!(associate(token), (-1, Some(libc::ECONNREFUSED)));
        let running = daemon(&rt, &socket);
        assert_eq!(associate(token).0, 0, "re-claimed, then bound");
        assert_eq!(crate::berth_release_port_reservation(token), 0);

        // Lost: the next daemon knows nothing of it (another database, as if its grace period
        // had passed). The call says so — never 0.
        let (rc, _, token) = acquire();
        assert_eq!(rc, 0);
        stop(&rt, running);
        assert_eq!(associate(token), (-1, Some(libc::ECONNREFUSED)));
        let other_db = socket.with_extension("other.db");
        let running = daemon_on(&rt, &socket, &other_db, |_| {});
        assert_eq!(associate(token), (-1, Some(libc::ENOENT)));
        let message = last_message();
        assert!(message.contains("was lost while"), "{message}");

        let running = the_first_call_after_an_unnoticed_outage_reclaims(&rt, &socket, running);
        let running = a_plain_first_call_after_an_unnoticed_outage_reclaims(&rt, &socket, running);
        a_reservation_lost_in_an_unnoticed_outage_is_reported_lost(&rt, &socket, running);
    }

    /// An outage longer than the reconnection window during which the process makes no call:
    /// the first call after it, one that names the reservation, re-claims it and uses it.
    /// Starts with `running` on the database `other.db` and returns the daemon it leaves.
    fn the_first_call_after_an_unnoticed_outage_reclaims(
        rt: &tokio::runtime::Runtime,
        socket: &Path,
        running: Daemon,
    ) -> Daemon {
        let db = socket.with_extension("other.db");
        let (rc, _, token) = acquire();
        assert_eq!(rc, 0);
        stop(rt, running);
        until_the_client_gives_up();
        let running = daemon_on(rt, socket, &db, |_| {});
        let (rc, errno) = associate(token);
        assert_eq!(
            rc,
            0,
            "re-claimed, then bound: {errno:?} {}",
            last_message()
        );
        assert_eq!(crate::berth_release_port_reservation(token), 0);
        running
    }

    /// As above, but the first call after the outage names no reservation: it re-claims the
    /// session's reservations all the same, so that the daemon's grace period does not end
    /// them while the process is busy with other calls.
    fn a_plain_first_call_after_an_unnoticed_outage_reclaims(
        rt: &tokio::runtime::Runtime,
        socket: &Path,
        running: Daemon,
    ) -> Daemon {
        const GRACE: Duration = Duration::from_secs(1);
        let db = socket.with_extension("other.db");
        let (rc, _, token) = acquire();
        assert_eq!(rc, 0);
        stop(rt, running);
        until_the_client_gives_up();
        let running = daemon_on(rt, socket, &db, |config| config.grace = GRACE);
        let (rc, errno, plain) = acquire();
        assert_eq!(rc, 0, "a plain call: {errno:?} {}", last_message());
        // Only a re-claimed reservation outlives the grace period.
        std::thread::sleep(GRACE * 2);
        let (rc, errno) = associate(token);
        assert_eq!(
            rc,
            0,
            "re-claimed by the plain call: {errno:?} {}",
            last_message()
        );
        assert_eq!(crate::berth_release_port_reservation(token), 0);
        assert_eq!(crate::berth_release_port_reservation(plain), 0);
        running
    }

    /// As above, but the next daemon does not have the reservation: a plain first call
    /// succeeds, and the first that names the reservation reports it lost — never 0, never
    /// unavailable.
    fn a_reservation_lost_in_an_unnoticed_outage_is_reported_lost(
        rt: &tokio::runtime::Runtime,
        socket: &Path,
        running: Daemon,
    ) {
        let (rc, _, token) = acquire();
        assert_eq!(rc, 0);
        stop(rt, running);
        until_the_client_gives_up();
        let running = daemon_on(rt, socket, &socket.with_extension("third.db"), |_| {});
        let (rc, errno, _) = acquire();
        assert_eq!(rc, 0, "a plain call: {errno:?} {}", last_message());
        assert_eq!(associate(token), (-1, Some(libc::ENOENT)));
        let message = last_message();
        assert!(message.contains("was lost while"), "{message}");
        stop(rt, running);
    }
}
