//! The async client.

use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use tokio::net::UnixStream;

use berth_core::{Kind, Protocol, Token};
use berth_protocol::{
    authority, paths, AcquireOptions, NameInfo, PortReport, Request, ReservationInfo, Response,
    StatusInfo,
};

use crate::autostart::{self, Starter};
use crate::connection::{Connection, Refused};
use crate::error::Error;
use crate::rendezvous::{self, Reached};
use crate::reservation::Reservation;

/// Who may bind sockets from a persistent reservation besides administrators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    /// User ids.
    pub users: Vec<u32>,
    /// Group ids.
    pub groups: Vec<u32>,
}

/// How a [`Client`] behaves; `Options::default()` is what [`Client::connect`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// When the daemon goes away (a restart, a crash), how long the client keeps trying to
    /// reach it again before it gives up; requests made meanwhile wait. Zero: give up at once.
    pub reconnect_window: std::time::Duration,
    /// How long connecting and the version handshake may take before the call fails with
    /// [`Error::Unavailable`] (a daemon at its connection limit leaves new clients waiting in
    /// the kernel's accept queue).
    pub connect_timeout: std::time::Duration,
    /// A user besides root and this process's own whose daemon is trusted (for example the
    /// service account of a system daemon); `None`: root or this user only. Checked with the
    /// kernel's credentials of the listening process before anything is sent.
    pub trusted_daemon_uid: Option<u32>,
    /// How long connecting tries again while the daemon answers "busy" at a connection limit
    /// (its own, or this user's), backing off; zero: report the first such answer at once.
    pub busy_retry: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reconnect_window: std::time::Duration::from_secs(30),
            connect_timeout: std::time::Duration::from_secs(10),
            trusted_daemon_uid: None,
            busy_retry: std::time::Duration::from_secs(10),
        }
    }
}

impl Options {
    /// These options, also trusting a daemon run by `uid`.
    pub fn trust_daemon_uid(mut self, uid: u32) -> Self {
        self.trusted_daemon_uid = Some(uid);
        self
    }

    /// These options with another bound on connecting and the handshake.
    pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// These options with another reconnection window.
    pub fn reconnect_window(mut self, window: std::time::Duration) -> Self {
        self.reconnect_window = window;
        self
    }

    /// These options with another time to keep trying while the daemon is busy.
    pub fn busy_retry(mut self, window: std::time::Duration) -> Self {
        self.busy_retry = window;
        self
    }
}

/// A connection to the berth daemon — the session that runtime reservations live in.
///
/// Cloning is cheap and shares the session. The session ends, and its runtime reservations
/// are released, when the last clone and the last [`Reservation`] made from it are dropped, or
/// when the process exits.
#[derive(Debug, Clone)]
pub struct Client {
    conn: Arc<Connection>,
    /// The daemon's network namespace, when it is not this process's (see
    /// [`Client::foreign_namespace`]).
    foreign: Option<ForeignNamespace>,
}

/// A daemon serving another network namespace than the client's: the socket file is shared by
/// every namespace of a host, and ports are reserved and checked per namespace, so its
/// reservations and its answers about ports are that namespace's. Read-only requests (list,
/// status) are served; grants are refused (not-supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignNamespace {
    /// The pid of the process that listens on the socket (`SO_PEERCRED`), as this process sees
    /// it: the daemon, or a service manager that made its socket.
    pub listener_pid: u32,
    /// Its network namespace, by the inode number of `/proc/PID/ns/net` (`net:[N]`).
    pub daemon_netns: u64,
    /// This process's.
    pub own_netns: u64,
}

/// The namespace of the process listening at the other end of `stream`, when it can be read
/// (`/proc/PID/ns/net`: root, or the daemon's own user) and is not this process's.
fn foreign_namespace_of(stream: &UnixStream) -> Option<ForeignNamespace> {
    use std::os::unix::fs::MetadataExt;
    let pid = berth_os::peer::peer_credentials(stream).ok()?.pid;
    if pid == 0 {
        return None;
    }
    let inode = |path: String| std::fs::metadata(path).ok().map(|m| m.ino());
    let theirs = inode(format!("/proc/{pid}/ns/net"))?;
    let ours = inode("/proc/self/ns/net".to_owned())?;
    (theirs != ours).then_some(ForeignNamespace {
        listener_pid: pid,
        daemon_netns: theirs,
        own_netns: ours,
    })
}

/// What the search for a daemon found.
enum Found {
    /// A daemon answered: the connection, or its refusal.
    Daemon(Result<Client, Error>),
    /// Nobody answered anywhere; why, as the error to report.
    Nobody(Error),
}

