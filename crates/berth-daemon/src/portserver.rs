//! The portserver endpoint: Google's `portpicker` protocol, so existing test suites get
//! race-free ports from berth unchanged (`PORTSERVER_ADDRESS=@unittest-portserver`).
//!
//! One request per connection: the client sends `"<pid>\n"`, the daemon answers `"<port>\n"`
//! and closes; a refusal is a close without a reply. Each answer is one number reserved in TCP
//! and UDP alike, owned by the process named (see `identity` for whom that is), not held, and
//! released when that process exits. See docs/portserver.md.
//!
//! # Layout
//! - this file: [`Address`] and [`Endpoint`] (what to serve where), binding the socket, and
//!   the accept loop — on threads of its own, waiting in `accept(2)` — with its own
//!   connection limit and per-connection deadlines;
//! - `identity`: whom a request's reservation belongs to, from the peer's kernel credentials;
//! - `state/portserver.rs`: the grant itself, through the table and the change stream.
//!
//! One thing, hence one file: the endpoint (its address, its socket, its accept loop and one
//! request's answer) is read as a whole; who the asker is lives in `portserver/identity.rs`.

use std::future::Future;
use std::io;
use std::os::unix::net::UnixListener as StdListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream as StdStream;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::session::closer::{Lane, Received};
use crate::state::Shared;

pub(crate) mod identity;

/// The address portpicker clients use by default (`PORTSERVER_ADDRESS`).
pub const DEFAULT_ADDRESS: &str = "@unittest-portserver";

/// The longest request read: a pid is at most 10 digits; anything longer is not a request.
pub const MAX_REQUEST: usize = 32;

/// Where the endpoint listens: `@name` is a name in the abstract namespace (scoped by the
/// network namespace, no file), anything else a filesystem path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An abstract socket name (without the leading `@`).
    Abstract(String),
    /// A socket file.
    Path(PathBuf),
}

/// Why a portserver address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Longer than a Unix socket address may be.
    #[error(
        "the portserver address {0:?} is longer than a Unix socket address may be (107 bytes)"
    )]
    TooLong(String),
    /// `@` alone.
    #[error("the portserver address \"@\" names no abstract socket; write @NAME (e.g. @unittest-portserver)")]
    NoName,
    /// Nothing at all.
    #[error("the portserver address is empty; write @NAME or a socket path")]
    Empty,
}

impl std::str::FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // sun_path holds 108 bytes; an abstract name uses one for its leading NUL.
        if s.len() > 107 {
            return Err(AddressError::TooLong(s.to_owned()));
        }
        match s.strip_prefix('@') {
            Some("") => Err(AddressError::NoName),
            Some(name) => Ok(Address::Abstract(name.to_owned())),
            None if s.is_empty() => Err(AddressError::Empty),
            None => Ok(Address::Path(PathBuf::from(s))),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Abstract(name) => write!(f, "@{name}"),
            Address::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The endpoint's settings.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where to listen.
    pub address: Address,
    /// When set, an address already taken (another portserver runs) is logged and the daemon
    /// serves without the endpoint; otherwise it refuses to start. The system daemon's default
    /// endpoint is optional; one asked for explicitly is not.
    pub optional: bool,
    /// Connections answered at once; more wait in the kernel's backlog, so connection churn
    /// never grows the daemon's tasks or memory without bound.
    pub max_connections: usize,
    /// How long a client may take to send its request (and to take the answer) before the
    /// connection is closed without a reply: a silent peer holds a permit this long at most.
    pub io_timeout: Duration,
}

impl Endpoint {
    /// The endpoint at `address`, required, with the default limits.
    pub fn new(address: Address) -> Self {
        Endpoint {
            address,
            optional: false,
            // Four times a user's limit (`max_connections_per_uid`, counted for this socket
            // and the main one together): no one user can take every place.
            max_connections: 1024,
            io_timeout: Duration::from_secs(5),
        }
    }
}

/// A bound endpoint; a socket file is removed when this is dropped (if it is still ours).
pub(crate) struct Bound {
    listener: StdListener,
    file: Option<(PathBuf, u64)>,
    /// The socket the service manager passed: shared with it, never shut down.
    adopted: bool,
}

