//! libberth: the C library of berth, the Linux port-reservation service, modelled on the
//! Windows port-reservation API.
//!
//! The build produces `libberth.so` and `libberth.a`; `include/berth.h` declares what this
//! file exports. The header is generated from this crate by cbindgen and committed; the
//! `header` test fails when the two differ.
//!
//! Every function returns 0, or -1 with `errno` set to the errno of the failure's kind
//! (`docs/associate.md`), the kind for [`berth_last_error_kind`] and a message for
//! [`berth_last_error_message`]. Ports are in host byte order.
//!
//! # Layout
//! - this file: the exported types and functions, as `berth.h` declares them.
//! - `session`: the process-wide session (one daemon connection, opened on first use) and
//!   the reservations acquired through it; what a forked child does.
//! - `sockaddr`: `struct sockaddr` → the address to bind on.
//! - `error`: the thread's last error kind and message, and `errno`.
//! - `panic`: the boundary every export runs inside.

#![allow(
    unsafe_code,
    reason = "a C ABI reads and writes the caller's pointers, borrows its descriptors and sets errno"
)]
#![deny(unsafe_op_in_unsafe_fn)]

mod error;
mod panic;
mod session;
mod sockaddr;

use std::ffi::{c_char, c_int};
use std::os::fd::BorrowedFd;

use berth::{Protocol, Token};
use berth_core::{RangeError, RangeRequest};

use crate::error::Failure;
use crate::panic::boundary;

/// A block of ports: `number_of_ports` ports from `start_port`, in host byte order (the
/// Windows `INET_PORT_RANGE` holds them in network byte order).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, reason = "the C name, as the C API gives it")]
pub struct berth_port_range {
    /// The first port; 0 asks for any free block (a wildcard reservation).
    pub start_port: u16,
    /// How many ports, at least 1; the block may not run past 65535.
    pub number_of_ports: u16,
}

/// A reservation granted by `berth_acquire_port_reservation`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, reason = "the C name, as the C API gives it")]
pub struct berth_port_reservation_instance {
    /// The block granted (for a wildcard request, the block the daemon chose).
    pub reservation: berth_port_range,
    /// The reservation's token: non-zero, for associate and release.
    pub token: u64,
}

/// The kind of the last failure on this thread, as `berth_last_error_kind` returns it: one
/// value per error kind of berth (`docs/errors.md`), `BERTH_ERROR_KIND_NONE` after a success,
/// and `BERTH_ERROR_KIND_INTERNAL` for a bug in libberth.
///
/// errno alone cannot tell every kind apart: conflict and reservation-full are both
/// EADDRINUSE. The numbers are stable; a later release may add kinds after the last one, so
/// a `switch` over them needs a `default`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, reason = "the C name, as the C API gives it")]
pub enum berth_error_kind {
    /// The last call on this thread succeeded (or none was made yet).
    None = 0,
    /// EINVAL: count 0, a range past 65535, start 0 for a persistent reservation, token 0, a
    /// bad protocol, pointer, descriptor or address.
    InvalidArgument = 1,
    /// EOPNOTSUPP: not a TCP/UDP socket, its type does not match the reservation's protocol,
    /// or it is in another network namespace.
    NotSupported = 2,
    /// EADDRINUSE: the range asked for overlaps a reservation or a port in use.
    Conflict = 3,
    /// EADDRNOTAVAIL: no free block that large in the pool.
    PoolExhausted = 4,
    /// EADDRINUSE: no port of the reservation can be bound (or not the one asked for).
    ReservationFull = 5,
    /// ENOENT: no such reservation, or no persistent reservation of exactly that range.
    NotFound = 6,
    /// EACCES: not the owner nor an administrator, or a privileged port not allowed.
    PermissionDenied = 7,
    /// EDQUOT: the user's reservation or port quota is used up.
    QuotaExceeded = 8,
    /// ECONNREFUSED: no daemon answers, or it could not record the change (nothing changed).
    Unavailable = 9,
    /// EPROTO: the library and the daemon share no protocol version.
    Incompatible = 10,
    /// EIO: an internal error of libberth (a bug); the message says what to report.
    Internal = 11,
}