impl Client {
    /// Connects to the daemon found by the search of `docs/cli.md` ("Finding the daemon"):
    /// `$BERTH_SOCKET` if set; else the socket the authority beacon of this network namespace
    /// names, if root or this user holds it; else the system socket, then the per-user socket.
    /// Must be called inside a tokio runtime.
    ///
    /// Whoever listens must be root or this user (checked with `SO_PEERCRED` before anything
    /// is sent), and a per-user socket in a `/tmp` fallback directory is used only when that
    /// directory is private to this user; otherwise this fails with
    /// [`Error::PermissionDenied`] naming the socket and the impostor.
    pub async fn connect() -> Result<Self, Error> {
        Client::connect_with(Options::default()).await
    }

    /// [`Client::connect`] with `options`.
    pub async fn connect_with(options: Options) -> Result<Self, Error> {
        match Client::search(options).await? {
            Found::Daemon(answered) => answered,
            Found::Nobody(unavailable) => Err(unavailable),
        }
    }

    /// The search of [`Client::connect`], telling "a daemon answered" (with its answer, which
    /// may be a refusal such as "busy") from "nobody answered" (the only case in which starting
    /// a daemon on demand can help).
    async fn search(options: Options) -> Result<Found, Error> {
        let uid = rustix::process::getuid().as_raw();
        let explicit = std::env::var_os("BERTH_SOCKET").is_some();
        // The daemon that serves this network namespace first, when a trusted one says where
        // it is: a socket file can belong to another namespace's daemon (a /run shared with a
        // container, a test in `unshare -n`), which could not serve this namespace's ports.
        // Anyone else holding the beacon is passed over here, and named below if nothing
        // else answers.
        if !explicit {
            if let Some(path) = Client::trusted_authority(&options, uid).await {
                let reached =
                    rendezvous::reach(&path, options.connect_timeout, options.trusted_daemon_uid)
                        .await;
                if let Ok(Reached::Daemon(stream)) = reached {
                    return Ok(Found::Daemon(Client::open_at(stream, &path, options).await));
                }
            }
        }
        let candidates = paths::client_candidates(&paths::process_env, uid);
        let mut tried = Vec::new();
        for path in &candidates {
            let timeout = options.connect_timeout;
            match rendezvous::reach(path, timeout, options.trusted_daemon_uid).await? {
                Reached::Daemon(stream) => {
                    return Ok(Found::Daemon(Client::open_at(stream, path, options).await))
                }
                Reached::Nobody(why) => tried.push(format!("{}: {why}", path.display())),
            }
        }
        // None of the usual places answers; the daemon that serves this network namespace may
        // still be somewhere this environment does not point at (another XDG_RUNTIME_DIR under
        // cron, su or sudo -u): its authority beacon names its socket. An explicit
        // BERTH_SOCKET is never replaced by another daemon.
        if !explicit {
            if let Some(path) = Client::find_by_authority(&options, uid).await? {
                let timeout = options.connect_timeout;
                match rendezvous::reach(&path, timeout, options.trusted_daemon_uid).await? {
                    Reached::Daemon(stream) => {
                        return Ok(Found::Daemon(Client::open_at(stream, &path, options).await))
                    }
                    Reached::Nobody(why) => tried.push(format!("{}: {why}", path.display())),
                }
            }
        }
        Ok(Found::Nobody(Error::Unavailable(format!(
            "no berth daemon answers (tried {}); start one with `berth daemon` (`berth run` starts one on demand), or set BERTH_SOCKET to the socket of a running one",
            tried.join("; ")
        ))))
    }

    /// The socket a trusted holder of this namespace's authority beacon names — root, this
    /// user, or the trusted uid of `options` — asked without waiting on anyone else (see
    /// `berth_os::beacon::ask_trusted`); `None` otherwise, or when nobody holds it.
    async fn trusted_authority(options: &Options, uid: u32) -> Option<PathBuf> {
        let name = authority_name();
        let trusts = trusted_holders(options, uid);
        let answer = tokio::task::spawn_blocking(move || {
            berth_os::beacon::ask_trusted(
                &name,
                authority::QUERY_TIMEOUT,
                authority::MAX_ANSWER,
                |peer| trusts(peer.uid),
            )
        })
        .await
        .ok()?
        .ok()??;
        if !trusts(answer.peer.uid) {
            return None;
        }
        authority_info(&answer)
            .announced
            .map(|a| PathBuf::from(a.socket))
    }

