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
//! daemon unreachable for longer than the reconnection window ends the session; the tokens
//! it held are remembered (`Slot::orphaned`), and the next call that names one re-claims it
//! on the new session first (the daemon keeps a restarted journal's reservations for their
//! owners for a grace period, and refuses their use until they are re-claimed). One that
//! cannot be re-claimed is reported lost (not-found, `ENOENT`, with a message that says so) —
//! never "ok" for a reservation this process no longer holds.

use std::collections::{HashMap, HashSet};
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
    /// never across a daemon call (except the connect of the first call, so that a process
    /// opens one session only). A poisoned lock is used as is: every section leaves the state
    /// whole.
    state: Mutex<Option<State>>,
    /// Tokens of reservations held by a session that ended (see "After an outage"): re-claimed
    /// on the next session before their first use. Bounded by what the process acquired.
    orphaned: Mutex<HashSet<u64>>,
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
            orphaned: Mutex::new(HashSet::new()),
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

    fn orphaned(&self) -> MutexGuard<'_, HashSet<u64>> {
        self.orphaned.lock().unwrap_or_else(PoisonError::into_inner)
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

/// This process's session, opened if there is none yet.
fn session() -> Result<Session, Failure> {
    let slot = slot();
    let mut guard = slot.lock();
    if let Some(state) = guard.as_ref() {
        return Ok(Session {
            slot,
            client: state.client.clone(),
            generation: state.generation,
        });
    }
    // No daemon autostart from a library: the CLI's on-demand start is the CLI's business.
    let client = Client::connect_with(options())?;
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    *guard = Some(State {
        generation,
        client: client.clone(),
        held: HashMap::new(),
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
            let dead = {
                let mut guard = self.slot.lock();
                if guard
                    .as_ref()
                    .is_some_and(|s| s.generation == self.generation)
                {
                    guard.take()
                } else {
                    None
                }
            };
            // Their tokens are re-claimed on the next session; outside the lock, each held
            // reservation's release fails at once on the closed connection.
            if let Some(dead) = &dead {
                self.slot.orphaned().extend(dead.held.keys().copied());
            }
            drop(dead);
        }
        Failure::from(e)
    }

    /// Re-claims `token` on this session first if it belonged to a session that ended (see
    /// "After an outage"); the failure when it is lost.
    fn adopt(&self, token: Token) -> Result<(), Failure> {
        if !self.slot.orphaned().remove(&token.get()) {
            return Ok(());
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
                        self.slot.orphaned().insert(token.get());
                        drop(reservation);
                    }
                }
                Ok(())
            }
            Err(e @ (berth::Error::NotFound(_) | berth::Error::PermissionDenied(_))) => {
                Err(Failure::new(
                    berth::ErrorKind::NotFound,
                    format!(
                        "reservation {token} was lost while the berth daemon could not be reached (longer than the client's reconnection window): {}; its ports may be handed to others — acquire again",
                        e.message()
                    ),
                ))
            }
            Err(e) => {
                self.slot.orphaned().insert(token.get());
                Err(self.fail(e))
            }
        }
    }
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

    use berth_core::Pool;
    use berth_daemon::{bind_socket, Config, SocketGuard};
    use tokio::sync::oneshot;

    use crate::{
        berth_acquire_port_reservation, berth_port_range, berth_port_reservation_instance,
    };

    /// A daemon on `socket`, served by `rt` until the returned sender is used.
    fn daemon(
        rt: &tokio::runtime::Runtime,
        socket: &Path,
        pool: (u16, u16),
    ) -> (
        oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
        SocketGuard,
    ) {
        daemon_on(rt, socket, &socket.with_extension("db"), pool)
    }

    /// [`daemon`] on the database `db`.
    fn daemon_on(
        rt: &tokio::runtime::Runtime,
        socket: &Path,
        db: &Path,
        pool: (u16, u16),
    ) -> (
        oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
        SocketGuard,
    ) {
        let (listener, guard) = rt.block_on(async { bind_socket(socket) }).unwrap();
        let mut config = Config::new(
            socket.to_owned(),
            db.to_owned(),
            Pool::new(pool.0, pool.1).unwrap(),
        );
        // Several test daemons share this network namespace, each with a pool of its own.
        config.authority = None;
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

        let (stop, task, guard) = daemon(&rt, &socket, (26300, 26309));
        let (rc, _, token) = acquire();
        assert_eq!(rc, 0);
        let _ = stop.send(());
        rt.block_on(task).unwrap();
        drop(guard);

        // A new daemon on the same socket and database: the client reconnects by itself and
        // re-claims the reservation; the next call simply works.
        let (stop, task, guard) = daemon(&rt, &socket, (26300, 26309));
        assert_eq!(acquire().0, 0);
        // The first reservation is still this process's: releasing it succeeds.
        assert_eq!(crate::berth_release_port_reservation(token), 0);

        // An outage longer than the reconnection window ends the session: the call made
        // meanwhile fails as unavailable. The next daemon keeps the reservation for its owner,
        // and the next call re-claims it before using it.
        let (rc, _, token) = acquire();
        assert_eq!(rc, 0);
        let _ = stop.send(());
        rt.block_on(task).unwrap();
        drop(guard);
        assert_eq!(associate(token), (-1, Some(libc::ECONNREFUSED)));
        let (stop, task, guard) = daemon(&rt, &socket, (26300, 26309));
        assert_eq!(associate(token).0, 0, "re-claimed, then bound");
        assert_eq!(crate::berth_release_port_reservation(token), 0);

        // Lost: the next daemon knows nothing of it (another database, as if its grace period
        // had passed). The call says so — never 0.
        let (rc, _, token) = acquire();
        assert_eq!(rc, 0);
        let _ = stop.send(());
        rt.block_on(task).unwrap();
        drop(guard);
        assert_eq!(associate(token), (-1, Some(libc::ECONNREFUSED)));
        let other_db = socket.with_extension("other.db");
        let (stop, task, guard) = daemon_on(&rt, &socket, &other_db, (26300, 26309));
        assert_eq!(associate(token), (-1, Some(libc::ENOENT)));
        // SAFETY: the message is a NUL-terminated string valid until the next call.
        let message = unsafe { std::ffi::CStr::from_ptr(crate::berth_last_error_message()) }
            .to_string_lossy()
            .into_owned();
        assert!(message.contains("was lost while"), "{message}");
        let _ = stop.send(());
        rt.block_on(task).unwrap();
        drop(guard);
    }
}