/// Reserves a block of ports for this process.
///
/// `protocol` is `IPPROTO_TCP` or `IPPROTO_UDP`. `range->start_port == 0` asks for any free
/// block of `range->number_of_ports` ports from the daemon's pool; otherwise exactly that
/// block is reserved. On success `*out` holds the block and its token.
///
/// The reservation lives until `berth_release_port_reservation` or until the process exits;
/// only this process may bind sockets from it (not even a forked child may).
///
/// Errors: EINVAL (bad protocol, count 0, range past 65535, NULL pointer), EADDRINUSE (the
/// block overlaps a reservation or a port in use), EADDRNOTAVAIL (no free block that large in
/// the pool), EACCES, EDQUOT, ECONNREFUSED (no daemon answers), EPROTO.
///
/// # Safety
/// `range` is NULL or points to a readable `berth_port_range`; `out` is NULL or points to a
/// writable `berth_port_reservation_instance`.
#[no_mangle]
pub unsafe extern "C" fn berth_acquire_port_reservation(
    protocol: c_int,
    range: *const berth_port_range,
    out: *mut berth_port_reservation_instance,
) -> c_int {
    boundary(|| {
        let protocol = protocol_of(protocol)?;
        // SAFETY: the caller passes NULL or a readable, aligned berth_port_range; `as_ref`
        // maps NULL to None.
        let range = unsafe { range.as_ref() }.copied().ok_or_else(|| {
            Failure::invalid("range is NULL; pass a berth_port_range with the ports to reserve")
        })?;
        // SAFETY: `out` is NULL (refused inside) or writable, as the caller promised.
        unsafe { acquire_into(protocol, range, berth::AcquireOptions::held(), out) }
    })
}

/// What [`berth_acquire_port_reservation_ex`] adds to a reservation request. Set `size` to
/// `sizeof(berth_acquire_options)`, so that a later libberth with more fields knows which
/// ones the caller filled in.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types, reason = "the C API's naming")]
pub struct berth_acquire_options {
    /// `sizeof(berth_acquire_options)`.
    pub size: u32,
    /// NULL, or a NUL-terminated UTF-8 label saying what the ports are for (at most 128
    /// bytes, no control characters): `berth list` and `berth why` show it with the owner.
    pub label: *const c_char,
    /// With `within_last`: a wildcard request (`start_port == 0`) takes any free block inside
    /// `within_first..=within_last` (in the daemon's pool or not) instead of one from the pool.
    /// Both 0: the pool.
    pub within_first: u16,
    /// The last port of the bounds (see `within_first`).
    pub within_last: u16,
    /// NULL, or a NUL-terminated name (e.g. `shop/web`: segments of a-z, 0-9, `.`, `_`, `-`
    /// joined by `/`, at most 128 bytes): a wildcard request gets the block the name had last
    /// time while it is free, and `berth port NAME` finds it. Unique among the user's live
    /// reservations of the protocol (EADDRINUSE otherwise).
    pub name: *const c_char,
}

/// [`berth_acquire_port_reservation`] with options: a label, a wildcard's bounds, a name.
/// `options` may be NULL (no options).
///
/// Errors: those of `berth_acquire_port_reservation`, and EINVAL for a `size` that is not
/// `sizeof(berth_acquire_options)`, a label that is not UTF-8, longer than 128 bytes or with
/// control characters, a name that is not one, bounds with a non-zero `start_port`, reversed
/// bounds or bounds narrower than the block; EADDRNOTAVAIL when no block inside the bounds is
/// free; EADDRINUSE when another live reservation of yours has the name.
///
/// The name's block of last time, when taken by something else, is replaced by another free
/// block (the name moves); `berth names` shows where each of your names is.
///
/// # Safety
/// As `berth_acquire_port_reservation`; `options` is NULL or points to a readable
/// `berth_acquire_options` whose `label` and `name` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn berth_acquire_port_reservation_ex(
    protocol: c_int,
    range: *const berth_port_range,
    options: *const berth_acquire_options,
    out: *mut berth_port_reservation_instance,
) -> c_int {
    boundary(|| {
        let protocol = protocol_of(protocol)?;
        // SAFETY: as in `berth_acquire_port_reservation`.
        let range = unsafe { range.as_ref() }.copied().ok_or_else(|| {
            Failure::invalid("range is NULL; pass a berth_port_range with the ports to reserve")
        })?;
        // SAFETY: the caller passes NULL or a readable, aligned berth_acquire_options.
        let wanted = match unsafe { options.as_ref() } {
            None => berth::AcquireOptions::held(),
            // SAFETY: the caller promises `label` is NULL or NUL-terminated.
            Some(options) => unsafe { acquire_options(options) }?,
        };
        // SAFETY: `out` is NULL (refused inside) or writable, as the caller promised.
        unsafe { acquire_into(protocol, range, wanted, out) }
    })
}

