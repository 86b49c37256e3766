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
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(berth_protocol::paths::socket_dir_mode(path))
                .create(dir)
                .map_err(io_err)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ListenError::NotASocket(path.to_owned()))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::AlreadyRunning(path.to_owned())),
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

/// The listening socket systemd passed (`LISTEN_FDS`, `LISTEN_PID`; see `sd_listen_fds(3)`),
/// with its path; `None` when the daemon was not socket-activated.
///
/// Exactly one socket must be passed, a listening Unix stream socket bound to a path. It is
/// made non-blocking and close-on-exec and gets `SO_PASSCRED` (as `PassCredentials=yes` in
/// `berth.socket` already does). It belongs to systemd: the daemon never removes its file.
///
/// The passed descriptors are taken once (`berth_os::activation`): a second call fails rather
/// than make a second owner of the socket.
pub fn activated() -> Result<Option<(UnixListener, PathBuf)>, ListenError> {
    let fds = berth_os::activation::take_listen_fds().map_err(|e| {
        ListenError::Activation(format!("cannot read LISTEN_FDS and LISTEN_PID: {e}"))
    })?;
    let mut fds = fds.into_iter();
    let (owned, more) = (fds.next(), fds.len());
    let Some(owned) = owned else {
        return Ok(None);
    };
    if more > 0 {
        return Err(ListenError::Activation(format!(
            "systemd passed {} sockets; berth serves exactly one (berth.socket must have one ListenStream=)",
            more + 1
        )));
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&owned);
    let not_ours = |what: &str| {
        ListenError::Activation(format!(
            "the socket systemd passed (descriptor {fd}) {what}; berth.socket must have ListenStream=/run/berth/berth.sock (a path)"
        ))
    };
    use rustix::net::sockopt;
    let io_err = |source: rustix::io::Errno| {
        ListenError::Activation(format!(
            "cannot inspect the socket systemd passed (descriptor {fd}): {}",
            io::Error::from(source)
        ))
    };
    if sockopt::socket_type(&owned).map_err(io_err)? != rustix::net::SocketType::STREAM {
        return Err(not_ours("is not a stream socket"));
    }
    if !sockopt::socket_acceptconn(&owned).map_err(io_err)? {
        return Err(not_ours("is not listening"));
    }
    let local = rustix::net::getsockname(&owned).map_err(io_err)?;
    let path = rustix::net::SocketAddrUnix::try_from(local)
        .ok()
        .and_then(|unix| {
            unix.path()
                .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p.to_bytes())))
        })
        .ok_or_else(|| not_ours("is not a Unix socket bound to a path"))?;
    let std_listener = std::os::unix::net::UnixListener::from(owned);
    let with_path = |source| ListenError::Io {
        path: path.clone(),
        source,
    };
    std_listener.set_nonblocking(true).map_err(with_path)?;
    sockopt::set_socket_passcred(&std_listener, true).map_err(|e| with_path(e.into()))?;
    let listener = UnixListener::from_std(std_listener).map_err(with_path)?;
    Ok(Some((listener, path)))
}