impl Drop for Bound {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Some((path, ino)) = &self.file {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == *ino) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A socket the service manager bound for the endpoint (socket activation), and its address:
/// [`bind`] takes it instead of binding anew.
static ADOPTED: std::sync::Mutex<Option<(StdListener, Address)>> = std::sync::Mutex::new(None);

/// Hands the endpoint the listening socket systemd passed on `address`: the next [`bind`] of
/// that address takes it (it is systemd's: its name is never removed).
pub(crate) fn adopt(socket: StdListener, address: Address) {
    *ADOPTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((socket, address));
}

/// The adopted socket for `address`, ready to serve: refusing descriptors from now on
/// (connections made before keep taking them: the endpoint asks each connection of this socket
/// whether it refuses them).
fn adopted(address: &Address) -> io::Result<Option<StdListener>> {
    let mut slot = ADOPTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !slot.as_ref().is_some_and(|(_, a)| a == address) {
        return Ok(None);
    }
    let Some((listener, _)) = slot.take() else {
        return Ok(None);
    };
    if let Err(e) = crate::server::rights::pass_rights(&listener, false) {
        tracing::warn!("the portserver socket systemd passed cannot refuse descriptors: {e}");
    }
    Ok(Some(listener))
}

/// Who holds `address` (another process listens there): "pid P (uid U, COMMAND)", asked of
/// the listener itself — a connection's `SO_PEERCRED` names the process that called
/// `listen()`, which nothing it binds or names can fake — or what to run to find out.
pub(crate) fn holder(address: &Address) -> String {
    let asked = connect_nonblocking(address).and_then(|s| berth_os::peer::peer_credentials(&s));
    let Ok(listener) =
        asked.map_err(|e| tracing::debug!("cannot ask the holder of {address}: {e}"))
    else {
        return "another process (`ss -xlp` lists listening Unix sockets and their processes)"
            .to_owned();
    };
    let command = berth_os::proc::stat(listener.pid)
        .ok()
        .and_then(|stat| {
            berth_os::proc::comm_from_stat(&stat).map(berth_core::Owner::printable_command)
        })
        .unwrap_or_default();
    format!("pid {} (uid {}, {command})", listener.pid, listener.uid)
}

/// A connection to `address` that never waits (a full backlog is an error).
fn connect_nonblocking(address: &Address) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = match address {
        Address::Abstract(name) => SocketAddrUnix::new_abstract_name(name.as_bytes())?,
        Address::Path(path) => SocketAddrUnix::new(path.as_path())?,
    };
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::connect(&socket, &addr)?;
    Ok(socket)
}

/// Binds `address`. A socket file left by a daemon that is gone (connecting is refused) is
/// replaced; one that answers is not. The socket is world-connectable: any local process may
/// ask, and the answer depends only on who it is.
pub(crate) fn bind(address: &Address) -> io::Result<Bound> {
    let named = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the portserver endpoint {address}: {e}"),
        )
    };
    if let Some(listener) = adopted(address).map_err(named)? {
        tracing::info!("the portserver endpoint {address} is the socket systemd passed");
        return Ok(Bound {
            listener,
            file: None,
            adopted: true,
        });
    }
    // Requests carry no descriptors: the socket refuses them (see `rights`).
    let (listener, file) = match address {
        Address::Abstract(name) => (
            crate::server::rights::listen_abstract(name).map_err(named)?,
            None,
        ),
        Address::Path(path) => {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let listener = match crate::server::rights::listen_path(path) {
                Ok(l) => l,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    match std::os::unix::net::UnixStream::connect(path) {
                        Err(c) if c.kind() == io::ErrorKind::ConnectionRefused => {
                            std::fs::remove_file(path).map_err(named)?;
                            crate::server::rights::listen_path(path).map_err(named)?
                        }
                        _ => return Err(named(e)),
                    }
                }
                Err(e) => return Err(named(e)),
            };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
                .map_err(named)?;
            let ino = std::fs::symlink_metadata(path).map_err(named)?.ino();
            (listener, Some((path.clone(), ino)))
        }
    };
    Ok(Bound {
        listener,
        file,
        adopted: false,
    })
}