/// The library's options from the C ones: held, as every C reservation is.
///
/// # Safety
/// `options.label` and `options.name` are NULL or point to NUL-terminated strings.
unsafe fn acquire_options(
    options: &berth_acquire_options,
) -> Result<berth::AcquireOptions, Failure> {
    let expected = std::mem::size_of::<berth_acquire_options>();
    if usize::try_from(options.size).ok() != Some(expected) {
        return Err(Failure::invalid(format!(
            "options->size is {}, not sizeof(berth_acquire_options) = {expected}: set it, and build against the berth.h of this libberth",
            options.size
        )));
    }
    let mut wanted = berth::AcquireOptions::held();
    // SAFETY: each is NULL or NUL-terminated, as the caller promised.
    if let Some(label) = unsafe { c_text(options.label, "options->label")? } {
        wanted.label = label.to_owned();
    }
    // SAFETY: as above.
    if let Some(name) = unsafe { c_text(options.name, "options->name")? } {
        wanted.name = name.to_owned();
    }
    if (options.within_first, options.within_last) != (0, 0) {
        wanted.within = Some((options.within_first, options.within_last));
    }
    Ok(wanted)
}

/// Checks `range`, acquires it with `options` and writes the reservation to `out`.
///
/// # Safety
/// `out` is NULL or points to a writable `berth_port_reservation_instance`.
unsafe fn acquire_into(
    protocol: Protocol,
    range: berth_port_range,
    options: berth::AcquireOptions,
    out: *mut berth_port_reservation_instance,
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid(
            "out is NULL; pass a berth_port_reservation_instance to receive the reservation",
        ));
    }
    let (start, count) = (range.start_port, range.number_of_ports);
    RangeRequest::from_start_count_within(start, count, options.within)?;
    let got = session::acquire(protocol, start, count, &options)?;
    let instance = berth_port_reservation_instance::from(got);
    // SAFETY: `out` is non-null (checked above) and the caller gave a writable, aligned
    // berth_port_reservation_instance.
    unsafe { out.write(instance) };
    Ok(())
}

/// Binds the socket `fd` — the caller's own, unbound TCP (`SOCK_STREAM`) or UDP
/// (`SOCK_DGRAM`) socket of the reservation's protocol — to a free port of the reservation
/// `token`, on the address `local`, or on the unspecified address of the socket's family when
/// `local` is NULL. With a port of 0 in `local` (or NULL), the daemon picks the port, spreading
/// successive binds over the block; `getsockname` tells which. A non-zero port in `local`
/// (network byte order, as in any sockaddr) asks for exactly that port of the reservation:
/// the call fails (EADDRINUSE) rather than bind another. The socket's options are left as
/// they are.
///
/// Errors: EINVAL (bad fd, token 0, `local_len` too short, family not AF_INET/AF_INET6, socket
/// already bound, address not of this host), EOPNOTSUPP (not a TCP/UDP socket, or its type does
/// not match the reservation's protocol), EADDRINUSE (every port of the reservation is bound),
/// ENOENT (no such reservation), EACCES (the reservation is another process's), ECONNREFUSED.
///
/// # Safety
/// `local` is NULL or points to `local_len` readable bytes holding a `sockaddr_in` or
/// `sockaddr_in6`; `fd` stays open for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn berth_associate_port_reservation(
    fd: c_int,
    token: u64,
    local: *const libc::sockaddr,
    local_len: libc::socklen_t,
) -> c_int {
    boundary(|| {
        if fd < 0 {
            return Err(Failure::invalid(format!(
                "fd {fd} is not a file descriptor; pass an open, unbound TCP or UDP socket"
            )));
        }
        let token = token_of(token)?;
        // SAFETY: the caller vouches for `local` (NULL, or `local_len` readable bytes).
        let address = unsafe { sockaddr::ip_of(local, local_len) }?;
        // SAFETY: as above; `ip_of` has checked the family and the length.
        let port = unsafe { sockaddr::port_of(local) }.filter(|&p| p != 0);
        // SAFETY: `fd` is non-negative and the caller keeps it open during the call; it is
        // only borrowed (the client duplicates it to send it), never closed here.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        session::associate(token, fd, address, port).map(drop)
    })
}

