//! `struct sockaddr` from C → the address to bind on.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Failure;

/// The IP address in `local` (an `AF_INET` or `AF_INET6` address of `len` bytes); its port is
/// read by [`port_of`]. `None` when `local` is NULL (the unspecified address of the socket's
/// family).
///
/// # Safety
/// `local` is NULL or points to at least `len` readable bytes.
pub(crate) unsafe fn ip_of(
    local: *const libc::sockaddr,
    len: libc::socklen_t,
) -> Result<Option<IpAddr>, Failure> {
    if local.is_null() {
        return Ok(None);
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len < size_of::<libc::sa_family_t>() {
        return Err(Failure::invalid(format!(
            "the local address is {len} bytes long, too short to hold an address family; pass a sockaddr_in or sockaddr_in6 with its size, or NULL"
        )));
    }
    // SAFETY: `local` is non-null and the caller vouches for `len` readable bytes, which
    // cover the family field (checked above); read_unaligned needs no alignment.
    let family = unsafe { std::ptr::addr_of!((*local).sa_family).read_unaligned() };
    match c_int_of(family) {
        libc::AF_INET => {
            need(len, size_of::<libc::sockaddr_in>(), "sockaddr_in (AF_INET)")?;
            // SAFETY: `len` readable bytes, at least a sockaddr_in's (checked above).
            let sin = unsafe { local.cast::<libc::sockaddr_in>().read_unaligned() };
            // s_addr is in network byte order, i.e. its bytes in memory are the octets.
            Ok(Some(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()).into()))
        }
        libc::AF_INET6 => {
            need(len, size_of::<libc::sockaddr_in6>(), "sockaddr_in6 (AF_INET6)")?;
            // SAFETY: `len` readable bytes, at least a sockaddr_in6's (checked above).
            let sin6 = unsafe { local.cast::<libc::sockaddr_in6>().read_unaligned() };
            Ok(Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into()))
        }
        other => Err(Failure::invalid(format!(
            "the local address has family {other}, not AF_INET ({}) or AF_INET6 ({}); pass an IPv4 or IPv6 address, or NULL for the wildcard",
            libc::AF_INET,
            libc::AF_INET6
        ))),
    }
}

/// The port in `local` (host byte order), `None` when `local` is NULL or not an IP address.
///
/// # Safety
/// `local` is NULL or an address [`ip_of`] accepted (its family and length were checked).
pub(crate) unsafe fn port_of(local: *const libc::sockaddr) -> Option<u16> {
    if local.is_null() {
        return None;
    }
    // SAFETY: the caller vouches that `ip_of` accepted `local`: its family field is readable
    // and a matching sockaddr_in/sockaddr_in6 lies behind it.
    unsafe {
        let family = std::ptr::addr_of!((*local).sa_family).read_unaligned();
        match c_int_of(family) {
            libc::AF_INET => Some(u16::from_be(
                local.cast::<libc::sockaddr_in>().read_unaligned().sin_port,
            )),
            libc::AF_INET6 => Some(u16::from_be(
                local
                    .cast::<libc::sockaddr_in6>()
                    .read_unaligned()
                    .sin6_port,
            )),
            _ => None,
        }
    }
}

fn c_int_of(family: libc::sa_family_t) -> libc::c_int {
    libc::c_int::from(family)
}

fn need(len: usize, want: usize, what: &str) -> Result<(), Failure> {
    if len < want {
        Err(Failure::invalid(format!(
            "the local address is {len} bytes long but a {what} needs {want}; pass its size as local_len"
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_of<T>() -> libc::socklen_t {
        libc::socklen_t::try_from(size_of::<T>()).unwrap()
    }

    fn v4(octets: [u8; 4]) -> libc::sockaddr_in {
        // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap();
        sin.sin_port = 8080u16.to_be();
        sin.sin_addr.s_addr = u32::from_ne_bytes(octets);
        sin
    }

    #[test]
    fn null_is_the_wildcard() {
        // SAFETY: NULL is allowed.
        assert_eq!(unsafe { ip_of(std::ptr::null(), 0) }.unwrap(), None);
    }

    #[test]
    fn ipv4_and_ipv6_addresses_are_read() {
        let sin = v4([127, 0, 0, 1]);
        let p = std::ptr::addr_of!(sin).cast();
        // SAFETY: `p` points to a whole sockaddr_in.
        let ip = unsafe { ip_of(p, len_of::<libc::sockaddr_in>()) }.unwrap();
        assert_eq!(ip, Some(Ipv4Addr::LOCALHOST.into()));

        // SAFETY: as above.
        let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sin6.sin6_family = libc::sa_family_t::try_from(libc::AF_INET6).unwrap();
        sin6.sin6_addr.s6_addr = Ipv6Addr::LOCALHOST.octets();
        let p = std::ptr::addr_of!(sin6).cast();
        // SAFETY: `p` points to a whole sockaddr_in6.
        let ip = unsafe { ip_of(p, len_of::<libc::sockaddr_in6>()) }.unwrap();
        assert_eq!(ip, Some(Ipv6Addr::LOCALHOST.into()));
    }

    #[test]
    fn short_lengths_and_other_families_are_invalid() {
        let sin = v4([10, 1, 2, 3]);
        let p = std::ptr::addr_of!(sin).cast();
        for len in [0, 1, 8] {
            // SAFETY: `len` is within the sockaddr_in.
            let e = unsafe { ip_of(p, len) }.unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "{len}: {}", e.message());
        }
        let mut un = sin;
        un.sin_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap();
        let p = std::ptr::addr_of!(un).cast();
        // SAFETY: a whole sockaddr_in.
        let e = unsafe { ip_of(p, len_of::<libc::sockaddr_in>()) }.unwrap_err();
        assert!(e.message().contains("family 1"), "{}", e.message());
    }
}
