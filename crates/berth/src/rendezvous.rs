//! Meeting the daemon safely: the directory a per-user socket lives in, and who answers on it.
//!
//! Two checks keep another local user from standing in for a user's daemon:
//! - a `/tmp` fallback directory (used when the session has no `XDG_RUNTIME_DIR`) is trusted
//!   only when it is a real directory owned by this user and writable by nobody else
//!   ([`private_dir`]);
//! - every connection the library makes — first connect, reconnect, the C library's and the
//!   CLI's — checks the kernel's credentials of the listening process (`SO_PEERCRED`) before
//!   a single byte is sent: it must be root or this user ([`connect`]).
//!
//! Both refusals are [`Error::PermissionDenied`]: somebody answered, and was not trusted (an
//! unavailable daemon would make the CLI start one — on the very path that was squatted).

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::Duration;

use berth_protocol::paths::{self, DirFacts};
use tokio::net::UnixStream;

use crate::client::Options;
use crate::error::Error;

/// Makes sure `dir`, a `/tmp` fallback directory, is private to the effective user: creates
/// it with mode 0700 when it is absent and `create` is set, then checks it with `lstat` (a
/// symbolic link is refused, as is a directory another user owns or others may write to).
/// Returns whether it exists.
pub fn private_dir(dir: &Path, create: bool) -> Result<bool, Error> {
    let uid = rustix::process::geteuid().as_raw();
    if create {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::PermissionDenied(format!(
                    "cannot create {} for berth's socket ({e}); set XDG_RUNTIME_DIR to a private directory",
                    dir.display()
                )))
            }
        }
    }
    // Checked after creating, never before only: whoever made it first is what counts.
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(false),
        Err(e) => {
            return Err(Error::PermissionDenied(format!(
                "cannot inspect {} ({e}); set XDG_RUNTIME_DIR to a private directory",
                dir.display()
            )))
        }
    };
    paths::check_private_dir(dir, &DirFacts::of(&meta), uid)
        .map_err(|e| Error::PermissionDenied(e.to_string()))?;
    // And where it is stays put: its parent is not another user's to rename it in.
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Followed: a `TMPDIR` given as a symbolic link is the directory it names.
        if let Ok(meta) = std::fs::metadata(parent) {
            paths::check_parent_dir(parent, &DirFacts::of(&meta), uid)
                .map_err(|e| Error::PermissionDenied(e.to_string()))?;
        }
    }
    Ok(true)
}

/// When `socket` lies in a directory of this user's runtime files (the `/tmp` fallback, or
/// `$XDG_RUNTIME_DIR/berth`), that directory must be private ([`private_dir`]); `create`
/// makes it if absent. Whether the socket may exist.
pub(crate) fn check_socket_dir(socket: &Path, create: bool) -> Result<bool, Error> {
    let uid = rustix::process::getuid().as_raw();
    match paths::in_user_dir(&paths::process_env, uid, socket) {
        Some(dir) => private_dir(&dir, create),
        None => Ok(true),
    }
}

/// Connects to `path` within `timeout` and checks who listens there before anything is sent.
/// Nobody listening is [`Error::Unavailable`]; a listener that is neither root nor this user
/// (nor [`Options::trusted_daemon_uid`]), or a squatted fallback directory, is
/// [`Error::PermissionDenied`].
pub(crate) async fn connect(path: &Path, options: &Options) -> Result<UnixStream, Error> {
    connect_within(path, options.connect_timeout, options.trusted_daemon_uid).await
}

/// [`connect`] with an explicit time limit; `trusted`: one more uid whose daemon is trusted.
pub(crate) async fn connect_within(
    path: &Path,
    timeout: Duration,
    trusted: Option<u32>,
) -> Result<UnixStream, Error> {
    match reach(path, timeout, trusted).await? {
        Reached::Daemon(stream) => Ok(stream),
        Reached::Nobody(why) => Err(Error::Unavailable(format!(
            "no berth daemon answers on {} ({why}); start one with `berth daemon --socket {}`",
            path.display(),
            path.display()
        ))),
    }
}

/// What a connection attempt found.
pub(crate) enum Reached {
    /// A trusted daemon's connection.
    Daemon(UnixStream),
    /// Nobody listens; why, in a few words.
    Nobody(String),
}

/// Connects to `path` within `timeout` and checks who listens there; nobody listening is not
/// an error here (the caller may try elsewhere, or start a daemon).
pub(crate) async fn reach(
    path: &Path,
    timeout: Duration,
    trusted: Option<u32>,
) -> Result<Reached, Error> {
    if !check_socket_dir(path, false)? {
        return Ok(Reached::Nobody("its directory does not exist".into()));
    }
    // A listener whose queue of connections waiting to be accepted is full answers a
    // non-blocking connect with EAGAIN: the daemon is there, only busy (or flooded by someone
    // else's connections). Tried again, with a growing pause, until the timeout.
    let attempt = async {
        let mut pause = Duration::from_millis(1);
        loop {
            match UnixStream::connect(path).await {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    };
    let stream = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Ok(Reached::Nobody(why_nobody(path, &e))),
        Err(_) => {
            return Err(Error::Unavailable(format!(
                "the berth daemon on {} did not accept the connection within {}s; its queue of waiting connections is full or it is stuck — see `berth status`, or its log",
                path.display(),
                timeout.as_secs_f32()
            )))
        }
    };
    check_peer(&stream, path, trusted)?;
    Ok(Reached::Daemon(stream))
}

/// Why nothing answered on `path`: a file there that is not a socket is named for what it is
/// (a connection to it is refused like one to a socket nobody listens on).
fn why_nobody(path: &Path, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        if let Some(what) = not_a_socket(path) {
            return format!("it is {what}, not a socket");
        }
    }
    plain(e)
}

/// What `path` is when it exists and is not a socket: "a regular file", "a directory", ….
pub(crate) fn not_a_socket(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path).ok()?.file_type();
    if kind.is_socket() {
        None
    } else if kind.is_file() {
        Some("a regular file")
    } else if kind.is_dir() {
        Some("a directory")
    } else {
        Some("a file of another kind")
    }
}

/// An I/O error in a few words: "no such file", not "No such file or directory (os error 2)".
fn plain(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such socket".into(),
        io::ErrorKind::ConnectionRefused => "nothing listens on it".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The process listening on `stream` must be root or this (effective) user.
fn check_peer(stream: &UnixStream, path: &Path, trusted: Option<u32>) -> Result<(), Error> {
    let me = rustix::process::geteuid().as_raw();
    let cred = stream.peer_cred().map_err(|e| {
        Error::PermissionDenied(format!(
            "cannot learn who listens on {} ({e}); refusing to talk to it",
            path.display()
        ))
    })?;
    if cred.uid() == 0 || cred.uid() == me || Some(cred.uid()) == trusted {
        return Ok(());
    }
    let pid = cred
        .pid()
        .filter(|&p| p != 0)
        .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    Err(Error::PermissionDenied(format!(
        "the process listening on {} (pid {pid}, uid {}) is neither root nor you (uid {me}); refusing to talk to it, as it could be another user standing in for your berth daemon. Use a socket of your own (set XDG_RUNTIME_DIR, or BERTH_SOCKET), or stop that process",
        path.display(),
        cred.uid()
    )))
}