/// Releases the reservation `token`, returning its block to the pool. Sockets already bound
/// from it keep their ports.
///
/// Errors: EINVAL (token 0), ENOENT (no such reservation), EACCES (the reservation is
/// another process's and the caller is not an administrator), ECONNREFUSED.
#[no_mangle]
pub extern "C" fn berth_release_port_reservation(token: u64) -> c_int {
    boundary(|| session::release(token_of(token)?))
}

/// Creates a persistent TCP reservation of `count` ports from `start` (administrators only)
/// and stores its token in `*token`. It survives daemon restarts and reboots until deleted;
/// its token is stable. Durable when this returns.
///
/// Errors: EINVAL (start 0, count 0, range past 65535, NULL token), EADDRINUSE (the range
/// overlaps a reservation or a port in use), EACCES (not an administrator), ECONNREFUSED.
///
/// # Safety
/// `token` is NULL or points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn berth_create_persistent_tcp_port_reservation(
    start: u16,
    count: u16,
    token: *mut u64,
) -> c_int {
    // SAFETY: forwarded from this function's own contract.
    unsafe { create_persistent(Protocol::Tcp, start, count, token) }
}

/// Deletes the persistent TCP reservation of exactly `count` ports from `start`
/// (administrators only). Durable when this returns.
///
/// Errors: EINVAL, ENOENT (no persistent reservation of exactly that range), EACCES,
/// ECONNREFUSED.
#[no_mangle]
pub extern "C" fn berth_delete_persistent_tcp_port_reservation(start: u16, count: u16) -> c_int {
    boundary(|| session::delete_persistent(Protocol::Tcp, start, count))
}

/// Stores in `*token` the token of the persistent TCP reservation of exactly `count` ports
/// from `start`.
///
/// Errors: EINVAL, ENOENT (no persistent reservation of exactly that range), ECONNREFUSED.
///
/// # Safety
/// `token` is NULL or points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn berth_lookup_persistent_tcp_port_reservation(
    start: u16,
    count: u16,
    token: *mut u64,
) -> c_int {
    // SAFETY: forwarded from this function's own contract.
    unsafe { lookup_persistent(Protocol::Tcp, start, count, token) }
}

/// Creates a persistent UDP reservation; see
/// `berth_create_persistent_tcp_port_reservation`.
///
/// # Safety
/// `token` is NULL or points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn berth_create_persistent_udp_port_reservation(
    start: u16,
    count: u16,
    token: *mut u64,
) -> c_int {
    // SAFETY: forwarded from this function's own contract.
    unsafe { create_persistent(Protocol::Udp, start, count, token) }
}

/// Deletes a persistent UDP reservation; see
/// `berth_delete_persistent_tcp_port_reservation`.
#[no_mangle]
pub extern "C" fn berth_delete_persistent_udp_port_reservation(start: u16, count: u16) -> c_int {
    boundary(|| session::delete_persistent(Protocol::Udp, start, count))
}

