//! Whether a port is in use on the host, decided by the kernel: a test bind on the wildcard
//! address fails exactly when some socket holds the port.
//!
//! This is a point-in-time answer; hold mode (docs/decisions.md) will replace it with holder
//! sockets that keep the port.

use std::io;

use berth_core::{PortRange, Protocol};
use berth_os::hold::{self as wildcard, Cover};

/// Probes ports with one test bind each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prober {
    /// Whether the host has IPv6: then a dual-stack `[::]` bind sees IPv4 and IPv6 sockets at
    /// once.
    ipv6: bool,
    /// Tests only: every probe fails with this errno, as if the system were short of it.
    #[cfg(test)]
    fail_with: Option<rustix::io::Errno>,
}

impl Prober {
    /// Looks at the host once to decide how to probe.
    pub(crate) fn new() -> Self {
        let ipv6 = wildcard::ipv6_available();
        Prober {
            ipv6,
            #[cfg(test)]
            fail_with: None,
        }
    }

    /// Probes for one request: see [`Probes`].
    pub(crate) fn probes(self) -> Probes {
        Probes {
            prober: self,
            short: None,
        }
    }

    /// Whether `port` is in use. Errors other than "address in use" (a privileged port the
    /// daemon may not bind, say) count as "not known to be in use"; `Err` when the daemon could
    /// not test it for lack of a resource (descriptors, memory). With `lingering_free`, a TCP
    /// port kept only by connections in `TIME_WAIT` (a server that just stopped) is free: a
    /// bind with `SO_REUSEADDR` may have it (one more test bind, only when the first fails).
    pub(crate) fn in_use(
        &self,
        protocol: Protocol,
        port: u16,
        lingering_free: bool,
    ) -> io::Result<bool> {
        match self.try_bind(protocol, port) {
            Ok(()) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(!(lingering_free
                && protocol == Protocol::Tcp
                && wildcard::free_but_for_lingering(port, Cover::all(self.ipv6)))),
            Err(e) if is_shortage(&e) => Err(e),
            Err(_) => Ok(false),
        }
    }

    fn try_bind(&self, protocol: Protocol, port: u16) -> io::Result<()> {
        #[cfg(test)]
        if let Some(errno) = self.fail_with {
            return Err(io::Error::from_raw_os_error(errno.raw_os_error()));
        }
        // Dual-stack where the host has IPv6: conflicts with IPv4 and IPv6 binds of the port
        // alike. The socket closes at once.
        wildcard::bind(protocol, port, Cover::all(self.ipv6)).map(drop)
    }
}

/// The probes of one request. A port the daemon cannot test for lack of a resource is skipped
/// as if in use — never granted untested — and remembered in [`Probes::short`], so that the
/// request is answered "unavailable: the daemon is short of …" rather than blaming the ports or
/// the pool.
pub(crate) struct Probes {
    prober: Prober,
    /// The first shortage met, if any.
    pub(crate) short: Option<io::Error>,
}

impl Probes {
    /// The first port of `range` in use on the host (or untestable), if any.
    pub(crate) fn first_in_use(&mut self, protocol: Protocol, range: PortRange) -> Option<u16> {
        self.first_taken(protocol, range, false)
    }

    /// [`Probes::first_in_use`] for a range asked for by number: a TCP port kept only by
    /// connections in `TIME_WAIT` is not in use — its new owner binds it with `SO_REUSEADDR`
    /// (what servers that restart do), or gets it bound by the daemon (`berth run --listen`,
    /// associate). A wildcard search passes such ports by instead.
    pub(crate) fn first_in_use_by_number(
        &mut self,
        protocol: Protocol,
        range: PortRange,
    ) -> Option<u16> {
        self.first_taken(protocol, range, true)
    }

    fn first_taken(
        &mut self,
        protocol: Protocol,
        range: PortRange,
        lingering_free: bool,
    ) -> Option<u16> {
        range.ports().find(
            |&port| match self.prober.in_use(protocol, port, lingering_free) {
                Ok(in_use) => in_use,
                Err(e) => {
                    self.short.get_or_insert(e);
                    true
                }
            },
        )
    }

    /// The answer to a request that failed while ports could not be tested, if they could not.
    pub(crate) fn shortage_answer(&self) -> Option<String> {
        self.short.as_ref().map(|e| {
            format!(
                "unavailable: the daemon could not test ports for use ({e}: it is short of file descriptors or memory); nothing was reserved — retry shortly, and see `berth status` for its descriptor use"
            )
        })
    }
}

/// Whether `e` says the system or the daemon ran out of something, rather than anything about
/// the port.
fn is_shortage(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_that_cannot_be_tested_is_skipped_and_the_shortage_told() {
        let range = PortRange::new(40000, 3).unwrap();
        for errno in [rustix::io::Errno::MFILE, rustix::io::Errno::NOBUFS] {
            let short = Prober {
                fail_with: Some(errno),
                ..Prober::new()
            };
            let mut probes = short.probes();
            // Never granted untested: the first port counts as in use…
            assert_eq!(probes.first_in_use(Protocol::Tcp, range), Some(40000));
            // …and the answer names the shortage, not the port or the pool.
            let answer = probes.shortage_answer().unwrap();
            assert!(answer.contains("could not test ports"), "{answer}");
            assert!(answer.contains("nothing was reserved"), "{answer}");
        }
        // Anything else a bind may say (a privileged port, say) is not a shortage.
        let denied = Prober {
            fail_with: Some(rustix::io::Errno::ACCESS),
            ..Prober::new()
        };
        let mut probes = denied.probes();
        assert_eq!(probes.first_in_use(Protocol::Tcp, range), None);
        assert!(probes.shortage_answer().is_none());
    }

    #[test]
    fn sees_a_bound_tcp_port_and_a_bound_udp_port() {
        let prober = Prober::new();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        assert!(prober.in_use(Protocol::Tcp, port, false).unwrap());
        // A listener keeps its port from a bind with SO_REUSEADDR too.
        assert!(prober.in_use(Protocol::Tcp, port, true).unwrap());
        let range = PortRange::new(port, 1).unwrap();
        let mut probes = prober.probes();
        assert_eq!(probes.first_in_use(Protocol::Tcp, range), Some(port));
        assert!(probes.short.is_none());

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let uport = udp.local_addr().unwrap().port();
        assert!(prober.in_use(Protocol::Udp, uport, false).unwrap());
        drop(udp);
        assert!(!prober.in_use(Protocol::Udp, uport, false).unwrap());
    }

    /// A server that closed its end of a connection first leaves it in TIME_WAIT on its port:
    /// in use for a wildcard search, free for a request by number.
    #[test]
    fn a_port_kept_only_by_time_wait_is_free_by_number() {
        use std::io::Read;
        let prober = Prober::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(accepted);
        // The client sees the server's close, then closes too: the server's end lingers.
        assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0);
        drop(client);
        drop(listener);
        assert!(prober.in_use(Protocol::Tcp, port, false).unwrap());
        assert!(!prober.in_use(Protocol::Tcp, port, true).unwrap());
        let range = PortRange::new(port, 1).unwrap();
        let mut probes = prober.probes();
        assert_eq!(probes.first_in_use(Protocol::Tcp, range), Some(port));
        assert_eq!(probes.first_in_use_by_number(Protocol::Tcp, range), None);
    }
}
