//! `SO_PASSRIGHTS`: whether a Unix socket takes descriptors (`SCM_RIGHTS`), and listening
//! sockets that refuse them from their first connection on.
//!
//! With the option off (Linux 6.16 and later) the sender's `sendmsg` fails with `EPERM` and
//! nothing arrives. A listener's setting passes to the connections made to it, even those not
//! yet accepted, so it is set before `listen()`. On an older kernel the option does not exist
//! and descriptors still arrive: the caller must then close whatever it reads.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::sockopt;

/// `SO_PASSRIGHTS` (include/uapi/asm-generic/socket.h, Linux 6.16).
const SO_PASSRIGHTS: libc::c_int = 83;

/// Connections waiting to be accepted, at most, on the listeners made here.
const BACKLOG: i32 = 1024;

/// Whether this kernel refuses descriptors at a socket: set once a socket's `SO_PASSRIGHTS`
/// was turned off.
static REFUSED_AT_SOCKET: AtomicBool = AtomicBool::new(false);

/// Whether this kernel refuses descriptors at a socket: true once [`pass_rights`] turned them
/// off somewhere. Then a connection of a listener that never allows descriptors has none
/// queued, and its close cannot block on one.
pub fn refused_at_socket() -> bool {
    REFUSED_AT_SOCKET.load(Ordering::Relaxed)
}

/// Lets `socket` take descriptors (`on`) or refuses them; a listener passes the setting to the
/// connections made to it from then on. `Ok(false)`: the kernel has no such option (before
/// 6.16), and descriptors keep arriving.
pub fn pass_rights(socket: impl AsFd, on: bool) -> io::Result<bool> {
    let set = sockopt::set_int(
        socket,
        libc::SOL_SOCKET,
        SO_PASSRIGHTS,
        libc::c_int::from(on),
    );
    let known = sockopt::where_known(set)?;
    if known && !on {
        REFUSED_AT_SOCKET.store(true, Ordering::Relaxed);
    }
    Ok(known)
}

/// Whether `socket` refuses descriptors (`SO_PASSRIGHTS` off) — for a connection, since it was
/// made: then no descriptor can be queued on it, and closing it cannot close one (nor block on
/// one). `false` where the kernel has no such option, or cannot say.
pub fn refuses_rights(socket: impl AsFd) -> bool {
    sockopt::get::<libc::c_int>(socket, libc::SOL_SOCKET, SO_PASSRIGHTS, 1).is_ok_and(|v| v == 0)
}

/// A non-blocking stream socket, listening on `addr`, that refuses descriptors from its first
/// connection on where the kernel can ([`refused_at_socket`] tells afterwards).
fn listen_refusing(addr: &SocketAddrUnix) -> io::Result<UnixListener> {
    let fd: OwnedFd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    pass_rights(&fd, false)?;
    rustix::net::bind(&fd, addr)?;
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(UnixListener::from(fd))
}

/// A listener refusing descriptors on the abstract name `name` (scoped by the network
/// namespace): non-blocking, close-on-exec.
pub fn listen_abstract(name: &str) -> io::Result<UnixListener> {
    listen_refusing(&SocketAddrUnix::new_abstract_name(name.as_bytes())?)
}

/// A listener refusing descriptors on the socket file `path`: non-blocking, close-on-exec.
pub fn listen_path(path: &Path) -> io::Result<UnixListener> {
    listen_refusing(&SocketAddrUnix::new(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;

    /// Sends one byte with a pipe's read end as `SCM_RIGHTS`.
    fn send_fd(to: &std::os::unix::net::UnixStream) -> io::Result<()> {
        let (rd, _wr) = rustix::pipe::pipe()?;
        let fds = [rd.as_fd()];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            to,
            &[IoSlice::new(b"x")],
            &mut cmsg,
            rustix::net::SendFlags::empty(),
        )?;
        Ok(())
    }

    #[test]
    fn a_refusing_listener_refuses_descriptors_before_and_after_accept_until_allowed() {
        let name = format!("berth-os-rights-test-{}", std::process::id());
        let listener = listen_abstract(&name).unwrap();
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let client = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
        let before = send_fd(&client);
        let Err(e) = before else {
            // A kernel without SO_PASSRIGHTS: the descriptor arrives.
            assert!(!pass_rights(&listener, false).unwrap());
            return;
        };
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "before accept: {e}");
        assert!(refused_at_socket());
        let (accepted, _) = loop {
            match listener.accept() {
                Ok(pair) => break pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        let after = send_fd(&client).unwrap_err();
        assert_eq!(after.raw_os_error(), Some(libc::EPERM), "after accept");
        // It says so of itself: nothing can be queued on it.
        assert!(refuses_rights(&accepted));
        // An admitted connection may be allowed them again.
        assert!(pass_rights(&accepted, true).unwrap());
        assert!(!refuses_rights(&accepted));
        send_fd(&client).unwrap();
        // A socket made without the listener's setting takes them.
        let (one, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!refuses_rights(&one));
    }
}