/// Finds the live reservation named `name` (yours, else a persistent reservation's host-wide
/// name) in `protocol` (`IPPROTO_TCP` or `IPPROTO_UDP`) and writes its block and token to
/// `*out` — how a test harness finds the port a service reserved with `berth run --name`. The
/// token is for reading: only its owner may use or release the reservation.
///
/// Errors: EINVAL (bad protocol, a name that is not one, NULL pointer), ENOENT (no live
/// reservation of that name and protocol), ECONNREFUSED.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `out` is NULL or points to a writable
/// `berth_port_reservation_instance`.
#[no_mangle]
pub unsafe extern "C" fn berth_lookup_named_port_reservation(
    protocol: c_int,
    name: *const c_char,
    out: *mut berth_port_reservation_instance,
) -> c_int {
    // SAFETY: forwarded from this function's own contract.
    boundary(|| unsafe { named_into(protocol, name, None, out) })
}

/// [`berth_lookup_named_port_reservation`], answered once the name exists — with `bound`
/// non-zero, once a socket is bound to its ports (the rendezvous port files are used for) —
/// or failing with ENOENT after `timeout_ms` (at most 3,600,000). The daemon waits; the call
/// blocks.
///
/// # Safety
/// As `berth_lookup_named_port_reservation`.
#[no_mangle]
pub unsafe extern "C" fn berth_wait_named_port_reservation(
    protocol: c_int,
    name: *const c_char,
    bound: c_int,
    timeout_ms: u32,
    out: *mut berth_port_reservation_instance,
) -> c_int {
    let wait = Some((
        bound != 0,
        std::time::Duration::from_millis(u64::from(timeout_ms)),
    ));
    // SAFETY: forwarded from this function's own contract.
    boundary(|| unsafe { named_into(protocol, name, wait, out) })
}

/// Names the port the caller's own bound TCP or UDP socket `fd` is bound to (a server that
/// bound port 0, say): it becomes a reservation of this process named `name`, living as long
/// as the process, and `berth port NAME` (or `berth_lookup_named_port_reservation`) finds it
/// — the port file, without the file. `*out` receives the reservation.
///
/// Errors: EINVAL (bad fd, not bound, a name that is not one, NULL pointer), EOPNOTSUPP (not
/// a TCP or UDP socket), EADDRINUSE (the port is reserved, or the name is yours already),
/// EACCES (another user's socket shares the port), ECONNREFUSED.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `out` is NULL or points to a writable
/// `berth_port_reservation_instance`; `fd` stays open for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn berth_publish_port_reservation(
    fd: c_int,
    name: *const c_char,
    out: *mut berth_port_reservation_instance,
) -> c_int {
    boundary(|| {
        if fd < 0 {
            return Err(Failure::invalid("fd is negative; pass your bound socket"));
        }
        if name.is_null() || out.is_null() {
            return Err(Failure::invalid(
                "name or out is NULL; pass a name such as \"shop/web\" and a berth_port_reservation_instance",
            ));
        }
        // SAFETY: non-null (checked above) and NUL-terminated, as the caller promised.
        let name = unsafe { c_text(name, "name")? }.unwrap_or_default();
        // SAFETY: the caller keeps `fd` open for the duration of the call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let got = session::publish(fd, name)?;
        let instance = berth_port_reservation_instance::from(got);
        // SAFETY: `out` is non-null (checked above) and writable, as the caller promised.
        unsafe { out.write(instance) };
        Ok(())
    })
}

impl From<session::Acquired> for berth_port_reservation_instance {
    fn from(got: session::Acquired) -> Self {
        berth_port_reservation_instance {
            reservation: berth_port_range {
                start_port: got.start,
                number_of_ports: got.count,
            },
            token: got.token,
        }
    }
}

/// The UTF-8 text at `ptr` (`None` for NULL), or invalid-argument naming `what`.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives the returned borrow.
unsafe fn c_text<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null and NUL-terminated, as the caller promised.
    let text = unsafe { std::ffi::CStr::from_ptr(ptr) };
    text.to_str().map(Some).map_err(|_| {
        Failure::invalid(format!(
            "{what} is not UTF-8; pass plain text (a name looks like shop/web)"
        ))
    })
}

