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
//!   the accept loop with its own connection limit and per-connection deadlines;
//! - `identity`: whom a request's reservation belongs to, from the peer's kernel credentials;
//! - `state/portserver.rs`: the grant itself, through the table and the change stream.

use std::io;
use std::os::unix::net::UnixListener as StdListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

impl std::str::FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // sun_path holds 108 bytes; an abstract name uses one for its leading NUL.
        if s.len() > 107 {
            return Err(format!(
                "the portserver address {s:?} is longer than a Unix socket address may be (107 bytes)"
            ));
        }
        match s.strip_prefix('@') {
            Some("") => Err("the portserver address \"@\" names no abstract socket; write @NAME (e.g. @unittest-portserver)".into()),
            Some(name) => Ok(Address::Abstract(name.to_owned())),
            None if s.is_empty() => Err("the portserver address is empty; write @NAME or a socket path".into()),
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
            max_connections: 256,
            io_timeout: Duration::from_secs(5),
        }
    }
}

/// A bound endpoint; a socket file is removed when this is dropped (if it is still ours).
pub(crate) struct Bound {
    listener: StdListener,
    file: Option<(PathBuf, u64)>,
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
    let (listener, file) = match address {
        Address::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(named)?;
            (StdListener::bind_addr(&addr).map_err(named)?, None)
        }
        Address::Path(path) => {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let listener = match StdListener::bind(path) {
                Ok(l) => l,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    match std::os::unix::net::UnixStream::connect(path) {
                        Err(c) if c.kind() == io::ErrorKind::ConnectionRefused => {
                            std::fs::remove_file(path).map_err(named)?;
                            StdListener::bind(path).map_err(named)?
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
    listener.set_nonblocking(true).map_err(named)?;
    Ok(Bound { listener, file })
}

/// Answers portpicker requests on `bound` until `cancel`; each connection is one task in
/// `tracker`, taken only with a permit (at most `endpoint.max_connections` at once). A
/// connection in progress when `cancel` fires is finished (each step has a deadline).
pub(crate) fn spawn(
    bound: Bound,
    endpoint: &Endpoint,
    shared: Arc<Shared>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> io::Result<()> {
    let listener = UnixListener::from_std(bound.listener.try_clone()?)?;
    let permits = Arc::new(Semaphore::new(endpoint.max_connections.max(1)));
    let timeout = endpoint.io_timeout;
    let tasks = tracker.clone();
    tracing::info!("answering portpicker requests on {}", endpoint.address);
    tracker.spawn(async move {
        // Keeps the socket file until the loop ends.
        let _bound = bound;
        loop {
            let permit = tokio::select! {
                () = cancel.cancelled() => return,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return, // never closed
                },
            };
            let stream = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("portserver accept failed: {e}");
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        }
                    }
                },
            };
            let shared = shared.clone();
            tasks.spawn(async move {
                answer(stream, &shared, timeout).await;
                drop(permit);
            });
        }
    });
    Ok(())
}

/// One connection: read the request, decide, answer or close.
async fn answer(mut stream: UnixStream, shared: &Shared, timeout: Duration) {
    let cred = match berth_protocol::authority::peer_credentials(&stream) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("portserver: no peer credentials: {e}");
            return;
        }
    };
    let request = match tokio::time::timeout(timeout, read_request(&mut stream)).await {
        Ok(Ok(Some(pid))) => pid,
        Ok(Ok(None)) => {
            tracing::debug!(peer = cred.pid, "portserver: refused a malformed request");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = cred.pid, "portserver: read failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = cred.pid, "portserver: no request within {timeout:?}");
            return;
        }
    };
    let port = match shared.portserver_request(request, cred).await {
        Ok(port) => port,
        Err(why) => {
            tracing::info!(
                peer = cred.pid,
                named = request,
                "portserver: refused: {why}"
            );
            return;
        }
    };
    let reply = format!("{port}\n");
    match tokio::time::timeout(timeout, stream.write_all(reply.as_bytes())).await {
        Ok(Ok(())) => {}
        // The process named keeps the port until it exits, as with Google's portserver.
        _ => tracing::debug!(port, "portserver: the client did not take its answer"),
    }
    let _ = stream.shutdown().await;
}

/// Reads `"<pid>\n"`: digits, optionally surrounded by ASCII whitespace, ended by a newline or
/// by the client's end of writing. `None` for anything else, or more than [`MAX_REQUEST`]
/// bytes without a newline.
async fn read_request(stream: &mut UnixStream) -> io::Result<Option<u32>> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    loop {
        let Some(room) = buf.get_mut(len..) else {
            return Ok(None);
        };
        if room.is_empty() {
            return Ok(None);
        }
        let n = stream.read(room).await?;
        if n == 0 {
            break;
        }
        let before = len;
        len += n;
        if buf.get(before..len).is_some_and(|new| new.contains(&b'\n')) {
            break;
        }
    }
    Ok(buf.get(..len).and_then(parse_request))
}

/// The pid of a request: the text up to the first newline, trimmed, all digits.
pub(crate) fn parse_request(bytes: &[u8]) -> Option<u32> {
    let line = bytes.split(|&b| b == b'\n').next()?;
    // ASCII whitespace only: `str::trim` would also take a vertical tab or Unicode spaces.
    let text = line.trim_ascii();
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_portpicker_sends_and_nothing_else() {
        assert_eq!(parse_request(b"4121\n"), Some(4121));
        assert_eq!(parse_request(b"4121"), Some(4121));
        assert_eq!(parse_request(b" 4121\r\n"), Some(4121));
        for bad in [
            &b""[..],
            b"\n",
            b"-5\n",
            b"+5\n",
            b"12a\n",
            b"99999999999\n",
            b"\xff\n",
            // Found by fuzz/ (portserver_request): not ASCII whitespace, so not a request.
            b"1\x0b\x0b",
            "\u{2003}7\n".as_bytes(),
        ] {
            assert_eq!(parse_request(bad), None, "{bad:?}");
        }
        // Only the first line counts.
        assert_eq!(parse_request(b"7\ngarbage"), Some(7));
    }

    #[test]
    fn addresses_parse_and_print_back() {
        let a: Address = "@unittest-portserver".parse().unwrap();
        assert_eq!(a, Address::Abstract("unittest-portserver".into()));
        assert_eq!(a.to_string(), DEFAULT_ADDRESS);
        let p: Address = "/run/portserver.sock".parse().unwrap();
        assert_eq!(p, Address::Path("/run/portserver.sock".into()));
        assert!("@".parse::<Address>().is_err());
        assert!("".parse::<Address>().is_err());
        assert!("x".repeat(200).parse::<Address>().is_err());
    }
}