/// Answers portpicker requests on `bound` until `cancel`, on threads of its own
/// (`berth-portserver`, one per CPU the daemon may run on, at most [`MAX_THREADS`]) that
/// `tracker` waits for.
///
/// Each thread waits in `accept(2)` itself — the kernel wakes one thread per connection — and
/// answers the connection in place, as a blocking thread-per-listener server would: a wait and
/// an accept are one system call, where a reactor makes three, and nothing wakes the daemon's
/// runtime. An answer that must wait (its request has not arrived, or its turn has not come) is
/// handed to the daemon's runtime as a task of its own, on `tracker`.
///
/// Admission is the main socket's: a connection counts against its user's connection limit
/// (`per_uid`, shared with the main socket) before it takes one of the endpoint's
/// `endpoint.max_connections` places, and one refused for either is closed at once (the
/// protocol's refusal) and holds nothing. A connection that may hold descriptors is closed on
/// a closer thread of its user's (its receive queue may hold some on a kernel that cannot
/// refuse them); one that refuses them, in place. A connection in progress when `cancel`
/// fires is finished (each step has a deadline), and so is one accepted as it fires.
///
/// Called within the daemon's runtime.
pub(crate) fn spawn(
    bound: Bound,
    endpoint: &Endpoint,
    shared: Arc<Shared>,
    per_uid: Arc<crate::server::fair::PerUid>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> io::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    let acceptor = Arc::new(berth_os::accept::Acceptor::new(
        bound.listener.try_clone()?,
        !bound.adopted,
    )?);
    // Connections inherit the listener's refusal of descriptors as it was when they
    // connected: asked once here of a socket that refused them from the start, and of each
    // connection of one systemd passed (those queued before it was adopted take them).
    let inline = if bound.adopted {
        Inline::AskEach
    } else if berth_os::rights::refuses_rights(acceptor.get_ref()) {
        Inline::Yes
    } else {
        Inline::No
    };
    let serving = Arc::new(Serving {
        stopping: cancel.clone(),
        acceptor: acceptor.clone(),
        shared,
        per_uid,
        permits: Arc::new(Semaphore::new(endpoint.max_connections.max(1))),
        others: Arc::new(Semaphore::new(
            endpoint.max_connections.max(1)
                - crate::server::admin_reserve(endpoint.max_connections.max(1)),
        )),
        timeout: endpoint.io_timeout,
        inline,
        runtime: runtime.clone(),
        answers: tracker.clone(),
        // Keeps the socket file until the last thread ends.
        _bound: bound,
    });
    tracing::info!("answering portpicker requests on {}", endpoint.address);
    // The threads stop when `cancel` fires — or when this task is dropped without it (the
    // runtime shutting down, or this function failing below), never left in `accept`.
    let stopper = StopOnDrop(acceptor);
    let stop = stopper.0.clone();
    tracker.spawn(async move {
        let _stopper = stopper;
        cancel.cancelled().await;
    });
    for _ in 0..threads() {
        let serving = serving.clone();
        let running = tracker.token();
        let spawned = std::thread::Builder::new()
            .name("berth-portserver".into())
            .spawn(move || {
                serving.serve();
                // The socket file is removed (with the last thread's `Serving`) before the
                // daemon's stop, which waits for `running`, can end.
                drop(serving);
                drop(running);
            });
        if let Err(e) = spawned {
            stop.stop();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot start a thread of the portserver endpoint: {e}. The daemon's user may be at its limit of processes and threads: raise it (`ulimit -u`, or TasksMax= under systemd), or start the daemon without --portserver"
                ),
            ));
        }
    }
    Ok(())
}

/// Stops the acceptor when dropped.
struct StopOnDrop(Arc<berth_os::accept::Acceptor>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Whether the endpoint's connections refuse descriptors.
#[derive(Debug, Clone, Copy)]
enum Inline {
    /// All of them: the listener refused them before its first connection.
    Yes,
    /// None can be trusted to: the kernel cannot refuse them at the socket.
    No,
    /// Each says (`SO_PASSRIGHTS`): the listener was passed by systemd, and connections
    /// queued before it was adopted take them.
    AskEach,
}

impl Inline {
    fn of(self, stream: &StdStream) -> bool {
        match self {
            Inline::Yes => true,
            Inline::No => false,
            Inline::AskEach => berth_os::rights::refuses_rights(stream),
        }
    }
}

/// The most threads that accept and answer: past two, answers mostly wait for each other at
/// the table's lock.
pub(crate) const MAX_THREADS: usize = 2;

/// One per CPU this process may run on (its affinity), at most [`MAX_THREADS`].
fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, MAX_THREADS)
}

