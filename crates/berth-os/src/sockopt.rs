//! Socket options rustix has no wrapper for — `SO_PASSPIDFD`, `SO_PEERPIDFD` and
//! `SO_PASSRIGHTS`, which libc does not name either, and `SO_PEERCRED` and `SO_NETNS_COOKIE`,
//! which berth reads into types of its own — through one `getsockopt` and one `setsockopt`.

#![expect(
    unsafe_code,
    reason = "getsockopt/setsockopt of options rustix has no wrapper for"
)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// A plain C value an option is read into: every bit pattern of its size is one.
pub(crate) trait Plain: Copy {}

impl Plain for libc::c_int {}
impl Plain for u64 {}
impl Plain for libc::ucred {}

/// Reads option `name` of `level` of `socket` into a copy of `value` (its start value, for
/// what the kernel leaves unwritten).
pub(crate) fn get<T: Plain>(
    socket: impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    mut value: T,
) -> io::Result<T> {
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0);
    // SAFETY: `value` is a live, writable `T` and `len` its size, so the kernel writes at most
    // that many bytes, and any bytes are a valid `T` (`Plain`); the descriptor is borrowed for
    // the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets option `name` of `level` of `socket` to the int `value`.
pub(crate) fn set_int(
    socket: impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `value` is a live c_int and `len` its size; the descriptor is borrowed for the
    // duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `result` of an option this kernel may not have: `Ok(false)` where it has none
/// (`ENOPROTOOPT`), `Ok(true)` once it worked.
pub(crate) fn where_known(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(false),
        Err(e) => Err(e),
    }
}