    /// The socket of the daemon that serves this network namespace, from its authority beacon
    /// (`$BERTH_AUTHORITY`, else the default name), if one does and it is trusted (root, this
    /// user, or the trusted uid of `options`). A beacon held by anyone else is refused with
    /// [`Error::PermissionDenied`] naming it: a second daemon could not serve this namespace
    /// either, so starting one would not help.
    async fn find_by_authority(options: &Options, uid: u32) -> Result<Option<PathBuf>, Error> {
        let name = authority_name();
        let asked = tokio::task::spawn_blocking(move || ask_authority(&name))
            .await
            .map_err(|e| Error::Unavailable(format!("asking the authority beacon failed: {e}")))?;
        let Ok(Some(holder)) = asked else {
            return Ok(None);
        };
        let trusted = trusted_holders(options, uid)(holder.peer.uid);
        match holder.announced {
            Some(a) if trusted => Ok(Some(PathBuf::from(a.socket))),
            _ if trusted => Ok(None),
            // Root is the administrator: the system daemon takes a namespace over from a
            // per-user one, so that is what root is told to start.
            _ if uid == 0 => Err(Error::PermissionDenied(format!(
                "the berth daemon serving this network namespace is {holder}; it runs as another user, so root's client does not use it — start the system daemon (`berth daemon`, or `systemctl start berth`), which takes this namespace over from it"
            ))),
            _ => Err(Error::PermissionDenied(format!(
                "the berth daemon serving this network namespace is {holder}; it runs as another user, so this client does not use it, and a second daemon cannot serve this namespace — ask that user to stop it (`berth stop`), or an administrator to run the system daemon"
            ))),
        }
    }