/// Looks `name` up (or waits for it) and writes what it names to `out`.
///
/// # Safety
/// `name` is NULL or NUL-terminated; `out` is NULL or writable.
unsafe fn named_into(
    protocol: c_int,
    name: *const c_char,
    wait: Option<(bool, std::time::Duration)>,
    out: *mut berth_port_reservation_instance,
) -> Result<(), Failure> {
    let protocol = protocol_of(protocol)?;
    if name.is_null() {
        return Err(Failure::invalid(
            "name is NULL; pass a name such as \"shop/web\"",
        ));
    }
    if out.is_null() {
        return Err(Failure::invalid(
            "out is NULL; pass a berth_port_reservation_instance to receive the reservation",
        ));
    }
    // SAFETY: non-null (checked above) and NUL-terminated, as the caller promised.
    let name = unsafe { c_text(name, "name")? }.unwrap_or_default();
    let got = session::named(protocol, name, wait)?;
    let instance = berth_port_reservation_instance::from(got);
    // SAFETY: `out` is non-null (checked above) and writable, as the caller promised.
    unsafe { out.write(instance) };
    Ok(())
}

/// Looks up a persistent UDP reservation; see
/// `berth_lookup_persistent_tcp_port_reservation`.
///
/// # Safety
/// `token` is NULL or points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn berth_lookup_persistent_udp_port_reservation(
    start: u16,
    count: u16,
    token: *mut u64,
) -> c_int {
    // SAFETY: forwarded from this function's own contract.
    unsafe { lookup_persistent(Protocol::Udp, start, count, token) }
}

/// # Safety
/// `out` is NULL or points to a writable `uint64_t`.
unsafe fn create_persistent(protocol: Protocol, start: u16, count: u16, out: *mut u64) -> c_int {
    boundary(|| {
        if out.is_null() {
            return Err(Failure::invalid(
                "token is NULL; pass a uint64_t to receive the token",
            ));
        }
        let token = session::create_persistent(protocol, start, count)?;
        // SAFETY: non-null (checked) and writable by the caller's contract.
        unsafe { out.write(token) };
        Ok(())
    })
}

/// # Safety
/// `out` is NULL or points to a writable `uint64_t`.
unsafe fn lookup_persistent(protocol: Protocol, start: u16, count: u16, out: *mut u64) -> c_int {
    boundary(|| {
        if out.is_null() {
            return Err(Failure::invalid(
                "token is NULL; pass a uint64_t to receive the token",
            ));
        }
        let token = session::lookup_persistent(protocol, start, count)?;
        // SAFETY: non-null (checked) and writable by the caller's contract.
        unsafe { out.write(token) };
        Ok(())
    })
}

/// The message of this thread's last failed call: what happened and what to do. "" when the
/// last call succeeded. Valid until the next libberth call on this thread; never NULL.
#[no_mangle]
pub extern "C" fn berth_last_error_message() -> *const c_char {
    panic::boundary_or(c"".as_ptr(), error::last_message)
}

/// The kind of this thread's last failed call, `BERTH_ERROR_KIND_NONE` when the last call
/// succeeded (or none was made yet). Every other libberth function sets it, as it sets errno
/// and the message; this one and `berth_last_error_message` leave it as it is. Use it where
/// errno is ambiguous: after EADDRINUSE, `BERTH_ERROR_KIND_CONFLICT` means the block asked
/// for is taken (ask for another), `BERTH_ERROR_KIND_RESERVATION_FULL` that every port of
/// the reservation is bound (close a socket, or reserve more).
#[no_mangle]
pub extern "C" fn berth_last_error_kind() -> berth_error_kind {
    panic::boundary_or(berth_error_kind::Internal, error::last_kind)
}

/// `IPPROTO_TCP` or `IPPROTO_UDP` → the protocol.
fn protocol_of(protocol: c_int) -> Result<Protocol, Failure> {
    match protocol {
        libc::IPPROTO_TCP => Ok(Protocol::Tcp),
        libc::IPPROTO_UDP => Ok(Protocol::Udp),
        other => Err(Failure::invalid(format!(
            "protocol {other} is neither IPPROTO_TCP ({}) nor IPPROTO_UDP ({}); reservations are of TCP or UDP ports",
            libc::IPPROTO_TCP,
            libc::IPPROTO_UDP
        ))),
    }
}

fn token_of(token: u64) -> Result<Token, Failure> {
    Token::new(token).ok_or_else(|| Failure::from(RangeError::ZeroToken))
}
