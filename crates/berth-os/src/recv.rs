//! One `recvmsg(2)` with its ancillary data parsed into plain values.
//!
//! rustix parses `SCM_CREDENTIALS` into a `UCred` whose pid is a non-zero type, but the kernel
//! sends pid 0 for a sender outside the receiver's pid namespace (a container sharing the
//! socket): reading that into a non-zero type is undefined behaviour. So the control messages
//! are parsed here, into plain integers.

#![expect(
    unsafe_code,
    reason = "recvmsg and the CMSG_* accessors: no safe wrapper keeps a zero pid"
)]

use std::io::{self, IoSliceMut};
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A sender's credentials as the kernel reported them. `pid` is 0 when the kernel cannot name
/// the sender in the daemon's pid namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// Process id, or 0.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// What one read brought.
pub struct Message {
    /// Bytes read into the buffer.
    pub bytes: usize,
    /// Descriptors received (`SCM_RIGHTS`), owned, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The sender (`SCM_CREDENTIALS`).
    pub sender: Option<Credentials>,
    /// A pidfd of the sender (`SCM_PIDFD`, with [`crate::peer::pass_pidfd`] on): it names the
    /// very process that sent the bytes, so what `/proc/PID` says of `sender.pid` can be
    /// checked afterwards. `None` without the option, or when the kernel could not make one
    /// ([`Message::sender_pidfd_error`]).
    pub sender_pidfd: Option<OwnedFd>,
    /// Why the kernel sent no pidfd of the sender although the option is on (`SCM_PIDFD`
    /// carrying a negative errno): `ESRCH` when the sender has exited and been reaped (kernels
    /// before 6.16), `EMFILE`/`ENFILE` when the reader is out of descriptors.
    pub sender_pidfd_error: Option<i32>,
    /// The kernel dropped control data that did not fit (`MSG_CTRUNC`).
    pub truncated: bool,
}