/// What the accepting threads share.
struct Serving {
    /// Fires at the daemon's stop: a connection still waiting for its request is closed then.
    stopping: CancellationToken,
    acceptor: Arc<berth_os::accept::Acceptor>,
    shared: Arc<Shared>,
    per_uid: Arc<crate::server::fair::PerUid>,
    permits: Arc<Semaphore>,
    /// The places of users other than administrators: as on the main socket, some are kept
    /// for administrators, so that users filling the endpoint never lock root out of it.
    others: Arc<Semaphore>,
    timeout: Duration,
    inline: Inline,
    /// Where answers that must wait run, and whose timers and reactor answers in place use.
    runtime: tokio::runtime::Handle,
    answers: TaskTracker,
    _bound: Bound,
}

impl Serving {
    /// One thread's accept loop, until the acceptor is stopped.
    fn serve(&self) {
        // Timers, and a registration with the reactor should an answer have to wait.
        let _entered = self.runtime.enter();
        let closers = self.shared.closers();
        while let Some(accepted) = self.acceptor.accept() {
            let stream = match accepted {
                Ok(stream) => {
                    crate::server::memory::accepted();
                    stream
                }
                Err(e) => {
                    if crate::server::limits::is_shortage(&e) {
                        crate::server::limits::log_shortage(
                            "the portserver endpoint cannot accept",
                        );
                    } else {
                        tracing::warn!("portserver accept failed: {e}");
                    }
                    // Out of descriptors (or worse): try again shortly, not in a busy loop.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let Ok(cred) = berth_os::peer::peer_credentials(&stream) else {
                closers.lane(u32::MAX).dispose(stream);
                continue;
            };
            let lane = closers.lane(cred.uid);
            // The user's limit first, then a shared place: a user at its limit takes none.
            let Ok(slot) = self.per_uid.enter(cred.uid) else {
                self.shared.portserver_counts.refused();
                crate::server::refusals::log(cred.uid, "portserver: refused a connection over the user's limit (max_connections_per_uid)");
                lane.dispose(stream);
                continue;
            };
            // An administrator (no slot: not counted per user) may take the places kept.
            let other = match &slot {
                None => None,
                Some(_) => match self.others.clone().try_acquire_owned() {
                    Ok(place) => Some(place),
                    Err(_) => {
                        self.shared.portserver_counts.refused();
                        crate::server::refusals::log(
                            cred.uid,
                            "portserver: refused a connection: the endpoint's places for users other than administrators are all in use",
                        );
                        lane.dispose((stream, slot));
                        continue;
                    }
                },
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.shared.portserver_counts.refused();
                crate::server::refusals::log(
                    cred.uid,
                    "portserver: refused a connection: the endpoint's connections are all in use",
                );
                lane.dispose((stream, slot, other));
                continue;
            };
            let inline = self.inline.of(&stream);
            let (shared, timeout) = (self.shared.clone(), self.timeout);
            // A connection taken after the stop began (from a socket systemd passed, within
            // its last look) would have been the next daemon's: it is answered, with its
            // deadline, rather than closed because the stop came first.
            let stopping = (!self.stopping.is_cancelled()).then(|| self.stopping.clone());
            let work = Box::pin(async move {
                let limits = Limits {
                    timeout,
                    stopping: stopping.as_ref(),
                };
                answer(stream, cred, &shared, limits, &lane, inline).await;
                drop((permit, slot, other));
            });
            self.answer_or_hand_over(work);
        }
    }

    /// Polls `work` once here: most answers need no wait (the request is there, the table
    /// free) and are given now. One that must wait goes to the daemon's runtime as a task of
    /// its own, whose first poll there registers its waker. A panic ends this answer only, as
    /// it would end its task.
    fn answer_or_hand_over(&self, mut work: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work.as_mut().poll(&mut cx)));
        match polled {
            Ok(Poll::Ready(())) => {}
            Ok(Poll::Pending) => {
                self.answers.spawn_on(work, &self.runtime);
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("a panic");
                tracing::error!("a portserver answer panicked ({why}); its connection is dropped");
            }
        }
    }
}

