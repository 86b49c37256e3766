//! One authority per network namespace, which nobody unprivileged can lock out or stand in
//! for.
//!
//! Two daemons serving one network namespace could grant the same port, so each claims the
//! namespace at start-up:
//! - **The beacon** (`berth_protocol::authority`, its sockets `berth_os::beacon`): an abstract Unix socket, scoped by the
//!   network namespace, that only one process can bind. It is how daemons and clients find the
//!   one that serves the namespace. Abstract names have no permissions, so any process can
//!   bind one first: the beacon alone cannot keep root's daemon from being locked out.
//! - **The system lock**, for root's daemon (the default beacon name): an exclusive `flock` on
//!   `/run/berth/authority-<netns inode>.lock`, a file only root can create. It is what makes
//!   root's daemon the authority of its namespace whoever holds the beacon: a second root daemon
//!   finds it taken and refuses to start. The file is root's alone (mode 0600): a shared lock
//!   taken by anyone else would keep the next system daemon out. A per-user daemon defers to
//!   the system daemon through the beacon, which root's daemon holds or takes back.
//!
//! So root's daemon never refuses to start because of a beacon held by an unprivileged process:
//! - an ordinary user's berth daemon that started first is asked to stop (root administers
//!   every daemon), and root's takes the beacon once it is gone (its runtime reservations end
//!   with it, and their owners are told they are lost — see docs/decisions.md);
//! - anything else (a squatter that does not stop) is logged, and root's daemon serves without
//!   the beacon, trying to take it back every [`RETRY_EVERY`] ([`retake`]: a per-user daemon
//!   that took it meanwhile is displaced too); clients find it by its socket.

use std::io;
use std::os::unix::net::UnixListener as StdListener;
use std::path::PathBuf;
use std::time::Duration;

use berth_protocol::authority::{self, AuthorityInfo};
use rustix::fs::{flock, FlockOperation};

mod marker;

/// How often a daemon serving without its beacon tries to take it.
pub(crate) const RETRY_EVERY: Duration = Duration::from_secs(2);

/// How long root's daemon waits for a per-user daemon it asked to stop.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What a daemon holds of its namespace's authority.
pub(crate) struct Claim {
    /// The beacon, when this daemon holds it.
    pub(crate) beacon: Option<StdListener>,
    /// The system lock (root's daemon on the default beacon name), held while it runs.
    _lock: Option<SystemLock>,
}

/// The system lock file, locked; removed (still locked) when dropped, so that none is left
/// behind for a namespace that is gone.
struct SystemLock {
    file: std::fs::File,
    path: PathBuf,
}

impl SystemLock {
    /// The marker anyone may read beside it (see `marker`).
    fn marker(&self) -> PathBuf {
        marker::path_for(&self.path)
    }
}

impl Drop for SystemLock {
    fn drop(&mut self) {
        // Whoever opened it meanwhile finds it unlinked once it gets the lock, and retries on
        // a new file (see `take_system_lock`). The marker goes first.
        let _ = std::fs::remove_file(self.marker());
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

/// Claims the authority named `name` for this daemon, or says why it must not serve.
pub(crate) async fn claim(name: &str, socket: &std::path::Path) -> io::Result<Claim> {
    let system = name == authority::DEFAULT_NAME;
    let root = rustix::process::geteuid().is_root();
    // A per-user daemon defers to the system daemon through the beacon, which root's daemon
    // holds (or takes back); the lock is root's alone.
    let lock = if system && root {
        take_system_lock()?
    } else {
        None
    };
    if let Some(lock) = &lock {
        // Per-user daemons read it before they serve; without it they would go by the beacon
        // alone (a daemon serving beside this one after a squatter let the beacon go).
        if let Err(e) = marker::write(&lock.marker(), socket) {
            tracing::warn!("cannot write {}: {e}", lock.marker().display());
        }
    }
    if system && lock.is_none() {
        if let Some(marked) = system_lock_path()
            .ok()
            .and_then(|path| marker::live_daemon_at(&marker::path_for(&path)))
        {
            // Where its clients reach it: what its marker says (only root writes there), else
            // the default socket (a marker of an earlier release names none).
            let reach = match marked.socket {
                Some(socket) => format!("on {socket} (BERTH_SOCKET={socket} berth …)"),
                None => format!(
                    "on {} (the default socket; unset BERTH_SOCKET where it names another)",
                    berth_protocol::paths::SYSTEM_SOCKET
                ),
            };
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "the system berth daemon (pid {pid}) serves this network namespace, and two daemons in one namespace could grant the same port; this one does not start. Its clients reach it {reach}",
                    pid = marked.pid
                ),
            ));
        }
    }
    let beacon = bind_or_ask(name, lock.is_some()).await?;
    Ok(Claim {
        beacon,
        _lock: lock,
    })
}

