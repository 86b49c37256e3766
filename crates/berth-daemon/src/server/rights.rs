//! Which of the daemon's sockets take descriptors (`SCM_RIGHTS`).
//!
//! A descriptor sent to the daemon becomes the daemon's to close, and a close can block (a TCP
//! socket with `SO_LINGER` and unsent data, a FUSE file): on a thread that serves clients, that
//! stalls every client. Only an admitted session of the main socket needs descriptors (a socket
//! to bind, with `Associate`); every other socket — the portserver endpoint, the authority
//! beacon, a connection the daemon refuses — refuses them in the kernel with `SO_PASSRIGHTS`
//! off (`berth_os::rights`; Linux 6.16 and later). On an older kernel descriptors still
//! arrive: every connection is then closed, and every descriptor read is closed, on the closer
//! threads (see `closer`).

use std::io;
use std::os::unix::net::UnixListener;
use std::path::Path;

pub(crate) use berth_os::rights::{pass_rights, refused_at_socket};

/// Notes, once listening, that this kernel cannot refuse descriptors.
fn noted(listener: io::Result<UnixListener>) -> io::Result<UnixListener> {
    if listener.is_ok() && !refused_at_socket() {
        tracing::debug!("this kernel cannot refuse descriptors (SO_PASSRIGHTS); they are closed on the closer threads");
    }
    listener
}

/// A listener on the abstract name `name` (scoped by the network namespace) that refuses
/// descriptors from its first connection on (where the kernel can).
pub(crate) fn listen_abstract(name: &str) -> io::Result<UnixListener> {
    noted(berth_os::rights::listen_abstract(name))
}

/// A listener on the socket file `path` that refuses descriptors from its first connection on
/// (where the kernel can).
pub(crate) fn listen_path(path: &Path) -> io::Result<UnixListener> {
    noted(berth_os::rights::listen_path(path))
}