/// One connection: read the request, decide, answer or close; the connection is closed in
/// `lane` (its user's closer threads), or in place when it refuses descriptors (`inline`).
/// How long an answer may wait: each step's deadline, and the daemon's stop.
struct Limits<'a> {
    /// For the request to come, and for the answer to be taken.
    timeout: Duration,
    /// The daemon's stop: a connection whose request has not come is closed then (nothing is
    /// reserved for it yet), so that silent clients never delay a stop. `None` for one taken
    /// after the stop began.
    stopping: Option<&'a CancellationToken>,
}

async fn answer(
    stream: StdStream,
    cred: berth_os::peer::PeerCredentials,
    shared: &Shared,
    limits: Limits<'_>,
    lane: &Lane,
    inline: bool,
) {
    let Limits { timeout, stopping } = limits;
    let mut stream = Disposed::new(stream, lane, inline);
    let read = tokio::select! {
        // A request already received is answered even as the stop comes.
        biased;
        read = tokio::time::timeout(timeout, read_request(&mut stream, lane)) => read,
        () = async {
            match stopping {
                Some(stopping) => stopping.cancelled().await,
                None => std::future::pending().await,
            }
        } => {
            tracing::debug!(peer = cred.pid, "portserver: the daemon stops; a connection that sent no request is closed");
            return;
        }
    };
    let request = match read {
        Ok(Ok(Some(pid))) => pid,
        Ok(Ok(None)) => {
            shared.portserver_counts.refused();
            tracing::debug!(peer = cred.pid, "portserver: refused a malformed request");
            crate::server::refusals::log(
                cred.uid,
                "portserver: refused malformed requests (not a pid and a newline; see the log at debug)",
            );
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = cred.pid, "portserver: read failed: {e}");
            return;
        }
        Err(_) => {
            shared.portserver_counts.refused();
            tracing::debug!(peer = cred.pid, "portserver: no request within {timeout:?}");
            crate::server::refusals::log(
                cred.uid,
                "portserver: closed connections that sent no request within the deadline (5 s by default)",
            );
            return;
        }
    };
    // The peer, pinned: taken now that it has asked (a pidfd per connection only for those
    // that do).
    let pidfd = berth_os::peer::peer_pidfd(stream.fd()).ok().flatten();
    let port = match shared.portserver_request(request, cred, pidfd).await {
        Ok(port) => {
            shared.portserver_counts.answered();
            port
        }
        Err(why) => {
            shared.portserver_counts.refused();
            // Each at DEBUG; at INFO at most once per user every few seconds, with a count.
            tracing::debug!(
                peer = cred.pid,
                named = request,
                "portserver: refused: {why}"
            );
            crate::server::refusals::log(cred.uid, why.summary());
            return;
        }
    };
    let reply = format!("{port}\n");
    match tokio::time::timeout(timeout, stream.write_all(reply.as_bytes())).await {
        Ok(Ok(())) => {}
        // The process named keeps the port until it exits, as with Google's portserver.
        _ => tracing::debug!(port, "portserver: the client did not take its answer"),
    }
    // The client sees its end of file at the close: at once when the connection is closed in
    // place; a connection left to a closer thread is shut down first, so that a busy closer
    // never keeps the client waiting.
    if !inline {
        let _ = rustix::net::shutdown(stream.fd(), rustix::net::Shutdown::Write);
    }
}

/// A connection, registered with the reactor only once a read or a write would block: a
/// request already received and an answer that fits the socket's buffer (both a few bytes)
/// need no reactor at all — two `epoll_ctl` calls and a wake-up fewer per answer.
enum Conn {
    /// Not registered: tried directly.
    Plain(StdStream),
    /// Registered, to wait for readiness.
    Registered(UnixStream),
}

impl Conn {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Plain(s) => s.as_fd(),
            Conn::Registered(s) => s.as_fd(),
        }
    }
}

/// A connection closed on its user's closer threads when dropped, wherever the task ends —
/// or here (`inline`), when it refuses descriptors (`SO_PASSRIGHTS` off, inherited from the
/// listener on kernels that have it): then none can be queued on it, and its close cannot
/// block. That spares each answer a trip to a closer thread.
struct Disposed<'a> {
    stream: Option<Conn>,
    lane: &'a Lane,
    inline: bool,
}