/// Binds the beacon; when another process holds it, says which daemon serves the namespace —
/// unless this is the system daemon (`system`), which asks a per-user daemon to stop and
/// otherwise serves without the beacon (`Ok(None)`).
async fn bind_or_ask(name: &str, system: bool) -> io::Result<Option<StdListener>> {
    // A holder that is gone by the time it is asked frees the name: try again, a few times.
    for _ in 0..3 {
        match crate::server::rights::listen_abstract(name) {
            Ok(listener) => return Ok(Some(listener)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot bind the authority beacon @{name}: {e}"),
                ))
            }
        }
        // Blocking, bounded: off the runtime, which may be serving that very holder.
        let owned = name.to_owned();
        let holder = tokio::task::spawn_blocking(move || query(&owned))
            .await
            .map_err(io::Error::other)??;
        let Some(holder) = holder else { continue };
        if !system || holder.peer.uid == 0 {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                taken(name, &holder),
            ));
        }
        return Ok(displace(name, &holder).await);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("the authority beacon @{name} is taken and released over and over; is another berth daemon starting and stopping in a loop?"),
    ))
}

/// The system daemon's later tries to take the beacon back: bound if free; a per-user berth
/// daemon that holds it is displaced (asked to stop, waited for); `None` while anything else
/// holds it.
pub(crate) async fn retake(name: &str) -> Option<StdListener> {
    if let Ok(listener) = crate::server::rights::listen_abstract(name) {
        return Some(listener);
    }
    let owned = name.to_owned();
    let holder = tokio::task::spawn_blocking(move || query(&owned))
        .await
        .ok()?
        .ok()??;
    if holder.peer.uid != 0 && holder.announced.is_some() {
        return displace(name, &holder).await;
    }
    None
}