    /// [`Client::connect`], but when no daemon answers, starts a per-user daemon first, the
    /// way `berth run` does — opt-in, for programs and test suites that should work on a
    /// machine where nobody started one (`cargo test` on a fresh checkout):
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), berth::Error> {
    /// let client = berth::Client::connect_or_start().await?;
    /// let port = client.acquire(berth::Protocol::Tcp, 0, 1).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// The daemon is the `berth` binary named by `$BERTH_BIN`, else found on `PATH` (install
    /// it with `cargo install --path crates/berth-cli`); it starts on `$BERTH_SOCKET` or this
    /// user's default socket, keeps running after this process exits, and is announced once on
    /// stderr (pid, socket, log, how to stop it). `BERTH_NO_AUTOSTART` (any value but `0`,
    /// `false`, `no`) turns the start off. See [`crate::autostart`].
    pub async fn connect_or_start() -> Result<Self, Error> {
        Client::connect_or_start_with(Options::default(), &Starter::new()).await
    }

    /// [`Client::connect_or_start`] with `options` and `starter`.
    pub async fn connect_or_start_with(options: Options, starter: &Starter) -> Result<Self, Error> {
        // Only when nobody answered: a daemon that refused (busy, incompatible …) is there, and
        // starting another would not help.
        let unavailable = match Client::search(options).await? {
            Found::Daemon(answered) => return answered,
            Found::Nobody(unavailable) => unavailable,
        };
        if autostart::forbidden() {
            return Err(Error::Unavailable(format!(
                "{} — {} is set, so none was started on demand",
                unavailable.message(),
                autostart::NO_AUTOSTART_ENV
            )));
        }
        let socket = autostart::default_socket()?;
        if let Some(what) = rendezvous::not_a_socket(&socket) {
            // Nothing could listen there: no daemon is started to fail on it.
            return Err(Error::Unavailable(format!(
                "{} is {what}, not a socket, so no berth daemon listens there and none was started on demand; remove it, or set BERTH_SOCKET to a berth daemon's socket",
                socket.display()
            )));
        }
        let (starter, at) = (starter.clone(), socket.clone());
        tokio::task::spawn_blocking(move || starter.start(&at))
            .await
            .map_err(|e| Error::Unavailable(format!("the daemon starter failed: {e}")))??;
        Client::connect_to_with(&socket, options).await
    }

    /// Connects to the daemon listening on `path`.
    pub async fn connect_to(path: impl AsRef<Path>) -> Result<Self, Error> {
        Client::connect_to_with(path, Options::default()).await
    }

    /// [`Client::connect_to`] with `options`.
    pub async fn connect_to_with(path: impl AsRef<Path>, options: Options) -> Result<Self, Error> {
        let path = path.as_ref();
        let stream = rendezvous::connect(path, &options).await?;
        Client::open_at(stream, path, options).await
    }

    /// Opens a session on `stream`, connected to `path`.
    ///
    /// A daemon at a connection limit (its own, or this user's) answers "busy" at once; the
    /// client then connects again, backing off, until [`Options::busy_retry`] has passed, and
    /// only then fails with that answer — so a burst of clients (a test runner's hundreds of
    /// `berth run`) is served as connections close, not refused.
    async fn open_at(stream: UnixStream, path: &Path, options: Options) -> Result<Self, Error> {
        let deadline = tokio::time::Instant::now() + options.busy_retry;
        // Jittered by pid, so that a burst of clients does not come back in step.
        let mut pause = std::time::Duration::from_millis(5 + u64::from(std::process::id() % 16));
        let mut stream = stream;
        loop {
            match Client::open(stream, path, options).await {
                Err(refused) if refused.busy && tokio::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(250));
                    stream = rendezvous::connect(path, &options).await?;
                }
                done => return done.map_err(Error::from),
            }
        }
    }

    async fn open(stream: UnixStream, path: &Path, options: Options) -> Result<Self, Refused> {
        let name = concat!("berth-rs/", env!("CARGO_PKG_VERSION"));
        let foreign = foreign_namespace_of(&stream);
        let opening = Connection::open(stream, path, name, options);
        let conn = tokio::time::timeout(options.connect_timeout, opening)
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "the berth daemon on {} accepted the connection but did not answer the handshake within {}s; it may be at its connection limit (--max-connections) or stuck — see its log, or restart it",
                    path.display(),
                    options.connect_timeout.as_secs_f32()
                ))
            })??;
        Ok(Client {
            conn: Arc::new(conn),
            foreign,
        })
    }

    /// The daemon's network namespace, when it is not this process's and `/proc` says so
    /// (root may read any process's, another user only its own): its reservations, and what
    /// it says of ports, are that namespace's. `None` when it is this one or cannot be told.
    pub fn foreign_namespace(&self) -> Option<ForeignNamespace> {
        self.foreign
    }

    /// The daemon's release.
    pub fn daemon_version(&self) -> &str {
        &self.conn.welcome().daemon_version
    }

    /// The daemon's process id.
    pub fn daemon_pid(&self) -> u32 {
        self.conn.welcome().daemon_pid
    }

    /// The protocol version agreed with the daemon.
    pub fn protocol_version(&self) -> u16 {
        self.conn.welcome().version
    }

    /// Whether this client can still reach a daemon. After the daemon goes away, the client
    /// reconnects by itself (and re-claims its reservations); it gives up, and this turns
    /// false, when no daemon answers within [`Options::reconnect_window`].
    pub fn is_open(&self) -> bool {
        self.conn.is_open()
    }

    /// The socket this client is connected to.
    pub fn socket_path(&self) -> &Path {
        self.conn.path()
    }

    /// Reserves `count` ports of `protocol` from `start`, or — with `start == 0` — any free
    /// block of `count` ports from the daemon's pool. The reservation lives until it is
    /// released or dropped, or until this session ends.
    ///
    /// The daemon **holds** the ports: it keeps each one its owner has not bound bound itself,
    /// so every other program's explicit bind to it fails; bind your sockets from the
    /// reservation with [`Reservation::bind`], [`Reservation::tcp_listener`] or
    /// [`Reservation::udp_socket`] (the Windows model). A program that binds its ports by
    /// number uses [`Client::acquire_unheld`] instead.
    ///
    /// Fails with [`Error::InvalidArgument`] (count 0, past 65535), [`Error::Conflict`] (the
    /// ports are reserved or in use; the message names the holder) or
    /// [`Error::PoolExhausted`].
    pub async fn acquire(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<Reservation, Error> {
        self.acquire_with(protocol, start, count, &AcquireOptions::held())
            .await
    }

    /// [`Client::acquire`] for a program that binds its ports by number rather than through
    /// [`Reservation::bind`]: the daemon does not hold the ports (another program's explicit
    /// bind to them is not refused); they are only hidden from automatic port assignment where
    /// the daemon keeps the kernel's reserved-ports list.
    pub async fn acquire_unheld(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<Reservation, Error> {
        self.acquire_with(protocol, start, count, &AcquireOptions::default())
            .await
    }

    /// Reserves the same `count` ports in TCP and in UDP (from `start`, or any block free in
    /// both with `start == 0`), together or not at all — for a service that listens on both.
    /// Returns the TCP reservation, then the UDP one; both are held, as with
    /// [`Client::acquire`].
    pub async fn acquire_same_ports(
        &self,
        start: u16,
        count: u16,
    ) -> Result<(Reservation, Reservation), Error> {
        self.acquire_same_ports_with(start, count, &AcquireOptions::held())
            .await
    }

    /// [`Client::acquire_same_ports`], not held (see [`Client::acquire_unheld`]).
    pub async fn acquire_same_ports_unheld(
        &self,
        start: u16,
        count: u16,
    ) -> Result<(Reservation, Reservation), Error> {
        self.acquire_same_ports_with(start, count, &AcquireOptions::default())
            .await
    }

    /// [`Client::acquire_same_ports`] with options: held or not, a label, bounds for a
    /// wildcard block (as [`Client::acquire_with`]).
    pub async fn acquire_same_ports_with(
        &self,
        start: u16,
        count: u16,
        options: &AcquireOptions,
    ) -> Result<(Reservation, Reservation), Error> {
        let request = Request::AcquireBoth {
            start,
            count,
            options: options.clone(),
        };
        match self.conn.call(request).await? {
            Response::AcquiredBoth { tcp, udp } => Ok((
                Reservation::new(self.clone(), *tcp),
                Reservation::new(self.clone(), *udp),
            )),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Reserves ports as [`Client::acquire`] does, with options: whether the daemon holds
    /// them (`hold`, see [`Client::acquire_unheld`]), a `label` saying what they are for
    /// (shown by `berth list` and `berth why` wherever the owner is), and — for a wildcard
    /// request (`start == 0`) — bounds: any free block `within` `(first, last)`, in the pool or
    /// outside it, instead of one from the pool.
    ///
    /// ```no_run
    /// # async fn f(client: &berth::Client) -> Result<(), berth::Error> {
    /// let options = berth::AcquireOptions::held()
    ///     .label("tests::login")
    ///     .within(20000, 20099);
    /// let block = client.acquire_with(berth::Protocol::Tcp, 0, 2, &options).await?;
    /// assert!((20000..=20099).contains(&block.start()));
    /// # Ok(()) }
    /// ```
    ///
    /// Fails as [`Client::acquire`] does, and with [`Error::InvalidArgument`] for a label
    /// over 128 bytes or with control characters, bounds with a start, reversed bounds or
    /// bounds narrower than `count`; [`Error::PoolExhausted`] names the bounds when no block
    /// inside them is free.
    pub async fn acquire_with(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        options: &AcquireOptions,
    ) -> Result<Reservation, Error> {
        let request = Request::AcquireWith {
            protocol,
            start,
            count,
            options: options.clone(),
        };
        match self.conn.call(request).await? {
            Response::Acquired(info) => Ok(Reservation::new(self.clone(), info)),
            other => Err(Error::unexpected(other)),
        }
    }

    /// The live reservations named `name` (one per protocol, TCP first): with `user: None`,
    /// yours, else a persistent reservation's (a host-wide name); with `Some(uid)`, that user's.
    /// Open to everyone; owner details as in [`Client::list`]. [`Error::NotFound`] when no live
    /// reservation has the name, [`Error::InvalidArgument`] for a text that is no name.
    pub async fn lookup_name(
        &self,
        user: Option<u32>,
        name: &str,
    ) -> Result<Vec<ReservationInfo>, Error> {
        let request = Request::LookupName {
            user,
            name: name.to_owned(),
        };
        match self.conn.call(request).await? {
            Response::Named(found) => Ok(found),
            other => Err(Error::unexpected(other)),
        }
    }

    /// [`Client::lookup_name`], answered once the name exists — with `bound`, once a socket
    /// is bound to a port of each of its reservations (as the kernel reports it) — or with
    /// [`Error::NotFound`] after `timeout` (at most an hour). The daemon waits, not the client:
    /// nothing is polled, and the connection does not count as idle meanwhile; a request sent
    /// on the same connection is answered after the wait.
    pub async fn wait_name(
        &self,
        user: Option<u32>,
        name: &str,
        bound: bool,
        timeout: std::time::Duration,
    ) -> Result<Vec<ReservationInfo>, Error> {
        let timeout_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .min(berth_protocol::MAX_WAIT_MS);
        let request = Request::WaitName {
            user,
            name: name.to_owned(),
            bound,
            timeout_ms,
        };
        match self.conn.call(request).await? {
            Response::Named(found) => Ok(found),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Names `port` of `protocol`, which a process of yours has bound already by other means
    /// (a server given `:0`, say): it becomes a runtime reservation named `name`, owned by the
    /// process the kernel says holds the socket (this one, when it is one of them), living as
    /// long as that process does. [`Error::NotFound`] when nothing is bound to the port,
    /// [`Error::PermissionDenied`] when another user's process has it, [`Error::Conflict`]
    /// when the port is reserved or the name held already.
    pub async fn publish(
        &self,
        name: &str,
        protocol: Protocol,
        port: u16,
    ) -> Result<ReservationInfo, Error> {
        let request = Request::Publish {
            name: name.to_owned(),
            protocol,
            port,
        };
        match self.conn.call(request).await? {
            Response::Acquired(info) => Ok(info),
            other => Err(Error::unexpected(other)),
        }
    }

    /// [`Client::publish`] for the port `socket` (a bound TCP or UDP socket of this process)
    /// is bound to — the port file, without the file.
    pub async fn publish_socket(
        &self,
        name: &str,
        socket: BorrowedFd<'_>,
    ) -> Result<ReservationInfo, Error> {
        let (protocol, port) = crate::sockets::bound_port(socket)?;
        self.publish(name, protocol, port).await
    }

    /// The persistent reservation of exactly `start..start+count`, when you may use it (an
    /// administrator, or on its allow list): your programs then bind its ports by number
    /// (`berth run --start` does this for you), alongside any other allowed user's — nothing
    /// is reserved for you alone, and nothing is to release. [`Error::NotFound`] when no
    /// persistent reservation has exactly that range, [`Error::PermissionDenied`] when you are
    /// not allowed.
    pub async fn use_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<ReservationInfo, Error> {
        let request = Request::UsePersistent {
            protocol,
            start,
            count,
        };
        match self.conn.call(request).await? {
            Response::PersistentFound(info) => Ok(info),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Your remembered names: the block each was last given, and whether it is live.
    pub async fn names(&self) -> Result<Vec<NameInfo>, Error> {
        match self.conn.call(Request::ListNames).await? {
            Response::Names(names) => Ok(names),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Forgets your name `name` (both protocols): its block becomes an ordinary port again.
    /// A live reservation keeps its name until it ends. Returns what was forgotten;
    /// [`Error::NotFound`] when nothing was remembered.
    pub async fn forget_name(&self, name: &str) -> Result<Vec<NameInfo>, Error> {
        let request = Request::ForgetName {
            name: name.to_owned(),
        };
        match self.conn.call(request).await? {
            Response::Names(names) => Ok(names),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Takes back, on this connection, the runtime reservation `token` that this process held
    /// before the daemon restarted (or before this client's session ended: a connection lost
    /// for longer than [`Options::reconnect_window`]). The daemon keeps such a reservation for
    /// its owner for a grace period after it starts, usable only once re-claimed. A client
    /// re-claims the reservations it holds by itself when it reconnects; this is for a program
    /// that kept only the token (the C library does). [`Error::NotFound`] when it is gone.
    pub async fn reclaim(&self, token: Token) -> Result<Reservation, Error> {
        match self
            .conn
            .call(Request::Reclaim { token: token.get() })
            .await?
        {
            Response::Reclaimed(info) => Ok(Reservation::new(self.clone(), info)),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Releases the reservation named `token`. Allowed to the process that acquired it and to
    /// administrators; anyone else gets [`Error::PermissionDenied`].
    pub async fn release(&self, token: Token) -> Result<ReservationInfo, Error> {
        self.release_raw(token.get()).await
    }

    /// [`Client::release`] with an unchecked token value (0 is refused by the daemon).
    pub async fn release_raw(&self, token: u64) -> Result<ReservationInfo, Error> {
        match self.conn.call(Request::Release { token }).await? {
            Response::Released(info) => Ok(info),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Every live reservation, by protocol then start port. Owner details of other users'
    /// reservations are shown to administrators only.
    pub async fn list(&self) -> Result<Vec<ReservationInfo>, Error> {
        match self.conn.call(Request::List).await? {
            Response::List(list) => Ok(list),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Explains `port`: the reservation that covers it (owner, held, bound ports), the
    /// sockets bound to it on the host with their processes (shown where the asker may see
    /// them), whether it is in the pool, the ephemeral range or the kernel's reserved list.
    /// Fails with [`Error::InvalidArgument`] for port 0.
    pub async fn why(&self, protocol: Protocol, port: u16) -> Result<PortReport, Error> {
        match self.conn.call(Request::Why { protocol, port }).await? {
            Response::Why(report) => Ok(*report),
            other => Err(Error::unexpected(other)),
        }
    }

    /// The daemon's status.
    pub async fn status(&self) -> Result<StatusInfo, Error> {
        match self.conn.call(Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Administrators: switches enforce mode off at once (its programs detached; enforced
    /// requests refused until it is switched on or the daemon restarts) or on again; returns
    /// the daemon's status after the switch.
    pub async fn set_enforce(&self, on: bool) -> Result<StatusInfo, Error> {
        match self.conn.call(Request::SetEnforce { on }).await? {
            Response::Status(status) => Ok(status),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Binds `socket` — the caller's own, unbound TCP or UDP socket — to a free port of the
    /// reservation `token`, on `address` (default: the unspecified address of the socket's
    /// family), and returns the port. The daemon binds it in place; the socket's options
    /// (non-blocking, `SO_REUSEPORT`, `IPV6_V6ONLY`, …) are left as they are.
    ///
    /// Fails with [`Error::NotSupported`] (not TCP/UDP, type does not match the
    /// reservation's protocol, another network namespace), [`Error::ReservationFull`] (every
    /// port is bound), [`Error::PermissionDenied`] (not the owning process, or a privileged
    /// port policy forbids it), [`Error::NotFound`] or [`Error::InvalidArgument`].
    pub async fn associate(
        &self,
        token: Token,
        socket: BorrowedFd<'_>,
        address: Option<IpAddr>,
    ) -> Result<u16, Error> {
        self.associate_raw(token.get(), socket, address).await
    }

    /// [`Client::associate`] with an unchecked token value.
    pub async fn associate_raw(
        &self,
        token: u64,
        socket: BorrowedFd<'_>,
        address: Option<IpAddr>,
    ) -> Result<u16, Error> {
        self.associate_port_raw(token, socket, address, None).await
    }

    /// [`Client::associate`] on exactly `port` of the reservation `token` (it must lie in the
    /// reservation): the pattern of binding one exact port from a reservation. Fails with
    /// [`Error::ReservationFull`] when that port is taken, never binding another.
    pub async fn associate_port(
        &self,
        token: Token,
        socket: BorrowedFd<'_>,
        address: Option<IpAddr>,
        port: u16,
    ) -> Result<u16, Error> {
        self.associate_port_raw(token.get(), socket, address, Some(port))
            .await
    }

    /// [`Client::associate_raw`] or, with `port`, [`Client::associate_port`].
    pub async fn associate_port_raw(
        &self,
        token: u64,
        socket: BorrowedFd<'_>,
        address: Option<IpAddr>,
        port: Option<u16>,
    ) -> Result<u16, Error> {
        // A duplicate travels to the daemon; both name the same socket.
        let fd = rustix::io::fcntl_dupfd_cloexec(socket, 0)
            .map_err(|e| Error::InvalidArgument(format!("cannot use the socket given: {e}")))?;
        let request = match port {
            None => Request::Associate { token, address },
            Some(port) => Request::AssociateAt {
                token,
                address,
                port,
            },
        };
        match self.conn.call_with_fd(request, Some(fd)).await? {
            Response::Associated { port } => Ok(port),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Creates a persistent reservation of exactly `start..start+count` (administrators only). It survives daemon restarts and host reboots until deleted; its token is
    /// stable. `allow` names the users and groups who may bind from it besides administrators.
    /// Durable when this returns.
    pub async fn create_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        allow: &Allow,
    ) -> Result<ReservationInfo, Error> {
        self.create_persistent_labeled(protocol, start, count, allow, "")
            .await
    }

    /// [`Client::create_persistent_labeled`] with a host-wide name too ("" for none): anyone
    /// finds its ports with [`Client::lookup_name`]. [`Error::Conflict`] when another
    /// persistent reservation of the protocol has the name.
    pub async fn create_persistent_named(
        &self,
        protocol: Protocol,
        (start, count): (u16, u16),
        allow: &Allow,
        (label, name): (&str, &str),
    ) -> Result<ReservationInfo, Error> {
        let request = Request::CreatePersistent {
            protocol,
            start,
            count,
            allow_users: allow.users.clone(),
            allow_groups: allow.groups.clone(),
            label: label.to_owned(),
            name: name.to_owned(),
        };
        match self.conn.call(request).await? {
            Response::PersistentCreated(info) => Ok(info),
            other => Err(Error::unexpected(other)),
        }
    }

    /// [`Client::create_persistent`] with a label, a note for everyone who lists or asks about
    /// its ports (at most 128 bytes of UTF-8 without control characters; "" for none).
    pub async fn create_persistent_labeled(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        allow: &Allow,
        label: &str,
    ) -> Result<ReservationInfo, Error> {
        self.create_persistent_named(protocol, (start, count), allow, (label, ""))
            .await
    }

    /// Deletes the persistent reservation of exactly `start..start+count` (administrators
    /// only). Durable when this returns.
    pub async fn delete_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<ReservationInfo, Error> {
        let request = Request::DeletePersistent {
            protocol,
            start,
            count,
        };
        match self.conn.call(request).await? {
            Response::PersistentDeleted(info) => Ok(info),
            other => Err(Error::unexpected(other)),
        }
    }

    /// The token of the persistent reservation of exactly `start..start+count`, or
    /// [`Error::NotFound`].
    pub async fn lookup_persistent(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<Token, Error> {
        let request = Request::LookupPersistent {
            protocol,
            start,
            count,
        };
        match self.conn.call(request).await? {
            Response::PersistentFound(info) => Ok(info.token),
            other => Err(Error::unexpected(other)),
        }
    }

    /// The persistent reservations, by protocol then start port.
    pub async fn list_persistent(&self) -> Result<Vec<ReservationInfo>, Error> {
        let mut list = self.list().await?;
        list.retain(|r| r.kind == Kind::Persistent);
        Ok(list)
    }

    /// Asks the daemon to stop gracefully, as SIGTERM would (its own user, root, or a member
    /// of its admin groups; others get [`Error::PermissionDenied`]). Returns the daemon's pid;
    /// it stops accepting once it has answered, and exits when its sessions have drained.
    pub async fn stop(&self) -> Result<u32, Error> {
        self.stop_with(false).await
    }

    /// [`Client::stop`]; with `restore`, the daemon also takes every entry it wrote in the
    /// kernel's reserved-ports list out, those of reservations whose owners still run too
    /// (a plain stop leaves those for the next daemon).
    pub async fn stop_with(&self, restore: bool) -> Result<u32, Error> {
        let request = if restore {
            Request::StopWith { restore }
        } else {
            Request::Stop
        };
        match self.conn.call(request).await? {
            Response::Stopping { pid } => Ok(pid),
            other => Err(Error::unexpected(other)),
        }
    }

    /// Hands reservation `token` to process `pid` (see [`Reservation::transfer_to`]).
    pub(crate) async fn transfer(&self, token: Token, pid: u32) -> Result<ReservationInfo, Error> {
        let request = Request::Transfer {
            token: token.get(),
            pid,
        };
        match self.conn.call(request).await? {
            Response::Transferred(info) => Ok(info),
            other => Err(Error::unexpected(other)),
        }
    }

    /// The reservations this session lost.
    pub(crate) fn losses(&self) -> &crate::loss::Losses {
        self.conn.losses()
    }

    /// Releases `token` without waiting for the answer (used by `Drop`).
    pub(crate) fn release_detached(&self, token: Token) {
        self.conn.submit(Request::Release { token: token.get() });
    }
}

/// Asks whoever holds the authority beacon `name` who it is, within
/// [`authority::QUERY_TIMEOUT`]. `Ok(None)` when nobody holds it.
fn ask_authority(name: &str) -> std::io::Result<Option<authority::AuthorityInfo>> {
    let answer = berth_os::beacon::ask(name, authority::QUERY_TIMEOUT, authority::MAX_ANSWER)?;
    Ok(answer.as_ref().map(authority_info))
}

/// The authority beacon's name: `$BERTH_AUTHORITY`, else the default one.
fn authority_name() -> String {
    std::env::var("BERTH_AUTHORITY")
        .ok()
        .filter(|n| !n.is_empty() && n != "none")
        .unwrap_or_else(|| authority::DEFAULT_NAME.to_owned())
}

/// Whose beacon a client of user `uid` trusts: root, this user (real or effective), or the
/// trusted uid of `options`.
fn trusted_holders(options: &Options, uid: u32) -> impl Fn(u32) -> bool + Copy + Send + 'static {
    let trusted_uid = options.trusted_daemon_uid;
    let euid = rustix::process::geteuid().as_raw();
    move |holder| holder == 0 || holder == euid || holder == uid || Some(holder) == trusted_uid
}

/// What a beacon's holder said, with the kernel's word on who it is.
fn authority_info(answer: &berth_os::beacon::Answer) -> authority::AuthorityInfo {
    let peer = authority::Peer {
        pid: answer.peer.pid,
        uid: answer.peer.uid,
        gid: answer.peer.gid,
    };
    authority::AuthorityInfo::new(peer, &answer.text)
}