/// Whether the peer of stream socket `socket` has closed its end and nothing is left to read:
/// a peek at one byte, without room for ancillary data — a peek only copies what is queued, so
/// no descriptor is installed, and none is closed, whatever the queue holds. `false` while
/// bytes wait, or nothing has arrived yet. For a reader that may not receive now (no room for
/// the descriptors a message could bring) but must still see a connection end.
pub fn at_end(socket: BorrowedFd<'_>) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    match rustix::net::recv(
        socket,
        &mut byte,
        rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
    ) {
        Ok((0, _)) => Ok(true),
        Ok(_) => Ok(false),
        Err(rustix::io::Errno::AGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `SCM_PIDFD` (include/linux/socket.h, Linux 6.5): the sender's pidfd, sent with every message
/// to a socket with `SO_PASSPIDFD` on.
const SCM_PIDFD: libc::c_int = 0x04;

/// A control buffer with room for `max_fds` descriptors, one set of credentials and the
/// sender's pidfd, aligned for `cmsghdr`. (Without room for the pidfd the kernel would mark
/// every message truncated.)
pub fn control_buffer(max_fds: usize) -> Vec<u64> {
    let fds = u32::try_from(max_fds * size_of::<i32>()).unwrap_or(u32::MAX);
    let cred = u32::try_from(size_of::<libc::ucred>()).unwrap_or(u32::MAX);
    let pidfd = u32::try_from(size_of::<i32>()).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE only computes a size.
    let bytes = unsafe { libc::CMSG_SPACE(fds) + libc::CMSG_SPACE(cred) + libc::CMSG_SPACE(pidfd) }
        as usize;
    vec![0u64; bytes.div_ceil(size_of::<u64>())]
}

/// The most descriptors the kernel passes in one message (`SCM_MAX_FD`, include/net/scm.h).
pub const SCM_MAX_FD: usize = 253;

/// Reads once from `socket` into `buf`, with descriptors received close-on-exec; never waits
/// (`WouldBlock` when nothing is queued).
pub fn recv(socket: BorrowedFd<'_>, buf: &mut [u8], control: &mut [u64]) -> io::Result<Message> {
    recv_with(socket, buf, control, libc::MSG_DONTWAIT)
}

/// [`recv`] that waits for a message on a blocking socket (a thread-per-connection reader's;
/// the benchmark's floor server).
pub fn recv_waiting(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    control: &mut [u64],
) -> io::Result<Message> {
    recv_with(socket, buf, control, 0)
}

fn recv_with(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    control: &mut [u64],
    flags: libc::c_int,
) -> io::Result<Message> {
    let mut iov = [IoSliceMut::new(buf)];
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr().cast();
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(control);
    // SAFETY: `msg` points at live buffers (`iov`, `control`) for the duration of the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | flags) };
    let bytes = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let mut fds = Vec::new();
    let mut sender = None;
    let mut sender_pidfd = None;
    let mut sender_pidfd_error = None;
    // SAFETY: the CMSG_* accessors walk the control data the kernel wrote into `control`,
    // bounded by `msg.msg_controllen`; every read is unaligned-safe and within a header's
    // declared length, and each descriptor in SCM_RIGHTS is a new one this process now owns,
    // as is a non-negative SCM_PIDFD (a negative one is the error the kernel met making it).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = cmsg.read_unaligned();
            let data = libc::CMSG_DATA(cmsg);
            let payload = header.cmsg_len.saturating_sub(libc::CMSG_LEN(0) as usize);
            match (header.cmsg_level, header.cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for i in 0..payload / size_of::<i32>() {
                        let raw = data
                            .add(i * size_of::<i32>())
                            .cast::<i32>()
                            .read_unaligned();
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                    if payload >= size_of::<libc::ucred>() =>
                {
                    let cred = data.cast::<libc::ucred>().read_unaligned();
                    sender = Some(Credentials {
                        pid: u32::try_from(cred.pid).unwrap_or(0),
                        uid: cred.uid,
                        gid: cred.gid,
                    });
                }
                (libc::SOL_SOCKET, SCM_PIDFD) if payload >= size_of::<i32>() => {
                    let raw = data.cast::<i32>().read_unaligned();
                    if raw >= 0 {
                        sender_pidfd = Some(OwnedFd::from_raw_fd(raw));
                    } else {
                        sender_pidfd_error = Some(raw.saturating_neg());
                    }
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Message {
        bytes,
        fds,
        sender,
        sender_pidfd,
        sender_pidfd_error,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reads_bytes_descriptors_and_credentials() {
        let (a, b) = UnixStream::pair().unwrap();
        rustix::net::sockopt::set_socket_passcred(&b, true).unwrap();
        let pidfds = crate::peer::pass_pidfd(&b).unwrap();
        let pipe = rustix::pipe::pipe().unwrap();
        let fds = [pipe.0.as_fd()];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &a,
            &[std::io::IoSlice::new(b"hello")],
            &mut cmsg,
            rustix::net::SendFlags::empty(),
        )
        .unwrap();
        let mut buf = [0u8; 16];
        let mut control = control_buffer(4);
        let got = recv(b.as_fd(), &mut buf, &mut control).unwrap();
        assert_eq!(&buf[..got.bytes], b"hello");
        assert_eq!(got.fds.len(), 1);
        assert!(!got.truncated);
        let me = got.sender.unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.uid, rustix::process::getuid().as_raw());
        if pidfds {
            let pidfd = got
                .sender_pidfd
                .expect("SO_PASSPIDFD is on: a pidfd comes along");
            assert!(!crate::pidfd::has_exited(&pidfd).unwrap());
            assert_eq!(crate::peer::pidfd_pid(&pidfd), Some(std::process::id()));
        }
        (&a).write_all(b"x").unwrap();
        let plain = recv(b.as_fd(), &mut buf, &mut control).unwrap();
        assert_eq!(plain.bytes, 1);
        assert!(plain.fds.is_empty());
    }
}