/// The system daemon finds the beacon held by an unprivileged process: a per-user berth daemon
/// is asked to stop and waited for; the beacon is then bound. `None` when it stays taken.
async fn displace(name: &str, holder: &AuthorityInfo) -> Option<StdListener> {
    if let Some(announced) = &holder.announced {
        tracing::warn!(
            "the authority beacon @{name} is held by an ordinary user's berth daemon ({holder}); the system daemon serves this network namespace, so it is asked to stop (its clients' runtime reservations end with it)"
        );
        match ask_to_stop(&announced.socket, holder.peer.uid).await {
            // Waited for only once it agreed: a holder that merely looks like a berth daemon
            // must not hold up the system daemon's start.
            Ok(()) => {
                let deadline = tokio::time::Instant::now() + STOP_WAIT;
                while tokio::time::Instant::now() < deadline {
                    if let Ok(listener) = crate::server::rights::listen_abstract(name) {
                        return Some(listener);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => tracing::warn!(
                "the daemon on {} did not agree to stop: {e}",
                announced.socket
            ),
        }
    }
    tracing::warn!(
        "the authority beacon @{name} is held by {holder}, a process without privileges; serving without it (clients find this daemon by its socket), and trying to take it every {}s",
        RETRY_EVERY.as_secs()
    );
    None
}

/// Sends `Stop` to the berth daemon on `socket`, if the process listening there is of user
/// `uid` (the beacon's holder): root is an administrator of every daemon.
async fn ask_to_stop(socket: &str, uid: u32) -> io::Result<()> {
    use berth_protocol::{FrameCodec, Hello, Request, Response};
    use futures_util::{SinkExt, StreamExt};
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::UnixStream::connect(socket),
    )
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let peer = berth_os::peer::peer_credentials(&stream)?;
    if peer.uid != uid {
        return Err(io::Error::other(format!(
            "{socket} is served by uid {}, not by the beacon's holder (uid {uid})",
            peer.uid
        )));
    }
    let mut framed =
        tokio_util::codec::Framed::new(stream, FrameCodec::<Response, Request>::client());
    let exchange = async {
        framed
            .send(Request::Hello(Hello::current("berth system daemon")))
            .await
            .map_err(io::Error::other)?;
        match framed.next().await {
            Some(Ok(Response::Welcome(_))) => {}
            other => return Err(io::Error::other(format!("no welcome: {other:?}"))),
        }
        framed.send(Request::Stop).await.map_err(io::Error::other)?;
        match framed.next().await {
            Some(Ok(Response::Stopping { .. })) => Ok(()),
            other => Err(io::Error::other(format!("not stopping: {other:?}"))),
        }
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Asks whoever holds the beacon `name` who it is, within [`authority::QUERY_TIMEOUT`].
/// `Ok(None)` when nobody holds it.
pub(crate) fn query(name: &str) -> io::Result<Option<AuthorityInfo>> {
    let answer = berth_os::beacon::ask(name, authority::QUERY_TIMEOUT, authority::MAX_ANSWER)?;
    Ok(answer.map(|a| {
        let peer = authority::Peer {
            pid: a.peer.pid,
            uid: a.peer.uid,
            gid: a.peer.gid,
        };
        AuthorityInfo::new(peer, &a.text)
    }))
}

/// Why this daemon does not start, and what to do instead.
fn taken(name: &str, holder: &AuthorityInfo) -> String {
    let me = rustix::process::geteuid().as_raw();
    match &holder.announced {
        // Its own user's daemon (or root's, for anyone): use it or stop it with berth.
        Some(a) if holder.peer.uid == me || holder.peer.uid == 0 => format!(
            "another berth daemon already serves this network namespace: {holder}. Two daemons in one network namespace could grant the same port twice, so this one does not start. Use that one (BERTH_SOCKET={socket} berth …), or stop it first (BERTH_SOCKET={socket} berth stop)",
            socket = a.socket
        ),
        // Another user's: berth clients do not talk to it (it could be an impostor), so say
        // what does work.
        Some(_) => format!(
            "another berth daemon already serves this network namespace: {holder}, run by uid {uid}. Two daemons in one network namespace could grant the same port twice, so this one does not start. Ask uid {uid} to stop it (`berth stop`){root}, and then start this one",
            uid = holder.peer.uid,
            root = if me == 0 {
                format!(", or stop it yourself as root (`kill {}`)", holder.peer.pid)
            } else {
                String::new()
            },
        ),
        None => format!(
            "the authority beacon @{name}, which only one berth daemon per network namespace may hold, is held by {holder}; this daemon does not start. Find out what that process is and stop it (it keeps berth from serving this namespace)"
        ),
    }
}

/// `/run/berth/authority-<inode of this network namespace>.lock`.
fn system_lock_path() -> io::Result<PathBuf> {
    let ns = berth_os::netns::NsFile::of_self()?;
    let dir = std::path::Path::new(berth_protocol::paths::SYSTEM_SOCKET)
        .parent()
        .unwrap_or(std::path::Path::new("/run/berth"))
        .to_owned();
    Ok(dir.join(format!("authority-{}.lock", ns.inode())))
}

/// Root's daemon takes the system lock of its namespace, or says which daemon holds it.
/// `Ok(None)` when it may not write the lock's directory: root of a user namespace of its own
/// (a rootless container, a test's `unshare -Ur`) is not the host's system daemon, and claims
/// its namespace with the beacon alone.
fn take_system_lock() -> io::Result<Option<SystemLock>> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let path = system_lock_path()?;
    let not_ours = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
        )
    };
    if let Some(dir) = path.parent() {
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
        {
            Ok(()) => {}
            Err(e) if not_ours(&e) => {
                tracing::debug!(
                    "no system lock ({}: {e}): claiming the namespace with the beacon alone",
                    dir.display()
                );
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
    // A file unlinked by the daemon that held it, between our open and our lock, is not the
    // lock any more: open the path again.
    for _ in 0..3 {
        let file = match lock_file(&path) {
            Ok(file) => file,
            Err(e) if not_ours(&e) => {
                tracing::debug!(
                    "no system lock ({e}): claiming the namespace with the beacon alone"
                );
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let current = std::fs::symlink_metadata(&path).map(|m| m.ino()).ok();
        if current == Some(file.metadata()?.ino()) {
            return Ok(Some(SystemLock { file, path }));
        }
    }
    Err(io::Error::other(format!(
        "{} keeps being replaced; is another system berth daemon starting and stopping in a loop?",
        path.display()
    )))
}

/// Opens and locks `path` exclusively, writing this daemon's pid into it.
fn lock_file(path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        // Nobody else may even open it: a shared lock by anyone would keep the next system
        // daemon out.
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    // A file an earlier build left readable is made private too.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another system berth daemon (pid {}) serves this network namespace ({} is locked), and two daemons in one namespace could grant the same port; this one does not start",
                    pid.trim(),
                    path.display()
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}