impl<'a> Disposed<'a> {
    fn new(stream: StdStream, lane: &'a Lane, inline: bool) -> Self {
        Disposed {
            stream: Some(Conn::Plain(stream)),
            lane,
            inline,
        }
    }

    fn get(&self) -> &Conn {
        match &self.stream {
            Some(s) => s,
            None => unreachable!("only drop empties it"),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.get().fd()
    }

    /// The connection registered with the reactor (it is, from now on).
    fn registered(&mut self) -> io::Result<&mut UnixStream> {
        if let Some(Conn::Plain(plain)) = &self.stream {
            // A copy registered: should that fail (out of descriptors), the connection stays
            // as it was, to be disposed of as usual. The original's close is not the socket's
            // last, so it cannot block.
            let registered = UnixStream::from_std(plain.try_clone()?)?;
            self.stream = Some(Conn::Registered(registered));
        }
        match &mut self.stream {
            Some(Conn::Registered(s)) => Ok(s),
            _ => unreachable!("registered above"),
        }
    }

    /// Writes all of `bytes`: directly while the socket takes them, then through the reactor.
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        if let Some(Conn::Plain(plain)) = &self.stream {
            match std::io::Write::write(&mut &*plain, bytes) {
                Ok(n) => sent = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        match bytes.get(sent..) {
            Some(rest) if !rest.is_empty() => self.registered()?.write_all(rest).await,
            _ => Ok(()),
        }
    }
}

impl Drop for Disposed<'_> {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            if self.inline {
                drop(stream);
            } else {
                self.lane.dispose(stream);
            }
        }
    }
}

/// Reads `"<pid>\n"`: digits, optionally surrounded by ASCII whitespace, ended by a newline or
/// by the client's end of writing. `None` for anything else, or more than [`MAX_REQUEST`]
/// bytes without a newline.
///
/// Read with `recvmsg` and room for every descriptor a message can carry: on a kernel that
/// cannot refuse descriptors at the socket, any that arrive are closed in `lane`, never here.
async fn read_request(stream: &mut Disposed<'_>, lane: &Lane) -> io::Result<Option<u32>> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    let mut control =
        crate::session::inbound::control_buffer(crate::session::inbound::KERNEL_MAX_FDS);
    loop {
        let Some(room) = buf.get_mut(len..) else {
            return Ok(None);
        };
        if room.is_empty() {
            return Ok(None);
        }
        // A plain connection is read at once (its request is usually there); a registered one
        // once the reactor says it is readable.
        if let Some(Conn::Registered(registered)) = &stream.stream {
            registered.readable().await?;
        }
        // As on the main socket, on a kernel that cannot refuse descriptors at the socket: one
        // read of the user's at a time, once its closes do not back up, and only with room for
        // what a message may carry. A connection that refuses them (`inline`) is sent none, so
        // its reads need neither the turn nor the room — and the endpoint's threads never wait
        // for each other's reads.
        let turn = if stream.inline {
            None
        } else {
            Some(lane.read_turn().await)
        };
        if !stream.inline
            && !crate::server::limits::room_for(crate::session::inbound::KERNEL_MAX_FDS)
        {
            drop(turn);
            crate::server::limits::log_shortage(
                "the portserver endpoint pauses reading until descriptors are freed",
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let read = match stream.get() {
            Conn::Plain(plain) => crate::session::inbound::recv(plain.as_fd(), room, &mut control),
            Conn::Registered(registered) => registered
                .try_io(tokio::io::Interest::READABLE, || {
                    crate::session::inbound::recv(registered.as_fd(), room, &mut control)
                }),
        };
        drop(turn);
        let message = match read {
            Ok(message) => message,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing yet: wait for it through the reactor.
                stream.registered()?;
                continue;
            }
            Err(e) => return Err(e),
        };
        for fd in message.fds {
            drop(Received::new(fd, lane));
        }
        let n = message.bytes;
        if n == 0 {
            break;
        }
        let before = len;
        len += n;
        if buf.get(before..len).is_some_and(|new| new.contains(&b'\n')) {
            break;
        }
    }
    Ok(buf
        .get(..len)
        .and_then(berth_protocol::portpicker::parse_request))
}

#[cfg(test)]
mod tests;
