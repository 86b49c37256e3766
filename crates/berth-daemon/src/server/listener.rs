//! The daemon's socket: bound with care and removed on the way out ([`bind_socket`]), or
//! passed by systemd's socket activation ([`activated`]) and then never removed.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::net::UnixListener;

/// Why the socket could not be set up.
#[derive(Debug, Error)]
pub enum ListenError {
    /// Another daemon answers on the path.
    #[error("a berth daemon already answers on {0}; use it, or stop it first")]
    AlreadyRunning(PathBuf),
    /// Another daemon answers on the path, serving another network namespace: the socket
    /// file is shared by every namespace of the host, its daemon by none but its own.
    #[error("a berth daemon already answers on {}, but it serves network namespace net:[{theirs}] (that of pid {pid}, which listens there: the daemon, or a service manager holding its socket), not this one (net:[{ours}]), and ports are reserved per namespace; a daemon for this namespace needs a socket and a database of its own: `berth daemon --socket PATH --db PATH` here, and BERTH_SOCKET=PATH for its clients", .path.display())]
    OtherNamespace {
        /// The socket path.
        path: PathBuf,
        /// The pid of the process that listens on the socket (`SO_PEERCRED`: the daemon, or
        /// the service manager that made the socket for it), as this process sees it.
        pid: u32,
        /// Its namespace's inode number.
        theirs: u64,
        /// Ours.
        ours: u64,
    },
    /// Something that is not a socket sits at the path.
    #[error("{0} exists and is not a socket; remove it or choose another --socket")]
    NotASocket(PathBuf),
    /// systemd passed sockets this daemon cannot serve on.
    #[error("socket activation: {0}")]
    Activation(String),
    /// A system call failed.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// Removes the socket file when dropped, if it is still the one this daemon created.
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
    inode: u64,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        // Another daemon may have replaced a socket we no longer own; leave that one alone.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The refusal for a socket `path` another daemon answers on (`stream` connected to it): it
/// names that daemon's network namespace when it is not ours, as far as `/proc` tells (root
/// and the daemon's own user can read it).
fn already_running(path: &Path, stream: &std::os::unix::net::UnixStream) -> ListenError {
    use berth_os::netns::NsFile;
    let other = berth_os::peer::peer_credentials(stream)
        .ok()
        .filter(|cred| cred.pid != 0)
        .and_then(|cred| {
            let theirs = NsFile::of_process(cred.pid).ok()?;
            let ours = NsFile::of_self().ok()?;
            (theirs != ours).then(|| (cred.pid, theirs.inode(), ours.inode()))
        });
    match other {
        Some((pid, theirs, ours)) => ListenError::OtherNamespace {
            path: path.to_owned(),
            pid,
            theirs,
            ours,
        },
        None => ListenError::AlreadyRunning(path.to_owned()),
    }
}

/// Binds the daemon's socket at `path`: creates the directory if needed (mode 0755 for the
/// system socket, 0700 otherwise, so a per-user instance stays private), replaces a stale
/// socket only after a connection to it is refused, and makes the socket connectable by
/// everyone who can reach its directory (identity comes from the kernel, not from file modes).
pub fn bind_socket(path: &Path) -> Result<(UnixListener, SocketGuard), ListenError> {
    let io_err = |source| ListenError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            let mode = berth_protocol::paths::socket_dir_mode(path);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(io_err)?;
            // Said, so that a mistyped --socket does not leave directories behind unnoticed.
            tracing::info!("created {} (mode {mode:04o}) for the socket", dir.display());
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ListenError::NotASocket(path.to_owned()))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(stream) => return Err(already_running(path, &stream)),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!("removing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let std_listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(io_err)?;
    std_listener.set_nonblocking(true).map_err(io_err)?;
    // Set on the listener so that accepted connections carry credentials from their first
    // byte (a per-connection setting after accept could miss bytes already queued).
    rustix::net::sockopt::set_socket_passcred(&std_listener, true).map_err(|e| io_err(e.into()))?;
    let inode = std::fs::symlink_metadata(path).map_err(io_err)?.ino();
    let listener = UnixListener::from_std(std_listener).map_err(io_err)?;
    Ok((
        listener,
        SocketGuard {
            path: path.to_owned(),
            inode,
        },
    ))
}

/// The sockets systemd passed, sorted by what they are for.
#[derive(Debug)]
pub struct Activated {
    /// The main socket: a listening Unix stream socket bound to a path.
    pub listener: UnixListener,
    /// Its path.
    pub path: PathBuf,
    /// A listening Unix stream socket on an abstract name, if one was passed: the portserver
    /// endpoint's address (`@unittest-portserver` in `berth.socket`), bound at boot so that no
    /// other process can take the name first.
    pub portserver: Option<(std::os::unix::net::UnixListener, String)>,
}

/// What a passed socket is bound to.
enum Bound {
    Path(PathBuf),
    Abstract(String),
}

/// The sockets systemd passed (`LISTEN_FDS`, `LISTEN_PID`; see `sd_listen_fds(3)`); `None`
/// when the daemon was not socket-activated.
///
/// Every passed socket is taken. The first listening Unix stream socket bound to a path is the
/// main socket: made non-blocking and close-on-exec, with `SO_PASSCRED` (as `PassCredentials=yes`
/// in `berth.socket` already does); it belongs to systemd, and the daemon never removes its
/// file. The first one on an abstract name is the portserver endpoint's. Any other is named in
/// the log as not used, and closed. Without a path socket among them, the daemon does not
/// start.
///
/// The passed descriptors are taken once (`berth_os::activation`): a second call fails rather
/// than make a second owner of a socket.
pub fn activated() -> Result<Option<Activated>, ListenError> {
    let fds = berth_os::activation::take_listen_fds().map_err(|e| {
        ListenError::Activation(format!("cannot read LISTEN_FDS and LISTEN_PID: {e}"))
    })?;
    if fds.is_empty() {
        return Ok(None);
    }
    let mut main = None;
    let mut portserver = None;
    for owned in fds {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&owned);
        match inspect(&owned) {
            Ok(Bound::Path(path)) if main.is_none() => main = Some((owned, path)),
            Ok(Bound::Abstract(name)) if portserver.is_none() => portserver = Some((owned, name)),
            Ok(Bound::Path(path)) => tracing::warn!(
                "the socket systemd passed as descriptor {fd} ({}) is not used: berth serves one socket file; it is closed",
                path.display()
            ),
            Ok(Bound::Abstract(name)) => tracing::warn!(
                "the socket systemd passed as descriptor {fd} (@{name}) is not used: berth serves one portserver address; it is closed"
            ),
            Err(why) => tracing::warn!(
                "the socket systemd passed as descriptor {fd} {why}; it is not used and is closed"
            ),
        }
    }
    let Some((owned, path)) = main else {
        return Err(ListenError::Activation(
            "systemd passed no listening Unix socket bound to a path; berth.socket must have ListenStream=/run/berth/berth.sock".into(),
        ));
    };
    let std_listener = std::os::unix::net::UnixListener::from(owned);
    let with_path = |source| ListenError::Io {
        path: path.clone(),
        source,
    };
    std_listener.set_nonblocking(true).map_err(with_path)?;
    rustix::net::sockopt::set_socket_passcred(&std_listener, true)
        .map_err(|e| with_path(e.into()))?;
    let listener = UnixListener::from_std(std_listener).map_err(with_path)?;
    Ok(Some(Activated {
        listener,
        path,
        portserver: portserver.map(|(fd, name)| (std::os::unix::net::UnixListener::from(fd), name)),
    }))
}

/// Whether a passed socket is a listening Unix stream socket, and bound to what; why not
/// otherwise.
fn inspect(owned: &std::os::fd::OwnedFd) -> Result<Bound, String> {
    use rustix::net::sockopt;
    let io_err = |e: rustix::io::Errno| format!("cannot be inspected ({})", io::Error::from(e));
    if sockopt::socket_type(owned).map_err(io_err)? != rustix::net::SocketType::STREAM {
        return Err("is not a stream socket".into());
    }
    if !sockopt::socket_acceptconn(owned).map_err(io_err)? {
        return Err("is not listening".into());
    }
    let local = rustix::net::getsockname(owned).map_err(io_err)?;
    let unix = rustix::net::SocketAddrUnix::try_from(local)
        .map_err(|_| "is not a Unix socket".to_owned())?;
    if let Some(path) = unix.path() {
        return Ok(Bound::Path(PathBuf::from(std::ffi::OsStr::from_bytes(
            path.to_bytes(),
        ))));
    }
    match unix.abstract_name() {
        Some(name) => Ok(Bound::Abstract(String::from_utf8_lossy(name).into_owned())),
        None => Err("is not bound to a path or an abstract name".into()),
    }
}
